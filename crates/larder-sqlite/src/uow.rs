//! One SQLite transaction: larder's storage primitives, deadlines by interrupt.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use larder_core::backend::{BoxFuture, BoxStream, Transaction};
use larder_core::query::Select;
use larder_core::spec::Pred;
use larder_core::{Deadline, EntityDef, Error, Record, Result, Uow, Value};
use larder_sql::{Built, Dialect, compile};
use sqlx::sqlite::{Sqlite, SqliteConnection, SqliteRow};
use sqlx::{AssertSqlSafe, Row};

use crate::error::map;
use crate::row::{bind, record};

const D: Dialect = Dialect::Sqlite;

/// A larder transaction on SQLite. Obtain the underlying connection from a unit of work
/// with [`SqliteUowExt::sqlite`].
pub struct SqliteTransaction {
    tx: Option<sqlx::Transaction<'static, Sqlite>>,
    deadline: Option<Deadline>,
    /// The installed progress handler reads its deadline from here (nanoseconds after
    /// `base`, 0 = none), so the deadline can change per call without reinstalling it.
    cell: Option<(Arc<AtomicU64>, std::time::Instant)>,
    record_sql: bool,
}

impl std::fmt::Debug for SqliteTransaction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteTransaction")
            .field("open", &self.tx.is_some())
            .field("deadline", &self.deadline)
            .finish_non_exhaustive()
    }
}

impl SqliteTransaction {
    pub(crate) fn new(tx: sqlx::Transaction<'static, Sqlite>, record_sql: bool) -> Self {
        SqliteTransaction {
            tx: Some(tx),
            deadline: None,
            cell: None,
            record_sql,
        }
    }

    fn conn(&mut self) -> Result<&mut SqliteConnection> {
        self.tx
            .as_deref_mut()
            .ok_or(Error::Closed("sqlite transaction"))
    }

    /// The sqlx connection of this transaction (raw SQL in the same transaction).
    pub fn connection(&mut self) -> Option<&mut SqliteConnection> {
        self.tx.as_deref_mut()
    }

    /// Points the connection's progress handler at the current deadline, installing the
    /// handler the first time a deadline is used in this transaction.
    async fn arm(&mut self) -> Result<()> {
        match (self.deadline, &self.cell) {
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
                let conn = self.conn()?;
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
                self.cell = Some((cell, base));
                Ok(())
            }
        }
    }

    fn trace(&self, b: &Built) {
        if self.record_sql {
            tracing::Span::current().record("db.query.text", b.sql.as_str());
        }
    }

    async fn execute(&mut self, b: Built, op: &'static str) -> Result<u64> {
        self.arm().await?;
        self.trace(&b);
        let args = bind(b.values)?;
        let conn = self.conn()?;
        let r = sqlx::query_with(AssertSqlSafe(b.sql), args)
            .execute(conn)
            .await
            .map_err(|e| map(e, op))?;
        Ok(r.rows_affected())
    }

    async fn fetch(&mut self, b: Built, op: &'static str) -> Result<Vec<SqliteRow>> {
        self.arm().await?;
        self.trace(&b);
        let args = bind(b.values)?;
        let conn = self.conn()?;
        sqlx::query_with(AssertSqlSafe(b.sql), args)
            .fetch_all(conn)
            .await
            .map_err(|e| map(e, op))
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

fn nanos_after(base: std::time::Instant, d: Deadline) -> u64 {
    let n = d
        .instant()
        .into_std()
        .saturating_duration_since(base)
        .as_nanos();
    u64::try_from(n).unwrap_or(u64::MAX).max(1)
}

impl Drop for SqliteTransaction {
    fn drop(&mut self) {
        // The connection goes back to the pool with our progress handler still installed:
        // disarm it so it can never interrupt the next user's statements.
        if let Some((cell, _)) = &self.cell {
            cell.store(0, Ordering::Relaxed);
        }
    }
}

impl Transaction for SqliteTransaction {
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
                self.arm().await?;
                self.trace(&b);
                Ok::<_, Error>((b.sql, bind(b.values)?))
            }
            .await;
            match prepared {
                Err(e) => futures_util::stream::once(async move { Err(e) }).boxed(),
                Ok((sql, args)) => match self.tx.as_deref_mut() {
                    None => futures_util::stream::once(async {
                        Err(Error::Closed("sqlite transaction"))
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
        Box::pin(async move { self.raw(format!("SAVEPOINT {name}"), "uow.savepoint").await })
    }

    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.raw(format!("RELEASE SAVEPOINT {name}"), "uow.release_savepoint")
                .await
        })
    }

    fn rollback_to_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.raw(
                format!("ROLLBACK TO SAVEPOINT {name}"),
                "uow.rollback_to_savepoint",
            )
            .await
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            self.arm().await?;
            let tx = self.tx.take().ok_or(Error::Closed("sqlite transaction"))?;
            tx.commit().await.map_err(|e| map(e, "uow.commit"))
        })
    }

    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            // Rollback is not bounded by the deadline: it must always get through.
            self.deadline = None;
            self.arm().await?;
            let tx = self.tx.take().ok_or(Error::Closed("sqlite transaction"))?;
            tx.rollback().await.map_err(|e| map(e, "uow.rollback"))
        })
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl SqliteTransaction {
    async fn raw(&mut self, sql: String, op: &'static str) -> Result<()> {
        // `sql` is a constant statement with a savepoint name generated by larder-core
        // (`larder_sp_<n>`), never caller input.
        debug_assert!(
            sql.rsplit(' ')
                .next()
                .is_some_and(larder_core::entity::is_safe_identifier)
        );
        self.arm().await?;
        let conn = self.conn()?;
        sqlx::query(AssertSqlSafe(sql))
            .execute(conn)
            .await
            .map_err(|e| map(e, op))?;
        Ok(())
    }
}

/// Raw access to the SQLite connection of a unit of work, for SQL that larder does not
/// generate, in the same transaction.
///
/// ```ignore
/// let conn = uow.sqlite_bounded().await?;           // deadline armed
/// let r = sqlx::query("SELECT 1").execute(conn).await.map_err(larder::sqlite::classify)?;
/// ```
pub trait SqliteUowExt {
    /// The connection, or `None` if the unit of work is not on SQLite or has finished.
    /// Statements run on it are not bounded by the unit of work's deadline.
    fn sqlite(&mut self) -> Option<&mut SqliteConnection>;

    /// The connection with the unit of work's deadline armed (the progress-handler interrupt), so raw
    /// statements are cancelled by the database when it passes; map their errors with
    /// [`classify`](crate::classify) to get [`Error::DeadlineExceeded`].
    fn sqlite_bounded(&mut self) -> BoxFuture<'_, Result<&mut SqliteConnection>>;
}

impl SqliteUowExt for Uow {
    fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        self.backend_transaction()?
            .as_any_mut()
            .downcast_mut::<SqliteTransaction>()?
            .connection()
    }

    fn sqlite_bounded(&mut self) -> BoxFuture<'_, Result<&mut SqliteConnection>> {
        Box::pin(async move {
            let deadline = self.deadline();
            let tx = self
                .backend_transaction()
                .and_then(|t| t.as_any_mut().downcast_mut::<SqliteTransaction>())
                .ok_or(Error::Unsupported {
                    operation: "raw sqlite access",
                    backend: "this",
                })?;
            tx.set_deadline(deadline);
            tx.arm().await?;
            tx.conn()
        })
    }
}

/// Classifies a sqlx error from raw SQL run through [`SqliteUowExt`] into larder's
/// vocabulary (deadline, transient, …), as larder's own calls do.
pub fn classify(e: sqlx::Error) -> Error {
    map(e, "raw")
}
