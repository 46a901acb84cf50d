//! The event store: appends in the unit of work, a gap-free global log, subscriptions,
//! snapshots, upcasting, aggregates and projections.
//!
//! ```
//! use larder_core::events::{EventData, EventStore, ExpectedVersion, Checkpoint, EventFilter};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> larder_core::Result<()> {
//! let store = larder_core::Store::memory();
//! let events = EventStore::open(&store).await?;
//!
//! let mut uow = store.begin().await?;
//! events
//!     .append(&mut uow, "order-1", ExpectedVersion::NoStream, vec![
//!         EventData::new("OrderPlaced", &serde_json::json!({ "total": 42 }))?,
//!     ])
//!     .await?;
//! let committed = uow.commit().await?;
//! assert!(committed.position.is_some());
//!
//! let mut uow = store.read().await?;
//! let page = events.read_all(&mut uow, Checkpoint::START, 100, &EventFilter::all()).await?;
//! assert_eq!(page.events.len(), 1);
//! # Ok(()) }
//! ```
//!
//! # The global log never skips
//!
//! A reader that resumes from a [`Checkpoint`] never misses an event that commits later
//! with an earlier position. PostgreSQL stores the appending transaction's id with each
//! event and readers only read below the oldest transaction still running (the *commit
//! horizon*), in `(transaction, position)` order; appenders are never serialized. SQLite has
//! one writer at a time, so `AUTOINCREMENT` positions are allocated in commit order and are
//! never reused. The memory backend serializes writers the same way.

mod aggregate;
mod backend;
mod projection;
mod store;
pub(crate) mod subscription;
mod types;

pub use aggregate::{Aggregate, EventSourced};
pub use backend::{
    EventRows, EventTransaction, EventVisitor, LogStats, NewEvent, ReadAllBatch, RowsBatch,
    StoredCheckpoint, VisitedBatch,
};
pub use projection::{
    BatchError, FailedEvent, Projection, ProjectionFailure, ProjectionRetry, ProjectionRunner,
    ProjectionState, ProjectionStatus, RebuildProgress,
};
pub use store::{EventLimits, EventRoutes, EventStore, EventStoreBuilder, Upcaster, now_micros};
pub use subscription::Subscription;
pub use types::{
    AppendResult, Checkpoint, DomainEvent, EventData, EventFilter, EventPage, EventRef,
    ExpectedVersion, HorizonHolder, Metadata, ReadAll, ReadAllEnd, ReadDirection, RecordedEvent,
    Snapshot, StreamInfo, category_of,
};
