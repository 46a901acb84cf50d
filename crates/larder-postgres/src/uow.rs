//! One PostgreSQL transaction: larder's storage primitives, deadlines by statement_timeout.

use futures_util::StreamExt;
use larder_core::backend::{BoxFuture, BoxStream};
use larder_core::deadline::CLIENT_GRACE;
use larder_core::{Deadline, EntityDef, Error, Record, Result, Uow};
use larder_sql::{Built, Dialect, Shape, SqlDriver};
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgConnection, Postgres};
use sqlx::{AssertSqlSafe, Row};

use crate::error::map;
use crate::row::{bind, record};

/// A larder transaction on PostgreSQL (the [`SqlDriver`] of the PostgreSQL backend).
/// Obtain the underlying connection from a unit of work with [`PgUowExt::postgres`].
pub struct PgTransaction {
    /// The pooled connection, inside the transaction larder opened on it with `BEGIN`.
    /// larder runs `BEGIN`/`COMMIT`/`ROLLBACK` itself (not through `sqlx::Transaction`):
    /// sqlx decides a commit's success without looking at the server's answer, and its
    /// bookkeeping would need an extra empty transaction per commit (see `commit`). `None`
    /// once the transaction ended; `Drop` rolls back a transaction that did not.
    tx: Option<PoolConnection<Postgres>>,
    deadline: Option<Deadline>,
    /// The `statement_timeout` (ms) currently set for this transaction, if any.
    armed_ms: Option<u64>,
    /// Set when a statement failed: PostgreSQL has aborted the transaction, and a later
    /// `COMMIT` would silently roll back, so `commit` must fail instead.
    aborted: Option<Error>,
    /// Savepoints created while the transaction was healthy: rolling back to one of them
    /// clears `aborted` (that is how PostgreSQL recovers from an error inside a scope).
    healthy_savepoints: Vec<String>,
    record_sql: bool,
}

impl std::fmt::Debug for PgTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTransaction")
            .field("open", &self.tx.is_some())
            .field("deadline", &self.deadline)
            .field("aborted", &self.aborted.is_some())
            .finish_non_exhaustive()
    }
}

impl PgTransaction {
    pub(crate) fn new(tx: PoolConnection<Postgres>, record_sql: bool) -> Self {
        PgTransaction {
            tx: Some(tx),
            deadline: None,
            armed_ms: None,
            aborted: None,
            healthy_savepoints: Vec::new(),
            record_sql,
        }
    }

    pub(crate) fn conn(&mut self) -> Result<&mut PgConnection> {
        self.tx
            .as_deref_mut()
            .ok_or(Error::Closed("postgresql transaction"))
    }

    /// The sqlx connection of this transaction (raw SQL in the same transaction).
    pub fn connection(&mut self) -> Option<&mut PgConnection> {
        self.tx.as_deref_mut()
    }

    /// Records that `BEGIN` already set `statement_timeout` to `ms` (see the backend's
    /// `begin`: one round trip for both).
    pub(crate) fn armed_at_begin(mut self, ms: Option<u64>) -> Self {
        self.armed_ms = ms;
        self
    }

    /// Makes `statement_timeout` (transaction-local) fit the deadline, with a round trip
    /// only when the value in force does not: a statement starting now may run the armed
    /// time, which must be at least the time left (or it would be cancelled early) and at
    /// most the time left plus the client grace (or it would outlive the deadline). So a
    /// unit of work arms once at `BEGIN` and again at most every `CLIENT_GRACE` of elapsed
    /// time, or when a per-call deadline changes it; lifting the deadline resets it.
    pub(crate) async fn arm(&mut self) -> Result<()> {
        let ms = match (self.deadline, self.armed_ms) {
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
        let conn = self.conn()?;
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(ms.to_string())
            .execute(conn)
            .await
            .map_err(|e| map(e, "uow.deadline"))?;
        self.armed_ms = (ms != 0).then_some(ms);
        Ok(())
    }

    /// Remembers that the transaction is aborted (see the `aborted` field).
    pub(crate) fn note(&mut self, e: Error) -> Error {
        if self.aborted.is_none() {
            self.aborted = Some(match &e {
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
            });
        }
        e
    }

    /// Arms the deadline, records the query text if asked, and binds the values.
    async fn prepare(&mut self, b: Built) -> Result<(std::sync::Arc<str>, PgArguments)> {
        if let Err(e) = self.arm().await {
            return Err(self.note(e));
        }
        if self.record_sql {
            tracing::Span::current().record("db.query.text", &*b.sql);
        }
        Ok((b.sql, bind(b.values)?))
    }

    async fn raw(&mut self, sql: String, op: &'static str) -> Result<()> {
        // `sql` is a constant statement with a savepoint name generated by larder-core
        // (`larder_sp_<n>`), never caller input.
        debug_assert!(
            sql.rsplit(' ')
                .next()
                .is_some_and(larder_core::entity::is_safe_identifier)
        );
        if let Err(e) = self.arm().await {
            return Err(self.note(e));
        }
        match sqlx::query(AssertSqlSafe(sql)).execute(self.conn()?).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.note(map(e, op))),
        }
    }
}

/// Whether `e` is a database error with this SQLSTATE.
fn has_sqlstate(e: &sqlx::Error, code: &str) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some(code))
}

/// An error found while arming the commit's deadline: in an aborted transaction every
/// statement fails with 25P02, which the error map reports as `TransactionAborted`.
fn aborted_at_commit(e: Error, cause: Option<String>) -> Error {
    match e {
        Error::TransactionAborted { .. } => Error::TransactionAborted {
            operation: "uow.commit",
            cause,
        },
        other => other,
    }
}

impl SqlDriver for PgTransaction {
    const DIALECT: Dialect = Dialect::Postgres;

    fn missing(e: &Error) -> Option<larder_sql::Missing> {
        crate::error::missing(e)
    }

    fn events(&mut self) -> Option<&mut dyn larder_core::events::EventTransaction> {
        Some(self)
    }

    fn set_deadline(&mut self, deadline: Option<Deadline>) {
        self.deadline = deadline;
    }

    fn execute<'a>(&'a mut self, b: Built, op: &'static str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let (sql, args) = self.prepare(b).await?;
            match sqlx::query_with(AssertSqlSafe(sql), args)
                .execute(self.conn()?)
                .await
            {
                Ok(r) => Ok(r.rows_affected()),
                Err(e) => Err(self.note(map(e, op))),
            }
        })
    }

    fn fetch_records<'a>(
        &'a mut self,
        def: &'a EntityDef,
        b: Built,
        op: &'static str,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            let (sql, args) = self.prepare(b).await?;
            match sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(self.conn()?)
                .await
            {
                Ok(rows) => rows.iter().map(|r| record(def, r, Shape::Full)).collect(),
                Err(e) => Err(self.note(map(e, op))),
            }
        })
    }

    fn fetch_i64<'a>(
        &'a mut self,
        b: Built,
        op: &'static str,
    ) -> BoxFuture<'a, Result<Option<i64>>> {
        Box::pin(async move {
            let (sql, args) = self.prepare(b).await?;
            match sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_optional(self.conn()?)
                .await
            {
                Ok(row) => row
                    .map(|r| r.try_get::<i64, _>(0).map_err(|e| map(e, op)))
                    .transpose(),
                Err(e) => Err(self.note(map(e, op))),
            }
        })
    }

    fn stream_records<'a>(
        &'a mut self,
        def: &'a EntityDef,
        b: Built,
        shape: Shape,
    ) -> BoxStream<'a, Result<Record>> {
        let start = async move {
            let prepared = self.prepare(b).await;
            match (prepared, self.tx.as_deref_mut()) {
                (Err(e), _) => futures_util::stream::once(async move { Err(e) }).boxed(),
                (Ok(_), None) => futures_util::stream::once(async {
                    Err(Error::Closed("postgresql transaction"))
                })
                .boxed(),
                (Ok((sql, args)), Some(conn)) => sqlx::query_with(AssertSqlSafe(sql), args)
                    .fetch(conn)
                    .map(move |r| {
                        r.map_err(|e| map(e, "repository.stream"))
                            .and_then(|row| record(def, &row, shape))
                    })
                    .boxed(),
            }
        };
        Box::pin(futures_util::stream::once(start).flatten())
    }

    fn savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.raw(format!("SAVEPOINT {name}"), "uow.savepoint")
                .await?;
            if self.aborted.is_none() {
                self.healthy_savepoints.push(name.to_owned());
            }
            Ok(())
        })
    }

    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.raw(format!("RELEASE SAVEPOINT {name}"), "uow.release_savepoint")
                .await?;
            if let Some(i) = self.healthy_savepoints.iter().rposition(|n| n == name) {
                self.healthy_savepoints.truncate(i);
            }
            Ok(())
        })
    }

    fn rollback_to_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // No `arm()` first: in an aborted transaction every statement but ROLLBACK
            // fails, and this one is how the transaction recovers.
            debug_assert!(larder_core::entity::is_safe_identifier(name));
            let sql = format!("ROLLBACK TO SAVEPOINT {name}");
            sqlx::query(AssertSqlSafe(sql))
                .execute(self.conn()?)
                .await
                .map_err(|e| map(e, "uow.rollback_to_savepoint"))?;
            if let Some(i) = self.healthy_savepoints.iter().rposition(|n| n == name) {
                self.healthy_savepoints.truncate(i + 1);
                self.aborted = None;
            }
            Ok(())
        })
    }

    fn commit(mut self) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if let Some(e) = self.aborted.take() {
                // A statement of ours failed: the server has aborted the transaction.
                if let Some(conn) = self.tx.take() {
                    let _ = roll_back(conn).await;
                }
                return Err(e);
            }
            self.arm().await.map_err(|e| aborted_at_commit(e, None))?;
            let mut conn = self
                .tx
                .take()
                .ok_or(Error::Closed("postgresql transaction"))?;
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
                    let _ = roll_back(conn).await;
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
        })
    }

    fn rollback(mut self) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            // Rollback is not bounded by the deadline: it must always get through (and
            // ROLLBACK ends the transaction-local statement_timeout with it).
            let conn = self
                .tx
                .take()
                .ok_or(Error::Closed("postgresql transaction"))?;
            roll_back(conn).await.map_err(|e| map(e, "uow.rollback"))
        })
    }
}

/// Rolls back the transaction on `conn`; a connection that cannot is closed rather than
/// returned to the pool inside a transaction.
async fn roll_back(mut conn: PoolConnection<Postgres>) -> Result<(), sqlx::Error> {
    let r = sqlx::raw_sql(AssertSqlSafe("ROLLBACK"))
        .execute(&mut *conn)
        .await;
    if r.is_err() {
        conn.close_on_drop();
    }
    r.map(drop)
}

impl Drop for PgTransaction {
    fn drop(&mut self) {
        // Dropped without commit or rollback (an early return, a panic, a future cancelled
        // mid-statement): roll back before the connection can serve anyone else. The
        // connection is held by the rollback task until the server answered, so it never
        // goes back to the pool inside the transaction; without a runtime to run the task,
        // the connection is closed (the server then rolls back).
        if let Some(mut conn) = self.tx.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let _ = roll_back(conn).await;
                    });
                }
                Err(_) => conn.close_on_drop(),
            }
        }
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
    /// The connection, or `None` if the unit of work is not on PostgreSQL or has finished.
    /// Statements run on it are not bounded by the unit of work's deadline.
    fn postgres(&mut self) -> Option<&mut PgConnection>;

    /// The connection with the unit of work's deadline armed (`statement_timeout`), so raw
    /// statements are cancelled by the database when it passes; map their errors with
    /// [`classify`](crate::classify) to get [`Error::DeadlineExceeded`].
    fn postgres_bounded(&mut self) -> BoxFuture<'_, Result<&mut PgConnection>>;
}

fn driver(uow: &mut Uow) -> Option<&mut PgTransaction> {
    uow.backend_transaction()?
        .as_any_mut()
        .downcast_mut::<PgTransaction>()
}

impl PgUowExt for Uow {
    fn postgres(&mut self) -> Option<&mut PgConnection> {
        driver(self)?.connection()
    }

    fn postgres_bounded(&mut self) -> BoxFuture<'_, Result<&mut PgConnection>> {
        Box::pin(async move {
            let deadline = self.deadline();
            let backend = self.store().backend_name();
            let tx = driver(self).ok_or(Error::Unsupported {
                operation: "raw postgres access",
                backend,
            })?;
            tx.set_deadline(deadline);
            tx.arm().await?;
            tx.conn()
        })
    }
}

/// Classifies a sqlx error from raw SQL run through [`PgUowExt`] into larder's vocabulary
/// (deadline, transient, …), as larder's own calls do.
pub fn classify(e: sqlx::Error) -> Error {
    map(e, "raw")
}
