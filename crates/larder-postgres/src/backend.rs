//! The PostgreSQL pool.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use larder_core::backend::{
    Backend, BeginOptions, BoxFuture, BoxStream, Capabilities, Transaction,
};
use larder_core::settings::{Settings, UrlRules};
use larder_core::{EntityDef, Error, Result};
use larder_sql::{Dialect, SqlDriver, SqlTransaction, ddl};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};

use crate::error::{BACKEND, map};
use crate::uow::PgTransaction;

/// The PostgreSQL backend: a pool of connections to one database.
#[derive(Clone)]
pub struct PgBackend {
    pool: PgPool,
    caps: Capabilities,
    record_query_text: bool,
    notify: bool,
    /// Wakes the notifier task (started at the first commit that appended events).
    notifier: Arc<std::sync::OnceLock<tokio::sync::watch::Sender<u64>>>,
    /// When the last reachability probe ran (see `unless_unavailable`).
    probe: Arc<ProbeGate>,
    /// Database, host and port, for spans.
    endpoint: larder_core::backend::Endpoint,
}

const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// The shortest time between two `NOTIFY larder_events` of one backend.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

// Hand-written: connection options can hold a password; print only what is safe.
impl std::fmt::Debug for PgBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBackend")
            .field("size", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .field("closed", &self.pool.is_closed())
            .field("capabilities", &self.caps)
            .finish()
    }
}

/// What sqlx's PostgreSQL driver reads from a URL (`PgConnectOptions::parse_from_url`):
/// any other parameter would be logged by the driver, value included, so it is refused.
const URL_RULES: UrlRules = UrlRules {
    backend: "postgresql",
    hierarchical: true,
    params: &[
        "sslmode",
        "ssl-mode",
        "sslrootcert",
        "ssl-root-cert",
        "ssl-ca",
        "sslcert",
        "ssl-cert",
        "sslkey",
        "ssl-key",
        "statement-cache-capacity",
        "host",
        "hostaddr",
        "port",
        "dbname",
        "user",
        "password",
        "application_name",
        "options",
        "options[*]",
    ],
};

impl PgBackend {
    /// Connects to `settings.database_url` (`postgres://user:password@host:port/db?…`).
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL of another shape or with a query parameter the
    /// driver does not know (named, its value never shown), before the driver sees it.
    pub async fn connect(settings: &Settings) -> Result<PgBackend> {
        settings.database_url.check(&URL_RULES)?;
        let opts = PgConnectOptions::from_str(settings.database_url.expose()).map_err(|_| {
            // sqlx's message may quote the URL: say what is wrong without it.
            Error::Configuration(format!(
                "invalid postgresql url `{}`",
                settings.database_url
            ))
        })?;
        Self::connect_with(opts, settings).await
    }

    /// Connects with explicit connection options (e.g. a `search_path`), taking pool
    /// settings from `settings`.
    pub async fn connect_with(opts: PgConnectOptions, settings: &Settings) -> Result<PgBackend> {
        let pool = PgPoolOptions::new()
            .max_connections(
                settings
                    .max_connections
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS)
                    .max(1),
            )
            .min_connections(settings.min_connections)
            .acquire_timeout(settings.acquire_timeout)
            .idle_timeout(Some(Duration::from_secs(600)))
            // `larder` unless the URL or the caller named the application.
            .connect_lazy_with(if opts.get_application_name().is_some() {
                opts
            } else {
                opts.application_name("larder")
            });
        // One connection now (the pool is lazy, so its first acquire is this one): a server
        // that is down fails here at once, as `Unavailable` with the cause.
        let first = unless_unavailable(&pool, &ProbeGate::default(), pool.acquire())
            .await
            .map_err(|e| map(e, "connect"))?;
        drop(first);
        Ok(PgBackend::from_pool(pool).with_record_query_text(settings.record_query_text))
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> PgBackend {
        let pool_for_endpoint = pool.clone();
        PgBackend {
            pool,
            caps: Capabilities::default()
                .with_regex(true)
                .with_json_contains(true)
                .with_concurrent_writers(true)
                .with_server_side_cancel(true),
            record_query_text: false,
            notify: true,
            notifier: Arc::new(std::sync::OnceLock::new()),
            endpoint: {
                let o = pool_for_endpoint.connect_options();
                larder_core::backend::Endpoint {
                    namespace: o.get_database().map(str::to_owned),
                    address: Some(o.get_host().to_owned()),
                    port: Some(o.get_port()),
                }
            },
            probe: Arc::new(ProbeGate::default()),
        }
    }

    /// Whether commits that appended events send `NOTIFY larder_events` so subscribers in
    /// other processes wake at once (default on; off: they poll). The notification is sent
    /// after the commit by a background task on a pooled connection, at most once per
    /// 5 ms (commits in between are coalesced) —
    /// not inside the appending transaction, because PostgreSQL serializes the commits of
    /// transactions that notified on a database-wide lock.
    #[must_use]
    pub fn with_notify(mut self, yes: bool) -> Self {
        self.notify = yes;
        self
    }

    /// Records `db.query.text` on spans.
    #[must_use]
    pub fn with_record_query_text(mut self, yes: bool) -> Self {
        self.record_query_text = yes;
        self
    }

    /// The sqlx pool (for raw SQL outside larder; inside a unit of work use
    /// [`PgUowExt`](crate::PgUowExt)).
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Wraps the backend into a store.
    pub fn into_store(self, config: larder_core::StoreConfig) -> larder_core::Store {
        larder_core::Store::with_config(Arc::new(self), config)
    }
}

/// How long an acquire may wait before larder checks whether the server is reachable at
/// all (a pool that is merely busy answers well within this most of the time).
const PROBE_AFTER: Duration = Duration::from_millis(100);

/// At most one reachability probe per backend per this interval (a pool exhausted under
/// load must not open a probe connection per waiting `begin`).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// When a backend last probed the server.
#[derive(Debug, Default)]
struct ProbeGate(std::sync::Mutex<Option<std::time::Instant>>);

impl ProbeGate {
    /// Whether a probe may run now (and, if so, records it).
    fn take(&self) -> bool {
        let mut last = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = std::time::Instant::now();
        if last.is_some_and(|t| now.duration_since(t) < PROBE_EVERY) {
            return false;
        }
        *last = Some(now);
        true
    }
}

/// Runs `acquire` (a pool acquire or begin), but reports an unreachable server promptly:
/// sqlx retries a refused connection until the pool's acquire timeout (5 s by default) and
/// then says only "pool timed out". When the acquire has waited `PROBE_AFTER`, one direct
/// connection attempt is made (at most one per `PROBE_EVERY` per backend); if that fails
/// with a connection-level error (refused, unknown host, reset, server shutting down),
/// that error is returned at once. Otherwise (a busy pool, a slow server) the acquire goes
/// on.
async fn unless_unavailable<T>(
    pool: &PgPool,
    gate: &ProbeGate,
    acquire: impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
) -> std::result::Result<T, sqlx::Error> {
    use futures_util::future::{Either, select};
    use sqlx::{ConnectOptions, Connection};
    let acquire = std::pin::pin!(acquire);
    let acquire = match select(acquire, std::pin::pin!(tokio::time::sleep(PROBE_AFTER))).await {
        Either::Left((r, _)) => return r,
        Either::Right(((), acquire)) => acquire,
    };
    if !gate.take() {
        return acquire.await;
    }
    let options = pool.connect_options();
    let probe = std::pin::pin!(async move { options.connect().await });
    match select(acquire, probe).await {
        Either::Left((r, _)) => r,
        Either::Right((Ok(conn), acquire)) => {
            let _ = conn.close().await;
            acquire.await
        }
        Either::Right((Err(e), _)) if is_unreachable(&e) => Err(e),
        Either::Right((Err(_), acquire)) => acquire.await,
    }
}

/// Whether a connection attempt failed because the server cannot be reached or refuses
/// connections (not because of credentials or options).
fn is_unreachable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|c| {
            matches!(c.as_ref(), "57P01" | "57P02" | "57P03" | "53300") || c.starts_with("08")
        }),
        _ => false,
    }
}

impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn endpoint(&self) -> &larder_core::backend::Endpoint {
        &self.endpoint
    }

    fn status_code(&self, error: &Error) -> Option<String> {
        crate::error::sqlstate(error)
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn begin<'a>(&'a self, opts: &'a BeginOptions) -> BoxFuture<'a, Result<Box<dyn Transaction>>> {
        Box::pin(async move {
            let begin = if opts.read_only {
                "BEGIN READ ONLY"
            } else {
                "BEGIN"
            };
            // With a deadline, `BEGIN` and the transaction-local `statement_timeout` travel
            // in one simple query: a unit of work with a deadline costs no extra round trip.
            // The value is a number computed here, never caller input.
            let armed = opts.deadline.map(|d| {
                u64::try_from(d.remaining().as_millis())
                    .unwrap_or(u64::MAX)
                    .max(1)
            });
            let statement = match armed {
                None => sqlx::AssertSqlSafe(begin.to_owned()),
                Some(ms) => {
                    sqlx::AssertSqlSafe(format!("{begin}; SET LOCAL statement_timeout = {ms}"))
                }
            };
            let tx = unless_unavailable(&self.pool, &self.probe, self.pool.begin_with(statement))
                .await
                .map_err(|e| map(e, "uow.begin"))?;
            let mut tx = PgTransaction::new(tx, self.record_query_text).armed_at_begin(armed);
            tx.set_deadline(opts.deadline);
            Ok(Box::new(SqlTransaction(tx)) as Box<dyn Transaction>)
        })
    }

    fn prepare<'a>(&'a self, def: &'a EntityDef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let stmts = ddl::create_table(def, Dialect::Postgres)?;
            let mut tx = self
                .pool
                .begin()
                .await
                .map_err(|e| map(e, "store.register"))?;
            // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog;
            // serialize registrations of the same table.
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("larder.register.{}", def.table))
                .execute(&mut *tx)
                .await
                .map_err(|e| map(e, "store.register"))?;
            let found = introspect(&mut tx, def.table).await?;
            if !found.columns.is_empty() {
                // An existing table is never altered: it matches, or it needs a migration.
                let checked = ddl::compare(def, Dialect::Postgres, &found);
                tx.rollback().await.map_err(|e| map(e, "store.register"))?;
                return checked;
            }
            for s in stmts {
                // DDL built from a validated registry (see larder_sql::ddl).
                sqlx::query(sqlx::AssertSqlSafe(s))
                    .execute(&mut *tx)
                    .await
                    .map_err(|e| map(e, "store.register"))?;
            }
            tx.commit().await.map_err(|e| map(e, "store.register"))
        })
    }

    fn prepare_events(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let mut d = self
                .migration_driver()
                .await
                .map_err(|e| Error::backend(BACKEND, e.to_string()))?;
            larder_sql::migrate::apply_builtin(&mut d, Dialect::Postgres)
                .await
                .map(|_| ())
                .map_err(|e| {
                    Error::backend(
                        BACKEND,
                        format!("applying larder's built-in migrations failed: {e}"),
                    )
                })
        })
    }

    fn events_committed(&self) {
        if !self.notify {
            return;
        }
        let tx = self.notifier.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::watch::channel(0u64);
            let pool = self.pool.clone();
            tokio::spawn(async move {
                let mut schema: Option<String> = None;
                while rx.changed().await.is_ok() {
                    rx.mark_unchanged();
                    if schema.is_none() {
                        schema = sqlx::query_scalar("SELECT current_schema()::text")
                            .fetch_one(&pool)
                            .await
                            .ok();
                    }
                    let Some(s) = &schema else { continue };
                    if let Err(e) = sqlx::query("SELECT pg_notify($1, $2)")
                        .bind(crate::events::NOTIFY_CHANNEL)
                        .bind(s)
                        .execute(&pool)
                        .await
                    {
                        tracing::debug!(target: "larder::events", error = %e, "notify failed; subscribers will poll");
                        if pool.is_closed() {
                            return;
                        }
                    }
                    // At most one notification per interval: commits in between are
                    // coalesced into the next one (a listener reads everything new anyway).
                    tokio::time::sleep(NOTIFY_INTERVAL).await;
                }
            });
            tx
        });
        tx.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn listen_events(&self) -> BoxFuture<'_, Result<Option<BoxStream<'static, ()>>>> {
        Box::pin(async move {
            let schema: String = sqlx::query_scalar("SELECT current_schema()::text")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| map(e, "events.listen"))?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&self.pool)
                .await
                .map_err(|e| map(e, "events.listen"))?;
            listener
                .listen(crate::events::NOTIFY_CHANNEL)
                .await
                .map_err(|e| map(e, "events.listen"))?;
            let stream = futures_util::stream::unfold(listener, move |mut l| {
                let schema = schema.clone();
                async move {
                    loop {
                        match l.recv().await {
                            Ok(n) if n.payload() == schema => return Some(((), l)),
                            Ok(_) => {}
                            Err(_) => return None,
                        }
                    }
                }
            });
            Ok(Some(Box::pin(stream) as BoxStream<'static, ()>))
        })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(self.pool.close())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// Reads a table of the current schema from the catalog (the table name is a bound
/// parameter). The primary key is read from `pg_catalog` (visible to every role;
/// `information_schema`'s constraint views hide tables the role does not own or write).
/// No columns: no such table.
async fn introspect(conn: &mut sqlx::PgConnection, table: &str) -> Result<ddl::FoundTable> {
    let err = |e| map(e, "store.register");
    let columns = sqlx::query_as::<_, (String, String, Option<String>, bool, bool, bool)>(
        "SELECT c.column_name::text, c.data_type::text, c.collation_name::text, \
                c.is_nullable = 'NO', \
                EXISTS (SELECT 1 FROM pg_catalog.pg_index i \
                        JOIN pg_catalog.pg_attribute a \
                          ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
                        WHERE i.indrelid = format('%I.%I', c.table_schema, c.table_name)::regclass \
                          AND i.indisprimary AND a.attname = c.column_name), \
                c.column_default IS NOT NULL OR c.is_identity = 'YES' OR c.is_generated = 'ALWAYS' \
         FROM information_schema.columns c \
         WHERE c.table_schema = current_schema() AND c.table_name = $1 \
         ORDER BY c.ordinal_position",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?
    .into_iter()
    .map(
        |(name, sql_type, collation, not_null, primary_key, has_default)| ddl::FoundColumn {
            name,
            sql_type,
            collation,
            not_null,
            primary_key,
            has_default,
        },
    )
    .collect();
    let indexes = sqlx::query_scalar::<_, String>(
        "SELECT indexname::text FROM pg_indexes WHERE schemaname = current_schema() AND tablename = $1",
    )
    .bind(table)
    .fetch_all(&mut *conn)
    .await
    .map_err(err)?;
    Ok(ddl::FoundTable { columns, indexes })
}
