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
