//! The SQLite migration driver: one pooled connection; writers are serialized by
//! `BEGIN IMMEDIATE`, so no separate lock is needed (each migration re-checks the history
//! inside its write transaction).

use std::time::Duration;

use larder_core::{BoxFuture, Result};
use larder_sql::migrate::{HistoryRow, MigrateError, MigrationDriver, MigrationKind};
use sqlx::pool::PoolConnection;
use sqlx::sqlite::{Sqlite, SqliteRow};
use sqlx::{AssertSqlSafe, Row};

use crate::SqliteBackend;
use crate::error::{BACKEND, map};

/// Runs migrations on SQLite. Create one with [`SqliteBackend::migration_driver`].
#[derive(Debug)]
pub struct SqliteMigrationDriver {
    /// Whether a transaction begun by `begin` is open: if the driver is dropped then (an
    /// error path), the connection is closed instead of going back to the pool inside a
    /// transaction.
    in_tx: bool,
    conn: PoolConnection<Sqlite>,
}

impl SqliteBackend {
    /// A migration driver on a dedicated connection of this pool.
    pub async fn migration_driver(&self) -> Result<SqliteMigrationDriver> {
        let conn = self.pool().acquire().await.map_err(|e| map(e, "migrate"))?;
        Ok(SqliteMigrationDriver { conn, in_tx: false })
    }
}

fn row(r: &SqliteRow) -> Result<HistoryRow> {
    let e = |e: sqlx::Error| map(e, "migrate.history");
    let kind: String = r.try_get(3).map_err(e)?;
    Ok(HistoryRow {
        module: r.try_get(0).map_err(e)?,
        version: r.try_get(1).map_err(e)?,
        name: r.try_get(2).map_err(e)?,
        kind: if kind == "repeatable" {
            MigrationKind::Repeatable
        } else {
            MigrationKind::Versioned
        },
        checksum: r.try_get(4).map_err(e)?,
        applied_at: r.try_get(5).map_err(e)?,
        execution_ms: r.try_get(6).map_err(e)?,
        success: r.try_get(7).map_err(e)?,
    })
}

impl SqliteMigrationDriver {
    async fn exec(&mut self, sql: &'static str) -> Result<()> {
        sqlx::query(sql)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| map(e, "migrate"))?;
        Ok(())
    }
}

impl Drop for SqliteMigrationDriver {
    fn drop(&mut self) {
        if self.in_tx {
            // A transaction is still open (an error path skipped its rollback): never
            // hand this connection to another user of the pool.
            self.conn.close_on_drop();
        }
    }
}

impl MigrationDriver for SqliteMigrationDriver {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    fn lock(&mut self, _timeout: Duration) -> BoxFuture<'_, Result<(), MigrateError>> {
        // SQLite has one writer: every migration runs under `BEGIN IMMEDIATE` and
        // re-checks the history inside it, which is what serializes concurrent migrators.
        Box::pin(async { Ok(()) })
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(async { Ok(()) })
    }

    fn holds_run_lock(&self) -> bool {
        false
    }

    fn ensure_history(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(self.exec(
            "CREATE TABLE IF NOT EXISTS _larder_migrations (\
             module TEXT NOT NULL, version INTEGER NOT NULL, name TEXT NOT NULL, \
             kind TEXT NOT NULL, checksum TEXT NOT NULL, applied_at TEXT NOT NULL, \
             execution_ms INTEGER NOT NULL, success INTEGER NOT NULL, \
             PRIMARY KEY (module, version, name)) STRICT",
        ))
    }

    fn history(&mut self) -> BoxFuture<'_, Result<Vec<HistoryRow>>> {
        Box::pin(async move {
            let exists: Option<i64> = sqlx::query_scalar(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = '_larder_migrations'",
            )
            .fetch_optional(&mut *self.conn)
            .await
            .map_err(|e| map(e, "migrate.history"))?;
            if exists.is_none() {
                return Ok(Vec::new());
            }
            let rows = sqlx::query(
                "SELECT module, version, name, kind, checksum, applied_at, execution_ms, success \
                 FROM _larder_migrations ORDER BY module, version, name",
            )
            .fetch_all(&mut *self.conn)
            .await
            .map_err(|e| map(e, "migrate.history"))?;
            rows.iter().map(row).collect()
        })
    }

    fn begin(&mut self) -> BoxFuture<'_, Result<()>> {
        self.in_tx = true;
        Box::pin(self.exec("BEGIN IMMEDIATE"))
    }

    fn commit(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.exec("COMMIT").await?;
            self.in_tx = false;
            Ok(())
        })
    }

    fn rollback(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            self.exec("ROLLBACK").await?;
            self.in_tx = false;
            Ok(())
        })
    }

    fn execute<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            // Migration scripts are the developer's own files, never request input.
            sqlx::raw_sql(AssertSqlSafe(sql))
                .execute(&mut *self.conn)
                .await
                .map_err(|e| map(e, "migrate.execute"))?;
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
            let q = match kind {
                MigrationKind::Versioned => sqlx::query(
                    "SELECT module, version, name, kind, checksum, applied_at, execution_ms, success \
                     FROM _larder_migrations WHERE module = ?1 AND version = ?2 AND kind = 'versioned'",
                )
                .bind(module)
                .bind(version),
                MigrationKind::Repeatable => sqlx::query(
                    "SELECT module, version, name, kind, checksum, applied_at, execution_ms, success \
                     FROM _larder_migrations WHERE module = ?1 AND name = ?2 AND kind = 'repeatable'",
                )
                .bind(module)
                .bind(name),
            };
            let r = q
                .fetch_optional(&mut *self.conn)
                .await
                .map_err(|e| map(e, "migrate.history"))?;
            r.as_ref().map(row).transpose()
        })
    }

    fn upsert_row<'a>(&'a mut self, r: &'a HistoryRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "INSERT INTO _larder_migrations (module, version, name, kind, checksum, applied_at, execution_ms, success) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) \
                 ON CONFLICT (module, version, name) DO UPDATE SET kind = excluded.kind, \
                 checksum = excluded.checksum, applied_at = excluded.applied_at, \
                 execution_ms = excluded.execution_ms, success = excluded.success",
            )
            .bind(&r.module)
            .bind(r.version)
            .bind(&r.name)
            .bind(r.kind.as_str())
            .bind(&r.checksum)
            .bind(&r.applied_at)
            .bind(r.execution_ms)
            .bind(r.success)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| map(e, "migrate.history"))?;
            Ok(())
        })
    }

    fn delete_row<'a>(
        &'a mut self,
        module: &'a str,
        version: i64,
        name: &'a str,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            sqlx::query(
                "DELETE FROM _larder_migrations WHERE module = ?1 AND version = ?2 AND name = ?3",
            )
            .bind(module)
            .bind(version)
            .bind(name)
            .execute(&mut *self.conn)
            .await
            .map_err(|e| map(e, "migrate.history"))?;
            Ok(())
        })
    }
}
