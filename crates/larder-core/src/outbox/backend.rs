//! The outbox primitives a backend implements; policy (validation, limits, headers,
//! partitions, leases' fair share, backoff, dead-lettering, spans, audit) lives in
//! [`Outbox`](super::Outbox) and [`Relay`](super::Relay).

use uuid::Uuid;

use super::types::{MessageState, NewMessage, OutboxCounts, StoredMessage};
use crate::backend::BoxFuture;
use crate::error::Result;

/// A failed publish attempt, as the relay records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The message.
    pub id: Uuid,
    /// The error, one line.
    pub error: String,
    /// When the message may be tried again (microseconds since the Unix epoch).
    pub due_at_micros: i64,
    /// Dead-letter it now (attempts exhausted, or refused as poison).
    pub dead: bool,
    /// Count the attempt (`false` for an outage: the broker never judged the message).
    pub count_attempt: bool,
}

/// A partition lease as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLease {
    /// The partition.
    pub partition: u32,
    /// The relay holding it (`None`: never taken, or released).
    pub owner: Option<String>,
    /// Until when (microseconds since the Unix epoch).
    pub until_micros: i64,
}

/// Outbox and inbox primitives inside one backend transaction.
///
/// # Contract
///
/// - `enqueue` stores every message or none; a stored id is refused with
///   [`Error::AlreadyExists`](crate::Error::AlreadyExists) (entity `message`). Rows commit
///   and roll back with the transaction.
/// - Every message gets a sequence in log order ([`StoredMessage::seq`]): the order of the
///   enqueueing transactions in the log, then the order of enqueues within one.
/// - `fetch_ready` returns pending messages of the given partitions whose `due_at` has
///   come, in sequence order, **never one while a message before it in sequence order may
///   still commit** (the event log's no-skip rule: PostgreSQL reads below its snapshot's
///   horizon), and never a message whose key has an earlier message that is dead or not
///   due yet (per-key order; keyless messages are never held back by others).
/// - Lease updates are conditional (`take_partitions` only takes a partition whose lease
///   expired or that the relay already holds), so two relays never hold one partition.
/// - Ids and names are already validated; values are bound, never interpolated.
pub trait OutboxTransaction: Send {
    /// How many partitions this backend's outbox has (fixed by its migration).
    fn partitions(&self) -> u32;

    /// Stores messages.
    fn enqueue<'a>(&'a mut self, messages: &'a [NewMessage]) -> BoxFuture<'a, Result<()>>;

    /// Ready messages of `partitions` (see the contract), at most `limit`, leaving out
    /// the messages `exclude` names (a relay's half that is published and still being
    /// recorded: they count as delivered and hold nothing back).
    fn fetch_ready<'a>(
        &'a mut self,
        partitions: &'a [u32],
        now_micros: i64,
        limit: u32,
        exclude: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>>;

    /// Marks pending messages delivered; returns how many were pending.
    fn mark_delivered<'a>(
        &'a mut self,
        ids: &'a [Uuid],
        now_micros: i64,
    ) -> BoxFuture<'a, Result<u64>>;

    /// Deletes pending messages that were delivered (a relay that keeps delivered messages
    /// for no time: cheaper than marking them); returns how many were pending.
    fn delete_delivered<'a>(&'a mut self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64>>;

    /// Records failed attempts of pending messages.
    fn mark_failed<'a>(
        &'a mut self,
        failures: &'a [Failure],
        now_micros: i64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Lets this transaction's commit return before it is durable where the backend has a
    /// per-transaction setting for it (PostgreSQL: `synchronous_commit = off` for this
    /// transaction only; elsewhere nothing). The relay's records use it: a record lost in a
    /// server crash only means its messages are published again, which at-least-once
    /// delivery allows; a committed record is still atomic and never half applied.
    fn relax_durability(&mut self) -> BoxFuture<'_, Result<()>> {
        Box::pin(std::future::ready(Ok(())))
    }

    /// Records that `relay` is alive and returns how many relays were seen since
    /// `live_after_micros` (itself included); forgets relays not seen since then.
    fn heartbeat<'a>(
        &'a mut self,
        relay: &'a str,
        now_micros: i64,
        live_after_micros: i64,
    ) -> BoxFuture<'a, Result<u32>>;

    /// Every partition's lease.
    fn leases(&mut self) -> BoxFuture<'_, Result<Vec<PartitionLease>>>;

    /// Gives `relay` the leases of `partitions` until `until_micros`, each only if it holds
    /// it already or its lease expired before `now_micros`; returns the partitions taken.
    fn take_partitions<'a>(
        &'a mut self,
        relay: &'a str,
        partitions: &'a [u32],
        now_micros: i64,
        until_micros: i64,
    ) -> BoxFuture<'a, Result<Vec<u32>>>;

    /// Releases `relay`'s leases of `partitions` (all of them when `None`) and, when
    /// `None`, forgets the relay.
    fn release_partitions<'a>(
        &'a mut self,
        relay: &'a str,
        partitions: Option<&'a [u32]>,
    ) -> BoxFuture<'a, Result<()>>;

    /// Counters.
    fn counts(&mut self) -> BoxFuture<'_, Result<OutboxCounts>>;

    /// Messages in `state` in sequence order after the message `after` (exclusive), at
    /// most `limit`.
    fn list<'a>(
        &'a mut self,
        state: MessageState,
        after: Option<Uuid>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>>;

    /// One message.
    fn get<'a>(&'a mut self, id: Uuid) -> BoxFuture<'a, Result<Option<StoredMessage>>>;

    /// Moves a message from `from` to `to` (attempts reset when it becomes pending, due
    /// now); returns whether it was in `from`.
    fn set_state<'a>(
        &'a mut self,
        id: Uuid,
        from: MessageState,
        to: MessageState,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Deletes at most `limit` delivered or skipped messages done before `before_micros`;
    /// returns how many.
    fn purge<'a>(&'a mut self, before_micros: i64, limit: u32) -> BoxFuture<'a, Result<u64>>;

    /// Records that `consumer` processed `message`; `false` if it was recorded before
    /// (a concurrent recorder of the same pair waits for the first one's outcome).
    fn inbox_record<'a>(
        &'a mut self,
        consumer: &'a str,
        message: Uuid,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<bool>>;

    /// Deletes at most `limit` inbox records older than `before_micros`.
    fn inbox_purge<'a>(&'a mut self, before_micros: i64, limit: u32) -> BoxFuture<'a, Result<u64>>;
}
