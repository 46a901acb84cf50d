//! The global event log never skips (RELIABILITY.md §A) and appends race correctly (§B1).
//!
//! - **A1** held-open writer (deterministic, PostgreSQL and SQLite): a reader never moves
//!   past an event whose transaction is still open; once it commits, the reader resuming
//!   from its checkpoint receives it (and what committed after it) in log order; when it
//!   rolls back, the reader proceeds at once.
//! - **A2** stress (memory, SQLite, PostgreSQL): 8 writers × 500 units of work of 1–5
//!   events to random streams, 5% rolled back, random sleeps inside the transactions,
//!   4 catch-up readers polling `read_all` all along, 1 reader from the start at the end.
//!   The writers record every event id only once its commit succeeded; the checker then
//!   demands, for every reader: delivered set == committed set (0 missing, 0 duplicates, 0
//!   rolled back or never-committed), delivered order == the final full read's order (log
//!   order), and per stream versions 1..n without gaps.
//! - **A3** canary: the same harness on PostgreSQL with naive `position > last` readers
//!   (raw SQL on the pool) next to larder readers: the checker must report missing events
//!   for the naive readers (and none for larder's), or it could not see a skip.
//! - **B1** append race: 64 tasks append to one stream with the same expected version,
//!   round after round: exactly one winner per round, every loser a `Conflict` naming the
//!   stream's new version (never another error), final version == rounds, versions
//!   contiguous and holding the winners' events.
//!
//! Randomness is seeded; the seed is printed and `LARDER_TEST_SEED` replays it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use larder::events::{
    AppendResult, Checkpoint, EventData, EventFilter, EventStore, ExpectedVersion, ReadDirection,
};
use larder::settings::Synchronous;
use larder::{Error, Store, StoreConfig};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::rng::Rng;
use sqlx::Row;
use uuid::Uuid;

// ---------------------------------------------------------------------------------------
// Helpers

fn seed(test: &str) -> u64 {
    let seed = std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs() ^ u64::from(d.subsec_nanos()) << 32)
        });
    eprintln!("{test}: seed {seed} (LARDER_TEST_SEED={seed} replays it)");
    seed
}

fn event(kind: &str, n: u64) -> EventData {
    EventData::new(kind, &serde_json::json!({ "n": n })).unwrap()
}

async fn append_one(
    es: &EventStore,
    uow: &mut larder::Uow,
    stream: &str,
    expected: ExpectedVersion,
    e: EventData,
) -> AppendResult {
    es.append(uow, stream, expected, vec![e]).await.unwrap()
}

/// One page of the log in its own short read-only unit of work.
async fn read_page(
    store: &Store,
    es: &EventStore,
    after: Checkpoint,
    limit: u32,
) -> larder::events::ReadAll {
    let mut uow = store.read().await.unwrap();
    let page = es
        .read_all(&mut uow, after, limit, &EventFilter::all())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    page
}

/// The SQLite file for the concurrent tests: a pool big enough for every task, and
/// synchronous=NORMAL only to keep them fast (log order does not depend on it).
async fn sqlite_db(test: &str, pool: u32) -> TestDb {
    backends::sqlite_with(
        test,
        |s| {
            s.max_connections = Some(pool);
            s.sqlite.synchronous = Synchronous::Normal;
        },
        StoreConfig::default(),
    )
    .await
}

async fn postgres_db(test: &str, pool: u32) -> Option<TestDb> {
    backends::postgres_with(
        test,
        |s| s.max_connections = Some(pool),
        StoreConfig::default(),
    )
    .await
}

// ---------------------------------------------------------------------------------------
// A1: held-open writer

/// How the held-open writer T1 ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T1Ends {
    Commit,
    Rollback,
}

/// On PostgreSQL T1 appends and stays open while T2 appends (a later position) and
/// commits. On SQLite T2 cannot even begin while T1 holds the write lock (`BEGIN
/// IMMEDIATE`), so T2 is started concurrently and must still be waiting when the reader
/// reads; there the scenario checks that the reader does not see T1's uncommitted event nor
/// move past it, and that after T1 ends both (or only T2's) arrive.
async fn held_open_writer(db: TestDb, ends: T1Ends) {
    let test = format!("A1 {} T1 {ends:?}", db.backend);
    let store = db.store.clone();
    let es = EventStore::open(&store).await.unwrap();
    // Something committed before, so START is not the only possible checkpoint.
    let mut uow = store.begin().await.unwrap();
    let r0 = append_one(
        &es,
        &mut uow,
        "a1-before",
        ExpectedVersion::NoStream,
        event("E0", 0),
    )
    .await;
    uow.commit().await.unwrap();
    // On PostgreSQL any transaction on the server that began before this commit holds the
    // horizon back for a moment: wait until the earlier event is readable.
    let e0 = {
        let since = Instant::now();
        loop {
            let page = read_page(&store, &es, Checkpoint::START, 100).await;
            if let Some(e) = page.events.first() {
                assert_eq!(page.events.len(), 1);
                break e.event_id;
            }
            assert!(
                since.elapsed() < Duration::from_secs(5),
                "{test}: the earlier event is not readable after 5 s"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };

    let serialized_writers = db.backend == "sqlite";
    let e1 = event("T1", 1);
    let e1_id = e1.id;
    let mut t1 = store.begin().await.unwrap();
    let r1 = append_one(&es, &mut t1, "a1-first", ExpectedVersion::NoStream, e1).await;

    let e2 = event("T2", 2);
    let e2_id = e2.id;
    let t2 = {
        let (store, es) = (store.clone(), es.clone());
        tokio::spawn(async move {
            let mut t2 = store.begin().await.unwrap();
            let r2 = append_one(&es, &mut t2, "a1-second", ExpectedVersion::NoStream, e2).await;
            t2.commit().await.unwrap();
            r2
        })
    };
    let mut t2 = Some(t2);
    let r2 = if serialized_writers {
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            !t2.as_ref().unwrap().is_finished(),
            "{test}: T2 committed while T1 held the write lock"
        );
        None
    } else {
        let r2 = t2.take().unwrap().await.unwrap();
        assert!(
            r2.checkpoint.position() > r1.checkpoint.position(),
            "{test}: T2 should have taken a later position than T1 and committed first"
        );
        // T2 is committed and visible to ordinary reads: what the reader withholds below
        // is the commit horizon's doing, not visibility.
        let mut uow = store.read().await.unwrap();
        let s = es
            .read_stream(&mut uow, "a1-second", 1, 10, ReadDirection::Forward)
            .await
            .unwrap();
        assert_eq!(s.len(), 1, "{test}: T2's event is committed");
        Some(r2)
    };

    // The reader, from the start, while T1 is open.
    let page = read_page(&store, &es, Checkpoint::START, 100).await;
    let seen: Vec<Uuid> = page.events.iter().map(|e| e.event_id).collect();
    assert_eq!(
        seen,
        vec![e0],
        "{test}: while T1 is open the reader sees only the earlier event (not T1's, and on \
         PostgreSQL not T2's either: it is above the commit horizon)"
    );
    assert!(
        page.next < r1.checkpoint,
        "{test}: the reader's checkpoint {} passed T1's event {} while T1 was open",
        page.next,
        r1.checkpoint
    );
    assert!(page.next >= r0.checkpoint);
    eprintln!(
        "{test}: T1 at {}, T2 at {}, reader stopped at {}",
        r1.checkpoint,
        r2.map_or("(waiting for the write lock)".to_owned(), |r| r
            .checkpoint
            .to_string()),
        page.next
    );

    let ended = Instant::now();
    match ends {
        T1Ends::Commit => {
            t1.commit().await.unwrap();
        }
        T1Ends::Rollback => t1.rollback().await.unwrap(),
    }
    let r2 = match r2 {
        Some(r) => r,
        None => t2.take().unwrap().await.unwrap(),
    };

    // Resume from the checkpoint. On PostgreSQL an unrelated transaction anywhere on the
    // server (other tests, other databases) also holds the horizon back for a moment, so
    // poll briefly; no timeout is involved in larder itself.
    let mut cp = page.next;
    let mut delivered = Vec::new();
    let mut polls = 0;
    while !delivered.iter().any(|(id, _)| *id == e2_id) {
        assert!(
            ended.elapsed() < Duration::from_secs(5),
            "{test}: T2's event did not arrive within 5 s of T1 ending"
        );
        polls += 1;
        let page = read_page(&store, &es, cp, 100).await;
        assert!(page.next >= cp, "{test}: checkpoint went backwards");
        for e in page.events {
            assert!(
                e.checkpoint > cp,
                "{test}: event at or before the checkpoint"
            );
            delivered.push((e.event_id, e.checkpoint));
            cp = e.checkpoint;
        }
        cp = cp.max(page.next);
        if polls > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    let waited = ended.elapsed();
    let tail = read_page(&store, &es, cp, 100).await;
    assert!(tail.events.is_empty(), "{test}: unexpected events after T2");
    let ids: Vec<Uuid> = delivered.iter().map(|(id, _)| *id).collect();
    let expected = match ends {
        T1Ends::Commit => vec![e1_id, e2_id],
        T1Ends::Rollback => vec![e2_id],
    };
    assert_eq!(
        ids, expected,
        "{test}: after T1 ended the resumed reader must receive exactly these, in log order"
    );
    assert!(delivered.windows(2).all(|w| w[0].1 < w[1].1));
    assert_eq!(delivered.last().unwrap().1, r2.checkpoint);
    if ends == T1Ends::Commit {
        assert_eq!(delivered[0].1, r1.checkpoint);
    }
    eprintln!("{test}: resumed reader got {ids:?} after {waited:?} ({polls} reads)");
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a1_postgres_reader_waits_for_held_open_writer_then_gets_both_in_order() {
    let Some(db) = backends::postgres("event_log::a1_pg_commit").await else {
        return;
    };
    held_open_writer(db, T1Ends::Commit).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a1_postgres_rolled_back_writer_releases_reader_at_once() {
    let Some(db) = backends::postgres("event_log::a1_pg_rollback").await else {
        return;
    };
    held_open_writer(db, T1Ends::Rollback).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a1_sqlite_reader_waits_for_held_open_writer_then_gets_both_in_order() {
    held_open_writer(
        sqlite_db("event_log::a1_sqlite_commit", 4).await,
        T1Ends::Commit,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a1_sqlite_rolled_back_writer_releases_reader_at_once() {
    held_open_writer(
        sqlite_db("event_log::a1_sqlite_rollback", 4).await,
        T1Ends::Rollback,
    )
    .await;
}

/// Known larder problem on PostgreSQL (found by A2, which prints how often it happens):
/// the global log is ordered by the appending transaction's id, which PostgreSQL assigns
/// at the transaction's *first write*, not at commit. A transaction that wrote something
/// early (Tb) and then waits for another transaction's (Ta's) stream row appends the
/// stream's *next* version with an *older* transaction id, so `read_all` (and every
/// subscription and projection) delivers version 2 before version 1 of the stream. No
/// event is lost or skipped, but a consumer that applies a stream in order, or keeps the
/// per-stream idempotency key `projection.rs` suggests ("keyed by … the stream version":
/// skip versions ≤ the last applied), drops version 1. Fixed: `larder_streams.last_tx`
/// makes Tb's append fail as retryable; its retry (a younger transaction) appends version
/// 2 after version 1. Deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a1_postgres_global_log_keeps_each_stream_in_version_order() {
    let Some(db) = backends::postgres("event_log::a1_pg_stream_order").await else {
        return;
    };
    let test = "A1 stream order postgresql";
    let store = db.store.clone();
    let es = EventStore::open(&store).await.unwrap();
    // Tb writes first (its transaction id is the older one) ...
    let mut tb = store.begin().await.unwrap();
    append_one(
        &es,
        &mut tb,
        "order-other",
        ExpectedVersion::Any,
        event("B0", 0),
    )
    .await;
    // ... Ta appends version 1 of the shared stream and holds its row ...
    let mut ta = store.begin().await.unwrap();
    let ra = append_one(
        &es,
        &mut ta,
        "order-shared",
        ExpectedVersion::Any,
        event("A1", 1),
    )
    .await;
    // ... Tb's append to the same stream waits for Ta.
    let waiting = {
        let es = es.clone();
        let store = store.clone();
        tokio::spawn(async move {
            let e = es
                .append(
                    &mut tb,
                    "order-shared",
                    ExpectedVersion::Any,
                    vec![event("B2", 2)],
                )
                .await
                .unwrap_err();
            assert!(
                matches!(e, Error::Transient { .. }),
                "the older appender must retry, got {e:?}"
            );
            drop(tb);
            // The retry runs in a new (younger) transaction.
            let mut retry = store.begin().await.unwrap();
            append_one(
                &es,
                &mut retry,
                "order-other",
                ExpectedVersion::Any,
                event("B0", 0),
            )
            .await;
            let r = append_one(
                &es,
                &mut retry,
                "order-shared",
                ExpectedVersion::Any,
                event("B2", 2),
            )
            .await;
            retry.commit().await.unwrap();
            r
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        !waiting.is_finished(),
        "{test}: Tb did not wait for Ta's stream row"
    );
    ta.commit().await.unwrap();
    let rb = waiting.await.unwrap();
    assert_eq!((ra.stream_version, rb.stream_version), (1, 2));

    let since = Instant::now();
    let mut cp = Checkpoint::START;
    let mut shared = Vec::new();
    while shared.len() < 2 {
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "{test}: events not readable"
        );
        let page = read_page(&store, &es, cp, 100).await;
        shared.extend(
            page.events
                .iter()
                .filter(|e| e.stream_id == "order-shared")
                .map(|e| (e.stream_version, e.checkpoint)),
        );
        cp = page.next;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    eprintln!("{test}: order-shared in log order (version, checkpoint): {shared:?}");
    assert_eq!(
        shared.iter().map(|(v, _)| *v).collect::<Vec<_>>(),
        vec![1, 2],
        "{test}: the global log delivers the stream's versions out of order"
    );
    db.finish().await;
}

// ---------------------------------------------------------------------------------------
// A2/A3: concurrent stress with a recorded history and a checker

#[derive(Debug, Clone, Copy)]
struct Load {
    writers: usize,
    uows: usize,
    streams: u64,
    /// Percentage of units of work rolled back (explicitly or by drop).
    rollback_pct: u64,
    /// Percentage of units of work that sleep inside the transaction after appending.
    sleep_pct: u64,
    /// Longest such sleep, in microseconds.
    max_sleep_us: u64,
    /// Percentage of appends that use `Exact(version read in the same unit of work)`
    /// (retried on conflict) instead of `Any`.
    exact_pct: u64,
}

const CI_LOAD: Load = Load {
    writers: 8,
    uows: 500,
    streams: 12,
    rollback_pct: 5,
    sleep_pct: 30,
    max_sleep_us: 2_000,
    exact_pct: 30,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReaderKind {
    /// `EventStore::read_all` from its `next` checkpoint.
    Larder,
    /// Known-bad: `SELECT … WHERE position > $last ORDER BY position` on the raw pool.
    NaivePosition,
}

/// What one writer did: ids only once their commit returned `Ok`.
#[derive(Debug, Default)]
struct WriterLog {
    committed: Vec<(Uuid, String)>,
    rolled_back: Vec<Uuid>,
    conflicts_retried: u64,
    max_checkpoint: Checkpoint,
    unexpected: Vec<String>,
    /// Retryable errors (busy writer lock, older transaction appending after a younger
    /// one) whose unit of work was run again.
    transient_retried: u64,
}

/// What one reader received, in order.
#[derive(Debug)]
struct ReaderLog {
    name: String,
    kind: ReaderKind,
    delivered: Vec<Uuid>,
    reads: u64,
    stuck: bool,
}

async fn writer(store: Store, es: EventStore, load: Load, mut rng: Rng, w: usize) -> WriterLog {
    let mut log = WriterLog::default();
    for u in 0..load.uows {
        // Streams in sorted order inside a unit of work, so two writers never wait for each
        // other's stream rows in opposite orders (a deadlock, not what this test is about).
        'attempt: loop {
            let n = 1 + rng.below(5);
            let mut batch: BTreeMap<String, Vec<EventData>> = BTreeMap::new();
            for i in 0..n {
                let stream = format!("s{}-{}", w % 2, rng.below(load.streams));
                batch
                    .entry(stream)
                    .or_default()
                    .push(event("Stressed", (w * 100_000 + u * 10) as u64 + i));
            }
            let rollback = rng.chance(load.rollback_pct);
            let sleep = rng
                .chance(load.sleep_pct)
                .then(|| Duration::from_micros(1 + rng.below(load.max_sleep_us)));
            let exact: Vec<bool> = batch.keys().map(|_| rng.chance(load.exact_pct)).collect();
            let mut uow = match store.begin().await {
                Ok(u) => u,
                // A busy SQLite writer lock after the busy timeout: retryable, as
                // `Store::transaction` would.
                Err(Error::Transient { .. }) => {
                    log.transient_retried += 1;
                    continue 'attempt;
                }
                Err(e) => {
                    log.unexpected.push(format!("begin: {e}"));
                    break 'attempt;
                }
            };
            let mut ids = Vec::new();
            for ((stream, events), exact) in batch.into_iter().zip(exact) {
                let expected = if exact {
                    match es.stream_info(&mut uow, &stream).await {
                        Ok(info) => ExpectedVersion::Exact(info.map_or(0, |i| i.version)),
                        Err(e) => {
                            log.unexpected.push(format!("stream_info: {e}"));
                            break 'attempt;
                        }
                    }
                } else {
                    ExpectedVersion::Any
                };
                let these: Vec<Uuid> = events.iter().map(|e| e.id).collect();
                match es.append(&mut uow, &stream, expected, events).await {
                    Ok(r) => {
                        assert!(!r.already_appended);
                        ids.extend(these.into_iter().map(|id| (id, stream.clone())));
                    }
                    // A conflict (Exact), or on PostgreSQL a younger transaction appended
                    // to the stream last (retryable, like `Store::transaction` does).
                    Err(e @ (Error::Conflict { .. } | Error::Transient { .. })) => {
                        if matches!(e, Error::Transient { .. }) {
                            log.transient_retried += 1;
                        } else {
                            log.conflicts_retried += 1;
                        }
                        uow.rollback().await.unwrap();
                        log.rolled_back.extend(ids.iter().map(|(id, _)| *id));
                        log.rolled_back.extend(these);
                        continue 'attempt;
                    }
                    Err(e) => {
                        log.unexpected.push(format!("append: {e}"));
                        log.rolled_back.extend(ids.iter().map(|(id, _)| *id));
                        log.rolled_back.extend(these);
                        break 'attempt;
                    }
                }
            }
            if let Some(d) = sleep {
                // Hold the transaction (and its positions) open a little.
                tokio::time::sleep(d).await;
            }
            if rollback {
                if u % 2 == 0 {
                    uow.rollback().await.unwrap();
                } else {
                    drop(uow);
                }
                log.rolled_back.extend(ids.into_iter().map(|(id, _)| id));
            } else {
                match uow.commit().await {
                    Ok(c) => {
                        let cp = c
                            .position
                            .expect("a unit of work that appended has a position");
                        log.max_checkpoint = log.max_checkpoint.max(cp);
                        log.committed.extend(ids);
                    }
                    Err(e) => log.unexpected.push(format!("commit: {e}")),
                }
            }
            break 'attempt;
        }
    }
    log
}

/// Polls the log from the start until the writers are done and it has passed every
/// committed event (bounded: a reader stuck behind the horizon for 30 s is reported).
async fn reader(
    store: Store,
    es: EventStore,
    kind: ReaderKind,
    name: String,
    done: Arc<OnceLock<Checkpoint>>,
    page_size: u32,
) -> ReaderLog {
    let mut log = ReaderLog {
        name,
        kind,
        delivered: Vec::new(),
        reads: 0,
        stuck: false,
    };
    let mut cp = Checkpoint::START;
    let mut last_position: i64 = 0;
    let mut finished_at: Option<Instant> = None;
    let pool = (kind == ReaderKind::NaivePosition).then(|| {
        store
            .backend()
            .as_any()
            .downcast_ref::<larder::postgres::PgBackend>()
            .expect("the naive reader runs on PostgreSQL")
            .pool()
            .clone()
    });
    loop {
        let target = done.get().copied();
        if target.is_some()
            && finished_at.get_or_insert_with(Instant::now).elapsed() > Duration::from_secs(30)
        {
            log.stuck = true;
            return log;
        }
        log.reads += 1;
        let end = match kind {
            ReaderKind::Larder => {
                let page = read_page(&store, &es, cp, page_size).await;
                for e in &page.events {
                    assert!(
                        e.checkpoint > cp,
                        "{}: event not after checkpoint",
                        log.name
                    );
                    cp = e.checkpoint;
                    log.delivered.push(e.event_id);
                }
                assert!(page.next >= cp, "{}: next before last event", log.name);
                cp = page.next;
                page.end_of_log && target.is_some_and(|t| cp >= t)
            }
            ReaderKind::NaivePosition => {
                let rows = sqlx::query(
                    "SELECT event_id, position FROM larder_events WHERE position > $1 \
                     ORDER BY position LIMIT $2",
                )
                .bind(last_position)
                .bind(i64::from(page_size))
                .fetch_all(pool.as_ref().unwrap())
                .await
                .unwrap();
                for r in &rows {
                    log.delivered.push(r.get::<Uuid, _>(0));
                    last_position = r.get::<i64, _>(1);
                }
                rows.is_empty() && target.is_some()
            }
        };
        if end {
            return log;
        }
        tokio::task::yield_now().await;
    }
}

/// What the checker found for one reader.
#[derive(Debug, Default, PartialEq, Eq)]
struct Verdict {
    delivered: usize,
    missing: usize,
    duplicates: usize,
    /// Delivered but never committed (rolled back, or a conflicting attempt).
    phantom: usize,
    /// Whether the delivered sequence differs from the log order (restricted to what was
    /// delivered).
    out_of_order: bool,
}

impl Verdict {
    fn clean(&self) -> bool {
        self.missing == 0 && self.duplicates == 0 && self.phantom == 0 && !self.out_of_order
    }
}

fn verdict(committed: &HashSet<Uuid>, log_order: &[Uuid], delivered: &[Uuid]) -> Verdict {
    let mut seen = HashSet::with_capacity(delivered.len());
    let mut v = Verdict {
        delivered: delivered.len(),
        ..Verdict::default()
    };
    let mut unique = Vec::with_capacity(delivered.len());
    for id in delivered {
        if !seen.insert(*id) {
            v.duplicates += 1;
        } else if !committed.contains(id) {
            v.phantom += 1;
        } else {
            unique.push(*id);
        }
    }
    v.missing = committed.iter().filter(|id| !seen.contains(id)).count();
    let expected: Vec<Uuid> = log_order
        .iter()
        .filter(|id| seen.contains(id))
        .copied()
        .collect();
    v.out_of_order = expected != unique;
    v
}

/// Runs writers and readers; checks the history. Returns the verdict per reader (the
/// caller asserts).
async fn stress(
    db: &TestDb,
    test: &str,
    load: Load,
    readers: &[ReaderKind],
) -> Vec<(String, Verdict)> {
    let started = Instant::now();
    let base = seed(test);
    let store = db.store.clone();
    let es = EventStore::open(&store).await.unwrap();
    let done = Arc::new(OnceLock::new());
    let mut reader_tasks = Vec::new();
    for (i, kind) in readers.iter().enumerate() {
        reader_tasks.push(tokio::spawn(reader(
            store.clone(),
            es.clone(),
            *kind,
            format!("{kind:?} reader {i}"),
            done.clone(),
            // Different page sizes, so pages end at different places.
            [50, 100, 7, 500][i % 4],
        )));
    }
    let mut writer_tasks = Vec::new();
    for w in 0..load.writers {
        writer_tasks.push(tokio::spawn(writer(
            store.clone(),
            es.clone(),
            load,
            Rng::seeded(base.wrapping_add(w as u64 * 7919)),
            w,
        )));
    }
    let mut writers = Vec::new();
    for t in writer_tasks {
        writers.push(t.await.unwrap());
    }
    let target = writers
        .iter()
        .map(|w| w.max_checkpoint)
        .max()
        .unwrap_or_default();
    done.set(target).unwrap();
    let write_time = started.elapsed();
    let mut logs = Vec::new();
    for t in reader_tasks {
        logs.push(t.await.unwrap());
    }
    // One more reader from the start, at the end: the reference log order.
    let final_reader = reader(
        store.clone(),
        es.clone(),
        ReaderKind::Larder,
        "final reader".to_owned(),
        done.clone(),
        1_000,
    )
    .await;

    let unexpected: Vec<&String> = writers.iter().flat_map(|w| &w.unexpected).collect();
    assert!(
        unexpected.is_empty(),
        "{test}: {} unexpected writer errors, e.g. {:?}",
        unexpected.len(),
        unexpected.first()
    );
    let committed: HashSet<Uuid> = writers
        .iter()
        .flat_map(|w| w.committed.iter().map(|(id, _)| *id))
        .collect();
    let n_committed: usize = writers.iter().map(|w| w.committed.len()).sum();
    assert_eq!(committed.len(), n_committed, "{test}: writers reused an id");
    let rolled_back: usize = writers.iter().map(|w| w.rolled_back.len()).sum();
    let retried: u64 = writers.iter().map(|w| w.conflicts_retried).sum();
    assert!(
        !final_reader.stuck,
        "{test}: the final reader never reached the end"
    );

    // The final full read is the log: check it against the history first.
    let log_order = final_reader.delivered.clone();
    let final_verdict = verdict(&committed, &log_order, &log_order);
    assert!(
        final_verdict.clean(),
        "{test}: the final full read does not match the committed history: {final_verdict:?}"
    );
    // Per stream: versions 1..n without gaps, n == the stream's version == events committed.
    let mut uow = store.read().await.unwrap();
    let mut per_stream: HashMap<String, u64> = HashMap::new();
    for w in &writers {
        for (_, s) in &w.committed {
            *per_stream.entry(s.clone()).or_default() += 1;
        }
    }
    let mut version_order_inversions = 0;
    let mut by_stream: HashMap<String, Vec<u64>> = HashMap::new();
    let mut cp = Checkpoint::START;
    loop {
        let page = es
            .read_all(&mut uow, cp, 1_000, &EventFilter::all())
            .await
            .unwrap();
        for e in &page.events {
            by_stream
                .entry(e.stream_id.clone())
                .or_default()
                .push(e.stream_version);
        }
        cp = page.next;
        if page.end_of_log {
            break;
        }
    }
    for (stream, n) in &per_stream {
        let info = es.stream_info(&mut uow, stream).await.unwrap().unwrap();
        assert_eq!(info.version, *n, "{test}: stream {stream} version");
        let in_log = by_stream.get(stream).cloned().unwrap_or_default();
        version_order_inversions += in_log.windows(2).filter(|w| w[0] > w[1]).count();
        let mut sorted = in_log.clone();
        sorted.sort_unstable();
        assert_eq!(
            sorted,
            (1..=*n).collect::<Vec<_>>(),
            "{test}: stream {stream}: versions are not 1..{n}"
        );
        let stored = es
            .read_stream(&mut uow, stream, 1, 10_000, ReadDirection::Forward)
            .await
            .unwrap();
        assert_eq!(
            stored.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
            (1..=*n).collect::<Vec<_>>(),
            "{test}: read_stream of {stream}"
        );
    }
    assert_eq!(by_stream.len(), per_stream.len());
    uow.commit().await.unwrap();

    eprintln!(
        "{test}: {} writers × {} units of work: {} events committed, {rolled_back} rolled back \
         or discarded, {retried} conflicts retried; writes took {write_time:?}, total {:?}",
        load.writers,
        load.uows,
        committed.len(),
        started.elapsed()
    );
    assert_eq!(
        version_order_inversions, 0,
        "{test}: the global log holds a stream's version n+k before version n"
    );
    let mut out = Vec::new();
    for log in logs.into_iter().chain(std::iter::once(final_reader)) {
        let v = verdict(&committed, &log_order, &log.delivered);
        eprintln!(
            "{test}: {} ({:?}): {} reads, {} delivered, {} missing, {} duplicates, {} phantom, \
             out of order: {}{}",
            log.name,
            log.kind,
            log.reads,
            v.delivered,
            v.missing,
            v.duplicates,
            v.phantom,
            v.out_of_order,
            if log.stuck { ", STUCK" } else { "" }
        );
        assert!(
            !log.stuck,
            "{test}: {} never reached the end of the log",
            log.name
        );
        out.push((log.name, v));
    }
    out
}

async fn stress_must_be_clean(db: TestDb, test: &str, load: Load) {
    let verdicts = stress(&db, test, load, &[ReaderKind::Larder; 4]).await;
    for (name, v) in verdicts {
        assert!(v.clean(), "{test}: {name}: {v:?}");
    }
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a2_memory_every_reader_gets_every_committed_event_once_in_log_order() {
    // The memory backend serializes units of work (readers wait for writers), so sleeps
    // inside transactions are kept short.
    let db = backends::memory("event_log::a2_memory").await.unwrap();
    let load = Load {
        max_sleep_us: 500,
        ..CI_LOAD
    };
    stress_must_be_clean(db, "A2 memory", load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a2_sqlite_every_reader_gets_every_committed_event_once_in_log_order() {
    // Same counts; the writers run one at a time anyway (one write lock), so the sleeps
    // are shorter to keep the run short.
    let db = sqlite_db("event_log::a2_sqlite", 16).await;
    let load = Load {
        max_sleep_us: 1_000,
        ..CI_LOAD
    };
    stress_must_be_clean(db, "A2 sqlite", load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a2_postgres_every_reader_gets_every_committed_event_once_in_log_order() {
    let Some(db) = postgres_db("event_log::a2_postgres", 14).await else {
        return;
    };
    stress_must_be_clean(db, "A2 postgresql", CI_LOAD).await;
}

/// A3 canary: the A2 harness and checker, with every writer sleeping up to 5 ms after
/// appending (positions taken, commit late) and two naive `position > last` readers next
/// to two larder readers. The checker must find missing events for the naive readers,
/// and none for larder's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a3_canary_naive_position_reader_misses_events_on_postgres() {
    let Some(db) = postgres_db("event_log::a3_canary", 14).await else {
        return;
    };
    // 8 writers × 250 units of work (A2 has 500): with every transaction sleeping, the
    // naive readers miss thousands of events, so half the load keeps the run short.
    let load = Load {
        uows: 250,
        sleep_pct: 100,
        max_sleep_us: 5_000,
        ..CI_LOAD
    };
    let verdicts = stress(
        &db,
        "A3 canary postgresql",
        load,
        &[
            ReaderKind::NaivePosition,
            ReaderKind::Larder,
            ReaderKind::NaivePosition,
            ReaderKind::Larder,
        ],
    )
    .await;
    let mut naive_missing = 0;
    for (name, v) in &verdicts {
        if name.starts_with("NaivePosition") {
            naive_missing += v.missing;
        } else {
            assert!(
                v.clean(),
                "A3: {name} (larder) under the canary load: {v:?}"
            );
        }
    }
    eprintln!("A3 canary postgresql: naive readers missed {naive_missing} events in total");
    assert!(
        naive_missing > 0,
        "A3: the naive position reader missed nothing; the harness cannot see skips"
    );
    db.finish().await;
}

// ---------------------------------------------------------------------------------------
// B1: append race

const RACERS: usize = 64;

/// `rounds` rounds: 64 tasks append one event each to the same stream with
/// `Exact(round)`, all released together by a barrier.
async fn append_race(db: TestDb, rounds: u64) {
    let test = format!("B1 {}", db.backend);
    let started = Instant::now();
    let store = db.store.clone();
    let es = EventStore::open(&store).await.unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(RACERS));
    let failed = Arc::new(AtomicBool::new(false));
    #[derive(Debug)]
    enum Outcome {
        Won(Uuid),
        Conflict { expected: u64, actual: Option<u64> },
        Other(String),
    }
    let mut tasks = Vec::new();
    for t in 0..RACERS {
        let (store, es, barrier, failed) =
            (store.clone(), es.clone(), barrier.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut outcomes = Vec::new();
            for round in 0..rounds {
                barrier.wait().await;
                if failed.load(Ordering::Relaxed) {
                    break;
                }
                let e = event("Raced", t as u64);
                let id = e.id;
                let outcome = async {
                    let mut uow = store.begin().await?;
                    match es
                        .append(&mut uow, "race-1", ExpectedVersion::Exact(round), vec![e])
                        .await
                    {
                        Ok(_) => {
                            uow.commit().await?;
                            Ok::<_, Error>(Outcome::Won(id))
                        }
                        Err(Error::Conflict {
                            entity,
                            expected,
                            actual,
                            ..
                        }) => {
                            assert_eq!(entity, "stream");
                            uow.rollback().await?;
                            Ok(Outcome::Conflict { expected, actual })
                        }
                        Err(e) => Err(e),
                    }
                }
                .await
                .unwrap_or_else(|e: Error| Outcome::Other(format!("{e} ({})", e.kind())));
                if matches!(outcome, Outcome::Other(_)) {
                    failed.store(true, Ordering::Relaxed);
                }
                outcomes.push((round, outcome));
            }
            outcomes
        }));
    }
    let mut by_round: BTreeMap<u64, Vec<Outcome>> = BTreeMap::new();
    for t in tasks {
        for (round, o) in t.await.unwrap() {
            by_round.entry(round).or_default().push(o);
        }
    }
    let others: Vec<&String> = by_round
        .values()
        .flatten()
        .filter_map(|o| match o {
            Outcome::Other(m) => Some(m),
            _ => None,
        })
        .collect();
    assert!(
        others.is_empty(),
        "{test}: losers must get Conflict and nothing else; {} other errors, e.g. {:?}",
        others.len(),
        others.first()
    );
    let mut winners = Vec::new();
    for (round, outcomes) in &by_round {
        assert_eq!(outcomes.len(), RACERS, "{test}: round {round}");
        let won: Vec<Uuid> = outcomes
            .iter()
            .filter_map(|o| match o {
                Outcome::Won(id) => Some(*id),
                _ => None,
            })
            .collect();
        assert_eq!(won.len(), 1, "{test}: round {round}: {} winners", won.len());
        winners.push(won[0]);
        for o in outcomes {
            if let Outcome::Conflict { expected, actual } = o {
                assert_eq!(
                    (*expected, *actual),
                    (*round, Some(round + 1)),
                    "{test}: round {round}: the conflict names the wrong versions"
                );
            }
        }
    }
    assert_eq!(winners.len() as u64, rounds);
    let mut uow = store.read().await.unwrap();
    let info = es.stream_info(&mut uow, "race-1").await.unwrap().unwrap();
    assert_eq!(info.version, rounds, "{test}: final stream version");
    let stored = es
        .read_stream(&mut uow, "race-1", 1, 10_000, ReadDirection::Forward)
        .await
        .unwrap();
    assert_eq!(
        stored.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (1..=rounds).collect::<Vec<_>>(),
        "{test}: versions are not contiguous"
    );
    assert_eq!(
        stored.iter().map(|e| e.event_id).collect::<Vec<_>>(),
        winners,
        "{test}: the stream does not hold exactly the winners' events, in round order"
    );
    uow.commit().await.unwrap();
    eprintln!(
        "{test}: {rounds} rounds × {RACERS} racers: one winner and {} conflicts each, in {:?}",
        RACERS - 1,
        started.elapsed()
    );
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b1_memory_append_race_has_exactly_one_winner_per_round() {
    // 1,000 rounds (the design's full count): the memory backend is fast.
    append_race(
        backends::memory("event_log::b1_memory").await.unwrap(),
        1_000,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b1_sqlite_append_race_has_exactly_one_winner_per_round() {
    // CI: 200 rounds (design: 1,000). A pool of 8 for 64 racers: most wait for a
    // connection, the rest in BEGIN IMMEDIATE's busy handler; neither may surface as an
    // error.
    append_race(sqlite_db("event_log::b1_sqlite", 8).await, 200).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn b1_postgres_append_race_has_exactly_one_winner_per_round() {
    // CI: 200 rounds (design: 1,000).
    let Some(db) = postgres_db("event_log::b1_postgres", 16).await else {
        return;
    };
    append_race(db, 200).await;
}
