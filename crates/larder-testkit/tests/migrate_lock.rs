//! The PostgreSQL migration lock: taken by polling with a timeout, released on every path
//! (a failed migration included), one per schema.

use std::time::{Duration, Instant};

use larder::migrate::{self, MigrateError, MigrateOptions, MigrationSet, Migrator};
use larder::postgres::PgUowExt;
use larder_testkit::backends;

const KEY: &str = "hashtextextended('larder.migrate.' || current_schema(), 0)";

fn set(files: &[(&str, &str)]) -> MigrationSet {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    MigrationSet::new(vec![migrate::parse_module("app", &files, "test").unwrap()]).unwrap()
}

async fn lock_is_free(store: &larder::Store) -> bool {
    let mut uow = store.begin().await.unwrap();
    let conn = uow.postgres().unwrap();
    let got: bool = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT pg_try_advisory_lock({KEY})"
    )))
    .fetch_one(&mut *conn)
    .await
    .unwrap();
    if got {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT pg_advisory_unlock({KEY})"
        )))
        .execute(&mut *conn)
        .await
        .unwrap();
    }
    uow.commit().await.unwrap();
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lock_is_released_after_a_failed_migration() {
    let Some(db) = backends::postgres("migrate_lock::released").await else {
        return;
    };
    let m = Migrator::new(set(&[
        ("1_ok.sql", "CREATE TABLE ok1 (id INT);"),
        (
            "2_bad.sql",
            "CREATE TABLE t (id INT); SELECT * FROM missing;",
        ),
    ]));
    let mut d = migrate::driver(&db.store).await.unwrap();
    let e = m.up(d.as_mut(), None, &mut |_, _, _| {}).await;
    assert!(matches!(e, Err(MigrateError::Failed(_))), "{e:?}");
    // Same driver session still alive: the lock must have been released explicitly.
    assert!(lock_is_free(&db.store).await);
    drop(d);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_lock_times_out_without_applying_anything() {
    let Some(db) = backends::postgres("migrate_lock::timeout").await else {
        return;
    };
    // Another session (not from the store's pool) holds the lock.
    let opts = <sqlx::postgres::PgConnectOptions as std::str::FromStr>::from_str(
        &backends::postgres_url().unwrap(),
    )
    .unwrap()
    .options([("search_path", db.pg_schema.as_deref().unwrap())]);
    let mut holder = <sqlx::PgConnection as sqlx::Connection>::connect_with(&opts)
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT pg_advisory_lock({KEY})"
    )))
    .execute(&mut holder)
    .await
    .unwrap();
    let m = Migrator::new(set(&[("1_a.sql", "CREATE TABLE a (id INT);")])).with_options(
        MigrateOptions {
            lock_timeout: Duration::from_millis(700),
            ..MigrateOptions::default()
        },
    );
    // The pool has 4 connections; the holder's connection is idle in the pool, so the
    // driver gets another one.
    let mut d = migrate::driver(&db.store).await.unwrap();
    let started = Instant::now();
    let e = m.up(d.as_mut(), None, &mut |_, _, _| {}).await;
    assert!(matches!(e, Err(MigrateError::LockTimeout(_))), "{e:?}");
    assert!(started.elapsed() < Duration::from_secs(3));
    let v = m.verify(d.as_mut()).await.unwrap();
    assert_eq!(v.pending, 1, "nothing applied");
    drop(d);
    <sqlx::PgConnection as sqlx::Connection>::close(holder)
        .await
        .unwrap();
    db.finish().await;
}
