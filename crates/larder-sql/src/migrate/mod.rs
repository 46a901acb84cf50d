//! Modular, checksummed, locked SQL migrations: the policy, shared by every SQL backend.
//!
//! - [`source`]: modules of migration files (directory trees or embedded), checksums.
//! - [`split`]: statement boundaries, so a failure names its statement.
//! - [`Migrator`]: plan, verify, up, down, baseline, repair, status — on top of a backend's
//!   small [`MigrationDriver`] (run a statement, transactions, history rows, the lock).
//!
//! # Order
//!
//! Modules are applied in dependency order (a module after the modules it `depends_on`;
//! otherwise the built-in `larder` module first, then by name). Within a module, versioned
//! migrations run by ascending version, then repeatable ones by name.
//!
//! # Safety
//!
//! - Every migration runs in its own transaction together with its history row, unless it
//!   says `-- larder:no-transaction`; such a migration is recorded as dirty first and marked
//!   successful when it finishes, so a crash or failure leaves it dirty, which stops every
//!   later run that includes its module until it is repaired. The dirty check is per
//!   module: a run over other modules only — the event store applying the built-in
//!   `larder` module ([`apply_builtin`]) — is not stopped by it.
//! - Concurrent migrators are serialized: PostgreSQL by a session advisory lock taken by
//!   polling `pg_try_advisory_lock` (never a blocking wait, which can deadlock with
//!   `CREATE INDEX CONCURRENTLY`), released on every path; SQLite by a run lease (see
//!   [`SqlMigrationDriver`]): every history row is written only while the migrator still
//!   holds it, inside the migration's `BEGIN IMMEDIATE` transaction.
//! - Before anything runs, applied migrations are verified: a changed checksum, or an
//!   applied migration whose file is gone, stops the run (the latter can be overridden).

pub mod source;
pub mod split;

mod driver;
mod runner;

pub use driver::{LEASE, SqlMigrationDriver};

use std::fmt;
use std::time::Duration;

use larder_core::BoxFuture;

pub use runner::{
    MigrateOptions, MigrationState, Migrator, PlannedStep, Report, StatusRow, Verification,
    timestamp_version,
};
pub use source::{
    EmbeddedModule, Migration, MigrationKind, MigrationSet, Module, SkipReason, SkippedFile,
};

use crate::compile::Dialect;

/// larder's own module (`larder`) for `dialect`: the tables larder itself needs
/// (`_larder_meta`; the event store's log, streams, snapshots and checkpoints; the outbox,
/// its partition leases and the inbox; blob references).
pub fn builtin(dialect: Dialect) -> Module {
    const COMMON: &[(&str, &str)] = &[
        (
            "20261121000000_larder_meta.sql",
            include_str!("../../builtin/20261121000000_larder_meta.sql"),
        ),
        (
            "20261121000000_larder_meta.down.sql",
            include_str!("../../builtin/20261121000000_larder_meta.down.sql"),
        ),
    ];
    const POSTGRES: &[(&str, &str)] = &[
        COMMON[0],
        COMMON[1],
        (
            "20261122000000_event_store.sql",
            include_str!("../../builtin/postgres/20261122000000_event_store.sql"),
        ),
        (
            "20261122000000_event_store.down.sql",
            include_str!("../../builtin/postgres/20261122000000_event_store.down.sql"),
        ),
        (
            "20261201000000_outbox.sql",
            include_str!("../../builtin/postgres/20261201000000_outbox.sql"),
        ),
        (
            "20261201000000_outbox.down.sql",
            include_str!("../../builtin/postgres/20261201000000_outbox.down.sql"),
        ),
        (
            "20261202000000_blob_refs.sql",
            include_str!("../../builtin/postgres/20261202000000_blob_refs.sql"),
        ),
        (
            "20261202000000_blob_refs.down.sql",
            include_str!("../../builtin/postgres/20261202000000_blob_refs.down.sql"),
        ),
    ];
    const SQLITE: &[(&str, &str)] = &[
        COMMON[0],
        COMMON[1],
        (
            "20261122000000_event_store.sql",
            include_str!("../../builtin/sqlite/20261122000000_event_store.sql"),
        ),
        (
            "20261122000000_event_store.down.sql",
            include_str!("../../builtin/sqlite/20261122000000_event_store.down.sql"),
        ),
        (
            "20261201000000_outbox.sql",
            include_str!("../../builtin/sqlite/20261201000000_outbox.sql"),
        ),
        (
            "20261201000000_outbox.down.sql",
            include_str!("../../builtin/sqlite/20261201000000_outbox.down.sql"),
        ),
        (
            "20261202000000_blob_refs.sql",
            include_str!("../../builtin/sqlite/20261202000000_blob_refs.sql"),
        ),
        (
            "20261202000000_blob_refs.down.sql",
            include_str!("../../builtin/sqlite/20261202000000_blob_refs.down.sql"),
        ),
    ];
    let files = match dialect {
        Dialect::Postgres => POSTGRES,
        Dialect::Sqlite => SQLITE,
    };
    // The files are part of this crate and tested; parsing them cannot fail.
    EmbeddedModule {
        name: source::BUILTIN_MODULE,
        files,
    }
    .parse()
    .unwrap_or_else(|e| unreachable!("built-in migrations are invalid: {e}"))
}

/// Applies the built-in module's pending migrations (idempotent, under the migration
/// lock). Other modules' history is neither checked nor touched: a dirty or missing
/// migration of a user's module does not stop it (`EventStore::open` calls this).
pub async fn apply_builtin(
    driver: &mut dyn MigrationDriver,
    dialect: Dialect,
) -> Result<Report, MigrateError> {
    let set = MigrationSet::new(vec![builtin(dialect)])?;
    Migrator::new(set)
        .with_options(MigrateOptions {
            ignore_missing: true,
            ..MigrateOptions::default()
        })
        .up(driver, None, &mut |_, _, _| {})
        .await
}

/// A row of the history table `_larder_migrations`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryRow {
    /// The module.
    pub module: String,
    /// The version (0 for repeatable migrations).
    pub version: i64,
    /// The name.
    pub name: String,
    /// `versioned` or `repeatable`.
    pub kind: MigrationKind,
    /// Hex SHA-256 of the normalized script that was applied.
    pub checksum: String,
    /// When (RFC 3339, UTC).
    pub applied_at: String,
    /// How long it took.
    pub execution_ms: i64,
    /// `false`: dirty (a no-transaction migration that has not finished).
    pub success: bool,
}

/// The name of the history table.
pub const HISTORY_TABLE: &str = "_larder_migrations";

/// What a backend provides to run migrations: one dedicated connection, its transactions,
/// the history table, and the lock. Everything else is policy in [`Migrator`].
///
/// # Contract
///
/// All calls run on the same connection, in order. `lock` polls and never blocks
/// indefinitely; `unlock` is called on every path after a successful `lock`.
pub trait MigrationDriver: Send {
    /// The backend name.
    fn backend(&self) -> &'static str;

    /// Takes the migration lock, waiting at most `timeout`.
    fn lock(&mut self, timeout: Duration) -> BoxFuture<'_, Result<(), MigrateError>>;

    /// Releases the migration lock.
    fn unlock(&mut self) -> BoxFuture<'_, Result<(), MigrateError>>;

    /// Whether `lock` really excludes other migrators for the whole run (PostgreSQL).
    /// When it does not (SQLite), each migration re-checks the history inside its write
    /// transaction.
    fn holds_run_lock(&self) -> bool;

    /// Creates the history table if missing.
    fn ensure_history(&mut self) -> BoxFuture<'_, larder_core::Result<()>>;

    /// Reads every history row.
    fn history(&mut self) -> BoxFuture<'_, larder_core::Result<Vec<HistoryRow>>>;

    /// Begins a transaction that holds the database's write lock where that is how
    /// writers are serialized (SQLite `BEGIN IMMEDIATE`).
    fn begin(&mut self) -> BoxFuture<'_, larder_core::Result<()>>;

    /// Commits the open transaction.
    fn commit(&mut self) -> BoxFuture<'_, larder_core::Result<()>>;

    /// Rolls the open transaction back.
    fn rollback(&mut self) -> BoxFuture<'_, larder_core::Result<()>>;

    /// Runs SQL: one statement, or a whole script of several (in or outside a transaction).
    fn execute<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, larder_core::Result<()>>;

    /// Begins the write transaction (as [`begin`](Self::begin)) and runs `sql` in it, in
    /// one request where the driver can. Only called while the run lock is held. On an
    /// error the caller rolls back, whether or not the transaction began.
    fn begin_and_execute<'a>(&'a mut self, sql: &'a str) -> BoxFuture<'a, larder_core::Result<()>> {
        Box::pin(async move {
            self.begin().await?;
            self.execute(sql).await
        })
    }

    /// The history row of a versioned migration (by module and version) or a repeatable
    /// one (by module and name), if any.
    fn find_row<'a>(
        &'a mut self,
        module: &'a str,
        kind: MigrationKind,
        version: i64,
        name: &'a str,
    ) -> BoxFuture<'a, larder_core::Result<Option<HistoryRow>>>;

    /// Inserts or replaces the history row of (module, version, name).
    fn upsert_row<'a>(&'a mut self, row: &'a HistoryRow) -> BoxFuture<'a, larder_core::Result<()>>;

    /// [`upsert_row`](Self::upsert_row), then [`commit`](Self::commit), in one request
    /// where the driver can. On an error the caller rolls back (the transaction may still
    /// be open).
    fn record_and_commit<'a>(
        &'a mut self,
        row: &'a HistoryRow,
    ) -> BoxFuture<'a, larder_core::Result<()>> {
        Box::pin(async move {
            self.upsert_row(row).await?;
            self.commit().await
        })
    }

    /// Deletes the history row of (module, version, name).
    fn delete_row<'a>(
        &'a mut self,
        module: &'a str,
        version: i64,
        name: &'a str,
    ) -> BoxFuture<'a, larder_core::Result<()>>;
}

/// Everything that can go wrong with migrations, each naming the module, version or file
/// concerned.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MigrateError {
    /// A migration file or folder is malformed.
    #[error("{file}: {reason}")]
    InvalidFile {
        /// The file.
        file: String,
        /// What is wrong.
        reason: String,
    },
    /// Two files of one module have the same version.
    #[error("module `{module}` has two migrations with version {version}: {}", files.join(" and "))]
    DuplicateVersion {
        /// The module.
        module: String,
        /// The version.
        version: i64,
        /// The files.
        files: Vec<String>,
    },
    /// Two sources define the same module.
    #[error("module `{module}` is defined twice")]
    DuplicateModule {
        /// The module.
        module: String,
    },
    /// A module depends on a module that does not exist.
    #[error("module `{module}` depends on unknown module `{dependency}`")]
    UnknownDependency {
        /// The module.
        module: String,
        /// The missing dependency.
        dependency: String,
    },
    /// Module dependencies form a cycle.
    #[error("module dependencies form a cycle among {}", modules.join(", "))]
    DependencyCycle {
        /// The modules involved.
        modules: Vec<String>,
    },
    /// A file could not be read.
    #[error("cannot read {path}: {reason}")]
    Io {
        /// The path.
        path: String,
        /// The OS error.
        reason: String,
    },
    /// An applied migration's script changed.
    #[error(
        "migration {module}/{version}_{name} was applied with checksum {applied} but the file now has checksum {current}: \
         revert the edit, or add a new migration instead of changing an applied one"
    )]
    Drift {
        /// The module.
        module: String,
        /// The version.
        version: i64,
        /// The name.
        name: String,
        /// The recorded checksum.
        applied: String,
        /// The file's checksum.
        current: String,
    },
    /// An applied migration has no file any more.
    #[error(
        "migration {module}/{version}_{name} is applied but its file is missing (restore it, or pass --ignore-missing)"
    )]
    Missing {
        /// The module.
        module: String,
        /// The version.
        version: i64,
        /// The name.
        name: String,
    },
    /// A migration is dirty: it did not finish outside a transaction (or is running in
    /// another migrator right now).
    #[error(
        "migration {module}/{version}_{name} is dirty: it ran outside a transaction and did not finish; \
         fix the schema by hand, then `larder migrate repair {module} {version}` (add --mark-applied if it completed)"
    )]
    Dirty {
        /// The module.
        module: String,
        /// The version.
        version: i64,
        /// The name.
        name: String,
    },
    /// A statement of a migration failed; the migration left no trace (unless it ran
    /// outside a transaction, in which case it is dirty).
    #[error(transparent)]
    Failed(Box<Failure>),
    /// Another migrator held the lock for too long.
    #[error("timed out after {0:?} waiting for the migration lock held by another migrator")]
    LockTimeout(Duration),
    /// `down` reached a migration without a down script.
    #[error("migration {0} has no down script; nothing was reverted")]
    NoDownScript(String),
    /// `down` reached a migration whose down script has no statements (empty or only
    /// comments, like a fresh scaffold) and is not marked `-- larder:no-op-down`.
    #[error(
        "the down script of migration {0} has no statements: write the statements that revert it, \
         or add the line `-- larder:no-op-down` if nothing needs reverting; nothing was reverted"
    )]
    EmptyDownScript(String),
    /// A migration named on the command line does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The backend cannot run migrations (the memory backend).
    #[error("the {0} backend has no SQL migrations")]
    Unsupported(&'static str),
    /// A database error outside a migration's statements.
    #[error(transparent)]
    Database(#[from] larder_core::Error),
}

/// Where and why a migration failed, and what this run applied before it.
#[derive(Debug, thiserror::Error)]
#[error(
    "migration {migration} ({file}) failed at statement {statement} of {of} (line {line}): {source}; {}",
    applied_summary(.applied)
)]
pub struct Failure {
    /// `module/version_name`.
    pub migration: String,
    /// The file.
    pub file: String,
    /// The 1-based statement index.
    pub statement: usize,
    /// The number of statements.
    pub of: usize,
    /// The line the statement starts on.
    pub line: usize,
    /// The database error.
    #[source]
    pub source: larder_core::Error,
    /// Migrations applied by this run before the failure.
    pub applied: Vec<String>,
}

fn applied_summary(applied: &[String]) -> String {
    if applied.is_empty() {
        "nothing was applied before it in this run".to_owned()
    } else {
        format!("applied before it in this run: {}", applied.join(", "))
    }
}

impl fmt::Display for MigrationKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod builtin_tests {
    use super::*;

    #[test]
    fn the_builtin_module_parses_for_every_dialect() {
        for d in [Dialect::Postgres, Dialect::Sqlite] {
            let m = builtin(d);
            assert_eq!(m.name, "larder");
            assert_eq!(m.migrations.len(), 4);
            assert!(m.migrations.iter().all(|m| m.down.is_some()));
        }
    }
}
