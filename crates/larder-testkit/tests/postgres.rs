//! PostgreSQL deadlines (H5): a statement past its deadline is cancelled by the server,
//! the caller gets `DeadlineExceeded`, no statement keeps running and no session is left
//! idle in transaction; futures dropped mid-flight leave the pool healthy.

use std::time::{Duration, Instant};

use larder::postgres::{PgUowExt, classify};
use larder::{Error, Spec, StoreConfig, UowOptions};
use larder_testkit::backends;
use larder_testkit::entities::Counter;
use sqlx::Row;

async fn admin() -> sqlx::PgPool {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&backends::postgres_url().unwrap())
        .await
        .unwrap()
}

/// Sessions of this test's store (the testkit names them after the test's schema) that
/// are still busy or idle in a transaction.
async fn lingering(
    admin: &sqlx::PgPool,
    db: &larder_testkit::backends::TestDb,
    marker: &str,
) -> Vec<String> {
    sqlx::query(
        "SELECT state || ': ' || query FROM pg_stat_activity \
         WHERE application_name = $2 AND pid <> pg_backend_pid() \
         AND (state LIKE 'idle in transaction%' OR (state = 'active' AND query LIKE '%' || $1 || '%'))",
    )
    .bind(marker)
    .bind(db.pg_schema.as_deref().unwrap_or("larder"))
    .fetch_all(admin)
    .await
    .unwrap()
    .into_iter()
    .map(|r| r.get::<String, _>(0))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_sleep_under_a_one_second_deadline_is_cancelled_server_side() {
    let Some(db) = backends::postgres("postgres::deadline").await else {
        return;
    };
    let admin = admin().await;
    let started = Instant::now();
    let mut uow = db
        .store
        .begin_with(UowOptions::default().with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let conn = uow.postgres_bounded().await.unwrap();
    let r = sqlx::query("SELECT pg_sleep(10) /* h5-marker */")
        .execute(conn)
        .await
        .map_err(classify);
    let took = started.elapsed();
    assert!(matches!(r, Err(Error::DeadlineExceeded { .. })), "{r:?}");
    assert!(took < Duration::from_secs(3), "cancelled after {took:?}");
    uow.rollback().await.unwrap();
    // The statement is gone and nothing is left idle in transaction.
    let mut left = Vec::new();
    for _ in 0..50 {
        left = lingering(&admin, &db, "h5-marker").await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(left.is_empty(), "{left:?}");
    // The pooled connection is healthy and the deadline does not leak into the next unit
    // of work on it.
    let mut uow = db.store.begin().await.unwrap();
    let conn = uow.postgres().unwrap();
    let t: String = sqlx::query("SHOW statement_timeout")
        .fetch_one(&mut *conn)
        .await
        .unwrap()
        .get(0);
    assert_eq!(t, "0");
    sqlx::query("SELECT pg_sleep(1.2)")
        .execute(conn)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    admin.close().await;
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_call_past_its_deadline_aborts_the_unit_of_work_cleanly() {
    let Some(db) = backends::postgres("postgres::deadline_repo").await else {
        return;
    };
    db.store.register::<Counter>().await.unwrap();
    let mut uow = db
        .store
        .begin_with(UowOptions::default().with_timeout(Duration::from_millis(500)))
        .await
        .unwrap();
    // Hold a lock from another session so our update blocks until the deadline.
    let admin = admin().await;
    let mut seed = db.store.begin().await.unwrap();
    seed.repo::<Counter>()
        .insert(&Counter {
            id: "c".into(),
            count: 0,
        })
        .await
        .unwrap();
    seed.commit().await.unwrap();
    let mut blocker = db.store.begin().await.unwrap();
    let mut c = blocker
        .repo::<Counter>()
        .require(&"c".to_owned())
        .await
        .unwrap();
    c.count = 100;
    blocker.repo::<Counter>().save(&mut c).await.unwrap();
    let started = Instant::now();
    let e = uow
        .repo::<Counter>()
        .update(
            &Counter {
                id: "c".into(),
                count: 1,
            },
            1,
        )
        .await;
    assert!(matches!(e, Err(Error::DeadlineExceeded { .. })), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // A COMMIT after a cancelled statement would silently roll back: larder refuses it.
    let e = uow.commit().await;
    assert!(matches!(e, Err(Error::DeadlineExceeded { .. })), "{e:?}");
    blocker.commit().await.unwrap();
    let mut r = db.store.read().await.unwrap();
    assert_eq!(
        r.repo::<Counter>()
            .require(&"c".to_owned())
            .await
            .unwrap()
            .count,
        100
    );
    r.commit().await.unwrap();
    admin.close().await;
    db.finish().await;
}

/// Futures dropped at random points (client-side timeouts of 0–30 ms around whole units
/// of work) leave no session idle in transaction and the pool usable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn futures_dropped_mid_flight_leave_the_pool_healthy() {
    let Some(db) = backends::postgres_with(
        "postgres::dropped",
        |s| s.max_connections = Some(4),
        StoreConfig::default(),
    )
    .await
    else {
        return;
    };
    db.store.register::<Counter>().await.unwrap();
    let admin = admin().await;
    for i in 0u64..60 {
        let store = db.store.clone();
        let work = async move {
            let mut uow = store.begin().await?;
            uow.repo::<Counter>()
                .insert(&Counter {
                    id: format!("d{i}"),
                    count: 1,
                })
                .await?;
            let conn = uow.postgres().unwrap();
            sqlx::query("SELECT pg_sleep(0.01)")
                .execute(conn)
                .await
                .map_err(classify)?;
            uow.commit().await
        };
        let _ = tokio::time::timeout(Duration::from_millis(i % 30), work).await;
    }
    let mut left = Vec::new();
    for _ in 0..100 {
        left = lingering(&admin, &db, "pg_sleep(0.01)").await;
        if left.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(left.is_empty(), "{left:?}");
    // Every committed row is whole and the pool serves new work.
    let mut uow = db.store.begin().await.unwrap();
    let n = uow.repo::<Counter>().count(&Spec::all()).await.unwrap();
    assert!(n <= 60);
    uow.repo::<Counter>()
        .insert(&Counter {
            id: "after".into(),
            count: 1,
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    admin.close().await;
    db.finish().await;
}

/// A statement cancelled inside a savepoint scope aborts only that scope: after the
/// rollback to the savepoint the unit of work goes on and commits its outer work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoint_recovers_from_a_cancelled_statement() {
    let Some(db) = backends::postgres("postgres::savepoint_recovery").await else {
        return;
    };
    db.store.register::<Counter>().await.unwrap();
    let mut seed = db.store.begin().await.unwrap();
    seed.repo::<Counter>()
        .insert(&Counter {
            id: "locked".into(),
            count: 0,
        })
        .await
        .unwrap();
    seed.commit().await.unwrap();
    // Another session holds the row lock.
    let mut blocker = db.store.begin().await.unwrap();
    let mut c = blocker
        .repo::<Counter>()
        .require(&"locked".to_owned())
        .await
        .unwrap();
    blocker.repo::<Counter>().save(&mut c).await.unwrap();

    let mut uow = db.store.begin().await.unwrap();
    uow.repo::<Counter>()
        .insert(&Counter {
            id: "outer".into(),
            count: 1,
        })
        .await
        .unwrap();
    let r: Result<(), Error> = uow
        .savepoint(|uow| {
            Box::pin(async move {
                uow.repo::<Counter>()
                    .with_deadline(larder::Deadline::after(Duration::from_millis(300)))
                    .update(
                        &Counter {
                            id: "locked".into(),
                            count: 5,
                        },
                        1,
                    )
                    .await?;
                Ok(())
            })
        })
        .await;
    assert!(matches!(r, Err(Error::DeadlineExceeded { .. })), "{r:?}");
    uow.repo::<Counter>()
        .insert(&Counter {
            id: "after".into(),
            count: 1,
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    blocker.commit().await.unwrap();
    let mut r = db.store.read().await.unwrap();
    assert_eq!(r.repo::<Counter>().count(&Spec::all()).await.unwrap(), 3);
    r.commit().await.unwrap();
    db.finish().await;
}
