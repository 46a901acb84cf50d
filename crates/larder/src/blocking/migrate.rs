//! Blocking migrations: [`crate::migrate`] without async.
//!
//! ```no_run
//! # fn demo() -> Result<(), larder::migrate::MigrateError> {
//! use larder::blocking::{Store, migrate::{self, Migrator}};
//! let store = Store::open("sqlite://app.db")?;
//! // The built-in `larder` module plus every `<root>/<module>/migrations/` folder.
//! let dialect = migrate::dialect(&store).expect("a SQL store");
//! let set = migrate::set_from_dir(std::path::Path::new("."), dialect)?;
//! let mut driver = migrate::driver(&store)?;
//! let report = Migrator::new(set).up(&mut driver, None, &mut |_, _, _| {})?;
//! println!("applied {}", report.applied.len());
//! # Ok(()) }
//! ```

use std::sync::Arc;

use tokio::runtime::Runtime;

pub use crate::migrate::{
    BUILTIN_MODULE, Dialect, EmbeddedModule, Failure, HISTORY_TABLE, HistoryRow, MigrateError,
    MigrateOptions, Migration, MigrationKind, MigrationSet, MigrationState, Module, PlannedStep,
    Report, StatusRow, Verification, builtin, set_from_dir, set_from_embedded,
};

use super::Store;

/// The SQL dialect of a store's backend (`None` for the memory backend).
pub fn dialect(store: &Store) -> Option<Dialect> {
    crate::migrate::dialect(&store.inner)
}

/// A migration driver on a dedicated connection of the store's pool; see
/// [`crate::migrate::driver`] (the memory backend is [`MigrateError::Unsupported`]).
pub fn driver(store: &Store) -> Result<Driver, MigrateError> {
    let inner = store.rt.block_on(crate::migrate::driver(&store.inner))?;
    Ok(Driver {
        rt: store.rt.clone(),
        inner: Some(inner),
    })
}

/// A blocking migration driver: one connection, held until it is dropped.
pub struct Driver {
    rt: Arc<Runtime>,
    inner: Option<Box<dyn crate::migrate::MigrationDriver>>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("backend", &self.inner.as_ref().map(|d| d.backend()))
            .finish_non_exhaustive()
    }
}

impl Driver {
    fn parts(&mut self) -> (&Runtime, &mut dyn crate::migrate::MigrationDriver) {
        // `inner` is only taken by `drop`.
        let d = self
            .inner
            .as_mut()
            .unwrap_or_else(|| unreachable!("driver already dropped"));
        (&self.rt, d.as_mut())
    }

    /// The async driver inside.
    pub fn as_async(&mut self) -> &mut dyn crate::migrate::MigrationDriver {
        self.parts().1
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        // The pooled connection goes back to the pool from inside the runtime.
        let _guard = self.rt.enter();
        self.inner = None;
    }
}

/// Runs a [`MigrationSet`] through a blocking [`Driver`]: [`crate::migrate::Migrator`]
/// with the same verification, locking, ordering and reports.
#[derive(Debug, Clone)]
pub struct Migrator {
    inner: crate::migrate::Migrator,
}

impl Migrator {
    /// A migrator for a set of modules, with default options.
    pub fn new(set: MigrationSet) -> Migrator {
        Migrator {
            inner: crate::migrate::Migrator::new(set),
        }
    }

    /// Sets the options.
    #[must_use]
    pub fn with_options(self, opts: MigrateOptions) -> Migrator {
        Migrator {
            inner: self.inner.with_options(opts),
        }
    }

    /// The migrations.
    pub fn set(&self) -> &MigrationSet {
        self.inner.set()
    }

    /// The async migrator inside.
    pub fn as_async(&self) -> &crate::migrate::Migrator {
        &self.inner
    }

    /// See [`crate::migrate::Migrator::status`]: reads the history; applies nothing.
    pub fn status(&self, d: &mut Driver) -> Result<Vec<StatusRow>, MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.status(d))
    }

    /// See [`crate::migrate::Migrator::verify`]: checks without applying anything.
    pub fn verify(&self, d: &mut Driver) -> Result<Verification, MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.verify(d))
    }

    /// See [`crate::migrate::Migrator::plan`]: what `up` would apply.
    pub fn plan(&self, d: &mut Driver, to: Option<i64>) -> Result<Vec<PlannedStep>, MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.plan(d, to))
    }

    /// See [`crate::migrate::Migrator::up`]: applies pending migrations (all, or versioned
    /// ones up to `to`), calling `progress` after each.
    pub fn up(
        &self,
        d: &mut Driver,
        to: Option<i64>,
        progress: &mut (dyn FnMut(usize, usize, &Migration) + Send),
    ) -> Result<Report, MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.up(d, to, progress))
    }

    /// See [`crate::migrate::Migrator::plan_down`].
    pub fn plan_down(
        &self,
        d: &mut Driver,
        module: Option<&str>,
        steps: Option<usize>,
        to: Option<i64>,
    ) -> Result<Vec<PlannedStep>, MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.plan_down(d, module, steps, to))
    }

    /// See [`crate::migrate::Migrator::down`]: reverts applied versioned migrations, newest
    /// first, failing before reverting anything when one cannot be reverted.
    pub fn down(
        &self,
        d: &mut Driver,
        module: Option<&str>,
        steps: Option<usize>,
        to: Option<i64>,
    ) -> Result<Report, MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.down(d, module, steps, to))
    }

    /// See [`crate::migrate::Migrator::baseline`].
    pub fn baseline(
        &self,
        d: &mut Driver,
        module: Option<&str>,
        to: i64,
    ) -> Result<Report, MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.baseline(d, module, to))
    }

    /// See [`crate::migrate::Migrator::repair`].
    pub fn repair(
        &self,
        d: &mut Driver,
        module: &str,
        version: i64,
        mark_applied: bool,
    ) -> Result<(), MigrateError> {
        let (rt, d) = d.parts();
        rt.block_on(self.inner.repair(d, module, version, mark_applied))
    }
}
