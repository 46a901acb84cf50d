//! larder-postgres: the PostgreSQL backend of larder (through sqlx).
//!
//! **Not semver-stable.** Use the `larder` facade (`larder::open("postgres://…")`).
//!
//! # How it uses PostgreSQL
//!
//! Write units of work are `READ COMMITTED` transactions; optimistic concurrency comes from
//! the version column (`UPDATE … WHERE id = $1 AND version = $2`), so no row is locked
//! longer than a statement. Read-only units of work are `BEGIN READ ONLY`. Inserts use
//! `ON CONFLICT (id) DO NOTHING`, so a duplicate id is reported as `AlreadyExists` without
//! aborting the transaction. Deadlines set `statement_timeout` for the transaction
//! (`SET LOCAL`, sent with `BEGIN`), re-armed only when the value in force no longer fits
//! the time left: the server cancels the statement itself and the connection stays
//! healthy. Text columns are
//! created `COLLATE "C"` so ordering is byte-wise, as on SQLite and in memory.
//!
//! This crate is the PostgreSQL *dialect* ([`Pg`]) of larder's one SQL backend
//! (`larder_sql::SqlTx`): what differs from other databases and nothing else.
#![deny(rustdoc::broken_intra_doc_links)]

mod backend;
mod error;
mod events;
mod row;
mod uow;

pub use backend::{PgBackend, PgMigrationDriver};
pub use events::NOTIFY_CHANNEL;
pub use uow::{Pg, PgState, PgTransaction, PgUowExt, classify};
