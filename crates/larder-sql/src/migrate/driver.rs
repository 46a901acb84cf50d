//! The migration driver of every SQL dialect: one pooled connection for the whole run; the
//! history table, its rows and the transactions written once, the lock from the dialect
//! ([`SqlDialect::lock_migrations`]).

use std::time::Duration;

use larder_core::{BoxFuture, Error, Result};
use sea_query::Value as V;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Executor};

use super::{HistoryRow, MigrateError, MigrationDriver, MigrationKind};
use crate::dialect::{RowOf, SqlDialect, SqlRow};

/// Runs migrations on a database of dialect `D` (the backends' `migration_driver()`).
pub struct SqlMigrationDriver<D: SqlDialect> {
    /// Whether a transaction begun by `begin` is open: if the driver is dropped then (an
    /// error path), the connection is closed instead of going back to the pool inside a
    /// transaction.
    in_tx: bool,
    conn: PoolConnection<D::Db>,
}

impl<D: SqlDialect> std::fmt::Debug for SqlMigrationDriver<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlMigrationDriver")
            .field("backend", &D::BACKEND)
            .field("in_tx", &self.in_tx)
            .finish_non_exhaustive()
    }
}

const COLUMNS: &str = "SELECT module, version, name, kind, checksum, applied_at, execution_ms, success \
     FROM _larder_migrations";

impl<D: SqlDialect> SqlMigrationDriver<D> {
    /// A driver on `conn`, a connection of the backend's pool reserved for the run.
    pub fn new(conn: PoolConnection<D::Db>) -> Self {
        SqlMigrationDriver { in_tx: false, conn }
    }

    async fn simple(&mut self, sql: &'static str, op: &'static str) -> Result<()> {
        D::executor(&mut self.conn)
            .execute(sqlx::raw_sql(AssertSqlSafe(sql)))
            .await
            .map_err(|e| D::map(e, op))?;
        Ok(())
    }

    async fn rows(&mut self, sql: &str, values: Vec<V>) -> Result<Vec<RowOf<D>>> {
        let args = D::bind(values)?;
        D::executor(&mut self.conn)
            .fetch_all(sqlx::query_with(AssertSqlSafe(sql.to_owned()), args))
            .await
            .map_err(|e| D::map(e, "migrate.history"))
    }

    async fn exec(&mut self, sql: &'static str, values: Vec<V>) -> Result<()> {
        let args = D::bind(values)?;
        D::executor(&mut self.conn)
            .execute(sqlx::query_with(AssertSqlSafe(sql), args))
            .await
            .map_err(|e| D::map(e, "migrate.history"))?;
        Ok(())
    }
}

fn row<D: SqlDialect>(r: &impl SqlRow<D>) -> Result<HistoryRow> {
    let e = |e: sqlx::Error| D::map(e, "migrate.history");
    let null = |what: &str| Error::backend(D::BACKEND, format!("unexpected NULL {what}"));
    let text = |i: usize, what: &str| r.text(i).map_err(e)?.ok_or_else(|| null(what));
    let int = |i: usize, what: &str| r.int(i).map_err(e)?.ok_or_else(|| null(what));
    Ok(HistoryRow {
        module: text(0, "module")?,
        version: int(1, "version")?,
        name: text(2, "name")?,
        kind: if text(3, "kind")? == "repeatable" {
            MigrationKind::Repeatable
        } else {
            MigrationKind::Versioned
        },
        checksum: text(4, "checksum")?,
        applied_at: text(5, "applied_at")?,
        execution_ms: int(6, "execution_ms")?,
        success: r.boolean(7).map_err(e)?.ok_or_else(|| null("success"))?,
    })
}

impl<D: SqlDialect> Drop for SqlMigrationDriver<D> {
    fn drop(&mut self) {
        if self.in_tx {
            // A transaction is still open (an error path skipped its rollback): never
            // hand this connection to another user of the pool.
            self.conn.close_on_drop();
        }
    }
}

fn s(v: &str) -> V {
    V::String(Some(v.to_owned()))
}

impl<D: SqlDialect> MigrationDriver for SqlMigrationDriver<D> {
    fn backend(&self) -> &'static str {
        D::BACKEND
    }

    fn lock(&mut self, timeout: Duration) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(async move {
            if D::lock_migrations(&mut self.conn, timeout).await? {
                Ok(())
            } else {
                Err(MigrateError::LockTimeout(timeout))
            }
        })
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(async move { Ok(D::unlock_migrations(&mut self.conn).await?) })
    }

    fn holds_run_lock(&self) -> bool {
        D::HOLDS_RUN_LOCK
    }

    fn ensure_history(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.simple(D::HISTORY_DDL, "migrate"))
    }

    fn history(&mut self) -> BoxFuture<'_, Result<Vec<HistoryRow>>> {
        Box::pin(async move {
            if self.rows(D::HISTORY_EXISTS, Vec::new()).await?.is_empty() {
                return Ok(Vec::new());
            }
            let sql = format!("{COLUMNS} ORDER BY module, version, name");
            let rows = self.rows(&sql, Vec::new()).await?;
            rows.iter().map(row::<D>).collect()
        })
    }

    fn begin(&mut self) -> BoxFuture<'_, Result<()>> {
        self.in_tx = true;
        Box::pin(self.simple(D::BEGIN_WRITE, "migrate"))
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.simple("COMMIT", "migrate").await?;
            self.in_tx = false;
            Ok(())
        })
    }

    fn rollback(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.simple("ROLLBACK", "migrate").await?;
            self.in_tx = false;
            Ok(())
        })
    }

    fn execute<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Migration scripts are the developer's own files, never request input.
            D::executor(&mut self.conn)
                .execute(sqlx::raw_sql(AssertSqlSafe(sql.to_owned())))
                .await
                .map_err(|e| D::map(e, "migrate.execute"))?;
            Ok(())
        })
    }

    fn find_row<'a>(
        &'a mut self,
        module: &'a str,
        kind: MigrationKind,
        version: i64,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<HistoryRow>>> {
        Box::pin(async move {
            let (sql, values) = match kind {
                MigrationKind::Versioned => (
                    format!("{COLUMNS} WHERE module = $1 AND version = $2 AND kind = 'versioned'"),
                    vec![s(module), V::BigInt(Some(version))],
                ),
                MigrationKind::Repeatable => (
                    format!("{COLUMNS} WHERE module = $1 AND name = $2 AND kind = 'repeatable'"),
                    vec![s(module), s(name)],
                ),
            };
            let rows = self.rows(&sql, values).await?;
            rows.first().map(row::<D>).transpose()
        })
    }

    fn upsert_row<'a>(&'a mut self, r: &'a HistoryRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let values = vec![
                s(&r.module),
                V::BigInt(Some(r.version)),
                s(&r.name),
                s(r.kind.as_str()),
                s(&r.checksum),
                s(&r.applied_at),
                V::BigInt(Some(r.execution_ms)),
                V::Bool(Some(r.success)),
            ];
            self.exec(
                "INSERT INTO _larder_migrations (module, version, name, kind, checksum, applied_at, execution_ms, success) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
                 ON CONFLICT (module, version, name) DO UPDATE SET kind = excluded.kind, \
                 checksum = excluded.checksum, applied_at = excluded.applied_at, \
                 execution_ms = excluded.execution_ms, success = excluded.success",
                values,
            )
            .await
        })
    }

    fn delete_row<'a>(
        &'a mut self,
        module: &'a str,
        version: i64,
        name: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.exec(
                "DELETE FROM _larder_migrations WHERE module = $1 AND version = $2 AND name = $3",
                vec![s(module), V::BigInt(Some(version)), s(name)],
            )
            .await
        })
    }
}
