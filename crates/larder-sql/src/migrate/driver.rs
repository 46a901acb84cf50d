//! The migration driver of every SQL dialect: one pooled connection for the whole run; the
//! history table, its rows and the transactions written once, the lock from the dialect
//! ([`SqlDialect::lock_migrations`]) or a run lease ([`SqlDialect::RUN_LEASE`]).
//!
//! **The run lease** (SQLite, which has no session locks). A migrator takes the one row of
//! `_larder_migration_lock` — its owner id and an expiry [`LEASE`] ahead — in a write
//! transaction, when the row is missing, expired, or held by a process of this host that is
//! gone. While it holds the lease it does not re-read the history before each migration:
//! instead the history row of every migration is written only `WHERE` the lease is still
//! its own, inside the migration's write transaction, so a migrator that lost its lease (it
//! was slower than the expiry and another one took over) rolls that migration back and stops
//! — whatever the clocks say. The expiry is pushed forward in a migration's transaction
//! once a third of it has passed; `unlock` deletes the row. A migrator killed while holding
//! the lease blocks others until the expiry, or not at all on the same host (its process
//! is gone).

use std::time::{Duration, Instant};

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
    /// The run lease held, if any: this migrator's owner id and when it last took or
    /// renewed it.
    lease: Option<(String, Instant)>,
}

/// How long a run lease lasts without renewal.
pub const LEASE: Duration = Duration::from_secs(30);

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
        SqlMigrationDriver {
            in_tx: false,
            conn,
            lease: None,
        }
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

    async fn exec(&mut self, sql: &'static str, values: Vec<V>) -> Result<u64> {
        let args = D::bind(values)?;
        let r = D::executor(&mut self.conn)
            .execute(sqlx::query_with(AssertSqlSafe(sql), args))
            .await
            .map_err(|e| D::map(e, "migrate.history"))?;
        Ok(D::rows_affected(&r))
    }

    /// One attempt at the run lease, in its own write transaction: `true` if taken.
    async fn try_lease(&mut self, owner: &str) -> Result<bool> {
        self.simple(D::BEGIN_WRITE, "migrate.lock").await?;
        let r = self.try_lease_in_tx(owner).await;
        let end = if matches!(r, Ok(true)) {
            "COMMIT"
        } else {
            "ROLLBACK"
        };
        self.simple(end, "migrate.lock").await?;
        r
    }

    async fn try_lease_in_tx(&mut self, owner: &str) -> Result<bool> {
        self.simple(
            "CREATE TABLE IF NOT EXISTS _larder_migration_lock (id INTEGER PRIMARY KEY \
             CHECK (id = 1), owner TEXT NOT NULL, expires_at BIGINT NOT NULL)",
            "migrate.lock",
        )
        .await?;
        let now = now_ms();
        let rows = self
            .rows(
                "SELECT owner, expires_at FROM _larder_migration_lock WHERE id = 1",
                Vec::new(),
            )
            .await?;
        if let Some(r) = rows.first() {
            let holder = SqlRow::<D>::text(r, 0)
                .map_err(|e| D::map(e, "migrate.lock"))?
                .unwrap_or_default();
            let expires = SqlRow::<D>::int(r, 1)
                .map_err(|e| D::map(e, "migrate.lock"))?
                .unwrap_or(0);
            if expires > now && !owner_is_gone(&holder) {
                return Ok(false);
            }
        }
        self.exec(
            "INSERT INTO _larder_migration_lock (id, owner, expires_at) VALUES (1, $1, $2) \
             ON CONFLICT (id) DO UPDATE SET owner = excluded.owner, \
             expires_at = excluded.expires_at",
            vec![s(owner), V::BigInt(Some(now + lease_ms()))],
        )
        .await?;
        Ok(true)
    }

    /// Inside a migration's transaction: renews the lease once a third of it has passed,
    /// failing if another migrator took it over.
    async fn renew_if_due(&mut self) -> Result<()> {
        let Some((owner, at)) = self.lease.clone() else {
            return Ok(());
        };
        if at.elapsed() < LEASE / 3 {
            return Ok(());
        }
        let n = self
            .exec(
                "UPDATE _larder_migration_lock SET expires_at = $1 WHERE id = 1 AND owner = $2",
                vec![V::BigInt(Some(now_ms() + lease_ms())), s(&owner)],
            )
            .await?;
        if n == 0 {
            return Err(lease_lost());
        }
        self.lease = Some((owner, Instant::now()));
        Ok(())
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn lease_ms() -> i64 {
    i64::try_from(LEASE.as_millis()).unwrap_or(i64::MAX)
}

/// This host's name (Linux), to tell a lease holder on this host whose process is gone.
fn host() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_default()
}

/// `host/pid/nonce`: unique per driver.
fn new_owner() -> String {
    format!(
        "{}/{}/{}",
        host(),
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Whether `owner` names a process of this host that no longer runs (Linux: no
/// `/proc/<pid>`). Elsewhere, or for another host, `false`: wait for the expiry.
fn owner_is_gone(owner: &str) -> bool {
    let mut parts = owner.split('/');
    let (Some(h), Some(pid)) = (parts.next(), parts.next()) else {
        return false;
    };
    let here = host();
    !here.is_empty()
        && h == here
        && pid.parse::<u32>().is_ok_and(|p| {
            p != std::process::id()
                && std::path::Path::new("/proc/self").exists()
                && !std::path::Path::new(&format!("/proc/{p}")).exists()
        })
}

fn lease_lost() -> larder_core::Error {
    larder_core::Error::Backend {
        backend: "migrations",
        source: "the migration run lease was taken over by another migrator (this one held it \
                 longer than its expiry without renewing): this migration was rolled back; run \
                 the migrations again"
            .into(),
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

/// The upsert of a history row: `$1..$8` from `$rows` (a `VALUES` list or a `SELECT`),
/// then `$after`.
macro_rules! history_upsert {
    ($rows:literal, $after:literal) => {
        concat!(
            "INSERT INTO _larder_migrations (module, version, name, kind, checksum, \
             applied_at, execution_ms, success) ",
            $rows,
            " ON CONFLICT (module, version, name) DO UPDATE SET kind = excluded.kind, \
             checksum = excluded.checksum, applied_at = excluded.applied_at, \
             execution_ms = excluded.execution_ms, success = excluded.success",
            $after
        )
    };
}

/// The values `$1..$8` of [`history_upsert!`].
fn history_values(r: &HistoryRow) -> Vec<V> {
    vec![
        s(&r.module),
        V::BigInt(Some(r.version)),
        s(&r.name),
        s(r.kind.as_str()),
        s(&r.checksum),
        s(&r.applied_at),
        V::BigInt(Some(r.execution_ms)),
        V::Bool(Some(r.success)),
    ]
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
            if !D::RUN_LEASE {
                return if D::lock_migrations(&mut self.conn, timeout).await? {
                    Ok(())
                } else {
                    Err(MigrateError::LockTimeout(timeout))
                };
            }
            let owner = new_owner();
            let started = Instant::now();
            loop {
                if self.try_lease(&owner).await? {
                    self.lease = Some((owner, Instant::now()));
                    return Ok(());
                }
                if started.elapsed() >= timeout {
                    return Err(MigrateError::LockTimeout(timeout));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
    }

    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>> {
        Box::pin(async move {
            if !D::RUN_LEASE {
                return Ok(D::unlock_migrations(&mut self.conn).await?);
            }
            if let Some((owner, _)) = self.lease.take() {
                self.exec(
                    "DELETE FROM _larder_migration_lock WHERE id = 1 AND owner = $1",
                    vec![s(&owner)],
                )
                .await?;
            }
            Ok(())
        })
    }

    fn holds_run_lock(&self) -> bool {
        D::HOLDS_RUN_LOCK || self.lease.is_some()
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

    fn begin_and_execute<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, Result<()>> {
        self.in_tx = true;
        Box::pin(async move {
            // `BEGIN` and the script as one multi-statement request (SQLite: one trip to
            // sqlx's worker thread fewer; PostgreSQL: one simple-query message, where an
            // explicit `BEGIN` keeps the transaction open after it).
            let script = format!("{};\n{sql}", D::BEGIN_WRITE);
            D::executor(&mut self.conn)
                .execute(sqlx::raw_sql(AssertSqlSafe(script)))
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
            let mut values = history_values(r);
            let Some((owner, _)) = self.lease.clone() else {
                return self
                    .exec(
                        history_upsert!("VALUES ($1, $2, $3, $4, $5, $6, $7, $8)", ""),
                        values,
                    )
                    .await
                    .map(drop);
            };
            // Under a run lease: written only while the lease is still this migrator's
            // (in the migration's write transaction: nobody can take it in between).
            self.renew_if_due().await?;
            values.push(s(&owner));
            let n = self
                .exec(
                    history_upsert!(
                        "SELECT $1, $2, $3, $4, $5, $6, $7, $8 WHERE EXISTS (SELECT 1 FROM \
                         _larder_migration_lock WHERE id = 1 AND owner = $9)",
                        ""
                    ),
                    values,
                )
                .await?;
            if n == 0 {
                return Err(lease_lost());
            }
            Ok(())
        })
    }

    fn record_and_commit<'a>(&'a mut self, r: &'a HistoryRow) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let Some((owner, _)) = self.lease.clone() else {
                self.upsert_row(r).await?;
                return self.commit().await;
            };
            // Under a run lease (SQLite): the history row and `COMMIT` in one request. The
            // row's module is read from the lease row, so a lease another migrator took
            // makes it NULL and the insert fail (NOT NULL) before `COMMIT` can run: the
            // migration is never committed without its row.
            self.renew_if_due().await?;
            let mut values = history_values(r);
            values.push(s(&owner));
            let args = D::bind(values)?;
            let done = D::executor(&mut self.conn)
                .execute(sqlx::query_with(
                    AssertSqlSafe(history_upsert!(
                        "SELECT (SELECT $1 FROM _larder_migration_lock WHERE id = 1 AND \
                         owner = $9), $2, $3, $4, $5, $6, $7, $8 WHERE true",
                        "; COMMIT"
                    )),
                    args,
                ))
                .await;
            match done {
                Ok(_) => {
                    self.in_tx = false;
                    Ok(())
                }
                Err(e) => {
                    let err = D::map(e, "migrate.history");
                    let held = self
                        .rows(
                            "SELECT 1 FROM _larder_migration_lock WHERE id = 1 AND owner = $1",
                            vec![s(&owner)],
                        )
                        .await;
                    match held {
                        Ok(rows) if rows.is_empty() => Err(lease_lost()),
                        _ => Err(err),
                    }
                }
            }
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
            .map(drop)
        })
    }
}
