//! One SQL transaction of any dialect: larder's repository primitives, transaction
//! control, savepoints and rollback on drop, written once over a [`SqlDialect`].
//!
//! larder runs `BEGIN`/`COMMIT`/`ROLLBACK` itself on a pooled connection rather than through
//! `sqlx::Transaction`: sqlx decides a commit's success without looking at the server's
//! answer, and a failed sqlx commit can leave a pooled connection unable to begin again.
//! The dialect's [`SqlDialect::commit`] asks the server.

use std::any::Any;
use std::sync::Arc;

use futures_util::StreamExt;
use larder_core::backend::{BoxFuture, BoxStream, Transaction};
use larder_core::events::EventTransaction;
use larder_core::query::Select;
use larder_core::spec::Pred;
use larder_core::{Deadline, EntityDef, Error, Record, Result, Uow, Value};
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Executor};

use crate::compile::{self, Built, Shape};
use crate::dialect::{ArgsOf, Conn, LogDialect, QueryResultOf, RowOf, SqlDialect};
use crate::driver::{Missing, decode_record};

/// How a failed statement is classified (see [`SqlDialect::poisons`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A repository read.
    Read,
    /// A repository write.
    Write,
    /// An event-log statement that writes (part of an append, a claim).
    Event,
    /// An event-log statement that only reads.
    EventRead,
}

impl Kind {
    /// Whether a statement of this kind only reads (and so may run on its own before a
    /// deferred transaction begins).
    fn reads(self) -> bool {
        matches!(self, Kind::Read | Kind::EventRead)
    }
}

/// A larder transaction on a SQL database of dialect `D`. Obtain the underlying connection
/// from a unit of work with the backend's extension trait (`PgUowExt`, `SqliteUowExt`).
pub struct SqlTx<D: SqlDialect> {
    /// The pooled connection, inside the transaction the backend opened on it. `None` once
    /// the transaction ended; `Drop` rolls back a transaction that did not.
    conn: Option<PoolConnection<D::Db>>,
    deadline: Option<Deadline>,
    state: D::State,
    /// Set when a statement failed in a way that leaves the transaction unable to commit
    /// (see [`SqlDialect::poisons`]): `commit` then rolls back and fails with it.
    poisoned: Option<Error>,
    /// Savepoints created while the transaction was healthy: rolling back to one of them
    /// clears `poisoned` when the dialect recovers that way ([`SqlDialect::SAVEPOINT_HEALS`]).
    healthy_savepoints: Vec<String>,
    record_sql: bool,
    /// `Some(BEGIN …)` while the transaction has not begun: a read-only unit of work whose
    /// first read runs on its own (see [`SqlTx::begin_lazily`]).
    begin_later: Option<&'static str>,
    /// A read already ran on its own, outside the transaction.
    ran_alone: bool,
    /// `begin_later` travels in the first read's own request instead of running alone
    /// before it (see [`SqlTx::begin_with_first_read`]).
    merge_begin: bool,
}

impl<D: SqlDialect> std::fmt::Debug for SqlTx<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlTx")
            .field("backend", &D::BACKEND)
            .field("open", &self.conn.is_some())
            .field("deadline", &self.deadline)
            .field("poisoned", &self.poisoned.is_some())
            .finish_non_exhaustive()
    }
}

/// The unit-of-work form of a poisoning error: what `commit` reports.
fn at_commit(e: &Error) -> Error {
    match e {
        Error::DeadlineExceeded { .. } => Error::DeadlineExceeded {
            operation: "uow.commit",
        },
        // Retryable causes stay retryable: `Store::transaction` runs it again.
        Error::Transient { kind } => Error::Transient { kind: *kind },
        Error::TransactionAborted { cause, .. } => Error::TransactionAborted {
            operation: "uow.commit",
            cause: cause.clone(),
        },
        other => Error::TransactionAborted {
            operation: "uow.commit",
            cause: Some(larder_core::error::one_line(&other.to_string())),
        },
    }
}

/// Rolls back the transaction on `conn` (one the database already ended counts as rolled
/// back, see [`SqlDialect::rollback_ended`]); a connection that cannot is closed rather than
/// returned to the pool inside a transaction.
pub async fn roll_back<D: SqlDialect>(
    mut conn: PoolConnection<D::Db>,
) -> std::result::Result<(), sqlx::Error> {
    match D::executor(&mut conn)
        .execute(sqlx::raw_sql(AssertSqlSafe("ROLLBACK")))
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if D::rollback_ended(&e) => Ok(()),
        Err(e) => {
            conn.close_on_drop();
            Err(e)
        }
    }
}

impl<D: SqlDialect> SqlTx<D> {
    /// A transaction the backend opened on `conn` (`BEGIN` already ran).
    pub fn new(conn: PoolConnection<D::Db>, record_sql: bool, state: D::State) -> Self {
        SqlTx {
            conn: Some(conn),
            deadline: None,
            state,
            poisoned: None,
            healthy_savepoints: Vec::new(),
            record_sql,
            begin_later: None,
            ran_alone: false,
            merge_begin: false,
        }
    }

    /// A transaction whose `begin` (`BEGIN`) is sent with its first read, as one
    /// multi-statement request: the read runs inside the transaction as if `BEGIN` had run
    /// first — the same snapshot for the whole unit of work — at one request fewer
    /// (SQLite: a trip to sqlx's worker thread). Any other first statement (a write, a
    /// savepoint, raw access) begins the transaction on its own first, and a unit of work
    /// with no statement never begins. Only for drivers that run several statements of one
    /// prepared query in order, binding `$n` across them (sqlx's SQLite driver).
    /// `conn` must not be inside a transaction.
    #[must_use]
    pub fn begin_with_first_read(mut self, begin: &'static str) -> Self {
        self.begin_later = Some(begin);
        self.merge_begin = true;
        self
    }

    /// After `arm` for a read: the statement to send, led by the deferred `BEGIN` when
    /// it travels with this read (see [`SqlTx::begin_with_first_read`]).
    fn led_by_begin(&mut self, sql: Arc<str>) -> Arc<str> {
        if !self.merge_begin {
            return sql;
        }
        match self.begin_later.take() {
            Some(begin) => Arc::from(format!("{begin};\n{sql}")),
            None => sql,
        }
    }

    /// A transaction that is begun with `begin` (`BEGIN READ ONLY`) only when it is
    /// needed: the first repository read runs on its own, in one round trip, and the
    /// transaction begins before the second statement (or a deadline, a savepoint, raw
    /// access). Committing a unit of work that never began costs nothing.
    ///
    /// Only for read-only units of work where each statement takes its own snapshot anyway
    /// (PostgreSQL `READ COMMITTED`): a lone first read then sees exactly what it would
    /// have seen inside the transaction. `conn` must not be inside a transaction.
    #[must_use]
    pub fn begin_lazily(mut self, begin: &'static str) -> Self {
        self.begin_later = Some(begin);
        self
    }

    /// Whether the transaction has begun on the connection (always, unless
    /// [`SqlTx::begin_lazily`] deferred it and no statement needed it yet).
    pub fn has_begun(&self) -> bool {
        self.begin_later.is_none()
    }

    /// Begins a deferred transaction now, unless this statement (a read: `alone_ok`) may
    /// be the one that runs on its own.
    async fn begin_if_needed(&mut self, alone_ok: bool) -> Result<()> {
        let Some(begin) = self.begin_later else {
            return Ok(());
        };
        if alone_ok && !self.ran_alone && self.deadline.is_none() {
            self.ran_alone = true;
            return Ok(());
        }
        let conn = self
            .conn
            .as_deref_mut()
            .ok_or(Error::Closed("sql transaction"))?;
        D::executor(conn)
            .execute(sqlx::raw_sql(AssertSqlSafe(begin)))
            .await
            .map_err(|e| D::map(e, "uow.begin"))?;
        self.begin_later = None;
        Ok(())
    }

    /// The sqlx connection of this transaction (raw SQL in the same transaction), or `None`
    /// once it ended — or before a deferred transaction began ([`SqlTx::begin_lazily`]:
    /// use [`SqlTx::bounded_connection`], which begins it). Statements run on it are not
    /// bounded by the deadline (see [`SqlTx::bounded_connection`]).
    pub fn connection(&mut self) -> Option<&mut Conn<D>> {
        if self.begin_later.is_some() {
            return None;
        }
        self.conn.as_deref_mut()
    }

    /// The connection inside the transaction (begun now if it was deferred), with the
    /// transaction's deadline armed.
    pub async fn bounded_connection(&mut self) -> Result<&mut Conn<D>> {
        self.arm(false).await?;
        self.conn()
    }

    fn conn(&mut self) -> Result<&mut Conn<D>> {
        self.conn
            .as_deref_mut()
            .ok_or(Error::Closed("sql transaction"))
    }

    /// Makes the connection honour the current deadline; refuses every statement of a
    /// transaction the database may have rolled back by itself; begins a deferred
    /// transaction unless this statement (a read: `alone_ok`) may run on its own.
    async fn arm(&mut self, alone_ok: bool) -> Result<()> {
        if !D::SAVEPOINT_HEALS
            && let Some(e) = &self.poisoned
        {
            return Err(Error::TransactionAborted {
                operation: "sql statement",
                cause: Some(match e {
                    Error::DeadlineExceeded { .. } => {
                        "an earlier statement was cancelled by the deadline".into()
                    }
                    other => other.kind().into(),
                }),
            });
        }
        // A read of a `begin_with_first_read` transaction takes `BEGIN` with it
        // (`led_by_begin`), after the deadline is armed on the connection below.
        if !(self.merge_begin && alone_ok) {
            self.begin_if_needed(alone_ok).await?;
            if self.begin_later.is_some() {
                // Runs on its own, without a deadline (a deadline begins the transaction).
                return Ok(());
            }
        }
        let deadline = self.deadline;
        let conn = self
            .conn
            .as_deref_mut()
            .ok_or(Error::Closed("sql transaction"))?;
        match D::arm(conn, &mut self.state, deadline).await {
            Ok(()) => Ok(()),
            Err(e) if D::SAVEPOINT_HEALS => Err(self.note(e)),
            Err(e) => Err(e),
        }
    }

    /// Remembers that the transaction cannot commit (see `poisoned`).
    fn note(&mut self, e: Error) -> Error {
        if self.poisoned.is_none() {
            self.poisoned = Some(at_commit(&e));
        }
        e
    }

    /// Maps a failed statement's error, poisoning the transaction when the dialect says so.
    pub fn failed(&mut self, e: sqlx::Error, op: &'static str, kind: Kind) -> Error {
        // A statement that ran on its own (no transaction yet) aborted nothing.
        let poisons = self.begin_later.is_none() && D::poisons(&e, kind != Kind::Read);
        let err = if matches!(kind, Kind::Event | Kind::EventRead) && D::duplicate_event_id(&e) {
            Error::AlreadyExists {
                entity: "event",
                id: "an event id of this append (in another stream)".into(),
            }
        } else {
            D::map(e, op)
        };
        if poisons { self.note(err) } else { err }
    }

    /// Arms the deadline, records the query text if asked, and binds the values.
    async fn prepare(&mut self, b: Built, kind: Kind) -> Result<(Arc<str>, ArgsOf<D>)> {
        self.arm(kind.reads()).await?;
        if self.record_sql {
            tracing::Span::current().record("db.query.text", &*b.sql);
        }
        let args = D::bind(b.values)?;
        Ok((self.led_by_begin(b.sql), args))
    }

    /// Runs a statement with the deadline armed.
    pub async fn execute_with(
        &mut self,
        sql: Arc<str>,
        args: ArgsOf<D>,
        op: &'static str,
        kind: Kind,
    ) -> Result<QueryResultOf<D>> {
        self.arm(false).await?;
        self.execute_unarmed(sql, args, op, kind).await
    }

    /// Runs a query with the deadline armed and returns its rows.
    pub async fn fetch_with(
        &mut self,
        sql: Arc<str>,
        args: ArgsOf<D>,
        op: &'static str,
        kind: Kind,
    ) -> Result<Vec<RowOf<D>>> {
        self.fetch_planned(sql, args, op, kind, true).await
    }

    /// [`SqlTx::fetch_with`], choosing whether the driver keeps the prepared statement
    /// (`false`: planned per execution, for statements whose best plan depends on the
    /// values, e.g. `= ANY($1)` over a table that grows).
    pub async fn fetch_planned(
        &mut self,
        sql: Arc<str>,
        args: ArgsOf<D>,
        op: &'static str,
        kind: Kind,
        persistent: bool,
    ) -> Result<Vec<RowOf<D>>> {
        self.arm(kind.reads()).await?;
        let sql = self.led_by_begin(sql);
        self.fetch_unarmed(sql, args, op, kind, persistent).await
    }

    async fn fetch_unarmed(
        &mut self,
        sql: Arc<str>,
        args: ArgsOf<D>,
        op: &'static str,
        kind: Kind,
        persistent: bool,
    ) -> Result<Vec<RowOf<D>>> {
        let r = D::executor(self.conn()?)
            .fetch_all(sqlx::query_with(AssertSqlSafe(sql), args).persistent(persistent))
            .await;
        r.map_err(|e| self.failed(e, op, kind))
    }

    /// Runs a compiled statement; returns the number of rows affected.
    pub async fn execute(&mut self, b: Built, op: &'static str, kind: Kind) -> Result<u64> {
        let (sql, args) = self.prepare(b, Kind::Write).await?;
        let r = self.execute_unarmed(sql, args, op, kind).await?;
        Ok(D::rows_affected(&r))
    }

    async fn execute_unarmed(
        &mut self,
        sql: Arc<str>,
        args: ArgsOf<D>,
        op: &'static str,
        kind: Kind,
    ) -> Result<QueryResultOf<D>> {
        let r = D::executor(self.conn()?)
            .execute(sqlx::query_with(AssertSqlSafe(sql), args))
            .await;
        r.map_err(|e| self.failed(e, op, kind))
    }

    /// Runs a compiled query and returns its rows.
    pub async fn fetch(&mut self, b: Built, op: &'static str, kind: Kind) -> Result<Vec<RowOf<D>>> {
        let (sql, args) = self.prepare(b, kind).await?;
        self.fetch_unarmed(sql, args, op, kind, true).await
    }

    /// Runs a compiled query whose first column of the first row is an integer (`None`: no
    /// row, or `NULL`).
    pub async fn fetch_int(
        &mut self,
        b: Built,
        op: &'static str,
        kind: Kind,
    ) -> Result<Option<i64>> {
        use crate::dialect::SqlRow;
        let rows = self.fetch(b, op, kind).await?;
        match rows.first() {
            None => Ok(None),
            Some(r) => SqlRow::<D>::int(r, 0).map_err(|e| D::map(e, op)),
        }
    }

    /// Runs a constant statement (transaction control with a savepoint name larder
    /// generated, never caller input) as a simple query.
    async fn control(&mut self, sql: String, op: &'static str, armed: bool) -> Result<()> {
        debug_assert!(
            sql.rsplit(' ')
                .next()
                .is_some_and(larder_core::entity::is_safe_identifier)
        );
        if armed {
            self.arm(false).await?;
        } else if !D::SAVEPOINT_HEALS && self.poisoned.is_some() {
            // Nothing to roll back to: the database ended the transaction by itself.
            self.arm(false).await?;
        } else {
            // A savepoint needs the transaction.
            self.begin_if_needed(false).await?;
        }
        let r = D::executor(self.conn()?)
            .execute(sqlx::raw_sql(AssertSqlSafe(sql)))
            .await;
        match r {
            Ok(_) => Ok(()),
            Err(e) => Err(self.failed(e, op, Kind::Write)),
        }
    }

    /// After a versioned write touched no row: `NotFound`, or `Conflict` naming the
    /// version actually stored.
    async fn write_failed(
        &mut self,
        def: &EntityDef,
        id: &Value,
        expected: u64,
        op: &'static str,
    ) -> Error {
        match self
            .fetch_int(compile::version_of(def, id, D::DIALECT), op, Kind::Read)
            .await
        {
            Err(e) => on_entity::<D>(def, e),
            Ok(actual) => def.stale_write(id, expected, actual.and_then(|v| u64::try_from(v).ok())),
        }
    }

    /// Ends the transaction's use of the connection: disarms it and hands it out.
    fn take_conn(&mut self) -> Option<PoolConnection<D::Db>> {
        D::disarm(&mut self.state);
        self.conn.take()
    }

    /// Ends a transaction that never began: the connection goes back to the pool as it is
    /// (nothing to commit or roll back). `false` if the transaction had begun.
    fn end_unbegun(&mut self) -> bool {
        if self.begin_later.is_none() {
            return false;
        }
        drop(self.take_conn());
        true
    }
}

/// Maps the error of a repository statement on `def`'s table (see [`SqlDialect::missing`]).
fn on_entity<D: SqlDialect>(def: &EntityDef, e: Error) -> Error {
    match D::missing(&e) {
        Some(Missing::Table) => Error::NotRegistered {
            entity: def.name,
            table: def.table.to_owned(),
        },
        Some(Missing::Column(said)) => Error::SchemaMismatch {
            entity: def.name,
            table: def.table.to_owned(),
            differences: format!(
                "a column the entity uses is missing ({said}); `store.register::<T>()` lists every difference"
            ),
        },
        None => e,
    }
}

impl<D: SqlDialect> Drop for SqlTx<D> {
    fn drop(&mut self) {
        // Dropped without commit or rollback (an early return, a panic, a future cancelled
        // mid-statement): roll back before the connection can serve anyone else. A task
        // holds the connection (and the dialect's state, e.g. SQLite's write permit) until
        // the database answered; without a runtime to run it, the connection is closed
        // (the database then rolls back).
        if self.end_unbegun() {
            return;
        }
        if let Some(mut conn) = self.take_conn() {
            let state = std::mem::take(&mut self.state);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let _ = roll_back::<D>(conn).await;
                        drop(state);
                    });
                }
                Err(_) => conn.close_on_drop(),
            }
        }
    }
}

impl<D: LogDialect> Transaction for SqlTx<D> {
    fn set_deadline(&mut self, deadline: Option<Deadline>) {
        self.deadline = deadline;
    }

    fn insert<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = compile::insert(def, record, D::DIALECT);
            let n = self.execute(b, "repository.insert", Kind::Write).await;
            if n.map_err(|e| on_entity::<D>(def, e))? == 0 {
                return Err(Error::AlreadyExists {
                    entity: def.name,
                    id: record.id.display_id(),
                });
            }
            Ok(())
        })
    }

    fn update<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = compile::update(def, record, expected, D::DIALECT);
            let n = self.execute(b, "repository.update", Kind::Write).await;
            if n.map_err(|e| on_entity::<D>(def, e))? == 0 {
                return Err(self
                    .write_failed(def, &record.id, expected, "repository.update")
                    .await);
            }
            Ok(())
        })
    }

    fn delete<'a>(
        &'a mut self,
        def: &'a EntityDef,
        id: &'a Value,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let b = compile::delete(def, id, expected, D::DIALECT);
            let n = self.execute(b, "repository.delete", Kind::Write).await;
            if n.map_err(|e| on_entity::<D>(def, e))? == 0 {
                return Err(self
                    .write_failed(def, id, expected, "repository.delete")
                    .await);
            }
            Ok(())
        })
    }

    fn get_many<'a>(
        &'a mut self,
        def: &'a EntityDef,
        ids: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            if ids.is_empty() {
                return Ok(Vec::new());
            }
            let b = compile::get_many(def, ids, D::DIALECT);
            let rows = self.fetch(b, "repository.get", Kind::Read).await;
            let rows = rows.map_err(|e| on_entity::<D>(def, e))?;
            rows.iter()
                .map(|r| decode_record::<D>(def, r, Shape::Full))
                .collect()
        })
    }

    fn count<'a>(&'a mut self, def: &'a EntityDef, filter: &'a Pred) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let b = compile::count(def, filter, D::DIALECT)?;
            let n = self.fetch_int(b, "repository.count", Kind::Read).await;
            let n = n.map_err(|e| on_entity::<D>(def, e))?;
            Ok(n.and_then(|n| u64::try_from(n).ok()).unwrap_or(0))
        })
    }

    fn select<'a>(
        &'a mut self,
        def: &'a EntityDef,
        plan: &'a Select,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            let b = compile::select(def, plan, D::DIALECT)?;
            let rows = self.fetch(b, "repository.find", Kind::Read).await;
            let rows = rows.map_err(|e| on_entity::<D>(def, e))?;
            rows.iter()
                .map(|r| decode_record::<D>(def, r, Shape::Full))
                .collect()
        })
    }

    fn stream<'a>(&'a mut self, def: &'a EntityDef, plan: Select) -> BoxStream<'a, Result<Record>> {
        let shape = Shape::for_stream(def);
        let b = match compile::select_shaped(def, &plan, D::DIALECT, shape) {
            Ok(b) => b,
            Err(e) => return futures_util::stream::once(async move { Err(e) }).boxed(),
        };
        let start = async move {
            let prepared = self.prepare(b, Kind::Read).await;
            match (prepared, self.conn.as_deref_mut()) {
                (Err(e), _) => futures_util::stream::once(async move { Err(e) }).boxed(),
                (Ok(_), None) => {
                    futures_util::stream::once(async { Err(Error::Closed("sql transaction")) })
                        .boxed()
                }
                (Ok((sql, args)), Some(conn)) => D::executor(conn)
                    .fetch(sqlx::query_with(AssertSqlSafe(sql), args))
                    .map(move |r| {
                        r.map_err(|e| on_entity::<D>(def, D::map(e, "repository.stream")))
                            .and_then(|row| decode_record::<D>(def, &row, shape))
                    })
                    .boxed(),
            }
        };
        Box::pin(futures_util::stream::once(start).flatten())
    }

    fn savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.control(format!("SAVEPOINT {name}"), "uow.savepoint", true)
                .await?;
            if self.poisoned.is_none() {
                self.healthy_savepoints.push(name.to_owned());
            }
            Ok(())
        })
    }

    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.control(
                format!("RELEASE SAVEPOINT {name}"),
                "uow.release_savepoint",
                true,
            )
            .await?;
            if let Some(i) = self.healthy_savepoints.iter().rposition(|n| n == name) {
                self.healthy_savepoints.truncate(i);
            }
            Ok(())
        })
    }

    fn rollback_to_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Not armed: in an aborted transaction every statement but a rollback fails,
            // and this one is how the transaction recovers.
            self.control(
                format!("ROLLBACK TO SAVEPOINT {name}"),
                "uow.rollback_to_savepoint",
                false,
            )
            .await?;
            if let Some(i) = self.healthy_savepoints.iter().rposition(|n| n == name) {
                self.healthy_savepoints.truncate(i + 1);
                if D::SAVEPOINT_HEALS {
                    self.poisoned = None;
                }
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if self.end_unbegun() {
                return Ok(());
            }
            if let Some(e) = self.poisoned.take() {
                // A statement failed in a way that leaves nothing to commit.
                if let Some(conn) = self.take_conn() {
                    let _ = roll_back::<D>(conn).await;
                }
                return Err(e);
            }
            if let Err(e) = self.arm(false).await {
                if let Some(conn) = self.take_conn() {
                    let _ = roll_back::<D>(conn).await;
                }
                return Err(match e {
                    Error::TransactionAborted { .. } => Error::TransactionAborted {
                        operation: "uow.commit",
                        cause: None,
                    },
                    other => other,
                });
            }
            let conn = self.take_conn().ok_or(Error::Closed("sql transaction"))?;
            // The dialect's state (a write permit) is released after the commit answered.
            D::commit(conn).await
        })
    }

    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if self.end_unbegun() {
                return Ok(());
            }
            // Rollback is not bounded by the deadline: it must always get through.
            let conn = self.take_conn().ok_or(Error::Closed("sql transaction"))?;
            roll_back::<D>(conn)
                .await
                .map_err(|e| D::map(e, "uow.rollback"))
        })
    }

    fn outbox(&mut self) -> Option<&mut dyn larder_core::outbox::OutboxTransaction> {
        Some(self)
    }

    fn events(&mut self) -> Option<&mut dyn EventTransaction> {
        Some(self)
    }

    fn blob_refs(&mut self) -> Option<&mut dyn larder_core::blob::BlobRefTransaction> {
        Some(self)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// The transaction of dialect `D` inside a unit of work (`None`: another backend, or the
/// unit of work has finished).
pub fn sql_tx<D: LogDialect>(uow: &mut Uow) -> Option<&mut SqlTx<D>> {
    uow.backend_transaction()?
        .as_any_mut()
        .downcast_mut::<SqlTx<D>>()
}

/// The connection of a unit of work on dialect `D` with its deadline armed, for raw SQL in
/// the same transaction (the backends' `postgres_bounded` / `sqlite_bounded`).
pub fn bounded_connection<'u, D: LogDialect>(
    uow: &'u mut Uow,
    operation: &'static str,
) -> BoxFuture<'u, Result<&'u mut Conn<D>>> {
    Box::pin(async move {
        let deadline = uow.deadline();
        let backend = uow.store().backend_name();
        let tx = sql_tx::<D>(uow).ok_or(Error::Unsupported { operation, backend })?;
        tx.deadline = deadline;
        tx.bounded_connection().await
    })
}
