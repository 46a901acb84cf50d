//! The SQLite pool and how connections are configured.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use larder_core::backend::{Backend, BeginOptions, BoxFuture, Capabilities, Transaction};
use larder_core::settings::{Settings, Synchronous, UrlRules};
use larder_core::{EntityDef, Error, Result};
use larder_sql::{SqlMigrationDriver, SqlPool};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

use crate::error::{BACKEND, map};
use crate::uow::{Lite, LiteState, SqliteTransaction};

/// The SQLite backend: a pool of connections to one database file.
#[derive(Clone, Debug)]
pub struct SqliteBackend {
    sql: SqlPool<Lite>,
    /// The write permit: SQLite has one writer at a time, and its busy handler (sleep and
    /// poll) is unfair — the writer that just committed takes the lock again while the
    /// others sleep. Writers of this backend queue for this FIFO permit before `BEGIN
    /// IMMEDIATE`, so `SQLITE_BUSY` only happens against other processes (or other
    /// backends on the same file), and waits are in arrival order, bounded by the deadline.
    writer: Arc<tokio::sync::Semaphore>,
    /// How long a writer waits for the permit before `Transient(Busy)` (SQLite's own busy
    /// timeout: the same contract as before, now in arrival order).
    busy_timeout: Duration,
}

const DEFAULT_MAX_CONNECTIONS: u32 = 4;

/// What sqlx's SQLite driver reads from a URL (`SqliteConnectOptions::from_str`).
const URL_RULES: UrlRules = UrlRules {
    backend: "sqlite",
    hierarchical: false,
    params: &["mode", "cache", "immutable", "vfs"],
};

impl SqliteBackend {
    /// Opens (creating if missing) the database named by `settings.database_url`:
    /// `sqlite://path/to/file.db`, `sqlite:relative.db` or `sqlite::memory:`.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a query parameter the driver does not know (named,
    /// its value never shown), before the driver sees it.
    pub async fn connect(settings: &Settings) -> Result<SqliteBackend> {
        settings.database_url.check(&URL_RULES)?;
        let url = settings.database_url.expose();
        let mut opts = SqliteConnectOptions::from_str(url)
            .map_err(|e| {
                Error::Configuration(format!(
                    "invalid sqlite url `{}`: {}",
                    settings.database_url,
                    larder_core::settings::redact_text(&e.to_string())
                ))
            })?
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(settings.sqlite.busy_timeout)
            .synchronous(match settings.sqlite.synchronous {
                Synchronous::Full => SqliteSynchronous::Full,
                Synchronous::Normal => SqliteSynchronous::Normal,
            })
            .with_regexp();
        if !url.contains(":memory:") && !url.contains("mode=memory") {
            opts = opts.journal_mode(SqliteJournalMode::Wal);
        }
        // Switching a file to WAL takes an exclusive lock, and SQLite answers SQLITE_BUSY
        // at once (without its busy handler) when another process opens the same fresh
        // file at that moment: retry for up to the busy timeout, as the handler would.
        let give_up = std::time::Instant::now() + settings.sqlite.busy_timeout;
        let mut pause = Duration::from_millis(5);
        let pool = loop {
            let r = SqlitePoolOptions::new()
                .max_connections(
                    settings
                        .max_connections
                        .unwrap_or(DEFAULT_MAX_CONNECTIONS)
                        .max(1),
                )
                .min_connections(settings.min_connections)
                .acquire_timeout(settings.acquire_timeout)
                .idle_timeout(Some(Duration::from_secs(600)))
                .connect_with(opts.clone())
                .await
                .map_err(|e| map(e, "connect"));
            match r {
                Err(Error::Transient { .. }) if std::time::Instant::now() < give_up => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(100));
                }
                other => break other?,
            }
        };
        if double_quoted_strings_enabled(&pool).await {
            // Built without `LIBSQLITE3_FLAGS=-DSQLITE_DQS=0` (see the crate docs): a
            // column missing from a table would read as a string literal. Registration
            // checks tables against their entities, so this only matters for tables
            // altered behind larder's back.
            tracing::warn!(
                target: "larder::sqlite",
                "this SQLite library accepts double-quoted string literals; build it with LIBSQLITE3_FLAGS=-DSQLITE_DQS=0 so that an unknown column is always an error"
            );
        }
        let mut backend =
            SqliteBackend::from_pool(pool).with_record_query_text(settings.record_query_text);
        backend.busy_timeout = settings.sqlite.busy_timeout;
        Ok(backend)
    }

    /// Wraps an existing pool. The caller is responsible for its pragmas; prefer
    /// [`SqliteBackend::connect`].
    pub fn from_pool(pool: SqlitePool) -> SqliteBackend {
        let endpoint = larder_core::backend::Endpoint {
            namespace: pool
                .connect_options()
                .get_filename()
                .file_name()
                .map(|f| f.to_string_lossy().into_owned()),
            address: None,
            port: None,
        };
        let caps = Capabilities::default()
            .with_regex(true)
            .with_server_side_cancel(true);
        SqliteBackend {
            sql: SqlPool::new(pool, caps, endpoint),
            writer: Arc::new(tokio::sync::Semaphore::new(1)),
            busy_timeout: Duration::from_secs(5),
        }
    }

    /// Records `db.query.text` on spans.
    #[must_use]
    pub fn with_record_query_text(mut self, yes: bool) -> Self {
        self.sql.record_query_text = yes;
        self
    }

    /// The sqlx pool (for raw SQL outside larder; inside a unit of work use
    /// [`SqliteUowExt`](crate::SqliteUowExt)).
    pub fn pool(&self) -> &SqlitePool {
        &self.sql.pool
    }

    /// Wraps the backend into a store.
    pub fn into_store(self, config: larder_core::StoreConfig) -> larder_core::Store {
        larder_core::Store::with_config(Arc::new(self), config)
    }
}

impl SqliteBackend {
    /// Waits (FIFO) for this backend's write permit.
    async fn write_permit(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        // Uncontended: no timer.
        if let Ok(p) = self.writer.clone().try_acquire_owned() {
            return Ok(p);
        }
        match tokio::time::timeout(self.busy_timeout, self.writer.clone().acquire_owned()).await {
            Ok(Ok(p)) => Ok(p),
            Ok(Err(_)) => Err(Error::Closed("sqlite backend")),
            // The same answer SQLite's busy handler gives after its timeout (a task that
            // opens a second write unit of work while holding one ends up here, not hung).
            Err(_) => Err(Error::Transient {
                kind: larder_core::TransientKind::Busy,
            }),
        }
    }
}

/// Runs migrations on SQLite (writers are serialized by `BEGIN IMMEDIATE`; each migration
/// re-checks the history inside its write transaction). Create one with
/// [`SqliteBackend::migration_driver`].
pub type SqliteMigrationDriver = SqlMigrationDriver<Lite>;

impl SqliteBackend {
    /// A migration driver on a dedicated connection of this pool.
    pub async fn migration_driver(&self) -> Result<SqliteMigrationDriver> {
        self.sql.migration_driver().await
    }
}

impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn endpoint(&self) -> &larder_core::backend::Endpoint {
        &self.sql.endpoint
    }

    fn capabilities(&self) -> &Capabilities {
        &self.sql.caps
    }

    fn begin<'a>(&'a self, opts: &'a BeginOptions) -> BoxFuture<'a, Result<Box<dyn Transaction>>> {
        Box::pin(async move {
            // Writers take the write lock up front (BEGIN IMMEDIATE): a read-then-write
            // transaction can then never fail with SQLITE_BUSY on its first write.
            // Writers queue in arrival order for the in-process write permit first (the
            // core bounds this wait by the unit of work's deadline).
            let permit = if opts.read_only {
                None
            } else {
                Some(self.write_permit().await?)
            };
            // larder runs the transaction control itself (see `larder_sql::SqlTx`).
            let mut tx = self
                .sql
                .pool
                .acquire()
                .await
                .map_err(|e| map(e, "uow.begin"))?;
            let mut tx = if opts.read_only {
                // A deferred read transaction: its `BEGIN` travels with the first read (one
                // request to sqlx's worker thread fewer; the snapshot is the same, taken by
                // that first read either way).
                SqliteTransaction::new(tx, self.sql.record_query_text, LiteState::new(None))
                    .begin_with_first_read("BEGIN")
            } else {
                if let Err(e) = sqlx::raw_sql("BEGIN IMMEDIATE").execute(&mut *tx).await {
                    // A failed BEGIN leaves no transaction on the connection.
                    return Err(map(e, "uow.begin"));
                }
                SqliteTransaction::new(tx, self.sql.record_query_text, LiteState::new(permit))
            };
            tx.set_deadline(opts.deadline);
            Ok(Box::new(tx) as Box<dyn Transaction>)
        })
    }

    fn prepare<'a>(&'a self, def: &'a EntityDef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Under the write lock (permit, then `BEGIN IMMEDIATE`): nobody creates or alters
            // the table in between.
            let _permit = self.write_permit().await?;
            self.sql.register(def).await
        })
    }

    fn prepare_events(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.sql.prepare_events())
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.sql.pool.close())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Whether this SQLite library reads an unknown double-quoted identifier as a string
/// literal (the DQS misfeature): `SELECT "x"` then returns `'x'` instead of failing.
pub(crate) async fn double_quoted_strings_enabled(pool: &SqlitePool) -> bool {
    sqlx::query_scalar::<_, String>("SELECT \"larder_dqs_probe\"")
        .fetch_one(pool)
        .await
        .is_ok()
}
