//! A4: a long, unrelated transaction holds the PostgreSQL commit horizon back. Readers
//! lag behind it but never advance past it unsafely, and the lag is visible.

use std::time::Duration;

use larder::events::{Checkpoint, EventData, EventFilter, EventStore, ExpectedVersion};
use larder::postgres::PgUowExt;
use larder_testkit::backends;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a4_long_unrelated_transaction_makes_readers_lag_not_skip() {
    let Some(db) = backends::postgres("event_horizon::a4").await else {
        return;
    };
    let es = EventStore::open(&db.store).await.unwrap();
    let append = async |n: i64| {
        let mut uow = db.store.begin().await.unwrap();
        es.append(
            &mut uow,
            "a4-1",
            ExpectedVersion::Any,
            vec![EventData::new("A", &serde_json::json!({ "n": n })).unwrap()],
        )
        .await
        .unwrap();
        uow.commit().await.unwrap().position.unwrap()
    };
    let first = append(1).await;
    larder_testkit::events::settle(&es).await;

    // An unrelated transaction that has written something (so it holds a transaction id)
    // and stays open.
    let mut long = db.store.begin().await.unwrap();
    sqlx::query("CREATE TEMP TABLE unrelated (x int)")
        .execute(long.postgres().unwrap())
        .await
        .unwrap();
    sqlx::query("INSERT INTO unrelated VALUES (1)")
        .execute(long.postgres().unwrap())
        .await
        .unwrap();

    let second = append(2).await;
    assert!(second > first);

    let mut uow = db.store.read().await.unwrap();
    let page = es
        .read_all(&mut uow, Checkpoint::START, 100, &EventFilter::all())
        .await
        .unwrap();
    // Other tests' transactions may hold the horizon back further (it is cluster-wide),
    // never less far.
    assert!(page.events.len() <= 1, "only the event below the horizon");
    assert!(page.events.iter().all(|e| e.checkpoint == first));
    assert!(
        page.next < second,
        "the checkpoint must not pass the held-back event"
    );
    let lag = es.count_after(&mut uow, page.next, 1_000).await.unwrap();
    assert!(lag >= 1, "the held-back event shows up as lag");
    drop(uow);

    // A subscription does not deliver it either, for as long as the transaction is open.
    let mut sub = es.subscribe(page.next, EventFilter::all());
    let early = tokio::time::timeout(
        Duration::from_millis(600),
        futures_util::StreamExt::next(&mut sub),
    )
    .await;
    assert!(early.is_err(), "nothing may be delivered past the horizon");

    long.commit().await.unwrap();
    let e = tokio::time::timeout(
        Duration::from_secs(10),
        futures_util::StreamExt::next(&mut sub),
    )
    .await
    .expect("delivered once the long transaction ended")
    .unwrap()
    .unwrap();
    let e = if e.checkpoint == first {
        tokio::time::timeout(
            Duration::from_secs(10),
            futures_util::StreamExt::next(&mut sub),
        )
        .await
        .unwrap()
        .unwrap()
        .unwrap()
    } else {
        e
    };
    assert_eq!(e.checkpoint, second);
    drop(sub);
    db.finish().await;
}
