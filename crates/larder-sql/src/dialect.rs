//! What a SQL dialect provides: the small hooks the shared SQL backend ([`SqlTx`],
//! [`SqlMigrationDriver`](crate::migrate::SqlMigrationDriver)) is generic over.
//!
//! A backend crate implements [`SqlDialect`] (how to talk to its sqlx driver: errors,
//! binding, deadlines, commit) and [`LogDialect`] (the event-log algorithms that genuinely
//! differ between databases) on a marker type, and gets the repository primitives, the
//! event store's snapshots, checkpoints and stream reads, transaction control with the
//! server deciding the commit, savepoints, rollback on drop, and the migration driver
//! written once.
//!
//! [`SqlTx`]: crate::SqlTx

use std::future::Future;
use std::time::Duration;

use larder_core::backend::BoxFuture;
use larder_core::events::{
    Checkpoint, EventFilter, ExpectedVersion, HorizonHolder, LogStats, NewEvent,
};
use larder_core::{BoxError, Deadline, Error, Result};
use sqlx::Database;
use sqlx::pool::PoolConnection;
use uuid::Uuid;

use crate::compile::Dialect;
use crate::driver::Missing;
use crate::tx::SqlTx;

/// The connection type of a dialect's sqlx driver.
pub type Conn<D> = <<D as SqlDialect>::Db as Database>::Connection;
/// The row type of a dialect's sqlx driver.
pub type RowOf<D> = <<D as SqlDialect>::Db as Database>::Row;
/// The argument buffer of a dialect's sqlx driver.
pub type ArgsOf<D> = <<D as SqlDialect>::Db as Database>::Arguments;
/// The result of an executed statement of a dialect's sqlx driver.
pub type QueryResultOf<D> = <<D as SqlDialect>::Db as Database>::QueryResult;

/// Column access on a driver's row, in larder's few types. A dialect implements it for its
/// row type (`D`: the dialect, so a backend crate may implement it for sqlx's row); the decoding quirks live here (SQLite stores uuids and JSON as text,
/// PostgreSQL has native types and narrower integers).
pub trait SqlRow<D> {
    /// An integer column (any integer width the dialect stores).
    fn int(&self, i: usize) -> std::result::Result<Option<i64>, sqlx::Error>;
    /// A text column.
    fn text(&self, i: usize) -> std::result::Result<Option<String>, sqlx::Error>;
    /// A text column, borrowed from the row.
    fn text_ref(&self, i: usize) -> std::result::Result<Option<&str>, sqlx::Error>;
    /// A boolean column.
    fn boolean(&self, i: usize) -> std::result::Result<Option<bool>, sqlx::Error>;
    /// A double precision column.
    fn float(&self, i: usize) -> std::result::Result<Option<f64>, sqlx::Error>;
    /// A uuid column.
    fn uuid(&self, i: usize) -> std::result::Result<Option<Uuid>, BoxError>;
    /// A JSON column.
    fn json(&self, i: usize) -> std::result::Result<Option<serde_json::Value>, BoxError>;
    /// A binary column, borrowed from the row.
    fn bytes_ref(&self, i: usize) -> std::result::Result<Option<&[u8]>, sqlx::Error>;
}

/// Implements [`SqlRow`] methods that the driver decodes natively, as `try_get(i)`:
/// `native_columns!(text: String, boolean: bool)` inside the `impl SqlRow<…> for …Row`.
#[macro_export]
macro_rules! native_columns {
    ($($name:ident: $ty:ty),* $(,)?) => {
        $(
            fn $name(&self, i: usize) -> ::std::result::Result<Option<$ty>, $crate::sqlx::Error> {
                $crate::sqlx::Row::try_get(self, i)
            }
        )*
    };
}

/// Implements [`SqlDialect::executor`] and [`SqlDialect::rows_affected`] for the sqlx
/// database `$db` (the same two lines for every driver): `sqlx_plumbing!(Postgres);` inside
/// the `impl SqlDialect for …`.
#[macro_export]
macro_rules! sqlx_plumbing {
    ($db:ty) => {
        fn executor<'c>(
            conn: &'c mut <$db as $crate::sqlx::Database>::Connection,
        ) -> impl $crate::sqlx::Executor<'c, Database = $db> {
            conn
        }

        fn rows_affected(r: &<$db as $crate::sqlx::Database>::QueryResult) -> u64 {
            r.rows_affected()
        }
    };
}

/// How the shared SQL backend talks to one database through its sqlx driver.
///
/// Everything here is what really differs between databases; the statements and the
/// policy (which statement for which operation, what "0 rows" means, when a transaction
/// is unusable, who decides a commit) are written once in this crate.
pub trait SqlDialect: Sized + Send + Sync + 'static {
    /// The sqlx database.
    type Db: Database<Arguments: sqlx::IntoArguments<Self::Db>, Row: SqlRow<Self>>
        + sqlx::database::HasStatementCache;
    /// Per-transaction state of this dialect (how its deadline is armed, a write permit).
    /// Dropped when the transaction has ended, after the rollback of a dropped one.
    type State: Default + Send + 'static;

    /// The SQL dialect statements are compiled for.
    const DIALECT: Dialect;
    /// The backend name in errors and spans.
    const BACKEND: &'static str;
    /// Whether rolling back to a savepoint taken before a failed statement makes the
    /// transaction usable again (PostgreSQL). When not (SQLite, which may roll the whole
    /// transaction back by itself), a poisoned transaction refuses every later statement.
    const SAVEPOINT_HEALS: bool;
    /// The row-lock suffix of a `SELECT` that claims a row (`" FOR UPDATE"`; empty where
    /// the write transaction already excludes every other writer).
    const LOCK_ROW: &'static str;
    /// How a text parameter is cast to the type of a JSON column (`"::json"`, or empty
    /// where JSON is stored as text).
    const JSON_PARAM: &'static str;

    /// The driver's executor for `conn` (sqlx's `Executor` is implemented per driver, so
    /// generic code cannot name it otherwise; the implementation is `conn`).
    fn executor<'c>(conn: &'c mut Conn<Self>) -> impl sqlx::Executor<'c, Database = Self::Db>;

    /// Rows affected by an executed statement.
    fn rows_affected(r: &QueryResultOf<Self>) -> u64;

    /// Classifies a driver error into larder's vocabulary.
    fn map(e: sqlx::Error, operation: &'static str) -> Error;

    /// Whether a failed repository statement said that the table, or a column, it names
    /// does not exist (see [`Missing`]). Default: never.
    fn missing(e: &Error) -> Option<Missing> {
        let _ = e;
        None
    }

    /// Whether an event-log statement failed on the unique event id (the same id stored in
    /// another stream).
    fn duplicate_event_id(e: &sqlx::Error) -> bool;

    /// Whether a statement that failed with `e` leaves the transaction unable to commit its
    /// work (`write`: the statement wrote, or was part of an append). PostgreSQL: every
    /// error aborts the transaction. SQLite: interrupted, full, I/O, out-of-memory and
    /// corrupt writes may roll the whole transaction back.
    fn poisons(e: &sqlx::Error, write: bool) -> bool;

    /// Binds compiled values with the driver's types.
    fn bind(values: Vec<sea_query::Value>) -> Result<ArgsOf<Self>>;

    /// Makes the statements that follow honour `deadline` (`None`: no deadline), with as
    /// few round trips as the dialect allows.
    fn arm<'a>(
        conn: &'a mut Conn<Self>,
        state: &'a mut Self::State,
        deadline: Option<Deadline>,
    ) -> impl Future<Output = Result<()>> + Send + 'a;

    /// Undoes what `arm` installed on the connection before it goes back to the pool.
    fn disarm(state: &mut Self::State) {
        let _ = state;
    }

    /// Commits the transaction open on `conn`; the server decides (see the backend).
    fn commit(conn: PoolConnection<Self::Db>) -> impl Future<Output = Result<()>> + Send;

    /// Whether `ROLLBACK` failed only because no transaction was open any more (the
    /// database had rolled it back by itself): that counts as rolled back.
    fn rollback_ended(e: &sqlx::Error) -> bool {
        let _ = e;
        false
    }

    /// The catalog query of a table's columns (`$1`: the table), one row per column in
    /// order: name, declared type, collation (or `NULL`), not null, part of the primary key,
    /// has a default.
    const TABLE_COLUMNS: &'static str;
    /// The catalog query of a table's index names (`$1`: the table).
    const TABLE_INDEXES: &'static str;
    /// A statement that serializes registrations of one table until the transaction ends
    /// (`$1`: a key naming the table); `None` where the write transaction already does.
    const REGISTER_LOCK: Option<&'static str> = None;

    /// SQL of one statement returning one row when the migration history table exists.
    const HISTORY_EXISTS: &'static str;
    /// `CREATE TABLE IF NOT EXISTS _larder_migrations (…)` in this dialect's types.
    const HISTORY_DDL: &'static str;
    /// The statement that opens a migration's write transaction.
    const BEGIN_WRITE: &'static str;
    /// Whether [`lock_migrations`](SqlDialect::lock_migrations) takes a lock held for the
    /// whole run (a session lock: PostgreSQL).
    const HOLDS_RUN_LOCK: bool = false;
    /// Whether migrators of this dialect take a run *lease* instead (a row in
    /// `_larder_migration_lock`, written under the database's write lock; see
    /// [`SqlMigrationDriver`](crate::SqlMigrationDriver)): for databases without session
    /// locks (SQLite).
    const RUN_LEASE: bool = false;

    /// Takes the migration lock on `conn` within `timeout` (`Ok(false)`: timed out).
    fn lock_migrations<'a>(
        conn: &'a mut Conn<Self>,
        timeout: Duration,
    ) -> impl Future<Output = Result<bool>> + Send + 'a {
        let _ = (conn, timeout);
        async { Ok(true) }
    }

    /// Releases the lock taken by [`lock_migrations`](SqlDialect::lock_migrations).
    fn unlock_migrations<'a>(
        conn: &'a mut Conn<Self>,
    ) -> impl Future<Output = Result<()>> + Send + 'a {
        let _ = conn;
        async { Ok(()) }
    }
}

/// The rows of one page of the global log, as a dialect's
/// [`LogDialect::read_all_rows`] returns them.
pub struct LogRows<D: SqlDialect> {
    /// The rows; the event's columns ([`LogDialect::EVENT_COLUMNS`]) start at `at`, and a
    /// row whose column `at` is `NULL` carries no event (a page that only reports the head).
    pub rows: Vec<RowOf<D>>,
    /// Where the event's columns start.
    pub at: usize,
    /// The readable end of the log, when the page was not full (see
    /// [`ReadAllBatch::head`](larder_core::events::ReadAllBatch::head)).
    pub head: Option<Checkpoint>,
}

impl<D: SqlDialect> std::fmt::Debug for LogRows<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogRows")
            .field("rows", &self.rows.len())
            .field("at", &self.at)
            .field("head", &self.head)
            .finish()
    }
}

/// The event-log algorithms of a dialect: how positions are assigned and read without
/// gaps or skips, which differs genuinely (PostgreSQL: the transaction-id horizon and a
/// streams row per stream; SQLite: one writer, positions in commit order). Everything
/// else of the event store (stream reads, snapshots, checkpoints) is written once on
/// [`SqlTx`] using [`LogDialect::EVENT_COLUMNS`] and [`LogDialect::STREAM_VERSION`].
#[allow(clippy::type_complexity)]
pub trait LogDialect: SqlDialect {
    /// The select list of an event, in the order [`crate::events::decode_event`] reads:
    /// position, tx, stream id, stream version, event id, type, schema version, payload
    /// (text), metadata (text), recorded at.
    const EVENT_COLUMNS: &'static str;
    /// One row, one column: the version of stream `$1` (no row or `NULL`: no stream).
    const STREAM_VERSION: &'static str;
    /// The outbox's no-skip condition on the row `o` of `_larder_outbox` (with a leading
    /// ` AND `): empty where writers are serialized (positions in commit order);
    /// PostgreSQL reads below its snapshot's horizon.
    const OUTBOX_HORIZON: &'static str = "";
    /// Rows of `_larder_outbox_partitions` the dialect's migration creates.
    const OUTBOX_PARTITIONS: u32 = 1;
    /// A statement that lets the current transaction's commit return before it is durable
    /// (the relay's records: losing one in a server crash only republishes messages);
    /// `None` where the dialect has no per-transaction setting.
    const RELAXED_COMMIT: Option<&'static str> = None;
    /// A statement run in the relay's fetch transaction before the fetch, where the
    /// planner needs to be kept on the pending index's order (`None`: the fetch runs
    /// alone).
    const OUTBOX_FETCH_PLAN: Option<&'static str> = None;

    /// See [`EventTransaction::append`](larder_core::events::EventTransaction::append).
    fn append<'a>(
        tx: &'a mut SqlTx<Self>,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<std::result::Result<(u64, Checkpoint), Option<u64>>>>;

    /// See [`EventTransaction::find_events`](larder_core::events::EventTransaction::find_events).
    fn find_events<'a>(
        tx: &'a mut SqlTx<Self>,
        ids: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String, u64, Checkpoint)>>>;

    /// The rows of one page of the global log (see
    /// [`EventTransaction::read_all`](larder_core::events::EventTransaction::read_all)):
    /// the shared code decodes them, owned or borrowed.
    fn read_all_rows<'a>(
        tx: &'a mut SqlTx<Self>,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<LogRows<Self>>>;

    /// See [`EventTransaction::count_after`](larder_core::events::EventTransaction::count_after).
    fn count_after(tx: &mut SqlTx<Self>, after: Checkpoint, cap: u64)
    -> BoxFuture<'_, Result<u64>>;

    /// See [`EventTransaction::stats`](larder_core::events::EventTransaction::stats).
    fn stats(tx: &mut SqlTx<Self>) -> BoxFuture<'_, Result<LogStats>>;

    /// See [`EventTransaction::horizon_holder`](larder_core::events::EventTransaction::horizon_holder).
    /// Default: nothing holds the log back (a single-writer log).
    fn horizon_holder(tx: &mut SqlTx<Self>) -> BoxFuture<'_, Result<Option<HorizonHolder>>> {
        let _ = tx;
        Box::pin(async { Ok(None) })
    }
}
