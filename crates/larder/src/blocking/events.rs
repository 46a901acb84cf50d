//! The blocking event store, subscriptions and projection runner.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::time::Duration;

use futures_util::StreamExt;
use larder_core::BoxStream;
use tokio::runtime::Runtime;

use super::{Store, Uow};
use crate::events::{
    Aggregate, AppendResult, Checkpoint, EventData, EventFilter, EventLimits, EventSourced,
    ExpectedVersion, LogStats, Projection, ProjectionRetry, ProjectionStatus, ReadAll,
    ReadDirection, RebuildProgress, RecordedEvent, Snapshot, StoredCheckpoint, StreamInfo,
};
use crate::{Deadline, Result};

/// How often [`ProjectionRunner::run`] looks at its shutdown channel.
const SHUTDOWN_POLL: Duration = Duration::from_millis(10);

/// Configures a blocking [`EventStore`]; see [`crate::events::EventStoreBuilder`].
#[derive(Debug)]
pub struct EventStoreBuilder {
    store: Store,
    inner: crate::events::EventStoreBuilder,
}

impl EventStoreBuilder {
    /// See [`crate::events::EventStoreBuilder::prepare`]: `false` when migrations run at
    /// deploy time (`larder migrate up`, or [`super::migrate`]).
    #[must_use]
    pub fn prepare(self, yes: bool) -> Self {
        self.map(|b| b.prepare(yes))
    }

    /// See [`crate::events::EventStoreBuilder::limits`].
    #[must_use]
    pub fn limits(self, limits: EventLimits) -> Self {
        self.map(|b| b.limits(limits))
    }

    /// See [`crate::events::EventStoreBuilder::upcaster`].
    #[must_use]
    pub fn upcaster(
        self,
        event_type: impl Into<String>,
        schema_version: u32,
        f: impl Fn(&mut RecordedEvent) -> Result<()> + Send + Sync + 'static,
    ) -> Self {
        self.map(|b| b.upcaster(event_type, schema_version, f))
    }

    /// See [`crate::events::EventStoreBuilder::upcast_json`].
    #[must_use]
    pub fn upcast_json(
        self,
        event_type: impl Into<String>,
        schema_version: u32,
        f: impl Fn(serde_json::Value) -> Result<serde_json::Value> + Send + Sync + 'static,
    ) -> Self {
        self.map(|b| b.upcast_json(event_type, schema_version, f))
    }

    /// See [`crate::events::EventStoreBuilder::snapshot_every`].
    #[must_use]
    pub fn snapshot_every(self, category: impl Into<String>, n: u64) -> Self {
        self.map(|b| b.snapshot_every(category, n))
    }

    /// See [`crate::events::EventStoreBuilder::poll_interval`].
    #[must_use]
    pub fn poll_interval(self, d: Duration) -> Self {
        self.map(|b| b.poll_interval(d))
    }

    fn map(
        self,
        f: impl FnOnce(crate::events::EventStoreBuilder) -> crate::events::EventStoreBuilder,
    ) -> Self {
        EventStoreBuilder {
            store: self.store,
            inner: f(self.inner),
        }
    }

    /// Makes the backend's event tables ready (unless `prepare(false)`) and builds the
    /// store; see [`crate::events::EventStoreBuilder::open`].
    pub fn open(self) -> Result<EventStore> {
        let inner = self.store.rt.block_on(self.inner.open())?;
        Ok(EventStore {
            store: self.store,
            inner,
        })
    }
}

/// A blocking event store: [`crate::EventStore`] on a blocking [`Store`]'s runtime. Cheap to
/// clone.
///
/// Every operation that takes a [`Uow`] runs in that unit of work's transaction: appends
/// commit with the unit of work's repository writes, or not at all.
#[derive(Debug, Clone)]
pub struct EventStore {
    store: Store,
    inner: crate::EventStore,
}

impl EventStore {
    /// Opens the event store of `store` with default settings, making its tables ready;
    /// see [`crate::EventStore::open`].
    pub fn open(store: &Store) -> Result<EventStore> {
        EventStore::builder(store).open()
    }

    /// Configures the event store of `store`.
    pub fn builder(store: &Store) -> EventStoreBuilder {
        EventStoreBuilder {
            store: store.clone(),
            inner: crate::EventStore::builder(&store.inner),
        }
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The async event store inside.
    pub fn as_async(&self) -> &crate::EventStore {
        &self.inner
    }

    /// The limits in force.
    pub fn limits(&self) -> &EventLimits {
        self.inner.limits()
    }

    /// See [`crate::EventStore::append`]: appends in `uow`'s transaction, if the stream's
    /// version satisfies `expected` (otherwise [`crate::Error::Conflict`]; the unit of work
    /// stays usable).
    pub fn append(
        &self,
        uow: &mut Uow,
        stream: &str,
        expected: ExpectedVersion,
        events: impl IntoIterator<Item = EventData>,
    ) -> Result<AppendResult> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.append(uow, stream, expected, events))
    }

    /// See [`crate::EventStore::read_stream`].
    pub fn read_stream(
        &self,
        uow: &mut Uow,
        stream: &str,
        from: u64,
        limit: u32,
        direction: ReadDirection,
    ) -> Result<Vec<RecordedEvent>> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.read_stream(uow, stream, from, limit, direction))
    }

    /// See [`crate::EventStore::read_all`].
    pub fn read_all(
        &self,
        uow: &mut Uow,
        after: Checkpoint,
        limit: u32,
        filter: &EventFilter,
    ) -> Result<ReadAll> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.read_all(uow, after, limit, filter))
    }

    /// See [`crate::EventStore::stream_info`].
    pub fn stream_info(&self, uow: &mut Uow, stream: &str) -> Result<Option<StreamInfo>> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.stream_info(uow, stream))
    }

    /// See [`crate::EventStore::stats`].
    pub fn stats(&self, uow: &mut Uow) -> Result<LogStats> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.stats(uow))
    }

    /// See [`crate::EventStore::count_after`].
    pub fn count_after(&self, uow: &mut Uow, after: Checkpoint, cap: u64) -> Result<u64> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.count_after(uow, after, cap))
    }

    /// See [`crate::EventStore::stream_all`]: the whole log after `after` as an iterator, in
    /// constant memory (pages of `page` events, each read in its own short read-only unit
    /// of work when the iterator reaches it).
    pub fn stream_all(&self, after: Checkpoint, filter: EventFilter, page: u32) -> EventIter {
        EventIter {
            rt: self.store.rt.clone(),
            inner: Some(self.inner.stream_all(after, filter, page)),
        }
    }

    /// See [`crate::EventStore::subscribe`]: catches up from `after`, then follows the log
    /// live. The subscription reads ahead only while [`Subscription::next`] (or
    /// [`Subscription::next_timeout`]) is blocked.
    pub fn subscribe(&self, after: Checkpoint, filter: EventFilter) -> Subscription {
        // The subscription spawns its reader on the runtime: enter it to do so.
        let _guard = self.store.rt.enter();
        Subscription {
            rt: self.store.rt.clone(),
            inner: Some(self.inner.subscribe(after, filter)),
        }
    }

    /// See [`crate::EventStore::subscribe_with`].
    pub fn subscribe_with(
        &self,
        after: Checkpoint,
        filter: EventFilter,
        buffer: u32,
    ) -> Subscription {
        let _guard = self.store.rt.enter();
        Subscription {
            rt: self.store.rt.clone(),
            inner: Some(self.inner.subscribe_with(after, filter, buffer)),
        }
    }

    /// See [`crate::EventStore::load_snapshot`].
    pub fn load_snapshot(&self, uow: &mut Uow, stream: &str) -> Result<Option<Snapshot>> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.load_snapshot(uow, stream))
    }

    /// See [`crate::EventStore::save_snapshot`].
    pub fn save_snapshot(&self, uow: &mut Uow, snapshot: &Snapshot) -> Result<()> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.save_snapshot(uow, snapshot))
    }

    /// See [`crate::EventStore::load_checkpoint`].
    pub fn load_checkpoint(&self, uow: &mut Uow, name: &str) -> Result<Option<Checkpoint>> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.load_checkpoint(uow, name))
    }

    /// See [`crate::EventStore::claim_checkpoint`].
    pub fn claim_checkpoint(&self, uow: &mut Uow, name: &str) -> Result<Checkpoint> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.claim_checkpoint(uow, name))
    }

    /// See [`crate::EventStore::save_checkpoint`].
    pub fn save_checkpoint(&self, uow: &mut Uow, name: &str, cp: Checkpoint) -> Result<()> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.save_checkpoint(uow, name, cp))
    }

    /// See [`crate::EventStore::delete_checkpoint`].
    pub fn delete_checkpoint(&self, uow: &mut Uow, name: &str) -> Result<()> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.delete_checkpoint(uow, name))
    }

    /// See [`crate::EventStore::list_checkpoints`].
    pub fn list_checkpoints(&self, uow: &mut Uow) -> Result<Vec<StoredCheckpoint>> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.list_checkpoints(uow))
    }

    /// See [`crate::EventStore::wait_for`]: blocks until consumer `name` has processed
    /// `position`, or fails with [`crate::Error::DeadlineExceeded`] at the deadline.
    pub fn wait_for(&self, name: &str, position: Checkpoint, deadline: Deadline) -> Result<()> {
        self.store
            .rt
            .block_on(self.inner.wait_for(name, position, deadline))
    }

    /// See [`crate::EventStore::load`]: loads an event-sourced aggregate.
    pub fn load<A: EventSourced>(&self, uow: &mut Uow, id: &str) -> Result<Aggregate<A>> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.load::<A>(uow, id))
    }

    /// See [`crate::EventStore::save`]: appends an aggregate's pending events (and
    /// snapshots it when due) in `uow`'s transaction.
    pub fn save<A: EventSourced>(
        &self,
        uow: &mut Uow,
        agg: &mut Aggregate<A>,
    ) -> Result<Option<AppendResult>> {
        let (rt, uow) = uow.parts();
        rt.block_on(self.inner.save(uow, agg))
    }
}

/// A blocking iterator over the global log ([`EventStore::stream_all`]).
pub struct EventIter {
    rt: Arc<Runtime>,
    inner: Option<BoxStream<'static, Result<RecordedEvent>>>,
}

impl std::fmt::Debug for EventIter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EventIter")
    }
}

impl Iterator for EventIter {
    type Item = Result<RecordedEvent>;

    fn next(&mut self) -> Option<Self::Item> {
        let stream = self.inner.as_mut()?;
        self.rt.block_on(stream.next())
    }
}

impl Drop for EventIter {
    fn drop(&mut self) {
        // Whatever the stream holds (a pooled connection) is released in the runtime.
        let _guard = self.rt.enter();
        self.inner = None;
    }
}

/// A blocking live subscription ([`EventStore::subscribe`]): an iterator that blocks until
/// the next event; see [`crate::events::Subscription`]. Dropping it stops its reader.
pub struct Subscription {
    rt: Arc<Runtime>,
    inner: Option<crate::events::Subscription>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Subscription").field(&self.inner).finish()
    }
}

impl Subscription {
    fn get(&mut self) -> &mut crate::events::Subscription {
        // `inner` is only taken by `drop`.
        self.inner
            .as_mut()
            .unwrap_or_else(|| unreachable!("subscription already dropped"))
    }

    /// The checkpoint of the last event delivered (resume from it).
    pub fn checkpoint(&self) -> Checkpoint {
        self.inner
            .as_ref()
            .map_or(Checkpoint::START, crate::events::Subscription::checkpoint)
    }

    /// Events read ahead and not consumed yet.
    pub fn buffered(&self) -> usize {
        self.inner
            .as_ref()
            .map_or(0, crate::events::Subscription::buffered)
    }

    /// See [`crate::events::Subscription::lag`].
    pub fn lag(&self) -> Result<u64> {
        match &self.inner {
            Some(sub) => self.rt.block_on(sub.lag()),
            None => Err(crate::Error::Closed("subscription")),
        }
    }

    /// The next event, waiting at most `timeout`: `None` when none arrived in time (or the
    /// subscription ended).
    pub fn next_timeout(&mut self, timeout: Duration) -> Option<Result<RecordedEvent>> {
        let rt = self.rt.clone();
        let sub = self.get();
        rt.block_on(async { tokio::time::timeout(timeout, sub.next()).await.ok()? })
    }
}

impl Iterator for Subscription {
    type Item = Result<RecordedEvent>;

    /// Blocks until the next event (or an error; `None` once the subscription ended).
    fn next(&mut self) -> Option<Self::Item> {
        let rt = self.rt.clone();
        rt.block_on(self.get().next())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        let _guard = self.rt.enter();
        self.inner = None;
    }
}

/// Runs projections from blocking code: [`crate::ProjectionRunner`] on a blocking
/// [`Store`]'s runtime, with the same batching, exactly-once checkpoints and failure policy.
///
/// Projections implement the async [`Projection`] trait (an `async fn handle` that writes
/// through the async [`crate::Uow`] it is given); the runner drives them on the store's
/// runtime. A handler must therefore not call the blocking facade (that would start a
/// runtime inside the runtime, which panics): use the async API it receives.
#[derive(Debug, Clone)]
pub struct ProjectionRunner {
    rt: Arc<Runtime>,
    inner: crate::ProjectionRunner,
}

impl ProjectionRunner {
    /// A runner over `events` with no projections yet; see [`crate::ProjectionRunner::new`].
    pub fn new(events: &EventStore) -> ProjectionRunner {
        ProjectionRunner {
            rt: events.store.rt.clone(),
            inner: crate::ProjectionRunner::new(&events.inner),
        }
    }

    /// See [`crate::ProjectionRunner::with_retry`].
    #[must_use]
    pub fn with_retry(self, retry: ProjectionRetry) -> Self {
        ProjectionRunner {
            rt: self.rt,
            inner: self.inner.with_retry(retry),
        }
    }

    /// Adds a projection (names must be unique).
    #[must_use]
    pub fn with(self, projection: impl Projection) -> Self {
        ProjectionRunner {
            rt: self.rt,
            inner: self.inner.with(projection),
        }
    }

    /// See [`crate::ProjectionRunner::batch_size`].
    #[must_use]
    pub fn batch_size(self, n: u32) -> Self {
        ProjectionRunner {
            rt: self.rt,
            inner: self.inner.batch_size(n),
        }
    }

    /// See [`crate::ProjectionRunner::adaptive_batches`].
    #[must_use]
    pub fn adaptive_batches(self, min: u32, max: u32) -> Self {
        ProjectionRunner {
            rt: self.rt,
            inner: self.inner.adaptive_batches(min, max),
        }
    }

    /// The projections' names.
    pub fn names(&self) -> Vec<&str> {
        self.inner.names()
    }

    /// The async runner inside.
    pub fn as_async(&self) -> &crate::ProjectionRunner {
        &self.inner
    }

    /// See [`crate::ProjectionRunner::catch_up`]: processes every projection up to the
    /// readable end of the log; returns the number of events handled.
    pub fn catch_up(&self) -> Result<u64> {
        self.rt.block_on(self.inner.catch_up())
    }

    /// See [`crate::ProjectionRunner::run`]: runs every projection, following the log,
    /// until `shutdown` receives a message or every sender of it is dropped. Returns
    /// `Ok(())` at shutdown, or the first stop's error once every projection has stopped.
    ///
    /// ```no_run
    /// # fn demo(runner: larder::blocking::ProjectionRunner) -> larder::Result<()> {
    /// let (stop, shutdown) = std::sync::mpsc::channel();
    /// let worker = std::thread::spawn(move || runner.run(shutdown));
    /// // … later:
    /// stop.send(()).ok();
    /// worker.join().expect("the runner panicked")?;
    /// # Ok(()) }
    /// ```
    pub fn run(&self, shutdown: Receiver<()>) -> Result<()> {
        // A std channel has no async side: look at it between sleeps. Shutdown is rare, so
        // 10 ms of latency is cheap next to a bridging thread that could outlive the run.
        let signal = async move {
            loop {
                match shutdown.try_recv() {
                    Ok(()) | Err(TryRecvError::Disconnected) => return,
                    Err(TryRecvError::Empty) => tokio::time::sleep(SHUTDOWN_POLL).await,
                }
            }
        };
        self.rt.block_on(self.inner.run(signal))
    }

    /// See [`crate::ProjectionRunner::rebuild`].
    pub fn rebuild(&self, name: &str, progress: impl FnMut(RebuildProgress) + Send) -> Result<u64> {
        self.rt.block_on(self.inner.rebuild(name, progress))
    }

    /// See [`crate::ProjectionRunner::status`].
    pub fn status(&self) -> Result<Vec<ProjectionStatus>> {
        self.rt.block_on(self.inner.status())
    }
}
