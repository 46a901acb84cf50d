//! Issue 8 D1/D2: `Uow::commit()` returns `Ok` only if the database committed — decided
//! from what the server answers, whatever path made a statement fail (raw SQL through the
//! backend extensions, a stream that failed, a savepoint released after a swallowed error,
//! a transaction ended on the raw connection). The backend-independent rule (commit `Ok` ⇔
//! the writes are visible) is the conformance rule `commit_ok_means_the_writes_are_visible`.

use std::time::Duration;

use futures_util::StreamExt;
use larder::postgres::PgUowExt;
use larder::sqlite::SqliteUowExt;
use larder::{Deadline, Error, Query, Spec, Store};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::entities::{Counter, Item};
use sqlx::Row;

async fn seeded(db: &TestDb) -> &Store {
    db.store.register::<Item>().await.unwrap();
    let mut uow = db.store.begin().await.unwrap();
    for i in 0..200 {
        uow.repo::<Item>()
            .insert(&Item::new(&format!("s{i:03}"), "seed", i))
            .await
            .unwrap();
    }
    uow.commit().await.unwrap();
    &db.store
}

/// A unit of work that has inserted the row `x` (and not committed).
async fn writing_x(store: &Store) -> larder::Uow {
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("x", "n", 1))
        .await
        .unwrap();
    uow
}

async fn visible(store: &Store, id: &str) -> bool {
    let mut uow = store.read().await.unwrap();
    let r = uow.repo::<Item>().exists(&id.to_owned()).await.unwrap();
    uow.commit().await.unwrap();
    r
}

fn assert_aborted(r: &Result<larder::Committed, Error>) {
    assert!(
        matches!(r, Err(Error::TransactionAborted { .. })),
        "expected TransactionAborted, got {r:?}"
    );
    let msg = r.as_ref().unwrap_err().to_string();
    assert!(msg.contains("nothing was committed"), "{msg}");
}

/// The reproduction: raw SQL through `PgUowExt` fails (22012), the error is
/// swallowed, `commit()` used to return `Ok` while PostgreSQL rolled everything back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_commit_after_failed_raw_sql_is_an_error() {
    let Some(db) = backends::postgres("commit_truth::pg_raw").await else {
        return;
    };
    let store = seeded(&db).await;
    let mut uow = writing_x(store).await;
    let r = sqlx::query("SELECT 1/0")
        .execute(uow.postgres().unwrap())
        .await;
    assert!(r.is_err());
    let c = uow.commit().await;
    assert_aborted(&c);
    assert!(!visible(store, "x").await, "nothing committed");
    // The pool is healthy afterwards: the next unit of work commits.
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("y", "n", 1))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert!(visible(store, "y").await);
    db.finish().await;
}

/// A stream that fails on the server (cancelled by its deadline while another session
/// holds a lock on the table it reads), dropped, then `commit()`: an error, nothing
/// visible.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_commit_after_a_failed_stream_is_an_error() {
    let Some(db) = backends::postgres("commit_truth::pg_stream").await else {
        return;
    };
    let store = seeded(&db).await;
    store.register::<Counter>().await.unwrap();
    let schema = db.pg_schema.clone().unwrap();
    let mut uow = writing_x(store).await;
    // Another session takes an exclusive lock: our stream's SELECT waits for it.
    let admin = sqlx::PgPool::connect(&backends::postgres_url().unwrap())
        .await
        .unwrap();
    let mut locker = admin.begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "LOCK TABLE \"{schema}\".counters IN ACCESS EXCLUSIVE MODE"
    )))
    .execute(&mut *locker)
    .await
    .unwrap();
    {
        let q = Query::new(Spec::all());
        let mut s = uow
            .repo::<Counter>()
            .with_deadline(Deadline::after(Duration::from_millis(300)))
            .stream(&q);
        let first = s.next().await;
        assert!(
            matches!(first, Some(Err(Error::DeadlineExceeded { .. }))),
            "{first:?}"
        );
    }
    locker.rollback().await.unwrap();
    let c = uow.commit().await;
    assert!(c.is_err(), "{c:?}");
    assert!(!visible(store, "x").await, "nothing committed");
    admin.close().await;
    db.finish().await;
}

/// A savepoint scope that swallowed a failed statement returns `Ok`: releasing the
/// savepoint is refused by the server (typed), and so is the commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_savepoint_release_after_a_swallowed_error_is_an_error() {
    let Some(db) = backends::postgres("commit_truth::pg_savepoint").await else {
        return;
    };
    let store = seeded(&db).await;
    let mut uow = writing_x(store).await;
    let r: Result<(), Error> = uow
        .savepoint(|u| {
            Box::pin(async move {
                let _ = sqlx::query("SELECT 1/0")
                    .execute(u.postgres().unwrap())
                    .await;
                Ok(())
            })
        })
        .await;
    assert!(
        matches!(
            r,
            Err(Error::TransactionAborted {
                operation: "uow.release_savepoint",
                ..
            })
        ),
        "{r:?}"
    );
    let c = uow.commit().await;
    assert_aborted(&c);
    assert!(!visible(store, "x").await);
    db.finish().await;
}

/// A transaction ended on the raw connection (`ROLLBACK` through the extension): the
/// commit says so instead of committing nothing with `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_commit_after_raw_rollback_is_an_error() {
    let Some(db) = backends::postgres("commit_truth::pg_raw_rollback").await else {
        return;
    };
    let store = seeded(&db).await;
    let mut uow = writing_x(store).await;
    sqlx::query("ROLLBACK")
        .execute(uow.postgres().unwrap())
        .await
        .unwrap();
    let c = uow.commit().await;
    assert_aborted(&c);
    assert!(!visible(store, "x").await);
    db.finish().await;
}

/// The one-round-trip commit leaves no session idle in a transaction: after many commits
/// every pooled session of this test is idle within a moment, and committed data is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_commits_leave_no_session_idle_in_transaction() {
    let Some(db) = backends::postgres("commit_truth::pg_idle").await else {
        return;
    };
    let store = seeded(&db).await;
    for i in 0..50 {
        let mut uow = store.begin().await.unwrap();
        uow.repo::<Item>()
            .insert(&Item::new(&format!("c{i}"), "n", i))
            .await
            .unwrap();
        uow.commit().await.unwrap();
    }
    let admin = sqlx::PgPool::connect(&backends::postgres_url().unwrap())
        .await
        .unwrap();
    let schema = db.pg_schema.clone().unwrap();
    let mut left = i64::MAX;
    for _ in 0..100 {
        left = sqlx::query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 \
             AND state LIKE 'idle in transaction%' AND backend_xmin IS NOT NULL",
        )
        .bind(&schema)
        .fetch_one(&admin)
        .await
        .unwrap()
        .get::<i64, _>(0);
        if left == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(left, 0, "sessions holding a snapshot idle in transaction");
    let n: i64 = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM \"{schema}\".items WHERE id LIKE 'c%'"
    )))
    .fetch_one(&admin)
    .await
    .unwrap()
    .get(0);
    assert_eq!(n, 50);
    admin.close().await;
    db.finish().await;
}

/// SQLite: a transaction ended on the raw connection makes `commit()` fail with the typed
/// error (SQLite answers COMMIT with "no transaction is active").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_commit_after_raw_rollback_is_an_error() {
    let Some(db) = backends::sqlite("commit_truth::sqlite_raw_rollback").await else {
        return;
    };
    let store = seeded(&db).await;
    let mut uow = writing_x(store).await;
    sqlx::query("ROLLBACK")
        .execute(uow.sqlite().unwrap())
        .await
        .unwrap();
    let c = uow.commit().await;
    assert_aborted(&c);
    assert!(!visible(store, "x").await);
    // The pool is healthy afterwards.
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("y", "n", 1))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert!(visible(store, "y").await);
    db.finish().await;
}
