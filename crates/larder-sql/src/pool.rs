//! What every SQL backend holds and does with its pool, written once: the pool, its
//! capabilities and endpoint, registration, the migration driver, the event store's tables.

use larder_core::backend::{Capabilities, Endpoint};
use larder_core::{EntityDef, Result};
use sqlx::Pool;

use crate::dialect::SqlDialect;
use crate::migrate::SqlMigrationDriver;

/// The pool of a SQL backend of dialect `D`, with what the backend tells the core about it.
pub struct SqlPool<D: SqlDialect> {
    /// The sqlx pool.
    pub pool: Pool<D::Db>,
    /// What the backend can do.
    pub caps: Capabilities,
    /// Database, host and port (or file), for spans.
    pub endpoint: Endpoint,
    /// Whether spans record `db.query.text`.
    pub record_query_text: bool,
}

impl<D: SqlDialect> Clone for SqlPool<D> {
    fn clone(&self) -> Self {
        SqlPool {
            pool: self.pool.clone(),
            caps: self.caps.clone(),
            endpoint: self.endpoint.clone(),
            record_query_text: self.record_query_text,
        }
    }
}

// Hand-written: connection options can hold a password; print only what is safe.
impl<D: SqlDialect> std::fmt::Debug for SqlPool<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqlPool")
            .field("backend", &D::BACKEND)
            .field("size", &self.pool.size())
            .field("idle", &self.pool.num_idle())
            .field("closed", &self.pool.is_closed())
            .field("capabilities", &self.caps)
            .finish()
    }
}

impl<D: SqlDialect> SqlPool<D> {
    /// Wraps `pool`; spans do not record query text until asked.
    pub fn new(pool: Pool<D::Db>, caps: Capabilities, endpoint: Endpoint) -> Self {
        SqlPool {
            pool,
            caps,
            endpoint,
            record_query_text: false,
        }
    }

    /// A migration driver on a dedicated connection of this pool.
    pub async fn migration_driver(&self) -> Result<SqlMigrationDriver<D>> {
        let conn = self
            .pool
            .acquire()
            .await
            .map_err(|e| D::map(e, "migrate"))?;
        Ok(SqlMigrationDriver::new(conn))
    }

    /// Creates `def`'s table, or checks the existing one (see
    /// [`register_table`](crate::schema::register_table)).
    pub async fn register(&self, def: &EntityDef) -> Result<()> {
        let conn = self.pool.acquire().await;
        let conn = conn.map_err(|e| D::map(e, "store.register"))?;
        crate::schema::register_table::<D>(conn, def).await
    }

    /// Applies larder's built-in migrations (the event store's tables).
    pub async fn prepare_events(&self) -> Result<()> {
        crate::schema::prepare_events(self.migration_driver().await?).await
    }
}
