//! PostgreSQL read-only units of work begin their transaction lazily (issue 10, item 7): a
//! unit of work with one read costs one round trip, and everything that needs the
//! transaction (a second statement, a deadline, a savepoint, raw access) still gets it.

use std::str::FromStr;
use std::time::Duration;

use larder::postgres::{PgBackend, PgTransaction, PgUowExt};
use larder::{Deadline, Error, StoreConfig, Uow};
use larder_testkit::backends;
use larder_testkit::entities::Counter;

fn begun(uow: &mut Uow) -> bool {
    uow.backend_transaction()
        .expect("open unit of work")
        .as_any_mut()
        .downcast_mut::<PgTransaction>()
        .expect("a postgresql transaction")
        .has_begun()
}

async fn seeded(test: &str) -> Option<backends::TestDb> {
    let db = backends::postgres(test).await?;
    db.store.register::<Counter>().await.unwrap();
    let mut uow = db.store.begin().await.unwrap();
    for id in ["a", "b"] {
        uow.repo::<Counter>()
            .insert(&Counter {
                id: id.into(),
                count: 1,
            })
            .await
            .unwrap();
    }
    uow.commit().await.unwrap();
    Some(db)
}

async fn read_only(uow: &mut Uow) -> String {
    let conn = uow.postgres().expect("the transaction has begun");
    sqlx::query_scalar("SHOW transaction_read_only")
        .fetch_one(conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn one_read_runs_without_a_transaction_and_commits_for_free() {
    let Some(db) = seeded("pg_lazy::one_read").await else {
        return;
    };
    let mut uow = db.store.read().await.unwrap();
    assert!(!begun(&mut uow), "nothing is sent before the first read");
    assert!(
        uow.postgres().is_none(),
        "no raw connection outside the transaction"
    );
    let a = uow
        .repo::<Counter>()
        .require(&"a".to_string())
        .await
        .unwrap();
    assert_eq!(a.value.count, 1);
    assert!(!begun(&mut uow), "the first read ran on its own");
    uow.commit().await.unwrap();
    // The connection went back to the pool outside any transaction: the next unit of work
    // on it begins normally.
    let mut w = db.store.begin().await.unwrap();
    w.repo::<Counter>()
        .insert(&Counter {
            id: "c".into(),
            count: 3,
        })
        .await
        .unwrap();
    w.commit().await.unwrap();
}

#[tokio::test]
async fn the_second_statement_begins_a_read_only_transaction() {
    let Some(db) = seeded("pg_lazy::second").await else {
        return;
    };
    let mut uow = db.store.read().await.unwrap();
    uow.repo::<Counter>()
        .require(&"a".to_string())
        .await
        .unwrap();
    uow.repo::<Counter>()
        .require(&"b".to_string())
        .await
        .unwrap();
    assert!(begun(&mut uow));
    assert_eq!(read_only(&mut uow).await, "on");
    // Writes are still refused (by the core, before any SQL, and by the server).
    let w = uow
        .repo::<Counter>()
        .insert(&Counter {
            id: "x".into(),
            count: 0,
        })
        .await;
    assert!(matches!(w, Err(Error::ReadOnly { .. })), "{w:?}");
    let raw = sqlx::query("INSERT INTO counters (id, version, body) VALUES ('y', 1, '{}')")
        .execute(uow.postgres().unwrap())
        .await;
    assert!(raw.is_err(), "a READ ONLY transaction refuses raw writes");
    uow.rollback().await.unwrap();
}

#[tokio::test]
async fn raw_access_a_deadline_or_a_savepoint_begin_it_first() {
    let Some(db) = seeded("pg_lazy::needs").await else {
        return;
    };
    // Raw access through `postgres_bounded` begins the transaction.
    let mut uow = db.store.read().await.unwrap();
    uow.postgres_bounded().await.unwrap();
    assert!(begun(&mut uow));
    assert_eq!(read_only(&mut uow).await, "on");
    uow.commit().await.unwrap();

    // A per-call deadline is armed server-side, inside the transaction.
    let mut uow = db.store.read().await.unwrap();
    let got = uow
        .repo::<Counter>()
        .with_deadline(Deadline::after(Duration::from_secs(5)))
        .require(&"a".to_string())
        .await
        .unwrap();
    assert_eq!(got.value.count, 1);
    assert!(
        begun(&mut uow),
        "a deadline needs statement_timeout, set in the transaction"
    );
    let timeout: String = sqlx::query_scalar("SHOW statement_timeout")
        .fetch_one(uow.postgres().unwrap())
        .await
        .unwrap();
    assert_ne!(timeout, "0", "armed for the call");
    uow.commit().await.unwrap();

    // A savepoint needs the transaction; the read inside it runs in it.
    let mut uow = db.store.read().await.unwrap();
    let n = uow
        .savepoint(|uow| {
            Box::pin(async move {
                let a = uow.repo::<Counter>().require(&"a".to_string()).await?;
                Ok::<_, Error>(a.value.count)
            })
        })
        .await
        .unwrap();
    assert_eq!(n, 1);
    assert!(begun(&mut uow));
    uow.commit().await.unwrap();

    // A unit-of-work deadline begins eagerly, as before.
    let mut uow = db
        .store
        .begin_with(
            larder::UowOptions::default()
                .read_only()
                .with_timeout(Duration::from_secs(5)),
        )
        .await
        .unwrap();
    assert!(begun(&mut uow));
    uow.commit().await.unwrap();
}

#[tokio::test]
async fn a_failed_lone_read_aborts_nothing() {
    let Some(db) = seeded("pg_lazy::failed").await else {
        return;
    };
    let mut uow = db.store.read().await.unwrap();
    // A statement the server refuses (an unregistered entity's table does not exist).
    let e = uow
        .repo::<larder_testkit::entities::Sample>()
        .get(&"s".to_string())
        .await;
    assert!(matches!(e, Err(Error::NotRegistered { .. })), "{e:?}");
    // Nothing was aborted: the unit of work goes on and commits.
    let a = uow
        .repo::<Counter>()
        .require(&"a".to_string())
        .await
        .unwrap();
    assert_eq!(a.value.count, 1);
    uow.commit().await.unwrap();
}

#[tokio::test]
async fn sessions_that_are_not_read_committed_begin_eagerly() {
    let Some(url) = backends::postgres_url() else {
        return;
    };
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
        .unwrap()
        .options([("default_transaction_isolation", "repeatable read")])
        .application_name("pg_lazy_repeatable");
    let backend = PgBackend::connect_with(opts, &larder::settings::Settings::from_url(url))
        .await
        .unwrap();
    let store = backend.into_store(StoreConfig::default());
    let mut uow = store.read().await.unwrap();
    // One snapshot for the whole unit of work: a lone first read would see another one.
    assert!(begun(&mut uow));
    let iso: String = sqlx::query_scalar("SHOW transaction_isolation")
        .fetch_one(uow.postgres().unwrap())
        .await
        .unwrap();
    assert_eq!(iso, "repeatable read");
    uow.commit().await.unwrap();
    store.close().await;
}

#[tokio::test]
async fn event_reads_run_on_their_own_too() {
    use larder::events::{
        Checkpoint, EventData, EventFilter, EventStore, ExpectedVersion, ReadDirection,
    };
    let Some(db) = backends::postgres("pg_lazy::events").await else {
        return;
    };
    let es = EventStore::open(&db.store).await.unwrap();
    let mut w = db.store.begin().await.unwrap();
    es.append(
        &mut w,
        "order-1",
        ExpectedVersion::NoStream,
        vec![EventData::new("Placed", &serde_json::json!({ "n": 1 })).unwrap()],
    )
    .await
    .unwrap();
    w.commit().await.unwrap();

    let mut uow = db.store.read().await.unwrap();
    let events = es
        .read_stream(&mut uow, "order-1", 0, 10, ReadDirection::Forward)
        .await
        .unwrap();
    assert_eq!(events.len(), 1);
    assert!(!begun(&mut uow), "one event read, one round trip");
    // The global log's read keeps its no-skip rule: the horizon comes from the same
    // statement's snapshot, inside the transaction that the second statement begins.
    let page = es
        .read_all(&mut uow, Checkpoint::START, 10, &EventFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1);
    assert!(begun(&mut uow));
    uow.commit().await.unwrap();
}
