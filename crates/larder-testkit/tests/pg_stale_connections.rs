//! PostgreSQL: a pooled connection the server closed while it sat idle (a restart, an idle
//! timeout, `pg_terminate_backend`) never fails a unit of work. Writing units of work take an
//! idle connection without sqlx's per-acquire `ping` and let `BEGIN` be the check, trying
//! another connection when the server had closed it; a lazy read (its first statement is
//! sent without `BEGIN`) takes its connection through sqlx's `acquire`, which pings it.

use std::time::Duration;

use larder::Store;
use larder_testkit::backends;
use larder_testkit::entities::Counter;

/// Opens `n` units of work at once (so the pool holds `n` connections) and commits them.
async fn warm(store: &Store, n: i64, tag: &str) {
    let mut uows = Vec::new();
    for _ in 0..n {
        uows.push(store.begin().await.unwrap());
    }
    for (i, mut uow) in uows.into_iter().enumerate() {
        uow.repo::<Counter>()
            .insert(&Counter {
                id: format!("{tag}-{i}"),
                count: 1,
            })
            .await
            .unwrap();
        uow.commit().await.unwrap();
    }
}

/// Terminates every session of this test's store (its application name is the schema) and
/// waits until the server has ended them; returns how many there were.
async fn terminate_sessions(schema: &str) -> i64 {
    let url = backends::postgres_url().expect("postgres url");
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap();
    let killed: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
         WHERE application_name = $1) t",
    )
    .bind(schema)
    .fetch_one(&admin)
    .await
    .unwrap();
    for _ in 0..200 {
        let left: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1")
                .bind(schema)
                .fetch_one(&admin)
                .await
                .unwrap();
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    admin.close().await;
    killed
}

/// A store whose `n` pooled connections the server has just closed.
async fn stale(test: &str, n: i64) -> Option<backends::TestDb> {
    let db = backends::postgres(test).await?;
    db.store.register::<Counter>().await.unwrap();
    warm(&db.store, n, "warm").await;
    let killed = terminate_sessions(db.pg_schema.as_deref().unwrap()).await;
    assert!(killed >= n, "the pool held {n} connections, {killed} ended");
    Some(db)
}

#[tokio::test]
async fn writes_right_after_the_server_closed_every_pooled_connection_succeed() {
    let Some(db) = stale("pg_stale::writes", 4).await else {
        return;
    };
    // Every idle connection is dead now; each unit of work must still begin, write and
    // commit (no ping guards these acquires: the connections were used a moment ago).
    for i in 0..6 {
        let mut uow = db.store.begin().await.unwrap_or_else(|e| {
            panic!("begin {i} after the server closed the pooled connections: {e}")
        });
        uow.repo::<Counter>()
            .insert(&Counter {
                id: format!("after-{i}"),
                count: i,
            })
            .await
            .unwrap();
        uow.commit().await.unwrap();
    }
    let mut uow = db.store.read().await.unwrap();
    let n = uow
        .repo::<Counter>()
        .count(&larder::Spec::all())
        .await
        .unwrap();
    assert_eq!(n, 10, "4 warm-up rows and 6 written after the terminations");
}

#[tokio::test]
async fn a_lazy_read_pings_its_connection_first() {
    let Some(db) = stale("pg_stale::lazy_read", 3).await else {
        return;
    };
    // The acquire pings, finds the connection dead and opens a new one, so the first read
    // (sent without BEGIN) does not fail.
    tokio::time::sleep(Duration::from_millis(700)).await;
    for i in 0..4 {
        let mut uow = db.store.read().await.unwrap();
        let c = uow
            .repo::<Counter>()
            .require(&"warm-0".to_string())
            .await
            .unwrap_or_else(|e| panic!("lazy read {i} on a connection the server closed: {e}"));
        assert_eq!(c.value.count, 1);
        uow.commit().await.unwrap();
    }
}
