//! The relay: publishes committed outbox messages through a [`Sink`], at least once, in
//! per-key order, sharing the work with any number of other relays.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tracing::Instrument;
use uuid::Uuid;

use super::Outbox;
use super::backend::Failure;
use super::store::micros;
use super::types::{MessageId, StoredMessage, check_consumer};
use crate::backend::BoxFuture;
use crate::error::{Error, Result};
use crate::events::now_micros;
use crate::events::subscription::LogWaker;
use crate::uow::{Store, jittered_backoff, storage_span};

/// A message as a sink publishes it.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing<'a> {
    /// Unique id: hand it to the broker for de-duplication where it has a field for it.
    pub id: MessageId,
    /// Topic.
    pub topic: &'a str,
    /// Ordering key.
    pub key: Option<&'a str>,
    /// Body.
    pub payload: &'a [u8],
    /// Headers.
    pub headers: &'a BTreeMap<String, String>,
    /// Failed attempts before this one.
    pub attempt: u32,
    /// When it was enqueued (microseconds since the Unix epoch).
    pub enqueued_at_micros: i64,
}

/// Why a sink could not publish a message. The variant decides what the relay does.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SinkError {
    /// The broker cannot be reached, timed out or refused the connection: an outage, not
    /// the message's fault. The attempt is not counted (nothing is dead-lettered because
    /// a broker is down) and the relay backs off as a whole.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused or failed this message; it is retried with backoff and
    /// dead-lettered after `max_attempts`.
    #[error("publish failed: {0}")]
    Failed(String),
    /// The broker refused this message for good (an HTTP 4xx, a malformed subject): it is
    /// dead-lettered at once.
    #[error("message refused: {0}")]
    Poison(String),
}

/// A broker (or anything else) the relay publishes to.
///
/// # Contract
///
/// - `publish` returns `Ok` only once the broker acknowledged the message (a publisher
///   confirm, a JetStream ack, a PUBACK, a 2xx), so an `Ok` is never lost by the broker.
/// - The relay calls `publish` for one key's messages one after the other and for
///   different keys concurrently: a sink over a multiplexed connection gets pipelining for
///   free and must not reorder calls made one after the other.
/// - Any message may be published more than once (a relay killed after publishing, before
///   recording it): pass [`Outgoing::id`] to the broker's de-duplication where it has one.
pub trait Sink: Send + Sync + 'static {
    /// The `messaging.system` of spans (`redis`, `nats`, `rabbitmq`, `mqtt`, `http`,
    /// `stdout`…).
    fn system(&self) -> &'static str;

    /// Publishes one message and waits for the broker's acknowledgement.
    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>>;

    /// Called after each batch's publishes (a file sink syncs here).
    fn flush(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async { Ok(()) })
    }
}

impl<S: Sink + ?Sized> Sink for Arc<S> {
    fn system(&self) -> &'static str {
        (**self).system()
    }
    fn publish<'a>(&'a self, message: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        (**self).publish(message)
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        (**self).flush()
    }
}

/// Counters of one relay (cheap to read while it runs).
#[derive(Debug, Default)]
pub struct RelayStats {
    published: AtomicU64,
    failed_attempts: AtomicU64,
    dead_lettered: AtomicU64,
    outages: AtomicU64,
    batches: AtomicU64,
    latency_sum_us: AtomicU64,
    latency_max_us: AtomicU64,
    partitions: AtomicU64,
}

/// A snapshot of [`RelayStats`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct RelayCounters {
    /// Messages published and recorded as delivered.
    pub published: u64,
    /// Failed publish attempts (outages excluded).
    pub failed_attempts: u64,
    /// Messages dead-lettered.
    pub dead_lettered: u64,
    /// Batches that met an unavailable broker.
    pub outages: u64,
    /// Batches published.
    pub batches: u64,
    /// Mean time from enqueue to broker acknowledgement, microseconds.
    pub mean_latency_us: u64,
    /// Longest time from enqueue to broker acknowledgement, microseconds.
    pub max_latency_us: u64,
    /// Partitions this relay holds now.
    pub partitions: u64,
}

impl RelayStats {
    /// The counters now.
    pub fn snapshot(&self) -> RelayCounters {
        let published = self.published.load(Ordering::Relaxed);
        RelayCounters {
            published,
            failed_attempts: self.failed_attempts.load(Ordering::Relaxed),
            dead_lettered: self.dead_lettered.load(Ordering::Relaxed),
            outages: self.outages.load(Ordering::Relaxed),
            batches: self.batches.load(Ordering::Relaxed),
            mean_latency_us: self
                .latency_sum_us
                .load(Ordering::Relaxed)
                .checked_div(published)
                .unwrap_or(0),
            max_latency_us: self.latency_max_us.load(Ordering::Relaxed),
            partitions: self.partitions.load(Ordering::Relaxed),
        }
    }
}

/// Configures a [`Relay`].
pub struct RelayBuilder {
    store: Store,
    sink: Option<Arc<dyn Sink>>,
    name: String,
    batch_size: u32,
    poll_interval: Duration,
    lease: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    publish_timeout: Duration,
    retention: Option<Duration>,
    retention_interval: Duration,
}

impl fmt::Debug for RelayBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RelayBuilder")
            .field("name", &self.name)
            .field("sink", &self.sink.as_ref().map(|s| s.system()))
            .field("batch_size", &self.batch_size)
            .field("lease", &self.lease)
            .field("max_attempts", &self.max_attempts)
            .finish_non_exhaustive()
    }
}

impl RelayBuilder {
    /// The sink to publish to (required).
    pub fn sink(mut self, sink: impl Sink) -> Self {
        self.sink = Some(Arc::new(sink));
        self
    }

    /// The sink, shared.
    pub fn sink_arc(mut self, sink: Arc<dyn Sink>) -> Self {
        self.sink = Some(sink);
        self
    }

    /// This relay's name in the lease table (default: host, process id and a random
    /// suffix). Two running relays must not share a name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// Most messages published and not yet recorded as delivered (default 512): the
    /// bound on what a killed relay publishes twice. [`Relay::run`] works in two halves of
    /// `n / 2`, recording one while the next is fetched and published; [`Relay::run_once`]
    /// publishes one batch of `n`.
    pub fn batch_size(mut self, n: u32) -> Self {
        self.batch_size = n.max(1);
        self
    }

    /// How long to sleep when idle without a wake-up (default 1 s); also the longest gap
    /// between lease renewals while idle.
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.poll_interval = d;
        self
    }

    /// How long a partition lease lasts without renewal (default 10 s): a dead relay's
    /// partitions are taken over within the lease plus one poll.
    pub fn lease(mut self, d: Duration) -> Self {
        self.lease = d.max(Duration::from_millis(100));
        self
    }

    /// Failed attempts after which a message is dead-lettered (default 10).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n.max(1);
        self
    }

    /// Backoff of a failed message: `base` doubled per attempt, capped, with jitter
    /// (default 200 ms, capped at 5 min).
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap.max(base);
        self
    }

    /// How long one publish may wait for the broker's acknowledgement before it counts as
    /// an outage (default 30 s).
    pub fn publish_timeout(mut self, d: Duration) -> Self {
        self.publish_timeout = d;
        self
    }

    /// How long delivered and skipped messages are kept (default 7 days; `None` keeps
    /// them), deleted in bounded batches every `interval` (default 60 s).
    ///
    /// `Some(Duration::ZERO)` keeps no delivered message: the relay deletes each one in
    /// the same statement that would have marked it (on PostgreSQL a `DELETE` costs about
    /// a quarter of the `UPDATE`, which is most of the relay's database time). Status then
    /// counts no delivered messages, and a caller-supplied id can be enqueued again once
    /// its message was delivered.
    pub fn retention(mut self, keep: Option<Duration>, interval: Duration) -> Self {
        self.retention = keep;
        self.retention_interval = interval;
        self
    }

    /// Applies the `[outbox]` settings (batch size, max attempts, lease, poll interval;
    /// the sink URL is built by `larder::relay::sink_from_url`).
    pub fn settings(self, s: &crate::settings::OutboxSettings) -> Self {
        self.batch_size(s.batch_size)
            .max_attempts(s.max_attempts)
            .lease(s.lease)
            .poll_interval(s.poll_interval)
    }

    /// Builds the relay, making larder's tables ready.
    pub async fn build(self) -> Result<Relay> {
        check_consumer(&self.name)?;
        let sink = self.sink.ok_or_else(|| {
            Error::Configuration(
                "the relay has no sink: call `.sink(...)` before `.build()`".into(),
            )
        })?;
        let outbox = Outbox::open(&self.store).await?;
        Ok(Relay {
            inner: Arc::new(RelayInner {
                outbox,
                sink,
                name: self.name,
                batch_size: self.batch_size,
                poll_interval: self.poll_interval,
                lease: self.lease,
                max_attempts: self.max_attempts,
                backoff_base: self.backoff_base,
                backoff_cap: self.backoff_cap,
                publish_timeout: self.publish_timeout,
                retention: self.retention,
                retention_interval: self.retention_interval,
                stats: Arc::default(),
            }),
        })
    }

    /// Builds the relay and runs it until `shutdown` completes (see [`Relay::run`]).
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        self.build().await?.run(shutdown).await
    }
}

struct RelayInner {
    outbox: Outbox,
    sink: Arc<dyn Sink>,
    name: String,
    batch_size: u32,
    poll_interval: Duration,
    lease: Duration,
    max_attempts: u32,
    backoff_base: Duration,
    backoff_cap: Duration,
    publish_timeout: Duration,
    retention: Option<Duration>,
    retention_interval: Duration,
    stats: Arc<RelayStats>,
}

/// Publishes committed outbox messages through a [`Sink`].
///
/// - **At least once**: a message is recorded as delivered only after the broker
///   acknowledged it; a relay killed in between publishes it again after restart.
/// - **Per-key order**: a key's messages are published one after the other in log
///   order; a message that commits late with an earlier position is neither skipped nor
///   overtaken (the outbox obeys the event log's no-skip rule). Keyless messages go out
///   concurrently.
/// - **Sharing**: messages are hashed by key into partitions; each partition is leased
///   to one relay at a time and the relays seen alive split them evenly, so any number of
///   relays on any number of machines share the work (PostgreSQL: 16 partitions; SQLite:
///   one partition, so one active relay).
/// - **Failures**: a failed message is retried with exponential backoff and jitter and
///   dead-lettered after `max_attempts`; its key's later messages are parked behind it
///   until an operator replays or skips it ([`Outbox::replay`], [`Outbox::skip`]); other
///   keys keep flowing. An unavailable broker is an outage: the relay backs off and nothing
///   is dead-lettered.
/// - Wake-ups: in-process commits and PostgreSQL `LISTEN/NOTIFY`, polling as the fallback.
///
/// ```
/// use larder_core::outbox::{Message, MemorySink, Outbox, Relay};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_core::Result<()> {
/// let store = larder_core::Store::memory();
/// let outbox = Outbox::open(&store).await?;
/// let mut uow = store.begin().await?;
/// outbox.enqueue(&mut uow, Message::new("greetings", "hello").with_key("k")).await?;
/// uow.commit().await?;
///
/// let sink = MemorySink::new();
/// let relay = Relay::builder(&store).sink(sink.clone()).build().await?;
/// relay.run_once().await?;
/// assert_eq!(sink.messages().len(), 1);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Relay {
    inner: Arc<RelayInner>,
}

impl fmt::Debug for Relay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Relay")
            .field("name", &self.inner.name)
            .field("sink", &self.inner.sink.system())
            .field("stats", &self.inner.stats.snapshot())
            .finish_non_exhaustive()
    }
}

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct BatchReport {
    /// Messages fetched.
    pub fetched: usize,
    /// Published and recorded.
    pub delivered: usize,
    /// Failed attempts recorded (dead letters included).
    pub failed: usize,
    /// Dead-lettered now.
    pub dead: usize,
    /// The broker was unavailable.
    pub outage: bool,
}

fn default_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "relay".into());
    let suffix: u32 = rand::RngExt::random(&mut rand::rng());
    format!("{host}-{}-{suffix:08x}", std::process::id())
}

/// A published batch's outcomes, not yet recorded.
#[derive(Default)]
struct Judged {
    delivered: Vec<Uuid>,
    failures: Vec<Failure>,
    latency_sum_us: u64,
    latency_max_us: u64,
    /// The sink's flush failed: nothing of the batch counts as published.
    flush_failed: bool,
}

impl Judged {
    /// Everything published was acknowledged: the next half may be published while this
    /// one is recorded.
    fn clean(&self, report: &BatchReport) -> bool {
        !report.outage && self.failures.is_empty() && !self.flush_failed
    }
}

enum Outcome {
    Delivered(Uuid, i64),
    Failed(Uuid, u32, SinkError),
    Outage,
}

impl Relay {
    /// Configures a relay of `store`'s outbox.
    pub fn builder(store: &Store) -> RelayBuilder {
        RelayBuilder {
            store: store.clone(),
            sink: None,
            name: default_name(),
            batch_size: 512,
            poll_interval: Duration::from_secs(1),
            lease: Duration::from_secs(10),
            max_attempts: 10,
            backoff_base: Duration::from_millis(200),
            backoff_cap: Duration::from_secs(300),
            publish_timeout: Duration::from_secs(30),
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_interval: Duration::from_secs(60),
        }
    }

    /// This relay's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<RelayStats> {
        self.inner.stats.clone()
    }

    fn store(&self) -> &Store {
        self.inner.outbox.store()
    }

    /// Renews, takes or releases partition leases so that the relays seen alive split the
    /// partitions evenly; returns the partitions this relay holds.
    pub async fn lease(&self) -> Result<Vec<u32>> {
        let i = &self.inner;
        let lease = micros(i.lease);
        let mut uow = self.store().begin().await?;
        let span = storage_span!(
            &uow,
            "larder.relay.lease",
            "lease",
            "_larder_outbox_partitions",
            Some(i.name.as_str()),
        );
        let name = i.name.as_str();
        let deadline = uow.deadline();
        let r = uow
            .call_outbox("outbox.lease", deadline, &span, |tx| {
                Box::pin(async move {
                    let now = now_micros();
                    let live = tx.heartbeat(name, now, now - lease).await?.max(1);
                    let leases = tx.leases().await?;
                    let total = u32::try_from(leases.len()).unwrap_or(u32::MAX);
                    let target = total.div_ceil(live) as usize;
                    let mut mine: Vec<u32> = leases
                        .iter()
                        .filter(|l| l.owner.as_deref() == Some(name) && l.until_micros >= now)
                        .map(|l| l.partition)
                        .collect();
                    let mut release = Vec::new();
                    if mine.len() > target {
                        release = mine.split_off(target);
                    }
                    if mine.len() < target {
                        // Free partitions, starting at a place of this relay's own so that
                        // relays starting together do not all race for partition 0.
                        let mut free: Vec<u32> = leases
                            .iter()
                            .filter(|l| l.until_micros < now)
                            .map(|l| l.partition)
                            .collect();
                        if !free.is_empty() {
                            let start = super::types::partition_of(
                                Some(name),
                                Uuid::nil(),
                                u32::try_from(free.len()).unwrap_or(1),
                            ) as usize;
                            free.rotate_left(start);
                        }
                        mine.extend(free.into_iter().take(target - mine.len()));
                    }
                    if !release.is_empty() {
                        tx.release_partitions(name, Some(&release)).await?;
                    }
                    let mut held = tx.take_partitions(name, &mine, now, now + lease).await?;
                    held.sort_unstable();
                    Ok(held)
                })
            })
            .await;
        uow.finish_op(
            &span,
            "outbox.lease",
            Some("_larder_outbox_partitions"),
            None,
            &r,
            |v| v.len() as u64,
        );
        let held = r?;
        uow.commit().await?;
        i.stats
            .partitions
            .store(held.len() as u64, Ordering::Relaxed);
        Ok(held)
    }

    /// Releases every lease of this relay (graceful shutdown: the others take its
    /// partitions at once instead of after the lease).
    pub async fn release(&self) -> Result<()> {
        let mut uow = self.store().begin().await?;
        let span = storage_span!(
            &uow,
            "larder.relay.release",
            "lease",
            "_larder_outbox_partitions",
            Some(self.inner.name.as_str()),
        );
        let name = self.inner.name.as_str();
        let deadline = uow.deadline();
        let r = uow
            .call_outbox("outbox.lease", deadline, &span, |tx| {
                tx.release_partitions(name, None)
            })
            .await;
        uow.finish_op(
            &span,
            "outbox.lease",
            Some("_larder_outbox_partitions"),
            None,
            &r,
            |_| 0,
        );
        r?;
        uow.commit().await?;
        self.inner.stats.partitions.store(0, Ordering::Relaxed);
        Ok(())
    }

    /// Takes leases, then publishes one batch of the held partitions (tests, `larder
    /// outbox relay --once`, and the body of [`Relay::run`]).
    pub async fn run_once(&self) -> Result<BatchReport> {
        let parts = self.lease().await?;
        self.batch(&parts).await
    }

    /// Publishes one batch of ready messages of `partitions` and records the outcomes.
    async fn batch(&self, partitions: &[u32]) -> Result<BatchReport> {
        let (report, judged) = self
            .fetch_and_publish(partitions, self.inner.batch_size, &[])
            .await?;
        self.record(&report, &judged).await?;
        Ok(report)
    }

    /// Fetches up to `limit` ready messages of `partitions` (leaving out `exclude`: the
    /// messages of a half still being recorded), publishes them and judges the outcomes.
    /// Nothing is recorded yet.
    async fn fetch_and_publish(
        &self,
        partitions: &[u32],
        limit: u32,
        exclude: &[Uuid],
    ) -> Result<(BatchReport, Judged)> {
        let i = &self.inner;
        let mut report = BatchReport::default();
        if partitions.is_empty() {
            return Ok((report, Judged::default()));
        }
        let messages = self.fetch(partitions, limit, exclude).await?;
        report.fetched = messages.len();
        if messages.is_empty() {
            return Ok((report, Judged::default()));
        }
        let span = tracing::info_span!(
            "larder.relay.batch",
            otel.kind = "producer",
            messaging.system = i.sink.system(),
            messaging.operation.name = "publish",
            messaging.batch.message_count = messages.len() as u64,
            larder.relay = i.name.as_str(),
        );
        let outcomes = self.publish(&messages).instrument(span.clone()).await;
        if let Err(e) = i.sink.flush().await {
            // Nothing is recorded: every message of the batch is published again.
            tracing::warn!(parent: &span, error = %e, "sink flush failed; the batch will be published again");
            report.outage = true;
            let judged = Judged {
                flush_failed: true,
                ..Judged::default()
            };
            return Ok((report, judged));
        }
        let now = now_micros();
        let mut judged = Judged::default();
        for o in outcomes {
            match o {
                Outcome::Delivered(id, enq) => {
                    let lat = u64::try_from(now.saturating_sub(enq)).unwrap_or(0);
                    judged.latency_sum_us += lat;
                    judged.latency_max_us = judged.latency_max_us.max(lat);
                    judged.delivered.push(id);
                }
                Outcome::Failed(id, attempts, e) => {
                    let dead = matches!(e, SinkError::Poison(_)) || attempts + 1 >= i.max_attempts;
                    let wait = jittered_backoff(i.backoff_base, attempts, i.backoff_cap);
                    if dead {
                        report.dead += 1;
                    }
                    judged.failures.push(Failure {
                        id,
                        error: crate::error::one_line(&e.to_string()),
                        due_at_micros: now.saturating_add(micros(wait)),
                        dead,
                        count_attempt: true,
                    });
                }
                Outcome::Outage => report.outage = true,
            }
        }
        report.delivered = judged.delivered.len();
        report.failed = judged.failures.len();
        if report.dead > 0 {
            tracing::warn!(parent: &span, dead = report.dead, "messages dead-lettered; their keys are parked until replayed or skipped");
        }
        Ok((report, judged))
    }

    /// Records what [`Relay::fetch_and_publish`] judged, then counts it.
    async fn record(&self, report: &BatchReport, judged: &Judged) -> Result<()> {
        let i = &self.inner;
        if report.fetched == 0 {
            return Ok(());
        }
        if judged.flush_failed {
            i.stats.outages.fetch_add(1, Ordering::Relaxed);
            return Ok(());
        }
        if !judged.delivered.is_empty() || !judged.failures.is_empty() {
            self.mark(&judged.delivered, &judged.failures).await?;
        }
        i.stats
            .published
            .fetch_add(judged.delivered.len() as u64, Ordering::Relaxed);
        i.stats
            .latency_sum_us
            .fetch_add(judged.latency_sum_us, Ordering::Relaxed);
        i.stats
            .latency_max_us
            .fetch_max(judged.latency_max_us, Ordering::Relaxed);
        i.stats
            .failed_attempts
            .fetch_add(judged.failures.len() as u64, Ordering::Relaxed);
        i.stats
            .dead_lettered
            .fetch_add(report.dead as u64, Ordering::Relaxed);
        i.stats.batches.fetch_add(1, Ordering::Relaxed);
        if report.outage {
            i.stats.outages.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    async fn fetch(
        &self,
        partitions: &[u32],
        limit: u32,
        exclude: &[Uuid],
    ) -> Result<Vec<StoredMessage>> {
        let mut uow = self.store().read().await?;
        let span = storage_span!(
            &uow,
            "larder.relay.fetch",
            "fetch",
            "_larder_outbox",
            None::<&str>,
        );
        let now = now_micros();
        let deadline = uow.deadline();
        let r = uow
            .call_outbox("outbox.fetch", deadline, &span, |tx| {
                tx.fetch_ready(partitions, now, limit, exclude)
            })
            .await;
        uow.finish_op(
            &span,
            "outbox.fetch",
            Some("_larder_outbox"),
            None,
            &r,
            |v| v.len() as u64,
        );
        let m = r?;
        uow.commit().await?;
        Ok(m)
    }

    /// Publishes a batch: each key's messages one after the other (a failure stops the
    /// key's chain for this batch), keys and keyless messages concurrently.
    async fn publish(&self, messages: &[StoredMessage]) -> Vec<Outcome> {
        let mut chains: Vec<Vec<&StoredMessage>> = Vec::new();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for m in messages {
            match m.key.as_deref() {
                Some(k) => match by_key.get(k) {
                    Some(&c) => chains[c].push(m),
                    None => {
                        by_key.insert(k, chains.len());
                        chains.push(vec![m]);
                    }
                },
                None => chains.push(vec![m]),
            }
        }
        let i = &self.inner;
        let runs = chains.into_iter().map(|chain| async move {
            let mut out = Vec::with_capacity(chain.len());
            for m in chain {
                let msg = Outgoing {
                    id: m.id,
                    topic: &m.topic,
                    key: m.key.as_deref(),
                    payload: &m.payload,
                    headers: &m.headers,
                    attempt: m.attempts,
                    enqueued_at_micros: m.enqueued_at_micros,
                };
                let span = tracing::debug_span!(
                    "larder.relay.publish",
                    otel.kind = "producer",
                    messaging.system = i.sink.system(),
                    messaging.destination.name = m.topic.as_str(),
                    messaging.message.id = %m.id,
                    error.type = tracing::field::Empty,
                );
                let r = tokio::time::timeout(i.publish_timeout, i.sink.publish(msg))
                    .instrument(span.clone())
                    .await
                    .unwrap_or_else(|_| {
                        Err(SinkError::Unavailable(format!(
                            "no acknowledgement within {:?}",
                            i.publish_timeout
                        )))
                    });
                match r {
                    Ok(()) => out.push(Outcome::Delivered(m.id.0, m.enqueued_at_micros)),
                    Err(SinkError::Unavailable(e)) => {
                        span.record("error.type", "unavailable");
                        tracing::debug!(parent: &span, error = %e, "broker unavailable");
                        out.push(Outcome::Outage);
                        break;
                    }
                    Err(e) => {
                        span.record("error.type", "failed");
                        out.push(Outcome::Failed(m.id.0, m.attempts, e));
                        break;
                    }
                }
            }
            out
        });
        futures_util::future::join_all(runs)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn mark(&self, delivered: &[Uuid], failures: &[Failure]) -> Result<()> {
        let delete = !delivered.is_empty() && self.inner.retention == Some(Duration::ZERO);
        let mut attempt = 0u32;
        loop {
            let r = async {
                let mut uow = self.store().begin().await?;
                let span = storage_span!(
                    &uow,
                    "larder.relay.mark",
                    "mark",
                    "_larder_outbox",
                    None::<&str>,
                );
                let now = now_micros();
                let deadline = uow.deadline();
                let r = uow
                    .call_outbox("outbox.mark", deadline, &span, |tx| {
                        Box::pin(async move {
                            tx.relax_durability().await?;
                            let mut n = 0;
                            if delete {
                                n += tx.delete_delivered(delivered).await?;
                            } else if !delivered.is_empty() {
                                n += tx.mark_delivered(delivered, now).await?;
                            }
                            if !failures.is_empty() {
                                tx.mark_failed(failures, now).await?;
                                n += failures.len() as u64;
                            }
                            Ok(n)
                        })
                    })
                    .await;
                uow.finish_op(
                    &span,
                    "outbox.mark",
                    Some("_larder_outbox"),
                    None,
                    &r,
                    |n| *n,
                );
                r?;
                uow.commit().await?;
                Ok::<(), Error>(())
            }
            .await;
            match r {
                Err(e) if e.is_transient() && attempt < 5 => {
                    attempt += 1;
                    tokio::time::sleep(jittered_backoff(
                        Duration::from_millis(20),
                        attempt,
                        Duration::from_secs(2),
                    ))
                    .await;
                }
                r => return r,
            }
        }
    }

    async fn retention(&self) -> Result<u64> {
        let Some(keep) = self.inner.retention else {
            return Ok(0);
        };
        let mut total = 0;
        // Bounded: at most ten batches per round, so retention never starves publishing.
        for _ in 0..10 {
            let mut uow = self.store().begin().await?;
            let n = self.inner.outbox.purge(&mut uow, keep, 1000).await?;
            uow.commit().await?;
            total += n;
            if n < 1000 {
                break;
            }
        }
        Ok(total)
    }

    /// Runs until `shutdown` completes: keeps leases, publishes batches, sleeps when idle
    /// (woken by commits that enqueue), backs off on outages, runs retention. On shutdown
    /// the batch in flight is finished and recorded, then the leases are released.
    /// Database errors are logged and retried with backoff; the relay never gives up.
    pub async fn run(&self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let i = &self.inner;
        let mut shutdown = std::pin::pin!(shutdown);
        let local = self.store().signals().outbox.subscribe();
        let mut waker = LogWaker::with(self.store(), local, i.poll_interval).await;
        let renew = (i.lease / 3)
            .min(i.poll_interval)
            .max(Duration::from_millis(10));
        let mut parts: Vec<u32> = Vec::new();
        let mut next_lease = Instant::now();
        let mut next_retention = Instant::now();
        let mut errors = 0u32;
        let mut outages = 0u32;
        // Two halves in flight: one is recorded while the next is fetched and published,
        // so the database's work overlaps the broker's and at most `batch_size` messages
        // are ever published and not yet recorded (what a kill can duplicate).
        let pipelined = i.batch_size >= 2;
        let limit = if pipelined {
            i.batch_size / 2
        } else {
            i.batch_size
        };
        let mut unrecorded: Option<(BatchReport, Judged)> = None;
        loop {
            let step = async {
                if Instant::now() >= next_lease {
                    parts = self.lease().await?;
                    next_lease = Instant::now() + renew;
                }
                if Instant::now() >= next_retention {
                    let n = self.retention().await?;
                    if n > 0 {
                        tracing::debug!(relay = %i.name, purged = n, "outbox retention");
                    }
                    next_retention = Instant::now() + i.retention_interval;
                }
                waker.mark_seen();
                let (report, judged) = match unrecorded.take() {
                    Some((prev_report, prev)) => {
                        // The previous half is still pending in the database until its
                        // record commits: leave its messages out of this fetch. It was
                        // clean (no failure, no outage), so no key is held back that the
                        // database does not know of yet.
                        let (recorded, next) = tokio::join!(
                            self.record(&prev_report, &prev),
                            self.fetch_and_publish(&parts, limit, &prev.delivered)
                        );
                        // A failed record leaves the previous half pending: it is
                        // published again (at least once), and so is this half.
                        recorded?;
                        next?
                    }
                    None => self.fetch_and_publish(&parts, limit, &[]).await?,
                };
                if pipelined && report.fetched >= limit as usize && judged.clean(&report) {
                    unrecorded = Some((report, judged));
                } else {
                    self.record(&report, &judged).await?;
                }
                Ok::<_, Error>(report)
            };
            let wait = match step.await {
                Ok(r) => {
                    errors = 0;
                    if r.outage {
                        outages += 1;
                        Some(jittered_backoff(
                            Duration::from_millis(100),
                            outages,
                            // Capped low: a broker that is back is used within seconds.
                            Duration::from_secs(5),
                        ))
                    } else {
                        outages = 0;
                        // A full batch: more is ready at once.
                        (r.fetched < limit as usize).then_some(Duration::ZERO)
                    }
                }
                Err(e) => {
                    errors += 1;
                    tracing::warn!(relay = %i.name, error = %e, "outbox relay step failed; retrying");
                    Some(jittered_backoff(
                        Duration::from_millis(100),
                        errors,
                        Duration::from_secs(10),
                    ))
                }
            };
            let stop = match wait {
                None => tokio::select! {
                    biased;
                    () = &mut shutdown => true,
                    () = std::future::ready(()) => false,
                },
                Some(d) if d.is_zero() => {
                    // Idle: sleep until a commit, a notification, the poll interval or
                    // the next lease renewal.
                    let until_lease = next_lease.saturating_duration_since(Instant::now());
                    tokio::select! {
                        () = &mut shutdown => true,
                        () = waker.wait() => false,
                        () = tokio::time::sleep(until_lease) => false,
                    }
                }
                Some(d) => tokio::select! {
                    () = &mut shutdown => true,
                    () = tokio::time::sleep(d) => false,
                },
            };
            if stop {
                break;
            }
        }
        if let Some((report, judged)) = unrecorded.take()
            && let Err(e) = self.record(&report, &judged).await
        {
            tracing::warn!(relay = %i.name, error = %e, "could not record the last published messages; they will be published again");
        }
        if let Err(e) = self.release().await {
            tracing::warn!(relay = %i.name, error = %e, "could not release the relay's leases; they expire by themselves");
        }
        Ok(())
    }
}
