//! [`EventStore`]: validation, limits, idempotency, upcasting, spans and deadlines over a
//! backend's [`EventTransaction`].

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::Instrument;
use uuid::Uuid;

use super::backend::{EventTransaction, LogStats, NewEvent, StoredCheckpoint};
use super::subscription::Subscription;
use super::types::{
    AppendResult, Checkpoint, EventData, EventFilter, EventPage, EventRef, ExpectedVersion,
    HorizonHolder, ReadAll, ReadAllEnd, ReadDirection, RecordedEvent, Snapshot, StreamInfo,
};
use crate::backend::{BoxFuture, BoxStream};
use crate::deadline::Deadline;
use crate::error::{Error, Result, shown};
use crate::uow::{Store, Uow};

/// Caps on what the event store accepts (typed [`Error::LimitExceeded`] before any I/O).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct EventLimits {
    /// Events per append (default 1,000).
    pub max_batch: usize,
    /// Bytes of one event's payload (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Bytes of one event's metadata (default 64 KiB).
    pub max_metadata_bytes: usize,
    /// Bytes of a stream id (default 200).
    pub max_stream_id_bytes: usize,
    /// Bytes of an event type, category or consumer name (default 200).
    pub max_name_bytes: usize,
    /// Events per read (default 10,000).
    pub max_read: u32,
    /// Entries in an [`EventFilter`] (default 64).
    pub max_filter_entries: usize,
}

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_batch: 1_000,
            max_payload_bytes: 1 << 20,
            max_metadata_bytes: 64 << 10,
            max_stream_id_bytes: 200,
            max_name_bytes: 200,
            max_read: 10_000,
            max_filter_entries: 64,
        }
    }
}

impl EventLimits {
    /// Sets [`EventLimits::max_batch`].
    #[must_use]
    pub fn with_max_batch(mut self, n: usize) -> Self {
        self.max_batch = n;
        self
    }

    /// Sets [`EventLimits::max_payload_bytes`].
    #[must_use]
    pub fn with_max_payload_bytes(mut self, n: usize) -> Self {
        self.max_payload_bytes = n;
        self
    }

    /// Sets [`EventLimits::max_read`].
    #[must_use]
    pub fn with_max_read(mut self, n: u32) -> Self {
        self.max_read = n;
        self
    }
}

/// Rewrites a stored event of an older schema (or type) into a newer one. It must change
/// the event's schema version or type; upcasters run until none matches.
pub type Upcaster = Arc<dyn Fn(&mut RecordedEvent) -> Result<()> + Send + Sync>;

/// Configures an [`EventStore`].
pub struct EventStoreBuilder {
    store: Store,
    limits: EventLimits,
    upcasters: HashMap<(String, u32), Upcaster>,
    snapshot_every: HashMap<String, u64>,
    poll_interval: Duration,
    prepare: bool,
    routes: Option<EventRoutes>,
}

/// Which appended events the event store enqueues in the outbox, and to which topic
/// ([`EventStoreBuilder::publish_events`]). A route by event type wins over one by
/// stream category, which wins over the catch-all; an event no route matches is not
/// enqueued.
///
/// Each message has the event's id as its id (a re-append that is already appended
/// enqueues nothing twice), the stream id as its key (per-stream order), the event's
/// JSON payload, and the headers `larder-event-type`, `larder-schema-version`,
/// `larder-stream-version` and `content-type: application/json`.
#[derive(Debug, Clone, Default)]
pub struct EventRoutes {
    by_type: HashMap<String, String>,
    by_category: HashMap<String, String>,
    all: Option<String>,
}

impl EventRoutes {
    /// No routes.
    pub fn new() -> EventRoutes {
        EventRoutes::default()
    }

    /// Events of streams of `category` (the part of the stream id before the first `-`)
    /// go to `topic`.
    #[must_use]
    pub fn category(mut self, category: impl Into<String>, topic: impl Into<String>) -> Self {
        self.by_category.insert(category.into(), topic.into());
        self
    }

    /// Events of `event_type` go to `topic`.
    #[must_use]
    pub fn event_type(mut self, event_type: impl Into<String>, topic: impl Into<String>) -> Self {
        self.by_type.insert(event_type.into(), topic.into());
        self
    }

    /// Every other event goes to `topic`.
    #[must_use]
    pub fn all_to(mut self, topic: impl Into<String>) -> Self {
        self.all = Some(topic.into());
        self
    }

    fn topic(&self, stream: &str, event_type: &str) -> Option<&str> {
        self.by_type
            .get(event_type)
            .or_else(|| self.by_category.get(super::types::category_of(stream)))
            .or(self.all.as_ref())
            .map(String::as_str)
    }
}

impl fmt::Debug for EventStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStoreBuilder")
            .field("limits", &self.limits)
            .field("upcasters", &self.upcasters.keys().collect::<Vec<_>>())
            .field("snapshot_every", &self.snapshot_every)
            .field("poll_interval", &self.poll_interval)
            .field("prepare", &self.prepare)
            .finish_non_exhaustive()
    }
}

impl EventStoreBuilder {
    /// Whether [`open`](EventStoreBuilder::open) makes the tables ready by applying
    /// larder's built-in migration module when it is pending (default `true`). Turn it off
    /// when migrations run at deploy time (`larder migrate up`) or the role the service
    /// connects with may not create tables.
    #[must_use]
    pub fn prepare(mut self, yes: bool) -> Self {
        self.prepare = yes;
        self
    }

    /// Enqueues appended events in the outbox, in the appending unit of work, by
    /// `routes` (the transactional outbox for event-sourced services: an event is
    /// published if and only if its append commits). The outbox's default limits apply.
    #[must_use]
    pub fn publish_events(mut self, routes: EventRoutes) -> Self {
        self.routes = Some(routes);
        self
    }

    /// Input caps.
    #[must_use]
    pub fn limits(mut self, limits: EventLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Registers an upcaster for events of `event_type` stored with `schema_version`. It
    /// runs on every read path (streams, the global log, subscriptions, projections and
    /// their rebuilds).
    #[must_use]
    pub fn upcaster(
        mut self,
        event_type: impl Into<String>,
        schema_version: u32,
        f: impl Fn(&mut RecordedEvent) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.upcasters
            .insert((event_type.into(), schema_version), Arc::new(f));
        self
    }

    /// Registers a JSON upcaster: `f` rewrites the payload of `event_type` events stored
    /// with `schema_version`, which then become `schema_version + 1`.
    #[must_use]
    pub fn upcast_json(
        self,
        event_type: impl Into<String>,
        schema_version: u32,
        f: impl Fn(serde_json::Value) -> Result<serde_json::Value> + Send + Sync + 'static,
    ) -> Self {
        self.upcaster(event_type, schema_version, move |e| {
            let value: serde_json::Value = e.payload_as()?;
            let value = f(value)?;
            e.payload = serde_json::to_string(&value).map_err(|err| Error::Mapping {
                entity: "event",
                direction: "encode",
                source: Box::new(err),
            })?;
            e.schema_version += 1;
            Ok(())
        })
    }

    /// Snapshot aggregates of `category` every `n` events (see
    /// [`EventStore::save`](EventStore::save)); overrides
    /// [`EventSourced::SNAPSHOT_EVERY`](super::EventSourced::SNAPSHOT_EVERY).
    #[must_use]
    pub fn snapshot_every(mut self, category: impl Into<String>, n: u64) -> Self {
        self.snapshot_every.insert(category.into(), n);
        self
    }

    /// How often subscriptions and waiters poll when no wake-up arrives (default 250 ms).
    #[must_use]
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// Makes the backend's event tables ready and builds the store.
    pub async fn open(self) -> Result<EventStore> {
        let span = tracing::info_span!(
            "larder.events.prepare",
            db.system.name = self.store.backend_name(),
            db.operation.name = "prepare",
        );
        if self.prepare {
            self.store
                .backend()
                .prepare_events()
                .instrument(span)
                .await?;
        }
        let publish = match self.routes {
            Some(r) => Some((
                crate::outbox::Outbox::builder(&self.store)
                    .prepare(false)
                    .open()
                    .await?,
                r,
            )),
            None => None,
        };
        Ok(EventStore {
            inner: Arc::new(Inner {
                publish,
                store: self.store,
                limits: self.limits,
                upcasters: self.upcasters,
                snapshot_every: self.snapshot_every,
                poll_interval: self.poll_interval,
            }),
        })
    }
}

pub(crate) struct Inner {
    publish: Option<(crate::outbox::Outbox, EventRoutes)>,
    pub(crate) store: Store,
    pub(crate) limits: EventLimits,
    upcasters: HashMap<(String, u32), Upcaster>,
    pub(crate) snapshot_every: HashMap<String, u64>,
    pub(crate) poll_interval: Duration,
}

/// The event store of a [`Store`]: cheap to clone.
///
/// Every operation runs in a [`Uow`] (appends commit with the unit of work's other
/// writes), is bounded by its deadline, is recorded as a `larder.events.<op>` span and
/// produces one audit record.
#[derive(Clone)]
pub struct EventStore {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for EventStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EventStore")
            .field("backend", &self.inner.store.backend_name())
            .field("limits", &self.inner.limits)
            .field("upcasters", &self.inner.upcasters.len())
            .finish_non_exhaustive()
    }
}

macro_rules! ev_span {
    ($uow:expr, $name:literal, $op:literal, $stream:expr) => {
        crate::uow::storage_span!(&*$uow, $name, $op, "larder_events", $stream)
    };
}

/// Runs one backend call on the event primitives through [`Uow::call_events`] (deadline,
/// backstop timer, span); `finish` records the outcome.
macro_rules! run {
    ($uow:expr, $span:expr, $op:literal, |$tx:ident| $call:expr) => {{
        let deadline = $uow.deadline();
        $uow.call_events($op, deadline, &$span, |$tx| Box::pin($call))
            .await
    }};
}

/// Now, in microseconds since the Unix epoch (the event store's timestamp unit).
pub fn now_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Where a reader of the global log resumes after a page of `count` events (the last one
/// at `last`) read after `after` with `limit`, and whether it reached the readable end: a
/// short page passes the filtered-out events up to the backend's `head` too.
fn resume(
    after: Checkpoint,
    limit: u32,
    count: usize,
    last: Option<Checkpoint>,
    head: Option<Checkpoint>,
) -> (Checkpoint, bool) {
    let full = count >= limit as usize;
    let mut next = last.unwrap_or(after);
    if !full && let Some(head) = head {
        next = next.max(head);
    }
    (next, !full)
}

fn finish<R>(
    uow: &Uow,
    span: &tracing::Span,
    op: &'static str,
    result: &Result<R>,
    rows: impl Fn(&R) -> u64,
) {
    uow.finish_op(span, op, Some("larder_events"), None, result, rows);
}

impl EventStore {
    /// Opens the event store of `store` with default settings, making its tables ready.
    pub async fn open(store: &Store) -> Result<EventStore> {
        EventStore::builder(store).open().await
    }

    /// Configures the event store of `store`.
    pub fn builder(store: &Store) -> EventStoreBuilder {
        EventStoreBuilder {
            store: store.clone(),
            limits: EventLimits::default(),
            upcasters: HashMap::new(),
            snapshot_every: HashMap::new(),
            poll_interval: Duration::from_millis(250),
            prepare: true,
            routes: None,
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// The limits in force.
    pub fn limits(&self) -> &EventLimits {
        &self.inner.limits
    }

    pub(crate) fn check_stream(&self, stream: &str) -> Result<()> {
        if stream.is_empty() {
            return Err(Error::InvalidEvent("stream id is empty".into()));
        }
        if stream.len() > self.inner.limits.max_stream_id_bytes {
            return Err(Error::LimitExceeded {
                what: "stream id length (bytes)",
                limit: self.inner.limits.max_stream_id_bytes as u64,
                actual: stream.len() as u64,
            });
        }
        if stream.chars().any(char::is_control) {
            return Err(Error::InvalidEvent(format!(
                "stream id `{}` contains control characters",
                shown(stream)
            )));
        }
        Ok(())
    }

    pub(crate) fn check_name(&self, what: &'static str, name: &str) -> Result<()> {
        if name.is_empty() {
            return Err(Error::InvalidEvent(format!("{what} is empty")));
        }
        if name.len() > self.inner.limits.max_name_bytes {
            return Err(Error::LimitExceeded {
                what,
                limit: self.inner.limits.max_name_bytes as u64,
                actual: name.len() as u64,
            });
        }
        if name.chars().any(char::is_control) {
            return Err(Error::InvalidEvent(format!(
                "{what} `{}` contains control characters",
                shown(name)
            )));
        }
        Ok(())
    }

    fn check_filter(&self, filter: &EventFilter) -> Result<()> {
        let n = filter.categories.len() + filter.event_types.len();
        if n > self.inner.limits.max_filter_entries {
            return Err(Error::LimitExceeded {
                what: "event filter entries",
                limit: self.inner.limits.max_filter_entries as u64,
                actual: n as u64,
            });
        }
        for c in &filter.categories {
            self.check_name("category", c)?;
            if c.contains('-') {
                return Err(Error::InvalidEvent(format!(
                    "category `{}` contains `-` (a category is the stream id before its first `-`)",
                    shown(c)
                )));
            }
        }
        for t in &filter.event_types {
            self.check_name("event type", t)?;
        }
        Ok(())
    }

    fn check_limit(&self, limit: u32) -> Result<()> {
        if limit == 0 {
            return Err(Error::InvalidQuery("read limit must be at least 1".into()));
        }
        if limit > self.inner.limits.max_read {
            return Err(Error::LimitExceeded {
                what: "events per read",
                limit: u64::from(self.inner.limits.max_read),
                actual: u64::from(limit),
            });
        }
        Ok(())
    }

    fn encode(&self, uow: &Uow, events: Vec<EventData>) -> Result<Vec<NewEvent>> {
        let limits = &self.inner.limits;
        if events.is_empty() {
            return Err(Error::InvalidEvent(
                "an append needs at least one event".into(),
            ));
        }
        if events.len() > limits.max_batch {
            return Err(Error::LimitExceeded {
                what: "events per append",
                limit: limits.max_batch as u64,
                actual: events.len() as u64,
            });
        }
        let now = now_micros();
        let mut ids = HashSet::with_capacity(events.len());
        let mut out = Vec::with_capacity(events.len());
        for mut e in events {
            self.check_name("event type", &e.event_type)?;
            if e.payload.len() > limits.max_payload_bytes {
                return Err(Error::LimitExceeded {
                    what: "event payload size (bytes)",
                    limit: limits.max_payload_bytes as u64,
                    actual: e.payload.len() as u64,
                });
            }
            if !e.serialized.matches(&e.payload)
                && serde_json::from_str::<serde::de::IgnoredAny>(&e.payload).is_err()
            {
                return Err(Error::InvalidEvent(format!(
                    "payload of `{}` is not valid JSON",
                    shown(&e.event_type)
                )));
            }
            if !ids.insert(e.id) {
                return Err(Error::InvalidEvent(format!(
                    "event id {} appears twice in one append",
                    e.id
                )));
            }
            if e.metadata.correlation_id.is_none() {
                e.metadata.correlation_id = uow.correlation_id().map(str::to_owned);
            }
            if e.metadata.actor.is_none() {
                e.metadata.actor = uow.actor().map(str::to_owned);
            }
            let metadata = if e.metadata.is_empty() {
                None
            } else {
                let m = serde_json::to_string(&e.metadata).map_err(|err| Error::Mapping {
                    entity: "event metadata",
                    direction: "encode",
                    source: Box::new(err),
                })?;
                if m.len() > limits.max_metadata_bytes {
                    return Err(Error::LimitExceeded {
                        what: "event metadata size (bytes)",
                        limit: limits.max_metadata_bytes as u64,
                        actual: m.len() as u64,
                    });
                }
                Some(m)
            };
            out.push(NewEvent {
                event_id: e.id,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
                metadata,
                recorded_at_micros: now,
            });
        }
        Ok(out)
    }

    /// Appends events to a stream in the unit of work's transaction, if the stream's
    /// version satisfies `expected`.
    ///
    /// - A wrong expected version is [`Error::Conflict`] naming the stream, the expected
    ///   and the actual version; the unit of work stays usable.
    /// - Appending event ids that are already in the log (a retry after an unknown commit
    ///   outcome) writes nothing and returns the original result with
    ///   [`AppendResult::already_appended`] set, never a duplicate.
    /// - Empty stream ids, bad type names, invalid JSON and oversized payloads or batches
    ///   are typed errors before any I/O.
    /// - On PostgreSQL, a unit of work whose transaction is older than the stream's last
    ///   appender fails with a retryable [`Error::Transient`] (appending would put the
    ///   stream's events out of version order in the global log): run it again, e.g. in
    ///   [`Store::transaction`](crate::Store::transaction), which does so by itself.
    pub async fn append(
        &self,
        uow: &mut Uow,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = EventData>,
    ) -> Result<AppendResult> {
        let span = ev_span!(uow, "larder.events.append", "append", stream);
        let prep = (|| {
            if uow.is_read_only() {
                return Err(Error::ReadOnly {
                    operation: "events.append",
                });
            }
            self.check_stream(stream)?;
            self.encode(uow, events.into_iter().collect())
        })();
        let rows = match prep {
            Ok(r) => r,
            Err(e) => {
                uow.record_failure(&span, "events.append", Some("larder_events"), None, &e);
                return Err(e);
            }
        };
        let ids: Vec<Uuid> = rows.iter().map(|r| r.event_id).collect();
        let n_events = ids.len() as u64;
        let ids = &ids;
        let rows = &rows;
        let result = run!(uow, span, "events.append", |tx| async move {
            // The backend refuses (without an error) a wrong version or an event id that
            // is already stored; the ids tell a retry from a conflict.
            match tx.append(stream, expected, rows).await? {
                Ok((version, checkpoint)) => Ok(AppendResult {
                    stream_version: version,
                    checkpoint,
                    already_appended: false,
                }),
                Err(actual) => match already_appended(tx, stream, ids).await? {
                    Some(r) => Ok(r),
                    None => Err(conflict(stream, expected, actual)),
                },
            }
        });
        if let Ok(r) = &result
            && !r.already_appended
        {
            uow.note_appended(r.checkpoint);
        }
        let result = match (result, &self.inner.publish) {
            (Ok(r), Some((outbox, routes))) if !r.already_appended => {
                let first = r.stream_version + 1 - rows.len() as u64;
                let msgs: Vec<crate::outbox::Message> = rows
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| {
                        let topic = routes.topic(stream, &e.event_type)?;
                        Some(
                            crate::outbox::Message::new(topic, e.payload.as_bytes())
                                .with_id(e.event_id)
                                .with_key(stream)
                                .with_header("content-type", "application/json")
                                .with_header("larder-event-type", e.event_type.as_str())
                                .with_header("larder-schema-version", e.schema_version.to_string())
                                .with_header(
                                    "larder-stream-version",
                                    (first + i as u64).to_string(),
                                ),
                        )
                    })
                    .collect();
                if msgs.is_empty() {
                    Ok(r)
                } else {
                    outbox.enqueue_all(uow, msgs).await.map(|_| r)
                }
            }
            (r, _) => r,
        };
        finish(uow, &span, "events.append", &result, |r| {
            if r.already_appended { 0 } else { n_events }
        });
        result
    }

    /// Reads a stream: `Forward` from version `from` (1 = the start) upwards, `Backward`
    /// from version `from` (`u64::MAX` = the end) downwards; at most `limit` events,
    /// upcast.
    pub async fn read_stream(
        &self,
        uow: &mut Uow,
        stream: &str,
        from: u64,
        limit: u32,
        direction: ReadDirection,
    ) -> Result<Vec<RecordedEvent>> {
        let span = ev_span!(uow, "larder.events.read_stream", "read_stream", stream);
        let result = match self
            .check_stream(stream)
            .and_then(|()| self.check_limit(limit))
        {
            Err(e) => Err(e),
            Ok(()) => {
                let from = from.min(i64::MAX as u64);
                run!(uow, span, "events.read_stream", |tx| tx
                    .read_stream(stream, from, limit, direction))
                .and_then(|evs| self.upcast_all(evs))
            }
        };
        finish(uow, &span, "events.read_stream", &result, |r| {
            r.len() as u64
        });
        result
    }

    /// Reads the global log after `after`, in log order, at most `limit` matching events,
    /// upcast. Never returns an event while one before it may still commit; resume from
    /// [`ReadAll::next`].
    pub async fn read_all(
        &self,
        uow: &mut Uow,
        after: Checkpoint,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<ReadAll> {
        let span = ev_span!(uow, "larder.events.read_all", "read_all", None::<&str>);
        let result = match self
            .check_limit(limit)
            .and_then(|()| self.check_filter(filter))
        {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.read_all", |tx| tx
                .read_all(after, limit, filter))
            .and_then(|batch| {
                let (next, end_of_log) = resume(
                    after,
                    limit,
                    batch.events.len(),
                    batch.events.last().map(|e| e.checkpoint),
                    batch.head,
                );
                Ok(ReadAll {
                    events: self.upcast_all(batch.events)?,
                    next,
                    end_of_log,
                })
            }),
        };
        finish(uow, &span, "events.read_all", &result, |r| {
            r.events.len() as u64
        });
        result
    }

    /// [`EventStore::read_all`] for readers that do not keep the events: each one is
    /// handed to `visit` borrowed from the driver's row ([`EventRef`]: ids, type, payload
    /// and metadata are not copied into owned strings), in log order, with the same
    /// no-skip rule and the same `next` checkpoint. A visitor error stops the read and is
    /// returned. With upcasters registered, events are upcast (owned) first.
    ///
    /// ```ignore
    /// let mut total = 0;
    /// let end = es.read_all_each(&mut uow, after, 1_000, &EventFilter::all(), &mut |e| {
    ///     total += e.payload_as::<ItemAdded>()?.qty;
    ///     Ok(())
    /// }).await?;
    /// ```
    pub async fn read_all_each(
        &self,
        uow: &mut Uow,
        after: Checkpoint,
        limit: u32,
        filter: &EventFilter,
        visit: &mut (dyn FnMut(EventRef<'_>) -> Result<()> + Send),
    ) -> Result<ReadAllEnd> {
        if !self.inner.upcasters.is_empty() {
            let page = self.read_all(uow, after, limit, filter).await?;
            for e in &page.events {
                visit(e.as_ref())?;
            }
            return Ok(ReadAllEnd {
                count: page.events.len(),
                next: page.next,
                end_of_log: page.end_of_log,
            });
        }
        let span = ev_span!(uow, "larder.events.read_all", "read_all", None::<&str>);
        let result = match self
            .check_limit(limit)
            .and_then(|()| self.check_filter(filter))
        {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.read_all", |tx| tx
                .read_all_each(after, limit, filter, visit))
            .map(|batch| {
                let (next, end_of_log) = resume(after, limit, batch.count, batch.last, batch.head);
                ReadAllEnd {
                    count: batch.count,
                    next,
                    end_of_log,
                }
            }),
        };
        finish(uow, &span, "events.read_all", &result, |r| r.count as u64);
        result
    }

    /// [`EventStore::read_all`] keeping the page as the driver's rows: each event is
    /// decoded when it is visited, borrowed ([`EventPage`]), with the same no-skip rule
    /// and the same `next` checkpoint. For readers that use a few fields of each event (a
    /// projection summing a payload field, an indexer) it saves copying every event into
    /// owned strings. With upcasters registered, events are upcast (owned) first.
    pub async fn read_all_page(
        &self,
        uow: &mut Uow,
        after: Checkpoint,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<EventPage> {
        if !self.inner.upcasters.is_empty() {
            let page = self.read_all(uow, after, limit, filter).await?;
            return Ok(EventPage::new(
                Box::new(page.events),
                page.next,
                page.end_of_log,
            ));
        }
        let span = ev_span!(uow, "larder.events.read_all", "read_all", None::<&str>);
        let result = match self
            .check_limit(limit)
            .and_then(|()| self.check_filter(filter))
        {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.read_all", |tx| tx
                .read_all_rows(after, limit, filter))
            .map(|batch| {
                let (next, end_of_log) =
                    resume(after, limit, batch.rows.len(), batch.last, batch.head);
                EventPage::new(batch.rows, next, end_of_log)
            }),
        };
        finish(uow, &span, "events.read_all", &result, |r| r.len() as u64);
        result
    }

    /// A stream's metadata (`None`: it does not exist).
    pub async fn stream_info(&self, uow: &mut Uow, stream: &str) -> Result<Option<StreamInfo>> {
        let span = ev_span!(uow, "larder.events.stream_info", "stream_info", stream);
        let result = match self.check_stream(stream) {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.stream_info", |tx| tx
                .stream_version(stream))
            .map(|v| v.map(|version| StreamInfo { version })),
        };
        finish(uow, &span, "events.stream_info", &result, |r| {
            u64::from(r.is_some())
        });
        result
    }

    /// Counters of the log (events, streams, readable head).
    pub async fn stats(&self, uow: &mut Uow) -> Result<LogStats> {
        let span = ev_span!(uow, "larder.events.stats", "stats", None::<&str>);
        let result = run!(uow, span, "events.stats", |tx| tx.stats());
        finish(uow, &span, "events.stats", &result, |_| 1);
        result
    }

    /// How many committed events lie after `after` (capped at `cap`): a reader's lag. On
    /// PostgreSQL this includes events held back by an older open transaction (see
    /// [`EventStore::read_all`]), so such a transaction shows up as lag.
    pub async fn count_after(&self, uow: &mut Uow, after: Checkpoint, cap: u64) -> Result<u64> {
        let span = ev_span!(uow, "larder.events.count", "count", None::<&str>);
        let result = run!(uow, span, "events.count", |tx| tx.count_after(after, cap));
        finish(uow, &span, "events.count", &result, |_| 1);
        result
    }

    /// Who holds the log back: the oldest other running transaction whose id is the commit
    /// horizon of [`EventStore::read_all`], and how many committed events stay unreadable
    /// until it ends; `None` when nothing holds the log back.
    ///
    /// On PostgreSQL readers wait for every older transaction that has written anything,
    /// in any database of the cluster (prepared transactions included), so one session
    /// left idle in a transaction stalls every subscriber and projection; this names it
    /// (pid, database, application, state, age) so an operator can end it. Memory and
    /// SQLite have one writer at a time and always return `None`. Call it in a read-only
    /// unit of work (the caller's own transaction is never reported), early in it: the
    /// server's session list is read once per transaction.
    pub async fn horizon_holder(&self, uow: &mut Uow) -> Result<Option<HorizonHolder>> {
        let span = ev_span!(
            uow,
            "larder.events.horizon_holder",
            "horizon_holder",
            None::<&str>
        );
        let result = run!(uow, span, "events.horizon_holder", |tx| tx.horizon_holder());
        finish(uow, &span, "events.horizon_holder", &result, |h| {
            u64::from(h.is_some())
        });
        result
    }

    /// The whole log after `after` as a stream, in constant memory: pages of `page`
    /// events, each read in its own short read-only unit of work. The next page is read
    /// while the caller consumes the current one (at most two pages are held). Ends at the
    /// readable end of the log as it was when the last page was read; a failed read ends
    /// the stream with its error after the events read before it.
    pub fn stream_all(
        &self,
        after: Checkpoint,
        filter: EventFilter,
        page: u32,
    ) -> BoxStream<'static, Result<RecordedEvent>> {
        let es = self.clone();
        let read: ReadPage<RecordedEvent> = Box::new(move |cp| {
            let es = es.clone();
            let filter = filter.clone();
            Box::pin(async move {
                let batch = es.read_page(cp, page, &filter).await?;
                Ok((batch.events, (!batch.end_of_log).then_some(batch.next)))
            })
        });
        Box::pin(PagesAhead::new(read, after))
    }

    /// [`EventStore::stream_all`] by pages kept as rows ([`EventPage`]: events decoded
    /// when visited, borrowed), with the same read-ahead (the next page is read while the
    /// current one is consumed; at most two pages held) and the same no-skip rule. Empty
    /// pages are not yielded.
    ///
    /// ```ignore
    /// let mut pages = es.stream_all_pages(Checkpoint::START, EventFilter::all(), 1_000);
    /// while let Some(page) = pages.next().await {
    ///     for e in page?.iter() {
    ///         total += e?.payload_as::<ItemAdded>()?.qty;
    ///     }
    /// }
    /// ```
    pub fn stream_all_pages(
        &self,
        after: Checkpoint,
        filter: EventFilter,
        page: u32,
    ) -> BoxStream<'static, Result<EventPage>> {
        let es = self.clone();
        let read: ReadPage<EventPage> = Box::new(move |cp| {
            let es = es.clone();
            let filter = filter.clone();
            Box::pin(async move {
                let batch = es.read_page_rows(cp, page, &filter).await?;
                let next = (!batch.end_of_log()).then_some(batch.next_checkpoint());
                let items = if batch.is_empty() {
                    Vec::new()
                } else {
                    vec![batch]
                };
                Ok((items, next))
            })
        });
        Box::pin(PagesAhead::new(read, after))
    }

    /// One page of [`EventStore::read_all_page`] in a read-only unit of work of its own.
    pub(crate) async fn read_page_rows(
        &self,
        after: Checkpoint,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<EventPage> {
        let mut uow = self.inner.store.read().await?;
        let page = self.read_all_page(&mut uow, after, limit, filter).await?;
        uow.commit().await?;
        Ok(page)
    }

    /// One page of [`EventStore::read_all`] in a read-only unit of work of its own.
    pub(crate) async fn read_page(
        &self,
        after: Checkpoint,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<ReadAll> {
        let mut uow = self.inner.store.read().await?;
        let page = self.read_all(&mut uow, after, limit, filter).await?;
        uow.commit().await?;
        Ok(page)
    }

    /// Catches up from `after`, then follows the log live: see [`Subscription`].
    pub fn subscribe(&self, after: Checkpoint, filter: EventFilter) -> Subscription {
        Subscription::start(self.clone(), after, filter, 256)
    }

    /// Like [`EventStore::subscribe`], with the page size and buffer (back-pressure: the
    /// reader stops reading while `buffer` events wait to be consumed).
    pub fn subscribe_with(
        &self,
        after: Checkpoint,
        filter: EventFilter,
        buffer: u32,
    ) -> Subscription {
        Subscription::start(self.clone(), after, filter, buffer.max(1))
    }

    /// The newest snapshot of a stream (no upcasting: snapshots carry their own schema
    /// version).
    pub async fn load_snapshot(&self, uow: &mut Uow, stream: &str) -> Result<Option<Snapshot>> {
        let span = ev_span!(uow, "larder.events.load_snapshot", "load_snapshot", stream);
        let result = match self.check_stream(stream) {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.load_snapshot", |tx| tx
                .load_snapshot(stream)),
        };
        finish(uow, &span, "events.load_snapshot", &result, |r| {
            u64::from(r.is_some())
        });
        result
    }

    /// Stores (replaces) a stream's snapshot in the unit of work.
    pub async fn save_snapshot(&self, uow: &mut Uow, snapshot: &Snapshot) -> Result<()> {
        let span = ev_span!(
            uow,
            "larder.events.save_snapshot",
            "save_snapshot",
            snapshot.stream_id.as_str()
        );
        let prep = if uow.is_read_only() {
            Err(Error::ReadOnly {
                operation: "events.save_snapshot",
            })
        } else if snapshot.state.len() > self.inner.limits.max_payload_bytes {
            Err(Error::LimitExceeded {
                what: "snapshot size (bytes)",
                limit: self.inner.limits.max_payload_bytes as u64,
                actual: snapshot.state.len() as u64,
            })
        } else {
            self.check_stream(&snapshot.stream_id)
        };
        let result = match prep {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.save_snapshot", |tx| tx
                .save_snapshot(snapshot)),
        };
        finish(uow, &span, "events.save_snapshot", &result, |()| 1);
        result
    }

    /// A consumer's (projection's) stored checkpoint.
    pub async fn load_checkpoint(&self, uow: &mut Uow, name: &str) -> Result<Option<Checkpoint>> {
        let span = ev_span!(
            uow,
            "larder.events.load_checkpoint",
            "load_checkpoint",
            name
        );
        let result = match self.check_name("consumer name", name) {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.load_checkpoint", |tx| tx
                .load_checkpoint(name)),
        };
        finish(uow, &span, "events.load_checkpoint", &result, |r| {
            u64::from(r.is_some())
        });
        result
    }

    /// Claims consumer `name` for this unit of work and returns its checkpoint: creates it
    /// at the start of the log if missing and locks it until the unit of work ends, so two
    /// instances of the same projection never process the same batch.
    pub async fn claim_checkpoint(&self, uow: &mut Uow, name: &str) -> Result<Checkpoint> {
        let span = ev_span!(
            uow,
            "larder.events.claim_checkpoint",
            "claim_checkpoint",
            name
        );
        let prep = if uow.is_read_only() {
            Err(Error::ReadOnly {
                operation: "events.claim_checkpoint",
            })
        } else {
            self.check_name("consumer name", name)
        };
        let result = match prep {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.claim_checkpoint", |tx| tx
                .claim_checkpoint(name, now_micros())),
        };
        finish(uow, &span, "events.claim_checkpoint", &result, |_| 1);
        result
    }

    /// Stores a consumer's checkpoint in the unit of work (commit it with the consumer's
    /// writes for exactly-once effects). Waiters are woken when the unit of work commits.
    pub async fn save_checkpoint(&self, uow: &mut Uow, name: &str, cp: Checkpoint) -> Result<()> {
        let span = ev_span!(
            uow,
            "larder.events.save_checkpoint",
            "save_checkpoint",
            name
        );
        let prep = if uow.is_read_only() {
            Err(Error::ReadOnly {
                operation: "events.save_checkpoint",
            })
        } else {
            self.check_name("consumer name", name)
        };
        let result = match prep {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.save_checkpoint", |tx| tx
                .save_checkpoint(name, cp, now_micros())),
        };
        if result.is_ok() {
            let store = self.inner.store.clone();
            uow.on_post_commit(move || store.signals().checkpoints.send_modify(|n| *n += 1));
        }
        finish(uow, &span, "events.save_checkpoint", &result, |()| 1);
        result
    }

    /// Forgets a consumer's checkpoint (it will start from the beginning).
    pub async fn delete_checkpoint(&self, uow: &mut Uow, name: &str) -> Result<()> {
        let span = ev_span!(
            uow,
            "larder.events.delete_checkpoint",
            "delete_checkpoint",
            name
        );
        let result = match self.check_name("consumer name", name) {
            Err(e) => Err(e),
            Ok(()) => run!(uow, span, "events.delete_checkpoint", |tx| tx
                .delete_checkpoint(name)),
        };
        finish(uow, &span, "events.delete_checkpoint", &result, |()| 1);
        result
    }

    /// Every stored consumer checkpoint.
    pub async fn list_checkpoints(&self, uow: &mut Uow) -> Result<Vec<StoredCheckpoint>> {
        let span = ev_span!(
            uow,
            "larder.events.list_checkpoints",
            "list_checkpoints",
            None::<&str>
        );
        let result = run!(uow, span, "events.list_checkpoints", |tx| tx
            .list_checkpoints());
        finish(uow, &span, "events.list_checkpoints", &result, |r| {
            r.len() as u64
        });
        result
    }

    /// Waits until consumer `name` (a projection) has processed `position` — the
    /// [`Committed::position`](crate::Committed::position) of a unit of work — so a read
    /// model reflects that write. Fails with [`Error::DeadlineExceeded`] at the deadline.
    pub async fn wait_for(
        &self,
        name: &str,
        position: Checkpoint,
        deadline: Deadline,
    ) -> Result<()> {
        self.check_name("consumer name", name)?;
        let mut signal = self.inner.store.signals().checkpoints.subscribe();
        loop {
            let mut uow = self.inner.store.read().await?;
            let cp = self.load_checkpoint(&mut uow, name).await?;
            drop(uow);
            if cp.is_some_and(|cp| cp >= position) {
                return Ok(());
            }
            if deadline.is_expired() {
                return Err(Error::DeadlineExceeded {
                    operation: "events.wait_for",
                });
            }
            let wait = deadline.remaining().min(self.inner.poll_interval);
            let _ = tokio::time::timeout(wait, signal.changed()).await;
        }
    }

    pub(crate) fn upcast(&self, mut e: RecordedEvent) -> Result<RecordedEvent> {
        if self.inner.upcasters.is_empty() {
            return Ok(e);
        }
        for _ in 0..64 {
            let key = (e.event_type.clone(), e.schema_version);
            let Some(f) = self.inner.upcasters.get(&key) else {
                return Ok(e);
            };
            f(&mut e)?;
            if e.event_type == key.0 && e.schema_version == key.1 {
                return Err(Error::InvalidEvent(format!(
                    "the upcaster for `{}` v{} changed neither the type nor the schema version",
                    shown(&key.0),
                    key.1
                )));
            }
        }
        Err(Error::InvalidEvent(format!(
            "upcasters for `{}` loop",
            shown(&e.event_type)
        )))
    }

    pub(crate) fn upcast_all(&self, events: Vec<RecordedEvent>) -> Result<Vec<RecordedEvent>> {
        if self.inner.upcasters.is_empty() {
            return Ok(events);
        }
        events.into_iter().map(|e| self.upcast(e)).collect()
    }
}

async fn already_appended(
    tx: &mut dyn EventTransaction,
    stream: &str,
    ids: &[Uuid],
) -> Result<Option<AppendResult>> {
    let found = tx.find_events(ids).await?;
    if found.is_empty() {
        return Ok(None);
    }
    if found.len() == ids.len() && found.iter().all(|(_, s, _, _)| s == stream) {
        let version = found.iter().map(|f| f.2).max().unwrap_or(0);
        let checkpoint = found.iter().map(|f| f.3).max().unwrap_or_default();
        return Ok(Some(AppendResult {
            stream_version: version,
            checkpoint,
            already_appended: true,
        }));
    }
    let (id, s, _, _) = &found[0];
    Err(Error::AlreadyExists {
        entity: "event",
        id: format!("{id} (in stream `{}`)", shown(s)),
    })
}

fn conflict(stream: &str, expected: ExpectedVersion, actual: Option<u64>) -> Error {
    let expected = match expected {
        ExpectedVersion::Exact(n) => n,
        ExpectedVersion::NoStream | ExpectedVersion::Any => 0,
        ExpectedVersion::StreamExists => 1,
    };
    Error::Conflict {
        entity: "stream",
        id: shown(stream),
        expected,
        actual,
    }
}

/// Reads the page after a checkpoint: its items and where the next page starts (`None`:
/// this page reached the end).
type ReadPage<T> = Box<dyn Fn(Checkpoint) -> BoxFuture<'static, Result<Page<T>>> + Send>;

/// A page's items and where the next page starts (`None`: the end).
type Page<T> = (Vec<T>, Option<Checkpoint>);

/// [`EventStore::stream_all`]'s stream: yields the current page's items while the next
/// page is being read (at most two pages held). A failed read is yielded after the items
/// read before it, and ends the stream.
struct PagesAhead<T> {
    read: ReadPage<T>,
    /// Items of the current page not yet yielded.
    buffered: std::vec::IntoIter<T>,
    /// The read of the next page, in flight.
    next: Option<BoxFuture<'static, Result<Page<T>>>>,
    /// The next page (or its error), read and waiting for `buffered` to drain.
    ready: Option<Result<Page<T>>>,
}

impl<T> PagesAhead<T> {
    fn new(read: ReadPage<T>, after: Checkpoint) -> Self {
        let next = Some(read(after));
        PagesAhead {
            read,
            buffered: Vec::new().into_iter(),
            next,
            ready: None,
        }
    }
}

impl<T: Unpin> futures_util::Stream for PagesAhead<T> {
    type Item = Result<T>;

    fn poll_next(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        use std::task::Poll;
        let this = self.get_mut();
        loop {
            if this.ready.is_none()
                && let Some(read) = this.next.as_mut()
                && let Poll::Ready(page) = read.as_mut().poll(cx)
            {
                this.next = None;
                this.ready = Some(page);
            }
            if let Some(item) = this.buffered.next() {
                return Poll::Ready(Some(Ok(item)));
            }
            match this.ready.take() {
                Some(Ok((items, next))) => {
                    if let Some(cp) = next {
                        this.next = Some((this.read)(cp));
                    }
                    this.buffered = items.into_iter();
                }
                Some(Err(e)) => return Poll::Ready(Some(Err(e))),
                None if this.next.is_none() => return Poll::Ready(None),
                None => return Poll::Pending,
            }
        }
    }
}

#[cfg(test)]
mod pages_ahead_tests {
    use super::*;
    use futures_util::StreamExt;
    use std::sync::Mutex;

    /// Pages of 3 numbers after checkpoint n (position n+1..=n+3) up to 9; the read after
    /// `fail_after` fails. Records every read started.
    fn pages(fail_after: Option<u64>, log: Arc<Mutex<Vec<u64>>>) -> ReadPage<u64> {
        Box::new(move |cp| {
            let log = log.clone();
            let at = cp.position();
            Box::pin(async move {
                log.lock().unwrap().push(at);
                tokio::task::yield_now().await;
                if Some(at) == fail_after {
                    return Err(Error::Closed("the store was closed"));
                }
                let items: Vec<u64> = (at + 1..=(at + 3).min(9)).collect();
                let end = at + 3 >= 9;
                Ok((items, (!end).then(|| Checkpoint::new(0, at + 3))))
            })
        })
    }

    #[tokio::test]
    async fn yields_every_page_in_order_and_reads_one_ahead() {
        let log = Arc::default();
        let mut s = PagesAhead::new(pages(None, Arc::clone(&log)), Checkpoint::START);
        assert_eq!(s.next().await.unwrap().unwrap(), 1);
        // The first item was handed out while the second page was already being read.
        assert_eq!(*log.lock().unwrap(), vec![0, 3]);
        let mut rest = Vec::new();
        while let Some(x) = s.next().await {
            rest.push(x.unwrap());
        }
        assert_eq!(rest, (2..=9).collect::<Vec<_>>());
        assert_eq!(*log.lock().unwrap(), vec![0, 3, 6], "no read after the end");
        assert!(s.next().await.is_none());
    }

    #[tokio::test]
    async fn a_failed_read_comes_after_the_items_before_it_and_ends_the_stream() {
        let log = Arc::default();
        let s = PagesAhead::new(pages(Some(6), Arc::clone(&log)), Checkpoint::START);
        let out: Vec<_> = s.collect().await;
        let ok: Vec<u64> = out
            .iter()
            .filter_map(|r| r.as_ref().ok().copied())
            .collect();
        assert_eq!(ok, (1..=6).collect::<Vec<_>>());
        assert_eq!(out.len(), 7);
        assert!(matches!(out[6], Err(Error::Closed(_))), "{:?}", out[6]);
    }
}
