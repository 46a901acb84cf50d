//! One PostgreSQL transaction: larder's storage primitives, deadlines by statement_timeout.

use std::any::Any;

use futures_util::StreamExt;
use larder_core::backend::{BoxFuture, BoxStream, Transaction};
use larder_core::query::Select;
use larder_core::spec::Pred;
use larder_core::{Deadline, EntityDef, Error, Record, Result, Uow, Value};
use larder_sql::{Built, Dialect, compile};
use sqlx::postgres::{PgConnection, PgRow, Postgres};
use sqlx::{AssertSqlSafe, Row};

use crate::error::map;
use crate::row::{bind, record};

const D: Dialect = Dialect::Postgres;

/// A larder transaction on PostgreSQL. Obtain the underlying connection from a unit of work
/// with [`PgUowExt::postgres`].
pub struct PgTransaction {
    tx: Option<sqlx::Transaction<'static, Postgres>>,
    deadline: Option<Deadline>,
    /// Whether `statement_timeout` is currently set for this transaction.
    timeout_armed: bool,
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
            .finish_non_exhaustive()
    }
}

impl PgTransaction {
    pub(crate) fn new(tx: sqlx::Transaction<'static, Postgres>, record_sql: bool) -> Self {
        PgTransaction {
            tx: Some(tx),
            deadline: None,
            timeout_armed: false,
            aborted: None,
            healthy_savepoints: Vec::new(),
            record_sql,
        }
    }

    fn conn(&mut self) -> Result<&mut PgConnection> {
        self.tx
            .as_deref_mut()
            .ok_or(Error::Closed("postgresql transaction"))
    }

    /// The sqlx connection of this transaction (raw SQL in the same transaction).
    pub fn connection(&mut self) -> Option<&mut PgConnection> {
        self.tx.as_deref_mut()
    }

    /// Sets `statement_timeout` (transaction-local) to the time left before the deadline,
    /// or resets it when the deadline was lifted. One round trip, only when a deadline is
    /// in play.
    async fn arm(&mut self) -> Result<()> {
        let ms = match (self.deadline, self.timeout_armed) {
            (None, false) => return Ok(()),
            (None, true) => 0,
            (Some(d), _) => {
                let left = d.remaining().as_millis();
                if left == 0 {
                    return Err(Error::DeadlineExceeded {
                        operation: "uow.deadline",
                    });
                }
                u64::try_from(left).unwrap_or(u64::MAX)
            }
        };
        let conn = self.conn()?;
        sqlx::query("SELECT set_config('statement_timeout', $1, true)")
            .bind(ms.to_string())
            .execute(conn)
            .await
            .map_err(|e| map(e, "uow.deadline"))?;
        self.timeout_armed = ms != 0;
        Ok(())
    }

    /// Remembers that the transaction is aborted (see the `aborted` field).
    fn note(&mut self, e: Error) -> Error {
        if self.aborted.is_none() {
            self.aborted = Some(match &e {
                Error::DeadlineExceeded { .. } => Error::DeadlineExceeded {
                    operation: "uow.commit",
                },
                other => Error::backend(
                    crate::error::BACKEND,
                    format!(
                        "the transaction was aborted by an earlier error ({}) and has been rolled back",
                        other.kind()
                    ),
                ),
            });
        }
        e
    }

    fn trace(&self, b: &Built) {
        if self.record_sql {
            tracing::Span::current().record("db.query.text", b.sql.as_str());
        }
    }

    async fn execute(&mut self, b: Built, op: &'static str) -> Result<u64> {
        if let Err(e) = self.arm().await {
            return Err(self.note(e));
        }
        self.trace(&b);
        let args = bind(b.values)?;
        let conn = self.conn()?;
        match sqlx::query_with(AssertSqlSafe(b.sql), args)
            .execute(conn)
            .await
        {
            Ok(r) => Ok(r.rows_affected()),
            Err(e) => Err(self.note(map(e, op))),
        }
    }

    async fn fetch(&mut self, b: Built, op: &'static str) -> Result<Vec<PgRow>> {
        if let Err(e) = self.arm().await {
            return Err(self.note(e));
        }
        self.trace(&b);
        let args = bind(b.values)?;
        let conn = self.conn()?;
        match sqlx::query_with(AssertSqlSafe(b.sql), args)
            .fetch_all(conn)
            .await
        {
            Ok(rows) => Ok(rows),
            Err(e) => Err(self.note(map(e, op))),
        }
    }

    /// After a versioned write touched no row: `NotFound` or `Conflict` with the version
    /// actually stored.
    async fn write_failed(
        &mut self,
        def: &EntityDef,
        id: &Value,
        expected: u64,
        op: &'static str,
    ) -> Error {
        let rows = match self.fetch(compile::version_of(def, id, D), op).await {
            Ok(r) => r,
            Err(e) => return e,
        };
        match rows.first().map(|r| r.try_get::<i64, _>(0)) {
            None => Error::NotFound {
                entity: def.name,
                id: id.display_id(),
            },
            Some(Ok(v)) => Error::Conflict {
                entity: def.name,
                id: id.display_id(),
                expected,
                actual: u64::try_from(v).ok(),
            },
            Some(Err(e)) => map(e, op),
        }
    }
}

impl Transaction for PgTransaction {
    fn set_deadline(&mut self, deadline: Option<Deadline>) {
        self.deadline = deadline;
    }

    fn insert<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let n = self
                .execute(compile::insert(def, record, D), "repository.insert")
                .await?;
            if n == 0 {
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
            let n = self
                .execute(
                    compile::update(def, record, expected, D),
                    "repository.update",
                )
                .await?;
            if n == 0 {
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
            let n = self
                .execute(compile::delete(def, id, expected, D), "repository.delete")
                .await?;
            if n == 0 {
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
            let rows = self
                .fetch(compile::get_many(def, ids, D), "repository.get")
                .await?;
            rows.iter().map(|r| record(def, r)).collect()
        })
    }

    fn count<'a>(&'a mut self, def: &'a EntityDef, filter: &'a Pred) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let rows = self
                .fetch(compile::count(def, filter, D)?, "repository.count")
                .await?;
            let n: i64 = rows
                .first()
                .map(|r| r.try_get(0))
                .transpose()
                .map_err(|e| map(e, "repository.count"))?
                .unwrap_or(0);
            Ok(u64::try_from(n).unwrap_or(0))
        })
    }

    fn select<'a>(
        &'a mut self,
        def: &'a EntityDef,
        plan: &'a Select,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            let rows = self
                .fetch(compile::select(def, plan, D)?, "repository.find")
                .await?;
            rows.iter().map(|r| record(def, r)).collect()
        })
    }

    fn stream<'a>(&'a mut self, def: &'a EntityDef, plan: Select) -> BoxStream<'a, Result<Record>> {
        let start = async move {
            let prepared = async {
                let b = compile::select(def, &plan, D)?;
                if let Err(e) = self.arm().await {
                    return Err(self.note(e));
                }
                self.trace(&b);
                Ok::<_, Error>((b.sql, bind(b.values)?))
            }
            .await;
            match prepared {
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
                Ok((sql, args)) => match self.tx.as_deref_mut() {
                    None => futures_util::stream::once(async {
                        Err(Error::Closed("postgresql transaction"))
                    })
                    .boxed(),
                    Some(conn) => sqlx::query_with(AssertSqlSafe(sql), args)
                        .fetch(conn)
                        .map(move |r| {
                            r.map_err(|e| map(e, "repository.stream"))
                                .and_then(|row| record(def, &row))
                        })
                        .boxed(),
                },
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
            let sql = format!("ROLLBACK TO SAVEPOINT {name}");
            debug_assert!(larder_core::entity::is_safe_identifier(name));
            let conn = self.conn()?;
            sqlx::query(AssertSqlSafe(sql))
                .execute(conn)
                .await
                .map_err(|e| map(e, "uow.rollback_to_savepoint"))?;
            if let Some(i) = self.healthy_savepoints.iter().rposition(|n| n == name) {
                self.healthy_savepoints.truncate(i + 1);
                self.aborted = None;
            }
            Ok(())
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if let Some(e) = self.aborted.take() {
                // COMMIT of an aborted transaction "succeeds" as a ROLLBACK: refuse it.
                if let Some(tx) = self.tx.take() {
                    let _ = tx.rollback().await;
                }
                return Err(e);
            }
            self.arm().await?;
            let tx = self
                .tx
                .take()
                .ok_or(Error::Closed("postgresql transaction"))?;
            tx.commit().await.map_err(|e| map(e, "uow.commit"))
        })
    }

    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            // Rollback is not bounded by the deadline: it must always get through (and
            // ROLLBACK ends the transaction-local statement_timeout with it).
            let tx = self
                .tx
                .take()
                .ok_or(Error::Closed("postgresql transaction"))?;
            tx.rollback().await.map_err(|e| map(e, "uow.rollback"))
        })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl PgTransaction {
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
        let conn = self.conn()?;
        match sqlx::query(AssertSqlSafe(sql)).execute(conn).await {
            Ok(_) => Ok(()),
            Err(e) => Err(self.note(map(e, op))),
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

impl PgUowExt for Uow {
    fn postgres(&mut self) -> Option<&mut PgConnection> {
        self.backend_transaction()?
            .as_any_mut()
            .downcast_mut::<PgTransaction>()?
            .connection()
    }

    fn postgres_bounded(&mut self) -> BoxFuture<'_, Result<&mut PgConnection>> {
        Box::pin(async move {
            let deadline = self.deadline();
            let tx = self
                .backend_transaction()
                .and_then(|t| t.as_any_mut().downcast_mut::<PgTransaction>())
                .ok_or(Error::Unsupported {
                    operation: "raw postgres access",
                    backend: "this",
                })?;
            tx.set_deadline(deadline);
            tx.arm().await?;
            tx.conn()
        })
    }
}

/// Classifies a sqlx error from raw SQL run through [`PgUowExt`] into larder's
/// vocabulary (deadline, transient, …), as larder's own calls do.
pub fn classify(e: sqlx::Error) -> Error {
    map(e, "raw")
}
