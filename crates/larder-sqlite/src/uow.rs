//! The SQLite dialect of larder's SQL backend: deadlines by interrupt, a commit SQLite
//! decides, one writer at a time, raw connection access.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use larder_core::backend::BoxFuture;
use larder_core::{Deadline, Error, Result, Uow};
use larder_sql::{Dialect, SqlDialect, SqlTx};
use sqlx::AssertSqlSafe;
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteConnection};

use crate::error::{BACKEND, map};

/// The SQLite dialect (marker type of [`SqliteTransaction`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Lite;

/// A larder transaction on SQLite. Obtain the underlying connection from a unit of work with
/// [`SqliteUowExt::sqlite`].
pub type SqliteTransaction = SqlTx<Lite>;

/// Per-transaction state: the deadline cell of the progress handler, and the backend's
/// write permit (held until the transaction has ended; `None`: read-only).
#[derive(Debug, Default)]
pub struct LiteState {
    /// The installed progress handler reads its deadline from here (nanoseconds after
    /// `base`, 0 = none), so the deadline can change per call without reinstalling it.
    cell: Option<(Arc<AtomicU64>, std::time::Instant)>,
    _permit: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl LiteState {
    pub(crate) fn new(permit: Option<tokio::sync::OwnedSemaphorePermit>) -> Self {
        LiteState {
            cell: None,
            _permit: permit,
        }
    }
}

fn nanos_after(base: std::time::Instant, d: Deadline) -> u64 {
    let n = d
        .instant()
        .into_std()
        .saturating_duration_since(base)
        .as_nanos();
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

/// `ROLLBACK`/`COMMIT` found no transaction: SQLite had rolled it back by itself (a plain
/// SQLITE_ERROR, told apart only by its text).
fn no_transaction(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.message().contains("no transaction is active"))
}

impl SqlDialect for Lite {
    type Db = Sqlite;
    type State = LiteState;

    const DIALECT: Dialect = Dialect::Sqlite;
    const BACKEND: &'static str = BACKEND;
    const SAVEPOINT_HEALS: bool = false;
    // Write transactions are `BEGIN IMMEDIATE`: no other writer can claim the row.
    const LOCK_ROW: &'static str = "";
    const JSON_PARAM: &'static str = "";

    larder_sql::sqlx_plumbing!(Sqlite);

    fn map(e: sqlx::Error, operation: &'static str) -> Error {
        map(e, operation)
    }

    fn missing(e: &Error) -> Option<larder_sql::Missing> {
        crate::error::missing(e)
    }

    fn duplicate_event_id(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db) if db.message().contains("larder_events.event_id"))
    }

    /// SQLITE_NOMEM 7, SQLITE_INTERRUPT 9, SQLITE_IOERR 10, SQLITE_CORRUPT 11, SQLITE_FULL
    /// 13 on a write: "it might be necessary for SQLite to rollback and cancel the entire
    /// transaction" (sqlite.org/lang_transaction.html). Later statements would then run
    /// outside any transaction and commit one by one, so they are refused.
    fn poisons(e: &sqlx::Error, write: bool) -> bool {
        let code = match e {
            sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<u32>().ok()),
            _ => None,
        };
        write && code.is_some_and(|c| matches!(c & 0xff, 7 | 9 | 10 | 11 | 13))
    }

    fn bind(values: Vec<sea_query::Value>) -> Result<SqliteArguments> {
        crate::row::bind(values)
    }

    /// Points the connection's progress handler at the current deadline, installing the
    /// handler the first time a deadline is used in this transaction. No round trip.
    async fn arm(
        conn: &mut SqliteConnection,
        state: &mut LiteState,
        deadline: Option<Deadline>,
    ) -> Result<()> {
        match (deadline, &state.cell) {
            (None, None) => Ok(()),
            (None, Some((cell, _))) => {
                cell.store(0, Ordering::Relaxed);
                Ok(())
            }
            (Some(d), Some((cell, base))) => {
                cell.store(nanos_after(*base, d), Ordering::Relaxed);
                Ok(())
            }
            (Some(d), None) => {
                let base = std::time::Instant::now();
                let cell = Arc::new(AtomicU64::new(nanos_after(base, d)));
                let c = cell.clone();
                let mut handle = conn
                    .lock_handle()
                    .await
                    .map_err(|e| map(e, "uow.deadline"))?;
                // Called every ~1000 VM instructions; returning false interrupts the
                // statement (SQLITE_INTERRUPT), which we report as DeadlineExceeded.
                handle.set_progress_handler(1000, move || {
                    let limit = c.load(Ordering::Relaxed);
                    limit == 0 || base.elapsed().as_nanos() < u128::from(limit)
                });
                drop(handle);
                state.cell = Some((cell, base));
                Ok(())
            }
        }
    }

    /// The connection goes back to the pool with the progress handler still installed:
    /// disarm it so it can never interrupt the next user's statements.
    fn disarm(state: &mut LiteState) {
        if let Some((cell, _)) = &state.cell {
            cell.store(0, Ordering::Relaxed);
        }
    }

    async fn commit(mut conn: PoolConnection<Sqlite>) -> Result<()> {
        // SQLite decides: when it rolled the whole transaction back itself (an interrupted
        // write, a full disk, an I/O error, or a raw `ROLLBACK`/`COMMIT` through the
        // extension), `COMMIT` fails with "no transaction is active".
        match sqlx::raw_sql(AssertSqlSafe("COMMIT"))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if no_transaction(&e) => Err(Error::TransactionAborted {
                operation: "uow.commit",
                cause: Some(
                    "sqlite had rolled the transaction back (a failed statement, or one run on the raw connection)".into(),
                ),
            }),
            Err(e) => {
                // A COMMIT that failed (busy, a deferred constraint) leaves the
                // transaction open: end it before the connection goes back.
                let _ = larder_sql::roll_back::<Lite>(conn).await;
                Err(map(e, "uow.commit"))
            }
        }
    }

    fn rollback_ended(e: &sqlx::Error) -> bool {
        no_transaction(e)
    }

    const TABLE_COLUMNS: &'static str = "SELECT name, type, NULL, \"notnull\" <> 0, pk > 0, \
         dflt_value IS NOT NULL FROM pragma_table_info($1)";
    const TABLE_INDEXES: &'static str = "SELECT name FROM pragma_index_list($1)";

    const HISTORY_EXISTS: &'static str =
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_larder_migrations'";
    const HISTORY_DDL: &'static str = "CREATE TABLE IF NOT EXISTS _larder_migrations (\
         module TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, \
         kind TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, \
         execution_ms INTEGER NOT NULL, success INTEGER NOT NULL, \
         PRIMARY KEY (module, version, name)) STRICT";
    // One writer: every migration runs under `BEGIN IMMEDIATE`; concurrent migrators are
    // serialized by a run lease (see `SqlMigrationDriver`).
    const BEGIN_WRITE: &'static str = "BEGIN IMMEDIATE";
    const RUN_LEASE: bool = true;
}

/// Raw access to the SQLite connection of a unit of work, for SQL that larder does not
/// generate, in the same transaction.
///
/// ```ignore
/// let conn = uow.sqlite_bounded().await?;           // deadline armed
/// let r = sqlx::query("SELECT 1").execute(conn).await.map_err(larder::sqlite::classify)?;
/// ```
pub trait SqliteUowExt {
    /// The connection, or `None` if the unit of work is not on SQLite or has finished —
    /// or is read-only and has not run a statement yet (its `BEGIN` travels with its first
    /// read: use [`sqlite_bounded`](SqliteUowExt::sqlite_bounded), which begins it).
    /// Statements run on it are not bounded by the unit of work's deadline.
    fn sqlite(&mut self) -> Option<&mut SqliteConnection>;

    /// The connection with the unit of work's deadline armed (the progress-handler
    /// interrupt), so raw statements are cancelled by the database when it passes; map
    /// their errors with [`classify`](crate::classify) to get [`Error::DeadlineExceeded`].
    fn sqlite_bounded(&mut self) -> BoxFuture<'_, Result<&mut SqliteConnection>>;
}

impl SqliteUowExt for Uow {
    fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        larder_sql::sql_tx::<Lite>(self)?.connection()
    }

    fn sqlite_bounded(&mut self) -> BoxFuture<'_, Result<&mut SqliteConnection>> {
        larder_sql::bounded_connection::<Lite>(self, "raw sqlite access")
    }
}

/// Classifies a sqlx error from raw SQL run through [`SqliteUowExt`] into larder's
/// vocabulary (deadline, transient, …), as larder's own calls do.
pub fn classify(e: sqlx::Error) -> Error {
    map(e, "raw")
}
