//! Backend factories: one fresh database per test.

use std::path::PathBuf;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};

use larder::{Settings, Store, StoreConfig};

/// A store for one test, and what to clean up afterwards.
#[derive(Debug)]
pub struct TestDb {
    /// The store.
    pub store: Store,
    /// The backend name (`memory`, `sqlite`, `postgresql`).
    pub backend: &'static str,
    /// The SQLite file, if any.
    pub sqlite_path: Option<PathBuf>,
    /// The PostgreSQL schema, if any.
    pub pg_schema: Option<String>,
}

impl TestDb {
    /// Closes the pool and removes the SQLite files (PostgreSQL schemas are dropped when
    /// the same test next runs, so a failing test leaves its data to inspect).
    pub async fn finish(self) {
        self.store.close().await;
        if let Some(p) = &self.sqlite_path {
            for suffix in ["", "-wal", "-shm"] {
                let _ = std::fs::remove_file(format!("{}{suffix}", p.display()));
            }
        }
    }
}

/// Whether CI demands every backend (`LARDER_REQUIRE_BACKENDS=1`).
pub fn backends_required() -> bool {
    std::env::var("LARDER_REQUIRE_BACKENDS").is_ok_and(|v| v == "1" || v == "true")
}

/// Skips (printing why) or, when backends are required, fails.
pub fn skip(test: &str, reason: &str) {
    assert!(
        !backends_required(),
        "{test}: {reason}, and LARDER_REQUIRE_BACKENDS=1 forbids skipping"
    );
    // Written to the process's stderr directly, not through `eprintln!`: the test harness
    // captures `eprintln!` of passing tests, so a skipped test would look like a pass.
    use std::io::Write;
    let _ = writeln!(
        std::io::stderr().lock(),
        "SKIPPED (did not run) {test}: {reason}"
    );
}

/// The in-memory backend.
pub async fn memory(_test: &str) -> Option<TestDb> {
    Some(memory_with(StoreConfig::default()))
}

/// The in-memory backend with a configuration.
pub fn memory_with(config: StoreConfig) -> TestDb {
    TestDb {
        store: Store::with_config(
            std::sync::Arc::new(larder::backend::MemoryBackend::new()),
            config,
        ),
        backend: "memory",
        sqlite_path: None,
        pg_schema: None,
    }
}

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// A fresh SQLite file in the temporary directory.
pub async fn sqlite(test: &str) -> Option<TestDb> {
    Some(sqlite_with(test, |_| {}, StoreConfig::default()).await)
}

/// A fresh SQLite file, with settings adjusted by `tweak`.
pub async fn sqlite_with(
    test: &str,
    tweak: impl FnOnce(&mut Settings),
    config: StoreConfig,
) -> TestDb {
    let dir = std::env::temp_dir().join("larder-tests");
    std::fs::create_dir_all(&dir).expect("create temp dir");
    let path = dir.join(format!(
        "{}-{}-{}.db",
        sanitize(test),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    let mut settings = Settings::from_url(format!("sqlite://{}", path.display()));
    tweak(&mut settings);
    let backend = larder::sqlite::SqliteBackend::connect(&settings)
        .await
        .expect("open sqlite");
    TestDb {
        store: backend.into_store(config),
        backend: "sqlite",
        sqlite_path: Some(path),
        pg_schema: None,
    }
}

/// The PostgreSQL server URL for tests, if configured.
pub fn postgres_url() -> Option<String> {
    std::env::var("LARDER_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
}

/// A fresh schema named after the test on `LARDER_TEST_POSTGRES_URL`; `None` (skipped)
/// when the variable is unset.
pub async fn postgres(test: &str) -> Option<TestDb> {
    postgres_with(test, |_| {}, StoreConfig::default()).await
}

/// [`postgres`] with settings and configuration.
pub async fn postgres_with(
    test: &str,
    tweak: impl FnOnce(&mut Settings),
    config: StoreConfig,
) -> Option<TestDb> {
    let Some(url) = postgres_url() else {
        skip(test, "LARDER_TEST_POSTGRES_URL is not set");
        return None;
    };
    let schema = schema_name(test);
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{test}: cannot connect to LARDER_TEST_POSTGRES_URL: {e}"));
    for stmt in [
        format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        format!("CREATE SCHEMA \"{schema}\""),
    ] {
        sqlx::query(sqlx::AssertSqlSafe(stmt))
            .execute(&admin)
            .await
            .expect("create test schema");
    }
    admin.close().await;
    let mut settings = Settings::from_url(url.clone());
    settings.max_connections = Some(4);
    tweak(&mut settings);
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
        .expect("postgres url")
        .options([("search_path", schema.as_str())])
        // One application name per test (its schema name): session checks in tests look
        // at their own sessions only, not at other tests' running at the same time.
        .application_name(&schema);
    let backend = larder::postgres::PgBackend::connect_with(opts, &settings)
        .await
        .expect("connect to postgres");
    Some(TestDb {
        store: backend.into_store(config),
        backend: "postgresql",
        sqlite_path: None,
        pg_schema: Some(schema),
    })
}

fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '_'
            }
        })
        .collect()
}

/// A valid, unique-per-test schema name (≤ 63 bytes).
pub fn schema_name(test: &str) -> String {
    let h = test.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    });
    let mut s = sanitize(test);
    s.truncate(40);
    format!("lt_{s}_{:08x}", h & 0xffff_ffff)
}

/// Opens an existing SQLite file (e.g. one a parent test process created with [`sqlite`]),
/// with settings adjusted by `tweak`. [`TestDb::finish`] leaves the file in place: its
/// creator removes it.
pub async fn sqlite_existing(
    path: &std::path::Path,
    tweak: impl FnOnce(&mut Settings),
    config: StoreConfig,
) -> TestDb {
    let mut settings = Settings::from_url(format!("sqlite://{}", path.display()));
    tweak(&mut settings);
    let backend = larder::sqlite::SqliteBackend::connect(&settings)
        .await
        .expect("open sqlite");
    TestDb {
        store: backend.into_store(config),
        backend: "sqlite",
        sqlite_path: None,
        pg_schema: None,
    }
}

/// Opens an existing schema on `LARDER_TEST_POSTGRES_URL` by name (e.g. one a parent test
/// process created with [`postgres`]) without dropping it; `None` (skipped) when the
/// variable is unset.
pub async fn postgres_existing(
    schema: &str,
    tweak: impl FnOnce(&mut Settings),
    config: StoreConfig,
) -> Option<TestDb> {
    let Some(url) = postgres_url() else {
        skip(schema, "LARDER_TEST_POSTGRES_URL is not set");
        return None;
    };
    let mut settings = Settings::from_url(url.clone());
    settings.max_connections = Some(4);
    tweak(&mut settings);
    let opts = sqlx::postgres::PgConnectOptions::from_str(&url)
        .expect("postgres url")
        .options([("search_path", schema)]);
    let backend = larder::postgres::PgBackend::connect_with(opts, &settings)
        .await
        .expect("connect to postgres");
    Some(TestDb {
        store: backend.into_store(config),
        backend: "postgresql",
        sqlite_path: None,
        pg_schema: Some(schema.to_owned()),
    })
}
