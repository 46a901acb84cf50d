//! Projections: read models fed from the global log, with their checkpoint committed in
//! the same transaction as their writes.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tracing::Instrument;
use uuid::Uuid;

use super::store::{EventStore, now_micros};
use super::subscription::LogWaker;
use super::types::{Checkpoint, EventFilter, EventPage, EventRef, HorizonHolder, RecordedEvent};
use crate::backend::BoxFuture;
use crate::error::{Error, Result};
use crate::uow::{TransactionOptions, Uow, jittered_backoff};

/// A read model fed from the global log.
///
/// For **SQL read models** (tables in the same database) write through the [`Uow`] the
/// handler receives: the runner commits the read-model writes and the projection's
/// checkpoint in one transaction, so every event is applied exactly once, even if the
/// process is killed mid-batch. For **other targets** (a search index, a cache, an HTTP
/// call) delivery is *at least once*: a crash after the external write and before the
/// commit delivers the batch again, so make those writes idempotent (keyed by
/// [`RecordedEvent::event_id`] or the stream version).
///
/// ```
/// use larder_core::events::{Projection, RecordedEvent};
/// use larder_core::{Uow, Result};
///
/// struct OrderTotals;
///
/// impl Projection for OrderTotals {
///     fn name(&self) -> &str { "order_totals" }
///     async fn handle(&self, uow: &mut Uow, event: &RecordedEvent) -> Result<()> {
///         // e.g. uow.repo::<OrderTotal>().save(…)
///         let _ = (uow, event);
///         Ok(())
///     }
/// }
/// ```
pub trait Projection: Send + Sync + 'static {
    /// Unique name: the key of its checkpoint.
    fn name(&self) -> &str;

    /// Which events it receives (default: all). Its checkpoint still moves past the
    /// events filtered out.
    fn filter(&self) -> EventFilter {
        EventFilter::all()
    }

    /// Applies one event, inside the batch's unit of work. An error rolls the whole batch
    /// back (checkpoint included); the runner then retries, and stops this projection (only
    /// this one) once its retries are spent — see [`ProjectionRunner`]'s failure policy.
    fn handle(
        &self,
        uow: &mut Uow,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Applies a batch of events (in log order) inside the batch's unit of work — override
    /// it to write a SQL read model with one statement per batch. Default: [`handle`]
    /// for each event in order. A failure naming one event ([`BatchError::at`]) puts that
    /// event in the projection's status; the whole batch rolls back either way.
    ///
    /// [`handle`]: Projection::handle
    fn handle_batch(
        &self,
        uow: &mut Uow,
        events: &[RecordedEvent],
    ) -> impl Future<Output = Result<(), BatchError>> + Send {
        async move {
            for (i, e) in events.iter().enumerate() {
                self.handle(uow, e)
                    .await
                    .map_err(|e| BatchError::at(i, e))?;
            }
            Ok(())
        }
    }

    /// Applies a page of events (in log order) kept as the driver's rows, inside the
    /// batch's unit of work: each event is decoded when visited, borrowed from its row
    /// ([`EventPage`], [`EventRef`]) — override it when the handler reads a few fields of
    /// each event and does not keep them, to save copying every event into owned strings.
    /// The runner calls this method; the default copies the events and calls
    /// [`handle_batch`](Projection::handle_batch), so overriding `handle` or
    /// `handle_batch` is enough otherwise.
    ///
    /// ```
    /// use larder_core::events::{BatchError, EventPage, Projection, RecordedEvent};
    /// use larder_core::{Result, Uow};
    /// use std::sync::atomic::{AtomicI64, Ordering};
    ///
    /// #[derive(serde::Deserialize)]
    /// struct ItemAdded { qty: i64 }
    ///
    /// struct Quantity(AtomicI64);
    ///
    /// impl Projection for Quantity {
    ///     fn name(&self) -> &str { "quantity" }
    ///     async fn handle(&self, _: &mut Uow, e: &RecordedEvent) -> Result<()> {
    ///         self.0.fetch_add(e.payload_as::<ItemAdded>()?.qty, Ordering::Relaxed);
    ///         Ok(())
    ///     }
    ///     async fn handle_page(&self, _: &mut Uow, page: &EventPage) -> Result<(), BatchError> {
    ///         for (i, e) in page.iter().enumerate() {
    ///             let qty = e.and_then(|e| e.payload_as::<ItemAdded>()).map_err(|e| BatchError::at(i, e))?.qty;
    ///             self.0.fetch_add(qty, Ordering::Relaxed);
    ///         }
    ///         Ok(())
    ///     }
    /// }
    /// ```
    fn handle_page(
        &self,
        uow: &mut Uow,
        page: &EventPage,
    ) -> impl Future<Output = Result<(), BatchError>> + Send {
        async move {
            let events = page.to_events()?;
            self.handle_batch(uow, &events).await
        }
    }

    /// Clears the read model before a rebuild (in the same unit of work that resets the
    /// checkpoint). Default: nothing to clear.
    fn reset(&self, uow: &mut Uow) -> impl Future<Output = Result<()>> + Send {
        let _ = uow;
        async { Ok(()) }
    }
}

/// Why [`Projection::handle_batch`] failed: the error, and the index of the event it is
/// about when there is one.
#[derive(Debug)]
#[non_exhaustive]
pub struct BatchError {
    /// The index in the batch of the event that failed (`None`: the batch as a whole).
    pub index: Option<usize>,
    /// The error.
    pub error: Error,
}

impl BatchError {
    /// The event at `index` of the batch failed with `error`.
    pub fn at(index: usize, error: Error) -> Self {
        BatchError {
            index: Some(index),
            error,
        }
    }
}

impl From<Error> for BatchError {
    fn from(error: Error) -> Self {
        BatchError { index: None, error }
    }
}

trait DynProjection: Send + Sync {
    fn name(&self) -> &str;
    fn filter(&self) -> EventFilter;
    fn handle_page<'a>(
        &'a self,
        uow: &'a mut Uow,
        page: &'a EventPage,
    ) -> BoxFuture<'a, Result<(), BatchError>>;
    fn reset<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<()>>;
}

impl<P: Projection> DynProjection for P {
    fn name(&self) -> &str {
        Projection::name(self)
    }
    fn filter(&self) -> EventFilter {
        Projection::filter(self)
    }
    fn handle_page<'a>(
        &'a self,
        uow: &'a mut Uow,
        page: &'a EventPage,
    ) -> BoxFuture<'a, Result<(), BatchError>> {
        Box::pin(Projection::handle_page(self, uow, page))
    }
    fn reset<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<()>> {
        Box::pin(Projection::reset(self, uow))
    }
}

/// A projection's state, for status pages and `larder projections status`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// Its committed checkpoint (`None`: never ran).
    pub checkpoint: Option<Checkpoint>,
    /// Committed events after its checkpoint (all events, whatever its filter). On
    /// PostgreSQL it includes events not readable yet because an older transaction is
    /// still running ([`ProjectionStatus::held_back_by`]).
    pub lag: u64,
    /// The transaction holding the log's horizon back when the status was read, if any
    /// (see [`EventStore::horizon_holder`]): until it ends, no projection gets past the
    /// events it holds back, whatever the runner does. Always `None` on memory and SQLite.
    pub held_back_by: Option<HorizonHolder>,
    /// What this runner is doing with it.
    pub state: ProjectionState,
    /// Batches this runner retried for it since the runner was created.
    pub retries: u64,
    /// Its most recent failed batch (kept after it recovered; [`ProjectionStatus::state`]
    /// tells whether it is current).
    pub last_error: Option<ProjectionFailure>,
}

/// What a [`ProjectionRunner`] is doing with one projection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum ProjectionState {
    /// Not running in this runner (never started, or `catch_up` finished).
    #[default]
    Idle,
    /// Processing or following the log.
    Running,
    /// Its last batch failed; the runner retries it after a backoff.
    Retrying,
    /// Stopped after its retries were spent; the other projections keep running. Its
    /// checkpoint is before the failing event ([`ProjectionFailure::event`]); the next
    /// [`ProjectionRunner::run`] or [`ProjectionRunner::catch_up`] restarts it there.
    Stopped,
}

impl ProjectionState {
    /// Lowercase name (`idle`, `running`, `retrying`, `stopped`).
    pub fn as_str(self) -> &'static str {
        match self {
            ProjectionState::Idle => "idle",
            ProjectionState::Running => "running",
            ProjectionState::Retrying => "retrying",
            ProjectionState::Stopped => "stopped",
        }
    }
}

impl fmt::Display for ProjectionState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failed batch of a projection.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionFailure {
    /// The error's [`Error::kind`] (also `error.type` on the `larder.projection.batch` span).
    pub error_type: &'static str,
    /// The error's message.
    pub message: String,
    /// Whether the error was transient ([`Error::is_transient`]), retried without limit
    /// by default.
    pub transient: bool,
    /// Failed attempts in a row, this one included.
    pub attempts: u32,
    /// The event the handler failed on (`None`: the batch failed outside the handler, while
    /// beginning, claiming the checkpoint, reading or committing).
    pub event: Option<FailedEvent>,
    /// When it failed, microseconds since the Unix epoch.
    pub at_micros: i64,
}

/// The event a projection's handler failed on.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct FailedEvent {
    /// Its position in the global log.
    pub checkpoint: Checkpoint,
    /// Its id.
    pub event_id: Uuid,
    /// Its stream.
    pub stream_id: String,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its type.
    pub event_type: String,
}

impl FailedEvent {
    fn of(e: EventRef<'_>) -> FailedEvent {
        FailedEvent {
            checkpoint: e.checkpoint,
            event_id: e.event_id,
            stream_id: e.stream_id.to_owned(),
            stream_version: e.stream_version,
            event_type: e.event_type.to_owned(),
        }
    }
}

/// How a [`ProjectionRunner`] retries a failed batch (see its failure policy).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ProjectionRetry {
    /// Retries of a batch that failed with a non-transient error (a handler's own error,
    /// a conflict, a deadline…) before the projection is stopped (default: the store's
    /// [`TransactionOptions::max_retries`], 3).
    pub max_retries: u32,
    /// Retries of a batch that failed with a transient error (serialization failure,
    /// deadlock, busy or unavailable database) before the projection is stopped; `None`
    /// (the default): without limit, so an outage pauses projections instead of stopping
    /// them.
    pub max_transient_retries: Option<u32>,
    /// First wait (default: the store's [`TransactionOptions::backoff`], 2 ms); doubled
    /// per failed attempt in a row, with 50 %–150 % random jitter.
    pub backoff: Duration,
    /// Longest wait before the jitter (default 5 s).
    pub max_backoff: Duration,
}

impl Default for ProjectionRetry {
    fn default() -> Self {
        ProjectionRetry::from(&TransactionOptions::default())
    }
}

impl From<&TransactionOptions> for ProjectionRetry {
    /// The store's transaction retry budget and first backoff for handler errors.
    fn from(t: &TransactionOptions) -> Self {
        ProjectionRetry {
            max_retries: t.max_retries,
            max_transient_retries: None,
            backoff: t.backoff,
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl ProjectionRetry {
    /// Sets the retry budget for non-transient errors.
    #[must_use]
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Sets the retry budget for transient errors (`None`: without limit).
    #[must_use]
    pub fn with_max_transient_retries(mut self, n: Option<u32>) -> Self {
        self.max_transient_retries = n;
        self
    }

    /// Sets the first wait and the longest one.
    #[must_use]
    pub fn with_backoff(mut self, first: Duration, max: Duration) -> Self {
        self.backoff = first;
        self.max_backoff = max;
        self
    }
}

/// What the runner remembers about one projection (shared by clones of the runner).
#[derive(Debug, Clone, Default)]
struct Health {
    state: ProjectionState,
    retries: u64,
    last_error: Option<ProjectionFailure>,
}

/// A failed batch: the error, and the event the handler failed on.
struct StepError {
    error: Error,
    event: Option<FailedEvent>,
}

impl From<Error> for StepError {
    fn from(error: Error) -> Self {
        StepError { error, event: None }
    }
}

/// Progress of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events processed so far.
    pub done: u64,
    /// Events in the log when the rebuild started.
    pub total: u64,
}

/// How big a [`ProjectionRunner`]'s batches are: fixed (`first == min == max`) or adaptive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Batching {
    first: u32,
    min: u32,
    max: u32,
}

/// A full batch faster than this doubles the next one.
const GROW_UNDER: Duration = Duration::from_millis(50);
/// A batch slower than this halves the next one.
const SHRINK_OVER: Duration = Duration::from_millis(400);

impl Batching {
    /// Adaptive between `min` and `max` (both capped by `cap`, the read limit), from 500.
    fn adaptive(min: u32, max: u32, cap: u32) -> Batching {
        let cap = cap.max(1);
        let min = min.clamp(1, cap);
        let max = max.clamp(min, cap);
        Batching {
            first: 500.clamp(min, max),
            min,
            max,
        }
    }

    fn cursor(self) -> Cursor {
        Cursor {
            size: self.first,
            ahead: None,
        }
    }

    /// After a committed batch of `n` events that took `took`.
    fn adapt(self, cursor: &mut Cursor, n: usize, took: Duration) {
        if took > SHRINK_OVER {
            self.halve(cursor);
        } else if took < GROW_UNDER && n >= cursor.size as usize {
            cursor.size = cursor.size.saturating_mul(2).min(self.max);
        }
    }

    /// After a failed batch: smaller, and read again.
    fn shrink(self, cursor: &mut Cursor) {
        self.halve(cursor);
        cursor.ahead = None;
    }

    fn halve(self, cursor: &mut Cursor) {
        cursor.size = (cursor.size / 2).max(self.min);
    }
}

/// Where one projection's loop is: its batch size, and the page read ahead (the checkpoint
/// it was read after, and the page).
struct Cursor {
    size: u32,
    ahead: Option<(Checkpoint, EventPage)>,
}

/// Runs projections side by side.
///
/// Each step of a projection is one unit of work: claim the checkpoint (a row lock, so two
/// runners of the same projection never process the same batch), read the next batch of
/// the global log after it, hand each event to the projection, store the new checkpoint,
/// commit. The log never skips (see [`EventStore::read_all`]), so neither does a
/// projection. Each step is a `larder.projection.batch` span (`larder.projection`,
/// `larder.events`, `larder.attempt`, and `error.type`/`error.message` on failure).
///
/// # Failure policy
///
/// Projections are isolated: a failing projection never stops or delays the others.
/// A failed batch rolls back whole, its checkpoint included, so nothing is applied twice;
/// then, for that projection only:
///
/// - **Transient errors** ([`Error::is_transient`]: serialization failures, deadlocks, a
///   busy or unavailable database), from the store or from the handler, are retried after
///   a backoff, without limit by default ([`ProjectionRetry::max_transient_retries`]): an
///   outage pauses projections, it does not stop them.
/// - **Any other error** (the handler's own, a conflict, a deadline…) is retried
///   [`ProjectionRetry::max_retries`] times (default: the store's
///   [`TransactionOptions::max_retries`], 3), after a backoff. When the retries are spent
///   the projection is **stopped** ([`ProjectionState::Stopped`]): its checkpoint stays
///   where the failing batch started, before the failing event, and
///   [`ProjectionRunner::status`] shows the error and the failing event's position and id
///   ([`ProjectionFailure`]). [`Error::Closed`] (the store was closed) stops it at once.
///
/// Waits double from [`ProjectionRetry::backoff`] (the store's transaction backoff) up to
/// [`ProjectionRetry::max_backoff`], with 50 %–150 % random jitter so that projections
/// failing together do not retry together. Every retry is counted in
/// [`ProjectionStatus::retries`] and logged (`larder::projections`, warn); a stop is logged
/// at error level. Calling [`run`](ProjectionRunner::run) or
/// [`catch_up`](ProjectionRunner::catch_up) again restarts stopped projections from their
/// checkpoints with a fresh budget (fix the handler, or the data, first).
#[derive(Clone)]
pub struct ProjectionRunner {
    events: EventStore,
    projections: Vec<Arc<dyn DynProjection>>,
    batching: Batching,
    retry: ProjectionRetry,
    health: Arc<Mutex<HashMap<String, Health>>>,
}

impl fmt::Debug for ProjectionRunner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProjectionRunner")
            .field(
                "projections",
                &self
                    .projections
                    .iter()
                    .map(|p| p.name())
                    .collect::<Vec<_>>(),
            )
            .field("batching", &self.batching)
            .field("retry", &self.retry)
            .finish_non_exhaustive()
    }
}

impl ProjectionRunner {
    /// A runner over `events` with no projections yet; adaptive batches (500 events at
    /// first, between 100 and 5,000: see [`adaptive_batches`](Self::adaptive_batches));
    /// retries from the store's [`TransactionOptions`] (see the failure policy).
    pub fn new(events: &EventStore) -> ProjectionRunner {
        ProjectionRunner {
            events: events.clone(),
            projections: Vec::new(),
            batching: Batching::adaptive(100, 5_000, events.limits().max_read),
            retry: ProjectionRetry::from(&events.store().config().transaction),
            health: Arc::default(),
        }
    }

    /// How failed batches are retried (default: from the store's [`TransactionOptions`]).
    #[must_use]
    pub fn with_retry(mut self, retry: ProjectionRetry) -> Self {
        self.retry = retry;
        self
    }

    /// Adds a projection (names must be unique).
    #[must_use]
    pub fn with(mut self, projection: impl Projection) -> Self {
        self.projections.push(Arc::new(projection));
        self
    }

    /// A fixed number of events per unit of work (capped by the event store's read
    /// limit), instead of adaptive batches.
    #[must_use]
    pub fn batch_size(mut self, n: u32) -> Self {
        let n = n.clamp(1, self.events.limits().max_read.max(1));
        self.batching = Batching {
            first: n,
            min: n,
            max: n,
        };
        self
    }

    /// Adaptive batches between `min` and `max` events per unit of work (capped by the
    /// event store's read limit; the default is 100..5,000). Each projection starts at
    /// 500 (within the bounds); a full batch that took less than 50 ms doubles the next
    /// one (a commit's fixed cost — its WAL flush — is then shared by more events), a
    /// batch that took more than 400 ms halves it (a slow handler holds its transaction
    /// and locks for less time), and a failed batch halves it before the retry (a batch
    /// too big for a deadline or a lock timeout gets smaller). The size in use is the
    /// `larder.batch_size` field of the `larder.projection.batch` span.
    #[must_use]
    pub fn adaptive_batches(mut self, min: u32, max: u32) -> Self {
        self.batching = Batching::adaptive(min, max, self.events.limits().max_read);
        self
    }

    /// The projections' names.
    pub fn names(&self) -> Vec<&str> {
        self.projections.iter().map(|p| p.name()).collect()
    }

    fn find(&self, name: &str) -> Result<&Arc<dyn DynProjection>> {
        self.projections
            .iter()
            .find(|p| p.name() == name)
            .ok_or_else(|| Error::NotFound {
                entity: "projection",
                id: crate::error::shown(name),
            })
    }

    fn check_names(&self) -> Result<()> {
        for (i, p) in self.projections.iter().enumerate() {
            self.events.check_name("projection name", p.name())?;
            if self.projections[..i].iter().any(|q| q.name() == p.name()) {
                return Err(Error::InvalidEvent(format!(
                    "two projections are named `{}`",
                    crate::error::shown(p.name())
                )));
            }
        }
        Ok(())
    }

    /// One batch of one projection, in one unit of work. Returns (events handled, whether
    /// the log's readable end was reached).
    ///
    /// **Read-ahead.** While the batch's commit waits for the database (its WAL flush is
    /// most of a batch's time), the next batch is read on another connection into `ahead`.
    /// The next step uses it only if the checkpoint it claims is where the read started;
    /// otherwise (another runner moved it, a retry) it reads again. Exactly once is
    /// unchanged: events are handled and the checkpoint saved only under the claim; and
    /// the read-ahead misses nothing, because the log never skips — an event it could not
    /// see yet sorts after everything it returned (for a page that reached the end, after
    /// its `next` too).
    async fn step(
        &self,
        p: &dyn DynProjection,
        cursor: &mut Cursor,
    ) -> Result<(usize, bool), StepError> {
        let es = &self.events;
        let mut uow = es.store().begin().await?;
        let cp = es.claim_checkpoint(&mut uow, p.name()).await?;
        let batch = match cursor.ahead.take() {
            Some((at, page)) if at == cp => page,
            _ => {
                es.read_all_page(&mut uow, cp, cursor.size, &p.filter())
                    .await?
            }
        };
        if let Err(e) = p.handle_page(&mut uow, &batch).await {
            return Err(StepError {
                event: e
                    .index
                    .and_then(|i| batch.get(i))
                    .and_then(Result::ok)
                    .map(FailedEvent::of),
                error: e.error,
            });
        }
        let (next, end_of_log) = (batch.next_checkpoint(), batch.end_of_log());
        if next != cp {
            es.save_checkpoint(&mut uow, p.name(), next).await?;
        }
        if end_of_log {
            uow.commit().await?;
        } else {
            let (committed, ahead) =
                futures_util::future::join(uow.commit(), self.read_ahead(p, next, cursor.size))
                    .await;
            committed?;
            cursor.ahead = ahead.ok().map(|page| (next, page));
        }
        Ok((batch.len(), end_of_log))
    }

    /// The batch after `from`, in a read-only unit of work of its own (see `step`).
    async fn read_ahead(
        &self,
        p: &dyn DynProjection,
        from: Checkpoint,
        size: u32,
    ) -> Result<EventPage> {
        self.events.read_page_rows(from, size, &p.filter()).await
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut Health)) {
        let mut health = self.health.lock().unwrap_or_else(|e| e.into_inner());
        f(health.entry(name.to_owned()).or_default());
    }

    /// One batch of `p` with the failure policy: retries with backoff until the batch
    /// commits (returns the events handled and whether the end of the log was reached) or
    /// the retries are spent (the projection is stopped and the error returned).
    async fn step_retrying(
        &self,
        p: &dyn DynProjection,
        cursor: &mut Cursor,
    ) -> Result<(usize, bool)> {
        let (mut failed, mut failed_transient) = (0u32, 0u32);
        loop {
            let attempt = failed + failed_transient + 1;
            let span = tracing::info_span!(
                "larder.projection.batch",
                larder.projection = p.name(),
                larder.events = tracing::field::Empty,
                larder.attempt = attempt,
                larder.batch_size = cursor.size,
                error.type = tracing::field::Empty,
                error.message = tracing::field::Empty,
            );
            let started = Instant::now();
            let e = match self.step(p, cursor).instrument(span.clone()).await {
                Ok((n, end)) => {
                    span.record("larder.events", n);
                    self.batching.adapt(cursor, n, started.elapsed());
                    return Ok((n, end));
                }
                Err(e) => e,
            };
            self.batching.shrink(cursor);
            let transient = e.error.is_transient();
            if transient {
                failed_transient += 1;
            } else {
                failed += 1;
            }
            let give_up = matches!(e.error, Error::Closed(_))
                || if transient {
                    self.retry
                        .max_transient_retries
                        .is_some_and(|max| failed_transient > max)
                } else {
                    failed > self.retry.max_retries
                };
            span.record("larder.events", 0);
            span.record("error.type", e.error.kind());
            span.record("error.message", tracing::field::display(&e.error));
            let failure = ProjectionFailure {
                error_type: e.error.kind(),
                message: e.error.to_string(),
                transient,
                attempts: attempt,
                event: e.event,
                at_micros: now_micros(),
            };
            let position = failure.event.as_ref().map(|ev| ev.checkpoint.token());
            let event_id = failure.event.as_ref().map(|ev| ev.event_id.to_string());
            self.update(p.name(), |h| {
                h.last_error = Some(failure);
                if give_up {
                    h.state = ProjectionState::Stopped;
                } else {
                    h.state = ProjectionState::Retrying;
                    h.retries += 1;
                }
            });
            if give_up {
                tracing::error!(
                    target: "larder::projections",
                    projection = p.name(),
                    attempts = attempt,
                    position,
                    event_id,
                    error.type = e.error.kind(),
                    error = %e.error,
                    "projection stopped: its checkpoint stays before the failing event"
                );
                return Err(e.error);
            }
            tracing::warn!(
                target: "larder::projections",
                projection = p.name(),
                attempt,
                position,
                event_id,
                error.type = e.error.kind(),
                error = %e.error,
                "projection batch failed; retrying"
            );
            let wait = jittered_backoff(self.retry.backoff, attempt, self.retry.max_backoff);
            tokio::time::sleep(wait).await;
            self.update(p.name(), |h| h.state = ProjectionState::Running);
        }
    }

    /// Processes every projection until each has reached the readable end of the log (or
    /// was stopped by the failure policy: the others still catch up). Returns the number of
    /// events handled, or the error of the first projection that stopped.
    pub async fn catch_up(&self) -> Result<u64> {
        self.check_names()?;
        let mut total = 0;
        let mut first_error = None;
        for p in &self.projections {
            self.update(p.name(), |h| h.state = ProjectionState::Running);
            let mut cursor = self.batching.cursor();
            let r = loop {
                match self.step_retrying(p.as_ref(), &mut cursor).await {
                    Ok((n, end)) => {
                        total += n as u64;
                        if end {
                            break Ok(());
                        }
                    }
                    Err(e) => break Err(e),
                }
            };
            match r {
                Ok(()) => self.update(p.name(), |h| h.state = ProjectionState::Idle),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    }

    /// Runs every projection concurrently until `shutdown` completes, waking on new
    /// events (in-process at once, PostgreSQL `LISTEN/NOTIFY`, or polling). A projection
    /// whose retries are spent is stopped (see the failure policy; its error is in
    /// [`status`](ProjectionRunner::status)) while the others keep running. Returns
    /// `Ok(())` at shutdown, or the first stop's error once every projection has stopped.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.check_names()?;
        let loops = self.projections.iter().map(|p| self.follow(p.clone()));
        let all = futures_util::future::join_all(loops);
        tokio::pin!(all);
        tokio::pin!(shutdown);
        let r = match futures_util::future::select(all, shutdown).await {
            futures_util::future::Either::Left((stops, _)) => {
                stops.into_iter().find_map(Result::err).map_or(Ok(()), Err)
            }
            futures_util::future::Either::Right(((), _)) => Ok(()),
        };
        for p in &self.projections {
            self.update(p.name(), |h| {
                if h.state != ProjectionState::Stopped {
                    h.state = ProjectionState::Idle;
                }
            });
        }
        r
    }

    /// Follows the log with one projection; returns only when it is stopped.
    async fn follow(&self, p: Arc<dyn DynProjection>) -> Result<()> {
        self.update(p.name(), |h| h.state = ProjectionState::Running);
        let mut waker = LogWaker::new(&self.events).await;
        let mut cursor = self.batching.cursor();
        loop {
            waker.mark_seen();
            let (_, end) = self.step_retrying(p.as_ref(), &mut cursor).await?;
            if end {
                waker.wait().await;
            }
        }
    }

    /// Resets projection `name` (its [`Projection::reset`] and its checkpoint, in one unit
    /// of work) and replays the log from the start, reporting progress after each batch.
    /// Returns the number of events handled. Stop other runners of this projection first
    /// (they would resume from the reset checkpoint too, harmlessly but twice the work).
    pub async fn rebuild(
        &self,
        name: &str,
        mut progress: impl FnMut(RebuildProgress) + Send,
    ) -> Result<u64> {
        self.check_names()?;
        let p = self.find(name)?.clone();
        let es = &self.events;
        let mut uow = es.store().begin().await?;
        es.claim_checkpoint(&mut uow, p.name()).await?;
        p.reset(&mut uow).await?;
        es.save_checkpoint(&mut uow, p.name(), Checkpoint::START)
            .await?;
        let total = es
            .count_after(&mut uow, Checkpoint::START, u64::MAX >> 1)
            .await?;
        uow.commit().await?;
        let started = Instant::now();
        let mut done = 0u64;
        self.update(p.name(), |h| h.state = ProjectionState::Running);
        let mut cursor = self.batching.cursor();
        loop {
            let (n, end) = self.step_retrying(p.as_ref(), &mut cursor).await?;
            done += n as u64;
            progress(RebuildProgress {
                done: done.min(total.max(done)),
                total: total.max(done),
            });
            if end {
                break;
            }
        }
        self.update(p.name(), |h| h.state = ProjectionState::Idle);
        tracing::info!(
            target: "larder::projections",
            projection = p.name(),
            events = done,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "projection rebuilt"
        );
        Ok(done)
    }

    /// Each projection's checkpoint and lag (read from the store), who holds the log back
    /// if anyone does, and what this runner (or a clone of it) is doing with it: state,
    /// retries, last failure.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>> {
        let es = &self.events;
        let mut uow = es.store().read().await?;
        // First in the unit of work: PostgreSQL reads its session list once per transaction.
        let held_back_by = es.horizon_holder(&mut uow).await?;
        let mut out = Vec::with_capacity(self.projections.len());
        for p in &self.projections {
            let checkpoint = es.load_checkpoint(&mut uow, p.name()).await?;
            let lag = es
                .count_after(
                    &mut uow,
                    checkpoint.unwrap_or(Checkpoint::START),
                    u64::MAX >> 1,
                )
                .await?;
            let health = self
                .health
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(p.name())
                .cloned()
                .unwrap_or_default();
            out.push(ProjectionStatus {
                name: p.name().to_owned(),
                checkpoint,
                lag,
                held_back_by: held_back_by.clone(),
                state: health.state,
                retries: health.retries,
                last_error: health.last_error,
            });
        }
        uow.commit().await?;
        Ok(out)
    }
}

#[cfg(test)]
mod batching_tests {
    use super::*;

    const ADAPTIVE: Batching = Batching {
        first: 500,
        min: 100,
        max: 5_000,
    };

    #[test]
    fn full_fast_batches_grow_to_the_maximum() {
        let mut c = ADAPTIVE.cursor();
        let mut sizes = Vec::new();
        for _ in 0..6 {
            let n = c.size as usize;
            ADAPTIVE.adapt(&mut c, n, Duration::from_millis(5));
            sizes.push(c.size);
        }
        assert_eq!(sizes, [1_000, 2_000, 4_000, 5_000, 5_000, 5_000]);
    }

    #[test]
    fn partial_or_middling_batches_keep_their_size() {
        let mut c = ADAPTIVE.cursor();
        ADAPTIVE.adapt(&mut c, 499, Duration::from_millis(1));
        assert_eq!(c.size, 500, "the end of the log is no reason to grow");
        ADAPTIVE.adapt(&mut c, 500, Duration::from_millis(100));
        assert_eq!(c.size, 500, "between the thresholds");
    }

    #[test]
    fn slow_or_failed_batches_shrink_to_the_minimum() {
        let mut c = ADAPTIVE.cursor();
        ADAPTIVE.adapt(&mut c, 500, Duration::from_secs(1));
        assert_eq!(c.size, 250);
        c.ahead = Some((
            Checkpoint::START,
            EventPage::new(Box::new(Vec::new()), Checkpoint::START, true),
        ));
        ADAPTIVE.shrink(&mut c);
        assert_eq!(c.size, 125);
        assert!(c.ahead.is_none(), "a failed batch reads again");
        ADAPTIVE.shrink(&mut c);
        ADAPTIVE.shrink(&mut c);
        assert_eq!(c.size, 100);
    }

    #[test]
    fn a_fixed_size_never_changes() {
        let fixed = Batching {
            first: 7,
            min: 7,
            max: 7,
        };
        let mut c = fixed.cursor();
        fixed.adapt(&mut c, 7, Duration::ZERO);
        fixed.shrink(&mut c);
        fixed.adapt(&mut c, 7, Duration::from_secs(9));
        assert_eq!(c.size, 7);
    }
}
