//! The databases a benchmark runs on: a larder store and a raw sqlx pool on the same
//! database, with the same durability settings and pool shape.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use larder::postgres::PgUowExt;
use larder::sqlite::SqliteUowExt;
use larder::{Entity, Settings, Store};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::data::{Customer, LARDER_TABLE, RAW_TABLE};
use crate::raw;

/// The PostgreSQL schema every benchmark table lives in (dropped and created at start).
pub(crate) const PG_SCHEMA: &str = "larder_bench";

/// PostgreSQL: what `fresh()` drops besides the entity tables.
const EVENT_TABLES_DROP: &str = "DROP TABLE IF EXISTS larder_events, larder_streams, \
     larder_snapshots, larder_checkpoints, raw_events, _larder_migrations, _larder_outbox, \
     _larder_outbox_partitions, _larder_outbox_relays, _larder_inbox, bench_raw_outbox, \
     _larder_blob_refs, _larder_blob_objects";

/// larder's default pool sizes (`Settings::max_connections = None`), mirrored by the raw
/// pools so both sides have the same pool shape.
const SQLITE_POOL: u32 = 4;
const PG_POOL: u32 = 8;

/// A database engine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// An SQLite file in a temporary directory.
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

impl Kind {
    /// The name printed in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Kind::Sqlite => "SQLite",
            Kind::Postgres => "PostgreSQL",
        }
    }
}

/// Where fresh databases come from for one backend.
#[derive(Debug)]
pub(crate) struct Target {
    /// The engine.
    pub(crate) kind: Kind,
    pg_url: String,
    sqlite_dir: PathBuf,
    counter: AtomicU32,
}

impl Target {
    /// Prepares a backend: for PostgreSQL, drops and recreates the benchmark schema.
    pub(crate) async fn new(kind: Kind, pg_url: &str, sqlite_dir: &Path) -> Result<Target> {
        if kind == Kind::Postgres {
            let opts = PgConnectOptions::from_str(pg_url).context("parse the PostgreSQL url")?;
            let admin = PgPoolOptions::new()
                .max_connections(1)
                .connect_with(opts)
                .await
                .with_context(|| {
                    format!(
                        "connect to PostgreSQL at {} (set LARDER_BENCH_POSTGRES_URL)",
                        larder::settings::redact_url(pg_url)
                    )
                })?;
            sqlx::query("DROP SCHEMA IF EXISTS larder_bench CASCADE")
                .execute(&admin)
                .await?;
            sqlx::query("CREATE SCHEMA larder_bench")
                .execute(&admin)
                .await?;
            admin.close().await;
        } else {
            std::fs::create_dir_all(sqlite_dir)
                .with_context(|| format!("create {}", sqlite_dir.display()))?;
        }
        Ok(Target {
            kind,
            pg_url: pg_url.to_owned(),
            sqlite_dir: sqlite_dir.to_owned(),
            counter: AtomicU32::new(0),
        })
    }

    /// A fresh database with both tables created empty: larder's through
    /// `store.register::<Customer>()`, the raw one through hand-written DDL of the same
    /// shape. SQLite: a new file; PostgreSQL: both tables dropped and recreated.
    pub(crate) async fn fresh(&self) -> Result<Db> {
        let db = match self.kind {
            Kind::Sqlite => {
                let n = self.counter.fetch_add(1, Ordering::Relaxed);
                let path = self
                    .sqlite_dir
                    .join(format!("larder-bench-{}-{n}.db", std::process::id()));
                remove_sqlite_files(&path);
                let settings = Settings::from_url(format!("sqlite://{}", path.display()));
                let store = larder::connect(&settings)
                    .await
                    .context("open larder on SQLite")?;
                let opts = SqliteConnectOptions::new()
                    .filename(&path)
                    .create_if_missing(true)
                    .foreign_keys(true)
                    .busy_timeout(settings.sqlite.busy_timeout)
                    .synchronous(SqliteSynchronous::Full)
                    .journal_mode(SqliteJournalMode::Wal);
                let pool = SqlitePoolOptions::new()
                    .max_connections(SQLITE_POOL)
                    .min_connections(settings.min_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .idle_timeout(Some(Duration::from_secs(600)))
                    .connect_with(opts)
                    .await
                    .context("open the raw SQLite pool")?;
                Db {
                    store,
                    raw: Raw::Sqlite(pool),
                    sqlite_path: Some(path),
                }
            }
            Kind::Postgres => {
                let base =
                    PgConnectOptions::from_str(&self.pg_url)?.options([("search_path", PG_SCHEMA)]);
                let settings = Settings::from_url(self.pg_url.clone());
                let raw_pool = PgPoolOptions::new()
                    .max_connections(PG_POOL)
                    .min_connections(settings.min_connections)
                    .acquire_timeout(settings.acquire_timeout)
                    .idle_timeout(Some(Duration::from_secs(600)))
                    .connect_with(base.clone().application_name("larder-bench-raw"))
                    .await
                    .context("open the raw PostgreSQL pool")?;
                for t in [LARDER_TABLE, RAW_TABLE] {
                    sqlx::query(sqlx::AssertSqlSafe(format!("DROP TABLE IF EXISTS \"{t}\"")))
                        .execute(&raw_pool)
                        .await?;
                }
                // The event store's tables (and the history that says they exist), so
                // `EventStore::open` creates them afresh, like a new SQLite file.
                sqlx::query(EVENT_TABLES_DROP).execute(&raw_pool).await?;
                let backend = larder::postgres::PgBackend::connect_with(base, &settings)
                    .await
                    .context("open larder on PostgreSQL")?;
                Db {
                    store: backend.into_store(settings.store_config()),
                    raw: Raw::Pg(raw_pool),
                    sqlite_path: None,
                }
            }
        };
        db.store
            .register::<Customer>()
            .await
            .context("register the entity")?;
        raw::create_table(&db.raw)
            .await
            .context("create the raw table")?;
        Ok(db)
    }
}

impl Target {
    /// PostgreSQL: another larder store on the benchmark schema, with appends sending
    /// `NOTIFY` or not (`PgBackend::with_notify`). Same settings and pool shape as the
    /// store of [`Target::fresh`].
    pub(crate) async fn pg_store(&self, notify: bool) -> Result<Store> {
        if self.kind != Kind::Postgres {
            bail!("pg_store on {}", self.kind.name());
        }
        let base = PgConnectOptions::from_str(&self.pg_url)?.options([("search_path", PG_SCHEMA)]);
        let settings = Settings::from_url(self.pg_url.clone());
        let backend = larder::postgres::PgBackend::connect_with(base, &settings)
            .await
            .context("open larder on PostgreSQL")?
            .with_notify(notify);
        Ok(backend.into_store(settings.store_config()))
    }
}

fn remove_sqlite_files(path: &Path) {
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
}

/// The raw sqlx pool of one database.
#[derive(Debug, Clone)]
pub(crate) enum Raw {
    /// SQLite.
    Sqlite(SqlitePool),
    /// PostgreSQL.
    Pg(PgPool),
}

/// One fresh database: larder's store and the raw pool, both on it.
#[derive(Debug)]
pub(crate) struct Db {
    /// larder.
    pub(crate) store: Store,
    /// Raw sqlx.
    pub(crate) raw: Raw,
    sqlite_path: Option<PathBuf>,
}

impl Db {
    /// Closes both pools and deletes the SQLite file.
    pub(crate) async fn close(self) {
        self.store.close().await;
        match &self.raw {
            Raw::Sqlite(p) => p.close().await,
            Raw::Pg(p) => p.close().await,
        }
        if let Some(p) = &self.sqlite_path {
            remove_sqlite_files(p);
        }
    }

    /// Where the data lives (SQLite file or the redacted PostgreSQL target).
    pub(crate) fn location(&self, target: &Target) -> String {
        match &self.sqlite_path {
            Some(p) => p.display().to_string(),
            None => format!(
                "{} (schema {PG_SCHEMA})",
                larder::settings::redact_url(&target.pg_url)
            ),
        }
    }

    /// The durability settings read back from the database, through larder's own
    /// connection and through the raw pool.
    pub(crate) async fn durability(&self) -> Result<(String, String)> {
        let mut uow = self.store.read().await?;
        let larder_side = match &self.raw {
            Raw::Sqlite(_) => {
                let conn = uow
                    .sqlite_bounded()
                    .await
                    .context("larder's SQLite connection")?;
                sqlite_durability(conn).await?
            }
            Raw::Pg(_) => {
                let conn = uow
                    .postgres_bounded()
                    .await
                    .context("larder's PostgreSQL connection")?;
                pg_durability(conn).await?
            }
        };
        uow.commit().await?;
        let raw_side = match &self.raw {
            Raw::Sqlite(p) => sqlite_durability(&mut *p.acquire().await?).await?,
            Raw::Pg(p) => pg_durability(&mut *p.acquire().await?).await?,
        };
        Ok((larder_side, raw_side))
    }

    /// The server / library version.
    pub(crate) async fn version(&self) -> Result<String> {
        Ok(match &self.raw {
            Raw::Sqlite(p) => {
                let v: String = sqlx::query_scalar("SELECT sqlite_version()")
                    .fetch_one(p)
                    .await?;
                format!("SQLite {v}")
            }
            Raw::Pg(p) => {
                let v: String = sqlx::query_scalar("SHOW server_version")
                    .fetch_one(p)
                    .await?;
                format!("PostgreSQL {v}")
            }
        })
    }
}

async fn sqlite_durability(conn: &mut sqlx::SqliteConnection) -> Result<String> {
    let journal: String = sqlx::query_scalar("PRAGMA journal_mode")
        .fetch_one(&mut *conn)
        .await?;
    let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
        .fetch_one(&mut *conn)
        .await?;
    let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
        .fetch_one(&mut *conn)
        .await?;
    let busy: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
        .fetch_one(&mut *conn)
        .await?;
    let sync_name = match sync {
        0 => "OFF",
        1 => "NORMAL",
        2 => "FULL",
        3 => "EXTRA",
        _ => "?",
    };
    if sync != 2 || !journal.eq_ignore_ascii_case("wal") {
        bail!("unexpected SQLite durability: journal_mode={journal} synchronous={sync}");
    }
    Ok(format!(
        "journal_mode={journal} synchronous={sync} ({sync_name}) foreign_keys={fk} busy_timeout={busy}ms"
    ))
}

async fn pg_durability(conn: &mut sqlx::PgConnection) -> Result<String> {
    let mut out = Vec::new();
    for (name, sql) in [
        ("fsync", "SHOW fsync"),
        ("synchronous_commit", "SHOW synchronous_commit"),
        ("full_page_writes", "SHOW full_page_writes"),
        ("wal_sync_method", "SHOW wal_sync_method"),
    ] {
        let v: String = sqlx::query_scalar(sql).fetch_one(&mut *conn).await?;
        out.push(format!("{name}={v}"));
    }
    Ok(out.join(" "))
}

/// Checks that the raw DDL is larder's DDL with the table renamed; returns larder's DDL.
pub(crate) fn check_ddl(kind: Kind) -> Result<Vec<String>> {
    let dialect = match kind {
        Kind::Sqlite => larder::sql::Dialect::Sqlite,
        Kind::Postgres => larder::sql::Dialect::Postgres,
    };
    let larder_ddl = larder::sql::ddl::create_table(Customer::def(), dialect)?;
    let renamed: Vec<String> = larder_ddl
        .iter()
        .map(|s| s.replace(LARDER_TABLE, RAW_TABLE))
        .collect();
    let raw_ddl: Vec<String> = raw::ddl(kind).iter().map(|s| (*s).to_owned()).collect();
    if renamed != raw_ddl {
        bail!(
            "the raw table's DDL differs from larder's:\nlarder: {renamed:#?}\nraw:    {raw_ddl:#?}"
        );
    }
    Ok(larder_ddl)
}
