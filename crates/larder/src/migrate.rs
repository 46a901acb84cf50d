//! Modular, checksummed, locked SQL migrations (see the `larder migrate` CLI).
//!
//! ```no_run
//! # async fn demo() -> Result<(), larder::migrate::MigrateError> {
//! use larder::migrate::{self, Migrator};
//! let store = larder::open("sqlite://app.db").await?;
//! // The built-in `larder` module plus every `<root>/<module>/migrations/` folder.
//! let dialect = migrate::dialect(&store).expect("a SQL store");
//! let set = migrate::set_from_dir(std::path::Path::new("."), dialect)?;
//! let mut driver = migrate::driver(&store).await?;
//! let report = Migrator::new(set).up(driver.as_mut(), None, &mut |_, _, _| {}).await?;
//! println!("applied {}", report.applied.len());
//! # Ok(()) }
//! ```
//!
//! File conventions, ordering, checksums and directives are documented in
//! [`source`]; safety rules in [`larder_sql::migrate`].

use std::path::Path;

pub use larder_sql::migrate::source::{
    self, BUILTIN_MODULE, EmbeddedModule, Migration, MigrationKind, MigrationSet, Module,
    SkipReason, SkippedFile, checksum, discover, normalize, parse_module, read_dir,
};
pub use larder_sql::migrate::split::{Statement, split};
pub use larder_sql::migrate::{
    Failure, HISTORY_TABLE, HistoryRow, MigrateError, MigrateOptions, MigrationDriver,
    MigrationState, Migrator, PlannedStep, Report, StatusRow, Verification, timestamp_version,
};

pub use larder_sql::Dialect;

use crate::Store;

/// larder's own module (`larder`) for a dialect: the tables larder itself needs
/// (`_larder_meta`, the event store's log, streams, snapshots and checkpoints). The
/// event store applies it by itself when opened; `larder migrate up` applies it first.
pub fn builtin(dialect: Dialect) -> Module {
    larder_sql::migrate::builtin(dialect)
}

/// The SQL dialect of a store's backend (`None` for the memory backend).
pub fn dialect(store: &Store) -> Option<Dialect> {
    match store.backend_name() {
        "postgresql" => Some(Dialect::Postgres),
        "sqlite" => Some(Dialect::Sqlite),
        _ => None,
    }
}

/// The built-in module plus every module found under `root` (`<root>/*/migrations/`).
pub fn set_from_dir(root: &Path, dialect: Dialect) -> Result<MigrationSet, MigrateError> {
    let mut modules = vec![builtin(dialect)];
    modules.extend(discover(root)?);
    MigrationSet::new(modules)
}

/// The built-in module plus embedded modules (see `embed_migrations!`).
pub fn set_from_embedded(
    modules: &[EmbeddedModule],
    dialect: Dialect,
) -> Result<MigrationSet, MigrateError> {
    let mut all = vec![builtin(dialect)];
    for m in modules {
        all.push(m.parse()?);
    }
    MigrationSet::new(all)
}

/// A migration driver on a dedicated connection of the store's pool.
pub async fn driver(store: &Store) -> Result<Box<dyn MigrationDriver>, MigrateError> {
    let any = store.backend().as_any();
    #[cfg(feature = "sqlite")]
    if let Some(b) = any.downcast_ref::<larder_sqlite::SqliteBackend>() {
        return Ok(Box::new(b.migration_driver().await?));
    }
    #[cfg(feature = "postgres")]
    if let Some(b) = any.downcast_ref::<larder_postgres::PgBackend>() {
        return Ok(Box::new(b.migration_driver().await?));
    }
    let _ = any;
    Err(MigrateError::Unsupported(store.backend_name()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_builtin_module_parses() {
        for d in [super::Dialect::Sqlite, super::Dialect::Postgres] {
            let m = super::builtin(d);
            assert_eq!(m.name, "larder");
            assert!(!m.migrations.is_empty());
            assert!(m.migrations.iter().all(|m| m.down.is_some()));
        }
    }
}
