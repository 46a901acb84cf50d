//! D3 under load: producers enqueue 1,200 messages on 30 keys (every 97th is poison)
//! while a relay runs; a sampler checks every 10 ms that the outbox accounts for every
//! committed message (`delivered + dead + parked + pending + skipped` between the commits
//! finished before the sample and those started after it) and that `delivered` never
//! goes back. At the end: each poison message is dead-lettered with its last error after
//! `max_attempts`, the rest of its key is parked, every other key is delivered in order;
//! replaying the dead letters delivers everything, in key order, exactly once.
//!
//! Canary: the same sampler, on a run where dead letters are deleted behind the outbox's
//! back, must report the loss.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use larder::outbox::{MemorySink, Message, Outbox, SinkError};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::outbox::{counts, relay};

const KEYS: u64 = 30;
const TOTAL: u64 = 1_200;
const PRODUCERS: u64 = 3;

#[derive(Default)]
struct Progress {
    started: AtomicU64,
    committed: AtomicU64,
}

/// Samples the accounting until `stop`; returns the violations seen.
async fn sample(ob: Outbox, p: Arc<Progress>, stop: Arc<AtomicBool>) -> Vec<String> {
    let mut bad = Vec::new();
    let mut last_delivered = 0;
    let mut samples = 0;
    while !stop.load(Ordering::SeqCst) {
        let lo = p.committed.load(Ordering::SeqCst);
        let c = counts(&ob).await;
        let hi = p.started.load(Ordering::SeqCst);
        samples += 1;
        if c.total() < lo || c.total() > hi {
            bad.push(format!("total {} outside [{lo}, {hi}]: {c:?}", c.total()));
        }
        if c.delivered < last_delivered {
            bad.push(format!("delivered went back from {last_delivered}: {c:?}"));
        }
        last_delivered = c.delivered;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!("sampler: {samples} samples, {} violations", bad.len());
    bad
}

async fn produce(ob: Outbox, p: Arc<Progress>, which: u64) {
    let mut i = which;
    while i < TOTAL {
        // Units of work of up to 4 messages of this producer.
        let mut msgs = Vec::new();
        while msgs.len() < 4 && i < TOTAL {
            let k = i % KEYS;
            let body = if i % 97 == 13 {
                format!("POISON:{k}:{i}")
            } else {
                format!("ok:{k}:{i}")
            };
            msgs.push(Message::new("d3", body).with_key(format!("k{k}")));
            i += PRODUCERS;
        }
        let n = msgs.len() as u64;
        p.started.fetch_add(n, Ordering::SeqCst);
        let mut uow = ob.store().begin().await.unwrap();
        ob.enqueue_all(&mut uow, msgs).await.unwrap();
        uow.commit().await.unwrap();
        p.committed.fetch_add(n, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Runs producers, a relay and the sampler; with `canary`, deletes dead letters behind
/// the outbox's back midway. Returns the sampler's violations, the sink and whether the
/// poison flag is still on.
async fn run(db: &TestDb, canary: bool) -> (Vec<String>, MemorySink, Arc<AtomicBool>) {
    let ob = Outbox::open(&db.store).await.unwrap();
    let poison = Arc::new(AtomicBool::new(true));
    let flag = poison.clone();
    let sink = MemorySink::failing_with(move |m| {
        (flag.load(Ordering::SeqCst) && m.payload.starts_with(b"POISON"))
            .then(|| SinkError::Failed("the consumer rejects it".into()))
    });
    let r = relay(&db.store, "d3")
        .max_attempts(3)
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    let progress = Arc::new(Progress::default());
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = tokio::spawn(sample(ob.clone(), progress.clone(), stop.clone()));
    let (halt, halted) = tokio::sync::oneshot::channel::<()>();
    let runner = {
        let r = r.clone();
        tokio::spawn(async move {
            r.run(async move {
                let _ = halted.await;
            })
            .await
        })
    };
    let producers: Vec<_> = (0..PRODUCERS)
        .map(|w| tokio::spawn(produce(ob.clone(), progress.clone(), w)))
        .collect();
    if canary {
        // Wait for a dead letter, then delete it as a careless cleanup job would.
        let t = Instant::now();
        while counts(&ob).await.dead == 0 {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "no dead letter to delete"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let mut uow = db.store.begin().await.unwrap();
        delete_dead(&mut uow, db.backend).await;
        uow.commit().await.unwrap();
    }
    for p in producers {
        p.await.unwrap();
    }
    // Settle: nothing ready is left.
    let t = Instant::now();
    loop {
        let c = counts(&ob).await;
        if c.pending == 0 && c.total() >= progress.committed.load(Ordering::SeqCst).min(c.total()) {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "the relay did not settle: {c:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let bad = sampler.await.unwrap();
    halt.send(()).unwrap();
    runner.await.unwrap().unwrap();
    (bad, sink, poison)
}

async fn delete_dead(uow: &mut larder::Uow, backend: &str) {
    use larder::postgres::PgUowExt;
    use larder::sqlite::SqliteUowExt;
    let sql = "DELETE FROM _larder_outbox WHERE state = 2";
    match backend {
        "sqlite" => {
            sqlx::query(sql)
                .execute(uow.sqlite().unwrap())
                .await
                .unwrap();
        }
        "postgresql" => {
            sqlx::query(sql)
                .execute(uow.postgres_bounded().await.unwrap())
                .await
                .unwrap();
        }
        other => panic!("no raw SQL on {other}"),
    }
}

fn parse(body: &str) -> (u64, u64) {
    let mut parts = body.split(':').skip(1);
    let k = parts.next().unwrap().parse().unwrap();
    let i = parts.next().unwrap().parse().unwrap();
    (k, i)
}

async fn d3(db: TestDb) {
    let (bad, sink, poison) = run(&db, false).await;
    assert!(bad.is_empty(), "accounting violations: {bad:?}");
    let ob = Outbox::open(&db.store).await.unwrap();
    let poisons: Vec<u64> = (0..TOTAL).filter(|i| i % 97 == 13).collect();
    let poisoned_keys: HashMap<u64, u64> = poisons.iter().fold(HashMap::new(), |mut m, i| {
        let first = m.entry(i % KEYS).or_insert(*i);
        *first = (*first).min(*i);
        m
    });
    let parked_expected: u64 = (0..TOTAL)
        .filter(|i| {
            poisoned_keys
                .get(&(i % KEYS))
                .is_some_and(|first| i > first)
        })
        .count() as u64;
    let c = counts(&ob).await;
    assert_eq!(
        c.dead,
        poisoned_keys.len() as u64,
        "one dead letter per poisoned key: {c:?}"
    );
    assert_eq!(c.parked, parked_expected, "{c:?}");
    assert_eq!(c.delivered + c.dead + c.parked, TOTAL, "{c:?}");
    let mut uow = db.store.read().await.unwrap();
    let dead = ob.dead_letters(&mut uow, None, 100).await.unwrap();
    uow.commit().await.unwrap();
    for d in &dead {
        assert_eq!(d.attempts, 3, "{d:?}");
        assert!(
            d.last_error.as_deref().unwrap().contains("rejects it"),
            "{d:?}"
        );
    }

    // Replay every dead letter with the consumer fixed: all delivered, in key order.
    poison.store(false, Ordering::SeqCst);
    let mut uow = db.store.begin().await.unwrap();
    for d in &dead {
        ob.replay(&mut uow, d.id).await.unwrap();
    }
    uow.commit().await.unwrap();
    let r = relay(&db.store, "d3")
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    larder_testkit::outbox::drain(&r, &ob, TOTAL).await;
    let c = counts(&ob).await;
    assert_eq!((c.delivered, c.dead, c.parked), (TOTAL, 0, 0), "{c:?}");
    let got = sink.messages();
    assert_eq!(got.len() as u64, TOTAL, "each exactly once");
    let mut last: HashMap<u64, u64> = HashMap::new();
    for m in &got {
        let (k, i) = parse(std::str::from_utf8(&m.payload).unwrap());
        if let Some(p) = last.insert(k, i) {
            assert!(i > p, "key {k}: {i} after {p}");
        }
    }
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_memory_poison_parks_its_key_under_load() {
    d3(backends::memory("d3").await.unwrap()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_sqlite_poison_parks_its_key_under_load() {
    let Some(db) = backends::sqlite("outbox_poison_stress::d3_sqlite").await else {
        return;
    };
    d3(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_postgres_poison_parks_its_key_under_load() {
    let Some(db) = backends::postgres("outbox_poison_stress::d3_postgres").await else {
        return;
    };
    d3(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d3_canary_deleted_dead_letters_are_caught_by_the_sampler() {
    let Some(db) = backends::sqlite("outbox_poison_stress::d3_canary").await else {
        return;
    };
    let (bad, _, _) = run(&db, true).await;
    eprintln!("canary: {} violations, e.g. {:?}", bad.len(), bad.first());
    assert!(!bad.is_empty(), "the sampler missed deleted dead letters");
    db.finish().await;
}
