//! `larder settings`: the effective settings as a table (key, value, where the value came
//! from) or as JSON, the database URL redacted in both.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use larder::settings::{DEFAULT_BLOB_URL, DatabaseUrl, Settings, SslMode, Synchronous};

/// Where a value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// `--database-url` on the command line.
    Flag,
    /// An environment variable.
    Env(&'static str),
    /// The TOML settings file.
    File(String),
    /// larder's default.
    Default,
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::Flag => f.write_str("flag --database-url"),
            Source::Env(var) => write!(f, "env {var}"),
            Source::File(path) => write!(f, "file {path}"),
            Source::Default => f.write_str("default"),
        }
    }
}

/// One setting: its TOML key (`section.name`), its JSON key (the historical flat name),
/// the environment variable that sets it, and how to read it off a `Settings`.
struct Key {
    toml: &'static str,
    json: &'static str,
    env: &'static str,
    /// Whether two settings differ in this key.
    differs: fn(&Settings, &Settings) -> bool,
}

const KEYS: &[Key] = &[
    Key {
        toml: "database.url",
        json: "database_url",
        env: "LARDER_DATABASE_URL",
        differs: |a, b| a.database_url != b.database_url,
    },
    Key {
        toml: "database.max_connections",
        json: "max_connections",
        env: "LARDER_POOL_MAX_CONNECTIONS",
        differs: |a, b| a.max_connections != b.max_connections,
    },
    Key {
        toml: "database.min_connections",
        json: "min_connections",
        env: "LARDER_POOL_MIN_CONNECTIONS",
        differs: |a, b| a.min_connections != b.min_connections,
    },
    Key {
        toml: "database.acquire_timeout_ms",
        json: "acquire_timeout_ms",
        env: "LARDER_POOL_ACQUIRE_TIMEOUT_MS",
        differs: |a, b| a.acquire_timeout != b.acquire_timeout,
    },
    Key {
        toml: "database.default_deadline_ms",
        json: "default_deadline_ms",
        env: "LARDER_DEFAULT_DEADLINE_MS",
        differs: |a, b| a.default_deadline != b.default_deadline,
    },
    Key {
        toml: "database.max_page_size",
        json: "max_page_size",
        env: "LARDER_MAX_PAGE_SIZE",
        differs: |a, b| a.max_page_size != b.max_page_size,
    },
    Key {
        toml: "sqlite.synchronous",
        json: "sqlite_synchronous",
        env: "LARDER_SQLITE_SYNCHRONOUS",
        differs: |a, b| a.sqlite.synchronous != b.sqlite.synchronous,
    },
    Key {
        toml: "sqlite.busy_timeout_ms",
        json: "sqlite_busy_timeout_ms",
        env: "LARDER_SQLITE_BUSY_TIMEOUT_MS",
        differs: |a, b| a.sqlite.busy_timeout != b.sqlite.busy_timeout,
    },
    Key {
        toml: "postgres.ssl_mode",
        json: "postgres_ssl_mode",
        env: "LARDER_POSTGRES_SSL_MODE",
        differs: |a, b| a.postgres.ssl_mode != b.postgres.ssl_mode,
    },
    Key {
        toml: "postgres.ssl_root_cert",
        json: "postgres_ssl_root_cert",
        env: "LARDER_POSTGRES_SSL_ROOT_CERT",
        differs: |a, b| a.postgres.ssl_root_cert != b.postgres.ssl_root_cert,
    },
    Key {
        toml: "observability.record_query_text",
        json: "record_query_text",
        env: "LARDER_RECORD_QUERY_TEXT",
        differs: |a, b| a.record_query_text != b.record_query_text,
    },
    Key {
        toml: "blob.url",
        json: "blob_url",
        env: "LARDER_BLOB_URL",
        differs: |a, b| a.blob_url != b.blob_url,
    },
    Key {
        toml: "outbox.sink",
        json: "outbox_sink",
        env: "LARDER_OUTBOX_SINK",
        differs: |a, b| a.outbox.sink != b.outbox.sink,
    },
    Key {
        toml: "outbox.batch_size",
        json: "outbox_batch_size",
        env: "LARDER_OUTBOX_BATCH_SIZE",
        differs: |a, b| a.outbox.batch_size != b.outbox.batch_size,
    },
    Key {
        toml: "outbox.max_attempts",
        json: "outbox_max_attempts",
        env: "LARDER_OUTBOX_MAX_ATTEMPTS",
        differs: |a, b| a.outbox.max_attempts != b.outbox.max_attempts,
    },
    Key {
        toml: "outbox.lease_ms",
        json: "outbox_lease_ms",
        env: "LARDER_OUTBOX_LEASE_MS",
        differs: |a, b| a.outbox.lease != b.outbox.lease,
    },
    Key {
        toml: "outbox.poll_ms",
        json: "outbox_poll_ms",
        env: "LARDER_OUTBOX_POLL_MS",
        differs: |a, b| a.outbox.poll_interval != b.outbox.poll_interval,
    },
];

/// Settings that differ from the defaults in every key: a key the file sets comes out
/// equal when the file is applied to both these and the defaults.
fn unlike_defaults() -> Settings {
    let mut s = Settings {
        database_url: DatabaseUrl::new("\u{0}"),
        max_connections: Some(u32::MAX),
        min_connections: u32::MAX,
        acquire_timeout: Duration::MAX,
        default_deadline: Some(Duration::MAX),
        max_page_size: u32::MAX,
        record_query_text: !Settings::default().record_query_text,
        ..Settings::default()
    };
    s.sqlite.synchronous = match Settings::default().sqlite.synchronous {
        Synchronous::Full => Synchronous::Normal,
        _ => Synchronous::Full,
    };
    s.sqlite.busy_timeout = Duration::MAX;
    s.postgres.ssl_mode = Some(match Settings::default().postgres.ssl_mode {
        Some(SslMode::Disable) => SslMode::VerifyFull,
        _ => SslMode::Disable,
    });
    s.postgres.ssl_root_cert = Some("\u{0}".into());
    s.outbox.sink = Some(DatabaseUrl::new("\u{0}"));
    s.blob_url = Some(DatabaseUrl::new("\u{0}"));
    s.outbox.batch_size = u32::MAX;
    s.outbox.max_attempts = u32::MAX;
    s.outbox.lease = Duration::MAX;
    s.outbox.poll_interval = Duration::MAX;
    s
}

/// The TOML keys the settings file sets.
fn keys_in_file(path: &Path) -> Result<Vec<&'static str>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read settings file {}", path.display()))?;
    let mut a = Settings::default();
    let mut b = unlike_defaults();
    a.apply_toml(&text)?;
    b.apply_toml(&text)?;
    Ok(KEYS
        .iter()
        .filter(|k| !(k.differs)(&a, &b))
        .map(|k| k.toml)
        .collect())
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

/// The value of a key, for people.
fn text(s: &Settings, key: &str) -> String {
    match key {
        "database.url" => s.database_url.redacted(),
        "database.max_connections" => match (s.max_connections, s.database_url.scheme().as_str()) {
            (Some(n), _) => n.to_string(),
            (None, "sqlite") => "4 (the SQLite default)".to_owned(),
            (None, "postgres" | "postgresql") => "8 (the PostgreSQL default)".to_owned(),
            (None, _) => "8 for PostgreSQL, 4 for SQLite".to_owned(),
        },
        "database.min_connections" => s.min_connections.to_string(),
        "database.acquire_timeout_ms" => ms(s.acquire_timeout).to_string(),
        "database.default_deadline_ms" => s
            .default_deadline
            .map_or_else(|| "none".to_owned(), |d| ms(d).to_string()),
        "database.max_page_size" => s.max_page_size.to_string(),
        "sqlite.synchronous" => synchronous(s.sqlite.synchronous).to_owned(),
        "sqlite.busy_timeout_ms" => ms(s.sqlite.busy_timeout).to_string(),
        "postgres.ssl_mode" => s.postgres.ssl_mode.map_or_else(
            || "the URL's, else prefer".to_owned(),
            |m| m.as_str().to_owned(),
        ),
        "postgres.ssl_root_cert" => s
            .postgres
            .ssl_root_cert
            .as_ref()
            .map_or_else(|| "none".to_owned(), |p| p.display().to_string()),
        "observability.record_query_text" => s.record_query_text.to_string(),
        "blob.url" => s
            .blob_url
            .as_ref()
            .map_or_else(|| DEFAULT_BLOB_URL.to_owned(), DatabaseUrl::redacted),
        "outbox.sink" => s
            .outbox
            .sink
            .as_ref()
            .map_or_else(|| "stdout".to_owned(), DatabaseUrl::redacted),
        "outbox.batch_size" => s.outbox.batch_size.to_string(),
        "outbox.max_attempts" => s.outbox.max_attempts.to_string(),
        "outbox.lease_ms" => ms(s.outbox.lease).to_string(),
        "outbox.poll_ms" => ms(s.outbox.poll_interval).to_string(),
        _ => String::new(),
    }
}

fn synchronous(v: Synchronous) -> &'static str {
    match v {
        Synchronous::Normal => "normal",
        _ => "full",
    }
}

/// Prints the settings. `url_flag`: the URL came from `--database-url` (not its
/// environment variable); `config`: the settings file that was read, if any.
pub(crate) fn print(s: &Settings, url_flag: bool, config: Option<&Path>, json: bool) -> Result<()> {
    let in_file = match config {
        Some(path) => keys_in_file(path)?,
        None => Vec::new(),
    };
    let sources: Vec<Source> = KEYS
        .iter()
        .map(|k| {
            if k.toml == "database.url" && url_flag {
                Source::Flag
            } else if std::env::var_os(k.env).is_some() {
                Source::Env(k.env)
            } else if let Some(path) = config.filter(|_| in_file.contains(&k.toml)) {
                Source::File(path.display().to_string())
            } else {
                Source::Default
            }
        })
        .collect();
    if json {
        let sources: serde_json::Map<String, serde_json::Value> = KEYS
            .iter()
            .zip(&sources)
            .map(|(k, src)| (k.json.to_owned(), src.to_string().into()))
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "ok": true,
                "database_url": s.database_url.redacted(),
                "max_connections": s.max_connections,
                "min_connections": s.min_connections,
                "acquire_timeout_ms": ms(s.acquire_timeout),
                "default_deadline_ms": s.default_deadline.map(ms),
                "max_page_size": s.max_page_size,
                "sqlite_synchronous": synchronous(s.sqlite.synchronous),
                "sqlite_busy_timeout_ms": ms(s.sqlite.busy_timeout),
                "record_query_text": s.record_query_text,
                "postgres_ssl_mode": s.postgres.ssl_mode.map(SslMode::as_str),
                "postgres_ssl_root_cert": s.postgres.ssl_root_cert.as_ref().map(|p| p.display().to_string()),
                "blob_url": s.blob_url.as_ref().map_or_else(|| DEFAULT_BLOB_URL.to_owned(), DatabaseUrl::redacted),
                "outbox_sink": s.outbox.sink.as_ref().map_or_else(|| "stdout".to_owned(), DatabaseUrl::redacted),
                "outbox_batch_size": s.outbox.batch_size,
                "outbox_max_attempts": s.outbox.max_attempts,
                "outbox_lease_ms": ms(s.outbox.lease),
                "outbox_poll_ms": ms(s.outbox.poll_interval),
                "sources": sources,
            })
        );
        return Ok(());
    }
    let rows: Vec<(&str, String, String)> = KEYS
        .iter()
        .zip(&sources)
        .map(|(k, src)| (k.toml, text(s, k.toml), src.to_string()))
        .collect();
    let kw = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(3);
    let vw = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(5);
    println!("{:<kw$}  {:<vw$}  SOURCE", "KEY", "VALUE");
    for (k, v, src) in rows {
        println!("{k:<kw$}  {v:<vw$}  {src}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_file_sets_exactly_the_keys_it_names_even_at_their_default_values() {
        let dir = std::env::temp_dir().join(format!("larder-cli-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("larder.toml");
        std::fs::write(
            &path,
            "[database]\nurl = \"sqlite://x.db\"\nmin_connections = 0\n[sqlite]\nsynchronous = \"full\"\n",
        )
        .unwrap();
        let keys = keys_in_file(&path).unwrap();
        assert_eq!(
            keys,
            [
                "database.url",
                "database.min_connections",
                "sqlite.synchronous"
            ]
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn every_key_differs_from_its_default_in_the_probe() {
        let (a, b) = (Settings::default(), unlike_defaults());
        for k in KEYS {
            assert!((k.differs)(&a, &b), "{}", k.toml);
        }
    }
}
