//! Settings: one place that says how to reach every store, read from an optional TOML file
//! and the environment, with secrets that never print.
//!
//! Precedence: built-in defaults < the TOML file (`LARDER_CONFIG`, or a path given to
//! [`Settings::from_file`]) < environment variables.
//!
//! | variable | meaning | default |
//! |---|---|---|
//! | `LARDER_DATABASE_URL` | `sqlite://path`, `postgres://…`, `memory://` | `sqlite://larder.db` |
//! | `LARDER_POOL_MAX_CONNECTIONS` | pool size | 8 (SQLite: 4) |
//! | `LARDER_POOL_MIN_CONNECTIONS` | idle connections kept | 0 |
//! | `LARDER_POOL_ACQUIRE_TIMEOUT_MS` | wait for a pooled connection | 5000 |
//! | `LARDER_DEFAULT_DEADLINE_MS` | deadline of every unit of work without its own | none |
//! | `LARDER_SQLITE_SYNCHRONOUS` | `full` or `normal` | `full` |
//! | `LARDER_SQLITE_BUSY_TIMEOUT_MS` | SQLite `busy_timeout` | 5000 |
//! | `LARDER_POSTGRES_SSL_MODE` | PostgreSQL `sslmode`: `disable`, `allow`, `prefer`, `require`, `verify-ca`, `verify-full` | the URL's, else `prefer` |
//! | `LARDER_POSTGRES_SSL_ROOT_CERT` | PEM file of the CA(s) that `verify-ca`/`verify-full` trust (`sslrootcert`) | the URL's, else none |
//! | `LARDER_RECORD_QUERY_TEXT` | record `db.query.text` on spans (`true`/`false`) | `false` |
//! | `LARDER_MAX_PAGE_SIZE` | hard cap on page size | 1000 |
//! | `LARDER_BLOB_URL` | the blob store: a folder path or `file:///…`, `s3://bucket?…`, `azure://container?…`, `memory:` (secrets redacted) | `larder-blobs` |
//! | `LARDER_OUTBOX_SINK` | the outbox relay's sink: `stdout`, `file:PATH`, `redis://…`, `nats://…`, `amqp://…`, `mqtt://…`, `http(s)://…` (secrets redacted like the database URL) | `stdout` |
//! | `LARDER_OUTBOX_BATCH_SIZE` | messages a relay publishes before they are recorded | 512 |
//! | `LARDER_OUTBOX_MAX_ATTEMPTS` | failed attempts before a dead letter | 10 |
//! | `LARDER_OUTBOX_LEASE_MS` | relay partition lease | 10000 |
//! | `LARDER_OUTBOX_POLL_MS` | relay poll interval when idle | 1000 |
//!
//! The TOML file uses the same names in sections:
//!
//! ```toml
//! [database]
//! url = "postgres://app:secret@127.0.0.1/app"
//! max_connections = 16
//! acquire_timeout_ms = 2000
//!
//! [sqlite]
//! synchronous = "full"
//! busy_timeout_ms = 5000
//!
//! [postgres]
//! ssl_mode = "verify-full"
//! ssl_root_cert = "/etc/ssl/certs/db-ca.pem"
//!
//! [observability]
//! record_query_text = false
//!
//! [outbox]
//! sink = "nats://relay:secret@127.0.0.1:4222"
//! batch_size = 512
//! max_attempts = 10
//! lease_ms = 10000
//! poll_ms = 1000
//! ```
//!
//! The PostgreSQL TLS settings are an alternative to the URL's `sslmode`/`sslrootcert`
//! (handy when the URL is a secret and the TLS policy is not): when both name a value they
//! must agree, or connecting fails with [`Error::Configuration`] — a setting never silently
//! weakens the URL, nor the URL a setting. `sslmode=require` and stronger need larder's
//! `tls-rustls` feature.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A database URL whose secrets never appear in `Debug` or `Display`.
///
/// Redaction fails closed (see [`redact_url`]): the password of the userinfo, the value of
/// every query parameter not known to be harmless, and the fragment are replaced by `***`;
/// a URL that does not parse, or whose shape could hide a secret where a driver would not
/// look for one (`postgres:u:pw@host`, `postgres:/u:pw@host`, an `@` after the host), is
/// shown as its scheme followed by `***`; text without a scheme (a `key=value` connection
/// string) is shown as `<redacted>`.
///
/// ```
/// use larder_core::settings::DatabaseUrl;
/// let url = DatabaseUrl::new("postgres://app:hunter2@db/app?sslmode=disable");
/// assert_eq!(url.to_string(), "postgres://app:***@db/app?sslmode=disable");
/// assert!(!format!("{url:?}").contains("hunter2"));
/// assert_eq!(url.expose(), "postgres://app:hunter2@db/app?sslmode=disable");
/// assert_eq!(DatabaseUrl::new("postgres:app:hunter2@db/app").to_string(), "postgres:***");
/// assert_eq!(DatabaseUrl::new("host=db password=hunter2").to_string(), "<redacted>");
/// assert_eq!(
///     DatabaseUrl::new("postgres://db/app?PASSWORD=hunter2").to_string(),
///     "postgres://db/app?PASSWORD=***"
/// );
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The real URL, secrets included: only for handing to a driver, after
    /// [`DatabaseUrl::check`].
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The scheme (`sqlite`, `postgres`, `postgresql`, `memory`), lowercased.
    pub fn scheme(&self) -> String {
        self.0
            .split_once(':')
            .map(|(s, _)| s.to_ascii_lowercase())
            .unwrap_or_default()
    }

    /// The decoded value of the first query parameter named `name` (compared exactly, as
    /// drivers do), read like [`DatabaseUrl::check`] reads names. The value can be a secret
    /// (`password=…`): treat it like [`DatabaseUrl::expose`].
    ///
    /// ```
    /// use larder_core::settings::DatabaseUrl;
    /// let url = DatabaseUrl::new("postgres://db/app?sslmode=verify-full&sslrootcert=%2Fca.pem");
    /// assert_eq!(url.query_param("sslmode").as_deref(), Some("verify-full"));
    /// assert_eq!(url.query_param("sslrootcert").as_deref(), Some("/ca.pem"));
    /// assert_eq!(url.query_param("SSLMODE"), None);
    /// ```
    pub fn query_param(&self, name: &str) -> Option<String> {
        let query = match url::Url::parse(&self.0) {
            Ok(u) if u.has_authority() => u.query().map(str::to_owned),
            _ => self.0.split_once('?').map(|(_, q)| q.to_owned()),
        }?;
        url::form_urlencoded::parse(query.as_bytes())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.into_owned())
    }

    /// The URL with secrets replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }

    /// Checks the URL against what a backend's driver reads from it, before the URL is
    /// handed to the driver: with [`UrlRules::hierarchical`] it must parse as
    /// `scheme://[user[:password]@]host…`, and every query parameter name must be one of
    /// [`UrlRules::params`] (exactly, case included, as the driver compares them).
    ///
    /// Why: a driver that does not know a parameter may log it, value included (sqlx's
    /// PostgreSQL driver warns "ignoring unrecognized connect parameter" with the value),
    /// so a misspelt `?PASSWORD=…` would print the password. The error names the parameter,
    /// never its value.
    ///
    /// ```
    /// use larder_core::settings::{DatabaseUrl, UrlRules};
    /// const RULES: UrlRules = UrlRules {
    ///     backend: "postgresql",
    ///     hierarchical: true,
    ///     params: &["sslmode", "password", "options[*]"],
    /// };
    /// assert!(DatabaseUrl::new("postgres://u@h/db?sslmode=disable").check(&RULES).is_ok());
    /// assert!(DatabaseUrl::new("postgres://h/db?options[search_path]=a").check(&RULES).is_ok());
    /// let e = DatabaseUrl::new("postgres://h/db?PASSWORD=hunter2").check(&RULES).unwrap_err();
    /// assert!(e.to_string().contains("`PASSWORD`") && !e.to_string().contains("hunter2"));
    /// assert!(DatabaseUrl::new("postgres:u:hunter2@h/db").check(&RULES).is_err());
    /// ```
    ///
    /// # Errors
    ///
    /// [`Error::Configuration`] with the redacted URL.
    pub fn check(&self, rules: &UrlRules) -> Result<()> {
        let backend = rules.backend;
        let names: Vec<String> = if rules.hierarchical {
            let invalid = |why: &dyn fmt::Display| {
                Error::Configuration(format!(
                    "invalid {backend} url `{}`: {why}",
                    self.redacted()
                ))
            };
            let parsed = url::Url::parse(&self.0).map_err(|e| invalid(&e))?;
            let hierarchical =
                split_scheme(&self.0).is_some_and(|(_, rest)| rest.starts_with("//"));
            if !hierarchical || !parsed.has_authority() {
                return Err(invalid(&format_args!(
                    "expected `{}://user:password@host:port/database?parameters`",
                    parsed.scheme()
                )));
            }
            parsed.query_pairs().map(|(k, _)| k.into_owned()).collect()
        } else {
            // As sqlx's SQLite driver reads it: everything after the first `?`.
            self.0
                .split_once('?')
                .map(|(_, q)| {
                    url::form_urlencoded::parse(q.as_bytes())
                        .map(|(k, _)| k.into_owned())
                        .collect()
                })
                .unwrap_or_default()
        };
        for name in &names {
            if rules.allows(name) {
                continue;
            }
            let hint = match rules.params.iter().find(|p| p.eq_ignore_ascii_case(name)) {
                Some(p) => format!(" (names are case-sensitive: did you mean `{p}`?)"),
                None => String::new(),
            };
            return Err(Error::Configuration(format!(
                "the {backend} url has an unknown parameter `{}`{hint}: remove it (its value is \
                 not shown); known parameters: {}",
                crate::error::quote(name),
                rules.params.join(", ")
            )));
        }
        Ok(())
    }
}

/// What a backend's driver reads from its URL, for [`DatabaseUrl::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UrlRules {
    /// The backend's name, for error messages.
    pub backend: &'static str,
    /// Whether the URL must be hierarchical, `scheme://authority/path?query`. Other shapes
    /// are refused: a driver would read `postgres:u:pw@host` as a path, so the password
    /// would reach the server (and its error messages) as a database name.
    pub hierarchical: bool,
    /// The query parameter names the driver understands, compared exactly; one `*` in an
    /// entry matches any text (`options[*]`).
    pub params: &'static [&'static str],
}

impl UrlRules {
    fn allows(&self, name: &str) -> bool {
        self.params.iter().any(|p| match p.split_once('*') {
            None => *p == name,
            Some((pre, post)) => {
                name.len() >= pre.len() + post.len()
                    && name.starts_with(pre)
                    && name.ends_with(post)
            }
        })
    }
}

/// Query parameters whose values [`redact_url`] shows: they configure the connection and
/// never carry a secret. Compared without case; every other value is redacted.
const SHOWN_PARAMS: [&str; 25] = [
    // Blob store URLs (s3://, azure://): where, never who.
    "region",
    "endpoint",
    "account",
    "emulator",
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "application_name",
    "connect_timeout",
    "search_path",
    "target_session_attrs",
    "mode",
    "cache",
    "immutable",
    "vfs",
];

const HIDDEN: &str = "***";

/// The scheme of an RFC 3986 URL (`ALPHA *( ALPHA / DIGIT / "+" / "-" / "." ) ":"`) and
/// the text after its colon.
fn split_scheme(s: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = s.split_once(':')?;
    let mut cs = scheme.chars();
    let ok = cs.next().is_some_and(|c| c.is_ascii_alphabetic())
        && cs.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    ok.then_some((scheme, rest))
}

fn shown_value(name: &str) -> bool {
    SHOWN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(name))
}

fn redact_pairs<'a>(
    pairs: impl Iterator<Item = (std::borrow::Cow<'a, str>, std::borrow::Cow<'a, str>)>,
) -> Vec<(String, String)> {
    pairs
        .map(|(k, v)| {
            // A shown value must also look like one: `host=h password=…` is one value.
            let plain = v.chars().all(|c| {
                c.is_ascii_alphanumeric()
                    || matches!(c, '.' | '_' | '-' | '/' | ':' | '~' | ',' | '[' | ']')
            });
            let v = if v.is_empty() || (shown_value(&k) && plain) {
                v.into_owned()
            } else {
                HIDDEN.to_owned()
            };
            (k.into_owned(), v)
        })
        .collect()
}

/// Replaces the secrets in a database URL with `***`, failing closed:
///
/// - `scheme://user:password@host…`: the password is replaced; the username, host, port
///   and path are kept;
/// - query parameters: only the values of parameters known to configure the connection
///   (`sslmode`, `host`, `port`, `application_name`, SQLite's `mode`…) are kept, and only
///   when they are plain (letters, digits, `._-/:~,[]`); every other value (`password`, `PASSWORD`, `sslpassword`, `token`, unknown names) is
///   replaced; a fragment is replaced;
/// - a URL that does not parse, that has an `@` after its authority or in an opaque path
///   (`postgres:u:pw@host`, `postgres:/u:pw@host`), or whose opaque path has characters
///   other than letters, digits and `._-/~` (`sqlite::memory:` is kept): its scheme
///   followed by `:***`;
/// - text without a scheme (e.g. `host=db password=…`): `<redacted>`.
///
/// ```
/// use larder_core::settings::redact_url;
/// assert_eq!(redact_url("postgres://u:pw@h:5432/db?sslmode=require&password=pw"),
///            "postgres://u:***@h:5432/db?sslmode=require&password=***");
/// assert_eq!(redact_url("postgres:/u:pw@h/db"), "postgres:***");
/// assert_eq!(redact_url("sqlite:data/app.db?mode=ro"), "sqlite:data/app.db?mode=ro");
/// assert_eq!(redact_url("dbname=app password=pw"), "<redacted>");
/// ```
pub fn redact_url(s: &str) -> String {
    let Some((scheme, rest)) = split_scheme(s) else {
        return "<redacted>".to_owned();
    };
    let closed = || format!("{scheme}:{HIDDEN}");
    if let Some(after) = rest.strip_prefix("//") {
        // An `@` after the end of the authority means the parser and a reader disagree on
        // where the userinfo ends (`postgres://u:12/x@h` is host `u`, port 12).
        let authority_end = after.find(['/', '?', '#']).unwrap_or(after.len());
        if after[authority_end..].contains('@') {
            return closed();
        }
        let Ok(mut u) = url::Url::parse(s) else {
            return closed();
        };
        if !u.has_authority() {
            return closed();
        }
        if u.password().is_some() && u.set_password(Some(HIDDEN)).is_err() {
            return closed();
        }
        if u.query().is_some() {
            let pairs = redact_pairs(u.query_pairs());
            if pairs.is_empty() {
                u.set_query(None);
            } else {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
        }
        if u.fragment().is_some() {
            u.set_fragment(Some(HIDDEN));
        }
        return u.to_string().replace("%2A%2A%2A", HIDDEN);
    }
    // An opaque URL (`sqlite:app.db`, `sqlite::memory:`): no userinfo exists, so anything
    // that looks like one is hidden.
    let (path, query) = match rest.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (rest, None),
    };
    let safe_path = path == ":memory:"
        || path
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/' | '~'));
    if !safe_path || rest.contains(['@', '#']) {
        return closed();
    }
    match query {
        None => s.to_owned(),
        Some(q) => {
            let pairs = redact_pairs(url::form_urlencoded::parse(q.as_bytes()));
            let q = url::form_urlencoded::Serializer::new(String::new())
                .extend_pairs(pairs)
                .finish()
                .replace("%2A%2A%2A", HIDDEN);
            format!("{scheme}:{path}?{q}")
        }
    }
}

/// Hides secrets in free text that may quote a URL or a setting (a parser's or a driver's
/// message, which is not a URL): the whole text is replaced by `<redacted>` if it contains
/// an `@` or a password-like word (`pass`, `pwd`, `token`, `secret`), in any case.
pub fn redact_text(s: &str) -> String {
    const SECRET_WORDS: [&str; 4] = ["pass", "pwd", "token", "secret"];
    let lower = s.to_ascii_lowercase();
    if s.contains('@') || SECRET_WORDS.iter().any(|k| lower.contains(k)) {
        "<redacted>".to_owned()
    } else {
        s.to_owned()
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({:?})", self.redacted())
    }
}

impl fmt::Display for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

/// SQLite's `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Synchronous {
    /// Durable across power loss (the default).
    #[default]
    Full,
    /// Faster; in WAL mode a power loss can lose the last transactions (never corrupts).
    Normal,
}

/// SQLite options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteSettings {
    /// `PRAGMA synchronous`.
    pub synchronous: Synchronous,
    /// `PRAGMA busy_timeout`.
    pub busy_timeout: Duration,
}

impl Default for SqliteSettings {
    fn default() -> Self {
        SqliteSettings {
            synchronous: Synchronous::Full,
            busy_timeout: Duration::from_secs(5),
        }
    }
}

/// PostgreSQL's `sslmode`: whether the connection uses TLS and what it verifies (the
/// values and meanings of libpq's `sslmode`).
///
/// `Require` and stronger need larder's `tls-rustls` feature; without it connecting fails
/// with [`Error::Configuration`].
///
/// ```
/// use larder_core::settings::SslMode;
/// assert_eq!("verify-full".parse::<SslMode>().unwrap(), SslMode::VerifyFull);
/// assert_eq!(SslMode::VerifyCa.as_str(), "verify-ca");
/// assert!("verify_full".parse::<SslMode>().is_err());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum SslMode {
    /// No TLS.
    Disable,
    /// No TLS (libpq would try TLS after a refused plain connection; the driver does not).
    Allow,
    /// TLS if the server offers it (and this build has TLS), else plain; nothing verified.
    Prefer,
    /// TLS or fail; the certificate is not verified (encryption without authentication).
    Require,
    /// TLS, and the server certificate must chain to a trusted CA (`sslrootcert`, or the
    /// built-in web roots); the host name is not checked.
    VerifyCa,
    /// `VerifyCa`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    /// Every mode, weakest first.
    pub const ALL: [SslMode; 6] = [
        SslMode::Disable,
        SslMode::Allow,
        SslMode::Prefer,
        SslMode::Require,
        SslMode::VerifyCa,
        SslMode::VerifyFull,
    ];

    /// The libpq name (`verify-full`).
    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    /// Whether the connection fails unless it is encrypted (`require` and stronger).
    pub fn requires_tls(self) -> bool {
        matches!(
            self,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull
        )
    }
}

impl fmt::Display for SslMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for SslMode {
    type Err = Error;

    /// Parses a libpq name, exactly (lowercase, with hyphens).
    fn from_str(s: &str) -> Result<SslMode> {
        SslMode::ALL
            .into_iter()
            .find(|m| m.as_str() == s)
            .ok_or_else(|| {
                Error::Configuration(format!(
                    "unknown sslmode `{}`: use one of disable, allow, prefer, require, \
                     verify-ca, verify-full",
                    crate::error::shown(s)
                ))
            })
    }
}

/// PostgreSQL options (ignored by other backends). Each one, when set, must agree with
/// the URL's parameter of the same meaning (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostgresSettings {
    /// `sslmode` (`None`: the URL's, else the driver's default `prefer`).
    pub ssl_mode: Option<SslMode>,
    /// `sslrootcert`: a PEM file with the CA certificate(s) that `verify-ca` and
    /// `verify-full` trust, in addition to the built-in web roots.
    pub ssl_root_cert: Option<PathBuf>,
}

/// Everything needed to build a store.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// Where the data lives.
    pub database_url: DatabaseUrl,
    /// Pool size (`None`: 8 for PostgreSQL, 4 for SQLite).
    pub max_connections: Option<u32>,
    /// Idle connections kept open.
    pub min_connections: u32,
    /// How long to wait for a pooled connection.
    pub acquire_timeout: Duration,
    /// Deadline for every unit of work that does not set its own.
    pub default_deadline: Option<Duration>,
    /// SQLite options (ignored by other backends).
    pub sqlite: SqliteSettings,
    /// PostgreSQL options (ignored by other backends).
    pub postgres: PostgresSettings,
    /// Record `db.query.text` on spans.
    pub record_query_text: bool,
    /// Hard cap on page size.
    pub max_page_size: u32,
    /// The outbox relay.
    pub outbox: OutboxSettings,
    /// The blob store (`[blob] url`, `LARDER_BLOB_URL`): `file:///…` or a plain folder
    /// path, `s3://bucket?…`, `azure://container?…`, `memory:` (`None`:
    /// [`DEFAULT_BLOB_URL`]). Redacted like the database URL.
    pub blob_url: Option<DatabaseUrl>,
}

/// The blob store when no `[blob] url` / `LARDER_BLOB_URL` is set: the folder
/// `larder-blobs` in the working directory.
pub const DEFAULT_BLOB_URL: &str = "larder-blobs";

/// The outbox relay's settings (`[outbox]`, `LARDER_OUTBOX_*`).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct OutboxSettings {
    /// The sink (`None`: stdout). A URL's password and secret query values never appear
    /// in `Debug` or `Display` (the same redaction as [`DatabaseUrl`]).
    pub sink: Option<DatabaseUrl>,
    /// Messages per batch.
    pub batch_size: u32,
    /// Failed attempts before a message is dead-lettered.
    pub max_attempts: u32,
    /// Partition lease.
    pub lease: Duration,
    /// Poll interval when idle.
    pub poll_interval: Duration,
}

impl Default for OutboxSettings {
    fn default() -> Self {
        OutboxSettings {
            sink: None,
            batch_size: 512,
            max_attempts: 10,
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            database_url: DatabaseUrl::new("sqlite://larder.db"),
            max_connections: None,
            min_connections: 0,
            acquire_timeout: Duration::from_secs(5),
            default_deadline: None,
            sqlite: SqliteSettings::default(),
            postgres: PostgresSettings::default(),
            record_query_text: false,
            max_page_size: crate::spec::Limits::default().max_page_size,
            outbox: OutboxSettings::default(),
            blob_url: None,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSettings {
    #[serde(default)]
    database: FileDatabase,
    #[serde(default)]
    sqlite: FileSqlite,
    #[serde(default)]
    postgres: FilePostgres,
    #[serde(default)]
    observability: FileObservability,
    #[serde(default)]
    outbox: FileOutbox,
    #[serde(default)]
    blob: FileBlob,
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBlob {
    url: Option<String>,
}

// Hand-written so that a URL with a secret never reaches a log through `{:?}`.
impl fmt::Debug for FileBlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileBlob")
            .field("url", &self.url.as_deref().map(redact_url))
            .finish()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOutbox {
    sink: Option<String>,
    batch_size: Option<u32>,
    max_attempts: Option<u32>,
    lease_ms: Option<u64>,
    poll_ms: Option<u64>,
}

// Hand-written so that a sink URL with a password never reaches a log through `{:?}`.
impl fmt::Debug for FileOutbox {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileOutbox")
            .field("sink", &self.sink.as_deref().map(redact_url))
            .finish_non_exhaustive()
    }
}

#[derive(Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDatabase {
    url: Option<String>,
    max_connections: Option<u32>,
    min_connections: Option<u32>,
    acquire_timeout_ms: Option<u64>,
    default_deadline_ms: Option<u64>,
    max_page_size: Option<u32>,
}

// Hand-written so that a URL with a password never reaches a log through `{:?}`.
impl fmt::Debug for FileDatabase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FileDatabase")
            .field("url", &self.url.as_deref().map(redact_url))
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileSqlite {
    synchronous: Option<Synchronous>,
    busy_timeout_ms: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FilePostgres {
    ssl_mode: Option<SslMode>,
    ssl_root_cert: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileObservability {
    record_query_text: Option<bool>,
}

impl Settings {
    /// Settings for one URL, defaults otherwise.
    pub fn from_url(url: impl Into<String>) -> Settings {
        Settings {
            database_url: DatabaseUrl::new(url),
            ..Settings::default()
        }
    }

    /// Defaults, then the TOML file named by `LARDER_CONFIG` (if set), then the
    /// environment.
    pub fn from_env() -> Result<Settings> {
        let mut s = Settings::default();
        if let Ok(path) = std::env::var("LARDER_CONFIG") {
            s.apply_file(Path::new(&path))?;
        }
        s.apply_env(|k| std::env::var(k).ok())?;
        Ok(s)
    }

    /// Defaults, then this TOML file, then the environment.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Settings> {
        let mut s = Settings::default();
        s.apply_file(path.as_ref())?;
        s.apply_env(|k| std::env::var(k).ok())?;
        Ok(s)
    }

    /// Applies a TOML document (the file format described in the module docs).
    pub fn apply_toml(&mut self, text: &str) -> Result<()> {
        let f: FileSettings = toml::from_str(text).map_err(|e| {
            // toml's message quotes the offending line, which may hold a password.
            Error::Configuration(format!(
                "settings file is not valid: {}",
                redact_text(e.message())
            ))
        })?;
        if let Some(u) = f.database.url {
            self.database_url = DatabaseUrl::new(u);
        }
        if let Some(n) = f.database.max_connections {
            self.max_connections = Some(n);
        }
        if let Some(n) = f.database.min_connections {
            self.min_connections = n;
        }
        if let Some(ms) = f.database.acquire_timeout_ms {
            self.acquire_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = f.database.default_deadline_ms {
            self.default_deadline = Some(Duration::from_millis(ms));
        }
        if let Some(n) = f.database.max_page_size {
            self.max_page_size = n;
        }
        if let Some(s) = f.sqlite.synchronous {
            self.sqlite.synchronous = s;
        }
        if let Some(ms) = f.sqlite.busy_timeout_ms {
            self.sqlite.busy_timeout = Duration::from_millis(ms);
        }
        if let Some(m) = f.postgres.ssl_mode {
            self.postgres.ssl_mode = Some(m);
        }
        if let Some(p) = f.postgres.ssl_root_cert {
            self.postgres.ssl_root_cert = Some(p);
        }
        if let Some(b) = f.observability.record_query_text {
            self.record_query_text = b;
        }
        if let Some(u) = f.outbox.sink {
            self.outbox.sink = Some(DatabaseUrl::new(u));
        }
        if let Some(u) = f.blob.url {
            self.blob_url = Some(DatabaseUrl::new(u));
        }
        if let Some(n) = f.outbox.batch_size {
            self.outbox.batch_size = n;
        }
        if let Some(n) = f.outbox.max_attempts {
            self.outbox.max_attempts = n;
        }
        if let Some(ms) = f.outbox.lease_ms {
            self.outbox.lease = Duration::from_millis(ms);
        }
        if let Some(ms) = f.outbox.poll_ms {
            self.outbox.poll_interval = Duration::from_millis(ms);
        }
        Ok(())
    }

    fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Configuration(format!(
                "cannot read settings file `{}`: {e}",
                crate::error::quote(&path.display().to_string())
            ))
        })?;
        self.apply_toml(&text)
    }

    /// Applies environment variables, read through `get` (testable without touching the
    /// process environment).
    pub fn apply_env(&mut self, get: impl Fn(&str) -> Option<String>) -> Result<()> {
        fn num<T: std::str::FromStr>(k: &str, v: &str) -> Result<T> {
            v.trim().parse().map_err(|_| {
                Error::Configuration(format!(
                    "{k} must be a number, got `{}`",
                    crate::error::shown(v)
                ))
            })
        }
        if let Some(v) = get("LARDER_DATABASE_URL") {
            self.database_url = DatabaseUrl::new(v);
        }
        if let Some(v) = get("LARDER_POOL_MAX_CONNECTIONS") {
            self.max_connections = Some(num("LARDER_POOL_MAX_CONNECTIONS", &v)?);
        }
        if let Some(v) = get("LARDER_POOL_MIN_CONNECTIONS") {
            self.min_connections = num("LARDER_POOL_MIN_CONNECTIONS", &v)?;
        }
        if let Some(v) = get("LARDER_POOL_ACQUIRE_TIMEOUT_MS") {
            self.acquire_timeout =
                Duration::from_millis(num("LARDER_POOL_ACQUIRE_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = get("LARDER_DEFAULT_DEADLINE_MS") {
            self.default_deadline = Some(Duration::from_millis(num(
                "LARDER_DEFAULT_DEADLINE_MS",
                &v,
            )?));
        }
        if let Some(v) = get("LARDER_SQLITE_BUSY_TIMEOUT_MS") {
            self.sqlite.busy_timeout =
                Duration::from_millis(num("LARDER_SQLITE_BUSY_TIMEOUT_MS", &v)?);
        }
        if let Some(v) = get("LARDER_MAX_PAGE_SIZE") {
            self.max_page_size = num("LARDER_MAX_PAGE_SIZE", &v)?;
        }
        if let Some(v) = get("LARDER_SQLITE_SYNCHRONOUS") {
            self.sqlite.synchronous = match v.trim().to_ascii_lowercase().as_str() {
                "full" => Synchronous::Full,
                "normal" => Synchronous::Normal,
                _ => {
                    return Err(Error::Configuration(format!(
                        "LARDER_SQLITE_SYNCHRONOUS must be `full` or `normal`, got `{}`",
                        crate::error::shown(&v)
                    )));
                }
            };
        }
        if let Some(v) = get("LARDER_POSTGRES_SSL_MODE") {
            let mode = v.trim().to_ascii_lowercase().parse().map_err(|_| {
                Error::Configuration(format!(
                    "LARDER_POSTGRES_SSL_MODE must be one of disable, allow, prefer, require, \
                     verify-ca, verify-full, got `{}`",
                    crate::error::shown(&v)
                ))
            })?;
            self.postgres.ssl_mode = Some(mode);
        }
        if let Some(v) = get("LARDER_POSTGRES_SSL_ROOT_CERT") {
            if v.trim().is_empty() {
                return Err(Error::Configuration(
                    "LARDER_POSTGRES_SSL_ROOT_CERT is empty: set it to the path of a PEM file \
                     or unset it"
                        .into(),
                ));
            }
            self.postgres.ssl_root_cert = Some(PathBuf::from(v));
        }
        if let Some(v) = get("LARDER_OUTBOX_SINK") {
            self.outbox.sink = Some(DatabaseUrl::new(v));
        }
        if let Some(v) = get("LARDER_BLOB_URL") {
            self.blob_url = Some(DatabaseUrl::new(v));
        }
        if let Some(v) = get("LARDER_OUTBOX_BATCH_SIZE") {
            self.outbox.batch_size = num("LARDER_OUTBOX_BATCH_SIZE", &v)?;
        }
        if let Some(v) = get("LARDER_OUTBOX_MAX_ATTEMPTS") {
            self.outbox.max_attempts = num("LARDER_OUTBOX_MAX_ATTEMPTS", &v)?;
        }
        if let Some(v) = get("LARDER_OUTBOX_LEASE_MS") {
            self.outbox.lease = Duration::from_millis(num("LARDER_OUTBOX_LEASE_MS", &v)?);
        }
        if let Some(v) = get("LARDER_OUTBOX_POLL_MS") {
            self.outbox.poll_interval = Duration::from_millis(num("LARDER_OUTBOX_POLL_MS", &v)?);
        }
        if let Some(v) = get("LARDER_RECORD_QUERY_TEXT") {
            self.record_query_text = matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "1" | "true" | "yes" | "on"
            );
        }
        Ok(())
    }

    /// The store-wide configuration these settings imply.
    pub fn store_config(&self) -> crate::StoreConfig {
        let mut c = crate::StoreConfig {
            record_query_text: self.record_query_text,
            default_deadline: self.default_deadline,
            ..Default::default()
        };
        c.limits.max_page_size = self.max_page_size;
        c.limits.default_page_size = c.limits.default_page_size.min(self.max_page_size.max(1));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CANARY: &str = "c4n4ry-S3cret";

    #[test]
    fn passwords_never_print() {
        for url in [
            format!("postgres://u:{CANARY}@h/db"),
            format!("postgres://u@h/db?password={CANARY}"),
            format!("postgres://u:{}@h/db", CANARY.replace('-', "%2D")),
            format!("postgresql://h/db?sslmode=disable&PassWord={CANARY}"),
        ] {
            let u = DatabaseUrl::new(url.clone());
            let printed = format!("{u} {u:?} {}", u.redacted());
            assert!(!printed.contains(CANARY), "{printed}");
            assert!(!printed.contains("c4n4ry"), "{printed}");
            let s = Settings::from_url(url);
            assert!(!format!("{s:?}").contains("c4n4ry"));
        }
    }

    #[test]
    fn passwords_in_unusual_url_shapes_never_print() {
        let enc = CANARY.replace('-', "%2D");
        for url in [
            // one slash, no slash: a driver reads the userinfo as a path
            format!("postgres:/u:{CANARY}@h/db"),
            format!("postgres:u:{CANARY}@h/db"),
            format!("sqlite:u:{CANARY}@h/db"),
            // key=value connection strings, with and without a scheme
            format!("host=h user=u password={CANARY} dbname=d"),
            format!("host=h PASSWORD='{CANARY}'"),
            format!("postgres:host=h password={CANARY}"),
            format!("postgres://?host=h password={CANARY}"),
            // password-like and unknown parameters, in any case
            format!("postgres://h/db?PASSWORD={CANARY}"),
            format!("postgres://h/db?sslpassword={CANARY}"),
            format!("postgres://h/db?Pass%77ord={CANARY}"),
            format!("postgres://h/db?api_token={CANARY}&x={CANARY}"),
            format!("postgres://h/db?options={CANARY}"),
            format!("sqlite:app.db?PASSWORD={CANARY}"),
            format!("sqlite://app.db?PassWord={enc}"),
            // an `@` after the authority: the parser splits where a reader would not
            format!("postgres://u:12/{CANARY}@h/db"),
            format!("postgres://u:12?{CANARY}@h/db"),
            format!("postgres://u:12#{CANARY}@h/db"),
            format!("postgres://h/db#{CANARY}"),
            // does not parse: redacted after the scheme
            format!("postgres://u:{CANARY}@h:port/db"),
            format!("postgresql://u:{CANARY}@[::1/db"),
            format!("postgres://u:{CANARY}@h/db\u{1b}[2J"),
            CANARY.to_owned(),
            format!("sqlite:{CANARY} x"),
        ] {
            let u = DatabaseUrl::new(url.clone());
            let printed = format!("{u} {u:?} {} {}", u.redacted(), redact_url(&url));
            assert!(!printed.contains("c4n4ry"), "{url} -> {printed}");
            assert!(!printed.contains("S3cret"), "{url} -> {printed}");
            let s = Settings::from_url(url.clone());
            let debug = format!("{s:?}");
            assert!(!debug.contains("c4n4ry"), "{url} -> {debug}");
        }
    }

    #[test]
    fn redaction_keeps_what_is_safe_to_show() {
        for (url, shown) in [
            (
                "postgres://u:pw@h:5432/db?sslmode=disable",
                "postgres://u:***@h:5432/db?sslmode=disable",
            ),
            ("postgres://u@h/db", "postgres://u@h/db"),
            (
                "postgres://h/db?sslmode=require&PASSWORD=pw",
                "postgres://h/db?sslmode=require&PASSWORD=***",
            ),
            ("postgres:u:pw@h/db", "postgres:***"),
            ("postgres:/u:pw@h/db", "postgres:***"),
            ("postgres://u:pw@h:port/db", "postgres:***"),
            ("sqlite://larder.db", "sqlite://larder.db"),
            ("sqlite:data/app.db?mode=ro", "sqlite:data/app.db?mode=ro"),
            ("sqlite::memory:", "sqlite::memory:"),
            ("memory://", "memory://"),
            ("host=h password=pw", "<redacted>"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn unknown_url_parameters_are_refused_by_name_only() {
        const PG: UrlRules = UrlRules {
            backend: "postgresql",
            hierarchical: true,
            params: &["sslmode", "password", "options[*]"],
        };
        const LITE: UrlRules = UrlRules {
            backend: "sqlite",
            hierarchical: false,
            params: &["mode", "cache"],
        };
        let ok = |u: &str, r: &UrlRules| DatabaseUrl::new(u).check(r).is_ok();
        assert!(ok("postgres://u:pw@h/db?sslmode=disable&password=x", &PG));
        assert!(ok("postgres://h/db?options[search_path]=a", &PG));
        assert!(ok("sqlite:app.db?mode=ro", &LITE));
        assert!(ok("sqlite::memory:", &LITE));
        for (url, rules, name) in [
            (
                format!("postgres://h/db?PASSWORD={CANARY}"),
                &PG,
                "`PASSWORD`",
            ),
            (
                format!("postgres://h/db?sslmode=disable&sslpassword={CANARY}"),
                &PG,
                "`sslpassword`",
            ),
            (
                format!("postgres://h/db?options={CANARY}"),
                &PG,
                "`options`",
            ),
            (format!("sqlite:app.db?vfs={CANARY}"), &LITE, "`vfs`"),
        ] {
            let e = DatabaseUrl::new(url.clone()).check(rules).unwrap_err();
            let text = e.to_string();
            assert!(matches!(e, Error::Configuration(_)), "{text}");
            assert!(text.contains(name), "{text}");
            assert!(!text.contains("c4n4ry"), "{text}");
        }
        for url in [
            format!("postgres:u:{CANARY}@h/db"),
            format!("postgres:/u:{CANARY}@h/db"),
            format!("postgres://u:{CANARY}@h:port/db"),
        ] {
            let e = DatabaseUrl::new(url).check(&PG).unwrap_err();
            assert!(matches!(e, Error::Configuration(_)), "{e}");
            assert!(!e.to_string().contains("c4n4ry"), "{e}");
        }
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let mut s = Settings::default();
        s.apply_toml("[database]\nurl = \"sqlite://a.db\"\nmax_connections = 3\n[sqlite]\nsynchronous = \"normal\"\n")
            .unwrap();
        assert_eq!(s.sqlite.synchronous, Synchronous::Normal);
        s.apply_env(|k| (k == "LARDER_POOL_MAX_CONNECTIONS").then(|| "9".to_owned()))
            .unwrap();
        assert_eq!(s.max_connections, Some(9));
        assert_eq!(s.database_url.expose(), "sqlite://a.db");
        assert!(
            s.apply_env(|k| (k == "LARDER_SQLITE_SYNCHRONOUS").then(|| "off".into()))
                .is_err()
        );
    }

    #[test]
    fn postgres_tls_settings_from_file_and_env() {
        let mut s = Settings::default();
        assert_eq!(s.postgres, PostgresSettings::default());
        s.apply_toml("[postgres]\nssl_mode = \"verify-ca\"\nssl_root_cert = \"/etc/ca.pem\"\n")
            .unwrap();
        assert_eq!(s.postgres.ssl_mode, Some(SslMode::VerifyCa));
        assert_eq!(
            s.postgres.ssl_root_cert.as_deref(),
            Some(Path::new("/etc/ca.pem"))
        );
        s.apply_env(|k| match k {
            "LARDER_POSTGRES_SSL_MODE" => Some(" Verify-Full ".into()),
            "LARDER_POSTGRES_SSL_ROOT_CERT" => Some("/run/ca.pem".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.postgres.ssl_mode, Some(SslMode::VerifyFull));
        assert_eq!(
            s.postgres.ssl_root_cert.as_deref(),
            Some(Path::new("/run/ca.pem"))
        );
        for (k, v) in [
            ("LARDER_POSTGRES_SSL_MODE", "verify_full"),
            ("LARDER_POSTGRES_SSL_MODE", ""),
            ("LARDER_POSTGRES_SSL_ROOT_CERT", " "),
        ] {
            let e = s
                .apply_env(|name| (name == k).then(|| v.to_owned()))
                .unwrap_err();
            assert!(matches!(e, Error::Configuration(_)), "{e}");
            assert!(e.to_string().contains(k), "{e}");
        }
        let e = s
            .apply_toml("[postgres]\nssl_mode = \"sometimes\"\n")
            .unwrap_err();
        assert!(matches!(e, Error::Configuration(_)), "{e}");
        for m in SslMode::ALL {
            assert_eq!(m.as_str().parse::<SslMode>().unwrap(), m);
        }
    }

    #[test]
    fn query_param_reads_hierarchical_and_opaque_urls() {
        let u = DatabaseUrl::new("postgres://u:pw@h/db?sslmode=require&ssl-mode=disable");
        assert_eq!(u.query_param("sslmode").as_deref(), Some("require"));
        assert_eq!(u.query_param("ssl-mode").as_deref(), Some("disable"));
        assert_eq!(u.query_param("sslrootcert"), None);
        assert_eq!(
            DatabaseUrl::new("postgres://h/db").query_param("sslmode"),
            None
        );
        assert_eq!(
            DatabaseUrl::new("sqlite:app.db?mode=ro")
                .query_param("mode")
                .as_deref(),
            Some("ro")
        );
    }

    #[test]
    fn a_bad_file_does_not_echo_secrets() {
        let mut s = Settings::default();
        let e = s
            .apply_toml(&format!(
                "[database]\nurl = \"postgres://u:{CANARY}@h/db\"\nbogus = 1\n"
            ))
            .unwrap_err();
        assert!(!e.to_string().contains("c4n4ry"), "{e}");
    }
}
