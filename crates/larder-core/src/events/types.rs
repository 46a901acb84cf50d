//! The event store's value types.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result, shown};

/// A position in the global log: everything at or before it has been seen.
///
/// Ordered as the log is read. On PostgreSQL it is the pair (appending transaction id,
/// position); on SQLite and in memory the transaction part is 0. Its text form
/// ([`Checkpoint::token`], also its serde form) is opaque: store it and hand it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Checkpoint {
    tx: u64,
    position: u64,
}

impl Checkpoint {
    /// Before the first event.
    pub const START: Checkpoint = Checkpoint { tx: 0, position: 0 };

    /// Built by backends from the stored pair.
    pub fn new(tx: u64, position: u64) -> Checkpoint {
        Checkpoint { tx, position }
    }

    /// The transaction part (0 where the backend orders by position alone).
    pub fn tx(&self) -> u64 {
        self.tx
    }

    /// The position part: the event's global position (unique, not necessarily dense).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The opaque text form, e.g. `c1.0.42`.
    pub fn token(&self) -> String {
        format!("c1.{}.{}", self.tx, self.position)
    }

    /// Parses a token made by [`Checkpoint::token`]; anything else is
    /// [`Error::InvalidCheckpoint`].
    pub fn from_token(token: &str) -> Result<Checkpoint> {
        let bad = |why: &str| Error::InvalidCheckpoint(format!("`{}`: {why}", shown(token)));
        if token.len() > 64 {
            return Err(bad("too long"));
        }
        let rest = token
            .strip_prefix("c1.")
            .ok_or_else(|| bad("not a larder checkpoint"))?;
        let (tx, pos) = rest
            .split_once('.')
            .ok_or_else(|| bad("expected two numbers"))?;
        let num = |s: &str| -> Result<u64> {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) || s.len() > 20 {
                return Err(bad("expected decimal numbers"));
            }
            s.parse::<u64>().map_err(|_| bad("number out of range"))
        };
        let cp = Checkpoint::new(num(tx)?, num(pos)?);
        if cp.tx > i64::MAX as u64 || cp.position > i64::MAX as u64 {
            return Err(bad("number out of range"));
        }
        Ok(cp)
    }
}

impl fmt::Display for Checkpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.token())
    }
}

impl FromStr for Checkpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        Checkpoint::from_token(s)
    }
}

impl Serialize for Checkpoint {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(&self.token())
    }
}

impl<'de> Deserialize<'de> for Checkpoint {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Checkpoint::from_token(&s).map_err(serde::de::Error::custom)
    }
}

/// The version a stream must be at for an append to go through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpectedVersion {
    /// No check.
    Any,
    /// The stream must not exist yet.
    NoStream,
    /// The stream must exist (any version). A conflict reports expected version 1.
    StreamExists,
    /// The stream's current version must be exactly this (0 = the stream does not exist).
    Exact(u64),
}

/// Metadata recorded with an event. `correlation_id` and `actor` default to the unit of
/// work's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metadata {
    /// The request or conversation the event belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<String>,
    /// The message (command, event) that caused this event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<String>,
    /// Who did it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub actor: Option<String>,
    /// Anything else, as JSON.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Metadata {
    pub(crate) fn is_empty(&self) -> bool {
        self.correlation_id.is_none()
            && self.causation_id.is_none()
            && self.actor.is_none()
            && self.extra.is_empty()
    }
}

/// An event to append.
#[derive(Debug, Clone, PartialEq)]
pub struct EventData {
    /// Unique across the whole log; appending the same id twice reports "already
    /// appended" instead of storing a duplicate. UUID v7 by default.
    pub id: Uuid,
    /// The event type, e.g. `OrderPlaced`.
    pub event_type: String,
    /// The payload's schema version (1 unless set), the key upcasters are registered under.
    pub schema_version: u32,
    /// The payload as JSON text.
    pub payload: String,
    /// Correlation/causation ids, actor, anything else.
    pub metadata: Metadata,
    /// Set when larder serialized the payload itself (see [`Serialized`]).
    pub(crate) serialized: Serialized,
}

/// A keyed fingerprint of a payload larder produced with `serde_json` (valid JSON by
/// construction): while the payload is unchanged, the append need not parse it again to
/// check it (≈ 2,300 instructions for a 200-byte payload against ≈ 250 for the
/// fingerprint). A payload changed through the public field no longer matches and is
/// checked like [`EventData::raw`]'s. The key is random per process, so a changed payload
/// cannot be made to match. Never part of equality.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Serialized(Option<u64>);

impl PartialEq for Serialized {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Serialized {
    fn key() -> &'static std::hash::RandomState {
        static KEY: std::sync::LazyLock<std::hash::RandomState> =
            std::sync::LazyLock::new(std::hash::RandomState::new);
        &KEY
    }

    /// The fingerprint of a payload `serde_json` just produced.
    pub(crate) fn of(payload: &str) -> Serialized {
        use std::hash::BuildHasher;
        Serialized(Some(Self::key().hash_one(payload)))
    }

    /// Whether `payload` is still the one this fingerprint was taken of.
    pub(crate) fn matches(self, payload: &str) -> bool {
        use std::hash::BuildHasher;
        self.0 == Some(Self::key().hash_one(payload))
    }
}

impl EventData {
    /// An event of `event_type` whose payload is `payload` serialized as JSON; a fresh
    /// UUID v7 id; schema version 1.
    pub fn new(event_type: impl Into<String>, payload: &impl Serialize) -> Result<EventData> {
        let payload = serde_json::to_string(payload)
            .map_err(|e| Error::InvalidEvent(format!("payload is not serializable: {e}")))?;
        Ok(EventData {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            serialized: Serialized::of(&payload),
            payload,
            metadata: Metadata::default(),
        })
    }

    /// A domain event, typed and versioned by its [`DomainEvent`] implementation.
    pub fn from_event<E: DomainEvent>(event: &E) -> Result<EventData> {
        let mut data = EventData::new(event.event_type(), event)?;
        data.schema_version = event.schema_version();
        Ok(data)
    }

    /// An event whose payload is already JSON text (checked when appended).
    pub fn raw(event_type: impl Into<String>, payload_json: impl Into<String>) -> EventData {
        EventData {
            id: Uuid::now_v7(),
            event_type: event_type.into(),
            schema_version: 1,
            payload: payload_json.into(),
            metadata: Metadata::default(),
            serialized: Serialized::default(),
        }
    }

    /// Sets the id (for idempotent retries: append the same ids again).
    #[must_use]
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Sets the schema version.
    #[must_use]
    pub fn with_schema_version(mut self, v: u32) -> Self {
        self.schema_version = v;
        self
    }

    /// Sets the metadata.
    #[must_use]
    pub fn with_metadata(mut self, metadata: Metadata) -> Self {
        self.metadata = metadata;
        self
    }

    /// Sets the causation id.
    #[must_use]
    pub fn with_causation_id(mut self, id: impl Into<String>) -> Self {
        self.metadata.causation_id = Some(id.into());
        self
    }
}

/// An event as stored in the log (after upcasting, when read through an
/// [`EventStore`](super::EventStore)).
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEvent {
    /// Where the event is in the global log.
    pub checkpoint: Checkpoint,
    /// The stream it belongs to.
    pub stream_id: String,
    /// Its version in the stream (1, 2, 3, … without gaps).
    pub stream_version: u64,
    /// Its unique id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: String,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload as JSON text.
    pub payload: String,
    /// Metadata as JSON text (`None` when empty).
    pub metadata: Option<String>,
    /// When it was appended: microseconds since the Unix epoch, by the appender's clock.
    pub recorded_at_micros: i64,
}

/// A recorded event borrowed from the driver's row buffer: what
/// [`EventStore::read_all_each`](crate::events::EventStore::read_all_each) hands to its
/// visitor, without copying the ids, type, payload and metadata into owned `String`s.
/// [`EventRef::to_owned`] gives a [`RecordedEvent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventRef<'a> {
    /// Where the event is in the global log.
    pub checkpoint: Checkpoint,
    /// The stream it belongs to.
    pub stream_id: &'a str,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its unique id.
    pub event_id: Uuid,
    /// Its type.
    pub event_type: &'a str,
    /// The payload's schema version.
    pub schema_version: u32,
    /// The payload as JSON text.
    pub payload: &'a str,
    /// Metadata as JSON text (`None` when empty).
    pub metadata: Option<&'a str>,
    /// When it was appended: microseconds since the Unix epoch, by the appender's clock.
    pub recorded_at_micros: i64,
}

impl EventRef<'_> {
    /// The global position.
    pub fn position(&self) -> u64 {
        self.checkpoint.position()
    }

    /// Decodes the payload as `T` straight from the row (no type check; see
    /// [`RecordedEvent::decode`] for the checked form).
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(self.payload).map_err(|e| Error::Mapping {
            entity: "event",
            direction: "decode",
            source: Box::new(e),
        })
    }

    /// Copies the event into an owned [`RecordedEvent`].
    pub fn to_owned(&self) -> RecordedEvent {
        RecordedEvent {
            checkpoint: self.checkpoint,
            stream_id: self.stream_id.to_owned(),
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: self.event_type.to_owned(),
            schema_version: self.schema_version,
            payload: self.payload.to_owned(),
            metadata: self.metadata.map(str::to_owned),
            recorded_at_micros: self.recorded_at_micros,
        }
    }
}

impl RecordedEvent {
    /// The global position.
    pub fn position(&self) -> u64 {
        self.checkpoint.position()
    }

    /// The event as an [`EventRef`] borrowing from it.
    pub fn as_ref(&self) -> EventRef<'_> {
        EventRef {
            checkpoint: self.checkpoint,
            stream_id: &self.stream_id,
            stream_version: self.stream_version,
            event_id: self.event_id,
            event_type: &self.event_type,
            schema_version: self.schema_version,
            payload: &self.payload,
            metadata: self.metadata.as_deref(),
            recorded_at_micros: self.recorded_at_micros,
        }
    }

    /// Decodes the payload as `T` (no type check; see [`RecordedEvent::decode`]).
    pub fn payload_as<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_str(&self.payload).map_err(|e| Error::Mapping {
            entity: "event",
            direction: "decode",
            source: Box::new(e),
        })
    }

    /// Decodes a domain event: fails with [`Error::UnknownEventType`] when `E` does not
    /// declare this event's type at this schema version.
    pub fn decode<E: DomainEvent>(&self) -> Result<E> {
        if !E::accepts(&self.event_type, self.schema_version) {
            return Err(Error::UnknownEventType {
                event_type: shown(&self.event_type),
                schema_version: self.schema_version,
            });
        }
        self.payload_as()
    }

    /// The metadata, parsed.
    pub fn metadata(&self) -> Result<Metadata> {
        match &self.metadata {
            None => Ok(Metadata::default()),
            Some(m) => serde_json::from_str(m).map_err(|e| Error::Mapping {
                entity: "event metadata",
                direction: "decode",
                source: Box::new(e),
            }),
        }
    }

    /// When it was appended.
    pub fn recorded_at(&self) -> SystemTime {
        let micros = u64::try_from(self.recorded_at_micros).unwrap_or(0);
        UNIX_EPOCH + Duration::from_micros(micros)
    }

    /// The stream's category (see [`category_of`]).
    pub fn category(&self) -> &str {
        category_of(&self.stream_id)
    }
}

/// The category of a stream: the part of its id before the first `-` (`order-42` →
/// `order`), or the whole id.
pub fn category_of(stream_id: &str) -> &str {
    stream_id.split_once('-').map_or(stream_id, |(c, _)| c)
}

/// A domain event type (usually an enum): its type names and schema versions.
///
/// The payload is the serde form of the value itself.
///
/// ```
/// use larder_core::events::DomainEvent;
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Serialize, Deserialize)]
/// enum OrderEvent { Placed { total: i64 }, Shipped }
///
/// impl DomainEvent for OrderEvent {
///     const TYPES: &'static [&'static str] = &["Placed", "Shipped"];
///     fn event_type(&self) -> &'static str {
///         match self { OrderEvent::Placed { .. } => "Placed", OrderEvent::Shipped => "Shipped" }
///     }
/// }
/// ```
pub trait DomainEvent: Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Every event type this type decodes.
    const TYPES: &'static [&'static str];

    /// The type name of this value.
    fn event_type(&self) -> &'static str;

    /// The schema version this value is written with (default 1).
    fn schema_version(&self) -> u32 {
        1
    }

    /// Whether a stored event (after upcasting) decodes as this type. Default: its type is
    /// in [`DomainEvent::TYPES`] and its schema version is 1.
    fn accepts(event_type: &str, schema_version: u32) -> bool {
        schema_version == 1 && Self::TYPES.contains(&event_type)
    }
}

/// Which way to read a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReadDirection {
    /// Oldest first, from a version upwards.
    #[default]
    Forward,
    /// Newest first, from a version downwards.
    Backward,
}

/// Which events of the global log to read. Empty lists mean "all".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EventFilter {
    /// Stream categories (`order` matches `order`, `order-1`, `order-2-x`, …; see
    /// [`category_of`]). A category contains no `-`.
    pub categories: Vec<String>,
    /// Event types.
    pub event_types: Vec<String>,
}

impl EventFilter {
    /// Every event.
    pub fn all() -> EventFilter {
        EventFilter::default()
    }

    /// Events of streams in this category.
    pub fn category(category: impl Into<String>) -> EventFilter {
        EventFilter {
            categories: vec![category.into()],
            event_types: Vec::new(),
        }
    }

    /// Events of these types.
    pub fn event_types<I: IntoIterator<Item = S>, S: Into<String>>(types: I) -> EventFilter {
        EventFilter {
            categories: Vec::new(),
            event_types: types.into_iter().map(Into::into).collect(),
        }
    }

    /// Also matches this category.
    #[must_use]
    pub fn or_category(mut self, category: impl Into<String>) -> Self {
        self.categories.push(category.into());
        self
    }

    /// Also requires one of these event types.
    #[must_use]
    pub fn and_event_types<I: IntoIterator<Item = S>, S: Into<String>>(mut self, types: I) -> Self {
        self.event_types.extend(types.into_iter().map(Into::into));
        self
    }

    /// Whether it lets everything through.
    pub fn is_all(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty()
    }

    /// Whether an event passes (the reference semantics the SQL backends implement).
    pub fn matches(&self, stream_id: &str, event_type: &str) -> bool {
        (self.categories.is_empty() || self.categories.iter().any(|c| category_of(stream_id) == c))
            && (self.event_types.is_empty() || self.event_types.iter().any(|t| t == event_type))
    }
}

/// What an append did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AppendResult {
    /// The stream's version after the append (its last event's version).
    pub stream_version: u64,
    /// The last appended event's place in the global log.
    pub checkpoint: Checkpoint,
    /// These event ids had been appended before (a retry after an unknown commit outcome):
    /// nothing was written; the versions and checkpoint are the original ones.
    pub already_appended: bool,
}

/// A page of the global log.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadAll {
    /// The events, in log order.
    pub events: Vec<RecordedEvent>,
    /// Where to resume: past every returned event, and past filtered-out events scanned.
    pub next: Checkpoint,
    /// Whether the reader reached the readable end of the log.
    pub end_of_log: bool,
}

/// The outcome of [`EventStore::read_all_each`](crate::events::EventStore::read_all_each):
/// like [`ReadAll`] without the events (the visitor saw them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadAllEnd {
    /// How many events the visitor saw.
    pub count: usize,
    /// Where to resume: past every visited event, and past filtered-out events scanned.
    pub next: Checkpoint,
    /// Whether the reader reached the readable end of the log.
    pub end_of_log: bool,
}

/// One page of the global log, kept as the rows the backend read: each event is decoded
/// when it is visited, borrowed from its row ([`EventRef`]: ids, type, payload and
/// metadata are not copied into owned `String`s). What
/// [`EventStore::read_all_page`](crate::events::EventStore::read_all_page) and
/// [`EventStore::stream_all_pages`](crate::events::EventStore::stream_all_pages) return
/// and [`Projection::handle_page`](crate::events::Projection::handle_page) receives;
/// [`EventPage::to_events`] gives the owned events.
///
/// ```ignore
/// let page = es.read_all_page(&mut uow, after, 1_000, &EventFilter::all()).await?;
/// for e in page.iter() {
///     let e = e?;                              // a row that does not decode is an error
///     total += e.payload_as::<ItemAdded>()?.qty;
/// }
/// let after = page.next_checkpoint();
/// ```
pub struct EventPage {
    rows: Box<dyn crate::events::EventRows>,
    next: Checkpoint,
    end_of_log: bool,
}

impl EventPage {
    pub(crate) fn new(
        rows: Box<dyn crate::events::EventRows>,
        next: Checkpoint,
        end_of_log: bool,
    ) -> EventPage {
        EventPage {
            rows,
            next,
            end_of_log,
        }
    }

    /// How many events the page holds.
    pub fn len(&self) -> usize {
        self.rows.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// The event at `i` (`None`: past the end), decoded from its row.
    pub fn get(&self, i: usize) -> Option<Result<EventRef<'_>>> {
        (i < self.rows.len()).then(|| self.rows.event(i))
    }

    /// The events in log order, each decoded from its row as it is reached.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = Result<EventRef<'_>>> + '_ {
        (0..self.rows.len()).map(|i| self.rows.event(i))
    }

    /// Where to resume: past every event of the page, and past filtered-out events scanned
    /// (as [`ReadAll::next`]).
    pub fn next_checkpoint(&self) -> Checkpoint {
        self.next
    }

    /// Whether the reader reached the readable end of the log (as [`ReadAll::end_of_log`]).
    pub fn end_of_log(&self) -> bool {
        self.end_of_log
    }

    /// The events copied into owned [`RecordedEvent`]s.
    pub fn to_events(&self) -> Result<Vec<RecordedEvent>> {
        self.iter().map(|e| e.map(|e| e.to_owned())).collect()
    }

    /// The page as an owned [`ReadAll`].
    pub fn to_read_all(&self) -> Result<ReadAll> {
        Ok(ReadAll {
            events: self.to_events()?,
            next: self.next,
            end_of_log: self.end_of_log,
        })
    }
}

impl fmt::Debug for EventPage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventPage")
            .field("events", &self.rows.len())
            .field("next", &self.next)
            .field("end_of_log", &self.end_of_log)
            .finish()
    }
}

/// A stream's metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamInfo {
    /// Its current version (number of events).
    pub version: u64,
}

/// A stored aggregate snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct Snapshot {
    /// The stream it summarizes.
    pub stream_id: String,
    /// The stream version it includes.
    pub stream_version: u64,
    /// The state's schema version (a snapshot of another version is ignored).
    pub schema_version: u32,
    /// The state as JSON text.
    pub state: String,
}

/// The oldest running transaction holding the global log's commit horizon back, as
/// [`EventStore::horizon_holder`](super::EventStore::horizon_holder) reports it.
///
/// On PostgreSQL readers only see events below the oldest transaction still running that
/// has a transaction id (one that has written anything), in **any** database of the
/// cluster: until it ends, every event committed after it started stays unreadable — a
/// session left idle in a transaction, or a long batch job elsewhere, stalls every
/// subscriber and projection. Memory and SQLite have one writer at a time: nothing holds
/// their log back.
///
/// Its [`Display`](fmt::Display) form is one line for people, e.g. `held back by pid 4242
/// (database reports, application psql, idle in transaction for 93 s); 17 committed
/// events not yet readable`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct HorizonHolder {
    /// The server process id of the session running it (`None` for a prepared
    /// transaction, which has no session).
    pub pid: Option<u32>,
    /// The global id of a prepared transaction (`PREPARE TRANSACTION 'gid'`); `None` for a
    /// session's transaction.
    pub prepared_gid: Option<String>,
    /// The database it runs in (`None` when the server does not say).
    pub database: Option<String>,
    /// The role it runs as (`None` when the server does not say).
    pub user: Option<String>,
    /// The session's `application_name` (`None` when empty or hidden).
    pub application_name: Option<String>,
    /// The session's state, e.g. `idle in transaction` or `active`; `prepared` for a
    /// prepared transaction; `None` when the server hides it (other roles' sessions need
    /// `pg_read_all_stats`).
    pub state: Option<String>,
    /// How long ago its transaction started (for a prepared transaction: was prepared);
    /// `None` when hidden.
    pub transaction_age: Option<Duration>,
    /// Its transaction id, which is the horizon: the log's readers see only events of
    /// transactions older than it (comparable with [`Checkpoint::tx`]).
    pub backend_xid: u64,
    /// How far it holds the log back: committed events of this log not readable yet
    /// because it is still running.
    pub held_events: u64,
}

impl HorizonHolder {
    /// A holder with transaction id `backend_xid` holding back `held_events` events; the
    /// other fields start empty (backends fill in what they know).
    pub fn new(backend_xid: u64, held_events: u64) -> HorizonHolder {
        HorizonHolder {
            pid: None,
            prepared_gid: None,
            database: None,
            user: None,
            application_name: None,
            state: None,
            transaction_age: None,
            backend_xid,
            held_events,
        }
    }
}

impl fmt::Display for HorizonHolder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("held back by ")?;
        match (&self.pid, &self.prepared_gid) {
            (Some(pid), _) => write!(f, "pid {pid}")?,
            (None, Some(gid)) => write!(f, "prepared transaction `{}`", shown(gid))?,
            (None, None) => write!(f, "transaction {}", self.backend_xid)?,
        }
        let mut parts = Vec::new();
        if let Some(db) = &self.database {
            parts.push(format!("database {}", shown(db)));
        }
        if let Some(app) = &self.application_name {
            parts.push(format!("application {}", shown(app)));
        }
        match (&self.state, self.transaction_age) {
            (Some(state), Some(age)) => {
                parts.push(format!("{} for {} s", shown(state), age.as_secs()));
            }
            (Some(state), None) => parts.push(shown(state)),
            (None, Some(age)) => parts.push(format!("in a transaction for {} s", age.as_secs())),
            (None, None) => {}
        }
        if !parts.is_empty() {
            write!(f, " ({})", parts.join(", "))?;
        }
        let n = self.held_events;
        write!(
            f,
            "; {n} committed event{} not yet readable",
            if n == 1 { "" } else { "s" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn horizon_holders_print_on_one_line() {
        let mut h = HorizonHolder::new(540_440, 17);
        h.pid = Some(4242);
        h.database = Some("reports".into());
        h.application_name = Some("psql".into());
        h.state = Some("idle in transaction".into());
        h.transaction_age = Some(Duration::from_millis(93_400));
        assert_eq!(
            h.to_string(),
            "held back by pid 4242 (database reports, application psql, idle in \
             transaction for 93 s); 17 committed events not yet readable"
        );
        let mut p = HorizonHolder::new(7, 1);
        p.prepared_gid = Some("batch\n1".into());
        p.state = Some("prepared".into());
        assert_eq!(
            p.to_string(),
            "held back by prepared transaction `batch\\n1` (prepared); 1 committed event \
             not yet readable"
        );
        assert_eq!(
            HorizonHolder::new(9, 0).to_string(),
            "held back by transaction 9; 0 committed events not yet readable"
        );
    }

    #[test]
    fn tokens_round_trip_and_reject_garbage() {
        let cp = Checkpoint::new(7, 42);
        assert_eq!(Checkpoint::from_token(&cp.token()).unwrap(), cp);
        for bad in [
            "",
            "c1.",
            "c1.1",
            "c1.1.",
            "c1.-1.2",
            "c1.1.2.3",
            "c2.1.2",
            "c1.99999999999999999999999.1",
            "c1.1.+2",
            "c1.9223372036854775808.1",
            "'; drop table larder_events; --",
        ] {
            assert!(
                matches!(
                    Checkpoint::from_token(bad),
                    Err(Error::InvalidCheckpoint(_))
                ),
                "{bad}"
            );
        }
        let json = serde_json::to_string(&cp).unwrap();
        assert_eq!(serde_json::from_str::<Checkpoint>(&json).unwrap(), cp);
    }

    #[test]
    fn checkpoints_order_by_tx_then_position() {
        assert!(Checkpoint::new(1, 9) < Checkpoint::new(2, 1));
        assert!(Checkpoint::new(2, 1) < Checkpoint::new(2, 2));
    }

    #[test]
    fn categories() {
        assert_eq!(category_of("order-1-2"), "order");
        assert_eq!(category_of("plain"), "plain");
        let f = EventFilter::category("order");
        assert!(f.matches("order-1", "X"));
        assert!(!f.matches("orders-1", "X"));
        assert!(f.matches("order", "X"));
        assert!(!f.matches("ord-1", "X"));
    }
}
