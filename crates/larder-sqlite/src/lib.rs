//! larder-sqlite: the embedded SQLite backend of larder (through sqlx).
//!
//! **Not semver-stable.** Use the `larder` facade (`larder::open("sqlite://app.db")`).
//!
//! # SQLite done right
//!
//! Every pooled connection is opened with `journal_mode=WAL`, `synchronous=FULL` (NORMAL
//! only when configured), `foreign_keys=ON` and the configured `busy_timeout`. Write units
//! of work start with `BEGIN IMMEDIATE`, so a transaction that reads and then writes never
//! fails with `SQLITE_BUSY` half-way: it waits for the write lock up front, within the busy
//! timeout. Read-only units of work use a deferred `BEGIN` and run concurrently with the
//! writer (WAL). Deadlines interrupt the running statement through SQLite's progress
//! handler, so the connection stays usable.
#![deny(rustdoc::broken_intra_doc_links)]

mod backend;
mod error;
mod events;
mod migrate;
mod row;
mod uow;

pub use backend::SqliteBackend;
pub use migrate::SqliteMigrationDriver;
pub use uow::{SqliteTransaction, SqliteUowExt, classify};
