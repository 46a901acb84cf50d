//! larder-sql: the SQL backend, written once over dialects; the PostgreSQL and SQLite
//! crates implement the dialect hooks.
//!
//! **Not semver-stable.** Use the `larder` facade.
//!
//! - [`dialect`]: what a dialect provides — [`SqlDialect`] (errors, binding, decoding,
//!   deadlines, commit, the migration lock) and [`LogDialect`] (the event-log algorithms).
//! - [`tx`]: [`SqlTx`], one transaction of any dialect: the repository primitives,
//!   transaction control where the server decides the commit, savepoints, rollback on drop.
//! - [`events`]: the event store's shared primitives on [`SqlTx`] (stream reads,
//!   snapshots, checkpoints).
//! - [`compile`]: resolved plans ([`Select`], [`Pred`]) to parameter-bound SQL through
//!   sea-query, for each [`Dialect`]. Identifiers come only from the entity registry
//!   ([`EntityDef`], validated); every value is a bound parameter, so literal values never
//!   change the SQL text.
//! - [`ddl`]: `CREATE TABLE` / `CREATE INDEX` for an entity, as run by `Store::register` and
//!   as you would put in a migration.
//! - [`pool`]: [`SqlPool`], what every SQL backend holds (pool, capabilities, endpoint) and
//!   does with it (register, migrate, prepare the event store).
//! - [`schema`]: registering an entity's table (create, or check an existing one), and
//!   preparing the event store's tables.
//! - [`migrate`]: migration sources, the runner, and [`SqlMigrationDriver`] for any dialect.
#![deny(rustdoc::broken_intra_doc_links)]

pub mod blobrefs;
pub mod compile;
pub mod ddl;
pub mod dialect;
pub mod driver;
pub mod events;
pub mod migrate;
pub mod outbox;
pub mod pool;
pub mod schema;
pub mod tx;

pub use compile::{Built, Dialect, Shape};
pub use dialect::{LogDialect, SqlDialect, SqlRow};
pub use driver::{Missing, decode_record};
pub use migrate::SqlMigrationDriver;
pub use pool::SqlPool;
pub use tx::{Kind, SqlTx, bounded_connection, roll_back, sql_tx};

#[doc(hidden)]
pub use sqlx;

#[doc(no_inline)]
pub use larder_core::{EntityDef, query::Select, spec::Pred};
