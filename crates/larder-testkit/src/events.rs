//! The event-store conformance rules: one function per rule, run against every backend by
//! [`events_conformance!`](crate::events_conformance).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::StreamExt;
use larder::events::{
    Aggregate, Checkpoint, DomainEvent, EventData, EventFilter, EventLimits, EventSourced,
    EventStore, ExpectedVersion, Projection, ProjectionRunner, ReadDirection, RecordedEvent,
};
use larder::{Deadline, Error, Result, Store, Uow, UowOptions};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::backends::TestDb;
use crate::entities::Counter;

/// Opens the event store of a test database.
pub async fn events(db: &TestDb) -> EventStore {
    EventStore::open(&db.store).await.expect("open event store")
}

fn ev(ty: &str, n: i64) -> EventData {
    EventData::new(ty, &json!({ "n": n })).unwrap()
}

async fn append(
    es: &EventStore,
    stream: &str,
    expected: ExpectedVersion,
    evs: Vec<EventData>,
) -> Checkpoint {
    let mut uow = es.store().begin().await.unwrap();
    es.append(&mut uow, stream, expected, evs).await.unwrap();
    let position = uow.commit().await.unwrap().position.unwrap();
    settle(es).await;
    position
}

/// Waits until every committed event is readable. On PostgreSQL an event becomes readable
/// once every transaction older than its own has ended — cluster-wide, so other tests'
/// transactions can hold it back for a moment.
pub async fn settle(es: &EventStore) {
    for _ in 0..500 {
        let mut uow = es.store().read().await.unwrap();
        let mut cp = Checkpoint::START;
        loop {
            let page = es
                .read_all(&mut uow, cp, 1000, &EventFilter::all())
                .await
                .unwrap();
            cp = page.next;
            if page.end_of_log {
                break;
            }
        }
        let behind = es.count_after(&mut uow, cp, 1).await.unwrap();
        uow.commit().await.unwrap();
        if behind == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("committed events stayed unreadable for 10 s");
}

async fn read_stream(es: &EventStore, stream: &str) -> Vec<RecordedEvent> {
    let mut uow = es.store().read().await.unwrap();
    let r = es
        .read_stream(&mut uow, stream, 1, 1000, ReadDirection::Forward)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    r
}

async fn read_all(
    es: &EventStore,
    after: Checkpoint,
    limit: u32,
    filter: &EventFilter,
) -> larder::events::ReadAll {
    let mut uow = es.store().read().await.unwrap();
    let r = es.read_all(&mut uow, after, limit, filter).await.unwrap();
    uow.commit().await.unwrap();
    // The borrowed path sees the same events and resumes at the same checkpoint.
    let mut uow = es.store().read().await.unwrap();
    let mut seen = Vec::new();
    let end = es
        .read_all_each(&mut uow, after, limit, filter, &mut |e| {
            seen.push(e.to_owned());
            Ok(())
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(seen, r.events, "read_all_each visits what read_all returns");
    // So does a page kept as rows.
    let mut uow = es.store().read().await.unwrap();
    let page = es
        .read_all_page(&mut uow, after, limit, filter)
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(page.len(), r.events.len());
    assert_eq!(
        page.to_events().unwrap(),
        r.events,
        "read_all_page holds what read_all returns"
    );
    assert!(page.get(page.len()).is_none());
    assert_eq!(page.end_of_log(), r.end_of_log);
    if r.end_of_log {
        assert!(page.next_checkpoint() >= r.next);
    } else {
        assert_eq!(page.next_checkpoint(), r.next);
    }
    assert_eq!((end.count, end.end_of_log), (r.events.len(), r.end_of_log));
    if r.end_of_log {
        // At the end, `next` includes the readable head, which moves with every other
        // transaction of the cluster on PostgreSQL (the horizon), not only with this log.
        assert!(end.next >= r.next, "{:?} < {:?}", end.next, r.next);
    } else {
        assert_eq!(end.next, r.next);
    }
    r
}

fn n_of(e: &RecordedEvent) -> i64 {
    e.payload_as::<serde_json::Value>().unwrap()["n"]
        .as_i64()
        .unwrap()
}

/// Appended events read back with versions 1..n, their ids, types, payloads and the unit
/// of work's correlation id and actor as metadata.
pub async fn append_and_read_stream_round_trip(db: &TestDb) {
    let es = events(db).await;
    let mut uow = db
        .store
        .begin_with(
            UowOptions::default()
                .with_actor("alice")
                .with_correlation_id("req-1"),
        )
        .await
        .unwrap();
    let batch = vec![ev("Opened", 1), ev("Deposited", 2), ev("Deposited", 3)];
    let ids: Vec<_> = batch.iter().map(|e| e.id).collect();
    let r = es
        .append(&mut uow, "account-1", ExpectedVersion::NoStream, batch)
        .await
        .unwrap();
    assert_eq!(r.stream_version, 3);
    assert!(!r.already_appended);
    let committed = uow.commit().await.unwrap();
    assert_eq!(committed.position, Some(r.checkpoint));
    settle(&es).await;

    let got = read_stream(&es, "account-1").await;
    assert_eq!(got.len(), 3);
    assert_eq!(
        got.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [1, 2, 3]
    );
    assert_eq!(got.iter().map(|e| e.event_id).collect::<Vec<_>>(), ids);
    assert_eq!(got[1].event_type, "Deposited");
    assert_eq!(n_of(&got[2]), 3);
    assert_eq!(got[2].checkpoint, r.checkpoint);
    let meta = got[0].metadata().unwrap();
    assert_eq!(meta.actor.as_deref(), Some("alice"));
    assert_eq!(meta.correlation_id.as_deref(), Some("req-1"));
    assert!(got[0].checkpoint < got[1].checkpoint && got[1].checkpoint < got[2].checkpoint);
    assert!(got[0].recorded_at() > std::time::UNIX_EPOCH);
}

fn conflict_of(e: &Error) -> (String, u64, Option<u64>) {
    match e {
        Error::Conflict {
            entity,
            id,
            expected,
            actual,
        } => {
            assert_eq!(*entity, "stream");
            (id.clone(), *expected, *actual)
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
}

/// Expected versions: `NoStream`, `Exact`, `StreamExists`, `Any`; a mismatch is a
/// `Conflict` naming the stream and both versions, and the unit of work stays usable.
pub async fn expected_versions_are_enforced(db: &TestDb) {
    let es = events(db).await;
    append(
        &es,
        "s-1",
        ExpectedVersion::NoStream,
        vec![ev("A", 1), ev("A", 2)],
    )
    .await;

    let mut uow = db.store.begin().await.unwrap();
    let e = es
        .append(&mut uow, "s-1", ExpectedVersion::NoStream, vec![ev("A", 3)])
        .await
        .unwrap_err();
    assert_eq!(conflict_of(&e), ("s-1".into(), 0, Some(2)));
    assert!(e.to_string().contains("s-1"), "{e}");
    let e = es
        .append(&mut uow, "s-1", ExpectedVersion::Exact(1), vec![ev("A", 3)])
        .await
        .unwrap_err();
    assert_eq!(conflict_of(&e), ("s-1".into(), 1, Some(2)));
    let e = es
        .append(&mut uow, "s-2", ExpectedVersion::Exact(4), vec![ev("A", 3)])
        .await
        .unwrap_err();
    assert_eq!(conflict_of(&e), ("s-2".into(), 4, None));
    let e = es
        .append(
            &mut uow,
            "s-2",
            ExpectedVersion::StreamExists,
            vec![ev("A", 3)],
        )
        .await
        .unwrap_err();
    assert_eq!(conflict_of(&e).2, None);
    // The unit of work is still usable after conflicts.
    let r = es
        .append(&mut uow, "s-1", ExpectedVersion::Exact(2), vec![ev("A", 3)])
        .await
        .unwrap();
    assert_eq!(r.stream_version, 3);
    let r = es
        .append(
            &mut uow,
            "s-1",
            ExpectedVersion::StreamExists,
            vec![ev("A", 4)],
        )
        .await
        .unwrap();
    assert_eq!(r.stream_version, 4);
    let r = es
        .append(&mut uow, "s-3", ExpectedVersion::Any, vec![ev("A", 1)])
        .await
        .unwrap();
    assert_eq!(r.stream_version, 1);
    let r = es
        .append(&mut uow, "s-3", ExpectedVersion::Any, vec![ev("A", 2)])
        .await
        .unwrap();
    assert_eq!(r.stream_version, 2);
    let r = es
        .append(&mut uow, "s-4", ExpectedVersion::Exact(0), vec![ev("A", 1)])
        .await
        .unwrap();
    assert_eq!(r.stream_version, 1);
    uow.commit().await.unwrap();
    let got = read_stream(&es, "s-1").await;
    assert_eq!(got.iter().map(n_of).collect::<Vec<_>>(), [1, 2, 3, 4]);
}

/// Appending the same event ids again (a retry after an unknown commit outcome) reports
/// "already appended" with the original versions and writes nothing.
pub async fn reappending_the_same_event_ids_is_already_appended(db: &TestDb) {
    let es = events(db).await;
    let batch = vec![ev("A", 1), ev("A", 2)];
    let mut uow = db.store.begin().await.unwrap();
    let first = es
        .append(&mut uow, "r-1", ExpectedVersion::NoStream, batch.clone())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    for expected in [
        ExpectedVersion::NoStream,
        ExpectedVersion::Exact(0),
        ExpectedVersion::Any,
        ExpectedVersion::StreamExists,
    ] {
        let mut uow = db.store.begin().await.unwrap();
        let again = es
            .append(&mut uow, "r-1", expected, batch.clone())
            .await
            .unwrap();
        assert!(again.already_appended, "{expected:?}");
        assert_eq!(again.stream_version, first.stream_version);
        assert_eq!(again.checkpoint, first.checkpoint);
        assert_eq!(uow.commit().await.unwrap().position, None);
    }
    assert_eq!(read_stream(&es, "r-1").await.len(), 2);
    // The same id in another stream is a typed error, not a duplicate.
    let mut uow = db.store.begin().await.unwrap();
    let e = es
        .append(
            &mut uow,
            "r-2",
            ExpectedVersion::NoStream,
            vec![batch[0].clone()],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::AlreadyExists {
                entity: "event",
                ..
            }
        ),
        "{e:?}"
    );
    drop(uow);
    let mut uow = db.store.read().await.unwrap();
    assert!(es.stream_info(&mut uow, "r-2").await.unwrap().is_none());
}

/// Appends commit and roll back with the unit of work's repository writes.
pub async fn appends_share_the_unit_of_work_with_repositories(db: &TestDb) {
    db.store.register::<Counter>().await.unwrap();
    let es = events(db).await;
    let counter = Counter {
        id: "c".into(),
        count: 1,
    };
    let mut uow = db.store.begin().await.unwrap();
    uow.repo::<Counter>().insert(&counter).await.unwrap();
    es.append(&mut uow, "c-1", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    uow.rollback().await.unwrap();
    let mut uow = db.store.read().await.unwrap();
    assert!(!uow.repo::<Counter>().exists(&"c".into()).await.unwrap());
    assert!(es.stream_info(&mut uow, "c-1").await.unwrap().is_none());
    drop(uow);

    {
        let mut uow = db.store.begin().await.unwrap();
        es.append(&mut uow, "c-1", ExpectedVersion::NoStream, vec![ev("A", 1)])
            .await
            .unwrap();
        // dropped without commit
    }
    let mut uow = db.store.begin().await.unwrap();
    uow.repo::<Counter>().insert(&counter).await.unwrap();
    es.append(&mut uow, "c-1", ExpectedVersion::NoStream, vec![ev("A", 1)])
        .await
        .unwrap();
    let committed = uow.commit().await.unwrap();
    assert!(committed.position.is_some());
    let mut uow = db.store.read().await.unwrap();
    assert!(uow.repo::<Counter>().exists(&"c".into()).await.unwrap());
    assert_eq!(
        es.stream_info(&mut uow, "c-1")
            .await
            .unwrap()
            .map(|i| i.version),
        Some(1)
    );
    // A unit of work without appends reports no position.
    drop(uow);
    let uow = db.store.begin().await.unwrap();
    assert_eq!(uow.commit().await.unwrap().position, None);
}

/// The global log: every event once, in log order, paged by checkpoints whose tokens
/// round-trip; `end_of_log` at the end.
pub async fn read_all_pages_through_the_log_in_order(db: &TestDb) {
    let es = events(db).await;
    let mut last = Checkpoint::START;
    for i in 0..7 {
        let stream = format!("p-{}", i % 3);
        last = append(
            &es,
            &stream,
            ExpectedVersion::Any,
            vec![ev("A", i * 2), ev("A", i * 2 + 1)],
        )
        .await;
    }
    let mut seen = Vec::new();
    let mut cp = Checkpoint::START;
    let mut pages = 0;
    loop {
        let token = cp.token();
        cp = Checkpoint::from_token(&token).unwrap();
        let page = read_all(&es, cp, 4, &EventFilter::all()).await;
        pages += 1;
        assert!(page.events.len() <= 4);
        seen.extend(page.events.iter().map(n_of));
        cp = page.next;
        if page.end_of_log {
            break;
        }
        assert!(pages < 10);
    }
    assert_eq!(seen, (0..14).collect::<Vec<_>>());
    assert!(cp >= last);
    // A visitor error stops the read and comes back as it was.
    let mut uow = es.store().read().await.unwrap();
    let mut visited = 0;
    let stopped = es
        .read_all_each(
            &mut uow,
            Checkpoint::START,
            100,
            &EventFilter::all(),
            &mut |_| {
                visited += 1;
                if visited == 3 {
                    return Err(larder::Error::InvalidEvent("stop here".into()));
                }
                Ok(())
            },
        )
        .await;
    assert!(
        matches!(&stopped, Err(larder::Error::InvalidEvent(m)) if m == "stop here"),
        "{stopped:?}"
    );
    assert_eq!(visited, 3);
    drop(uow);
    let again = read_all(&es, cp, 4, &EventFilter::all()).await;
    assert!(again.events.is_empty() && again.end_of_log);
    // Checkpoints are strictly increasing.
    let all = read_all(&es, Checkpoint::START, 100, &EventFilter::all()).await;
    assert!(
        all.events
            .windows(2)
            .all(|w| w[0].checkpoint < w[1].checkpoint)
    );
    // Streaming the whole log in small pages gives the same sequence.
    let streamed: Vec<i64> = es
        .stream_all(Checkpoint::START, EventFilter::all(), 3)
        .map(|e| n_of(&e.unwrap()))
        .collect()
        .await;
    assert_eq!(streamed, seen);
    // And by pages kept as rows (no empty page yielded).
    let mut paged = Vec::new();
    let mut pages = es.stream_all_pages(Checkpoint::START, EventFilter::all(), 3);
    while let Some(page) = pages.next().await {
        let page = page.unwrap();
        assert!(!page.is_empty() && page.len() <= 3);
        for e in page.iter() {
            paged.push(n_of(&e.unwrap().to_owned()));
        }
    }
    assert_eq!(paged, seen);
}

/// Filters by category and event type; the checkpoint moves past filtered-out events.
pub async fn read_all_filters_by_category_and_type(db: &TestDb) {
    let es = events(db).await;
    append(
        &es,
        "order-1",
        ExpectedVersion::Any,
        vec![ev("Placed", 1), ev("Paid", 2)],
    )
    .await;
    append(
        &es,
        "user-1",
        ExpectedVersion::Any,
        vec![ev("Registered", 3)],
    )
    .await;
    append(&es, "order", ExpectedVersion::Any, vec![ev("Placed", 4)]).await;
    let last = append(&es, "orders-1", ExpectedVersion::Any, vec![ev("Placed", 5)]).await;

    let page = read_all(&es, Checkpoint::START, 100, &EventFilter::category("order")).await;
    assert_eq!(page.events.iter().map(n_of).collect::<Vec<_>>(), [1, 2, 4]);
    assert!(page.end_of_log);
    assert!(
        page.next >= last,
        "the checkpoint passes filtered-out events"
    );

    let page = read_all(
        &es,
        Checkpoint::START,
        100,
        &EventFilter::event_types(["Placed"]),
    )
    .await;
    assert_eq!(page.events.iter().map(n_of).collect::<Vec<_>>(), [1, 4, 5]);

    let f = EventFilter::category("order")
        .or_category("user")
        .and_event_types(["Placed", "Registered"]);
    let page = read_all(&es, Checkpoint::START, 100, &f).await;
    assert_eq!(page.events.iter().map(n_of).collect::<Vec<_>>(), [1, 3, 4]);
}

/// `read_stream` forward from a version, backward from a version, with limits; stream
/// metadata.
pub async fn read_stream_directions_and_stream_info(db: &TestDb) {
    let es = events(db).await;
    let batch: Vec<_> = (1..=6).map(|i| ev("A", i)).collect();
    append(&es, "d-1", ExpectedVersion::NoStream, batch).await;
    let mut uow = db.store.read().await.unwrap();
    let f = es
        .read_stream(&mut uow, "d-1", 3, 2, ReadDirection::Forward)
        .await
        .unwrap();
    assert_eq!(
        f.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [3, 4]
    );
    let b = es
        .read_stream(&mut uow, "d-1", u64::MAX, 3, ReadDirection::Backward)
        .await
        .unwrap();
    assert_eq!(
        b.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [6, 5, 4]
    );
    let b = es
        .read_stream(&mut uow, "d-1", 2, 10, ReadDirection::Backward)
        .await
        .unwrap();
    assert_eq!(
        b.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        [2, 1]
    );
    let none = es
        .read_stream(&mut uow, "missing", 1, 10, ReadDirection::Forward)
        .await
        .unwrap();
    assert!(none.is_empty());
    assert_eq!(
        es.stream_info(&mut uow, "d-1")
            .await
            .unwrap()
            .map(|i| i.version),
        Some(6)
    );
    assert_eq!(es.stream_info(&mut uow, "missing").await.unwrap(), None);
    let stats = es.stats(&mut uow).await.unwrap();
    assert_eq!((stats.events, stats.streams), (6, 1));
}

/// Bad input is a typed error before any I/O, and nothing is written.
pub async fn bad_event_input_is_typed(db: &TestDb) {
    let es = EventStore::builder(&db.store)
        .limits(
            EventLimits::default()
                .with_max_batch(3)
                .with_max_payload_bytes(64)
                .with_max_read(50),
        )
        .open()
        .await
        .unwrap();
    let mut uow = db.store.begin().await.unwrap();
    let any = ExpectedVersion::Any;
    macro_rules! bad {
        ($stream:expr, $evs:expr, $pat:pat) => {{
            let e = es.append(&mut uow, $stream, any, $evs).await.unwrap_err();
            assert!(matches!(e, $pat), "{e:?}");
        }};
    }
    bad!("", vec![ev("A", 1)], Error::InvalidEvent(_));
    bad!("a\u{0}b", vec![ev("A", 1)], Error::InvalidEvent(_));
    bad!(
        &"s".repeat(500),
        vec![ev("A", 1)],
        Error::LimitExceeded { .. }
    );
    bad!("s", Vec::new(), Error::InvalidEvent(_));
    bad!(
        "s",
        (0..4).map(|i| ev("A", i)).collect::<Vec<_>>(),
        Error::LimitExceeded {
            what: "events per append",
            ..
        }
    );
    bad!(
        "s",
        vec![EventData::raw("A", format!("\"{}\"", "x".repeat(100)))],
        Error::LimitExceeded { .. }
    );
    bad!(
        "s",
        vec![EventData::raw("A", "{not json")],
        Error::InvalidEvent(_)
    );
    // A payload larder serialized, then changed through the public field: checked again.
    let mut changed = ev("A", 1);
    changed.payload.truncate(changed.payload.len() - 1);
    bad!("s", vec![changed], Error::InvalidEvent(_));
    let mut changed = ev("A", 1);
    changed.payload = "{not json".into();
    bad!("s", vec![changed], Error::InvalidEvent(_));
    bad!("s", vec![ev("", 1)], Error::InvalidEvent(_));
    let dup = ev("A", 1);
    bad!("s", vec![dup.clone(), dup], Error::InvalidEvent(_));
    let e = es
        .read_all(&mut uow, Checkpoint::START, 51, &EventFilter::all())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::LimitExceeded { .. }), "{e:?}");
    let e = es
        .read_all(
            &mut uow,
            Checkpoint::START,
            10,
            &EventFilter::category("a-b"),
        )
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidEvent(_)), "{e:?}");
    let e = es
        .read_stream(&mut uow, "", 1, 10, ReadDirection::Forward)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidEvent(_)), "{e:?}");
    for token in [
        "",
        "c1.x.1",
        "c1.1",
        "' OR 1=1 --",
        "c1.99999999999999999999.0",
    ] {
        assert!(matches!(
            Checkpoint::from_token(token),
            Err(Error::InvalidCheckpoint(_))
        ));
    }
    uow.commit().await.unwrap();
    let mut uow = db.store.read().await.unwrap();
    assert_eq!(
        es.stats(&mut uow).await.unwrap().events,
        0,
        "nothing was written"
    );
    let e = es
        .append(&mut uow, "s", any, vec![ev("A", 1)])
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnly { .. }), "{e:?}");
    // An expired deadline fails before any I/O.
    drop(uow);
    let mut uow = db
        .store
        .begin_with(UowOptions::default().with_deadline(Deadline::after(Duration::ZERO)))
        .await;
    if let Ok(uow) = uow.as_mut() {
        let e = es
            .append(uow, "s", any, vec![ev("A", 1)])
            .await
            .unwrap_err();
        assert!(matches!(e, Error::DeadlineExceeded { .. }), "{e:?}");
    }
}

/// A cart: the aggregate of the aggregate rules.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Cart {
    /// Items in the cart.
    pub items: Vec<String>,
    /// Checked out.
    pub checked_out: bool,
    /// How many events built it (to tell a snapshot from a replay).
    pub applied: u64,
}

/// The cart's events.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum CartEvent {
    /// An item was added.
    ItemAdded {
        /// Its SKU.
        sku: String,
    },
    /// The cart was checked out.
    CheckedOut,
}

impl DomainEvent for CartEvent {
    const TYPES: &'static [&'static str] = &["ItemAdded", "CheckedOut"];
    fn event_type(&self) -> &'static str {
        match self {
            CartEvent::ItemAdded { .. } => "ItemAdded",
            CartEvent::CheckedOut => "CheckedOut",
        }
    }
    fn schema_version(&self) -> u32 {
        2
    }
    fn accepts(event_type: &str, schema_version: u32) -> bool {
        schema_version == 2 && Self::TYPES.contains(&event_type)
    }
}

/// The cart's commands.
#[derive(Debug)]
pub enum CartCommand {
    /// Add an item.
    Add(String),
    /// Check out.
    CheckOut,
}

impl EventSourced for Cart {
    type Event = CartEvent;
    type Command = CartCommand;
    type Error = String;
    const CATEGORY: &'static str = "cart";
    const SNAPSHOT_EVERY: Option<u64> = Some(3);

    fn apply(&mut self, e: &CartEvent) {
        self.applied += 1;
        match e {
            CartEvent::ItemAdded { sku } => self.items.push(sku.clone()),
            CartEvent::CheckedOut => self.checked_out = true,
        }
    }

    fn decide(&self, c: CartCommand) -> std::result::Result<Vec<CartEvent>, String> {
        if self.checked_out {
            return Err("cart is checked out".into());
        }
        Ok(match c {
            CartCommand::Add(sku) => vec![CartEvent::ItemAdded { sku }],
            CartCommand::CheckOut => vec![CartEvent::CheckedOut],
        })
    }
}

/// Version-1 `ItemAdded` events stored `{"type":"ItemAdded","product":…}`; version 2
/// renamed `product` to `sku`.
fn cart_store_builder(store: &Store) -> larder::events::EventStoreBuilder {
    EventStore::builder(store).upcast_json("ItemAdded", 1, |mut v| {
        if let Some(p) = v.as_object_mut().and_then(|o| o.remove("product")) {
            v["sku"] = p;
        }
        Ok(v)
    })
}

/// Aggregates: load = newest snapshot + tail (snapshot every 3 events), save appends with
/// the loaded version (a concurrent save conflicts), decide refuses.
pub async fn aggregates_load_snapshot_plus_tail_and_save_with_expected_version(db: &TestDb) {
    let es = cart_store_builder(&db.store).open().await.unwrap();
    let mut uow = db.store.begin().await.unwrap();
    let mut cart = es.load::<Cart>(&mut uow, "1").await.unwrap();
    assert_eq!(cart.version(), 0);
    for i in 0..4 {
        cart.handle(CartCommand::Add(format!("sku-{i}"))).unwrap();
    }
    es.save(&mut uow, &mut cart).await.unwrap();
    uow.commit().await.unwrap();
    assert_eq!(cart.version(), 4);

    let mut uow = db.store.begin().await.unwrap();
    let snap = es.load_snapshot(&mut uow, "cart-1").await.unwrap().unwrap();
    assert_eq!(
        snap.stream_version, 4,
        "crossed 3: snapshot at the saved version"
    );
    let mut a = es.load::<Cart>(&mut uow, "1").await.unwrap();
    assert_eq!(a.version(), 4);
    assert_eq!(a.state().items.len(), 4);
    a.handle(CartCommand::Add("sku-4".into())).unwrap();
    a.handle(CartCommand::CheckOut).unwrap();
    assert!(a.handle(CartCommand::Add("late".into())).is_err());
    assert!(es.save(&mut uow, &mut a).await.unwrap().is_some());
    assert!(
        es.save(&mut uow, &mut a).await.unwrap().is_none(),
        "nothing pending"
    );
    uow.commit().await.unwrap();

    // Loading uses the snapshot at version 6 and no tail: `applied` counts only what the
    // snapshot saw.
    let mut uow = db.store.begin().await.unwrap();
    let b = es.load::<Cart>(&mut uow, "1").await.unwrap();
    assert_eq!(b.version(), 6);
    assert_eq!(b.state().items.len(), 5);
    assert!(b.state().checked_out);
    // Two writers loaded the same version: the second save conflicts.
    let mut stale = Aggregate::<Cart>::new("2");
    stale.handle(CartCommand::Add("x".into())).unwrap();
    let mut fresh = Aggregate::<Cart>::new("2");
    fresh.handle(CartCommand::Add("y".into())).unwrap();
    es.save(&mut uow, &mut fresh).await.unwrap();
    let e = es.save(&mut uow, &mut stale).await.unwrap_err();
    assert_eq!(conflict_of(&e), ("cart-2".into(), 0, Some(1)));
    uow.commit().await.unwrap();
}

/// Upcasters run on `read_stream`, `read_all`, `stream_all`, subscriptions, aggregate
/// loads and projection rebuilds; an unknown type without an upcaster is a typed error.
pub async fn upcasters_apply_on_every_read_path(db: &TestDb) {
    let plain = events(db).await;
    // Two old (v1) events written before the upcaster existed, one unknown type.
    let old = |sku: &str| {
        EventData::new("ItemAdded", &json!({"type": "ItemAdded", "product": sku})).unwrap()
    };
    append(
        &plain,
        "cart-9",
        ExpectedVersion::NoStream,
        vec![old("a"), old("b")],
    )
    .await;
    let es = cart_store_builder(&db.store).open().await.unwrap();
    let check = |e: &RecordedEvent| {
        assert_eq!(e.schema_version, 2);
        let c: CartEvent = e.decode().unwrap();
        assert!(matches!(c, CartEvent::ItemAdded { .. }));
    };
    let s = read_stream(&es, "cart-9").await;
    s.iter().for_each(check);
    read_all(&es, Checkpoint::START, 10, &EventFilter::all())
        .await
        .events
        .iter()
        .for_each(check);
    let streamed: Vec<_> = es
        .stream_all(Checkpoint::START, EventFilter::all(), 1)
        .collect()
        .await;
    assert_eq!(streamed.len(), 2);
    streamed.iter().for_each(|e| check(e.as_ref().unwrap()));
    let mut sub = es.subscribe(Checkpoint::START, EventFilter::all());
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        check(&e);
    }
    drop(sub);
    let mut uow = db.store.begin().await.unwrap();
    let cart = es.load::<Cart>(&mut uow, "9").await.unwrap();
    assert_eq!(cart.state().items, ["a", "b"]);
    drop(uow);
    // Through a projection rebuild.
    let seen = Arc::new(AtomicU64::new(0));
    let runner = ProjectionRunner::new(&es).with(Check { seen: seen.clone() });
    runner.catch_up().await.unwrap();
    assert_eq!(seen.load(Ordering::SeqCst), 2);
    let n = runner.rebuild("upcast_check", |_| {}).await.unwrap();
    assert_eq!(n, 2);
    assert_eq!(seen.load(Ordering::SeqCst), 4);
    // Without the upcaster, decoding the v1 event is a typed error.
    let raw = read_stream(&plain, "cart-9").await;
    let e = raw[0].decode::<CartEvent>().unwrap_err();
    assert!(
        matches!(
            e,
            Error::UnknownEventType {
                schema_version: 1,
                ..
            }
        ),
        "{e:?}"
    );
    append(
        &plain,
        "cart-9",
        ExpectedVersion::Exact(2),
        vec![ev("Mystery", 1)],
    )
    .await;
    let mut uow = db.store.begin().await.unwrap();
    let e = es.load::<Cart>(&mut uow, "9").await.unwrap_err();
    assert!(matches!(e, Error::UnknownEventType { .. }), "{e:?}");
}

struct Check {
    seen: Arc<AtomicU64>,
}

impl Projection for Check {
    fn name(&self) -> &str {
        "upcast_check"
    }
    async fn handle(&self, _uow: &mut Uow, e: &RecordedEvent) -> Result<()> {
        assert_eq!(e.schema_version, 2);
        e.decode::<CartEvent>()?;
        self.seen.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// A projection counting events into a `Counter` row, in the batch's unit of work.
struct Count {
    name: &'static str,
    filter: EventFilter,
    fail_on: Option<i64>,
}

impl Projection for Count {
    fn name(&self) -> &str {
        self.name
    }
    fn filter(&self) -> EventFilter {
        self.filter.clone()
    }
    async fn handle(&self, uow: &mut Uow, e: &RecordedEvent) -> Result<()> {
        if Some(n_of(e)) == self.fail_on {
            return Err(Error::callback("projection", "poison event"));
        }
        let id = self.name.to_owned();
        let mut repo = uow.repo::<Counter>();
        match repo.get(&id).await? {
            Some(mut c) => {
                c.value.count += 1;
                repo.save(&mut c).await?;
            }
            None => {
                repo.insert(&Counter { id, count: 1 }).await?;
            }
        }
        Ok(())
    }
    async fn reset(&self, uow: &mut Uow) -> Result<()> {
        let id = self.name.to_owned();
        if let Some(c) = uow.repo::<Counter>().get(&id).await? {
            uow.repo::<Counter>().delete(&id, c.version).await?;
        }
        Ok(())
    }
}

async fn count_of(store: &Store, name: &str) -> i64 {
    let mut uow = store.read().await.unwrap();
    let c = uow.repo::<Counter>().get(&name.to_owned()).await.unwrap();
    c.map_or(0, |c| c.value.count)
}

/// Two runners of one projection catching up at the same time, in small batches (so every
/// batch reads the next one ahead while it commits), while a writer keeps appending:
/// every event is applied exactly once (a read-ahead whose start the other runner moved
/// is thrown away, never applied). Canary: using a read-ahead without comparing its start
/// with the claimed checkpoint fails this rule on SQLite and PostgreSQL (applied twice).
pub async fn concurrent_runners_with_read_ahead_apply_every_event_once(db: &TestDb) {
    db.store.register::<Counter>().await.unwrap();
    let es = events(db).await;
    for i in 0..30 {
        append(&es, "ra-1", ExpectedVersion::Any, vec![ev("A", i)]).await;
    }
    let runner = || {
        ProjectionRunner::new(&es).batch_size(3).with(Count {
            name: "ahead",
            filter: EventFilter::all(),
            fail_on: None,
        })
    };
    let (a, b) = (runner(), runner());
    let writer = async {
        for i in 30..50 {
            append(&es, "ra-2", ExpectedVersion::Any, vec![ev("A", i)]).await;
        }
    };
    let (ra, rb, ()) = tokio::join!(a.catch_up(), b.catch_up(), writer);
    let handled = ra.unwrap() + rb.unwrap();
    // Whatever the writer appended after both had caught up is picked up now.
    let rest = runner().catch_up().await.unwrap();
    assert_eq!(
        handled + rest,
        50,
        "every event handled once across runners"
    );
    assert_eq!(
        count_of(&db.store, "ahead").await,
        50,
        "applied exactly once"
    );
}

/// Projections commit their checkpoint with their read-model writes: a failing batch
/// rolls both back; side-by-side projections, status and lag, rebuild with progress.
pub async fn projections_commit_checkpoints_with_their_writes(db: &TestDb) {
    db.store.register::<Counter>().await.unwrap();
    let es = events(db).await;
    for i in 0..10 {
        let stream = if i % 2 == 0 { "even-1" } else { "odd-1" };
        append(&es, stream, ExpectedVersion::Any, vec![ev("A", i)]).await;
    }
    // A poison event stops the runner; nothing of its batch is committed.
    let bad = ProjectionRunner::new(&es).batch_size(4).with(Count {
        name: "all",
        filter: EventFilter::all(),
        fail_on: Some(6),
    });
    let e = bad.catch_up().await.unwrap_err();
    assert!(matches!(e, Error::Callback { .. }), "{e:?}");
    assert_eq!(count_of(&db.store, "all").await, 4, "first batch only");
    let status = bad.status().await.unwrap();
    assert_eq!(status[0].lag, 6);

    let runner = ProjectionRunner::new(&es)
        .batch_size(4)
        .with(Count {
            name: "all",
            filter: EventFilter::all(),
            fail_on: None,
        })
        .with(Count {
            name: "even",
            filter: EventFilter::category("even"),
            fail_on: None,
        });
    assert_eq!(runner.catch_up().await.unwrap(), 6 + 5);
    assert_eq!(
        count_of(&db.store, "all").await,
        10,
        "resumed, nothing applied twice"
    );
    assert_eq!(count_of(&db.store, "even").await, 5);
    let status = runner.status().await.unwrap();
    assert!(
        status.iter().all(|s| s.lag == 0 && s.checkpoint.is_some()),
        "{status:?}"
    );
    assert_eq!(runner.catch_up().await.unwrap(), 0);

    let mut progress = Vec::new();
    let n = runner.rebuild("all", |p| progress.push(p)).await.unwrap();
    assert_eq!(n, 10);
    assert_eq!(count_of(&db.store, "all").await, 10, "reset, then replayed");
    assert_eq!(progress.last().map(|p| (p.done, p.total)), Some((10, 10)));
    assert!(matches!(
        runner.rebuild("nope", |_| {}).await,
        Err(Error::NotFound { .. })
    ));
    let dup = ProjectionRunner::new(&es)
        .with(Count {
            name: "x",
            filter: EventFilter::all(),
            fail_on: None,
        })
        .with(Count {
            name: "x",
            filter: EventFilter::all(),
            fail_on: None,
        });
    assert!(dup.catch_up().await.is_err());
}

/// Read-your-writes: a runner follows the log; `wait_for(position)` returns once the
/// projection has processed a committed unit of work; an unreachable position times out
/// with `DeadlineExceeded`.
pub async fn wait_for_gives_read_your_writes(db: &TestDb) {
    db.store.register::<Counter>().await.unwrap();
    let es = EventStore::builder(&db.store)
        .poll_interval(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    let runner = ProjectionRunner::new(&es).with(Count {
        name: "live",
        filter: EventFilter::all(),
        fail_on: None,
    });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        runner
            .run(async {
                let _ = stop_rx.await;
            })
            .await
    });
    for i in 1..=3 {
        let pos = append(&es, "w-1", ExpectedVersion::Any, vec![ev("A", i)]).await;
        es.wait_for("live", pos, Deadline::after(Duration::from_secs(10)))
            .await
            .unwrap();
        assert_eq!(count_of(&db.store, "live").await, i);
    }
    let far = Checkpoint::new(u64::MAX >> 2, 1);
    let e = es
        .wait_for("live", far, Deadline::after(Duration::from_millis(200)))
        .await
        .unwrap_err();
    assert!(matches!(e, Error::DeadlineExceeded { .. }), "{e:?}");
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
}

async fn next(sub: &mut larder::events::Subscription) -> RecordedEvent {
    tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .expect("event within 10 s")
        .unwrap()
        .unwrap()
}

/// A subscription catches up, then follows new commits live, in log order, and reports
/// its lag.
pub async fn subscriptions_catch_up_then_follow_live(db: &TestDb) {
    let es = EventStore::builder(&db.store)
        .poll_interval(Duration::from_millis(100))
        .open()
        .await
        .unwrap();
    append(
        &es,
        "l-1",
        ExpectedVersion::Any,
        vec![ev("A", 1), ev("A", 2)],
    )
    .await;
    let mut sub = es.subscribe_with(Checkpoint::START, EventFilter::all(), 1);
    assert_eq!(n_of(&next(&mut sub).await), 1);
    assert_eq!(n_of(&next(&mut sub).await), 2);
    append(&es, "l-2", ExpectedVersion::Any, vec![ev("A", 3)]).await;
    append(
        &es,
        "l-1",
        ExpectedVersion::Any,
        vec![ev("A", 4), ev("A", 5)],
    )
    .await;
    let live: Vec<i64> = [
        next(&mut sub).await,
        next(&mut sub).await,
        next(&mut sub).await,
    ]
    .iter()
    .map(n_of)
    .collect();
    assert_eq!(live, [3, 4, 5]);
    assert_eq!(sub.lag().await.unwrap(), 0);
    let cp = sub.checkpoint();
    drop(sub);
    // Resuming from the subscription's checkpoint delivers only what came after.
    append(&es, "l-3", ExpectedVersion::Any, vec![ev("A", 6)]).await;
    let mut sub = es.subscribe(cp, EventFilter::all());
    assert_eq!(n_of(&next(&mut sub).await), 6);
}

/// The last event in the log, read by a fresh unit of work.
async fn last_position(es: &EventStore) -> Option<Checkpoint> {
    settle(es).await;
    let mut cp = Checkpoint::START;
    let mut last = None;
    loop {
        let page = read_all(es, cp, 1000, &EventFilter::all()).await;
        if let Some(e) = page.events.last() {
            last = Some(e.checkpoint);
        }
        cp = page.next;
        if page.end_of_log {
            return last;
        }
    }
}

/// Issue 8 D3: `Committed::position` is the last event that committed in the unit of work
/// (or `None`): appends undone by a savepoint do not count, and on SQLite, where an undone
/// position is handed out again, the reported position is the event that holds it.
pub async fn committed_position_forgets_appends_rolled_back_by_a_savepoint(db: &TestDb) {
    let es = events(db).await;
    // Only append undone by a savepoint: no position.
    let mut uow = db.store.begin().await.unwrap();
    let es2 = es.clone();
    let r: Result<()> = uow
        .savepoint(|u| {
            Box::pin(async move {
                es2.append(u, "sp-1", ExpectedVersion::Any, vec![ev("A", 1)])
                    .await?;
                Err(Error::InvalidEvent("undo".into()))
            })
        })
        .await;
    assert!(r.is_err());
    let c = uow.commit().await.unwrap();
    assert_eq!(c.position, None, "nothing committed in this unit of work");
    assert_eq!(last_position(&es).await, None);

    // A kept append, then one undone: the kept one is reported.
    let mut uow = db.store.begin().await.unwrap();
    es.append(&mut uow, "sp-2", ExpectedVersion::Any, vec![ev("A", 2)])
        .await
        .unwrap();
    let es2 = es.clone();
    let _ = uow
        .savepoint(|u| {
            Box::pin(async move {
                es2.append(u, "sp-3", ExpectedVersion::Any, vec![ev("A", 3)])
                    .await?;
                Err::<(), _>(Error::InvalidEvent("undo".into()))
            })
        })
        .await;
    let c = uow.commit().await.unwrap();
    assert_eq!(c.position, last_position(&es).await);
    assert!(c.position.is_some());

    // Undone, then appended again (SQLite reuses the undone position): the reported
    // position is that of the event that committed.
    let mut uow = db.store.begin().await.unwrap();
    let es2 = es.clone();
    let _ = uow
        .savepoint(|u| {
            Box::pin(async move {
                es2.append(
                    u,
                    "sp-4",
                    ExpectedVersion::Any,
                    vec![ev("A", 4), ev("A", 5)],
                )
                .await?;
                Err::<(), _>(Error::InvalidEvent("undo".into()))
            })
        })
        .await;
    es.append(&mut uow, "sp-5", ExpectedVersion::Any, vec![ev("A", 6)])
        .await
        .unwrap();
    let c = uow.commit().await.unwrap();
    let last = last_position(&es).await;
    assert_eq!(c.position, last);
    let page = read_all(&es, Checkpoint::START, 1000, &EventFilter::all()).await;
    let at = page
        .events
        .iter()
        .find(|e| Some(e.checkpoint) == c.position)
        .expect("the reported position holds an event");
    assert_eq!(at.stream_id, "sp-5");
    // A projection that has caught up sees the position as reached.
    assert!(read_stream(&es, "sp-4").await.is_empty());
}

// ---------------------------------------------------------------------------------------
// Projection failure policy (issue 9: projections that survive)

/// `Count`, with failures on the event whose `n` is `fail_on`: transient ones (while
/// `transient_left` is above 0, or while `gate` is closed) or permanent ones.
struct Flaky {
    count: Count,
    fail_on: i64,
    permanent: bool,
    transient_left: Arc<AtomicU64>,
    gate: Arc<std::sync::atomic::AtomicBool>,
    /// Handler calls on the failing event.
    calls: Arc<AtomicU64>,
}

impl Flaky {
    fn new(name: &'static str, fail_on: i64, permanent: bool, transient: u64) -> Flaky {
        Flaky {
            count: Count {
                name,
                filter: EventFilter::all(),
                fail_on: None,
            },
            fail_on,
            permanent,
            transient_left: Arc::new(AtomicU64::new(transient)),
            gate: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            calls: Arc::default(),
        }
    }
}

impl Projection for Flaky {
    fn name(&self) -> &str {
        self.count.name
    }
    async fn handle(&self, uow: &mut Uow, e: &RecordedEvent) -> Result<()> {
        if n_of(e) == self.fail_on {
            self.calls.fetch_add(1, Ordering::SeqCst);
            if self.permanent {
                return Err(Error::callback("projection", "poison event"));
            }
            let left = self.transient_left.load(Ordering::SeqCst);
            if left > 0 || !self.gate.load(Ordering::SeqCst) {
                self.transient_left
                    .store(left.saturating_sub(1), Ordering::SeqCst);
                return Err(Error::Transient {
                    kind: larder::TransientKind::Deadlock,
                });
            }
        }
        self.count.handle(uow, e).await
    }
}

fn status_of<'a>(
    all: &'a [larder::events::ProjectionStatus],
    name: &str,
) -> &'a larder::events::ProjectionStatus {
    all.iter()
        .find(|s| s.name == name)
        .expect("projection listed")
}

fn fast_retries() -> larder::events::ProjectionRetry {
    larder::events::ProjectionRetry::default()
        .with_backoff(Duration::from_millis(1), Duration::from_millis(20))
}

/// Polls `cond` every 10 ms for at most 10 s.
async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("{what}: not within 10 s");
}

/// Issue 9: a handler that fails transiently is retried with backoff (not counted against
/// the handler budget, visible in the status) until it succeeds, while a second projection
/// keeps up; both end caught up and nothing is applied twice.
pub async fn projections_retry_transient_failures_while_others_keep_up(db: &TestDb) {
    use larder::events::ProjectionState;
    db.store.register::<Counter>().await.unwrap();
    let es = EventStore::builder(&db.store)
        .poll_interval(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    let mut head = Checkpoint::START;
    let mut ids = Vec::new();
    for i in 0..10 {
        head = append(&es, "tr-1", ExpectedVersion::Any, vec![ev("A", i)]).await;
    }
    for e in read_stream(&es, "tr-1").await {
        ids.push(e.event_id);
    }

    // Exactly three transient failures on event 5, then success: `catch_up` ends caught
    // up (max_retries 0: transient failures do not use the handler budget).
    let flaky = Flaky::new("flaky3", 5, false, 3);
    let calls = flaky.calls.clone();
    let runner = ProjectionRunner::new(&es)
        .batch_size(4)
        .with_retry(fast_retries().with_max_retries(0))
        .with(flaky)
        .with(Count {
            name: "steady3",
            filter: EventFilter::all(),
            fail_on: None,
        });
    assert_eq!(runner.catch_up().await.unwrap(), 20);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        4,
        "three failures, then success"
    );
    assert_eq!(
        count_of(&db.store, "flaky3").await,
        10,
        "nothing applied twice"
    );
    assert_eq!(count_of(&db.store, "steady3").await, 10);
    let status = runner.status().await.unwrap();
    let f = status_of(&status, "flaky3");
    assert_eq!((f.lag, f.retries, f.state), (0, 3, ProjectionState::Idle));
    let last = f.last_error.as_ref().expect("last error kept");
    assert!(last.transient && last.error_type == "transient", "{last:?}");
    assert_eq!(last.attempts, 3);
    assert_eq!(last.event.as_ref().map(|e| e.event_id), Some(ids[5]));
    let s = status_of(&status, "steady3");
    assert_eq!((s.lag, s.retries, &s.last_error), (0, 0, &None));

    // Live: `flaky` keeps failing (gate closed) while `steady` follows the log to its
    // head; then it recovers and catches up too.
    let flaky = Flaky::new("flaky", 5, false, 3);
    let (gate, calls) = (flaky.gate.clone(), flaky.calls.clone());
    gate.store(false, Ordering::SeqCst);
    let runner = ProjectionRunner::new(&es)
        .batch_size(4)
        .with_retry(fast_retries())
        .with(flaky)
        .with(Count {
            name: "steady",
            filter: EventFilter::all(),
            fail_on: None,
        });
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    es.wait_for("steady", head, Deadline::after(Duration::from_secs(20)))
        .await
        .unwrap();
    eventually("three failed attempts", || {
        calls.load(Ordering::SeqCst) >= 3
    })
    .await;
    assert_eq!(count_of(&db.store, "steady").await, 10);
    assert_eq!(
        count_of(&db.store, "flaky").await,
        4,
        "the batch before event 5"
    );
    let status = runner.status().await.unwrap();
    let f = status_of(&status, "flaky");
    assert!(f.retries >= 2, "{f:?}");
    assert!(
        matches!(
            f.state,
            ProjectionState::Retrying | ProjectionState::Running
        ),
        "{f:?}"
    );
    assert!(f.checkpoint.unwrap_or(Checkpoint::START) < head);
    assert_eq!(
        f.last_error
            .as_ref()
            .and_then(|l| l.event.as_ref())
            .map(|e| e.event_id),
        Some(ids[5])
    );
    assert_eq!(status_of(&status, "steady").lag, 0);

    gate.store(true, Ordering::SeqCst);
    es.wait_for("flaky", head, Deadline::after(Duration::from_secs(20)))
        .await
        .unwrap();
    assert_eq!(
        count_of(&db.store, "flaky").await,
        10,
        "nothing applied twice"
    );
    let status = runner.status().await.unwrap();
    let f = status_of(&status, "flaky");
    assert_eq!((f.lag, f.state), (0, ProjectionState::Running), "{f:?}");
    assert!(f.retries >= 3, "{f:?}");
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    let status = runner.status().await.unwrap();
    assert_eq!(status_of(&status, "flaky").state, ProjectionState::Idle);
}

/// Spans named `larder.projection.batch`, with their fields, recorded while `f` runs.
async fn batch_spans<F: std::future::Future>(
    f: F,
) -> (F::Output, Vec<std::collections::HashMap<String, String>>) {
    use tracing::instrument::WithSubscriber;
    use tracing_subscriber::layer::SubscriberExt;

    type Fields = std::collections::HashMap<String, String>;
    #[derive(Clone, Default)]
    struct Spans(Arc<std::sync::Mutex<Vec<(u64, Fields)>>>);
    struct V<'a>(&'a mut Fields);
    impl tracing::field::Visit for V<'_> {
        fn record_debug(&mut self, f: &tracing::field::Field, v: &dyn std::fmt::Debug) {
            let v = format!("{v:?}").trim_matches('"').to_owned();
            self.0.insert(f.name().to_owned(), v);
        }
    }
    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Spans {
        fn on_new_span(
            &self,
            attrs: &tracing::span::Attributes<'_>,
            id: &tracing::span::Id,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            if attrs.metadata().name() == "larder.projection.batch" {
                let mut fields = Fields::new();
                attrs.record(&mut V(&mut fields));
                self.0.lock().unwrap().push((id.into_u64(), fields));
            }
        }
        fn on_record(
            &self,
            id: &tracing::span::Id,
            values: &tracing::span::Record<'_>,
            _: tracing_subscriber::layer::Context<'_, S>,
        ) {
            let mut spans = self.0.lock().unwrap();
            if let Some((_, fields)) = spans.iter_mut().rev().find(|(i, _)| *i == id.into_u64()) {
                values.record(&mut V(fields));
            }
        }
    }
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let out = f.with_subscriber(subscriber).await;
    let fields = spans.0.lock().unwrap().drain(..).map(|(_, f)| f).collect();
    (out, fields)
}

/// Issue 9: a handler that keeps failing is retried `max_retries` times, then its
/// projection alone is stopped: the status shows the failing event and the error, the
/// checkpoint does not pass the failing event, each failed batch's span carries
/// `error.type`, and the other projection keeps up — in `catch_up` and in `run`.
pub async fn a_failing_projection_stops_alone_with_the_failing_event_in_its_status(db: &TestDb) {
    use larder::events::ProjectionState;
    db.store.register::<Counter>().await.unwrap();
    let es = EventStore::builder(&db.store)
        .poll_interval(Duration::from_millis(50))
        .open()
        .await
        .unwrap();
    for i in 0..10 {
        append(&es, "pf-1", ExpectedVersion::Any, vec![ev("A", i)]).await;
    }
    let poison = read_stream(&es, "pf-1").await.remove(6);
    let flaky = Flaky::new("poisoned", 6, true, 0);
    let calls = flaky.calls.clone();
    let runner = ProjectionRunner::new(&es)
        .batch_size(4)
        .with_retry(fast_retries().with_max_retries(2))
        .with(flaky)
        .with(Count {
            name: "healthy",
            filter: EventFilter::all(),
            fail_on: None,
        });
    let (r, spans) = batch_spans(runner.catch_up()).await;
    let e = r.unwrap_err();
    assert!(matches!(e, Error::Callback { .. }), "{e:?}");
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one try and two retries");
    assert_eq!(count_of(&db.store, "poisoned").await, 4, "first batch only");
    assert_eq!(
        count_of(&db.store, "healthy").await,
        10,
        "the other kept up"
    );

    let status = runner.status().await.unwrap();
    let p = status_of(&status, "poisoned");
    assert_eq!(
        (p.state, p.retries, p.lag),
        (ProjectionState::Stopped, 2, 6)
    );
    let cp = p.checkpoint.expect("first batch committed");
    assert!(
        cp < poison.checkpoint,
        "checkpoint passed the failing event"
    );
    let last = p.last_error.as_ref().expect("error in status");
    assert_eq!((last.error_type, last.transient), ("callback", false));
    assert!(last.message.contains("poison event"), "{last:?}");
    assert_eq!(last.attempts, 3);
    let failed = last.event.as_ref().expect("failing event in status");
    assert_eq!(
        (failed.checkpoint, failed.event_id, failed.stream_version),
        (poison.checkpoint, poison.event_id, poison.stream_version)
    );
    let h = status_of(&status, "healthy");
    assert_eq!(
        (h.state, h.lag, &h.last_error),
        (ProjectionState::Idle, 0, &None)
    );

    let failed_spans = spans
        .iter()
        .filter(|s| s.get("larder.projection").map(String::as_str) == Some("poisoned"))
        .filter(|s| s.get("error.type").map(String::as_str) == Some("callback"))
        .count();
    assert_eq!(failed_spans, 3, "{spans:?}");
    assert!(
        spans
            .iter()
            .filter(|s| s.get("larder.projection").map(String::as_str) == Some("healthy"))
            .all(|s| !s.contains_key("error.type") && s.contains_key("larder.events")),
        "{spans:?}"
    );

    // Live: the poisoned projection stops again, `run` keeps the healthy one following
    // new events until shutdown.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn({
        let runner = runner.clone();
        async move {
            runner
                .run(async {
                    let _ = stop_rx.await;
                })
                .await
        }
    });
    let head = append(&es, "pf-2", ExpectedVersion::Any, vec![ev("A", 11)]).await;
    es.wait_for("healthy", head, Deadline::after(Duration::from_secs(20)))
        .await
        .unwrap();
    eventually("the poisoned projection stopped again", || {
        calls.load(Ordering::SeqCst) >= 6
    })
    .await;
    let status = runner.status().await.unwrap();
    let p = status_of(&status, "poisoned");
    assert_eq!(p.state, ProjectionState::Stopped, "{p:?}");
    assert_eq!(p.checkpoint, Some(cp), "still before the failing event");
    assert_eq!(status_of(&status, "healthy").lag, 0);
    assert!(
        !task.is_finished(),
        "a stopped projection does not stop run"
    );
    let _ = stop_tx.send(());
    task.await.unwrap().unwrap();
    assert_eq!(count_of(&db.store, "healthy").await, 11);
}

/// Issue 10: adaptive batches stay between their bounds, a failed batch is retried at half
/// its size (`larder.batch_size` on the batch spans), and every event is still applied
/// exactly once.
pub async fn adaptive_batches_shrink_after_a_failure_and_apply_every_event_once(db: &TestDb) {
    db.store.register::<Counter>().await.unwrap();
    let es = events(db).await;
    for i in 0..20 {
        append(&es, "ad-1", ExpectedVersion::Any, vec![ev("A", i)]).await;
    }
    let flaky = Flaky::new("adaptive", 5, false, 1);
    let runner = ProjectionRunner::new(&es)
        .adaptive_batches(1, 4)
        .with_retry(fast_retries())
        .with(flaky);
    let (handled, spans) = batch_spans(runner.catch_up()).await;
    assert_eq!(handled.unwrap(), 20);
    assert_eq!(
        count_of(&db.store, "adaptive").await,
        20,
        "applied exactly once"
    );
    let size = |f: &std::collections::HashMap<String, String>| -> u32 {
        f.get("larder.batch_size")
            .expect("batch size")
            .parse()
            .unwrap()
    };
    assert!(
        spans.iter().all(|f| (1..=4).contains(&size(f))),
        "{spans:?}"
    );
    let failed = spans
        .iter()
        .position(|f| f.contains_key("error.type"))
        .expect("one failed batch");
    let (at_failure, retried) = (size(&spans[failed]), size(&spans[failed + 1]));
    assert!(
        retried <= (at_failure / 2).max(1),
        "a batch of {at_failure} failed, retried with {retried}: {spans:?}"
    );
}

/// A projection taking borrowed pages (`handle_page`): one `Counter` write per page in the
/// batch's unit of work, the payloads' `n` recorded in order; fails on `fail_on`.
struct PageCount {
    name: &'static str,
    seen: Arc<std::sync::Mutex<Vec<i64>>>,
    fail_on: Option<i64>,
}

impl Projection for PageCount {
    fn name(&self) -> &str {
        self.name
    }
    async fn handle(&self, _: &mut Uow, _: &RecordedEvent) -> Result<()> {
        unreachable!("the runner hands pages to handle_page")
    }
    async fn handle_page(
        &self,
        uow: &mut Uow,
        page: &larder::events::EventPage,
    ) -> std::result::Result<(), larder::events::BatchError> {
        use larder::events::BatchError;
        let mut ns = Vec::with_capacity(page.len());
        for (i, e) in page.iter().enumerate() {
            let n = e
                .and_then(|e| e.payload_as::<serde_json::Value>())
                .map_err(|e| BatchError::at(i, e))?["n"]
                .as_i64()
                .unwrap();
            if Some(n) == self.fail_on {
                return Err(BatchError::at(
                    i,
                    Error::callback("projection", "poison event"),
                ));
            }
            ns.push(n);
        }
        let id = self.name.to_owned();
        let mut repo = uow.repo::<Counter>();
        let added = i64::try_from(ns.len()).unwrap();
        match repo.get(&id).await? {
            Some(mut c) => {
                c.value.count += added;
                repo.save(&mut c).await?;
            }
            None => {
                repo.insert(&Counter { id, count: added }).await?;
            }
        }
        self.seen.lock().unwrap().extend(ns);
        Ok(())
    }
}

/// Issue 10: a projection that takes borrowed pages (`Projection::handle_page`) sees every
/// event once and in log order, its SQL write committing with the checkpoint; a later
/// catch-up hands it only the new events; a failure naming an event of the page stops it
/// with that event in its status and the checkpoint before it.
pub async fn projections_take_borrowed_pages(db: &TestDb) {
    use larder::events::ProjectionState;
    db.store.register::<Counter>().await.unwrap();
    let es = events(db).await;
    for i in 0..25 {
        append(&es, "bp-1", ExpectedVersion::Any, vec![ev("A", i)]).await;
    }
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let runner = ProjectionRunner::new(&es).batch_size(7).with(PageCount {
        name: "paged",
        seen: seen.clone(),
        fail_on: None,
    });
    assert_eq!(runner.catch_up().await.unwrap(), 25);
    assert_eq!(count_of(&db.store, "paged").await, 25);
    for i in 25..30 {
        append(&es, "bp-2", ExpectedVersion::Any, vec![ev("A", i)]).await;
    }
    assert_eq!(runner.catch_up().await.unwrap(), 5);
    assert_eq!(count_of(&db.store, "paged").await, 30);
    assert_eq!(*seen.lock().unwrap(), (0..30).collect::<Vec<_>>());

    let poison = read_stream(&es, "bp-1").await.remove(12);
    let failing = ProjectionRunner::new(&es)
        .batch_size(10)
        .with_retry(fast_retries().with_max_retries(0))
        .with(PageCount {
            name: "paged_poison",
            seen: Arc::default(),
            fail_on: Some(12),
        });
    let e = failing.catch_up().await.unwrap_err();
    assert!(matches!(e, Error::Callback { .. }), "{e:?}");
    assert_eq!(
        count_of(&db.store, "paged_poison").await,
        10,
        "first page only"
    );
    let status = failing.status().await.unwrap();
    let p = status_of(&status, "paged_poison");
    assert_eq!(p.state, ProjectionState::Stopped);
    assert!(p.checkpoint.expect("first page committed") < poison.checkpoint);
    let failed = p
        .last_error
        .as_ref()
        .and_then(|l| l.event.as_ref())
        .expect("failing event in status");
    assert_eq!(
        (
            failed.checkpoint,
            failed.event_id,
            failed.stream_id.as_str()
        ),
        (poison.checkpoint, poison.event_id, "bp-1")
    );
}
