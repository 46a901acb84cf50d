//! B2 lost update: 16 tasks × 500 "load → increment → save" units of work with optimistic
//! concurrency and retry. The final counter must be exactly 8,000, on every backend.
//!
//! Canary: the same harness with a naive read-modify-write (read in one unit of work, write
//! later without checking the version read) must lose updates, or the harness could not
//! see the bug.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use larder::{Error, Store, TransactionOptions, UowOptions};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::entities::Counter;

const TASKS: u64 = 16;
const PER_TASK: u64 = 500;

async fn seed(store: &Store) {
    store.register::<Counter>().await.unwrap();
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Counter>()
        .insert(&Counter {
            id: "c".into(),
            count: 0,
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
}

async fn read(store: &Store) -> i64 {
    let mut uow = store.read().await.unwrap();
    uow.repo::<Counter>()
        .require(&"c".to_owned())
        .await
        .unwrap()
        .count
}

/// Runs the workload; returns (final value, conflicts retried).
async fn run(store: &Store, naive: bool, per_task: u64) -> (i64, u64) {
    let retries = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let store = store.clone();
        let retries = retries.clone();
        tasks.push(tokio::spawn(async move {
            let opts = TransactionOptions::default()
                .with_retry_on_conflict(true)
                .with_max_retries(10_000);
            for _ in 0..per_task {
                if naive {
                    // Known-bad: the version is re-read right before writing, so the
                    // optimistic check can never see the other writers.
                    let mut seen = {
                        let mut uow = store.read().await.unwrap();
                        uow.repo::<Counter>()
                            .require(&"c".to_owned())
                            .await
                            .unwrap()
                    };
                    seen.count += 1;
                    tokio::task::yield_now().await;
                    store
                        .transaction_with(UowOptions::default(), &opts, |uow| {
                            let value = seen.count;
                            Box::pin(async move {
                                let mut cur =
                                    uow.repo::<Counter>().require(&"c".to_owned()).await?;
                                cur.count = value;
                                uow.repo::<Counter>().save(&mut cur).await?;
                                Ok::<_, Error>(())
                            })
                        })
                        .await
                        .unwrap();
                } else {
                    let retries = retries.clone();
                    let attempt = Arc::new(AtomicU64::new(0));
                    store
                        .transaction_with(UowOptions::default(), &opts, |uow| {
                            let (retries, attempt) = (retries.clone(), attempt.clone());
                            Box::pin(async move {
                                if attempt.fetch_add(1, Ordering::Relaxed) > 0 {
                                    retries.fetch_add(1, Ordering::Relaxed);
                                }
                                let mut c = uow.repo::<Counter>().require(&"c".to_owned()).await?;
                                c.count += 1;
                                // Widen the race window between read and write.
                                tokio::task::yield_now().await;
                                uow.repo::<Counter>().save(&mut c).await?;
                                Ok::<_, Error>(())
                            })
                        })
                        .await
                        .unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (read(store).await, retries.load(Ordering::Relaxed))
}

async fn check(db: Option<TestDb>) {
    let Some(db) = db else { return };
    seed(&db.store).await;
    let (value, retries) = run(&db.store, false, PER_TASK).await;
    eprintln!("{}: final {value}, {retries} conflicts retried", db.backend);
    assert_eq!(
        value,
        i64::try_from(TASKS * PER_TASK).unwrap(),
        "{}: lost updates",
        db.backend
    );
    db.finish().await;
}

async fn canary(db: Option<TestDb>) {
    let Some(db) = db else { return };
    seed(&db.store).await;
    let per_task = 100;
    let (value, _) = run(&db.store, true, per_task).await;
    eprintln!(
        "{} canary: final {value} of {}",
        db.backend,
        TASKS * per_task
    );
    assert!(
        value < i64::try_from(TASKS * per_task).unwrap(),
        "{}: the naive read-modify-write lost nothing; the harness cannot see lost updates",
        db.backend
    );
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_counter_reaches_exactly_8000() {
    check(backends::memory("lost_update::memory").await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_counter_reaches_exactly_8000() {
    check(Some(
        backends::sqlite_with(
            "lost_update::sqlite",
            |s| s.max_connections = Some(8),
            larder::StoreConfig::default(),
        )
        .await,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_counter_reaches_exactly_8000() {
    check(
        backends::postgres_with(
            "lost_update::postgres",
            |s| s.max_connections = Some(16),
            larder::StoreConfig::default(),
        )
        .await,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_naive_read_modify_write_loses_updates_on_sqlite() {
    canary(Some(
        backends::sqlite_with(
            "lost_update::canary_sqlite",
            |s| s.max_connections = Some(8),
            larder::StoreConfig::default(),
        )
        .await,
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn canary_naive_read_modify_write_loses_updates_on_postgres() {
    canary(
        backends::postgres_with(
            "lost_update::canary_postgres",
            |s| s.max_connections = Some(16),
            larder::StoreConfig::default(),
        )
        .await,
    )
    .await;
}
