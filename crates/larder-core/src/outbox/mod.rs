//! The transactional outbox, its relay and the inbox.
//!
//! - [`Outbox::enqueue`] writes a [`Message`] in the business unit of work: it commits or
//!   rolls back with the business data.
//! - A [`Relay`] publishes committed messages through a [`Sink`] (Redis Streams, NATS
//!   JetStream, RabbitMQ, MQTT, HTTP in `larder-relay`; stdout, a JSON-lines file and
//!   memory here) at least once, in per-key order, with backoff, dead letters that park
//!   their key, and partition leases shared by any number of relays.
//! - An [`Inbox`] makes consumers idempotent: [`Inbox::process_once`] records the message
//!   id in the handler's own transaction.
//!
//! # Why a table
//!
//! Publishing from domain code or from a commit hook loses messages (a crash between
//! commit and publish) or publishes changes that rolled back. A row in the same
//! transaction cannot: the database decides both. The relay then turns "committed" into
//! "acknowledged by the broker", and de-duplication by message id (the broker's, or the
//! inbox) turns at-least-once into effectively once.
//!
//! # Order without skips
//!
//! A key's messages are published in the order their transactions appear in the log. On
//! PostgreSQL every row records its transaction id and the relay reads only below the
//! oldest transaction still running, as the event log's readers do: a message that
//! commits late with an earlier position is never skipped and never overtaken. SQLite and
//! the memory backend have one writer at a time, so positions are in commit order.

mod backend;
mod relay;
mod sinks;
mod store;
mod types;

pub use backend::{Failure, OutboxTransaction, PartitionLease};
pub use relay::{
    BatchReport, Outgoing, Relay, RelayBuilder, RelayCounters, RelayStats, Sink, SinkError,
};
pub use sinks::{JsonLinesSink, MemorySink, Published, StdoutSink, json_line};
pub use store::{ACTOR_HEADER, CORRELATION_HEADER, Inbox, Outbox, OutboxBuilder, Processed};
pub use types::{
    MAX_NAME_BYTES, Message, MessageId, MessageState, NewMessage, OutboxCounts, OutboxLimits,
    StoredMessage, decode_headers, partition_of,
};
