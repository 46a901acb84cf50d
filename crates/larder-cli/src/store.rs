//! Opening the store for the commands that only look at it (`doctor`, `events …`,
//! `projections …`): they never create a database file, never create a table and never
//! apply a migration. A store that is missing, or whose larder tables are missing or out
//! of date, is refused with a message that says how to initialise it.
//!
//! Why not just connect: SQLite creates the file on connect (larder's backend opens with
//! `create_if_missing`) and switches it to WAL, and `EventStore::open` applies larder's
//! built-in migration module. A typo in `--database-url` would then leave an empty
//! database behind, and a diagnostic command would change the schema it reports on.

use std::str::FromStr;

use anyhow::{Context, Result, bail};
use larder::Settings;
use larder::Store;
use larder::migrate::{self, Dialect, MigrationKind};
use sqlx::Connection;

/// The command that creates larder's tables (it applies the built-in module `larder`
/// before any of the application's modules).
pub(crate) const INIT_HINT: &str = "run `larder migrate up` against it to initialise it";

/// What a read-only look at the database found.
#[derive(Debug, Default)]
struct Found {
    /// The migration history table `_larder_migrations` exists.
    history: bool,
    /// The event log table `larder_events` exists.
    events: bool,
    /// The built-in module's history rows: version and whether it finished.
    applied: Vec<(i64, bool)>,
}

/// Connects to a store that larder has initialised, without creating or changing anything;
/// otherwise fails saying that the store is not initialised and how to initialise it.
pub(crate) async fn open_existing(settings: &Settings) -> Result<Store> {
    let url = &settings.database_url;
    match url.scheme().as_str() {
        "sqlite" => {
            let found = inspect_sqlite(settings).await?;
            judge(Dialect::Sqlite, &url.redacted(), &found)?;
            connect(settings).await
        }
        "postgres" | "postgresql" => {
            let store = connect(settings).await?;
            let found = match inspect_postgres(&store).await {
                Ok(f) => f,
                Err(e) => {
                    store.close().await;
                    return Err(e);
                }
            };
            if let Err(e) = judge(Dialect::Postgres, &url.redacted(), &found) {
                store.close().await;
                return Err(e);
            }
            Ok(store)
        }
        // `memory://` has nothing to create; anything else is refused by `connect`.
        _ => connect(settings).await,
    }
}

async fn connect(settings: &Settings) -> Result<Store> {
    larder::connect(settings)
        .await
        .with_context(|| format!("cannot open {}", settings.database_url))
}

/// Looks at a SQLite file through a read-only connection of its own: no file is created
/// when it is missing, and its journal mode is left as it is.
async fn inspect_sqlite(settings: &Settings) -> Result<Found> {
    let url = settings.database_url.expose();
    let shown = settings.database_url.redacted();
    if url.contains(":memory:") || url.contains("mode=memory") {
        bail!(
            "the store {shown} is not initialised: an in-memory database is empty in every \
             new process; point --database-url at a database file"
        );
    }
    // The driver's message may quote a parameter's value: it is not shown.
    let Ok(opts) = sqlx::sqlite::SqliteConnectOptions::from_str(url) else {
        bail!(
            "invalid sqlite url {shown}: expected sqlite://path/to/file.db, with optional \
             parameters mode, cache, immutable, vfs"
        );
    };
    let path = opts.get_filename().to_owned();
    if !path.exists() {
        let full = std::path::absolute(&path).unwrap_or(path);
        bail!(
            "the store {shown} is not initialised: there is no database file at {} (this \
             command creates nothing); {INIT_HINT}",
            full.display()
        );
    }
    let opts = opts.read_only(true).create_if_missing(false);
    let mut conn = sqlx::sqlite::SqliteConnection::connect_with(&opts)
        .await
        .with_context(|| format!("cannot open {shown}"))?;
    let found = async {
        let mut f = Found::default();
        for (table, flag) in [
            (migrate::HISTORY_TABLE, &mut f.history),
            ("larder_events", &mut f.events),
        ] {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table' AND name = ?1",
            )
            .bind(table)
            .fetch_one(&mut conn)
            .await?;
            *flag = n > 0;
        }
        if f.history {
            f.applied = sqlx::query_as::<_, (i64, bool)>(
                "SELECT version, success FROM _larder_migrations WHERE module = ?1",
            )
            .bind(migrate::BUILTIN_MODULE)
            .fetch_all(&mut conn)
            .await?;
        }
        Ok::<Found, sqlx::Error>(f)
    }
    .await
    .with_context(|| format!("cannot read {shown}"));
    let _ = conn.close().await;
    found
}

/// Looks at the PostgreSQL catalog (the tables larder would use, through the
/// connection's `search_path`), in a read-only unit of work.
async fn inspect_postgres(store: &Store) -> Result<Found> {
    use larder::postgres::PgUowExt;
    let mut uow = store.read().await?;
    let conn = uow
        .postgres_bounded()
        .await
        .context("the PostgreSQL backend gave no connection")?;
    let mut f = Found::default();
    for (table, flag) in [
        (migrate::HISTORY_TABLE, &mut f.history),
        ("larder_events", &mut f.events),
    ] {
        *flag = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(table)
            .fetch_one(&mut *conn)
            .await
            .context("cannot read the PostgreSQL catalog")?;
    }
    if f.history {
        f.applied = sqlx::query_as::<_, (i64, bool)>(
            "SELECT version, success FROM _larder_migrations WHERE module = $1",
        )
        .bind(migrate::BUILTIN_MODULE)
        .fetch_all(&mut *conn)
        .await
        .context("cannot read the migration history")?;
    }
    uow.commit().await?;
    Ok(f)
}

/// Ready when the event log exists and every migration of larder's built-in module has
/// been applied (a newer larder may bring one the store does not have yet).
fn judge(dialect: Dialect, shown: &str, found: &Found) -> Result<()> {
    if !found.history && !found.events {
        bail!("the store {shown} is not initialised (it has no larder tables); {INIT_HINT}");
    }
    let pending: Vec<String> = migrate::builtin(dialect)
        .migrations
        .iter()
        .filter(|m| m.kind == MigrationKind::Versioned)
        .filter(|m| !found.applied.contains(&(m.version, true)))
        .map(|m| m.label())
        .collect();
    if let Some(first) = pending.first() {
        let more = match pending.len() {
            1 => String::new(),
            n => format!(" and {} more", n - 1),
        };
        bail!(
            "the store {shown} is not initialised: larder's migration {first}{more} is not \
             applied; {INIT_HINT}"
        );
    }
    if !found.events {
        bail!(
            "the store {shown} is not initialised: the event log table `larder_events` is \
             missing although the history says it was created; check `larder migrate status`"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_applied(d: Dialect) -> Vec<(i64, bool)> {
        migrate::builtin(d)
            .migrations
            .iter()
            .map(|m| (m.version, true))
            .collect()
    }

    #[test]
    fn a_store_is_ready_only_with_every_builtin_migration_applied() {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            let ok = Found {
                history: true,
                events: true,
                applied: all_applied(d),
            };
            judge(d, "sqlite://x.db", &ok).unwrap();

            let empty = judge(d, "sqlite://x.db", &Found::default()).unwrap_err();
            assert!(empty.to_string().contains("not initialised"), "{empty}");
            assert!(empty.to_string().contains("larder migrate up"), "{empty}");

            let mut partial = all_applied(d);
            let last = partial.pop().unwrap();
            let e = judge(
                d,
                "sqlite://x.db",
                &Found {
                    history: true,
                    events: false,
                    applied: partial,
                },
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains(&last.0.to_string()), "{e}");
            assert!(e.contains("larder migrate up"), "{e}");

            // A migration that did not finish is not applied.
            let mut dirty = all_applied(d);
            dirty[0].1 = false;
            let e = judge(
                d,
                "sqlite://x.db",
                &Found {
                    history: true,
                    events: true,
                    applied: dirty,
                },
            )
            .unwrap_err();
            assert!(e.to_string().contains("not initialised"), "{e}");
        }
    }
}
