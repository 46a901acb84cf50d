//! The commands that only look at a store (`doctor`, `events stats|read|tail`,
//! `projections status`) never create a database file, a table or a migration: on a
//! missing or uninitialised store they fail saying so and how to initialise it, and leave
//! everything as it was. Tested by running the real binary, on SQLite and PostgreSQL.
//!
//! PostgreSQL cases use `LARDER_TEST_POSTGRES_URL` with a schema per test, and skip
//! without it unless `LARDER_REQUIRE_BACKENDS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use larder::events::{EventData, EventStore, ExpectedVersion};

/// Every read-only command, as run by a user.
const COMMANDS: &[&[&str]] = &[
    &["doctor"],
    &["events", "stats"],
    &["events", "read", "order-1"],
    &["events", "tail", "--from-start", "--limit", "1"],
    &["projections", "status"],
];

fn larder(url: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_larder"))
        .env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .args(["--database-url", url])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run larder")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Asserts exit code 1 with one line on stderr saying the store is not initialised and
/// naming the command that initialises it; the same in JSON.
#[track_caller]
fn refused_as_not_initialised(url: &str, args: &[&str]) {
    let o = larder(url, args);
    assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    assert!(err.starts_with("error: "), "{args:?}: {err}");
    assert!(err.contains("not initialised"), "{args:?}: {err}");
    assert!(err.contains("`larder migrate up`"), "{args:?}: {err}");
    let mut json = args.to_vec();
    json.push("--json");
    let o = larder(url, &json);
    assert_eq!(o.status.code(), Some(1), "{json:?}: {}", text(&o));
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{json:?}: {e}: {}", text(&o)));
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap().contains("not initialised"),
        "{v}"
    );
}

fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("larder-read-only-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// The tables of a SQLite file and its journal mode, read without changing it.
fn sqlite_tables_and_journal(path: &Path) -> (Vec<String>, String) {
    use sqlx::Connection;
    rt().block_on(async {
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .read_only(true);
        let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&opts)
            .await
            .unwrap();
        let tables: Vec<String> =
            sqlx::query_scalar("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
                .fetch_all(&mut conn)
                .await
                .unwrap();
        let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
        (tables, journal)
    })
}

fn append_one(url: &str) {
    rt().block_on(async {
        let store = larder::open(url).await.unwrap();
        let es = EventStore::open(&store).await.unwrap();
        let mut uow = store.begin().await.unwrap();
        es.append(
            &mut uow,
            "order-1",
            ExpectedVersion::Any,
            vec![EventData::new("OrderPlaced", &serde_json::json!({"n": 1})).unwrap()],
        )
        .await
        .unwrap();
        uow.commit().await.unwrap();
        store.close().await;
    });
}

#[track_caller]
fn works(url: &str, args: &[&str]) -> String {
    let o = larder(url, args);
    assert!(o.status.success(), "{args:?}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn read_only_commands_on_a_missing_sqlite_file_create_nothing() {
    let dir = temp_dir("missing");
    let path = dir.join("typo.db");
    let url = format!("sqlite://{}", path.display());
    for args in COMMANDS {
        refused_as_not_initialised(&url, args);
        assert_eq!(listing(&dir), Vec::<String>::new(), "{args:?} left a file");
    }
    // A relative path (the default `sqlite://larder.db` is one) is looked up where the
    // command runs, and named in full.
    let o = Command::new(env!("CARGO_BIN_EXE_larder"))
        .env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .args(["events", "stats"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("sqlite://larder.db is not initialised"),
        "{err}"
    );
    assert!(
        err.contains(&dir.join("larder.db").display().to_string()),
        "{err}"
    );
    assert_eq!(listing(&dir), Vec::<String>::new());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_only_commands_on_a_sqlite_file_without_larder_tables_change_nothing() {
    let dir = temp_dir("foreign");
    let path = dir.join("other-app.db");
    // Another program's database, in SQLite's default rollback-journal mode.
    rt().block_on(async {
        use sqlx::Connection;
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(&path)
            .create_if_missing(true);
        let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&opts)
            .await
            .unwrap();
        sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
    let before = std::fs::read(&path).unwrap();
    let url = format!("sqlite://{}", path.display());
    for args in COMMANDS {
        refused_as_not_initialised(&url, args);
        assert_eq!(listing(&dir), ["other-app.db"], "{args:?}");
    }
    let (tables, journal) = sqlite_tables_and_journal(&path);
    assert_eq!(tables, ["notes"], "no table was created");
    assert_eq!(journal, "delete", "the journal mode was left alone");
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the file is unchanged"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn read_only_commands_work_on_an_initialised_sqlite_store_and_apply_nothing() {
    let dir = temp_dir("initialised");
    let path = dir.join("app.db");
    let url = format!("sqlite://{}", path.display());
    let o = Command::new(env!("CARGO_BIN_EXE_larder"))
        .env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .args(["--database-url", &url, "migrate", "up"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    append_one(&url);
    let (tables, _) = sqlite_tables_and_journal(&path);
    for args in COMMANDS {
        works(&url, args);
    }
    assert_eq!(sqlite_tables_and_journal(&path).0, tables);
    let out = works(&url, &["events", "stats"]);
    assert!(out.contains("events    1"), "{out}");
    assert!(out.contains("head      c1.0.1 (position 1)"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn an_outdated_sqlite_store_is_refused_naming_the_missing_migration() {
    let dir = temp_dir("outdated");
    let path = dir.join("app.db");
    let url = format!("sqlite://{}", path.display());
    append_one(&url); // EventStore::open initialises it
    // As if it had been initialised by a larder without the event-store migration.
    rt().block_on(async {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query("DELETE FROM _larder_migrations WHERE name = 'event_store'")
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    for args in COMMANDS {
        let o = larder(&url, args);
        assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains("not initialised"), "{err}");
        assert!(err.contains("larder/"), "names the migration: {err}");
        assert!(err.contains("_event_store is not applied"), "{err}");
        assert!(err.contains("`larder migrate up`"), "{err}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

fn pg_url() -> Option<String> {
    let url = std::env::var("LARDER_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty());
    if url.is_none() {
        assert!(
            std::env::var("LARDER_REQUIRE_BACKENDS").as_deref() != Ok("1"),
            "LARDER_TEST_POSTGRES_URL is not set and LARDER_REQUIRE_BACKENDS=1 forbids skipping"
        );
        eprintln!("SKIPPED: LARDER_TEST_POSTGRES_URL is not set");
    }
    url
}

async fn pg_tables(pool: &sqlx::PgPool, schema: &str) -> Vec<String> {
    sqlx::query_scalar("SELECT tablename::text FROM pg_tables WHERE schemaname = $1 ORDER BY 1")
        .bind(schema)
        .fetch_all(pool)
        .await
        .unwrap()
}

#[test]
fn read_only_commands_on_an_uninitialised_postgres_schema_create_nothing() {
    let Some(base) = pg_url() else { return };
    let schema = "lro_uninitialised";
    let rt = rt();
    let pool = rt.block_on(async {
        let pool = sqlx::PgPool::connect(&base).await.unwrap();
        for s in [
            format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
            format!("CREATE SCHEMA {schema}"),
        ] {
            sqlx::query(sqlx::AssertSqlSafe(s))
                .execute(&pool)
                .await
                .unwrap();
        }
        pool
    });
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}options=-c%20search_path%3D{schema}");
    for args in COMMANDS {
        refused_as_not_initialised(&url, args);
        assert_eq!(
            rt.block_on(pg_tables(&pool, schema)),
            Vec::<String>::new(),
            "{args:?} created a table"
        );
    }
    let empty = temp_dir("pg_migrations");
    let dir = empty.display().to_string();
    let o = larder(&url, &["migrate", "up", "--dir", &dir]);
    assert!(o.status.success(), "{}", text(&o));
    append_one(&url);
    let tables = rt.block_on(pg_tables(&pool, schema));
    for args in COMMANDS {
        works(&url, args);
    }
    assert_eq!(rt.block_on(pg_tables(&pool, schema)), tables);
    // PostgreSQL checkpoints have a transaction part.
    let out = works(&url, &["events", "stats"]);
    assert!(out.contains("head      c1."), "{out}");
    assert!(
        out.contains(" (tx ") && out.contains(", position "),
        "{out}"
    );
    rt.block_on(async {
        sqlx::query(sqlx::AssertSqlSafe(format!("DROP SCHEMA {schema} CASCADE")))
            .execute(&pool)
            .await
            .unwrap();
        pool.close().await;
    });
    std::fs::remove_dir_all(&empty).unwrap();
}
