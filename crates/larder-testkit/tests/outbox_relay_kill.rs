//! D1 and D2: relays killed with SIGKILL lose nothing, and competing relays keep per-key
//! order.
//!
//! Relays run in child processes: this test binary re-executed with `--exact
//! relay_child --ignored`, told by environment variables which database to open
//! (`sqlite:<file>` or `postgres:<schema>`), its relay name, lease and the JSON-lines file
//! it publishes to (a durable sink: the relay records a batch only after the sink synced
//! it). The child prints `PUB <id>` per published message and exits when the stop file
//! exists. The parent reads the file as the consumer would.
//!
//! - D1 (SQLite and PostgreSQL): 2,000 messages on 20 keys (half before, half while the
//!   relay runs), the relay is SIGKILLed 20 times at random points and restarted with the
//!   same name: 0 lost; duplicates ≤ kills × batch size; after de-duplication by id
//!   exactly 2,000, and each key's first deliveries in enqueue order.
//! - D2 (PostgreSQL): four relays share 2,000 messages on 40 keys: per-key order strictly
//!   increasing at the consumer, 0 duplicates. Then one relay is SIGKILLed while 1,000
//!   more flow: its partitions are held by the others within the lease plus one poll, and
//!   everything is delivered (first deliveries in key order; duplicates ≤ one batch).

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder::backend::BoxFuture;
use larder::outbox::{JsonLinesSink, Message, Outbox, Outgoing, Relay, Sink, SinkError};
use larder::{Store, StoreConfig};
use larder_testkit::backends::{self, TestDb};

const BATCH: u32 = 50;
const CHILD_TEST: &str = "relay_child";

/// The JSON-lines sink, announcing each publish on stdout.
struct Announcing(JsonLinesSink);

impl Sink for Announcing {
    fn system(&self) -> &'static str {
        "file"
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

/// The canary's sink: says "published" at once and writes the message 30 ms later (a
/// relay that publishes after recording, or a broker that acknowledges before it stored):
/// a kill in between loses messages, which the D1 checks must catch.
struct AcksEarly(Arc<JsonLinesSink>);

impl Sink for AcksEarly {
    fn system(&self) -> &'static str {
        "file"
    }
    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        let line = larder::outbox::json_line(&m);
        let sink = self.0.clone();
        let id = m.id;
        Box::pin(async move {
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(30)).await;
                use std::io::Write;
                let mut f = std::fs::OpenOptions::new()
                    .append(true)
                    .open(sink.path())
                    .unwrap();
                // One write per line (a torn line at a kill is still possible, and counted).
                f.write_all(format!("{line}\n").as_bytes()).unwrap();
            });
            println!("PUB {id}");
            Ok(())
        })
    }
}

/// The relay process. Does nothing unless started by a parent test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the relay kill tests (runs only with LARDER_RELAY_CHILD)"]
async fn relay_child() {
    let Ok(target) = std::env::var("LARDER_RELAY_CHILD") else {
        return;
    };
    let name = std::env::var("LARDER_RELAY_NAME").unwrap();
    let file = PathBuf::from(std::env::var("LARDER_RELAY_FILE").unwrap());
    let stop = PathBuf::from(std::env::var("LARDER_RELAY_STOP").unwrap());
    let lease_ms: u64 = std::env::var("LARDER_RELAY_LEASE_MS")
        .unwrap()
        .parse()
        .unwrap();
    let db = open(&target).await;
    let sink = JsonLinesSink::open(&file).unwrap();
    let builder = Relay::builder(&db.store)
        .name(name)
        .lease(Duration::from_millis(lease_ms))
        .poll_interval(Duration::from_millis(100))
        .batch_size(BATCH);
    let builder = if std::env::var("LARDER_RELAY_CANARY").is_ok() {
        builder.sink(AcksEarly(Arc::new(sink)))
    } else {
        builder.sink(Announcing(sink))
    };
    let relay = builder.build().await.unwrap();
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

fn spawn(target: &str, name: &str, file: &Path, stop: &Path, lease_ms: u64) -> RelayProc {
    spawn_with(target, name, file, stop, lease_ms, false)
}

fn spawn_with(
    target: &str,
    name: &str,
    file: &Path,
    stop: &Path,
    lease_ms: u64,
    canary: bool,
) -> RelayProc {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    if canary {
        cmd.env("LARDER_RELAY_CANARY", "1");
    }
    let mut child = cmd
        .args(["--exact", CHILD_TEST, "--nocapture", "--ignored"])
        .env("LARDER_RELAY_CHILD", target)
        .env("LARDER_RELAY_NAME", name)
        .env("LARDER_RELAY_FILE", file)
        .env("LARDER_RELAY_STOP", stop)
        .env("LARDER_RELAY_LEASE_MS", lease_ms.to_string())
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

/// Enqueues `n` messages over `keys` keys, `per_uow` per unit of work, pausing between
/// units of work; bodies are `<key>:<seq>` with `seq` counting per key from `from`.
async fn enqueue(store: &Store, keys: u64, n: u64, from: u64, per_uow: u64, pause: Duration) {
    let ob = Outbox::open(store).await.unwrap();
    let mut i = 0;
    while i < n {
        let mut uow = store.begin().await.unwrap();
        let msgs: Vec<Message> = (i..(i + per_uow).min(n))
            .map(|j| {
                let k = j % keys;
                let seq = from + j / keys;
                Message::new("d", format!("{k}:{seq}")).with_key(format!("key-{k}"))
            })
            .collect();
        i += msgs.len() as u64;
        ob.enqueue_all(&mut uow, msgs).await.unwrap();
        uow.commit().await.unwrap();
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
}

async fn delivered(store: &Store) -> u64 {
    let ob = Outbox::open(store).await.unwrap();
    let mut uow = store.read().await.unwrap();
    let c = ob.status(&mut uow).await.unwrap();
    uow.commit().await.unwrap();
    c.delivered
}

/// What the consumer saw: (id, key, seq) per line, in file order; a line that is not a
/// whole message (torn or interleaved writes) is an `Err` with the line.
fn consumed(file: &Path) -> Vec<Result<(String, String, u64), String>> {
    let text = std::fs::read_to_string(file).unwrap_or_default();
    text.lines()
        .map(|l| {
            let parsed = (|| {
                let v: serde_json::Value = serde_json::from_str(l).ok()?;
                let body = v["payload"].as_str()?;
                let (k, seq) = body.split_once(':')?;
                Some((
                    v["id"].as_str()?.to_owned(),
                    k.to_owned(),
                    seq.parse().ok()?,
                ))
            })();
            parsed.ok_or_else(|| l.to_owned())
        })
        .collect()
}

/// Checks the consumer's view: nothing lost, each key's first deliveries in order;
/// returns the number of duplicates. `strict`: every delivery (duplicates included) in
/// strictly increasing order per key.
fn check(file: &Path, expected: u64, strict: bool, test: &str) -> u64 {
    let (distinct, dups, disorder) = view(file, strict);
    assert!(disorder.is_empty(), "{test}: {}", disorder.join("; "));
    assert_eq!(distinct, expected, "{test}: lost messages");
    dups
}

/// (distinct ids, duplicates, per-key order violations and torn lines) seen by the
/// consumer.
fn view(file: &Path, strict: bool) -> (u64, u64, Vec<String>) {
    let seen = consumed(file);
    let mut ids = HashSet::new();
    let mut last: HashMap<String, u64> = HashMap::new();
    let mut dups = 0;
    let mut disorder = Vec::new();
    for line in &seen {
        let (id, k, seq) = match line {
            Ok(m) => m,
            Err(torn) => {
                disorder.push(format!("not a whole message: {torn}"));
                continue;
            }
        };
        let first = ids.insert(id.clone());
        if !first {
            dups += 1;
        }
        if first || strict {
            let prev = last.insert(k.clone(), *seq);
            if let Some(p) = prev
                && *seq <= p
            {
                disorder.push(format!("key {k}: {seq} delivered after {p}"));
            }
        }
    }
    (ids.len() as u64, dups, disorder)
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

fn files(tag: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir();
    let id = uuid::Uuid::now_v7();
    let file = dir.join(format!("larder-{tag}-{id}.jsonl"));
    let stop = dir.join(format!("larder-{tag}-{id}.stop"));
    (file, stop)
}

async fn d1(db: TestDb, target: String) {
    const KILLS: usize = 20;
    const TOTAL: u64 = 2_000;
    let test = format!("D1 relay kill {}", db.backend);
    let mut next = rng(&test);
    let (file, stop) = files("d1");
    let store = db.store.clone();
    Outbox::open(&store).await.unwrap();
    enqueue(&store, 20, TOTAL / 2, 0, 10, Duration::ZERO).await;
    let late = {
        let store = store.clone();
        tokio::spawn(async move {
            enqueue(
                &store,
                20,
                TOTAL / 2,
                TOTAL / 2 / 20,
                10,
                Duration::from_millis(8),
            )
            .await;
        })
    };
    let mut kills: u64 = 0;
    for _ in 0..KILLS {
        let p = spawn(&target, "d1-relay", &file, &stop, 1_000);
        let after = 1 + next() % u64::from(BATCH * 2);
        let since = Instant::now();
        while p.published.load(Ordering::Relaxed) < after {
            if since.elapsed() > Duration::from_secs(30) || delivered(&store).await >= TOTAL {
                break;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        p.kill();
        kills += 1;
    }
    late.await.unwrap();
    let p = spawn(&target, "d1-relay", &file, &stop, 1_000);
    let t = Instant::now();
    while delivered(&store).await < TOTAL {
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "{test}: not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&stop, b"stop").unwrap();
    p.wait(Duration::from_secs(30));
    let dups = check(&file, TOTAL, false, &test);
    eprintln!(
        "{test}: {kills} kills, {dups} duplicates (bound {})",
        kills * u64::from(BATCH)
    );
    assert!(
        dups <= kills * u64::from(BATCH),
        "{test}: {dups} duplicates"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&stop);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_sqlite_relay_killed_20_times_loses_nothing() {
    let Some(db) = backends::sqlite("outbox_relay_kill::d1_sqlite").await else {
        return;
    };
    let target = format!("sqlite:{}", db.sqlite_path.as_ref().unwrap().display());
    d1(db, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_postgres_relay_killed_20_times_loses_nothing() {
    let Some(db) = backends::postgres("outbox_relay_kill::d1_postgres").await else {
        return;
    };
    let target = format!("postgres:{}", db.pg_schema.as_ref().unwrap());
    d1(db, target).await;
}

async fn owners(store: &Store) -> Vec<(i32, Option<String>, i64)> {
    use larder::postgres::PgUowExt;
    let mut uow = store.read().await.unwrap();
    let rows: Vec<(i32, Option<String>, i64)> =
        sqlx::query_as("SELECT partition, owner, lease_until FROM _larder_outbox_partitions")
            .fetch_all(uow.postgres_bounded().await.unwrap())
            .await
            .unwrap();
    uow.commit().await.unwrap();
    rows
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d2_postgres_four_relays_keep_key_order_and_take_over_a_killed_one() {
    const LEASE_MS: u64 = 1_500;
    const POLL_MS: u64 = 100;
    let Some(db) = backends::postgres("outbox_relay_kill::d2").await else {
        return;
    };
    let test = "D2 four relays";
    let target = format!("postgres:{}", db.pg_schema.as_ref().unwrap());
    let (file, stop) = files("d2");
    let store = db.store.clone();
    Outbox::open(&store).await.unwrap();
    let mut relays: Vec<RelayProc> = (0..4)
        .map(|i| spawn(&target, &format!("r{i}"), &file, &stop, LEASE_MS))
        .collect();
    enqueue(&store, 40, 2_000, 0, 20, Duration::from_millis(20)).await;
    let t = Instant::now();
    while delivered(&store).await < 2_000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{test}: not all delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let dups = check(&file, 2_000, true, test);
    assert_eq!(dups, 0, "{test}: duplicates without faults");
    let held: HashSet<String> = owners(&store)
        .await
        .into_iter()
        .filter_map(|o| o.1)
        .collect();
    eprintln!("{test}: partitions held by {held:?}");
    assert!(
        held.len() >= 2,
        "{test}: the relays share the partitions: {held:?}"
    );

    // Kill r0 while 1,000 more flow.
    let more = {
        let store = store.clone();
        tokio::spawn(async move {
            enqueue(&store, 40, 1_000, 50, 20, Duration::from_millis(20)).await;
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r0_had: Vec<i32> = owners(&store)
        .await
        .into_iter()
        .filter(|o| o.1.as_deref() == Some("r0"))
        .map(|o| o.0)
        .collect();
    relays.remove(0).kill();
    let killed = Instant::now();
    loop {
        let now_us = i64::try_from(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_micros(),
        )
        .unwrap();
        let o = owners(&store).await;
        let orphaned = o
            .iter()
            .filter(|(_, owner, until)| owner.as_deref() == Some("r0") || *until < now_us)
            .count();
        if orphaned == 0 {
            break;
        }
        assert!(
            killed.elapsed() < Duration::from_millis(LEASE_MS + POLL_MS + 2_000),
            "{test}: r0's partitions were not taken over in time: {o:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let takeover = killed.elapsed();
    eprintln!(
        "{test}: r0 held {r0_had:?}; taken over {takeover:?} after the kill (lease {LEASE_MS} ms, poll {POLL_MS} ms)"
    );
    more.await.unwrap();
    let t = Instant::now();
    while delivered(&store).await < 3_000 {
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "{test}: not all delivered after the kill"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    std::fs::write(&stop, b"stop").unwrap();
    for r in relays {
        r.wait(Duration::from_secs(30));
    }
    let dups = check(&file, 3_000, false, test);
    eprintln!("{test}: {dups} duplicates after the kill");
    assert!(dups <= u64::from(BATCH), "{test}: {dups} duplicates");
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&stop);
    db.finish().await;
}

/// The canary of D1: a sink that acknowledges before the message is stored loses
/// messages when the relay is killed, and the D1 checks see it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d1_canary_a_sink_that_acks_early_is_caught_losing_messages() {
    const TOTAL: u64 = 400;
    let Some(db) = backends::sqlite("outbox_relay_kill::d1_canary").await else {
        return;
    };
    let target = format!("sqlite:{}", db.sqlite_path.as_ref().unwrap().display());
    let (file, stop) = files("d1c");
    let store = db.store.clone();
    Outbox::open(&store).await.unwrap();
    enqueue(&store, 20, TOTAL, 0, 10, Duration::ZERO).await;
    for _ in 0..5 {
        let p = spawn_with(&target, "d1-canary", &file, &stop, 1_000, true);
        let since = Instant::now();
        while p.published.load(Ordering::Relaxed) < 30 && since.elapsed() < Duration::from_secs(30)
        {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        p.kill();
        if delivered(&store).await >= TOTAL {
            break;
        }
    }
    let p = spawn_with(&target, "d1-canary", &file, &stop, 1_000, true);
    let t = Instant::now();
    while delivered(&store).await < TOTAL {
        assert!(t.elapsed() < Duration::from_secs(60));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    std::fs::write(&stop, b"stop").unwrap();
    p.wait(Duration::from_secs(30));
    let (distinct, _, disorder) = view(&file, false);
    eprintln!(
        "D1 canary: {distinct} of {TOTAL} reached the consumer, {} order violations",
        disorder.len()
    );
    assert!(
        distinct < TOTAL || !disorder.is_empty(),
        "the canary lost and reordered nothing: the D1 checks would not catch it"
    );
    let _ = std::fs::remove_file(&file);
    let _ = std::fs::remove_file(&stop);
    db.finish().await;
}
