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
//! | `LARDER_RECORD_QUERY_TEXT` | record `db.query.text` on spans (`true`/`false`) | `false` |
//! | `LARDER_MAX_PAGE_SIZE` | hard cap on page size | 1000 |
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
//! [observability]
//! record_query_text = false
//! ```

use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A database URL whose password (userinfo or `password=` query parameter) never appears
/// in `Debug` or `Display`.
///
/// ```
/// use larder_core::settings::DatabaseUrl;
/// let url = DatabaseUrl::new("postgres://app:hunter2@db/app?sslmode=disable");
/// assert_eq!(url.to_string(), "postgres://app:***@db/app?sslmode=disable");
/// assert!(!format!("{url:?}").contains("hunter2"));
/// assert_eq!(url.expose(), "postgres://app:hunter2@db/app?sslmode=disable");
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    /// Wraps a URL.
    pub fn new(url: impl Into<String>) -> Self {
        DatabaseUrl(url.into())
    }

    /// The real URL, secrets included: only for handing to a driver.
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

    /// The URL with secrets replaced by `***`.
    pub fn redacted(&self) -> String {
        redact_url(&self.0)
    }
}

/// Replaces passwords in a URL (userinfo and `password`/`pass`/`pwd`/`token`/`secret`
/// query parameters, percent-encoded or not) with `***`. Strings that do not parse as a
/// URL are redacted whole if they contain an `@` or a `password` key.
pub fn redact_url(s: &str) -> String {
    const SECRET_KEYS: [&str; 6] = ["password", "pass", "pwd", "token", "secret", "sslpassword"];
    match url::Url::parse(s) {
        Ok(mut u) => {
            if u.password().is_some() {
                let _ = u.set_password(Some("***"));
            }
            let pairs: Vec<(String, String)> = u
                .query_pairs()
                .map(|(k, v)| {
                    let secret = SECRET_KEYS.iter().any(|s| k.eq_ignore_ascii_case(s));
                    (
                        k.into_owned(),
                        if secret { "***".into() } else { v.into_owned() },
                    )
                })
                .collect();
            if !pairs.is_empty() {
                u.query_pairs_mut().clear().extend_pairs(pairs);
            }
            u.to_string().replace("%2A%2A%2A", "***")
        }
        Err(_) => {
            let lower = s.to_ascii_lowercase();
            if s.contains('@') || SECRET_KEYS.iter().any(|k| lower.contains(k)) {
                "<redacted>".to_owned()
            } else {
                s.to_owned()
            }
        }
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
    /// Record `db.query.text` on spans.
    pub record_query_text: bool,
    /// Hard cap on page size.
    pub max_page_size: u32,
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
            record_query_text: false,
            max_page_size: crate::spec::Limits::default().max_page_size,
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
    observability: FileObservability,
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
                redact_url(e.message())
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
        if let Some(b) = f.observability.record_query_text {
            self.record_query_text = b;
        }
        Ok(())
    }

    fn apply_file(&mut self, path: &Path) -> Result<()> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            Error::Configuration(format!("cannot read settings file {}: {e}", path.display()))
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
