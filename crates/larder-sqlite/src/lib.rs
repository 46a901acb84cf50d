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
//!
//! This crate is the SQLite *dialect* ([`Lite`]) of larder's one SQL backend
//! (`larder_sql::SqlTx`): what differs from other databases and nothing else.
//!
//! # Unknown columns are errors
//!
//! By default SQLite reads a double-quoted identifier that names no column as a string
//! literal (`"total" > 1` compares the text `'total'`, true for every row). larder's
//! workspace builds the bundled SQLite with `SQLITE_DQS=0` (`LIBSQLITE3_FLAGS` in
//! `.cargo/config.toml`), so such a statement fails. Cargo does not pass that setting on to
//! crates that depend on larder: set `LIBSQLITE3_FLAGS=-DSQLITE_DQS=0` in your own build
//! (environment or `[env]` in your `.cargo/config.toml`). Without it,
//! [`SqliteBackend::connect`] logs a warning; `Store::register` still checks every
//! existing table against its entity, so only tables altered behind larder's back are
//! exposed.
#![deny(rustdoc::broken_intra_doc_links)]

mod backend;
mod error;
mod events;
mod row;
mod uow;

pub use backend::{SqliteBackend, SqliteMigrationDriver};
pub use uow::{Lite, LiteState, SqliteTransaction, SqliteUowExt, classify};
