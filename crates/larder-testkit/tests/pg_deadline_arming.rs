//! Issue 9: PostgreSQL deadlines cost no round trip per statement, and the timeout in force
//! always fits the deadline. A file of its own: its units of work sit idle in a transaction
//! on purpose, which the lingering-session checks of `postgres.rs` would see.

use std::time::{Duration, Instant};

use larder::postgres::{PgUowExt, classify};
use larder::{Error, Spec, UowOptions};
use larder_testkit::backends;
use larder_testkit::entities::Counter;

/// Issue 9: `statement_timeout` is set with `BEGIN` and re-armed only when the value in
/// force no longer fits the deadline — but it always fits: a statement started late is
/// still cancelled by the deadline (not the time left at `BEGIN`), and after a short
/// per-call deadline a longer statement under the unit of work's deadline is not cut early.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_always_fits_the_deadline_in_force() {
    let Some(db) = backends::postgres("postgres::deadline_fits").await else {
        return;
    };
    db.store.register::<Counter>().await.unwrap();
    // (a) A statement that starts 700 ms into a 1 s unit of work ends by the deadline.
    let mut uow = db
        .store
        .begin_with(UowOptions::default().with_timeout(Duration::from_secs(1)))
        .await
        .unwrap();
    let started = Instant::now();
    tokio::time::sleep(Duration::from_millis(700)).await;
    let conn = uow.postgres_bounded().await.unwrap();
    let r = sqlx::query("SELECT pg_sleep(5)")
        .execute(conn)
        .await
        .map_err(classify);
    assert!(matches!(r, Err(Error::DeadlineExceeded { .. })), "{r:?}");
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(1_400),
        "cancelled after {took:?}"
    );
    uow.rollback().await.unwrap();

    // (b) A short per-call deadline, then a 300 ms statement under the unit of work's 5 s
    // deadline: it completes.
    let mut uow = db
        .store
        .begin_with(UowOptions::default().with_timeout(Duration::from_secs(5)))
        .await
        .unwrap();
    uow.repo::<Counter>()
        .with_deadline(larder::Deadline::after(Duration::from_millis(100)))
        .count(&Spec::all())
        .await
        .unwrap();
    let conn = uow.postgres_bounded().await.unwrap();
    sqlx::query("SELECT pg_sleep(0.3)")
        .execute(conn)
        .await
        .expect("not cancelled by the earlier per-call deadline");
    uow.commit().await.unwrap();
    db.finish().await;
}
