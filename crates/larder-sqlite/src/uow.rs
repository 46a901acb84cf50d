//! One SQLite transaction: larder's storage primitives, deadlines by interrupt.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::StreamExt;
use larder_core::backend::{BoxFuture, BoxStream};
use larder_core::{Deadline, EntityDef, Error, Record, Result, Uow};
use larder_sql::{Built, Dialect, Shape, SqlDriver};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteConnection};
use sqlx::{AssertSqlSafe, Row};

use crate::error::map;
use crate::row::{bind, record};

/// A larder transaction on SQLite (the [`SqlDriver`] of the SQLite backend). Obtain the
/// underlying connection from a unit of work with [`SqliteUowExt::sqlite`].
pub struct SqliteTransaction {
    /// The pooled connection, inside the transaction larder opened on it (`BEGIN
    /// IMMEDIATE` for writers). larder runs the transaction control itself, not through
    /// `sqlx::Transaction` (see `commit`); `Drop` rolls back a transaction that did not end.
    tx: Option<PoolConnection<Sqlite>>,
    deadline: Option<Deadline>,
    /// The installed progress handler reads its deadline from here (nanoseconds after
    /// `base`, 0 = none), so the deadline can change per call without reinstalling it.
    cell: Option<(Arc<AtomicU64>, std::time::Instant)>,
    record_sql: bool,
    /// Set when a write statement failed in a way after which SQLite may have rolled the
    /// whole transaction back by itself (interrupted by the deadline, disk full, I/O error,
    /// out of memory). Later statements would then run outside any transaction and commit
    /// one by one, so they are refused, and `commit` rolls back and fails.
    pub(crate) rolled_back: Option<Error>,
    /// The backend's write permit, held until the transaction ends (`None`: read-only).
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
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
    pub(crate) fn new(
        tx: PoolConnection<Sqlite>,
        record_sql: bool,
        permit: Option<tokio::sync::OwnedSemaphorePermit>,
    ) -> Self {
        SqliteTransaction {
            tx: Some(tx),
            deadline: None,
            cell: None,
            record_sql,
            rolled_back: None,
            permit,
        }
    }

    pub(crate) fn conn(&mut self) -> Result<&mut SqliteConnection> {
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
    pub(crate) async fn arm(&mut self) -> Result<()> {
        if let Some(e) = &self.rolled_back {
            return Err(match e {
                Error::DeadlineExceeded { .. } => Error::TransactionAborted {
                    operation: "sqlite statement",
                    cause: Some("an earlier statement was cancelled by the deadline".into()),
                },
                _ => Error::TransactionAborted {
                    operation: "sqlite statement",
                    cause: Some(e.kind().into()),
                },
            });
        }
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

    /// Maps the error of a write statement with `map`, remembering when SQLite may have
    /// rolled the transaction back with it (see `rolled_back`).
    pub(crate) fn write_failed(
        &mut self,
        e: sqlx::Error,
        op: &'static str,
        map: fn(sqlx::Error, &'static str) -> Error,
    ) -> Error {
        let code = match &e {
            sqlx::Error::Database(db) => db.code().and_then(|c| c.parse::<u32>().ok()),
            _ => None,
        };
        let err = map(e, op);
        // SQLITE_NOMEM 7, SQLITE_INTERRUPT 9, SQLITE_IOERR 10, SQLITE_CORRUPT 11,
        // SQLITE_FULL 13: "it might be necessary for SQLite to rollback and cancel the
        // entire transaction" (sqlite.org/lang_transaction.html).
        if code.is_some_and(|c| matches!(c & 0xff, 7 | 9 | 10 | 11 | 13))
            && self.rolled_back.is_none()
        {
            self.rolled_back = Some(match &err {
                Error::DeadlineExceeded { .. } => Error::DeadlineExceeded {
                    operation: "uow.commit",
                },
                _ => Error::TransactionAborted {
                    operation: "uow.commit",
                    cause: Some(err.kind().into()),
                },
            });
        }
        err
    }

    /// Arms the deadline, records the query text if asked, and binds the values.
    async fn prepare(
        &mut self,
        b: Built,
    ) -> Result<(std::sync::Arc<str>, sqlx::sqlite::SqliteArguments)> {
        self.arm().await?;
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
        self.arm().await?;
        let conn = self.conn()?;
        let r = sqlx::query(AssertSqlSafe(sql)).execute(conn).await;
        r.map_err(|e| self.write_failed(e, op, map))?;
        Ok(())
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
        // Dropped without commit or rollback: roll back before the connection (and the
        // write permit) serve anyone else — a task holds both until SQLite answered; with
        // no runtime to run it, the connection is closed (SQLite then rolls back).
        if let Some(mut conn) = self.tx.take() {
            let permit = self.permit.take();
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(async move {
                        let _ = roll_back(conn).await;
                        drop(permit);
                    });
                }
                Err(_) => conn.close_on_drop(),
            }
        }
    }
}

/// Rolls back the transaction on `conn` (a transaction SQLite already rolled back by itself
/// counts as rolled back); a connection that cannot is closed rather than returned to the
/// pool inside a transaction.
async fn roll_back(mut conn: PoolConnection<Sqlite>) -> Result<(), sqlx::Error> {
    match sqlx::raw_sql(AssertSqlSafe("ROLLBACK"))
        .execute(&mut *conn)
        .await
    {
        Ok(_) => Ok(()),
        Err(sqlx::Error::Database(db)) if db.message().contains("no transaction is active") => {
            Ok(())
        }
        Err(e) => {
            conn.close_on_drop();
            Err(e)
        }
    }
}

impl SqlDriver for SqliteTransaction {
    const DIALECT: Dialect = Dialect::Sqlite;

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
            let r = sqlx::query_with(AssertSqlSafe(sql), args)
                .execute(self.conn()?)
                .await;
            Ok(r.map_err(|e| self.write_failed(e, op, map))?
                .rows_affected())
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
            let rows = sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(self.conn()?)
                .await
                .map_err(|e| map(e, op))?;
            rows.iter().map(|r| record(def, r, Shape::Full)).collect()
        })
    }

    fn fetch_i64<'a>(
        &'a mut self,
        b: Built,
        op: &'static str,
    ) -> BoxFuture<'a, Result<Option<i64>>> {
        Box::pin(async move {
            let (sql, args) = self.prepare(b).await?;
            let row = sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_optional(self.conn()?)
                .await
                .map_err(|e| map(e, op))?;
            row.map(|r| r.try_get::<i64, _>(0).map_err(|e| map(e, op)))
                .transpose()
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
                (Ok(_), None) => {
                    futures_util::stream::once(async { Err(Error::Closed("sqlite transaction")) })
                        .boxed()
                }
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

    fn commit(mut self) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            if let Some(e) = self.rolled_back.take() {
                if let Some(conn) = self.tx.take() {
                    let _ = roll_back(conn).await;
                }
                return Err(e);
            }
            self.arm().await?;
            let mut conn = self.tx.take().ok_or(Error::Closed("sqlite transaction"))?;
            // SQLite decides: when it rolled the whole transaction back itself (an
            // interrupted write, a full disk, an I/O error, or a raw `ROLLBACK`/`COMMIT`
            // through the extension), `COMMIT` fails with "no transaction is active" — a
            // plain SQLITE_ERROR, told apart only by its text. The COMMIT is larder's own
            // (not sqlx's, whose failed commit would leave the pooled connection unable to
            // begin again).
            match sqlx::raw_sql(AssertSqlSafe("COMMIT"))
                .execute(&mut *conn)
                .await
            {
                Ok(_) => Ok(()),
                Err(sqlx::Error::Database(db)) if db.message().contains("no transaction is active") => {
                    Err(Error::TransactionAborted {
                        operation: "uow.commit",
                        cause: Some(
                            "sqlite had rolled the transaction back (a failed statement, or one run on the raw connection)".into(),
                        ),
                    })
                }
                Err(e) => {
                    // A COMMIT that failed (busy, a deferred constraint) leaves the
                    // transaction open: end it before the connection goes back.
                    let _ = roll_back(conn).await;
                    Err(map(e, "uow.commit"))
                }
            }
        })
    }

    fn rollback(mut self) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            // Rollback is not bounded by the deadline: it must always get through.
            self.deadline = None;
            self.rolled_back = None;
            self.arm().await?;
            let conn = self.tx.take().ok_or(Error::Closed("sqlite transaction"))?;
            roll_back(conn).await.map_err(|e| map(e, "uow.rollback"))
        })
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

    /// The connection with the unit of work's deadline armed (the progress-handler
    /// interrupt), so raw statements are cancelled by the database when it passes; map
    /// their errors with [`classify`](crate::classify) to get [`Error::DeadlineExceeded`].
    fn sqlite_bounded(&mut self) -> BoxFuture<'_, Result<&mut SqliteConnection>>;
}

fn driver(uow: &mut Uow) -> Option<&mut SqliteTransaction> {
    uow.backend_transaction()?
        .as_any_mut()
        .downcast_mut::<SqliteTransaction>()
}

impl SqliteUowExt for Uow {
    fn sqlite(&mut self) -> Option<&mut SqliteConnection> {
        driver(self)?.connection()
    }

    fn sqlite_bounded(&mut self) -> BoxFuture<'_, Result<&mut SqliteConnection>> {
        Box::pin(async move {
            let deadline = self.deadline();
            let backend = self.store().backend_name();
            let tx = driver(self).ok_or(Error::Unsupported {
                operation: "raw sqlite access",
                backend,
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
