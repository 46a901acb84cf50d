//! larder-core: the ports, the specification AST, the unit of work and the in-memory
//! reference backend.
//!
//! **Not semver-stable.** Depend on the `larder` facade; this crate's API may change in any
//! release. Backend crates (`larder-sqlite`, `larder-postgres`) implement the small
//! [`Backend`]/[`Transaction`] contract; everything else (validation, limits, cursors,
//! retries, hooks, spans, audit) lives here once.
//!
//! This crate depends on no database driver (CI checks it).
#![deny(rustdoc::broken_intra_doc_links)]

pub mod audit;
pub mod backend;
pub mod blob;
pub mod deadline;
pub mod entity;
pub mod error;
pub mod eval;
pub mod events;
pub mod memory;
pub mod outbox;
pub mod query;
pub mod regex_dialect;
pub mod settings;
pub mod spec;
pub mod value;

mod repo;
mod uow;

pub use audit::{AuditRecord, AuditSink, MemoryAuditSink, TracingAuditSink};
pub use backend::{
    Backend, BeginOptions, BoxFuture, BoxStream, Capabilities, Endpoint, Transaction,
};
pub use deadline::Deadline;
pub use entity::{
    Entity, EntityDef, FieldDef, FieldRef, IndexDef, MAX_INDEXED_TEXT_BYTES, Record, Storage,
    Versioned, encode_body,
};
pub use error::{AsLarderError, BoxError, Error, Result, TransientKind};
pub use query::{Direction, Nulls, Order, Page, Query};
pub use repo::{Repo, decode_body};
pub use settings::{DatabaseUrl, Settings};
pub use spec::{Limits, MAX_BOUND_VALUES, Spec, field};
pub use uow::{Committed, Store, StoreConfig, TransactionOptions, Uow, UowOptions};
pub use value::{FieldType, FieldValue, Json, Value};

#[doc(hidden)]
pub mod __private {
    //! Macro plumbing for `#[derive(Entity)]` (semver-exempt).
    pub use serde_json;
    pub use std::sync::LazyLock;
}
