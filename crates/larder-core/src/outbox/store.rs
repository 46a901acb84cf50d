//! The outbox and the inbox: policy over a backend's [`OutboxTransaction`] primitives.

use std::sync::Arc;
use std::time::Duration;

use tracing::Instrument;

use super::types::{
    Message, MessageId, MessageState, NewMessage, OutboxCounts, OutboxLimits, StoredMessage,
    encode_headers, partition_of,
};
use crate::error::{Error, Result};
use crate::events::now_micros;
use crate::uow::{Store, Uow, storage_span};

/// Header carrying the unit of work's actor.
pub const ACTOR_HEADER: &str = "larder-actor";
/// Header carrying the unit of work's correlation id.
pub const CORRELATION_HEADER: &str = "larder-correlation-id";

const TABLE: &str = "_larder_outbox";

/// Configures an [`Outbox`].
#[derive(Debug)]
pub struct OutboxBuilder {
    store: Store,
    limits: OutboxLimits,
    prepare: bool,
}

impl OutboxBuilder {
    /// Sets the limits checked at enqueue.
    pub fn limits(mut self, limits: OutboxLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Whether [`OutboxBuilder::open`] makes larder's tables ready (default `true`; turn it
    /// off when migrations are applied by `larder migrate` only).
    pub fn prepare(mut self, yes: bool) -> Self {
        self.prepare = yes;
        self
    }

    /// Opens the outbox.
    pub async fn open(self) -> Result<Outbox> {
        if self.prepare {
            let span = tracing::info_span!(
                "larder.outbox.prepare",
                db.system.name = self.store.backend_name(),
                db.operation.name = "prepare",
            );
            self.store
                .backend()
                .prepare_events()
                .instrument(span)
                .await?;
        }
        Ok(Outbox {
            inner: Arc::new(Inner {
                store: self.store,
                limits: self.limits,
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    store: Store,
    limits: OutboxLimits,
}

/// The transactional outbox of a [`Store`]: cheap to clone.
///
/// Messages are rows of larder's `_larder_outbox` table written in the caller's unit of
/// work, so they commit and roll back with the business data (a message is never
/// published for a rolled-back change, and never lost after a committed one). A
/// [`Relay`](super::Relay) publishes them after commit.
///
/// ```
/// use larder_core::outbox::{Message, Outbox};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_core::Result<()> {
/// let store = larder_core::Store::memory();
/// let outbox = Outbox::open(&store).await?;
/// let mut uow = store.begin().await?;
/// outbox
///     .enqueue(&mut uow, Message::json("orders.placed", &serde_json::json!({ "id": 7 }))?.with_key("order-7"))
///     .await?;
/// uow.commit().await?;
/// let mut uow = store.read().await?;
/// assert_eq!(outbox.status(&mut uow).await?.pending, 1);
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

macro_rules! ob_span {
    ($uow:expr, $name:literal, $op:literal, $key:expr) => {
        storage_span!(
            &*$uow,
            $name,
            $op,
            TABLE,
            $key,
            messaging.system = tracing::field::Empty,
            messaging.destination.name = tracing::field::Empty,
            messaging.message.id = tracing::field::Empty,
            messaging.batch.message_count = tracing::field::Empty,
        )
    };
}

macro_rules! run {
    ($uow:expr, $span:expr, $op:literal, |$tx:ident| $call:expr) => {{
        let deadline = $uow.deadline();
        $uow.call_outbox($op, deadline, &$span, |$tx| Box::pin($call))
            .await
    }};
}

impl Outbox {
    /// Opens the outbox of `store` with default limits, making its tables ready.
    pub async fn open(store: &Store) -> Result<Outbox> {
        Outbox::builder(store).open().await
    }

    /// Configures the outbox of `store`.
    pub fn builder(store: &Store) -> OutboxBuilder {
        OutboxBuilder {
            store: store.clone(),
            limits: OutboxLimits::default(),
            prepare: true,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The limits checked at enqueue.
    pub fn limits(&self) -> &OutboxLimits {
        &self.inner.limits
    }

    /// Enqueues one message in `uow` (see [`Outbox::enqueue_all`]).
    pub async fn enqueue(&self, uow: &mut Uow, message: Message) -> Result<MessageId> {
        let ids = self.enqueue_all(uow, [message]).await?;
        Ok(ids[0])
    }

    /// Enqueues messages in `uow`: they are stored when it commits and never if it rolls
    /// back. Every message is checked first (topic, key, payload and header limits: typed
    /// errors, nothing stored); the unit of work's actor and correlation id are added as
    /// headers (`larder-actor`, `larder-correlation-id`) unless the message sets them. An
    /// id that is already stored fails with [`Error::AlreadyExists`] and stores nothing.
    pub async fn enqueue_all(
        &self,
        uow: &mut Uow,
        messages: impl IntoIterator<Item = Message>,
    ) -> Result<Vec<MessageId>> {
        let messages: Vec<Message> = messages.into_iter().collect();
        let first_key = messages.first().and_then(|m| m.key.clone());
        let span = ob_span!(
            uow,
            "larder.outbox.enqueue",
            "enqueue",
            first_key.as_deref()
        );
        if let Some(m) = messages.first() {
            span.record("messaging.destination.name", m.topic.as_str());
            span.record("messaging.message.id", tracing::field::display(m.id));
        }
        span.record("messaging.batch.message_count", messages.len() as u64);
        let prep = self.prepare_rows(uow, messages);
        let (ids, rows) = match prep {
            Ok(r) => r,
            Err(e) => {
                uow.record_failure(&span, "outbox.enqueue", Some(TABLE), None, &e);
                return Err(e);
            }
        };
        let n = rows.len() as u64;
        let rows = &rows;
        let result = run!(uow, span, "outbox.enqueue", |tx| async move {
            let parts = tx.partitions();
            // Partitions depend on the backend's table: computed here, once.
            let rows: Vec<NewMessage> = rows
                .iter()
                .cloned()
                .map(|mut r| {
                    r.partition = partition_of(r.key.as_deref(), r.id, parts);
                    r
                })
                .collect();
            tx.enqueue(&rows).await
        });
        if result.is_ok() && n > 0 {
            uow.note_enqueued();
        }
        uow.finish_op(&span, "outbox.enqueue", Some(TABLE), None, &result, |_| n);
        result.map(|()| ids)
    }

    fn prepare_rows(
        &self,
        uow: &Uow,
        messages: Vec<Message>,
    ) -> Result<(Vec<MessageId>, Vec<NewMessage>)> {
        if uow.is_read_only() {
            return Err(Error::ReadOnly {
                operation: "outbox.enqueue",
            });
        }
        let limits = &self.inner.limits;
        if messages.len() > limits.max_batch {
            return Err(Error::LimitExceeded {
                what: "messages per enqueue",
                actual: messages.len() as u64,
                limit: limits.max_batch as u64,
            });
        }
        let now = now_micros();
        let mut seen = std::collections::HashSet::new();
        let mut ids = Vec::with_capacity(messages.len());
        let mut rows = Vec::with_capacity(messages.len());
        for mut m in messages {
            if let Some(a) = uow.actor() {
                m.headers
                    .entry(ACTOR_HEADER.to_owned())
                    .or_insert_with(|| a.to_owned());
            }
            if let Some(c) = uow.correlation_id() {
                m.headers
                    .entry(CORRELATION_HEADER.to_owned())
                    .or_insert_with(|| c.to_owned());
            }
            m.validate(limits)?;
            if !seen.insert(m.id) {
                return Err(Error::AlreadyExists {
                    entity: "message",
                    id: m.id.to_string(),
                });
            }
            ids.push(m.id);
            rows.push(NewMessage {
                id: m.id.0,
                headers: encode_headers(&m.headers),
                topic: m.topic,
                key: m.key,
                partition: 0,
                payload: m.payload,
                enqueued_at_micros: now,
            });
        }
        Ok((ids, rows))
    }

    /// Counters: pending, parked (behind a dead letter of their key), dead, delivered and
    /// skipped messages not yet purged, the oldest pending message.
    pub async fn status(&self, uow: &mut Uow) -> Result<OutboxCounts> {
        let span = ob_span!(uow, "larder.outbox.status", "status", None::<&str>);
        let r = run!(uow, span, "outbox.status", |tx| tx.counts());
        uow.finish_op(&span, "outbox.status", Some(TABLE), None, &r, |c| c.total());
        r
    }

    /// Dead letters in log order, after `after` (exclusive), at most `limit`.
    pub async fn dead_letters(
        &self,
        uow: &mut Uow,
        after: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>> {
        self.list(uow, MessageState::Dead, after, limit).await
    }

    /// Messages in `state` in log order, after `after` (exclusive), at most `limit`.
    pub async fn list(
        &self,
        uow: &mut Uow,
        state: MessageState,
        after: Option<MessageId>,
        limit: u32,
    ) -> Result<Vec<StoredMessage>> {
        let span = ob_span!(uow, "larder.outbox.list", "list", None::<&str>);
        let limit = limit.min(crate::spec::Limits::default().max_page_size);
        let r = run!(uow, span, "outbox.list", |tx| tx.list(
            state,
            after.map(|a| a.0),
            limit
        ));
        uow.finish_op(&span, "outbox.list", Some(TABLE), None, &r, |v| {
            v.len() as u64
        });
        r
    }

    /// One message by id.
    pub async fn get(&self, uow: &mut Uow, id: MessageId) -> Result<Option<StoredMessage>> {
        let span = ob_span!(uow, "larder.outbox.get", "get", None::<&str>);
        span.record("messaging.message.id", tracing::field::display(id));
        let r = run!(uow, span, "outbox.get", |tx| tx.get(id.0));
        uow.finish_op(&span, "outbox.get", Some(TABLE), None, &r, |m| {
            u64::from(m.is_some())
        });
        r
    }

    /// Makes a dead letter pending again (attempts reset): the relay publishes it next,
    /// then its key's parked messages in order. [`Error::UnknownMessage`] if it is not a
    /// dead letter.
    pub async fn replay(&self, uow: &mut Uow, id: MessageId) -> Result<()> {
        self.move_dead(uow, id, MessageState::Pending).await
    }

    /// Gives up on a dead letter: it is never published and its key's parked messages
    /// flow again. [`Error::UnknownMessage`] if it is not a dead letter.
    pub async fn skip(&self, uow: &mut Uow, id: MessageId) -> Result<()> {
        self.move_dead(uow, id, MessageState::Skipped).await
    }

    async fn move_dead(&self, uow: &mut Uow, id: MessageId, to: MessageState) -> Result<()> {
        let (span, op) = if to == MessageState::Skipped {
            (
                ob_span!(uow, "larder.outbox.skip", "skip", None::<&str>),
                "outbox.skip",
            )
        } else {
            (
                ob_span!(uow, "larder.outbox.replay", "replay", None::<&str>),
                "outbox.replay",
            )
        };
        span.record("messaging.message.id", tracing::field::display(id));
        let r = if uow.is_read_only() {
            Err(Error::ReadOnly { operation: op })
        } else {
            let deadline = uow.deadline();
            let now = now_micros();
            uow.call_outbox(op, deadline, &span, |tx| {
                Box::pin(async move {
                    if tx.set_state(id.0, MessageState::Dead, to, now).await? {
                        Ok(())
                    } else {
                        Err(Error::UnknownMessage {
                            id: id.0,
                            state: "dead",
                        })
                    }
                })
            })
            .await
        };
        if r.is_ok() {
            uow.note_enqueued();
        }
        uow.finish_op(&span, op, Some(TABLE), None, &r, |_| 1);
        r
    }

    /// Deletes at most `limit` delivered or skipped messages done more than `older_than`
    /// ago; returns how many (retention; the relay also runs it on its own schedule).
    pub async fn purge(&self, uow: &mut Uow, older_than: Duration, limit: u32) -> Result<u64> {
        let span = ob_span!(uow, "larder.outbox.purge", "purge", None::<&str>);
        let before = now_micros().saturating_sub(micros(older_than));
        let r = if uow.is_read_only() {
            Err(Error::ReadOnly {
                operation: "outbox.purge",
            })
        } else {
            run!(uow, span, "outbox.purge", |tx| tx.purge(before, limit))
        };
        uow.finish_op(&span, "outbox.purge", Some(TABLE), None, &r, |n| *n);
        r
    }
}

pub(crate) fn micros(d: Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// What [`Inbox::process_once`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Processed<R> {
    /// The handler ran (its writes commit with the inbox record).
    Applied(R),
    /// The message was processed before: the handler did not run.
    Duplicate,
}

impl<R> Processed<R> {
    /// Whether the handler ran.
    pub fn is_applied(&self) -> bool {
        matches!(self, Processed::Applied(_))
    }
}

/// The inbox of a consumer side: makes handlers idempotent by recording each processed
/// message id in the same transaction as the handler's writes.
///
/// ```
/// use larder_core::outbox::{Inbox, MessageId, Processed};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_core::Result<()> {
/// let store = larder_core::Store::memory();
/// let inbox = Inbox::open(&store).await?;
/// let id = MessageId::new();
/// for _ in 0..3 {
///     let mut uow = store.begin().await?;
///     let r = inbox.process_once(&mut uow, "billing", id, |_uow| Box::pin(async { Ok(1) })).await?;
///     uow.commit().await?;
///     let _ = r;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Inbox {
    store: Store,
}

impl Inbox {
    /// Opens the inbox of `store`, making larder's tables ready.
    pub async fn open(store: &Store) -> Result<Inbox> {
        store.backend().prepare_events().await?;
        Ok(Inbox {
            store: store.clone(),
        })
    }

    /// The inbox of `store` whose tables are known to be ready.
    pub fn new(store: &Store) -> Inbox {
        Inbox {
            store: store.clone(),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Runs `handler` in `uow` unless `consumer` already processed `message`, and records
    /// the message id in the same unit of work: commit it, and a redelivery of the same id
    /// returns [`Processed::Duplicate`] without running the handler. A concurrent delivery
    /// of the same id waits for the first one's commit (then is a duplicate) or rollback
    /// (then it runs). A handler error is returned as is; roll the unit of work back.
    pub async fn process_once<R, F>(
        &self,
        uow: &mut Uow,
        consumer: &str,
        message: MessageId,
        handler: F,
    ) -> Result<Processed<R>>
    where
        F: for<'u> FnOnce(&'u mut Uow) -> crate::backend::BoxFuture<'u, Result<R>>,
    {
        super::types::check_consumer(consumer)?;
        let span = storage_span!(
            &*uow,
            "larder.inbox.record",
            "record",
            "_larder_inbox",
            Some(consumer),
            messaging.message.id = tracing::field::display(message),
        );
        let r = if uow.is_read_only() {
            Err(Error::ReadOnly {
                operation: "inbox.record",
            })
        } else {
            let now = now_micros();
            let deadline = uow.deadline();
            uow.call_outbox("inbox.record", deadline, &span, |tx| {
                tx.inbox_record(consumer, message.0, now)
            })
            .await
        };
        uow.finish_op(
            &span,
            "inbox.record",
            Some("_larder_inbox"),
            None,
            &r,
            |n| u64::from(*n),
        );
        if r? {
            Ok(Processed::Applied(handler(uow).await?))
        } else {
            Ok(Processed::Duplicate)
        }
    }

    /// Deletes at most `limit` inbox records older than `older_than` (a redelivery older
    /// than that is no longer recognised: keep it above the brokers' redelivery window).
    pub async fn purge(&self, uow: &mut Uow, older_than: Duration, limit: u32) -> Result<u64> {
        let span = storage_span!(
            &*uow,
            "larder.inbox.purge",
            "purge",
            "_larder_inbox",
            None::<&str>
        );
        let before = now_micros().saturating_sub(micros(older_than));
        let r = if uow.is_read_only() {
            Err(Error::ReadOnly {
                operation: "inbox.purge",
            })
        } else {
            let deadline = uow.deadline();
            uow.call_outbox("inbox.purge", deadline, &span, |tx| {
                tx.inbox_purge(before, limit)
            })
            .await
        };
        uow.finish_op(&span, "inbox.purge", Some("_larder_inbox"), None, &r, |n| {
            *n
        });
        r
    }
}
