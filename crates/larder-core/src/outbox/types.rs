//! The outbox's vocabulary: messages, their validated names, stored rows and counters.

use std::collections::BTreeMap;
use std::fmt;

use uuid::Uuid;

use crate::error::{Error, Result};

/// Longest topic, key, header name or consumer name, in bytes.
pub const MAX_NAME_BYTES: usize = 255;

/// Checks a topic, key, header name or consumer name: 1 to [`MAX_NAME_BYTES`] bytes, no
/// control characters.
fn check_name(what: &'static str, s: &str) -> Result<()> {
    if s.is_empty() {
        return Err(Error::InvalidMessage(format!(
            "{what} is empty; give it a name such as `orders.placed`"
        )));
    }
    if s.len() > MAX_NAME_BYTES {
        return Err(Error::LimitExceeded {
            what,
            actual: s.len() as u64,
            limit: MAX_NAME_BYTES as u64,
        });
    }
    if s.chars().any(char::is_control) {
        return Err(Error::InvalidMessage(format!(
            "{what} contains a control character; use printable characters only"
        )));
    }
    Ok(())
}

/// Checks a consumer name (the inbox's, a relay's): as a topic.
pub(crate) fn check_consumer(s: &str) -> Result<()> {
    check_name("consumer name", s)
}

/// A message's unique id: a UUID v7 by default (time-ordered), or the caller's own for
/// idempotent enqueues. Sinks hand it to the broker for de-duplication (NATS
/// `Nats-Msg-Id`, an HTTP idempotency key, a Redis stream field).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(pub Uuid);

impl MessageId {
    /// A new time-ordered id (UUID v7).
    pub fn new() -> MessageId {
        MessageId(Uuid::now_v7())
    }
}

impl Default for MessageId {
    fn default() -> Self {
        MessageId::new()
    }
}

impl From<Uuid> for MessageId {
    fn from(u: Uuid) -> Self {
        MessageId(u)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for MessageId {
    type Err = Error;
    fn from_str(s: &str) -> Result<MessageId> {
        Uuid::parse_str(s.trim()).map(MessageId).map_err(|_| {
            Error::InvalidMessage(format!(
                "`{}` is not a message id; message ids are UUIDs",
                crate::error::one_line(s)
            ))
        })
    }
}

/// A message to publish: enqueued with [`Outbox::enqueue`](super::Outbox::enqueue) in the
/// business transaction, published by a [`Relay`](super::Relay) after commit.
///
/// Messages with the same `key` are delivered in the order their transactions appear in
/// the log; messages without a key have no ordering constraint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Unique id (UUID v7 unless set).
    pub id: MessageId,
    /// Where the sink publishes it (a stream, subject, routing key, MQTT topic, URL path).
    pub topic: String,
    /// Ordering key (`None`: no ordering constraint).
    pub key: Option<String>,
    /// The body, as bytes.
    pub payload: Vec<u8>,
    /// Headers (the unit of work's actor and correlation id are added as `larder-actor`
    /// and `larder-correlation-id` unless set).
    pub headers: BTreeMap<String, String>,
}

impl Message {
    /// A message with a new id, no key and no headers.
    pub fn new(topic: impl Into<String>, payload: impl Into<Vec<u8>>) -> Message {
        Message {
            id: MessageId::new(),
            topic: topic.into(),
            key: None,
            payload: payload.into(),
            headers: BTreeMap::new(),
        }
    }

    /// A message whose payload is `value` as JSON (header `content-type:
    /// application/json`).
    pub fn json<T: serde::Serialize + ?Sized>(
        topic: impl Into<String>,
        value: &T,
    ) -> Result<Message> {
        let payload = serde_json::to_vec(value).map_err(|e| Error::Mapping {
            direction: "encode",
            entity: "message payload",
            source: Box::new(e),
        })?;
        Ok(Message::new(topic, payload).with_header("content-type", "application/json"))
    }

    /// Sets the ordering key.
    pub fn with_key(mut self, key: impl Into<String>) -> Message {
        self.key = Some(key.into());
        self
    }

    /// Sets the id (idempotent enqueue: enqueuing an id that is already stored fails with
    /// [`Error::AlreadyExists`]).
    pub fn with_id(mut self, id: impl Into<MessageId>) -> Message {
        self.id = id.into();
        self
    }

    /// Adds a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Message {
        self.headers.insert(name.into(), value.into());
        self
    }

    /// Checks the message against `limits` (typed errors, before anything is stored).
    pub fn validate(&self, limits: &OutboxLimits) -> Result<()> {
        check_name("topic", &self.topic)?;
        if let Some(k) = &self.key {
            check_name("message key", k)?;
        }
        if self.payload.len() > limits.max_payload_bytes {
            return Err(Error::LimitExceeded {
                what: "message payload bytes",
                actual: self.payload.len() as u64,
                limit: limits.max_payload_bytes as u64,
            });
        }
        if self.headers.len() > limits.max_headers {
            return Err(Error::LimitExceeded {
                what: "message headers",
                actual: self.headers.len() as u64,
                limit: limits.max_headers as u64,
            });
        }
        let mut bytes = 0usize;
        for (k, v) in &self.headers {
            check_name("header name", k)?;
            if v.chars().any(|c| c.is_control() && c != '\t') {
                return Err(Error::InvalidMessage(format!(
                    "header `{}` has a control character in its value; brokers and HTTP \
                     reject them",
                    crate::error::one_line(k)
                )));
            }
            bytes += k.len() + v.len();
        }
        if bytes > limits.max_header_bytes {
            return Err(Error::LimitExceeded {
                what: "message header bytes",
                actual: bytes as u64,
                limit: limits.max_header_bytes as u64,
            });
        }
        Ok(())
    }
}

/// Limits checked before a message is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct OutboxLimits {
    /// Largest payload (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Most headers per message (default 64).
    pub max_headers: usize,
    /// Largest sum of header names and values (default 16 KiB).
    pub max_header_bytes: usize,
    /// Most messages per [`Outbox::enqueue_all`](super::Outbox::enqueue_all) (default
    /// 1,000).
    pub max_batch: usize,
}

impl Default for OutboxLimits {
    fn default() -> Self {
        OutboxLimits {
            max_payload_bytes: 1 << 20,
            max_headers: 64,
            max_header_bytes: 16 << 10,
            max_batch: 1000,
        }
    }
}

impl OutboxLimits {
    /// Sets [`OutboxLimits::max_payload_bytes`].
    pub fn with_max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }

    /// Sets [`OutboxLimits::max_headers`].
    pub fn with_max_headers(mut self, n: usize) -> Self {
        self.max_headers = n;
        self
    }

    /// Sets [`OutboxLimits::max_header_bytes`].
    pub fn with_max_header_bytes(mut self, n: usize) -> Self {
        self.max_header_bytes = n;
        self
    }

    /// Sets [`OutboxLimits::max_batch`].
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }
}

/// Where a stored message is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessageState {
    /// Waiting to be published (possibly backing off after a failed attempt, or parked
    /// behind a dead letter of its key).
    Pending,
    /// Published and acknowledged by the broker.
    Delivered,
    /// Failed `max_attempts` times (or was refused as poison): it holds its key's later
    /// messages back until it is replayed or skipped.
    Dead,
    /// A dead letter an operator skipped: never published, its key released.
    Skipped,
}

impl MessageState {
    /// The stored code.
    pub fn code(self) -> i64 {
        match self {
            MessageState::Pending => 0,
            MessageState::Delivered => 1,
            MessageState::Dead => 2,
            MessageState::Skipped => 3,
        }
    }

    /// The state of a stored code.
    pub fn from_code(c: i64) -> Result<MessageState> {
        Ok(match c {
            0 => MessageState::Pending,
            1 => MessageState::Delivered,
            2 => MessageState::Dead,
            3 => MessageState::Skipped,
            _ => {
                return Err(Error::InvalidMessage(format!(
                    "unknown stored message state {c}"
                )));
            }
        })
    }

    /// Lowercase name (`pending`, `delivered`, `dead`, `skipped`).
    pub fn as_str(self) -> &'static str {
        match self {
            MessageState::Pending => "pending",
            MessageState::Delivered => "delivered",
            MessageState::Dead => "dead",
            MessageState::Skipped => "skipped",
        }
    }
}

impl fmt::Display for MessageState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A message as the outbox stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Unique id.
    pub id: MessageId,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub key: Option<String>,
    /// Partition (a hash of the key, or of the id without one).
    pub partition: u32,
    /// Body.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
    /// The position of the enqueueing transaction in the log (the order of a key's
    /// messages).
    pub seq: crate::events::Checkpoint,
    /// State.
    pub state: MessageState,
    /// Failed publish attempts so far.
    pub attempts: u32,
    /// The last publish error.
    pub last_error: Option<String>,
    /// When it was enqueued, microseconds since the Unix epoch.
    pub enqueued_at_micros: i64,
    /// When it may be tried again after a failure, microseconds since the Unix epoch; 0
    /// for a message never attempted or replayed (due at once, whatever the clocks say).
    pub due_at_micros: i64,
    /// When it was delivered, dead-lettered or skipped.
    pub done_at_micros: Option<i64>,
}

/// Counters of the outbox (see [`Outbox::status`](super::Outbox::status)).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct OutboxCounts {
    /// Pending messages that are not parked (ready, or backing off).
    pub pending: u64,
    /// Pending messages held back behind a dead letter of their key.
    pub parked: u64,
    /// Dead letters.
    pub dead: u64,
    /// Delivered messages not yet removed by retention.
    pub delivered: u64,
    /// Skipped dead letters not yet removed by retention.
    pub skipped: u64,
    /// When the oldest pending message was enqueued (microseconds since the Unix epoch).
    pub oldest_pending_micros: Option<i64>,
    /// The highest failed-attempt count of a pending message.
    pub max_attempts_pending: u32,
}

impl OutboxCounts {
    /// Every message the table holds.
    pub fn total(&self) -> u64 {
        self.pending + self.parked + self.dead + self.delivered + self.skipped
    }
}

/// A message validated and encoded for storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Unique id.
    pub id: Uuid,
    /// Topic.
    pub topic: String,
    /// Ordering key.
    pub key: Option<String>,
    /// Partition.
    pub partition: u32,
    /// Body.
    pub payload: Vec<u8>,
    /// Headers as a JSON object (`None`: no headers).
    pub headers: Option<String>,
    /// Microseconds since the Unix epoch.
    pub enqueued_at_micros: i64,
}

/// Encodes headers for storage (`None` when empty).
pub(crate) fn encode_headers(h: &BTreeMap<String, String>) -> Option<String> {
    (!h.is_empty()).then(|| serde_json::to_string(h).unwrap_or_else(|_| "{}".into()))
}

/// Decodes stored headers.
pub fn decode_headers(s: Option<&str>) -> Result<BTreeMap<String, String>> {
    match s {
        None => Ok(BTreeMap::new()),
        Some(s) => serde_json::from_str(s).map_err(|e| {
            Error::InvalidMessage(format!("stored headers are not a JSON object: {e}"))
        }),
    }
}

/// The partition of a message: FNV-1a of the key (or of the id) modulo `partitions`.
/// Stable across processes, versions and platforms (it is stored).
pub fn partition_of(key: Option<&str>, id: Uuid, partitions: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let bytes: &[u8] = match key {
        Some(k) => k.as_bytes(),
        None => id.as_bytes(),
    };
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    // The remainder is below `partitions`, a u32.
    u32::try_from(h % u64::from(partitions.max(1))).unwrap_or(0)
}
