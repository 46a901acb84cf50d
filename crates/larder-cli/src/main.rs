//! The `larder` command-line tool.
//!
//! ```text
//! larder migrate up|down|status|verify|new|baseline|repair   modular SQL migrations
//! larder events stats|read|tail     inspect and follow the event store's global log
//! larder projections status|rebuild  projection checkpoints: lag, reset for a replay
//! larder outbox status|dead|replay|skip|purge|relay   the transactional outbox and its relay
//! larder blobs ls|put|get|rm|du  the blob store (folder, S3, Azure) the settings name
//! larder doctor                 check the configured store and print its settings
//! larder settings               print the effective settings (secrets redacted)
//! ```
//!
//! Every command reads `--database-url`, else `LARDER_DATABASE_URL`, else the TOML file
//! named by `--config` / `LARDER_CONFIG`, else `sqlite://larder.db`.

mod blobs;
mod events;
mod migrate;
mod outbox;
mod settings_view;
mod store;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use larder::settings::{DatabaseUrl, Settings};
use sqlx::Row;

/// larder: the persistence toolkit's command-line tool.
#[derive(Debug, Parser)]
#[command(name = "larder", version, about, long_about = None)]
struct Cli {
    /// Database URL: sqlite://path, postgres://user:password@host/db or memory://
    /// [default: sqlite://larder.db]
    #[arg(
        long,
        global = true,
        env = "LARDER_DATABASE_URL",
        hide_env_values = true
    )]
    database_url: Option<String>,

    /// TOML settings file (see the larder docs for its sections)
    #[arg(long, global = true, env = "LARDER_CONFIG")]
    config: Option<PathBuf>,

    /// Print machine-readable JSON instead of text
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Modular SQL migrations: every `<dir>/<module>/migrations/` folder plus larder's own
    /// tables (module `larder`). Files: `<version>_<name>.sql`, optional
    /// `<version>_<name>.down.sql`, repeatable `R__<name>.sql`, optional `module.toml` with
    /// `depends_on = [...]`; `-- larder:no-transaction` runs a file outside a transaction.
    Migrate(migrate::MigrateArgs),
    /// The event store: counters and consumer lag (`stats`), one stream's events (`read`),
    /// the global log followed live (`tail`)
    Events(events::EventsArgs),
    /// Projection checkpoints: lag (`status`) and a reset to replay the log (`rebuild`;
    /// the running service's ProjectionRunner does the replay, the read model is not
    /// cleared)
    Projections(events::ProjectionsArgs),
    /// The transactional outbox: counters and partition leases (`status`), dead letters
    /// (`dead`, `replay`, `skip`), retention (`purge`) and a relay process (`relay`)
    Outbox(outbox::OutboxArgs),
    /// The blob store: list (`ls`), copy in and out (`put`, `get`), delete (`rm`) and usage
    /// by prefix (`du`)
    Blobs(blobs::BlobsArgs),
    /// Connect to the store, run a round trip, and report the backend, its capabilities
    /// and durability settings. Exits non-zero when the store is unreachable or not
    /// initialised (`larder migrate up` initialises it); creates and changes nothing.
    Doctor,
    /// Print the effective settings (key, value, where it came from), passwords redacted
    Settings,
}

fn settings(cli: &Cli) -> Result<Settings> {
    let mut s = match &cli.config {
        Some(path) => Settings::from_file(path)?,
        None => Settings::from_env()?,
    };
    if let Some(url) = &cli.database_url {
        s.database_url = DatabaseUrl::new(url.clone());
    }
    Ok(s)
}

async fn durability(store: &larder::Store) -> Result<Vec<(String, String)>> {
    use larder::postgres::PgUowExt;
    use larder::sqlite::SqliteUowExt;
    let mut uow = store.read().await?;
    let mut out = Vec::new();
    if store.backend_name() == "sqlite" {
        // Inside the unit of work's transaction (a read-only one begins it with its first
        // statement, so ask for the bounded connection, which begins it).
        let conn = uow.sqlite_bounded().await?;
        for p in [
            "journal_mode",
            "synchronous",
            "foreign_keys",
            "busy_timeout",
        ] {
            // Pragma names are constants of this list, not input.
            let row = sqlx::query(sqlx::AssertSqlSafe(format!("PRAGMA {p}")))
                .fetch_one(&mut *conn)
                .await?;
            let v = match row.try_get::<i64, _>(0) {
                Ok(n) => pragma_name(p, n),
                Err(_) => row.try_get::<String, _>(0)?.to_ascii_uppercase(),
            };
            out.push((p.to_owned(), v));
        }
        let v: String = sqlx::query("SELECT sqlite_version()")
            .fetch_one(&mut *conn)
            .await?
            .get(0);
        out.push(("sqlite_version".into(), v));
    } else if store.backend_name() == "postgresql" {
        // Inside the unit of work's transaction (a read-only one begins it lazily).
        let conn = uow.postgres_bounded().await?;
        for (k, q) in [
            ("server_version", "SHOW server_version"),
            ("fsync", "SHOW fsync"),
            ("synchronous_commit", "SHOW synchronous_commit"),
            (
                "default_transaction_isolation",
                "SHOW default_transaction_isolation",
            ),
        ] {
            let v: String = sqlx::query(q).fetch_one(&mut *conn).await?.get(0);
            out.push((k.to_owned(), v));
        }
    }
    uow.commit().await?;
    Ok(out)
}

/// A pragma's value by its documented name (`PRAGMA synchronous` answers 2 for `FULL`).
fn pragma_name(pragma: &str, n: i64) -> String {
    let name = match (pragma, n) {
        ("synchronous", 0) => "OFF",
        ("synchronous", 1) => "NORMAL",
        ("synchronous", 2) => "FULL",
        ("synchronous", 3) => "EXTRA",
        ("foreign_keys", 0) => "OFF",
        ("foreign_keys", 1) => "ON",
        ("busy_timeout", ms) => return format!("{ms} ms"),
        (_, n) => return n.to_string(),
    };
    name.to_owned()
}

async fn doctor(cli: &Cli) -> Result<()> {
    let s = settings(cli)?;
    let started = Instant::now();
    // Refuses a missing or uninitialised store without creating anything.
    let store = store::open_existing(&s).await?;
    let connect_ms = started.elapsed().as_secs_f64() * 1e3;
    let started = Instant::now();
    let uow = store.read().await?;
    uow.commit().await?;
    let round_trip_ms = started.elapsed().as_secs_f64() * 1e3;
    let caps = store.capabilities().clone();
    let checked = async {
        let settings = durability(&store).await?;
        // Who holds the event log back (PostgreSQL: any transaction with an id, in any
        // database of the cluster). `open_existing` checked that the tables exist.
        let es = larder::EventStore::builder(&store)
            .prepare(false)
            .open()
            .await?;
        let holder = events::horizon_holder(&store, &es).await?;
        Ok::<_, anyhow::Error>((settings, holder))
    }
    .await;
    store.close().await;
    let (settings, holder) = checked?;
    if cli.json {
        let obj = serde_json::json!({
            "ok": true,
            "url": s.database_url.to_string(),
            "backend": store.backend_name(),
            "connect_ms": connect_ms,
            "round_trip_ms": round_trip_ms,
            "capabilities": {
                "regex": caps.regex,
                "json_contains": caps.json_contains,
                "concurrent_writers": caps.concurrent_writers,
                "server_side_cancel": caps.server_side_cancel,
            },
            "log_horizon": events::horizon_json(holder.as_ref()),
            "settings": settings
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::Value::from(v.as_str())))
                .collect::<serde_json::Map<String, serde_json::Value>>(),
        });
        println!("{obj}");
    } else {
        println!("ok        {} ({})", s.database_url, store.backend_name());
        println!("connect   {connect_ms:.1} ms, empty unit of work {round_trip_ms:.1} ms");
        println!(
            "supports  regex: {}, json_contains: {}, concurrent writers: {}, server-side cancel: {}",
            caps.regex, caps.json_contains, caps.concurrent_writers, caps.server_side_cancel
        );
        println!("{}", events::horizon_line(holder.as_ref()));
        for (k, v) in settings {
            println!("{k} = {v}");
        }
    }
    Ok(())
}

fn print_settings(cli: &Cli, url_flag: bool) -> Result<()> {
    let s = settings(cli)?;
    settings_view::print(&s, url_flag, cli.config.as_deref(), cli.json)
}

/// The error and its causes, skipping a cause whose text the message already contains
/// (larder's errors include their source in their message).
fn render(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let s = cause.to_string();
        if !out.contains(&s) {
            out.push_str(": ");
            out.push_str(&s);
        }
    }
    out
}

#[tokio::main]
async fn main() -> ExitCode {
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `--database-url` itself, not its environment variable (for `settings`' sources).
    let url_flag = matches.value_source("database_url") == Some(ValueSource::CommandLine);
    let r = match &cli.command {
        Command::Migrate(args) => match settings(&cli) {
            Ok(s) => migrate::run(args, &s, cli.json).await,
            Err(e) => Err(e),
        },
        Command::Events(args) => match settings(&cli) {
            Ok(s) => events::run_events(args, &s, cli.json).await,
            Err(e) => Err(e),
        },
        Command::Projections(args) => match settings(&cli) {
            Ok(s) => events::run_projections(args, &s, cli.json).await,
            Err(e) => Err(e),
        },
        Command::Outbox(args) => match settings(&cli) {
            Ok(s) => outbox::run(args, &s, cli.json).await,
            Err(e) => Err(e),
        },
        Command::Blobs(args) => match settings(&cli) {
            Ok(s) => blobs::run(args, &s, cli.json)
                .await
                .map(|()| ExitCode::SUCCESS),
            Err(e) => Err(e),
        },
        Command::Doctor => doctor(&cli).await.map(|()| ExitCode::SUCCESS),
        Command::Settings => print_settings(&cli, url_flag).map(|()| ExitCode::SUCCESS),
    };
    match r {
        Ok(code) => code,
        Err(e) => {
            // larder errors never contain passwords.
            if cli.json {
                println!("{}", serde_json::json!({"ok": false, "error": render(&e)}));
            } else {
                eprintln!("error: {}", render(&e));
            }
            ExitCode::FAILURE
        }
    }
}
