//! D1 and D4 against a real broker: the relay publishes to Redis Streams (larder-relay's
//! `RedisSink`, built by `sink_from_url`) and the tests read the streams back with
//! `XRANGE`, as a consumer would.
//!
//! - D4 (SQLite and PostgreSQL): a private `redis-server` is SIGKILLed for 30 s in the
//!   middle of a run of 600 messages on 20 keys, with the relay's `max_attempts` at 3 (low
//!   on purpose: an outage taken for a message failure would dead-letter within seconds).
//!   Nothing is dead-lettered at any point (sampled every 200 ms), the relay counts
//!   outages, everything is delivered after the server returns, and the streams hold
//!   every message with each key's first occurrences in order (duplicates are allowed as
//!   at-least-once, and reported).
//!
//!   Persistence: the private server runs with `--appendonly yes --appendfsync always`
//!   (and `--save ''`) in a private directory, from its first start: a reply to `XADD`
//!   means the entry is in the append-only file, so the restarted server (same port, same
//!   directory) holds everything acknowledged before the kill. Without it the restarted
//!   server would be empty and the check "0 lost" would be about the server's memory, not
//!   the relay. The test checks that the restarted server still holds what the first one
//!   had.
//! - D1 (PostgreSQL and SQLite): the relay runs in a child process (this test binary re-executed
//!   with `--exact broker_relay_child --ignored`, configured by environment variables) and
//!   publishes to the Redis server on `LARDER_TEST_REDIS_URL` (default
//!   `redis://127.0.0.1:6379/`), on a stream unique to the run. 2,000 messages on 20 keys
//!   (half before, half while the relay runs); the child is SIGKILLed 20 times after a
//!   random number of publishes and restarted with the same name: 0 lost; duplicates ≤
//!   kills × batch size; after de-duplication by `id` exactly 2,000; each key's first
//!   occurrences in enqueue order. The stream is deleted at the end (also on failure).
//!
//! Redis unreachable (or `redis-server` missing for D4): the tests print `SKIPPED (did
//! not run)`, or fail under `LARDER_REQUIRE_BACKENDS=1`.

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder::backend::BoxFuture;
use larder::outbox::{Message, MessageId, Outbox, Outgoing, Relay, RelayStats, Sink, SinkError};
use larder::{Store, StoreConfig};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::outbox::counts;

const BATCH: u32 = 50;
const KEYS: u64 = 20;
const CHILD_TEST: &str = "broker_relay_child";
const REDIS_URL_ENV: &str = "LARDER_TEST_REDIS_URL";
const DEFAULT_REDIS_URL: &str = "redis://127.0.0.1:6379/";

// ---------------------------------------------------------------------------------------
// Reading the streams back.

/// One stream entry: its id and its flat field/value list.
type Entry = (String, Vec<Vec<u8>>);

async fn xrange(url: &str, stream: &str) -> Vec<Entry> {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("redis client: {e}"));
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("XRANGE {stream}: {e}"))
}

/// `XLEN`, retried while the server loads its append-only file or reconnects.
async fn xlen(url: &str, stream: &str, within: Duration) -> u64 {
    let t = Instant::now();
    loop {
        let r: Result<u64, String> = async {
            let client = redis::Client::open(url).map_err(|e| e.to_string())?;
            let mut conn = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            redis::cmd("XLEN")
                .arg(stream)
                .query_async(&mut conn)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match r {
            Ok(n) => return n,
            Err(_) if t.elapsed() < within => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("XLEN {stream} on {url}: {e}"),
        }
    }
}

fn field<'a>(fields: &'a [Vec<u8>], name: &str) -> Option<&'a [u8]> {
    fields
        .chunks(2)
        .find(|kv| kv[0] == name.as_bytes())
        .and_then(|kv| kv.get(1))
        .map(Vec::as_slice)
}

/// What the consumer saw: (id, key, seq) per entry, in stream order. The payload is
/// `<key>:<seq>` and must name the entry's `key` field.
fn consumed(entries: &[Entry]) -> Vec<(String, String, u64)> {
    entries
        .iter()
        .map(|(entry, fields)| {
            let text = |name: &str| {
                let v = field(fields, name).unwrap_or_else(|| panic!("entry {entry}: no {name}"));
                String::from_utf8(v.to_vec()).unwrap_or_else(|e| panic!("entry {entry}: {e}"))
            };
            let (id, key, payload) = (text("id"), text("key"), text("payload"));
            let (k, seq) = payload
                .rsplit_once(':')
                .unwrap_or_else(|| panic!("entry {entry}: payload {payload:?}"));
            assert_eq!(
                k, key,
                "entry {entry}: the key field names the payload's key"
            );
            let seq = seq
                .parse()
                .unwrap_or_else(|e| panic!("entry {entry}: seq {seq:?}: {e}"));
            (id, key, seq)
        })
        .collect()
}

/// The consumer's view of a stream, checked against what was enqueued.
#[derive(Debug)]
struct View {
    entries: u64,
    distinct: u64,
    duplicates: u64,
    lost: Vec<String>,
    foreign: Vec<String>,
    disorder: Vec<String>,
}

fn view(entries: &[Entry], enqueued: &HashSet<String>) -> View {
    let seen = consumed(entries);
    let mut ids = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut duplicates = 0;
    let mut disorder = Vec::new();
    let mut foreign = Vec::new();
    for (id, k, seq) in &seen {
        if !enqueued.contains(id) {
            foreign.push(id.clone());
        }
        if !ids.insert(id.clone()) {
            duplicates += 1;
            continue;
        }
        // First occurrences only: a redelivery after a kill or an outage repeats earlier
        // messages, which at-least-once allows.
        if let Some(p) = last.insert(k.clone(), *seq)
            && *seq <= p
        {
            disorder.push(format!("key {k}: {seq} first seen after {p}"));
        }
    }
    let lost = enqueued
        .iter()
        .filter(|id| !ids.contains(*id))
        .cloned()
        .collect();
    View {
        entries: u64::try_from(seen.len()).unwrap(),
        distinct: u64::try_from(ids.len()).unwrap(),
        duplicates,
        lost,
        foreign,
        disorder,
    }
}

/// Asserts the at-least-once, per-key-order view; returns it.
fn check(entries: &[Entry], enqueued: &HashSet<String>, test: &str) -> View {
    let v = view(entries, enqueued);
    let first = |v: &[String]| v.iter().take(5).cloned().collect::<Vec<_>>().join("; ");
    assert!(
        v.lost.is_empty(),
        "{test}: {} messages lost (e.g. {})",
        v.lost.len(),
        first(&v.lost)
    );
    assert!(
        v.foreign.is_empty(),
        "{test}: {} entries of no enqueued message: {}",
        v.foreign.len(),
        first(&v.foreign)
    );
    assert!(
        v.disorder.is_empty(),
        "{test}: {} order violations: {}",
        v.disorder.len(),
        first(&v.disorder)
    );
    assert_eq!(
        v.distinct,
        u64::try_from(enqueued.len()).unwrap(),
        "{test}: distinct ids"
    );
    v
}

/// The Redis URL of D1 once a TCP connection to it succeeds.
async fn shared_redis() -> Result<String, String> {
    let url = std::env::var(REDIS_URL_ENV).unwrap_or_else(|_| DEFAULT_REDIS_URL.to_owned());
    let u = url::Url::parse(&url).map_err(|e| format!("{REDIS_URL_ENV} does not parse: {e}"))?;
    let host = u.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = u.port().unwrap_or(6379);
    match tokio::time::timeout(
        Duration::from_secs(2),
        tokio::net::TcpStream::connect((host.as_str(), port)),
    )
    .await
    {
        Ok(Ok(_)) => Ok(url),
        Ok(Err(e)) => Err(format!(
            "redis at {host}:{port} is unreachable ({e}); set {REDIS_URL_ENV}"
        )),
        Err(_) => Err(format!(
            "redis at {host}:{port} does not answer; set {REDIS_URL_ENV}"
        )),
    }
}

/// Deletes a stream when dropped, also when the test panics.
struct StreamGuard {
    url: String,
    stream: String,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Ok(client) = redis::Client::open(self.url.as_str())
            && let Ok(mut conn) = client.get_connection_with_timeout(Duration::from_secs(2))
        {
            let _: Result<i64, _> = redis::cmd("DEL").arg(&self.stream).query(&mut conn);
        }
    }
}

// ---------------------------------------------------------------------------------------
// A private redis-server.

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn port_open(port: u16) -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        Duration::from_millis(200),
    )
    .is_ok()
}

/// A `redis-server` on a free port with its append-only file in a private directory;
/// killed (and the directory removed) when dropped, also when the test panics.
struct PrivateRedis {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl PrivateRedis {
    fn start() -> Result<PrivateRedis, String> {
        let port = free_port();
        let dir = std::env::temp_dir().join(format!("larder-d4-redis-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut s = PrivateRedis {
            port,
            dir,
            child: None,
        };
        s.spawn()?;
        Ok(s)
    }

    fn spawn(&mut self) -> Result<(), String> {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string()])
            .args(["--bind", "127.0.0.1"])
            .args(["--save", ""])
            .args(["--appendonly", "yes", "--appendfsync", "always"])
            .arg("--dir")
            .arg(&self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start redis-server ({e}); put it in PATH"))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !port_open(self.port) {
            if let Some(c) = self.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                return Err(format!("redis-server exited at start: {status}"));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "redis-server did not listen on {} within 10 s",
                    self.port
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// SIGKILL (an outage, not a shutdown); returns once the port refuses connections.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while port_open(self.port) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// Enqueuing.

/// Enqueues `n` messages on `topic` over `KEYS` keys, `per_uow` per unit of work,
/// pausing between units of work; keys are `key-<k>`, bodies `<key>:<seq>` with `seq`
/// counting per key from `from`. Returns the ids.
async fn enqueue(
    store: &Store,
    topic: &str,
    n: u64,
    from: u64,
    per_uow: u64,
    pause: Duration,
) -> Vec<MessageId> {
    let ob = Outbox::open(store).await.unwrap();
    let mut ids = Vec::new();
    let mut i = 0;
    while i < n {
        let mut uow = store.begin().await.unwrap();
        let msgs: Vec<Message> = (i..(i + per_uow).min(n))
            .map(|j| {
                let key = format!("key-{}", j % KEYS);
                let seq = from + j / KEYS;
                Message::new(topic, format!("{key}:{seq}")).with_key(key)
            })
            .collect();
        i += u64::try_from(msgs.len()).unwrap();
        ids.extend(ob.enqueue_all(&mut uow, msgs).await.unwrap());
        uow.commit().await.unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    ids
}

fn id_set(ids: &[MessageId]) -> HashSet<String> {
    ids.iter().map(ToString::to_string).collect()
}

// ---------------------------------------------------------------------------------------
// D4: a broker outage of 30 s dead-letters nothing.

/// Dead letters sampled while the relay runs.
#[derive(Debug, Default)]
struct Samples {
    n: u64,
    max_dead: u64,
    max_dead_lettered: u64,
}

impl Samples {
    async fn take(&mut self, ob: &Outbox, stats: &RelayStats) -> larder::outbox::OutboxCounts {
        let c = counts(ob).await;
        self.n += 1;
        self.max_dead = self.max_dead.max(c.dead);
        self.max_dead_lettered = self.max_dead_lettered.max(stats.snapshot().dead_lettered);
        c
    }
}

async fn d4(server: PrivateRedis, db: TestDb) {
    const TOTAL: u64 = 600;
    const BEFORE: u64 = 200;
    const DURING: u64 = 300;
    const OUTAGE: Duration = Duration::from_secs(30);
    let mut server = server;
    let test = format!("D4 broker outage {}", db.backend);
    let store = db.store.clone();
    let ob = Outbox::open(&store).await.unwrap();
    let topic = format!("larder-d4-{}", uuid::Uuid::new_v4().simple());
    // Short client timeouts: publishes during the outage fail fast as `Unavailable`.
    let sink_url = format!("{}?timeout_ms=1000&connect_timeout_ms=500", server.url());
    let relay = larder_testkit::outbox::relay(&store, "d4-relay")
        .lease(Duration::from_secs(2))
        .poll_interval(Duration::from_millis(50))
        .batch_size(BATCH)
        .max_attempts(3)
        .sink_arc(larder_relay::sink_from_url(&sink_url).unwrap())
        .build()
        .await
        .unwrap();
    let stats = relay.stats();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = {
        let relay = relay.clone();
        tokio::spawn(async move {
            relay
                .run(async move {
                    let _ = stopped.await;
                })
                .await
        })
    };
    let mut samples = Samples::default();
    let mut ids = Vec::new();

    // Before: 200 messages over ~2 s, delivered while the server is up.
    let t0 = Instant::now();
    ids.extend(enqueue(&store, &topic, BEFORE, 0, 10, Duration::from_millis(100)).await);
    loop {
        let c = samples.take(&ob, &stats).await;
        if c.delivered >= BEFORE {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "{test}: the first {BEFORE} were not delivered: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held_before = xlen(&server.url(), &topic, Duration::from_secs(5)).await;

    // The outage: 300 more enqueued over ~27 s while the server is down.
    server.kill();
    let down = Instant::now();
    let during = {
        let (store, topic) = (store.clone(), topic.clone());
        tokio::spawn(async move {
            enqueue(
                &store,
                &topic,
                DURING,
                BEFORE / KEYS,
                10,
                Duration::from_millis(900),
            )
            .await
        })
    };
    let delivered_at_kill = counts(&ob).await.delivered;
    let mut pending_max = 0;
    while down.elapsed() < OUTAGE {
        let c = samples.take(&ob, &stats).await;
        assert_eq!(c.dead, 0, "{test}: dead-lettered during the outage: {c:?}");
        pending_max = pending_max.max(c.pending);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    ids.extend(during.await.unwrap());
    let delivered_in_outage = counts(&ob).await.delivered - delivered_at_kill;
    let outages_in_outage = stats.snapshot().outages;
    server
        .spawn()
        .unwrap_or_else(|e| panic!("{test}: restart: {e}"));
    let outage = down.elapsed();
    let up = Instant::now();
    let held_after = xlen(&server.url(), &topic, Duration::from_secs(10)).await;
    assert!(
        held_after >= held_before,
        "{test}: the restarted server lost entries: {held_after} < {held_before}"
    );

    // After: 100 more, and everything drains.
    let after = {
        let (store, topic) = (store.clone(), topic.clone());
        tokio::spawn(async move {
            enqueue(
                &store,
                &topic,
                TOTAL - BEFORE - DURING,
                (BEFORE + DURING) / KEYS,
                10,
                Duration::from_millis(50),
            )
            .await
        })
    };
    let mut first_publish = None;
    loop {
        let c = samples.take(&ob, &stats).await;
        assert_eq!(c.dead, 0, "{test}: dead-lettered after the outage: {c:?}");
        if first_publish.is_none() && c.delivered > delivered_at_kill + delivered_in_outage {
            first_publish = Some(up.elapsed());
        }
        if c.delivered >= TOTAL {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(40),
            "{test}: not all delivered {:?} after the restart: {c:?}, relay {:?}",
            up.elapsed(),
            stats.snapshot()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let drained = up.elapsed();
    ids.extend(after.await.unwrap());
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(10), running)
        .await
        .unwrap_or_else(|_| panic!("{test}: the relay did not stop"))
        .unwrap()
        .unwrap();

    let c = counts(&ob).await;
    let snap = stats.snapshot();
    assert_eq!(
        (c.delivered, c.pending, c.parked, c.dead),
        (TOTAL, 0, 0, 0),
        "{test}: {c:?}"
    );
    assert_eq!(samples.max_dead, 0, "{test}: dead letters were seen");
    assert_eq!(snap.dead_lettered, 0, "{test}: the relay dead-lettered");
    assert_eq!(
        samples.max_dead_lettered, 0,
        "{test}: the relay dead-lettered"
    );
    assert!(
        snap.outages > 0,
        "{test}: the relay counted no outage: {snap:?}"
    );
    let enqueued = id_set(&ids);
    assert_eq!(u64::try_from(enqueued.len()).unwrap(), TOTAL);
    let entries = xrange(&server.url(), &topic).await;
    let v = check(&entries, &enqueued, &test);
    eprintln!(
        "{test}: outage {outage:?} (server down, {} dead-letter samples every 200 ms, max dead \
         {}); delivered {delivered_in_outage} during the outage, up to {pending_max} pending; \
         outages counted {} during the outage, {} in all; failed attempts {}; stream held \
         {held_before} before the kill, {held_after} after the restart; first publish \
         {:?} and all {TOTAL} delivered {drained:?} after the restart; stream: {} entries, \
         {} distinct, {} duplicates, 0 lost, 0 out of order; whole test {:?}",
        samples.n,
        samples.max_dead,
        outages_in_outage,
        snap.outages,
        snap.failed_attempts,
        first_publish.unwrap_or(drained),
        v.entries,
        v.distinct,
        v.duplicates,
        t0.elapsed(),
    );
    db.finish().await;
}

/// The private server, or a skip (a failure under `LARDER_REQUIRE_BACKENDS=1`).
fn private_redis(test: &str) -> Option<PrivateRedis> {
    match PrivateRedis::start() {
        Ok(s) => Some(s),
        Err(reason) => {
            backends::skip(test, &reason);
            None
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_sqlite_broker_outage_dead_letters_nothing() {
    let test = "d4_sqlite_broker_outage_dead_letters_nothing";
    let Some(server) = private_redis(test) else {
        return;
    };
    let Some(db) = backends::sqlite("outbox_brokers::d4_sqlite").await else {
        return;
    };
    d4(server, db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d4_postgres_broker_outage_dead_letters_nothing() {
    let test = "d4_postgres_broker_outage_dead_letters_nothing";
    let Some(server) = private_redis(test) else {
        return;
    };
    let Some(db) = backends::postgres("outbox_brokers::d4_postgres").await else {
        return;
    };
    d4(server, db).await;
}

// ---------------------------------------------------------------------------------------
// D1: a relay publishing to Redis, SIGKILLed 20 times, loses nothing.

/// The Redis sink, announcing each acknowledged publish on stdout.
struct Announcing(Arc<dyn Sink>);

impl Sink for Announcing {
    fn system(&self) -> &'static str {
        self.0.system()
    }
    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            self.0.publish(m).await?;
            println!("PUB {}", m.id);
            Ok(())
        })
    }
    fn flush(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        self.0.flush()
    }
}

async fn open(target: &str) -> TestDb {
    if let Some(path) = target.strip_prefix("sqlite:") {
        backends::sqlite_existing(Path::new(path), |_| {}, StoreConfig::default()).await
    } else if let Some(schema) = target.strip_prefix("postgres:") {
        backends::postgres_existing(schema, |_| {}, StoreConfig::default())
            .await
            .expect("LARDER_TEST_POSTGRES_URL")
    } else {
        panic!("unknown target {target}");
    }
}

/// The relay process. Does nothing unless started by the D1 test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the D1 broker test (runs only with LARDER_BROKER_CHILD)"]
async fn broker_relay_child() {
    let Ok(target) = std::env::var("LARDER_BROKER_CHILD") else {
        return;
    };
    let name = std::env::var("LARDER_BROKER_NAME").unwrap();
    let sink_url = std::env::var("LARDER_BROKER_SINK").unwrap();
    let stop = PathBuf::from(std::env::var("LARDER_BROKER_STOP").unwrap());
    let db = open(&target).await;
    let sink = larder_relay::sink_from_url(&sink_url).unwrap();
    let relay = Relay::builder(&db.store)
        .name(name)
        .lease(Duration::from_secs(1))
        .poll_interval(Duration::from_millis(100))
        .batch_size(BATCH)
        .sink(Announcing(sink))
        .build()
        .await
        .unwrap();
    let stopped = async move {
        while !stop.exists() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    relay.run(stopped).await.unwrap();
    println!("CHILD DONE");
}

struct RelayProc {
    child: Child,
    published: Arc<AtomicU64>,
    lines: std::thread::JoinHandle<()>,
}

fn spawn(target: &str, name: &str, sink_url: &str, stop: &Path) -> RelayProc {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--ignored"])
        .env("LARDER_BROKER_CHILD", target)
        .env("LARDER_BROKER_NAME", name)
        .env("LARDER_BROKER_SINK", sink_url)
        .env("LARDER_BROKER_STOP", stop)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the relay child");
    let published = Arc::new(AtomicU64::new(0));
    let out = child.stdout.take().unwrap();
    let lines = {
        let published = published.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("PUB ") {
                    published.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    RelayProc {
        child,
        published,
        lines,
    }
}

impl RelayProc {
    fn kill(mut self) -> u64 {
        self.child.kill().unwrap(); // SIGKILL
        self.child.wait().unwrap();
        self.lines.join().unwrap();
        self.published.load(Ordering::Relaxed)
    }

    fn wait(mut self, within: Duration) {
        let t = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                assert!(s.success(), "relay child failed: {s}");
                break;
            }
            if t.elapsed() > within {
                let _ = self.child.kill();
                panic!("the relay child did not stop");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.lines.join().unwrap();
    }
}

/// Kills a child still running when the test panics.
struct Reaper(Option<RelayProc>);

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(mut p) = self.0.take() {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

fn rng(test: &str) -> impl FnMut() -> u64 {
    let seed = std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default();
            u64::from(std::process::id()) ^ now.as_secs() ^ (u64::from(now.subsec_nanos()) << 32)
        });
    eprintln!("{test}: seed {seed} (LARDER_TEST_SEED replays the kill points)");
    let mut s = seed | 1;
    move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    }
}

async fn d1(url: String, db: TestDb, target: String) {
    const KILLS: u64 = 20;
    const TOTAL: u64 = 2_000;
    let test = format!("D1 redis relay kill {}", db.backend);
    let mut next = rng(&test);
    let topic = format!("larder-d1-{}", uuid::Uuid::new_v4().simple());
    let _cleanup = StreamGuard {
        url: url.clone(),
        stream: topic.clone(),
    };
    let stop = std::env::temp_dir().join(format!("{topic}.stop"));
    let store = db.store.clone();
    let ob = Outbox::open(&store).await.unwrap();
    let t0 = Instant::now();
    let mut ids = enqueue(&store, &topic, TOTAL / 2, 0, 10, Duration::ZERO).await;
    let late = {
        let (store, topic) = (store.clone(), topic.clone());
        tokio::spawn(async move {
            enqueue(
                &store,
                &topic,
                TOTAL / 2,
                TOTAL / 2 / KEYS,
                10,
                Duration::from_millis(8),
            )
            .await
        })
    };
    let mut kills = 0u64;
    let mut announced = Vec::new();
    for _ in 0..KILLS {
        let mut p = Reaper(Some(spawn(&target, "d1-relay", &url, &stop)));
        let after = 1 + next() % u64::from(BATCH * 2);
        let since = Instant::now();
        loop {
            let published = p.0.as_ref().unwrap().published.load(Ordering::Relaxed);
            if published >= after
                || since.elapsed() > Duration::from_secs(30)
                || counts(&ob).await.delivered >= TOTAL
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        announced.push(p.0.take().unwrap().kill());
        kills += 1;
    }
    ids.extend(late.await.unwrap());
    let killed = t0.elapsed();
    let mut p = Reaper(Some(spawn(&target, "d1-relay", &url, &stop)));
    let t = Instant::now();
    loop {
        let c = counts(&ob).await;
        if c.delivered >= TOTAL {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{test}: not all delivered: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let drained = t.elapsed();
    std::fs::write(&stop, b"stop").unwrap();
    p.0.take().unwrap().wait(Duration::from_secs(30));
    let _ = std::fs::remove_file(&stop);

    let c = counts(&ob).await;
    assert_eq!(
        (c.delivered, c.pending, c.dead),
        (TOTAL, 0, 0),
        "{test}: {c:?}"
    );
    let enqueued = id_set(&ids);
    assert_eq!(u64::try_from(enqueued.len()).unwrap(), TOTAL);
    let entries = xrange(&url, &topic).await;
    let v = check(&entries, &enqueued, &test);
    eprintln!(
        "{test}: {kills} kills after {announced:?} announced publishes ({killed:?}); last relay \
         drained in {drained:?}; stream {topic}: {} entries, {} distinct, {} duplicates (bound \
         {}), 0 lost, 0 out of order; whole test {:?}",
        v.entries,
        v.distinct,
        v.duplicates,
        kills * u64::from(BATCH),
        t0.elapsed()
    );
    assert!(
        v.duplicates <= kills * u64::from(BATCH),
        "{test}: {} duplicates",
        v.duplicates
    );
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_redis_relay_killed_20_times_loses_nothing() {
    let test = "d1_redis_relay_killed_20_times_loses_nothing";
    let url = match shared_redis().await {
        Ok(u) => u,
        Err(reason) => {
            backends::skip(test, &reason);
            return;
        }
    };
    let Some(db) = backends::postgres("outbox_brokers::d1_postgres").await else {
        return;
    };
    let target = format!("postgres:{}", db.pg_schema.as_ref().unwrap());
    d1(url, db, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_redis_sqlite_relay_killed_20_times_loses_nothing() {
    let test = "d1_redis_sqlite_relay_killed_20_times_loses_nothing";
    let url = match shared_redis().await {
        Ok(u) => u,
        Err(reason) => {
            backends::skip(test, &reason);
            return;
        }
    };
    let Some(db) = backends::sqlite("outbox_brokers::d1_sqlite").await else {
        return;
    };
    let target = format!("sqlite:{}", db.sqlite_path.as_ref().unwrap().display());
    d1(url, db, target).await;
}
