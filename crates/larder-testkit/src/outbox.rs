//! The outbox conformance rules: one function per rule, run against every backend by
//! [`outbox_conformance!`](crate::outbox_conformance).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use larder::outbox::{
    Inbox, MemorySink, Message, MessageId, MessageState, Outbox, OutboxCounts, OutboxLimits,
    Processed, Relay, RelayBuilder, SinkError,
};
use larder::{Error, Store, UowOptions};

use crate::backends::TestDb;
use crate::entities::Counter;

/// Opens the outbox of a test database.
pub async fn outbox(db: &TestDb) -> Outbox {
    Outbox::open(&db.store).await.expect("open outbox")
}

/// A relay builder for tests: short leases and backoff, tiny polls.
pub fn relay(store: &Store, name: &str) -> RelayBuilder {
    Relay::builder(store)
        .name(name)
        .lease(Duration::from_millis(400))
        .poll_interval(Duration::from_millis(20))
        .backoff(Duration::from_millis(1), Duration::from_millis(5))
        .batch_size(64)
}

/// Counters now.
pub async fn counts(ob: &Outbox) -> OutboxCounts {
    let mut uow = ob.store().read().await.unwrap();
    let c = ob.status(&mut uow).await.unwrap();
    uow.commit().await.unwrap();
    c
}

/// Runs batches until nothing is ready (bounded), checking the accounting invariant
/// `delivered + dead + parked + pending (+ skipped) == enqueued` after each.
pub async fn drain(relay: &Relay, ob: &Outbox, enqueued: u64) {
    for _ in 0..500 {
        let r = relay.run_once().await.unwrap();
        let c = counts(ob).await;
        assert_eq!(c.total(), enqueued, "accounting: {c:?}");
        if r.fetched == 0 && (c.pending == 0 || c.max_attempts_pending == 0) {
            // Nothing fetched: either everything is done, or what is left is waiting for
            // a backoff or parked; give a backoff the time to pass once.
            tokio::time::sleep(Duration::from_millis(10)).await;
            if relay.run_once().await.unwrap().fetched == 0 {
                return;
            }
        } else if r.fetched == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    panic!("the relay did not settle");
}

/// Runs `relay` in a task until the returned sender fires (or is dropped).
fn spawn_run(
    relay: &Relay,
) -> (
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<larder::Result<()>>,
) {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let r = relay.clone();
    let runner = tokio::spawn(async move {
        r.run(async move {
            let _ = stopped.await;
        })
        .await
    });
    (stop, runner)
}

async fn enqueue(ob: &Outbox, msgs: Vec<Message>) -> Vec<MessageId> {
    let mut uow = ob.store().begin().await.unwrap();
    let ids = ob.enqueue_all(&mut uow, msgs).await.unwrap();
    uow.commit().await.unwrap();
    ids
}

fn body(m: &larder::outbox::Published) -> String {
    String::from_utf8(m.payload.clone()).unwrap()
}

/// Messages commit and roll back with the unit of work's other writes; what is stored is
/// what was enqueued, with the actor and correlation id as headers.
pub async fn enqueued_messages_commit_and_roll_back_with_the_unit_of_work(db: &TestDb) {
    db.store.register::<Counter>().await.unwrap();
    let ob = outbox(db).await;
    let mut uow = db.store.begin().await.unwrap();
    uow.repo::<Counter>()
        .insert(&Counter {
            id: "c1".into(),
            count: 1,
        })
        .await
        .unwrap();
    ob.enqueue(
        &mut uow,
        Message::new("counters", "rolled back").with_key("c1"),
    )
    .await
    .unwrap();
    uow.rollback().await.unwrap();
    assert_eq!(
        counts(&ob).await.total(),
        0,
        "a rolled-back message is never stored"
    );

    let opts = UowOptions::default()
        .with_actor("alice")
        .with_correlation_id("req-7");
    let mut uow = db.store.begin_with(opts).await.unwrap();
    uow.repo::<Counter>()
        .insert(&Counter {
            id: "c1".into(),
            count: 1,
        })
        .await
        .unwrap();
    let payload = vec![0u8, 159, 146, 150, 255];
    let id = ob
        .enqueue(
            &mut uow,
            Message::new("counters.created", payload.clone())
                .with_key("c1")
                .with_header("trace", "abc"),
        )
        .await
        .unwrap();
    uow.commit().await.unwrap();

    let c = counts(&ob).await;
    assert_eq!((c.pending, c.total()), (1, 1), "{c:?}");
    let mut uow = db.store.read().await.unwrap();
    let m = ob.get(&mut uow, id).await.unwrap().expect("stored");
    uow.commit().await.unwrap();
    assert_eq!(m.topic, "counters.created");
    assert_eq!(m.key.as_deref(), Some("c1"));
    assert_eq!(m.payload, payload, "binary payloads survive byte for byte");
    assert_eq!(m.state, MessageState::Pending);
    assert_eq!(m.attempts, 0);
    let expected: BTreeMap<String, String> = [
        ("larder-actor", "alice"),
        ("larder-correlation-id", "req-7"),
        ("trace", "abc"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    assert_eq!(m.headers, expected);
}

/// Every committed message is published exactly once without faults, each key's
/// messages in enqueue order, across interleaved units of work and batch boundaries.
pub async fn relay_delivers_every_message_once_in_key_order(db: &TestDb) {
    let ob = outbox(db).await;
    let mut n = 0u64;
    for round in 0..10 {
        let mut msgs = Vec::new();
        for k in 0..5 {
            for j in 0..3 {
                msgs.push(
                    Message::new("orders", format!("{k}:{}", round * 3 + j))
                        .with_key(format!("key-{k}")),
                );
            }
        }
        msgs.push(Message::new("audit", format!("free:{round}")));
        n += msgs.len() as u64;
        enqueue(&ob, msgs).await;
    }
    let sink = MemorySink::new();
    let r = relay(&db.store, "r1")
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    drain(&r, &ob, n).await;
    let got = sink.messages();
    assert_eq!(got.len() as u64, n, "every message once");
    let mut ids = std::collections::HashSet::new();
    assert!(got.iter().all(|m| ids.insert(m.id)), "no duplicates");
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let Some(k) = &m.key else { continue };
        let seq: i64 = body(m).split(':').nth(1).unwrap().parse().unwrap();
        let prev = last.insert(k.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {k}: {seq} after {prev}");
    }
    let c = counts(&ob).await;
    assert_eq!((c.delivered, c.pending, c.dead), (n, 0, 0), "{c:?}");
    assert_eq!(r.stats().snapshot().published, n);
}

/// A message that keeps failing is retried with backoff, dead-lettered with its last
/// error after `max_attempts`, and parks its key's later messages while other keys keep
/// flowing; replay publishes it and releases the key in order; skip releases the key
/// without it. The accounting invariant holds throughout.
pub async fn failing_messages_dead_letter_and_park_their_key(db: &TestDb) {
    let ob = outbox(db).await;
    let mut msgs = Vec::new();
    for (k, body) in [
        ("a", "a0"),
        ("a", "POISON-a1"),
        ("a", "a2"),
        ("b", "b0"),
        ("a", "a3"),
        ("b", "b1"),
        ("c", "POISON-c0"),
        ("c", "c1"),
    ] {
        msgs.push(Message::new("t", body).with_key(k));
    }
    let ids = enqueue(&ob, msgs).await;
    let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let f = fail.clone();
    let sink = MemorySink::failing_with(move |m| {
        (f.load(Ordering::SeqCst) && m.payload.starts_with(b"POISON"))
            .then(|| SinkError::Failed(format!("refused {}", String::from_utf8_lossy(m.payload))))
    });
    let r = relay(&db.store, "r1")
        .max_attempts(3)
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    drain(&r, &ob, 8).await;
    let bodies: Vec<String> = sink.messages().iter().map(body).collect();
    assert_eq!(
        bodies,
        ["a0", "b0", "b1"],
        "other keys flow; a and c are parked"
    );
    let c = counts(&ob).await;
    assert_eq!(
        (c.delivered, c.dead, c.parked, c.pending),
        (3, 2, 3, 0),
        "{c:?}"
    );
    let mut uow = db.store.read().await.unwrap();
    let dead = ob.dead_letters(&mut uow, None, 10).await.unwrap();
    uow.commit().await.unwrap();
    assert_eq!(
        dead.iter().map(|d| d.id).collect::<Vec<_>>(),
        [ids[1], ids[6]]
    );
    assert_eq!(dead[0].attempts, 3);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("refused POISON-a1"),
        "{:?}",
        dead[0].last_error
    );

    // Replay a1 (the broker accepts it now): a1, a2, a3 in order. Skip c0: c1 flows.
    fail.store(false, Ordering::SeqCst);
    let mut uow = db.store.begin().await.unwrap();
    ob.replay(&mut uow, ids[1]).await.unwrap();
    ob.skip(&mut uow, ids[6]).await.unwrap();
    uow.commit().await.unwrap();
    drain(&r, &ob, 8).await;
    let bodies: Vec<String> = sink.messages().iter().map(body).collect();
    assert_eq!(bodies[3..], ["POISON-a1", "a2", "a3", "c1"]);
    let c = counts(&ob).await;
    assert_eq!(
        (c.delivered, c.skipped, c.dead, c.parked),
        (7, 1, 0, 0),
        "{c:?}"
    );
}

/// A broker outage is not the messages' fault: nothing is dead-lettered or counted, and
/// everything is published in key order once the broker is back.
pub async fn an_unavailable_broker_dead_letters_nothing(db: &TestDb) {
    let ob = outbox(db).await;
    let msgs = (0..12)
        .map(|i| Message::new("t", format!("{i}")).with_key(format!("k{}", i % 3)))
        .collect();
    enqueue(&ob, msgs).await;
    let down = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let d = down.clone();
    let sink = MemorySink::failing_with(move |_| {
        d.load(Ordering::SeqCst)
            .then(|| SinkError::Unavailable("connection refused".into()))
    });
    let r = relay(&db.store, "r1")
        .max_attempts(2)
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    for _ in 0..10 {
        let rep = r.run_once().await.unwrap();
        assert!(
            rep.outage && rep.delivered == 0 && rep.failed == 0,
            "{rep:?}"
        );
    }
    let c = counts(&ob).await;
    assert_eq!(
        (c.pending, c.dead, c.max_attempts_pending),
        (12, 0, 0),
        "{c:?}"
    );
    down.store(false, Ordering::SeqCst);
    drain(&r, &ob, 12).await;
    let got = sink.messages();
    assert_eq!(got.len(), 12);
    for k in 0..3 {
        let seq: Vec<i64> = got
            .iter()
            .filter(|m| m.key.as_deref() == Some(&format!("k{k}")))
            .map(|m| body(m).parse().unwrap())
            .collect();
        assert!(seq.windows(2).all(|w| w[0] < w[1]), "k{k}: {seq:?}");
    }
    assert_eq!(counts(&ob).await.dead, 0);
}

/// A message the broker refuses for good is dead-lettered at once.
pub async fn poison_is_dead_lettered_at_once(db: &TestDb) {
    let ob = outbox(db).await;
    enqueue(
        &ob,
        vec![
            Message::new("t", "bad").with_key("k"),
            Message::new("t", "after").with_key("k"),
        ],
    )
    .await;
    let sink = MemorySink::failing_with(|m| {
        (m.payload == b"bad").then(|| SinkError::Poison("400 bad request".into()))
    });
    let r = relay(&db.store, "r1")
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    drain(&r, &ob, 2).await;
    let c = counts(&ob).await;
    assert_eq!((c.dead, c.parked, c.delivered), (1, 1, 0), "{c:?}");
    let mut uow = db.store.read().await.unwrap();
    let dead = ob.dead_letters(&mut uow, None, 10).await.unwrap();
    uow.commit().await.unwrap();
    assert_eq!(dead[0].attempts, 1);
    assert!(
        dead[0]
            .last_error
            .as_deref()
            .unwrap()
            .contains("400 bad request")
    );
}

/// The inbox applies a message once however often it is delivered, also when deliveries
/// race.
pub async fn inbox_applies_a_message_once(db: &TestDb) {
    db.store.register::<Counter>().await.unwrap();
    let inbox = Inbox::open(&db.store).await.unwrap();
    let mut uow = db.store.begin().await.unwrap();
    uow.repo::<Counter>()
        .insert(&Counter {
            id: "n".into(),
            count: 0,
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();

    async fn deliver(store: &Store, inbox: &Inbox, id: MessageId) -> bool {
        loop {
            let mut uow = store.begin().await.unwrap();
            let r = inbox
                .process_once(&mut uow, "billing", id, |uow| {
                    Box::pin(async move {
                        let mut c = uow.repo::<Counter>().require(&"n".to_owned()).await?;
                        c.value.count += 1;
                        uow.repo::<Counter>().save(&mut c).await?;
                        Ok(())
                    })
                })
                .await;
            match r {
                Ok(p) => match uow.commit().await {
                    Ok(_) => return p.is_applied(),
                    Err(e) if e.is_transient() => continue,
                    Err(e) => panic!("{e}"),
                },
                Err(e) if e.is_transient() || matches!(e, Error::Conflict { .. }) => {
                    uow.rollback().await.unwrap();
                }
                Err(e) => panic!("{e}"),
            }
        }
    }
    let id = MessageId::new();
    let mut applied = 0;
    for _ in 0..5 {
        applied += u32::from(deliver(&db.store, &inbox, id).await);
    }
    assert_eq!(applied, 1, "five deliveries, one application");

    let id2 = MessageId::new();
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (s, i) = (db.store.clone(), inbox.clone());
            tokio::spawn(async move { deliver(&s, &i, id2).await })
        })
        .collect();
    let mut applied = 0;
    for t in tasks {
        applied += u32::from(t.await.unwrap());
    }
    assert_eq!(applied, 1, "four concurrent deliveries, one application");
    let mut uow = db.store.read().await.unwrap();
    let c = uow
        .repo::<Counter>()
        .require(&"n".to_owned())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(c.value.count, 2);
    // A different consumer is a different inbox.
    let mut uow = db.store.begin().await.unwrap();
    let r = inbox
        .process_once(&mut uow, "shipping", id, |_| Box::pin(async { Ok(7) }))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(r, Processed::Applied(7));
}

/// Bad input is refused with typed errors before anything is stored.
pub async fn bad_outbox_input_is_typed(db: &TestDb) {
    let ob = Outbox::builder(&db.store)
        .limits(
            OutboxLimits::default()
                .with_max_payload_bytes(16)
                .with_max_headers(2)
                .with_max_header_bytes(32)
                .with_max_batch(3),
        )
        .open()
        .await
        .unwrap();
    let cases: Vec<(Message, &str)> = vec![
        (Message::new("", "x"), "invalid_message"),
        (Message::new("t\n", "x"), "invalid_message"),
        (Message::new("x".repeat(256), "x"), "limit_exceeded"),
        (Message::new("t", "x").with_key(""), "invalid_message"),
        (
            Message::new("t", "x").with_key("a\u{0}b"),
            "invalid_message",
        ),
        (Message::new("t", vec![1u8; 17]), "limit_exceeded"),
        (
            Message::new("t", "x")
                .with_header("a", "1")
                .with_header("b", "2")
                .with_header("c", "3"),
            "limit_exceeded",
        ),
        (
            Message::new("t", "x").with_header("a", "y".repeat(40)),
            "limit_exceeded",
        ),
        (
            Message::new("t", "x").with_header("a", "line\r\nbreak"),
            "invalid_message",
        ),
        (
            Message::new("t", "x").with_header("", "v"),
            "invalid_message",
        ),
    ];
    for (m, kind) in cases {
        let mut uow = db.store.begin().await.unwrap();
        let e = ob.enqueue(&mut uow, m.clone()).await.unwrap_err();
        assert_eq!(e.kind(), kind, "{m:?}: {e}");
        uow.rollback().await.unwrap();
    }
    let mut uow = db.store.begin().await.unwrap();
    let e = ob
        .enqueue_all(&mut uow, (0..4).map(|i| Message::new("t", format!("{i}"))))
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "limit_exceeded", "{e}");
    let twice = Message::new("t", "x");
    let e = ob
        .enqueue_all(&mut uow, [twice.clone(), twice.clone()])
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::AlreadyExists {
                entity: "message",
                ..
            }
        ),
        "{e}"
    );
    uow.commit().await.unwrap();
    assert_eq!(counts(&ob).await.total(), 0, "nothing stored");

    // An id stored before: the whole batch is refused, the unit of work stays usable.
    let stored = enqueue(&ob, vec![Message::new("t", "first")]).await[0];
    let mut uow = db.store.begin().await.unwrap();
    let e = ob
        .enqueue_all(
            &mut uow,
            [
                Message::new("t", "new"),
                Message::new("t", "again").with_id(stored.0),
            ],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::AlreadyExists {
                entity: "message",
                ..
            }
        ),
        "{e}"
    );
    ob.enqueue(&mut uow, Message::new("t", "still usable"))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(
        counts(&ob).await.total(),
        2,
        "the refused batch left nothing"
    );

    let mut uow = db.store.begin().await.unwrap();
    let e = ob.replay(&mut uow, MessageId::new()).await.unwrap_err();
    assert!(
        matches!(e, Error::UnknownMessage { state: "dead", .. }),
        "{e}"
    );
    let e = ob.skip(&mut uow, stored).await.unwrap_err();
    assert!(
        matches!(e, Error::UnknownMessage { .. }),
        "a pending message is not dead: {e}"
    );
    uow.rollback().await.unwrap();
    let mut uow = db.store.read().await.unwrap();
    let e = ob
        .enqueue(&mut uow, Message::new("t", "x"))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnly { .. }), "{e}");
    uow.rollback().await.unwrap();
    let e = "not-a-uuid".parse::<MessageId>().unwrap_err();
    assert_eq!(e.kind(), "invalid_message");

    let e = Relay::builder(&db.store).build().await.unwrap_err();
    assert!(matches!(e, Error::Configuration(_)), "{e}");
    let e = Relay::builder(&db.store)
        .name("bad\nname")
        .sink(MemorySink::new())
        .build()
        .await
        .unwrap_err();
    assert_eq!(e.kind(), "invalid_message", "{e}");
}

/// Relays seen alive split the partitions evenly without ever sharing one, and a relay
/// that stops renewing loses its partitions to the others after the lease.
pub async fn relays_split_partitions_and_take_over_a_silent_ones(db: &TestDb) {
    let sink = MemorySink::new();
    // A lease long enough that a loaded machine finishes the steps below inside it.
    let lease = Duration::from_secs(3);
    let a = relay(&db.store, "a")
        .lease(lease)
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    let b = relay(&db.store, "b")
        .lease(lease)
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    let pa = a.lease().await.unwrap();
    let total = pa.len();
    assert!(total >= 1);
    let pb = b.lease().await.unwrap();
    assert!(
        pb.is_empty(),
        "a holds everything while its lease runs: {pb:?}"
    );
    // a sees two relays now and gives half back; b takes it.
    let pa = a.lease().await.unwrap();
    let pb = b.lease().await.unwrap();
    assert_eq!(pa.len(), total.div_ceil(2), "{pa:?}");
    assert_eq!(pa.len() + pb.len(), total, "{pa:?} {pb:?}");
    assert!(
        pa.iter().all(|p| !pb.contains(p)),
        "disjoint: {pa:?} {pb:?}"
    );
    // a goes silent: after its lease, b holds everything.
    tokio::time::sleep(lease + Duration::from_millis(100)).await;
    let pb = b.lease().await.unwrap();
    assert_eq!(pb.len(), total, "{pb:?}");
    // b shuts down gracefully: a gets everything at once.
    b.release().await.unwrap();
    let pa = a.lease().await.unwrap();
    assert_eq!(pa.len(), total, "{pa:?}");
}

/// `run` wakes on a commit that enqueues (well within the poll interval), publishes, and
/// on shutdown finishes, records and releases its leases.
pub async fn relay_run_wakes_on_commit_and_shuts_down_gracefully(db: &TestDb) {
    let ob = outbox(db).await;
    let sink = MemorySink::new();
    let r = Relay::builder(&db.store)
        .name("runner")
        .poll_interval(Duration::from_secs(30))
        .lease(Duration::from_secs(90))
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    let (stop, runner) = spawn_run(&r);
    // Let the first (idle) round finish so the next wake-up must come from the commit.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let t = std::time::Instant::now();
    enqueue(&ob, vec![Message::new("t", "wake")]).await;
    while sink.is_empty() {
        assert!(t.elapsed() < Duration::from_secs(10), "no wake-up");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "woken, not polled: {:?}",
        t.elapsed()
    );
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
    let c = counts(&ob).await;
    assert_eq!(c.delivered, 1, "{c:?}");
    // Released: another relay takes everything at once.
    let other = relay(&db.store, "other")
        .sink(MemorySink::new())
        .build()
        .await
        .unwrap();
    let held = other.lease().await.unwrap();
    assert!(!held.is_empty());
    let again = other.lease().await.unwrap();
    assert_eq!(held, again);
}

/// A running relay works through a backlog in two halves (recording one while the next
/// is published): every message exactly once, each key in order, and at no sample more
/// than `batch_size` messages published and not yet recorded (what a kill may duplicate).
pub async fn relay_run_pipelines_a_backlog_once_in_key_order(db: &TestDb) {
    const BATCH: u32 = 32;
    let ob = outbox(db).await;
    let mut n = 0u64;
    for round in 0..12 {
        let mut msgs = Vec::new();
        for j in 0..80 {
            let k = j % 8;
            msgs.push(
                Message::new("orders", format!("{k}:{}", round * 10 + j / 8))
                    .with_key(format!("key-{k}")),
            );
        }
        msgs.push(Message::new("audit", format!("free:{round}")));
        n += msgs.len() as u64;
        enqueue(&ob, msgs).await;
    }
    let sink = MemorySink::new();
    let r = Relay::builder(&db.store)
        .name("pipelined")
        .poll_interval(Duration::from_millis(20))
        .lease(Duration::from_secs(30))
        .batch_size(BATCH)
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    let (stop, runner) = spawn_run(&r);
    let t = std::time::Instant::now();
    let mut worst = 0u64;
    loop {
        // Published first, recorded second: the difference can only overstate.
        let published = sink.len() as u64;
        let c = counts(&ob).await;
        assert_eq!(c.total(), n, "accounting: {c:?}");
        worst = worst.max(published.saturating_sub(c.delivered));
        if c.delivered == n {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "stuck: {c:?}");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
    assert!(
        worst <= u64::from(BATCH),
        "{worst} messages were published and not recorded at once (batch {BATCH})"
    );
    let got = sink.messages();
    let mut ids = std::collections::HashSet::new();
    assert!(got.iter().all(|m| ids.insert(m.id)), "no duplicates");
    assert_eq!(got.len() as u64, n, "every message once");
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let Some(k) = &m.key else { continue };
        let seq: i64 = body(m).split(':').nth(1).unwrap().parse().unwrap();
        let prev = last.insert(k.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {k}: {seq} after {prev}");
    }
    assert_eq!(r.stats().snapshot().published, n);
}

/// A relay with retention zero deletes each delivered message in its record (both in
/// `run_once` and in the pipelined `run`): everything published once in key order, no
/// delivered row left, dead letters kept, and a delivered caller-supplied id can be
/// enqueued again.
pub async fn a_relay_keeping_nothing_deletes_what_it_delivered(db: &TestDb) {
    let ob = outbox(db).await;
    let fixed = MessageId::new();
    let mut msgs = vec![
        Message::new("orders", "0:0")
            .with_key("key-0")
            .with_id(fixed),
    ];
    for j in 1..200 {
        let k = j % 5;
        msgs.push(Message::new("orders", format!("{k}:{}", j / 5)).with_key(format!("key-{k}")));
    }
    msgs.push(Message::new("orders", "poison").with_key("bad"));
    let n = msgs.len();
    enqueue(&ob, msgs).await;
    let sink = MemorySink::failing_with(|m| {
        (m.payload == b"poison").then(|| SinkError::Poison("refused".into()))
    });
    let r = relay(&db.store, "keeps-nothing")
        .retention(Some(Duration::ZERO), Duration::from_secs(60))
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    // One batch by `run_once`, the rest by the pipelined `run`.
    assert_eq!(r.run_once().await.unwrap().fetched, 64);
    let (stop, runner) = spawn_run(&r);
    let t = std::time::Instant::now();
    loop {
        let c = counts(&ob).await;
        assert_eq!(c.delivered, 0, "nothing kept: {c:?}");
        if c.pending == 0 && c.dead == 1 {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(30), "stuck: {c:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    stop.send(()).unwrap();
    runner.await.unwrap().unwrap();
    let got = sink.messages();
    assert_eq!(got.len(), n - 1, "every good message once");
    let mut last: HashMap<String, i64> = HashMap::new();
    for m in &got {
        let seq: i64 = body(m).split(':').nth(1).unwrap().parse().unwrap();
        let k = m.key.clone().unwrap();
        let prev = last.insert(k.clone(), seq).unwrap_or(-1);
        assert_eq!(seq, prev + 1, "key {k}: {seq} after {prev}");
    }
    let mut uow = db.store.read().await.unwrap();
    assert!(ob.get(&mut uow, fixed).await.unwrap().is_none(), "deleted");
    assert_eq!(
        ob.dead_letters(&mut uow, None, 10).await.unwrap().len(),
        1,
        "dead letter kept"
    );
    uow.commit().await.unwrap();
    enqueue(&ob, vec![Message::new("orders", "again").with_id(fixed)]).await;
}

/// Retention deletes delivered and skipped messages older than the cut-off, in bounded
/// batches, and nothing else.
pub async fn purge_removes_old_done_messages_in_bounded_batches(db: &TestDb) {
    let ob = outbox(db).await;
    enqueue(
        &ob,
        (0..7).map(|i| Message::new("t", format!("{i}"))).collect(),
    )
    .await;
    let sink = MemorySink::new();
    let r = relay(&db.store, "r1").sink(sink).build().await.unwrap();
    drain(&r, &ob, 7).await;
    enqueue(&ob, vec![Message::new("t", "pending")]).await;
    let mut uow = db.store.begin().await.unwrap();
    assert_eq!(
        ob.purge(&mut uow, Duration::from_secs(3600), 100)
            .await
            .unwrap(),
        0
    );
    uow.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut uow = db.store.begin().await.unwrap();
    assert_eq!(ob.purge(&mut uow, Duration::ZERO, 5).await.unwrap(), 5);
    assert_eq!(ob.purge(&mut uow, Duration::ZERO, 5).await.unwrap(), 2);
    assert_eq!(ob.purge(&mut uow, Duration::ZERO, 5).await.unwrap(), 0);
    uow.commit().await.unwrap();
    let c = counts(&ob).await;
    assert_eq!((c.delivered, c.pending), (0, 1), "{c:?}");
    let inbox = Inbox::new(&db.store);
    let mut uow = db.store.begin().await.unwrap();
    inbox
        .process_once(&mut uow, "c", MessageId::new(), |_| {
            Box::pin(async { Ok(()) })
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    let mut uow = db.store.begin().await.unwrap();
    assert_eq!(inbox.purge(&mut uow, Duration::ZERO, 10).await.unwrap(), 1);
    uow.commit().await.unwrap();
}

/// With `publish_events`, an append enqueues its routed events in the same unit of work:
/// rolled back = never enqueued; re-appending the same ids enqueues nothing twice; the
/// message id is the event id and the key the stream.
pub async fn appended_events_are_enqueued_by_route(db: &TestDb) {
    use larder::events::{EventData, EventRoutes, EventStore, ExpectedVersion};
    let es = EventStore::builder(&db.store)
        .publish_events(
            EventRoutes::new()
                .category("order", "orders")
                .event_type("Alert", "alerts"),
        )
        .open()
        .await
        .unwrap();
    let ob = outbox(db).await;
    let ev = |ty: &str, n: i64| EventData::new(ty, &serde_json::json!({ "n": n })).unwrap();

    let mut uow = db.store.begin().await.unwrap();
    es.append(
        &mut uow,
        "order-1",
        ExpectedVersion::NoStream,
        vec![ev("Placed", 1)],
    )
    .await
    .unwrap();
    uow.rollback().await.unwrap();
    assert_eq!(
        counts(&ob).await.total(),
        0,
        "a rolled-back append enqueues nothing"
    );

    let placed = ev("Placed", 1);
    let paid = ev("Paid", 2);
    let ids = [placed.id, paid.id];
    let mut uow = db.store.begin().await.unwrap();
    es.append(
        &mut uow,
        "order-1",
        ExpectedVersion::NoStream,
        vec![placed.clone(), paid.clone()],
    )
    .await
    .unwrap();
    es.append(
        &mut uow,
        "misc-1",
        ExpectedVersion::Any,
        vec![ev("Noise", 3)],
    )
    .await
    .unwrap();
    es.append(
        &mut uow,
        "misc-2",
        ExpectedVersion::Any,
        vec![ev("Alert", 4)],
    )
    .await
    .unwrap();
    uow.commit().await.unwrap();
    // A retry of the first append (same ids): already appended, nothing enqueued again.
    let mut uow = db.store.begin().await.unwrap();
    let r = es
        .append(
            &mut uow,
            "order-1",
            ExpectedVersion::NoStream,
            vec![placed, paid],
        )
        .await
        .unwrap();
    assert!(r.already_appended);
    uow.commit().await.unwrap();
    assert_eq!(
        counts(&ob).await.total(),
        3,
        "two order events and the alert"
    );

    let sink = MemorySink::new();
    let r = relay(&db.store, "events")
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    drain(&r, &ob, 3).await;
    let got = sink.messages();
    let orders: Vec<_> = got.iter().filter(|m| m.topic == "orders").collect();
    assert_eq!(orders.iter().map(|m| m.id.0).collect::<Vec<_>>(), ids);
    assert!(orders.iter().all(|m| m.key.as_deref() == Some("order-1")));
    assert_eq!(orders[1].headers["larder-event-type"], "Paid");
    assert_eq!(orders[1].headers["larder-stream-version"], "2");
    assert_eq!(orders[0].payload, br#"{"n":1}"#);
    let alerts: Vec<_> = got.iter().filter(|m| m.topic == "alerts").collect();
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].key.as_deref(), Some("misc-2"));
}
