//! Projections: read models fed from the global log, with their checkpoint committed in
//! the same transaction as their writes.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use super::store::EventStore;
use super::subscription::LogWaker;
use super::types::{Checkpoint, EventFilter, RecordedEvent};
use crate::backend::BoxFuture;
use crate::error::{Error, Result};
use crate::uow::Uow;

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
    /// back (checkpoint included) and stops the runner with that error.
    fn handle(
        &self,
        uow: &mut Uow,
        event: &RecordedEvent,
    ) -> impl Future<Output = Result<()>> + Send;

    /// Clears the read model before a rebuild (in the same unit of work that resets the
    /// checkpoint). Default: nothing to clear.
    fn reset(&self, uow: &mut Uow) -> impl Future<Output = Result<()>> + Send {
        let _ = uow;
        async { Ok(()) }
    }
}

trait DynProjection: Send + Sync {
    fn name(&self) -> &str;
    fn filter(&self) -> EventFilter;
    fn handle<'a>(&'a self, uow: &'a mut Uow, e: &'a RecordedEvent) -> BoxFuture<'a, Result<()>>;
    fn reset<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<()>>;
}

impl<P: Projection> DynProjection for P {
    fn name(&self) -> &str {
        Projection::name(self)
    }
    fn filter(&self) -> EventFilter {
        Projection::filter(self)
    }
    fn handle<'a>(&'a self, uow: &'a mut Uow, e: &'a RecordedEvent) -> BoxFuture<'a, Result<()>> {
        Box::pin(Projection::handle(self, uow, e))
    }
    fn reset<'a>(&'a self, uow: &'a mut Uow) -> BoxFuture<'a, Result<()>> {
        Box::pin(Projection::reset(self, uow))
    }
}

/// A projection's state, for status pages and `larder projections status`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProjectionStatus {
    /// Its name.
    pub name: String,
    /// Its committed checkpoint (`None`: never ran).
    pub checkpoint: Option<Checkpoint>,
    /// Committed events after its checkpoint (all events, whatever its filter).
    pub lag: u64,
}

/// Progress of a rebuild.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildProgress {
    /// Events processed so far.
    pub done: u64,
    /// Events in the log when the rebuild started.
    pub total: u64,
}

/// Runs projections side by side.
///
/// Each step of a projection is one unit of work: claim the checkpoint (a row lock, so two
/// runners of the same projection never process the same batch), read the next batch of
/// the global log after it, hand each event to the projection, store the new checkpoint,
/// commit. The log never skips (see [`EventStore::read_all`]), so neither does a
/// projection.
#[derive(Clone)]
pub struct ProjectionRunner {
    events: EventStore,
    projections: Vec<Arc<dyn DynProjection>>,
    batch: u32,
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
            .field("batch", &self.batch)
            .finish_non_exhaustive()
    }
}

impl ProjectionRunner {
    /// A runner over `events` with no projections yet; batches of 500 events.
    pub fn new(events: &EventStore) -> ProjectionRunner {
        ProjectionRunner {
            events: events.clone(),
            projections: Vec::new(),
            batch: 500,
        }
    }

    /// Adds a projection (names must be unique).
    #[must_use]
    pub fn with(mut self, projection: impl Projection) -> Self {
        self.projections.push(Arc::new(projection));
        self
    }

    /// Events per unit of work (default 500; capped by the event store's read limit).
    #[must_use]
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch = n.clamp(1, self.events.limits().max_read);
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
    async fn step(&self, p: &dyn DynProjection) -> Result<(usize, bool)> {
        let es = &self.events;
        let mut uow = es.store().begin().await?;
        let cp = es.claim_checkpoint(&mut uow, p.name()).await?;
        let batch = es.read_all(&mut uow, cp, self.batch, &p.filter()).await?;
        for e in &batch.events {
            p.handle(&mut uow, e).await?;
        }
        if batch.next != cp {
            es.save_checkpoint(&mut uow, p.name(), batch.next).await?;
        }
        uow.commit().await?;
        Ok((batch.events.len(), batch.end_of_log))
    }

    /// Processes every projection until each has reached the readable end of the log.
    /// Returns the number of events handled.
    pub async fn catch_up(&self) -> Result<u64> {
        self.check_names()?;
        let mut total = 0;
        for p in &self.projections {
            loop {
                let (n, end) = self.step(p.as_ref()).await?;
                total += n as u64;
                if end {
                    break;
                }
            }
        }
        Ok(total)
    }

    /// Runs every projection concurrently until `shutdown` completes, waking on new
    /// events (in-process at once, PostgreSQL `LISTEN/NOTIFY`, or polling). The first
    /// projection error stops the runner and is returned; the failed batch was rolled
    /// back, so restarting resumes exactly there.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.check_names()?;
        let loops = self.projections.iter().map(|p| self.follow(p.clone()));
        let all = futures_util::future::try_join_all(loops);
        tokio::pin!(all);
        tokio::pin!(shutdown);
        match futures_util::future::select(all, shutdown).await {
            futures_util::future::Either::Left((r, _)) => r.map(|_| ()),
            futures_util::future::Either::Right(((), _)) => Ok(()),
        }
    }

    async fn follow(&self, p: Arc<dyn DynProjection>) -> Result<()> {
        let mut waker = LogWaker::new(&self.events).await;
        loop {
            waker.mark_seen();
            let (_, end) = self.step(p.as_ref()).await?;
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
        loop {
            let (n, end) = self.step(p.as_ref()).await?;
            done += n as u64;
            progress(RebuildProgress {
                done: done.min(total.max(done)),
                total: total.max(done),
            });
            if end {
                break;
            }
        }
        tracing::info!(
            target: "larder::projections",
            projection = p.name(),
            events = done,
            elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
            "projection rebuilt"
        );
        Ok(done)
    }

    /// Each projection's checkpoint and lag.
    pub async fn status(&self) -> Result<Vec<ProjectionStatus>> {
        let es = &self.events;
        let mut uow = es.store().read().await?;
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
            out.push(ProjectionStatus {
                name: p.name().to_owned(),
                checkpoint,
                lag,
            });
        }
        uow.commit().await?;
        Ok(out)
    }
}
