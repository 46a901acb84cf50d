//! larder-sql: the SQL machinery shared by the PostgreSQL and SQLite backends.
//!
//! **Not semver-stable.** Use the `larder` facade.
//!
//! - [`compile`]: resolved plans ([`Select`], [`Pred`]) to parameter-bound SQL through
//!   sea-query, for each [`Dialect`]. Identifiers come only from the entity registry
//!   ([`EntityDef`], validated); every value is a bound parameter, so literal values never
//!   change the SQL text.
//! - [`ddl`]: `CREATE TABLE` / `CREATE INDEX` for an entity, as run by `Store::register` and
//!   as you would put in a migration.
//! - [`driver`]: the repository primitives on top of a backend's [`SqlDriver`], shared by
//!   the PostgreSQL and SQLite backends.
#![deny(rustdoc::broken_intra_doc_links)]

pub mod compile;
pub mod ddl;
pub mod driver;
pub mod migrate;

pub use compile::{Built, Dialect, Shape};
pub use driver::{Missing, SqlDriver, SqlTransaction, decode_record};

#[doc(no_inline)]
pub use larder_core::{EntityDef, query::Select, spec::Pred};
