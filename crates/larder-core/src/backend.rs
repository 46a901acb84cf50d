//! The small contract a storage backend implements. Policy (validation, limits, cursors,
//! retries, hooks, spans, audit) lives once in core; backends run primitives.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;

use futures_core::Stream;

use crate::deadline::Deadline;
use crate::entity::{EntityDef, Record};
use crate::error::Result;
use crate::query::Select;
use crate::spec::Pred;
use crate::value::Value;

/// A boxed, sendable future (the backend traits are object-safe).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A boxed, sendable stream.
pub type BoxStream<'a, T> = Pin<Box<dyn Stream<Item = T> + Send + 'a>>;

/// What a backend can do beyond the common core. The conformance suite reads these instead
/// of skipping tests; the repository turns a missing capability into
/// [`Error::Unsupported`](crate::Error::Unsupported) before any I/O.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Capabilities {
    /// The `regex` operator.
    pub regex: bool,
    /// The `json_contains` operator.
    pub json_contains: bool,
    /// Several write transactions can be open at once (PostgreSQL). SQLite and memory
    /// serialize writers.
    pub concurrent_writers: bool,
    /// Deadlines cancel work inside the database (not only on the client).
    pub server_side_cancel: bool,
}

impl Capabilities {
    /// Sets [`Capabilities::regex`].
    #[must_use]
    pub fn with_regex(mut self, yes: bool) -> Self {
        self.regex = yes;
        self
    }

    /// Sets [`Capabilities::json_contains`].
    #[must_use]
    pub fn with_json_contains(mut self, yes: bool) -> Self {
        self.json_contains = yes;
        self
    }

    /// Sets [`Capabilities::concurrent_writers`].
    #[must_use]
    pub fn with_concurrent_writers(mut self, yes: bool) -> Self {
        self.concurrent_writers = yes;
        self
    }

    /// Sets [`Capabilities::server_side_cancel`].
    #[must_use]
    pub fn with_server_side_cancel(mut self, yes: bool) -> Self {
        self.server_side_cancel = yes;
        self
    }

    /// Whether the named operator capability is present.
    pub fn supports(&self, op: &str) -> bool {
        match op {
            "regex" => self.regex,
            "json_contains" => self.json_contains,
            _ => true,
        }
    }
}

/// Where a backend's data lives, as recorded on spans (OpenTelemetry database semantic
/// conventions: `db.namespace`, `server.address`, `server.port`). Never holds credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The database name (PostgreSQL) or file name (SQLite).
    pub namespace: Option<String>,
    /// The server host.
    pub address: Option<String>,
    /// The server port.
    pub port: Option<u16>,
}

/// Options for opening a backend transaction.
#[derive(Debug, Clone, Default)]
pub struct BeginOptions {
    /// No writes allowed; backends may use a cheaper transaction.
    pub read_only: bool,
    /// The unit of work's deadline (also applied to `BEGIN` itself).
    pub deadline: Option<Deadline>,
}

/// A storage backend: a pool of connections that opens transactions.
///
/// Object-safe; a [`Store`](crate::Store) holds an `Arc<dyn Backend>`.
///
/// # Contract
///
/// - `begin` returns a transaction that sees its own writes and nobody else's uncommitted
///   writes; write transactions must not fail later with a "busy" error merely because they
///   read first (SQLite: `BEGIN IMMEDIATE`).
/// - `prepare` creates the entity's table and indexes if they are missing; it is idempotent.
///   An existing table is never altered: it is checked against the definition (columns,
///   their types, the id column, larder's indexes) and a difference is an
///   [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) naming it (SQL backends may
///   tolerate columns they did not create if inserts still work without them).
/// - Repository primitives on an entity whose table was never prepared fail with
///   [`Error::NotRegistered`](crate::Error::NotRegistered), never a panic or a raw error.
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// `db.system.name` of the backend: `sqlite`, `postgresql` or `memory`.
    fn name(&self) -> &'static str;

    /// What the backend supports.
    fn capabilities(&self) -> &Capabilities;

    /// Where the backend's data lives, for spans: `db.namespace` (the database, or the
    /// SQLite file), `server.address`, `server.port`. Computed once per backend.
    fn endpoint(&self) -> &Endpoint {
        static NONE: Endpoint = Endpoint {
            namespace: None,
            address: None,
            port: None,
        };
        &NONE
    }

    /// The database's own status code for an error this backend returned (PostgreSQL's
    /// SQLSTATE, SQLite's result code), recorded as `db.response.status_code`.
    fn status_code(&self, error: &crate::Error) -> Option<String> {
        let _ = error;
        None
    }

    /// Opens a transaction.
    fn begin<'a>(&'a self, opts: &'a BeginOptions) -> BoxFuture<'a, Result<Box<dyn Transaction>>>;

    /// Creates the entity's table and indexes if missing, or checks the existing table
    /// against the definition.
    fn prepare<'a>(&'a self, def: &'a EntityDef) -> BoxFuture<'a, Result<()>>;

    /// Makes the event store's tables ready: the SQL backends apply larder's built-in
    /// migration module if it is pending (idempotent, locked against concurrent
    /// migrators).
    fn prepare_events(&self) -> BoxFuture<'_, Result<()>> {
        let backend = self.name();
        Box::pin(async move {
            Err(crate::Error::Unsupported {
                operation: "event store",
                backend,
            })
        })
    }

    /// Called after a unit of work that appended events or enqueued outbox messages
    /// committed (PostgreSQL sends a
    /// coalesced `NOTIFY` for subscribers in other processes). Must not block.
    fn events_committed(&self) {}

    /// Wake-ups from other processes when events are appended (PostgreSQL
    /// `LISTEN/NOTIFY`); `None` where the backend has none (in-process wake-ups and polling
    /// still work). The stream ends when the connection is lost.
    fn listen_events(&self) -> BoxFuture<'_, Result<Option<BoxStream<'static, ()>>>> {
        Box::pin(async { Ok(None) })
    }

    /// Closes the pool, waiting for connections to be returned.
    fn close(&self) -> BoxFuture<'_, ()>;

    /// The concrete backend, for backend-specific services (migrations, raw pools).
    fn as_any(&self) -> &dyn Any;
}

/// One open transaction of a backend. Owned by a [`Uow`](crate::Uow).
///
/// # Contract
///
/// - Dropping it without `commit` rolls back (queued, since `Drop` cannot await).
/// - `insert` fails with `AlreadyExists` (not a raw error) on a duplicate id and leaves the
///   transaction usable; `update`/`delete` fail with `Conflict { actual }` when the stored
///   version differs and `NotFound` when the row is missing.
/// - Every operation honours the deadline set by [`Transaction::set_deadline`] and fails
///   with `DeadlineExceeded` after cancelling the database work.
/// - Database errors are classified (unique violation, serialization failure, deadlock,
///   busy, cancellation) into [`Error`](crate::Error) variants.
pub trait Transaction: Send {
    /// The deadline for the operations that follow (`None`: unbounded).
    fn set_deadline(&mut self, deadline: Option<Deadline>);

    /// Inserts a new row with `record.version` (1).
    fn insert<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<()>>;

    /// Replaces the row if its version is `expected`; the record carries the new version.
    fn update<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Deletes the row if its version is `expected`.
    fn delete<'a>(
        &'a mut self,
        def: &'a EntityDef,
        id: &'a Value,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Reads the rows with these ids (missing ids are skipped; order unspecified).
    fn get_many<'a>(
        &'a mut self,
        def: &'a EntityDef,
        ids: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Record>>>;

    /// Counts rows matching the predicate.
    fn count<'a>(&'a mut self, def: &'a EntityDef, filter: &'a Pred) -> BoxFuture<'a, Result<u64>>;

    /// Runs a plan and returns its rows, in order.
    fn select<'a>(
        &'a mut self,
        def: &'a EntityDef,
        plan: &'a Select,
    ) -> BoxFuture<'a, Result<Vec<Record>>>;

    /// Runs a plan and streams its rows in order, in constant memory.
    fn stream<'a>(&'a mut self, def: &'a EntityDef, plan: Select) -> BoxStream<'a, Result<Record>>;

    /// `SAVEPOINT name` (names come from core and are safe identifiers).
    fn savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// `RELEASE SAVEPOINT name`.
    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// `ROLLBACK TO SAVEPOINT name`.
    fn rollback_to_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Commits.
    fn commit(self: Box<Self>) -> BoxFuture<'static, Result<()>>;

    /// Rolls back.
    fn rollback(self: Box<Self>) -> BoxFuture<'static, Result<()>>;

    /// The event-log primitives in this transaction (`None`: the backend has no event
    /// store).
    fn events(&mut self) -> Option<&mut dyn crate::events::EventTransaction> {
        None
    }

    /// The outbox and inbox primitives in this transaction (`None`: the backend has no
    /// outbox).
    fn outbox(&mut self) -> Option<&mut dyn crate::outbox::OutboxTransaction> {
        None
    }

    /// The blob reference primitives in this transaction (`None`: the backend keeps no
    /// blob references).
    fn blob_refs(&mut self) -> Option<&mut dyn crate::blob::BlobRefTransaction> {
        None
    }

    /// The backend's own transaction type, for `larder-postgres`/`larder-sqlite` extension
    /// traits that hand out the driver connection (raw SQL inside the same transaction).
    fn as_any_mut(&mut self) -> &mut dyn Any;
}
