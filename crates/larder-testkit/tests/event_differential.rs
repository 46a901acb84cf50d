//! F2 for the event store: random sequences of appends (every expectation, re-appended
//! batches, rollbacks), stream reads and global-log reads run on memory, SQLite and
//! PostgreSQL; every observable result must be identical (the memory backend is the
//! model). `LARDER_TEST_SEED` replays a run.

use larder::Error;
use larder::events::{
    Checkpoint, EventData, EventFilter, EventStore, ExpectedVersion, ReadDirection,
};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::rng::Rng;

#[derive(Debug, Clone)]
enum Op {
    Append {
        stream: String,
        expected: ExpectedVersion,
        batch: Vec<EventData>,
        commit: bool,
    },
    ReadStream {
        stream: String,
        from: u64,
        limit: u32,
        backward: bool,
    },
    ReadAll {
        page: u32,
        filter: EventFilter,
    },
}

fn gen_ops(rng: &mut Rng, n: usize) -> Vec<Op> {
    let mut ops = Vec::with_capacity(n);
    let mut batches: Vec<(String, Vec<EventData>)> = Vec::new();
    let cats = ["order", "user", "cart"];
    for i in 0..n {
        let op = match rng.below(10) {
            0..=5 => {
                let stream = format!("{}-{}", cats[rng.index(3)], rng.below(3));
                let expected = match rng.below(5) {
                    0 => ExpectedVersion::Any,
                    1 => ExpectedVersion::NoStream,
                    2 => ExpectedVersion::StreamExists,
                    _ => ExpectedVersion::Exact(rng.below(6)),
                };
                // Sometimes retry an earlier batch (same ids) on its own stream.
                let (stream, batch) = if !batches.is_empty() && rng.below(6) == 0 {
                    batches[rng.index(batches.len())].clone()
                } else {
                    let n = 1 + rng.below(3);
                    let ty = ["Placed", "Paid", "Shipped"][rng.index(3)];
                    let batch = (0..n)
                        .map(|k| {
                            EventData::new(
                                ty,
                                &serde_json::json!({ "op": i, "k": k, "s": "ü'\"%_" }),
                            )
                            .unwrap()
                        })
                        .collect::<Vec<_>>();
                    (stream, batch)
                };
                let commit = rng.below(8) != 0;
                if commit {
                    batches.push((stream.clone(), batch.clone()));
                }
                Op::Append {
                    stream,
                    expected,
                    batch,
                    commit,
                }
            }
            6 | 7 => Op::ReadStream {
                stream: format!("{}-{}", cats[rng.index(3)], rng.below(3)),
                from: match rng.below(3) {
                    0 => 1,
                    1 => rng.below(6),
                    _ => u64::MAX,
                },
                limit: 1 + rng.below::<u32>(5),
                backward: rng.below(2) == 0,
            },
            _ => Op::ReadAll {
                page: 1 + rng.below::<u32>(7),
                filter: match rng.below(4) {
                    0 => EventFilter::category(cats[rng.index(3)]),
                    1 => EventFilter::event_types(["Paid", "Shipped"]),
                    2 => EventFilter::category("order").and_event_types(["Placed"]),
                    _ => EventFilter::all(),
                },
            },
        };
        ops.push(op);
    }
    ops
}

/// What a caller can observe, without backend-specific positions.
async fn run(db: &TestDb, ops: &[Op]) -> Vec<String> {
    let es = EventStore::open(&db.store).await.unwrap();
    let mut out = Vec::with_capacity(ops.len());
    for op in ops {
        let line =
            match op {
                Op::Append {
                    stream,
                    expected,
                    batch,
                    commit,
                } => {
                    let mut uow = db.store.begin().await.unwrap();
                    let r = es.append(&mut uow, stream, *expected, batch.clone()).await;
                    let s = match &r {
                        Ok(a) => format!("ok v{} again={}", a.stream_version, a.already_appended),
                        Err(Error::Conflict {
                            id,
                            expected,
                            actual,
                            ..
                        }) => format!("conflict {id} {expected} {actual:?}"),
                        Err(e) => format!("error {}", e.kind()),
                    };
                    if *commit {
                        let c = uow.commit().await.unwrap();
                        assert_eq!(
                            c.position.is_some(),
                            matches!(r, Ok(ref a) if !a.already_appended)
                        );
                        larder_testkit::events::settle(&es).await;
                    } else {
                        uow.rollback().await.unwrap();
                    }
                    s
                }
                Op::ReadStream {
                    stream,
                    from,
                    limit,
                    backward,
                } => {
                    let mut uow = db.store.read().await.unwrap();
                    let dir = if *backward {
                        ReadDirection::Backward
                    } else {
                        ReadDirection::Forward
                    };
                    let evs = es
                        .read_stream(&mut uow, stream, *from, *limit, dir)
                        .await
                        .unwrap();
                    let info = es.stream_info(&mut uow, stream).await.unwrap();
                    uow.commit().await.unwrap();
                    format!(
                        "{:?} {:?}",
                        info.map(|i| i.version),
                        evs.iter()
                            .map(|e| (e.stream_version, e.event_id, e.payload.clone()))
                            .collect::<Vec<_>>()
                    )
                }
                Op::ReadAll { page, filter } => {
                    let mut uow = db.store.read().await.unwrap();
                    let mut cp = Checkpoint::START;
                    let mut seen = Vec::new();
                    let mut pages = 0;
                    loop {
                        let r = es.read_all(&mut uow, cp, *page, filter).await.unwrap();
                        assert!(r.next >= cp, "checkpoints never go back");
                        seen.extend(r.events.iter().map(|e| {
                            (e.stream_id.clone(), e.stream_version, e.event_type.clone())
                        }));
                        cp = r.next;
                        pages += 1;
                        if r.end_of_log {
                            break;
                        }
                        assert!(pages < 10_000);
                    }
                    uow.commit().await.unwrap();
                    format!("{seen:?}")
                }
            };
        out.push(line);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn f2_event_operations_agree_on_every_backend() {
    let seed = std::env::var("LARDER_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            u64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .subsec_nanos(),
            ) << 20
                | 1
        });
    println!("F2 events: seed {seed} (LARDER_TEST_SEED={seed} replays it)");
    let mut rng = Rng::seeded(seed);
    let ops = gen_ops(&mut rng, 300);
    let memory = backends::memory("f2_events").await.unwrap();
    let model = run(&memory, &ops).await;
    memory.finish().await;
    let mut dbs = vec![backends::sqlite("f2_events").await.unwrap()];
    if let Some(pg) = backends::postgres("f2_events").await {
        dbs.push(pg);
    }
    for db in dbs {
        let got = run(&db, &ops).await;
        for (i, (m, g)) in model.iter().zip(&got).enumerate() {
            assert_eq!(
                m, g,
                "seed {seed}: op {i} ({:?}) differs on {} from memory",
                ops[i], db.backend
            );
        }
        db.finish().await;
    }
    // The run exercised every outcome.
    assert!(model.iter().any(|l| l.starts_with("conflict")));
    assert!(model.iter().any(|l| l.contains("again=true")));
}
