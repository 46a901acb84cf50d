//! Registering an entity's table and preparing the event store, for every dialect: what
//! `Store::register` and `EventStore::open` run.

use larder_core::{EntityDef, Error, Result};
use sea_query::Value as V;
use sqlx::pool::PoolConnection;
use sqlx::{AssertSqlSafe, Connection, Executor};

use crate::ddl::{self, FoundColumn, FoundTable};
use crate::dialect::{SqlDialect, SqlRow};
use crate::migrate::SqlMigrationDriver;

/// Creates `def`'s table and indexes on `conn` in one write transaction, or — when the
/// table exists — checks it against the entity and never alters it (a difference is
/// [`Error::SchemaMismatch`]: a migration's job). Concurrent registrations of one table are
/// serialized by the dialect ([`SqlDialect::REGISTER_LOCK`], or its single writer).
pub async fn register_table<D: SqlDialect>(
    mut conn: PoolConnection<D::Db>,
    def: &EntityDef,
) -> Result<()> {
    let op = "store.register";
    let err = |e| D::map(e, op);
    let stmts = ddl::create_table(def, D::DIALECT)?;
    let mut tx = conn
        .begin_with(AssertSqlSafe(D::BEGIN_WRITE))
        .await
        .map_err(err)?;
    if let Some(lock) = D::REGISTER_LOCK {
        let args = D::bind(vec![V::String(Some(format!(
            "larder.register.{}",
            def.table
        )))])?;
        D::executor(&mut tx)
            .execute(sqlx::query_with(AssertSqlSafe(lock), args))
            .await
            .map_err(err)?;
    }
    let found = introspect::<D>(&mut tx, def.table).await?;
    if !found.columns.is_empty() {
        // Nothing was written; end the transaction now (not on drop) so the write lock
        // is free at once.
        let checked = ddl::compare(def, D::DIALECT, &found);
        tx.rollback().await.map_err(err)?;
        return checked;
    }
    for s in stmts {
        // DDL built from a validated registry (see `ddl`).
        D::executor(&mut tx)
            .execute(sqlx::raw_sql(AssertSqlSafe(s)))
            .await
            .map_err(err)?;
    }
    tx.commit().await.map_err(err)
}

/// Reads a table's columns and indexes from the catalog ([`SqlDialect::TABLE_COLUMNS`],
/// [`SqlDialect::TABLE_INDEXES`]; the table name is a bound parameter). No columns: no such
/// table.
async fn introspect<D: SqlDialect>(
    conn: &mut crate::dialect::Conn<D>,
    table: &str,
) -> Result<FoundTable> {
    let op = "store.register";
    let m = |e| D::map(e, op);
    let null = || Error::backend(D::BACKEND, "the catalog returned NULL");
    let name = || D::bind(vec![V::String(Some(table.to_owned()))]);
    let rows = D::executor(conn)
        .fetch_all(sqlx::query_with(AssertSqlSafe(D::TABLE_COLUMNS), name()?))
        .await
        .map_err(m)?;
    let columns = rows
        .iter()
        .map(|r| {
            let flag = |i| SqlRow::<D>::boolean(r, i).map_err(m)?.ok_or_else(null);
            Ok(FoundColumn {
                name: SqlRow::<D>::text(r, 0).map_err(m)?.ok_or_else(null)?,
                sql_type: SqlRow::<D>::text(r, 1).map_err(m)?.ok_or_else(null)?,
                collation: SqlRow::<D>::text(r, 2).map_err(m)?,
                not_null: flag(3)?,
                primary_key: flag(4)?,
                has_default: flag(5)?,
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let rows = D::executor(conn)
        .fetch_all(sqlx::query_with(AssertSqlSafe(D::TABLE_INDEXES), name()?))
        .await
        .map_err(m)?;
    let indexes = rows
        .iter()
        .map(|r| SqlRow::<D>::text(r, 0).map_err(m)?.ok_or_else(null))
        .collect::<Result<Vec<_>>>()?;
    Ok(FoundTable { columns, indexes })
}

/// Applies larder's built-in migrations (the event store's tables) with `driver`.
pub async fn prepare_events<D: SqlDialect>(mut driver: SqlMigrationDriver<D>) -> Result<()> {
    crate::migrate::apply_builtin(&mut driver, D::DIALECT)
        .await
        .map(drop)
        .map_err(|e| {
            Error::backend(
                D::BACKEND,
                format!("applying larder's built-in migrations failed: {e}"),
            )
        })
}
