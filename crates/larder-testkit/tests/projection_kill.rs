//! A projection killed mid-batch resumes without skipping or double-applying its SQL read
//! model (the runner commits the read-model writes and the checkpoint in one transaction).
//!
//! The parent test appends 2,000 events (half before, half while the projection runs) and
//! runs the projection in a child process: this test binary re-executed with
//! `--exact projection_kill_child --ignored`, told by `LARDER_PROJECTION_KILL_CHILD` which
//! database to open (`sqlite:<file>` or `postgres:<schema>`). For each event the
//! projection increments a `Counter` and inserts an `Applied` row naming the event, slowly
//! (1 ms per event, batches of 100), and prints `APPLY <event id>` before its writes. The
//! parent SIGKILLs the child 5 times, each time after a random number of `APPLY` lines
//! (so the kill lands inside a batch), checks after every kill that the counter equals
//! the number of `Applied` rows (nothing half-committed), restarts it, and finally lets it
//! finish. Then: counter == 2,000 and every appended event id is applied exactly once.
//! The printed lines show how many applications the kills threw away (rolled back and
//! redelivered).

use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::TryStreamExt;
use larder::events::{EventData, EventStore, ExpectedVersion, Projection, ProjectionRunner};
use larder::{Entity, Query, Store, StoreConfig, Uow};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::entities::Counter;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

const EVENTS: u64 = 2_000;
const KILLS: usize = 5;
const BATCH: u32 = 100;
const CHILD_ENV: &str = "LARDER_PROJECTION_KILL_CHILD";
const CHILD_TEST: &str = "projection_kill_child";
const COUNTER_ID: &str = "applied";

/// One row per application of an event to the read model (its own id, so a double
/// application shows up as two rows instead of failing the projection).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "kill_applied", document)]
struct Applied {
    id: String,
    #[larder(indexed)]
    event_id: String,
    pid: u32,
}

struct CountingProjection;

impl Projection for CountingProjection {
    fn name(&self) -> &str {
        "kill_counter"
    }

    async fn handle(
        &self,
        uow: &mut Uow,
        event: &larder::events::RecordedEvent,
    ) -> larder::Result<()> {
        println!("APPLY {}", event.event_id);
        let mut c = uow
            .repo::<Counter>()
            .require(&COUNTER_ID.to_owned())
            .await?;
        c.count += 1;
        uow.repo::<Counter>().save(&mut c).await?;
        uow.repo::<Applied>()
            .insert(&Applied {
                id: Uuid::now_v7().to_string(),
                event_id: event.event_id.to_string(),
                pid: std::process::id(),
            })
            .await?;
        tokio::time::sleep(Duration::from_millis(1)).await;
        Ok(())
    }
}

async fn counter(store: &Store) -> i64 {
    let mut uow = store.read().await.unwrap();
    let c = uow
        .repo::<Counter>()
        .require(&COUNTER_ID.to_owned())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    c.count
}

async fn applied(store: &Store) -> Vec<Applied> {
    let mut uow = store.read().await.unwrap();
    let rows: Vec<Applied> = uow
        .repo::<Applied>()
        .stream(&Query::all())
        .map_ok(|v| (*v).clone())
        .try_collect()
        .await
        .unwrap();
    uow.commit().await.unwrap();
    rows
}

/// The counter, once it agrees with the number of `Applied` rows. A batch commits both
/// or neither, so they agree whenever no commit lands between the reads; a killed child's
/// PostgreSQL session may still process a COMMIT it had sent, so a changing counter is
/// read again. A half-committed batch would disagree for good.
async fn consistent_counter(store: &Store, test: &str, kill: usize) -> i64 {
    for _ in 0..50 {
        let c1 = counter(store).await;
        let rows = applied(store).await.len();
        let c2 = counter(store).await;
        if c1 == c2 {
            assert_eq!(
                usize::try_from(c1).unwrap(),
                rows,
                "{test}: after kill {kill} the counter and the applied rows disagree: a batch \
                 was half committed"
            );
            return c1;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{test}: after kill {kill} the counter keeps changing with no projection running");
}

/// The projection process. Does nothing unless started by a parent test.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "child process of the projection kill tests (runs only with LARDER_PROJECTION_KILL_CHILD)"]
async fn projection_kill_child() {
    let Ok(target) = std::env::var(CHILD_ENV) else {
        return;
    };
    let db = if let Some(path) = target.strip_prefix("sqlite:") {
        backends::sqlite_existing(std::path::Path::new(path), |_| {}, StoreConfig::default()).await
    } else if let Some(schema) = target.strip_prefix("postgres:") {
        backends::postgres_existing(schema, |_| {}, StoreConfig::default())
            .await
            .expect("LARDER_TEST_POSTGRES_URL")
    } else {
        panic!("{CHILD_ENV}={target}: expected sqlite:<file> or postgres:<schema>");
    };
    let store = db.store.clone();
    store.register::<Counter>().await.unwrap();
    store.register::<Applied>().await.unwrap();
    let es = EventStore::builder(&store)
        .poll_interval(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    let runner = ProjectionRunner::new(&es)
        .with(CountingProjection)
        .batch_size(BATCH);
    let done = {
        let store = store.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if counter(&store).await >= i64::try_from(EVENTS).unwrap() {
                    return;
                }
            }
        }
    };
    runner.run(done).await.unwrap();
    println!("CHILD DONE");
    db.finish().await;
}

/// A running child and the number of `APPLY` lines it printed.
struct Projector {
    child: Child,
    applies: Arc<AtomicU64>,
    lines: std::thread::JoinHandle<()>,
}

fn spawn_child(target: &str) -> Projector {
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", CHILD_TEST, "--nocapture", "--ignored"])
        .env(CHILD_ENV, target)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the projection child");
    let applies = Arc::new(AtomicU64::new(0));
    let out = child.stdout.take().unwrap();
    let lines = {
        let applies = applies.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("APPLY ") {
                    applies.fetch_add(1, Ordering::Relaxed);
                }
            }
        })
    };
    Projector {
        child,
        applies,
        lines,
    }
}

/// Appends `n` events in units of work of 10, to a few streams; returns their ids.
async fn append(es: &EventStore, n: u64, pause: Duration, tag: &str) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n / 10 {
        let events: Vec<EventData> = (0..10)
            .map(|j| {
                EventData::new(
                    "Happened",
                    &serde_json::json!({ "tag": tag, "n": i * 10 + j }),
                )
                .unwrap()
            })
            .collect();
        let these: Vec<Uuid> = events.iter().map(|e| e.id).collect();
        let mut uow = es.store().begin().await.unwrap();
        es.append(
            &mut uow,
            &format!("kill-{}", i % 7),
            ExpectedVersion::Any,
            events,
        )
        .await
        .unwrap();
        uow.commit().await.unwrap();
        ids.extend(these);
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    ids
}

async fn kill_loop(db: TestDb, target: String) {
    let test = format!("projection kill {}", db.backend);
    let started = Instant::now();
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
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };

    let store = db.store.clone();
    store.register::<Counter>().await.unwrap();
    store.register::<Applied>().await.unwrap();
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Counter>()
        .insert(&Counter {
            id: COUNTER_ID.into(),
            count: 0,
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let es = EventStore::open(&store).await.unwrap();

    // Half the events before the projection first runs, half while it runs.
    let appended = Arc::new(Mutex::new(
        append(&es, EVENTS / 2, Duration::ZERO, "before").await,
    ));
    let late = {
        let (es, appended) = (es.clone(), appended.clone());
        tokio::spawn(async move {
            let ids = append(&es, EVENTS / 2, Duration::from_millis(15), "during").await;
            appended.lock().unwrap().extend(ids);
        })
    };

    let mut total_applies = 0;
    let mut mid_batch = 0;
    for kill in 0..KILLS {
        let before = counter(&store).await;
        let mut p = spawn_child(&target);
        // Kill after a random number of applications: inside a batch (unless it happens to
        // fall exactly on a batch end).
        let after = 1 + next() % (u64::from(BATCH) * 2);
        let since = Instant::now();
        while p.applies.load(Ordering::Relaxed) < after {
            if let Some(status) = p.child.try_wait().unwrap() {
                panic!("{test}: the child exited early ({status})");
            }
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "{test}: the child applied nothing for 60 s"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        p.child.kill().unwrap(); // SIGKILL
        p.child.wait().unwrap();
        p.lines.join().unwrap();
        let printed = p.applies.load(Ordering::Relaxed);
        total_applies += printed;
        let after_kill = consistent_counter(&store, &test, kill).await;
        let committed = u64::try_from(after_kill - before).unwrap();
        if printed > committed {
            mid_batch += 1;
        }
        eprintln!(
            "{test}: kill {kill}: after {printed} applications, {committed} committed \
             (counter {before} → {after_kill}), {} thrown away",
            printed.saturating_sub(committed)
        );
    }

    // The last run finishes the job.
    let mut p = spawn_child(&target);
    let since = Instant::now();
    let status = loop {
        if let Some(status) = p.child.try_wait().unwrap() {
            break status;
        }
        if since.elapsed() > Duration::from_secs(120) {
            let _ = p.child.kill();
            let _ = p.child.wait();
            panic!(
                "{test}: the last run did not finish in 120 s (counter {})",
                counter(&store).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    p.lines.join().unwrap();
    total_applies += p.applies.load(Ordering::Relaxed);
    assert!(status.success(), "{test}: the last run failed: {status}");
    late.await.unwrap();

    // The checker.
    let appended: HashSet<String> = appended
        .lock()
        .unwrap()
        .iter()
        .map(Uuid::to_string)
        .collect();
    assert_eq!(appended.len() as u64, EVENTS);
    let rows = applied(&store).await;
    let mut times: HashMap<&str, u32> = HashMap::new();
    for r in &rows {
        *times.entry(r.event_id.as_str()).or_default() += 1;
    }
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).collect();
    let never: Vec<_> = appended
        .iter()
        .filter(|id| !times.contains_key(id.as_str()))
        .collect();
    let unknown: Vec<_> = times.keys().filter(|id| !appended.contains(**id)).collect();
    let count = counter(&store).await;
    eprintln!(
        "{test}: {KILLS} kills ({mid_batch} inside a batch), {total_applies} applications \
         printed for {EVENTS} events; counter {count}, {} rows, {} applied twice, {} never, \
         {} unknown; {:?}",
        rows.len(),
        twice.len(),
        never.len(),
        unknown.len(),
        started.elapsed()
    );
    assert!(twice.is_empty(), "{test}: double-applied: {twice:?}");
    assert!(never.is_empty(), "{test}: skipped: {} events", never.len());
    assert!(unknown.is_empty(), "{test}: applied events never appended");
    assert_eq!(count, i64::try_from(EVENTS).unwrap(), "{test}: counter");
    assert_eq!(rows.len() as u64, EVENTS, "{test}: applied rows");
    assert!(
        mid_batch > 0,
        "{test}: no kill landed inside a batch; the test proved nothing"
    );
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_projection_killed_mid_batch_applies_every_event_exactly_once() {
    let db = backends::sqlite("projection_kill::sqlite").await.unwrap();
    let target = format!("sqlite:{}", db.sqlite_path.as_ref().unwrap().display());
    kill_loop(db, target).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_projection_killed_mid_batch_applies_every_event_exactly_once() {
    let Some(db) = backends::postgres("projection_kill::postgres").await else {
        return;
    };
    let target = format!("postgres:{}", db.pg_schema.as_ref().unwrap());
    kill_loop(db, target).await;
}
