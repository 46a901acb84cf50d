//! O2 and O3: the outbox relay against the broker clients alone.
//!
//! - **O2 relay throughput.** Per run, broker and relay count: a fresh database, N
//!   messages on [`KEYS`] keys enqueued in units of work of [`UOW`] and committed before
//!   the clock starts; then the time until the relay (or 4 relays sharing the work) has
//!   published them all and recorded them as delivered. The raw side is the vendor client
//!   alone publishing the same messages (same payloads, fields and headers, same
//!   acknowledgement: the `XADD` reply, the JetStream PubAck, the RabbitMQ publisher
//!   confirm) with the relay's concurrency shape: one chain per key, sequential within a
//!   chain, all chains concurrent on one connection; no database.
//! - **O3 end-to-end latency.** A relay in [`Relay::run`] (poll interval 1 s, so a low
//!   latency shows the wake-ups work), a producer committing one message every 10 ms, and
//!   a consumer in `XREAD BLOCK` on the Redis stream: the latency is the time from
//!   `uow.commit()` returning to the consumer holding the message. The raw baseline is
//!   `XADD` every 10 ms read by the same consumer, without a database.
//!
//! Brokers come from `LARDER_BENCH_REDIS_URL`, `LARDER_BENCH_NATS_URL` and
//! `LARDER_BENCH_AMQP_URL` (defaults: the local servers); a broker that does not answer
//! is skipped with a message.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail, ensure};
use async_nats::jetstream;
use lapin::options::{
    BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Confirmation, ConnectionProperties};
use larder::Store;
use larder::backend::BoxFuture;
use larder::outbox::{Message, MessageId, Outbox, Outgoing, Relay, RelayStats, Sink, SinkError};
use uuid::Uuid;

use super::Ctx;
use crate::backends::{Kind, Raw};
use crate::measure::{Metric, Side, Spent, median, phase};

/// O2: messages per measurement.
const O2_MESSAGES: usize = 20_000;
/// O2: ordering keys.
const KEYS: usize = 100;
/// O2: messages per unit of work at enqueue.
const UOW: usize = 100;
/// O2: relays of the sharing measurement.
const RELAYS: usize = 4;
/// O2: the longest a measurement may take before it counts as stuck.
const O2_LIMIT: Duration = Duration::from_secs(300);
/// O3: messages per measurement.
const O3_MESSAGES: usize = 1_000;
/// O3: the producer's period.
const O3_EVERY: Duration = Duration::from_millis(10);
/// O3: the latency target of the same-store PostgreSQL line (p50).
const O3_TARGET_P50_US: f64 = 10_000.0;
/// The header every message carries (both sides).
const CONTENT_TYPE: (&str, &str) = ("content-type", "application/json");

/// A broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broker {
    Redis,
    Nats,
    Amqp,
}

impl Broker {
    const ALL: [Broker; 3] = [Broker::Redis, Broker::Nats, Broker::Amqp];

    fn name(self) -> &'static str {
        match self {
            Broker::Redis => "redis",
            Broker::Nats => "nats",
            Broker::Amqp => "rabbitmq",
        }
    }

    fn url(self) -> String {
        let (env, default) = match self {
            Broker::Redis => ("LARDER_BENCH_REDIS_URL", "redis://127.0.0.1:6379"),
            Broker::Nats => ("LARDER_BENCH_NATS_URL", "nats://127.0.0.1:4222"),
            Broker::Amqp => (
                "LARDER_BENCH_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f",
            ),
        };
        std::env::var(env)
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| default.to_owned())
    }
}

/// A fresh topic valid everywhere: a Redis stream name, a NATS subject (dot-separated
/// tokens) and a RabbitMQ queue name.
fn unique_topic(what: &str) -> String {
    let u = Uuid::new_v4().simple().to_string();
    format!("larder_bench.{what}.{}", &u[..12])
}

/// The NATS stream capturing `topic`.
fn nats_stream(topic: &str) -> String {
    topic.replace('.', "_")
}

/// One message of a run, identical on both sides.
#[derive(Debug, Clone)]
struct Msg {
    id: Uuid,
    key: String,
    payload: Vec<u8>,
}

fn messages(run: u32, n: usize) -> Result<Vec<Msg>> {
    (0..n)
        .map(|i| {
            let payload = serde_json::to_vec(&serde_json::json!({
                "order": i,
                "run": run,
                "customer": format!("customer-{:03}", i % KEYS),
                "amount_cents": (i * 7_919) % 100_000,
                "currency": "EUR",
            }))?;
            Ok(Msg {
                id: Uuid::now_v7(),
                key: format!("k{:03}", i % KEYS),
                payload,
            })
        })
        .collect()
}

fn headers() -> BTreeMap<String, String> {
    BTreeMap::from([(CONTENT_TYPE.0.to_owned(), CONTENT_TYPE.1.to_owned())])
}

/// The message as larder enqueues it.
fn larder_message(topic: &str, m: &Msg) -> Message {
    Message::new(topic, m.payload.clone())
        .with_key(m.key.clone())
        .with_id(m.id)
        .with_header(CONTENT_TYPE.0, CONTENT_TYPE.1)
}

/// Each key's messages in order: the chains the relay publishes one after the other.
fn chains(msgs: &[Msg]) -> Vec<Vec<&Msg>> {
    let mut out: Vec<Vec<&Msg>> = Vec::new();
    let mut by_key: BTreeMap<&str, usize> = BTreeMap::new();
    for m in msgs {
        let i = *by_key.entry(m.key.as_str()).or_insert_with(|| {
            out.push(Vec::new());
            out.len() - 1
        });
        out[i].push(m);
    }
    out
}

// ---------------------------------------------------------------------------------------
// Destinations: created before and removed after each measurement.

async fn redis_conn(url: &str) -> Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).context("redis url")?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await
        .with_context(|| format!("connect to redis at {url}"))
}

async fn nats_js(url: &str) -> Result<jetstream::Context> {
    let client = async_nats::connect(url)
        .await
        .with_context(|| format!("connect to nats at {url}"))?;
    Ok(jetstream::new(client))
}

async fn amqp_channel(url: &str) -> Result<(lapin::Connection, lapin::Channel)> {
    let conn = lapin::Connection::connect(url, ConnectionProperties::default())
        .await
        .context("connect to rabbitmq")?;
    let ch = conn.create_channel().await?;
    Ok((conn, ch))
}

/// Makes `topic` routable: nothing for Redis (XADD creates the stream), a stream
/// capturing exactly `topic` for NATS, a queue named `topic` (bound to the default
/// exchange, so `mandatory` routing succeeds) for RabbitMQ.
async fn create_destination(broker: Broker, topic: &str) -> Result<()> {
    match broker {
        Broker::Redis => {}
        Broker::Nats => {
            let js = nats_js(&broker.url()).await?;
            js.create_stream(jetstream::stream::Config {
                name: nats_stream(topic),
                subjects: vec![topic.to_owned()],
                ..Default::default()
            })
            .await
            .context("create the jetstream stream (is jetstream enabled?)")?;
        }
        Broker::Amqp => {
            let (conn, ch) = amqp_channel(&broker.url()).await?;
            ch.queue_declare(
                ShortString::from(topic),
                QueueDeclareOptions::default(),
                FieldTable::default(),
            )
            .await
            .context("declare the queue")?;
            let _ = conn.close(200, ShortString::from("bye")).await;
        }
    }
    Ok(())
}

/// How many messages `topic` holds.
async fn destination_count(broker: Broker, topic: &str) -> Result<u64> {
    Ok(match broker {
        Broker::Redis => {
            let mut c = redis_conn(&broker.url()).await?;
            redis::cmd("XLEN").arg(topic).query_async(&mut c).await?
        }
        Broker::Nats => {
            let js = nats_js(&broker.url()).await?;
            let mut s = js.get_stream(nats_stream(topic)).await?;
            s.info().await?.state.messages
        }
        Broker::Amqp => {
            let (conn, ch) = amqp_channel(&broker.url()).await?;
            let q = ch
                .queue_declare(
                    ShortString::from(topic),
                    QueueDeclareOptions {
                        passive: true,
                        ..QueueDeclareOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            let _ = conn.close(200, ShortString::from("bye")).await;
            u64::from(q.message_count())
        }
    })
}

async fn remove_destination(broker: Broker, topic: &str) {
    let r: Result<()> = async {
        match broker {
            Broker::Redis => {
                let mut c = redis_conn(&broker.url()).await?;
                let _: i64 = redis::cmd("DEL").arg(topic).query_async(&mut c).await?;
            }
            Broker::Nats => {
                let js = nats_js(&broker.url()).await?;
                js.delete_stream(nats_stream(topic)).await?;
            }
            Broker::Amqp => {
                let (conn, ch) = amqp_channel(&broker.url()).await?;
                ch.queue_delete(ShortString::from(topic), QueueDeleteOptions::default())
                    .await?;
                let _ = conn.close(200, ShortString::from("bye")).await;
            }
        }
        Ok(())
    }
    .await;
    if let Err(e) = r {
        eprintln!("   could not remove {} {topic}: {e:#}", broker.name());
    }
}

// ---------------------------------------------------------------------------------------
// The raw side: the vendor client alone.

/// A connected vendor client.
enum RawClient {
    Redis(redis::aio::MultiplexedConnection),
    Nats(jetstream::Context),
    Amqp(lapin::Connection, lapin::Channel),
}

impl RawClient {
    /// Connects (before the clock starts, as the relay's sinks are warmed up first).
    async fn connect(broker: Broker) -> Result<RawClient> {
        let url = broker.url();
        Ok(match broker {
            Broker::Redis => RawClient::Redis(redis_conn(&url).await?),
            Broker::Nats => {
                let mut js = nats_js(&url).await?;
                // The sink's default acknowledgement timeout.
                js.set_timeout(Duration::from_secs(5));
                RawClient::Nats(js)
            }
            Broker::Amqp => {
                let (conn, ch) = amqp_channel(&url).await?;
                ch.confirm_select(ConfirmSelectOptions::default()).await?;
                RawClient::Amqp(conn, ch)
            }
        })
    }

    /// Publishes one message and waits for its acknowledgement, with the fields and
    /// headers the larder sink sends.
    async fn publish(&self, topic: &str, m: &Msg, hdrs: &BTreeMap<String, String>) -> Result<()> {
        match self {
            RawClient::Redis(conn) => {
                let mut cmd = redis::cmd("XADD");
                cmd.arg(topic)
                    .arg("*")
                    .arg("id")
                    .arg(m.id.to_string())
                    .arg("key")
                    .arg(m.key.as_str())
                    .arg("payload")
                    .arg(m.payload.as_slice());
                for (k, v) in hdrs {
                    cmd.arg(format!("h:{k}")).arg(v.as_str());
                }
                let mut conn = conn.clone();
                let _: redis::Value = cmd.query_async(&mut conn).await?;
            }
            RawClient::Nats(js) => {
                let mut h = async_nats::HeaderMap::new();
                for (k, v) in hdrs {
                    h.insert(k.as_str(), v.as_str());
                }
                h.insert(larder_relay::nats::KEY_HEADER, m.key.as_str());
                let publish = jetstream::message::PublishMessage::build()
                    .headers(h)
                    .message_id(m.id.to_string())
                    .payload(bytes::Bytes::copy_from_slice(&m.payload));
                js.send_publish(topic.to_owned(), publish).await?.await?;
            }
            RawClient::Amqp(_, ch) => {
                let mut table = FieldTable::default();
                for (k, v) in hdrs {
                    table.insert(
                        ShortString::from(k.as_str()),
                        AMQPValue::LongString(LongString::from(v.as_str())),
                    );
                }
                table.insert(
                    ShortString::from(larder_relay::amqp::KEY_HEADER),
                    AMQPValue::LongString(LongString::from(m.key.as_str())),
                );
                table.insert(
                    ShortString::from(larder_relay::amqp::TOPIC_HEADER),
                    AMQPValue::LongString(LongString::from(topic)),
                );
                let secs = u64::try_from(larder::events::now_micros() / 1_000_000)?;
                let props = BasicProperties::default()
                    .with_message_id(ShortString::from(m.id.to_string()))
                    .with_headers(table)
                    .with_delivery_mode(2)
                    .with_timestamp(secs)
                    .with_content_type(ShortString::from(CONTENT_TYPE.1));
                let confirm = ch
                    .basic_publish(
                        ShortString::from(""),
                        ShortString::from(topic),
                        BasicPublishOptions {
                            mandatory: true,
                            immediate: false,
                        },
                        &m.payload,
                        props,
                    )
                    .await?;
                match confirm.await? {
                    Confirmation::Ack(None) => {}
                    other => bail!("rabbitmq did not confirm: {other:?}"),
                }
            }
        }
        Ok(())
    }

    async fn close(self) {
        if let RawClient::Amqp(conn, _) = self {
            let _ = conn.close(200, ShortString::from("bye")).await;
        }
    }
}

/// The raw side of O2: every key's chain concurrently, each chain in order.
async fn raw_publish_all(broker: Broker, msgs: &[Msg]) -> Result<(Duration, Option<Duration>)> {
    let topic = unique_topic("o2raw");
    create_destination(broker, &topic).await?;
    let client = RawClient::connect(broker).await?;
    let hdrs = headers();
    let chains = chains(msgs);
    let r = phase(async {
        let runs = chains.iter().map(|chain| {
            let (client, topic, hdrs) = (&client, topic.as_str(), &hdrs);
            async move {
                for m in chain {
                    client.publish(topic, m, hdrs).await?;
                }
                Ok::<(), anyhow::Error>(())
            }
        });
        futures_util::future::try_join_all(runs).await?;
        Ok(())
    })
    .await;
    client.close().await;
    let counted = destination_count(broker, &topic).await;
    remove_destination(broker, &topic).await;
    let ((), wall, cpu) = r?;
    let got = counted?;
    ensure!(
        got == u64::try_from(msgs.len())?,
        "raw {}: {got} messages arrived, {} expected",
        broker.name(),
        msgs.len()
    );
    Ok((wall, cpu))
}

// ---------------------------------------------------------------------------------------
// The larder side.

/// Where a relay's time goes, seen from its sink: a batch's publishes run from its first
/// `publish` to its `flush`; recording the batch delivered, renewing leases and fetching
/// the next batch lie between one batch's `flush` and the next batch's first `publish`.
#[derive(Debug, Default, Clone, Copy)]
struct Phases {
    open: Option<Instant>,
    last_flush: Option<Instant>,
    publish: Duration,
    between: Duration,
    gaps: u32,
    batches: u32,
}

impl Phases {
    fn add(&mut self, o: &Phases) {
        self.publish += o.publish;
        self.between += o.between;
        self.gaps += o.gaps;
        self.batches += o.batches;
    }
}

/// A sink that times [`Phases`] (a mutex taken once per publish: noise next to a broker
/// round trip).
struct TimedSink {
    inner: Arc<dyn Sink>,
    phases: std::sync::Mutex<Phases>,
}

impl TimedSink {
    fn phases(&self) -> Phases {
        *self
            .phases
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl Sink for TimedSink {
    fn system(&self) -> &'static str {
        self.inner.system()
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        {
            let mut p = self
                .phases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if p.open.is_none() {
                let now = Instant::now();
                p.open = Some(now);
                if let Some(f) = p.last_flush {
                    p.between += now - f;
                    p.gaps += 1;
                }
            }
        }
        self.inner.publish(m)
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        {
            let mut p = self
                .phases
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let now = Instant::now();
            if let Some(o) = p.open.take() {
                p.publish += now - o;
                p.batches += 1;
            }
            p.last_flush = Some(now);
        }
        self.inner.flush()
    }
}

fn ms_per(d: Duration, n: u32) -> f64 {
    d.as_secs_f64() * 1e3 / f64::from(n.max(1))
}

/// Opens the sink's connection with one publish (not counted), so that neither side
/// times connecting.
async fn warm_up(sink: &Arc<dyn Sink>, topic: &str) -> Result<()> {
    let h = headers();
    let id = MessageId::new();
    sink.publish(Outgoing {
        id,
        topic,
        key: Some("warm-up"),
        payload: b"{\"warmup\":true}",
        headers: &h,
        attempt: 0,
        enqueued_at_micros: larder::events::now_micros(),
    })
    .await
    .map_err(|e| anyhow::anyhow!("warm-up publish: {e}"))
}

/// Enqueues `msgs` in units of work of [`UOW`].
async fn enqueue(store: &Store, ob: &Outbox, topic: &str, msgs: &[Msg]) -> Result<()> {
    for chunk in msgs.chunks(UOW) {
        let mut uow = store.begin().await?;
        ob.enqueue_all(&mut uow, chunk.iter().map(|m| larder_message(topic, m)))
            .await?;
        uow.commit().await?;
    }
    Ok(())
}

/// `LARDER_BENCH_O2_ANALYZE=1`: run `ANALYZE` on the outbox after enqueueing, before the
/// clock starts (diagnosis of the fetch query's plan on a fresh table).
fn analyze() -> bool {
    std::env::var("LARDER_BENCH_O2_ANALYZE").is_ok_and(|v| v == "1")
}

/// One larder measurement of O2.
#[derive(Debug)]
struct LarderRun {
    wall: Duration,
    cpu: Option<Duration>,
    /// Messages each relay published.
    per_relay: Vec<u64>,
    /// Summed over the relays.
    phases: Phases,
}

/// `LARDER_BENCH_O2_RETENTION=0`: the relays keep no delivered message (`retention(Some(0))`:
/// each is deleted instead of marked delivered).
fn keep_none() -> bool {
    std::env::var("LARDER_BENCH_O2_RETENTION").is_ok_and(|v| v == "0")
}

/// The larder side of O2: `relays` relays publish `msgs`, committed before the clock
/// starts.
async fn larder_publish_all(
    cx: &Ctx<'_>,
    broker: Broker,
    msgs: &[Msg],
    relays: usize,
) -> Result<LarderRun> {
    let db = cx.target.fresh().await?;
    let ob = Outbox::open(&db.store).await?;
    let topic = unique_topic("o2larder");
    create_destination(broker, &topic).await?;
    let r = async {
        enqueue(&db.store, &ob, &topic, msgs).await?;
        if analyze() {
            // Diagnosis: planner statistics for the outbox table, which a table this
            // young has not got yet (autovacuum analyzes it only a minute later).
            match &db.raw {
                Raw::Pg(pool) => {
                    sqlx::query("ANALYZE _larder_outbox").execute(pool).await?;
                }
                Raw::Sqlite(pool) => {
                    sqlx::query("ANALYZE").execute(pool).await?;
                }
            }
        }
        let mut rs = Vec::with_capacity(relays);
        let mut sinks = Vec::with_capacity(relays);
        for i in 0..relays {
            // One sink (one broker connection) per relay, as relays on separate machines.
            let sink = larder_relay::sink_from_url(&broker.url())?;
            warm_up(&sink, &topic).await?;
            let timed = Arc::new(TimedSink {
                inner: sink,
                phases: std::sync::Mutex::default(),
            });
            sinks.push(timed.clone());
            let mut b = Relay::builder(&db.store)
                .name(format!("bench-o2-{i}"))
                .sink_arc(timed);
            if keep_none() {
                b = b.retention(Some(Duration::ZERO), Duration::from_secs(60));
            }
            rs.push(b.build().await?);
        }
        // Two rounds of leases settle the split (the first relay takes every partition
        // while it is alone, and gives up the surplus once it sees the others), so the
        // clock measures relays sharing the work, not the hand-over.
        for _ in 0..2 {
            for r in &rs {
                r.lease().await?;
            }
        }
        let stats: Vec<Arc<RelayStats>> = rs.iter().map(Relay::stats).collect();
        let want = u64::try_from(msgs.len())?;
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let t0 = Instant::now();
        let (handles, wall, cpu) = phase(async {
            let handles: Vec<_> = rs
                .iter()
                .map(|r| {
                    let r = r.clone();
                    let mut stopped = stopped.clone();
                    tokio::spawn(async move {
                        r.run(async move {
                            let _ = stopped.wait_for(|s| *s).await;
                        })
                        .await
                    })
                })
                .collect();
            loop {
                let done: u64 = stats.iter().map(|s| s.snapshot().published).sum();
                if done >= want {
                    break;
                }
                if t0.elapsed() > O2_LIMIT {
                    bail!("the relays published {done} of {want} messages in {O2_LIMIT:?}");
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok(handles)
        })
        .await?;
        let _ = stop.send(true);
        for h in handles {
            h.await??;
        }
        let per_relay: Vec<u64> = stats.iter().map(|s| s.snapshot().published).collect();
        let mut phases = Phases::default();
        for s in &sinks {
            phases.add(&s.phases());
        }
        let mut uow = db.store.read().await?;
        let status = ob.status(&mut uow).await?;
        uow.commit().await?;
        let recorded = if keep_none() { 0 } else { want };
        ensure!(
            status.delivered == recorded && status.pending == 0 && status.dead == 0,
            "larder {}: outbox status {status:?}, {want} delivered expected",
            broker.name()
        );
        let got = destination_count(broker, &topic).await?;
        let warm = u64::try_from(relays)?;
        ensure!(
            got == want + warm,
            "larder {}: {got} messages arrived, {} expected",
            broker.name(),
            want + warm
        );
        Ok(LarderRun {
            wall,
            cpu,
            per_relay,
            phases,
        })
    }
    .await;
    remove_destination(broker, &topic).await;
    db.close().await;
    r
}

/// Runs O2.
pub(crate) async fn o2(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let mut brokers = Vec::new();
    for b in Broker::ALL {
        match RawClient::connect(b).await {
            Ok(c) => {
                c.close().await;
                brokers.push(b);
            }
            Err(e) => println!("   {} skipped: {e:#}", b.name()),
        }
    }
    let mut ms: Vec<(Metric, Metric)> = brokers
        .iter()
        .map(|b| {
            (
                Metric::new(format!("O2 {} 1 relay", b.name()), "msg/s", 0.8),
                Metric::new(
                    format!("O2 {} {RELAYS} relays (scaling)", b.name()),
                    "msg/s",
                    0.8,
                ),
            )
        })
        .collect();
    let n = std::env::var("LARDER_BENCH_O2_MESSAGES")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(O2_MESSAGES)
        .max(1);
    let mut shares: Vec<String> = Vec::new();
    // Per broker: the phases of the 1-relay and the 4-relay runs, summed over runs.
    let mut phases = vec![(Phases::default(), Phases::default()); brokers.len()];
    for run in 0..cx.runs {
        let msgs = messages(run, n)?;
        for ((b, (m1, m4)), ph) in brokers.iter().zip(ms.iter_mut()).zip(phases.iter_mut()) {
            let mut one = Spent::default();
            let mut four = Spent::default();
            for side in Side::order(run) {
                match side {
                    Side::Larder => {
                        let r = larder_publish_all(cx, *b, &msgs, 1).await?;
                        one.add(side, r.wall, r.cpu);
                        ph.0.add(&r.phases);
                        let r = larder_publish_all(cx, *b, &msgs, RELAYS).await?;
                        four.add(side, r.wall, r.cpu);
                        ph.1.add(&r.phases);
                        shares.push(format!("{} run {run}: {:?}", b.name(), r.per_relay));
                    }
                    Side::Raw => {
                        let (w, c) = raw_publish_all(*b, &msgs).await?;
                        one.add(side, w, c);
                        four.add(side, w, c);
                    }
                }
            }
            m1.record(n, &one);
            m4.record(n, &four);
        }
    }
    let breakdown: Vec<String> = brokers
        .iter()
        .zip(&phases)
        .map(|(b, (p1, p4))| {
            format!(
                "{} 1 relay: {} batches, publish {:.2} ms/batch, between batches {:.2} \
                 ms; {RELAYS} relays: {} batches, publish {:.2} ms/batch, between {:.2} ms",
                b.name(),
                p1.batches,
                ms_per(p1.publish, p1.batches),
                ms_per(p1.between, p1.gaps),
                p4.batches,
                ms_per(p4.publish, p4.batches),
                ms_per(p4.between, p4.gaps),
            )
        })
        .collect();
    let partitions = match cx.target.kind {
        Kind::Sqlite => {
            "SQLite has one partition, so one of the 4 relays does all the work and 4 relays \
             ≈ 1 relay by design"
        }
        Kind::Postgres => "PostgreSQL has 16 partitions: 4 each",
    };
    let mut out = Vec::new();
    for (i, (mut m1, m4)) in ms.into_iter().enumerate() {
        if i == 0 {
            m1.note = Some(format!(
                "O2: {n} messages on {KEYS} keys, enqueued in units of work of {UOW} \
                 and committed before timing; larder = `Relay::run` (batch 512: two halves of 256, one recorded while the next is published) until every \
                 message is published and recorded delivered (checked with `Outbox::status` \
                 and the broker's count); raw = the vendor client alone, one chain per key \
                 (sequential within, {KEYS} concurrent) on one connection, no database: redis \
                 `XADD stream * id key payload h:content-type` awaiting each reply on a \
                 multiplexed connection; nats JetStream `send_publish` (Nats-Msg-Id, \
                 Larder-Key and content-type headers) awaiting each PubAck; rabbitmq \
                 `basic_publish` to the default exchange (routing key = queue = topic, \
                 mandatory, persistent, same properties and headers) on a confirm-mode \
                 channel awaiting each confirm. Both sides connect before the clock starts. \
                 {RELAYS} relays: {RELAYS} `Relay` instances (own sink connection each, own \
                 tokio task) after two lease rounds; {partitions}; messages published per \
                 relay: {}. CPU = this process (relay, sqlx, broker clients), not the \
                 servers. Where the relays' time goes (all runs, seen from a timing wrapper \
                 around each sink; 'publish' = a batch's first publish to its flush, \
                 'between' = flush to the next batch's first publish: recording the batch, \
                 lease renewals, fetching the next): {}.{}",
                shares.join("; "),
                breakdown.join("; "),
                if analyze() {
                    " LARDER_BENCH_O2_ANALYZE=1: the outbox table was ANALYZEd before timing."
                } else {
                    ""
                },
            ));
            if keep_none()
                && let Some(note) = m1.note.as_mut()
            {
                note.push_str(
                    " LARDER_BENCH_O2_RETENTION=0: the relays delete delivered messages \
                     (retention 0) instead of marking them.",
                );
            }
        }
        out.push(m1);
        out.push(m4);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------
// O3.

/// Reads `topic` with `XREAD BLOCK` from the start until `n` messages with a `seq` came,
/// recording when each arrived.
async fn consume(topic: String, n: usize, limit: Duration) -> Result<Vec<Option<Instant>>> {
    let client = redis::Client::open(Broker::Redis.url())?;
    let cfg = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(10)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&cfg)
        .await?;
    let mut seen: Vec<Option<Instant>> = vec![None; n];
    let mut count = 0usize;
    let mut last = "0-0".to_owned();
    let t0 = Instant::now();
    while count < n {
        if t0.elapsed() > limit {
            bail!("the consumer saw {count} of {n} messages in {limit:?}");
        }
        let reply: Option<redis::streams::StreamReadReply> = redis::cmd("XREAD")
            .arg("COUNT")
            .arg(1000)
            .arg("BLOCK")
            .arg(1000)
            .arg("STREAMS")
            .arg(&topic)
            .arg(&last)
            .query_async(&mut conn)
            .await?;
        let now = Instant::now();
        for k in reply.map(|r| r.keys).unwrap_or_default() {
            for e in k.ids {
                last.clone_from(&e.id);
                let Some(payload) = e.get::<Vec<u8>>("payload") else {
                    continue;
                };
                let v: serde_json::Value = serde_json::from_slice(&payload)?;
                let Some(seq) = v.get("seq").and_then(serde_json::Value::as_u64) else {
                    continue;
                };
                let seq = usize::try_from(seq)?;
                if let Some(slot) = seen.get_mut(seq)
                    && slot.is_none()
                {
                    *slot = Some(now);
                    count += 1;
                }
            }
        }
    }
    Ok(seen)
}

fn o3_payload(seq: usize) -> Result<Vec<u8>> {
    Ok(serde_json::to_vec(&serde_json::json!({
        "seq": seq,
        "t_us": larder::events::now_micros(),
    }))?)
}

fn latencies(sent: &[Instant], seen: &[Option<Instant>]) -> Result<Vec<f64>> {
    sent.iter()
        .zip(seen)
        .map(|(s, r)| {
            let r = r.ok_or_else(|| anyhow::anyhow!("a message was not seen"))?;
            Ok(r.saturating_duration_since(*s).as_secs_f64() * 1e6)
        })
        .collect()
}

/// The `q`-th percentile (nearest rank) of `v`, `q` in percent.
fn percentile(v: &[f64], q: usize) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = (s.len() * q).div_ceil(100).clamp(1, s.len());
    s[rank - 1]
}

/// The larder side of O3: latencies in µs. `separate`: the producer commits through a
/// second store (its own pool), so only `LISTEN/NOTIFY` can wake the relay.
async fn o3_larder(cx: &Ctx<'_>, separate: bool) -> Result<(Vec<f64>, u64)> {
    let db = cx.target.fresh().await?;
    let topic = unique_topic("o3larder");
    let producer = if separate {
        Some(cx.target.pg_store(true).await?)
    } else {
        None
    };
    let r = async {
        let sink = larder_relay::sink_from_url(&Broker::Redis.url())?;
        warm_up(&sink, &topic).await?;
        let relay = Relay::builder(&db.store)
            .name("bench-o3")
            .sink_arc(sink)
            .build()
            .await?;
        let pstore = producer.as_ref().unwrap_or(&db.store);
        let pob = Outbox::open(pstore).await?;
        let limit = O3_EVERY * u32::try_from(O3_MESSAGES)? + Duration::from_secs(30);
        let consumer = tokio::spawn(consume(topic.clone(), O3_MESSAGES, limit));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let handle = {
            let relay = relay.clone();
            tokio::spawn(async move {
                relay
                    .run(async move {
                        let _ = stopped.wait_for(|s| *s).await;
                    })
                    .await
            })
        };
        // The relay starts listening and goes idle; the consumer blocks.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut sent = Vec::with_capacity(O3_MESSAGES);
        let mut tick = tokio::time::interval(O3_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..O3_MESSAGES {
            tick.tick().await;
            let mut uow = pstore.begin().await?;
            pob.enqueue(
                &mut uow,
                Message::new(topic.as_str(), o3_payload(seq)?)
                    .with_key(format!("k{:03}", seq % KEYS))
                    .with_header(CONTENT_TYPE.0, CONTENT_TYPE.1),
            )
            .await?;
            uow.commit().await?;
            sent.push(Instant::now());
        }
        let seen = consumer.await??;
        let _ = stop.send(true);
        handle.await??;
        Ok((latencies(&sent, &seen)?, relay.stats().snapshot().batches))
    }
    .await;
    remove_destination(Broker::Redis, &topic).await;
    if let Some(p) = producer {
        p.close().await;
    }
    db.close().await;
    r
}

/// The raw baseline of O3: `XADD` every 10 ms, latency from just before the `XADD` to the
/// consumer holding the entry.
async fn o3_raw() -> Result<Vec<f64>> {
    let topic = unique_topic("o3raw");
    let r = async {
        let client = RawClient::connect(Broker::Redis).await?;
        let limit = O3_EVERY * u32::try_from(O3_MESSAGES)? + Duration::from_secs(30);
        let consumer = tokio::spawn(consume(topic.clone(), O3_MESSAGES, limit));
        tokio::time::sleep(Duration::from_millis(500)).await;
        let hdrs = headers();
        let mut sent = Vec::with_capacity(O3_MESSAGES);
        let mut tick = tokio::time::interval(O3_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        for seq in 0..O3_MESSAGES {
            tick.tick().await;
            let m = Msg {
                id: Uuid::now_v7(),
                key: format!("k{:03}", seq % KEYS),
                payload: o3_payload(seq)?,
            };
            let t0 = Instant::now();
            client.publish(&topic, &m, &hdrs).await?;
            sent.push(t0);
        }
        let seen = consumer.await??;
        client.close().await;
        latencies(&sent, &seen)
    }
    .await;
    remove_destination(Broker::Redis, &topic).await;
    r
}

/// Runs O3.
pub(crate) async fn o3(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    if let Err(e) = RawClient::connect(Broker::Redis).await {
        println!("   skipped: {e:#}");
        return Ok(Vec::new());
    }
    let pg = cx.target.kind == Kind::Postgres;
    let variants: &[(&str, bool)] = if pg {
        &[("same store", false), ("separate store, NOTIFY", true)]
    } else {
        &[("same store", false)]
    };
    let mut out = Vec::new();
    let mut summary = Vec::new();
    for (label, separate) in variants {
        let mut p50 = Metric::new(format!("O3 p50 {label}"), "µs", f64::NAN);
        let mut p99 = Metric::new(format!("O3 p99 {label}"), "µs", f64::NAN);
        let mut tails = Vec::new();
        for run in 0..cx.runs {
            for side in Side::order(run) {
                let (lat, batches) = match side {
                    Side::Larder => o3_larder(cx, *separate).await?,
                    Side::Raw => (o3_raw().await?, 0),
                };
                p50.push(side, percentile(&lat, 50));
                p99.push(side, percentile(&lat, 99));
                if side == Side::Larder {
                    let over = |us: f64| lat.iter().filter(|v| **v > us).count();
                    tails.push(format!(
                        "run {run}: max {:.0} µs, {} over 10 ms, {} over 100 ms, {batches} \
                         relay batches",
                        percentile(&lat, 100),
                        over(10_000.0),
                        over(100_000.0)
                    ));
                }
            }
        }
        let m = median(&p50.larder);
        let verdict = if pg && !*separate {
            if m < O3_TARGET_P50_US {
                format!("target p50 < 10 ms: met ({m:.0} µs)")
            } else {
                format!("target p50 < 10 ms: NOT met ({m:.0} µs)")
            }
        } else {
            format!("p50 {m:.0} µs (no target)")
        };
        summary.push(format!("{label}: {verdict}; larder {}", tails.join(", ")));
        out.push(p50);
        out.push(p99);
    }
    if let Some(first) = out.first_mut() {
        first.note = Some(format!(
            "O3 lines are latencies in µs (lower is better), so their ratio is larder/raw \
             latency and the target and met? columns do not apply (target NaN). larder: a \
             relay in `Relay::run` (poll 1 s) publishing to a Redis stream, a producer \
             committing one message every 10 ms ({O3_MESSAGES} messages), an `XREAD BLOCK` \
             consumer; latency = `uow.commit()` returned → consumer holds the entry (the \
             payload carries the sequence number, matched to the commit instant in-process). \
             `separate store` (PostgreSQL): the producer commits through a second store, so \
             only LISTEN/NOTIFY wakes the relay. raw: baseline without a database, XADD every \
             10 ms read by the same consumer, latency from just before XADD. {}",
            summary.join("; ")
        ));
    }
    Ok(out)
}
