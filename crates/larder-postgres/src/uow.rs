//! The PostgreSQL dialect of larder's SQL backend: deadlines by `statement_timeout`, a
//! commit the server decides, the migration advisory lock, raw connection access.

use std::time::{Duration, Instant};

use larder_core::backend::BoxFuture;
use larder_core::deadline::CLIENT_GRACE;
use larder_core::{Deadline, Error, Result, Uow};
use larder_sql::{Dialect, SqlDialect, SqlTx};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnection, Postgres};
use sqlx::{Arguments, AssertSqlSafe};

use crate::error::{BACKEND, map};

/// The PostgreSQL dialect (marker type of [`PgTransaction`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Pg;

/// A larder transaction on PostgreSQL. Obtain the underlying connection from a unit of work
/// with [`PgUowExt::postgres`].
pub type PgTransaction = SqlTx<Pg>;

/// Per-transaction state: the `statement_timeout` (ms) currently set, if any.
#[derive(Debug, Default)]
pub struct PgState {
    armed_ms: Option<u64>,
}

impl PgState {
    /// `BEGIN` already set `statement_timeout` to `ms` (one round trip for both).
    pub(crate) fn armed_at_begin(ms: Option<u64>) -> Self {
        PgState { armed_ms: ms }
    }
}

/// Whether `e` is a database error with this SQLSTATE.
fn has_sqlstate(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}

/// The advisory lock key of migrations: one per schema, so migrators of different schemas
/// in one database do not wait for each other.
const LOCK_KEY: &str = "hashtextextended('larder.migrate.' || current_schema(), 0)";

impl SqlDialect for Pg {
    type Db = Postgres;
    type State = PgState;

    const DIALECT: Dialect = Dialect::Postgres;
    const BACKEND: &'static str = BACKEND;
    const SAVEPOINT_HEALS: bool = true;
    const LOCK_ROW: &'static str = " FOR UPDATE";
    const JSON_PARAM: &'static str = "::json";

    larder_sql::sqlx_plumbing!(Postgres);

    fn map(e: sqlx::Error, operation: &'static str) -> Error {
        map(e, operation)
    }

    fn missing(e: &Error) -> Option<larder_sql::Missing> {
        crate::error::missing(e)
    }

    fn duplicate_event_id(e: &sqlx::Error) -> bool {
        matches!(e, sqlx::Error::Database(db)
            if db.code().as_deref() == Some("23505")
                && db.constraint() == Some("larder_events_event_id_key"))
    }

    /// Every failed statement aborts a PostgreSQL transaction (until a rollback to a
    /// savepoint taken before it): a later `COMMIT` would silently roll back.
    fn poisons(_e: &sqlx::Error, _write: bool) -> bool {
        true
    }

    fn bind(values: Vec<sea_query::Value>) -> Result<PgArguments> {
        crate::row::bind(values)
    }

    /// Makes `statement_timeout` (transaction-local) fit the deadline, with a round trip
    /// only when the value in force does not: a statement starting now may run the armed
    /// time, which must be at least the time left (or it would be cancelled early) and at
    /// most the time left plus the client grace (or it would outlive the deadline). So a
    /// unit of work arms once at `BEGIN` and again at most every `CLIENT_GRACE` of elapsed
    /// time, or when a per-call deadline changes it; lifting the deadline resets it.
    async fn arm(
        conn: &mut PgConnection,
        state: &mut PgState,
        deadline: Option<Deadline>,
    ) -> Result<()> {
        let ms = match (deadline, state.armed_ms) {
            (None, None) => return Ok(()),
            (None, Some(_)) => 0,
            (Some(d), armed) => {
                let left = d.remaining().as_millis();
                if left == 0 {
                    return Err(Error::DeadlineExceeded {
                        operation: "uow.deadline",
                    });
                }
                let left = u64::try_from(left).unwrap_or(u64::MAX);
                let grace = u64::try_from(CLIENT_GRACE.as_millis()).unwrap_or(u64::MAX);
                if let Some(a) = armed
                    && a >= left
                    && a <= left.saturating_add(grace)
                {
                    return Ok(());
                }
                left
            }
        };
        let mut args = PgArguments::default();
        args.add(ms.to_string())
            .map_err(|e| Error::backend(BACKEND, e))?;
        sqlx::query_with("SELECT set_config('statement_timeout', $1, true)", args)
            .execute(conn)
            .await
            .map_err(|e| map(e, "uow.deadline"))?;
        state.armed_ms = (ms != 0).then_some(ms);
        Ok(())
    }

    async fn commit(mut conn: PoolConnection<Postgres>) -> Result<()> {
        // Whether the transaction commits is decided by the server, not by bookkeeping:
        // a failed statement larder never saw (raw SQL through `PgUowExt`, a stream
        // dropped after an error) aborts the transaction, and PostgreSQL then answers
        // `COMMIT` with the tag `ROLLBACK` — which sqlx does not expose. So the commit is
        // one simple query, one round trip, led by a probe the server answers: `SAVEPOINT`
        // fails with 25P02 in an aborted transaction and with 25P01 when there is no
        // transaction any more (raw `COMMIT`/`ROLLBACK` through the extension), and the
        // rest of the string is then skipped; otherwise `COMMIT` runs (the probe
        // subtransaction wrote nothing, so it costs no xid).
        match sqlx::raw_sql(AssertSqlSafe("SAVEPOINT larder_commit_probe; COMMIT"))
            .execute(&mut *conn)
            .await
        {
            Ok(_) => Ok(()),
            Err(e) if has_sqlstate(&e, "25P02") => {
                let _ = larder_sql::roll_back::<Pg>(conn).await;
                Err(Error::TransactionAborted {
                    operation: "uow.commit",
                    cause: None,
                })
            }
            Err(e) if has_sqlstate(&e, "25P01") => Err(Error::TransactionAborted {
                operation: "uow.commit",
                cause: Some(
                    "the transaction was ended by a statement run on the raw connection".into(),
                ),
            }),
            Err(e) => {
                // COMMIT itself failed (deferred constraint, serialization failure) and
                // the server ended the transaction — or the connection broke. Do not
                // guess: the connection is closed instead of going back to the pool.
                conn.close_on_drop();
                Err(map(e, "uow.commit"))
            }
        }
    }

    // The primary key is read from `pg_catalog` (visible to every role;
    // `information_schema`'s constraint views hide tables the role does not own or write).
    const TABLE_COLUMNS: &'static str = "SELECT c.column_name::text, c.data_type::text, \
         c.collation_name::text, c.is_nullable = 'NO', \
         EXISTS (SELECT 1 FROM pg_catalog.pg_index i JOIN pg_catalog.pg_attribute a \
         ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey) \
         WHERE i.indrelid = format('%I.%I', c.table_schema, c.table_name)::regclass \
         AND i.indisprimary AND a.attname = c.column_name), \
         c.column_default IS NOT NULL OR c.is_identity = 'YES' OR c.is_generated = 'ALWAYS' \
         FROM information_schema.columns c \
         WHERE c.table_schema = current_schema() AND c.table_name = $1 \
         ORDER BY c.ordinal_position";
    const TABLE_INDEXES: &'static str = "SELECT indexname::text FROM pg_indexes \
         WHERE schemaname = current_schema() AND tablename = $1";
    // Concurrent `CREATE TABLE IF NOT EXISTS` can still collide in the catalog.
    const REGISTER_LOCK: Option<&'static str> = Some("SELECT pg_advisory_xact_lock(hashtext($1))");

    const HISTORY_EXISTS: &'static str =
        "SELECT 1 WHERE to_regclass('_larder_migrations') IS NOT NULL";
    const HISTORY_DDL: &'static str = "CREATE TABLE IF NOT EXISTS _larder_migrations (\
         module TEXT NOT NULL, version BIGINT NOT NULL, name TEXT NOT NULL, \
         kind TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, \
         execution_ms BIGINT NOT NULL, success BOOLEAN NOT NULL, \
         PRIMARY KEY (module, version, name))";
    const BEGIN_WRITE: &'static str = "BEGIN";
    const HOLDS_RUN_LOCK: bool = true;

    /// A session advisory lock for the whole run, taken by polling `pg_try_advisory_lock` —
    /// never a blocking `pg_advisory_lock`, whose waiting transaction would deadlock with a
    /// `CREATE INDEX CONCURRENTLY` run by the lock holder. If the process dies, the session
    /// ends and the lock with it.
    async fn lock_migrations(conn: &mut PgConnection, timeout: Duration) -> Result<bool> {
        let started = Instant::now();
        loop {
            let got: bool = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT pg_try_advisory_lock({LOCK_KEY})"
            )))
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| map(e, "migrate.lock"))?;
            if got {
                return Ok(true);
            }
            if started.elapsed() >= timeout {
                return Ok(false);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Released explicitly, outside any transaction (so the unlock cannot fail in an
    /// aborted transaction).
    async fn unlock_migrations(conn: &mut PgConnection) -> Result<()> {
        sqlx::query(AssertSqlSafe(format!(
            "SELECT pg_advisory_unlock({LOCK_KEY})"
        )))
        .execute(conn)
        .await
        .map_err(|e| map(e, "migrate.unlock"))?;
        Ok(())
    }
}

/// Raw access to the PostgreSQL connection of a unit of work, for SQL that larder does not
/// generate, in the same transaction.
///
/// ```ignore
/// let conn = uow.postgres_bounded().await?;           // deadline armed
/// let r = sqlx::query("SELECT 1").execute(conn).await.map_err(larder::postgres::classify)?;
/// ```
pub trait PgUowExt {
    /// The connection, or `None` if the unit of work is not on PostgreSQL or has finished
    /// — or is read-only and its transaction has not begun yet (its first read runs on its
    /// own, see [`PgBackend::with_lazy_reads`](crate::PgBackend::with_lazy_reads): use
    /// [`postgres_bounded`](PgUowExt::postgres_bounded), which begins it). Statements run
    /// on it are not bounded by the unit of work's deadline.
    fn postgres(&mut self) -> Option<&mut PgConnection>;

    /// The connection inside the unit of work's transaction (begun now if it was
    /// deferred), with its deadline armed (`statement_timeout`), so raw statements are
    /// cancelled by the database when it passes; map their errors with
    /// [`classify`](crate::classify) to get [`Error::DeadlineExceeded`].
    fn postgres_bounded(&mut self) -> BoxFuture<'_, Result<&mut PgConnection>>;
}

impl PgUowExt for Uow {
    fn postgres(&mut self) -> Option<&mut PgConnection> {
        larder_sql::sql_tx::<Pg>(self)?.connection()
    }

    fn postgres_bounded(&mut self) -> BoxFuture<'_, Result<&mut PgConnection>> {
        larder_sql::bounded_connection::<Pg>(self, "raw postgres access")
    }
}

/// Classifies a sqlx error from raw SQL run through [`PgUowExt`] into larder's vocabulary
/// (deadline, transient, …), as larder's own calls do.
pub fn classify(e: sqlx::Error) -> Error {
    map(e, "raw")
}
