//! The PostgreSQL pool.

use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use larder_core::backend::{
    Backend, BeginOptions, BoxFuture, BoxStream, Capabilities, Transaction,
};
use larder_core::settings::{Settings, SslMode, UrlRules};
use larder_core::{EntityDef, Error, Result};
use larder_sql::{SqlMigrationDriver, SqlPool};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgSslMode};

use crate::error::{BACKEND, map};
use crate::uow::{Pg, PgState, PgTransaction};

/// The PostgreSQL backend: a pool of connections to one database.
#[derive(Clone, Debug)]
pub struct PgBackend {
    sql: SqlPool<Pg>,
    notify: bool,
    /// Whether read-only units of work begin their transaction lazily (see
    /// [`PgBackend::with_lazy_reads`]).
    lazy_reads: bool,
    /// Wakes the notifier task (started at the first commit that appended events).
    notifier: Arc<std::sync::OnceLock<tokio::sync::watch::Sender<u64>>>,
    /// When the last reachability probe ran (see `unless_unavailable`).
    probe: Arc<ProbeGate>,
}

const DEFAULT_MAX_CONNECTIONS: u32 = 8;

/// The shortest time between two `NOTIFY larder_events` of one backend.
const NOTIFY_INTERVAL: Duration = Duration::from_millis(5);

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
    /// TLS: the URL's `sslmode`, `sslrootcert`, `sslcert` and `sslkey` (libpq's names;
    /// also the driver's `PGSSLMODE`… environment variables), or
    /// [`Settings::postgres`](larder_core::settings::PostgresSettings)' `ssl_mode` and
    /// `ssl_root_cert`; when the URL and the settings both name one, they must agree.
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] for a URL of another shape or with a query parameter the
    /// driver does not know (named, its value never shown), before the driver sees it; for
    /// TLS settings that contradict the URL; and as [`PgBackend::connect_with`].
    pub async fn connect(settings: &Settings) -> Result<PgBackend> {
        settings.database_url.check(&URL_RULES)?;
        let opts = PgConnectOptions::from_str(settings.database_url.expose()).map_err(|_| {
            // sqlx's message may quote the URL: say what is wrong without it.
            Error::Configuration(format!(
                "invalid postgresql url `{}`",
                settings.database_url
            ))
        })?;
        let opts = apply_tls_settings(opts, settings)?;
        Self::connect_with(opts, settings).await
    }

    /// Connects with explicit connection options (e.g. a `search_path`), taking pool
    /// settings from `settings` (its TLS settings are not applied: `opts` say it all).
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] when `opts` ask for TLS (`sslmode` `require` or stronger)
    /// and larder was built without its `tls-rustls` feature, or when the TLS handshake
    /// fails (an untrusted or wrongly named server certificate, an unreadable
    /// `sslrootcert`); [`Error::Unavailable`] at once when the server cannot be reached.
    pub async fn connect_with(opts: PgConnectOptions, settings: &Settings) -> Result<PgBackend> {
        check_tls_available(opts.get_ssl_mode())?;
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
            .map_err(|e| match tls_failure(&e) {
                // The TLS policy failed against this server's certificate (or a certificate
                // file): not retryable, fix the settings. The message names the certificate
                // problem, never the URL.
                Some(why) => Error::Configuration(format!(
                    "tls connection to the postgresql server failed: {why}: check sslmode and \
                     sslrootcert (the ca that signed the server certificate)"
                )),
                None => map(e, "connect"),
            })?;
        // A read-only unit of work's first read may run on its own (one round trip instead
        // of three) only where that cannot change what it sees: `READ COMMITTED`, where
        // every statement takes its own snapshot anyway.
        let mut first = first;
        let isolation: String = sqlx::query_scalar("SHOW default_transaction_isolation")
            .fetch_one(&mut *first)
            .await
            .map_err(|e| map(e, "connect"))?;
        drop(first);
        Ok(PgBackend::from_pool(pool)
            .with_record_query_text(settings.record_query_text)
            .with_lazy_reads(isolation == "read committed"))
    }

    /// Wraps an existing pool.
    pub fn from_pool(pool: PgPool) -> PgBackend {
        let o = pool.connect_options();
        let endpoint = larder_core::backend::Endpoint {
            namespace: o.get_database().map(str::to_owned),
            address: Some(o.get_host().to_owned()),
            port: Some(o.get_port()),
        };
        drop(o);
        let caps = Capabilities::default()
            .with_regex(true)
            .with_json_contains(true)
            .with_concurrent_writers(true)
            .with_server_side_cancel(true);
        PgBackend {
            sql: SqlPool::new(pool, caps, endpoint),
            notify: true,
            lazy_reads: false,
            notifier: Arc::new(std::sync::OnceLock::new()),
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

    /// Whether a read-only unit of work begins its transaction only when a second statement
    /// (or a deadline, a savepoint, raw access) needs it, so that a unit of work with one
    /// read costs one round trip instead of three (`BEGIN`, the read, `COMMIT`). Safe only
    /// when the sessions' isolation is `READ COMMITTED` (each statement takes its own
    /// snapshot inside a transaction too): [`PgBackend::connect`] checks
    /// `default_transaction_isolation` and turns it on then; off for
    /// [`PgBackend::from_pool`] until asked.
    #[must_use]
    pub fn with_lazy_reads(mut self, yes: bool) -> Self {
        self.lazy_reads = yes;
        self
    }

    /// Records `db.query.text` on spans.
    #[must_use]
    pub fn with_record_query_text(mut self, yes: bool) -> Self {
        self.sql.record_query_text = yes;
        self
    }

    /// The sqlx pool (for raw SQL outside larder; inside a unit of work use
    /// [`PgUowExt`](crate::PgUowExt)).
    pub fn pool(&self) -> &PgPool {
        &self.sql.pool
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
    let mut acquire = std::pin::pin!(acquire);
    let patience = std::pin::pin!(tokio::time::sleep(PROBE_AFTER));
    if let Either::Left((r, _)) = select(acquire.as_mut(), patience).await {
        return r;
    }
    // The slow path lives in its own allocation: its connect future (TLS state included)
    // is large, and inline it would make every `begin`'s future larger to move.
    Box::pin(probe_while(pool, gate, acquire)).await
}

/// The acquire has waited `PROBE_AFTER`: one direct connection attempt (if the gate allows)
/// races it, and a connection-level failure of that attempt is returned at once.
async fn probe_while<T>(
    pool: &PgPool,
    gate: &ProbeGate,
    acquire: std::pin::Pin<
        &mut impl std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    >,
) -> std::result::Result<T, sqlx::Error> {
    use futures_util::future::{Either, select};
    use sqlx::{ConnectOptions, Connection};
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
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| crate::error::is_unavailable_code(&c)),
        _ => false,
    }
}

/// Runs migrations on PostgreSQL (a session advisory lock held for the whole run). Create
/// one with [`PgBackend::migration_driver`].
pub type PgMigrationDriver = SqlMigrationDriver<Pg>;

impl PgBackend {
    /// A migration driver on a dedicated connection of this pool.
    pub async fn migration_driver(&self) -> Result<PgMigrationDriver> {
        self.sql.migration_driver().await
    }
}

impl Backend for PgBackend {
    fn name(&self) -> &'static str {
        BACKEND
    }

    fn endpoint(&self) -> &larder_core::backend::Endpoint {
        &self.sql.endpoint
    }

    fn status_code(&self, error: &Error) -> Option<String> {
        crate::error::sqlstate(error)
    }

    fn capabilities(&self) -> &Capabilities {
        &self.sql.caps
    }

    fn begin<'a>(&'a self, opts: &'a BeginOptions) -> BoxFuture<'a, Result<Box<dyn Transaction>>> {
        Box::pin(async move {
            if opts.read_only && opts.deadline.is_none() && self.lazy_reads {
                let conn = unless_unavailable(
                    &self.sql.pool,
                    &self.probe,
                    Box::pin(self.sql.pool.acquire()),
                )
                .await
                .map_err(|e| map(e, "uow.begin"))?;
                let tx = PgTransaction::new(conn, self.sql.record_query_text, PgState::default());
                return Ok(Box::new(tx.begin_lazily("BEGIN READ ONLY")) as Box<dyn Transaction>);
            }
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
                None => begin.to_owned(),
                Some(ms) => format!("{begin}; SET LOCAL statement_timeout = {ms}"),
            };
            // An idle connection is taken without sqlx's health check (`try_acquire` skips
            // the `ping` round trip that `acquire` sends): `BEGIN` is the check. It is safe
            // to send again on another connection, so a connection the server closed while
            // it sat in the pool (a restart, an idle timeout, `pg_terminate_backend`) is
            // dropped and the next one tried — every pooled connection may be dead after a
            // restart, hence the bound.
            let mut attempts = self.sql.pool.options().get_max_connections() + 1;
            let conn = loop {
                let idle = match self.sql.pool.try_acquire() {
                    Some(conn) => Some(conn),
                    None => {
                        // sqlx returns a released connection to the pool from a task it
                        // spawns (`PoolConnection`'s drop): on a current-thread runtime that
                        // task has not run yet when the next unit of work begins right after
                        // a commit. Let it run, then look again — otherwise `acquire` waits
                        // for that same connection and then pings it.
                        tokio::task::yield_now().await;
                        self.sql.pool.try_acquire()
                    }
                };
                let mut conn = match idle {
                    Some(conn) => conn,
                    // Boxed: sqlx's acquire future is large, and inline it would be copied
                    // into this future's allocation on every `begin`.
                    None => unless_unavailable(
                        &self.sql.pool,
                        &self.probe,
                        Box::pin(self.sql.pool.acquire()),
                    )
                    .await
                    .map_err(|e| map(e, "uow.begin"))?,
                };
                // larder runs the transaction control itself (see `larder_sql::SqlTx`).
                match sqlx::raw_sql(sqlx::AssertSqlSafe(statement.clone()))
                    .execute(&mut *conn)
                    .await
                {
                    Ok(_) => break conn,
                    Err(e) => {
                        // A failed BEGIN leaves no transaction; a broken connection is not
                        // reused.
                        conn.close_on_drop();
                        attempts -= 1;
                        if attempts == 0 || !is_unreachable(&e) {
                            return Err(map(e, "uow.begin"));
                        }
                        tracing::debug!(target: "larder::postgres", error = %e,
                            "a pooled connection was closed by the server; trying another");
                    }
                }
            };
            let mut tx = PgTransaction::new(
                conn,
                self.sql.record_query_text,
                PgState::armed_at_begin(armed),
            );
            tx.set_deadline(opts.deadline);
            Ok(Box::new(tx) as Box<dyn Transaction>)
        })
    }

    fn prepare<'a>(&'a self, def: &'a EntityDef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move { self.sql.register(def).await })
    }

    fn prepare_events(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.sql.prepare_events())
    }

    fn events_committed(&self) {
        if !self.notify {
            return;
        }
        let tx = self.notifier.get_or_init(|| {
            let (tx, mut rx) = tokio::sync::watch::channel(0u64);
            let pool = self.sql.pool.clone();
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
                .fetch_one(&self.sql.pool)
                .await
                .map_err(|e| map(e, "events.listen"))?;
            let mut listener = sqlx::postgres::PgListener::connect_with(&self.sql.pool)
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
        Box::pin(self.sql.pool.close())
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

/// The TLS settings of `settings.postgres` applied over the URL's options; a setting that
/// contradicts the URL's parameter of the same meaning is an error, not an override (a
/// setting must not silently weaken the URL's `sslmode`, nor the URL a setting).
fn apply_tls_settings(mut opts: PgConnectOptions, settings: &Settings) -> Result<PgConnectOptions> {
    let url = &settings.database_url;
    let from_url = |names: &[&str]| names.iter().find_map(|n| url.query_param(n));
    let conflict = |setting: &str, param: &str| {
        Error::Configuration(format!(
            "the postgresql url's `{param}` contradicts the `{setting}` setting: remove one \
             of them or make them agree"
        ))
    };
    if let Some(mode) = settings.postgres.ssl_mode {
        if let Some(v) = from_url(&["sslmode", "ssl-mode"])
            && v.parse::<SslMode>().ok() != Some(mode)
        {
            return Err(conflict("postgres.ssl_mode", "sslmode"));
        }
        opts = opts.ssl_mode(match mode {
            SslMode::Disable => PgSslMode::Disable,
            SslMode::Allow => PgSslMode::Allow,
            SslMode::Prefer => PgSslMode::Prefer,
            SslMode::Require => PgSslMode::Require,
            SslMode::VerifyCa => PgSslMode::VerifyCa,
            SslMode::VerifyFull => PgSslMode::VerifyFull,
            // `SslMode` is non-exhaustive for callers, not for its own crate family;
            // a mode this backend does not know is the strictest it does.
            _ => PgSslMode::VerifyFull,
        });
    }
    let url_cert = from_url(&["sslrootcert", "ssl-root-cert", "ssl-ca"]);
    if let Some(cert) = &settings.postgres.ssl_root_cert {
        if let Some(v) = &url_cert
            && std::path::Path::new(v) != cert.as_path()
        {
            return Err(conflict("postgres.ssl_root_cert", "sslrootcert"));
        }
        opts = opts.ssl_root_cert(cert);
    }
    // The driver reads the file only during a verifying handshake and reports a missing
    // one as a bare I/O error; say which file, now. (A value that is PEM text is inline.)
    let cert = settings
        .postgres
        .ssl_root_cert
        .clone()
        .or_else(|| url_cert.map(std::path::PathBuf::from));
    if let Some(cert) = cert
        && !cert.to_string_lossy().starts_with("-----BEGIN")
        && let Err(e) = std::fs::File::open(&cert)
    {
        return Err(Error::Configuration(format!(
            "cannot read the sslrootcert file `{}`: {e}: give the path of a pem file with \
             the server's ca certificate",
            larder_core::error::quote(&cert.display().to_string())
        )));
    }
    Ok(opts)
}

/// The TLS problem behind a failed connect, if that is what failed: the driver's TLS
/// errors (bad certificate files), and a handshake that rustls refused (reported by the
/// driver as an I/O error carrying the `rustls::Error`: recognised by type, not by text).
fn tls_failure(e: &sqlx::Error) -> Option<String> {
    match e {
        sqlx::Error::Tls(e) => Some(e.to_string()),
        #[cfg(feature = "tls-rustls")]
        sqlx::Error::Io(io) => io
            .get_ref()
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            .map(ToString::to_string),
        _ => None,
    }
}

/// Refuses, before any I/O, a connection that must be encrypted when this build has no
/// TLS: the driver's own error would come later and name sqlx's features, not larder's.
fn check_tls_available(mode: PgSslMode) -> Result<()> {
    let needs_tls = matches!(
        mode,
        PgSslMode::Require | PgSslMode::VerifyCa | PgSslMode::VerifyFull
    );
    if needs_tls && !cfg!(feature = "tls-rustls") {
        let mode = match mode {
            PgSslMode::Require => "require",
            PgSslMode::VerifyCa => "verify-ca",
            _ => "verify-full",
        };
        return Err(Error::Configuration(format!(
            "sslmode={mode} needs tls, but larder was built without tls: enable larder's \
             `tls-rustls` feature (or use sslmode=prefer or disable)"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str) -> Settings {
        Settings::from_url(url)
    }

    #[test]
    fn tls_modes_need_the_tls_feature() {
        for mode in [PgSslMode::Disable, PgSslMode::Allow, PgSslMode::Prefer] {
            assert!(check_tls_available(mode).is_ok(), "{mode:?}");
        }
        for mode in [
            PgSslMode::Require,
            PgSslMode::VerifyCa,
            PgSslMode::VerifyFull,
        ] {
            let r = check_tls_available(mode);
            if cfg!(feature = "tls-rustls") {
                assert!(r.is_ok(), "{mode:?}");
            } else {
                let e = r.unwrap_err();
                assert!(matches!(e, Error::Configuration(_)), "{e:?}");
                assert!(e.to_string().contains("`tls-rustls`"), "{e}");
            }
        }
    }

    /// Without the feature, a URL asking for TLS fails before any I/O with the typed
    /// error (port 1: nothing listens, so a driver error would be a connection error).
    #[tokio::test]
    async fn connect_without_tls_refuses_tls_modes_up_front() {
        if cfg!(feature = "tls-rustls") {
            return;
        }
        for mode in ["require", "verify-ca", "verify-full"] {
            let url = format!("postgres://u:pw@127.0.0.1:1/db?sslmode={mode}");
            let e = PgBackend::connect(&settings(&url)).await.unwrap_err();
            assert!(matches!(e, Error::Configuration(_)), "{e:?}");
            let text = e.to_string();
            assert!(
                text.contains("built without tls") && text.contains("`tls-rustls`"),
                "{text}"
            );
            assert!(text.contains(mode), "{text}");
        }
        let mut s = settings("postgres://127.0.0.1:1/db");
        s.postgres.ssl_mode = Some(SslMode::Require);
        let e = PgBackend::connect(&s).await.unwrap_err();
        assert!(e.to_string().contains("`tls-rustls`"), "{e}");
    }

    #[test]
    fn tls_settings_apply_and_must_agree_with_the_url() {
        let opts = |s: &Settings| {
            apply_tls_settings(
                PgConnectOptions::from_str(s.database_url.expose()).unwrap(),
                s,
            )
        };
        let mut s = settings("postgres://h/db");
        s.postgres.ssl_mode = Some(SslMode::VerifyCa);
        assert!(matches!(
            opts(&s).unwrap().get_ssl_mode(),
            PgSslMode::VerifyCa
        ));
        for url in [
            "postgres://h/db?sslmode=verify-ca",
            "postgres://h/db?ssl-mode=verify-ca",
        ] {
            let mut s = settings(url);
            s.postgres.ssl_mode = Some(SslMode::VerifyCa);
            assert!(opts(&s).is_ok(), "{url}");
            s.postgres.ssl_mode = Some(SslMode::Disable);
            let e = opts(&s).unwrap_err();
            assert!(matches!(e, Error::Configuration(_)), "{e:?}");
            assert!(e.to_string().contains("postgres.ssl_mode"), "{e}");
        }
        let mut s = settings("postgres://h/db?sslrootcert=/a.pem");
        s.postgres.ssl_root_cert = Some("/b.pem".into());
        let e = opts(&s).unwrap_err();
        assert!(e.to_string().contains("postgres.ssl_root_cert"), "{e}");
        // A root certificate file that does not exist is named, from either place.
        let missing = "/nonexistent/larder-ca.pem";
        let mut s = settings("postgres://h/db");
        s.postgres.ssl_root_cert = Some(missing.into());
        let e = opts(&s).unwrap_err();
        assert!(matches!(e, Error::Configuration(_)), "{e:?}");
        assert!(e.to_string().contains(missing), "{e}");
        let e = opts(&settings(&format!("postgres://h/db?sslrootcert={missing}"))).unwrap_err();
        assert!(e.to_string().contains(missing), "{e}");
    }
}
