//! SQLite's migration run lease (issue 10, item 5): a migrator that holds it skips the
//! per-migration history re-check, writes each history row only while the lease is still
//! its own (a lost lease rolls the migration back), takes over from a holder whose process
//! is gone, and waits for one that is alive. Concurrency: the CLI's E1 (8 migrator
//! processes, every migration exactly once) runs on SQLite with the lease.

use std::time::Duration;

use larder::migrate::{self, MigrateError, MigrateOptions, MigrationSet, Migrator};
use larder::sqlite::SqliteUowExt;
use larder_testkit::backends::{self, TestDb};

fn app(files: &[(&str, &str)]) -> migrate::Module {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    migrate::parse_module("app", &files, "test").unwrap()
}

fn migrator(files: &[(&str, &str)], lock_timeout: Duration) -> Migrator {
    Migrator::new(MigrationSet::new(vec![app(files)]).unwrap()).with_options(MigrateOptions {
        lock_timeout,
        ..MigrateOptions::default()
    })
}

async fn exec(db: &TestDb, sql: &str) {
    let mut uow = db.store.begin().await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_owned()))
        .execute(uow.sqlite().unwrap())
        .await
        .unwrap();
    uow.commit().await.unwrap();
}

async fn tables(db: &TestDb) -> Vec<String> {
    let mut uow = db.store.read().await.unwrap();
    let t = sqlx::query_scalar(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 't_%' ORDER BY name",
    )
    .fetch_all(uow.sqlite_bounded().await.unwrap())
    .await
    .unwrap();
    uow.commit().await.unwrap();
    t
}

fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

async fn hold_lease(db: &TestDb, owner: &str) {
    exec(
        db,
        &format!(
            "CREATE TABLE IF NOT EXISTS _larder_migration_lock (id INTEGER PRIMARY KEY \
             CHECK (id = 1), owner TEXT NOT NULL, expires_at BIGINT NOT NULL); \
             INSERT OR REPLACE INTO _larder_migration_lock VALUES (1, '{owner}', 9999999999999)"
        ),
    )
    .await;
}

#[tokio::test]
async fn a_lost_lease_rolls_the_migration_back_and_stops() {
    let db = backends::sqlite("migrate_lease::lost").await.unwrap();
    // Migration 2 hands the lease to someone else inside its own transaction, as a
    // migrator that took over during a slow run would have: its history row is refused,
    // and the whole migration (its table too) rolls back.
    let m = migrator(
        &[
            ("1_one.sql", "CREATE TABLE t_one (id INTEGER);"),
            (
                "2_two.sql",
                "CREATE TABLE t_two (id INTEGER); \
                 UPDATE _larder_migration_lock SET owner = 'another/1/x';",
            ),
            ("3_three.sql", "CREATE TABLE t_three (id INTEGER);"),
        ],
        Duration::from_secs(5),
    );
    let mut d = migrate::driver(&db.store).await.unwrap();
    let e = m.up(d.as_mut(), None, &mut |_, _, _| {}).await.unwrap_err();
    assert!(e.to_string().contains("run lease was taken over"), "{e}");
    drop(d);
    assert_eq!(
        tables(&db).await,
        ["t_one"],
        "migration 2 left nothing, 3 never ran"
    );
    db.finish().await;
}

#[tokio::test]
async fn a_lease_of_a_gone_process_is_taken_over_at_once() {
    if host().is_empty() {
        return; // not Linux: a gone holder is waited out (its expiry)
    }
    let db = backends::sqlite("migrate_lease::gone").await.unwrap();
    // A holder on this host whose process does not exist (above any pid Linux hands out).
    hold_lease(&db, &format!("{}/4999999/dead", host())).await;
    let m = migrator(
        &[("1_one.sql", "CREATE TABLE t_one (id INTEGER);")],
        Duration::from_secs(1),
    );
    let mut d = migrate::driver(&db.store).await.unwrap();
    let r = m.up(d.as_mut(), None, &mut |_, _, _| {}).await.unwrap();
    assert_eq!(r.applied.len(), 1);
    drop(d);
    db.finish().await;
}

#[tokio::test]
async fn a_live_holder_is_waited_for_until_the_lock_timeout() {
    let db = backends::sqlite("migrate_lease::live").await.unwrap();
    // Process 1 always runs (and other hosts are never judged): wait for the expiry.
    hold_lease(&db, &format!("{}/1/alive", host())).await;
    let m = migrator(
        &[("1_one.sql", "CREATE TABLE t_one (id INTEGER);")],
        Duration::from_millis(300),
    );
    let mut d = migrate::driver(&db.store).await.unwrap();
    let e = m.up(d.as_mut(), None, &mut |_, _, _| {}).await.unwrap_err();
    assert!(matches!(e, MigrateError::LockTimeout(_)), "{e:?}");
    drop(d);
    assert!(tables(&db).await.is_empty());
    db.finish().await;
}
