//! # larder
//!
//! The persistence layer of a Rust domain service: a **unit of work** that owns one
//! transaction, generic **repositories** with **specification** queries, keyset pagination,
//! streaming and **optimistic concurrency**, on embedded SQLite (the default: no server),
//! PostgreSQL, or in memory — all behind one API that passes one conformance suite.
//!
//! ```
//! use larder::{Entity, Query, Order, field};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Entity)]
//! #[larder(table = "orders", document)]
//! struct Purchase {
//!     id: String,
//!     #[larder(indexed)]
//!     status: String,
//!     #[larder(indexed)]
//!     total_cents: i64,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> larder::Result<()> {
//! let store = larder::open("memory://").await?; // or "sqlite://app.db", "postgres://…"
//! store.register::<Purchase>().await?;
//!
//! let mut uow = store.begin().await?;
//! uow.repo::<Purchase>()
//!     .insert(&Purchase { id: "o-1".into(), status: "open".into(), total_cents: 4_200 })
//!     .await?;
//! uow.commit().await?;
//!
//! let mut uow = store.read().await?;
//! let page = uow
//!     .repo::<Purchase>()
//!     .find(&Query::new(field("status").eq("open")).order_by(Order::desc("total_cents")))
//!     .await?;
//! assert_eq!(page.items.len(), 1);
//! # Ok(()) }
//! ```
//!
//! ## Why a unit of work and not `&PgPool` everywhere?
//!
//! Every write a use case makes (several repositories, later the event log and the outbox)
//! must commit or vanish together. A [`Uow`] owns the transaction; it commits only when
//! you say so and rolls back on error, on panic and on drop. Hooks run around commit and
//! rollback, a deadline bounds the whole thing, and every operation inside is traced and
//! audited with the unit of work's actor and correlation id.
//!
//! ## Feature flags
//!
//! - `sqlite` (default): the embedded SQLite backend.
//! - `postgres`: the PostgreSQL backend.
//! - `tls-rustls`: TLS for PostgreSQL (`sslmode=require`, `verify-ca`, `verify-full`;
//!   rustls with ring and the webpki roots). Without it, those modes fail to connect with
//!   [`Error::Configuration`].
//! - `derive` (default): `#[derive(Entity)]`.
//!
//! The memory backend is always available (`memory://`).
#![deny(rustdoc::broken_intra_doc_links)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod blocking;
pub mod migrate;

use std::sync::Arc;

pub use larder_core::{
    AsLarderError, AuditRecord, AuditSink, Capabilities, Committed, DatabaseUrl, Deadline,
    Direction, Entity, EntityDef, Error, FieldDef, FieldRef, FieldType, FieldValue, IndexDef, Json,
    Limits, MAX_BOUND_VALUES, MAX_INDEXED_TEXT_BYTES, MemoryAuditSink, Nulls, Order, Page, Query,
    Record, Repo, Result, Settings, Spec, Storage, Store, StoreConfig, TracingAuditSink,
    TransactionOptions, TransientKind, Uow, UowOptions, Value, Versioned, field,
};

/// `#[derive(Entity)]`: maps a struct to a document or to columns.
///
/// ```ignore
/// #[derive(Serialize, Deserialize, Entity)]
/// #[larder(table = "orders", document)]       // omit `document` for mapped columns
/// #[larder(index = "status, total_cents")]    // a multi-column index
/// struct Order {
///     id: Uuid,                                // or mark another field `#[larder(id)]`
///     #[larder(indexed)]                       // queryable, indexed column
///     status: String,
///     #[larder(column = "total")]              // columns mode: store under another name
///     total_cents: i64,
///     #[larder(skip)]                          // columns mode: not stored
///     cache: Vec<u8>,
///     #[larder(with = "money", type = "text")] // custom conversion
///     price: Money,
/// }
/// ```
#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use larder_derive::Entity;

/// Embeds `<root>/<module>/migrations/` folders into the binary at compile time:
/// `let set = larder::migrate::set_from_embedded(larder::embed_migrations!("db"))?;`
#[cfg(feature = "derive")]
#[cfg_attr(docsrs, doc(cfg(feature = "derive")))]
pub use larder_derive::embed_migrations;

/// The event store: appends in the unit of work, a gap-free global log, subscriptions,
/// snapshots, upcasting, event-sourced aggregates and projections. See [`EventStore`].
pub mod events {
    pub use larder_core::events::{
        Aggregate, AppendResult, BatchError, Checkpoint, DomainEvent, EventData, EventFilter,
        EventLimits, EventPage, EventRef, EventRoutes, EventRows, EventSourced, EventStore,
        EventStoreBuilder, EventTransaction, EventVisitor, ExpectedVersion, FailedEvent,
        HorizonHolder, LogStats, Metadata, NewEvent, Projection, ProjectionFailure,
        ProjectionRetry, ProjectionRunner, ProjectionState, ProjectionStatus, ReadAll,
        ReadAllBatch, ReadAllEnd, ReadDirection, RebuildProgress, RecordedEvent, RowsBatch,
        Snapshot, StoredCheckpoint, StreamInfo, Subscription, Upcaster, VisitedBatch, category_of,
        now_micros,
    };
}

pub use larder_core::events::{
    DomainEvent, EventData, EventSourced, EventStore, ExpectedVersion, Projection, ProjectionRunner,
};

/// Blobs: validated keys, a store with larder's policy (SHA-256, limits, spans, deadlines)
/// over memory or the local filesystem; S3 and Azure Blob with the features `blob-s3` and
/// `blob-azure` (`larder::blob::blobs_from_url`).
pub mod blob {
    #[cfg(any(feature = "blob-s3", feature = "blob-azure"))]
    pub use larder_blob::{ObjectStoreBlobs, blobs_from_url, redact};
    pub use larder_core::blob::*;
}

/// The transactional outbox (messages committed with the business data), its relay
/// (at-least-once, per-key order, dead letters that park their key, shared by any number
/// of relays) and the inbox (idempotent consumers). See [`Outbox`] and [`Relay`]; broker
/// sinks live in `larder-relay`.
pub mod outbox {
    pub use larder_core::outbox::*;
}

pub use larder_core::outbox::{Inbox, Message, Outbox, Relay};

/// Broker sinks of the outbox relay (features `relay-redis`, `relay-nats`, `relay-amqp`,
/// `relay-mqtt`, `relay-http`) and [`relay::sink_from_url`].
#[cfg(any(
    feature = "relay-redis",
    feature = "relay-nats",
    feature = "relay-amqp",
    feature = "relay-mqtt",
    feature = "relay-http"
))]
#[cfg_attr(
    docsrs,
    doc(cfg(any(
        feature = "relay-redis",
        feature = "relay-nats",
        feature = "relay-amqp",
        feature = "relay-mqtt",
        feature = "relay-http"
    )))
)]
pub mod relay {
    pub use larder_relay::*;
}

/// Specifications: filters over registered fields, with a builder and a JSON form.
pub mod spec {
    pub use larder_core::spec::{FieldExpr, Limits, MAX_BOUND_VALUES, Spec, escape_like, field};
}

/// Queries, ordering, pages and cursors.
pub mod query {
    pub use larder_core::query::{Direction, Nulls, Order, Page, Query};
}

/// Settings and secret-safe URLs.
pub mod settings {
    pub use larder_core::settings::{
        DEFAULT_BLOB_URL, DatabaseUrl, OutboxSettings, PostgresSettings, Settings, SqliteSettings,
        SslMode, Synchronous, redact_url,
    };
}

/// The audit trail.
pub mod audit {
    pub use larder_core::audit::{AuditRecord, AuditSink, MemoryAuditSink, TracingAuditSink};
}

/// For backend implementors: the storage contract and the in-memory reference backend.
pub mod backend {
    pub use larder_core::backend::{
        Backend, BeginOptions, BoxFuture, BoxStream, Capabilities, Transaction,
    };
    pub use larder_core::memory::MemoryBackend;
}

/// SQL rendering shared by the SQL backends: DDL for an entity (for migration files).
pub mod sql {
    pub use larder_sql::{Dialect, ddl};
}

/// The SQLite backend (`sqlite://path`), with raw connection access in a unit of work.
#[cfg(feature = "sqlite")]
#[cfg_attr(docsrs, doc(cfg(feature = "sqlite")))]
pub mod sqlite {
    pub use larder_sqlite::{SqliteBackend, SqliteTransaction, SqliteUowExt, classify};
}

/// The PostgreSQL backend (`postgres://…`), with raw connection access in a unit of work.
#[cfg(feature = "postgres")]
#[cfg_attr(docsrs, doc(cfg(feature = "postgres")))]
pub mod postgres {
    pub use larder_postgres::{PgBackend, PgTransaction, PgUowExt, classify};
}

/// Opens a store from a URL: `sqlite://path/to.db` (created if missing), `postgres://…`
/// (also `postgresql://`), or `memory://`. Other settings take their defaults.
pub async fn open(url: &str) -> Result<Store> {
    connect(&Settings::from_url(url)).await
}

/// Opens the store described by the environment (and the TOML file named by
/// `LARDER_CONFIG`): see [`settings`]. With nothing configured this is
/// `sqlite://larder.db` in the working directory.
pub async fn from_env() -> Result<Store> {
    connect(&Settings::from_env()?).await
}

/// Builds the store that `settings` describe: settings are the client factory.
pub async fn connect(settings: &Settings) -> Result<Store> {
    let config = settings.store_config();
    let scheme = settings.database_url.scheme();
    match scheme.as_str() {
        "memory" => Ok(Store::with_config(
            Arc::new(larder_core::memory::MemoryBackend::new()),
            config,
        )),
        #[cfg(feature = "sqlite")]
        "sqlite" => Ok(larder_sqlite::SqliteBackend::connect(settings)
            .await?
            .into_store(config)),
        #[cfg(feature = "postgres")]
        "postgres" | "postgresql" => Ok(larder_postgres::PgBackend::connect(settings)
            .await?
            .into_store(config)),
        #[cfg(not(feature = "sqlite"))]
        "sqlite" => Err(not_compiled("sqlite")),
        #[cfg(not(feature = "postgres"))]
        "postgres" | "postgresql" => Err(not_compiled("postgres")),
        _ => Err(Error::Configuration(format!(
            "unsupported database url `{}`: expected sqlite://, postgres:// or memory://",
            settings.database_url
        ))),
    }
}

#[allow(dead_code)]
fn not_compiled(feature: &str) -> Error {
    Error::Configuration(format!(
        "this backend is not compiled in: enable larder's `{feature}` feature"
    ))
}

/// `store.transaction(…)` without the `Box::pin(async move { … })` around the body:
///
/// ```
/// # async fn demo(store: larder::Store) -> Result<(), larder::Error> {
/// let n: u64 = larder::transaction!(store, |uow| {
///     // … repository and event-store calls through `uow` (a `&mut larder::Uow`) …
///     Ok::<_, larder::Error>(1)
/// })
/// .await?;
/// # Ok(()) }
/// ```
///
/// The same semantics as [`Store::transaction`]: commit on `Ok`, rollback on `Err` or panic,
/// the whole body run again on transient failures; the future is `Send` (fine for
/// `tokio::spawn` and web handlers). The body is an `async move` block made once per
/// attempt and may outlive any borrow, so what it uses from around it is cloned per
/// attempt: `larder::transaction!(store, clone(name, counter), |uow| { … })`. `larder::transaction!(store, opts, policy, |uow| { … })`
/// is [`Store::transaction_with`]. Why a macro and not an async closure
/// (`store.transaction(async |uow| …)`): on stable Rust the future of an async closure
/// that borrows anything it captures is not provably `Send` across the retry loop
/// (rustc's "implementation of `Send` is not general enough"), so such a signature would
/// break every caller inside `tokio::spawn`.
#[macro_export]
macro_rules! transaction {
    ($store:expr, |$uow:ident| $body:block) => {
        $store.transaction(|$uow: &mut $crate::Uow| ::std::boxed::Box::pin(async move $body))
    };
    ($store:expr, clone($($c:ident),+ $(,)?), |$uow:ident| $body:block) => {
        $store.transaction(|$uow: &mut $crate::Uow| {
            $(let $c = ::std::clone::Clone::clone(&$c);)+
            ::std::boxed::Box::pin(async move $body)
        })
    };
    ($store:expr, $opts:expr, $policy:expr, |$uow:ident| $body:block) => {
        $store.transaction_with($opts, $policy, |$uow: &mut $crate::Uow| {
            ::std::boxed::Box::pin(async move $body)
        })
    };
}

#[doc(hidden)]
pub mod __private {
    //! Macro plumbing for `#[derive(Entity)]` (semver-exempt).
    pub use larder_core::__private::{LazyLock, serde_json};
    pub use larder_core::entity::mapping_error;
    pub use larder_core::{
        Entity, EntityDef, FieldDef, FieldType, FieldValue, IndexDef, Record, Result, Storage,
        Value, decode_body, encode_body,
    };
}
