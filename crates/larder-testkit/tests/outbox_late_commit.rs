//! D5: a transaction that enqueued first and commits last is neither skipped nor
//! overtaken within its key — the outbox obeys the event log's no-skip rule.
//!
//! PostgreSQL (deterministic interleaving): transaction A enqueues `k: first` (and so holds
//! a transaction id), transaction B enqueues `k: second` and commits, then A commits. A
//! canary reader that orders by position alone (what a relay keyed on ids, sequences or
//! `created_at` does) sees only `second` while A is open and would publish it first: the
//! test asserts the canary is caught. larder's relay publishes nothing of `k` while A is
//! open, then `first, second`.
//!
//! SQLite: one writer at a time, so the interleaving cannot happen — B waits for A's
//! commit; the relay publishes in commit order.

use std::time::{Duration, Instant};

use larder::outbox::{MemorySink, Message, Outbox};
use larder::postgres::PgUowExt;
use larder_testkit::backends;
use larder_testkit::outbox::relay;

fn bodies(sink: &MemorySink, key: &str) -> Vec<String> {
    sink.messages()
        .iter()
        .filter(|m| m.key.as_deref() == Some(key))
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_postgres_late_commit_is_neither_skipped_nor_overtaken() {
    let Some(db) = backends::postgres("outbox_late_commit::d5_pg").await else {
        return;
    };
    let ob = Outbox::open(&db.store).await.unwrap();
    let mut a = db.store.begin().await.unwrap();
    ob.enqueue(&mut a, Message::new("t", "first").with_key("k"))
        .await
        .unwrap();
    let mut b = db.store.begin().await.unwrap();
    ob.enqueue(&mut b, Message::new("t", "second").with_key("k"))
        .await
        .unwrap();
    b.commit().await.unwrap();

    // The canary: committed pending messages of `k` by position alone.
    let mut probe = db.store.read().await.unwrap();
    let naive: Vec<Vec<u8>> = sqlx::query_scalar(
        "SELECT payload FROM _larder_outbox WHERE state = 0 AND key = 'k' ORDER BY position",
    )
    .fetch_all(probe.postgres_bounded().await.unwrap())
    .await
    .unwrap();
    probe.commit().await.unwrap();
    assert_eq!(
        naive,
        [b"second".to_vec()],
        "canary: a reader ordering by position alone would publish `second` before `first`"
    );

    let sink = MemorySink::new();
    let r = relay(&db.store, "d5")
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    for _ in 0..5 {
        r.run_once().await.unwrap();
    }
    assert!(
        bodies(&sink, "k").is_empty(),
        "nothing of `k` may be published while the older transaction is open: {:?}",
        bodies(&sink, "k")
    );
    a.commit().await.unwrap();
    let t = Instant::now();
    while bodies(&sink, "k").len() < 2 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "not delivered: {:?}",
            bodies(&sink, "k")
        );
        r.run_once().await.unwrap();
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(bodies(&sink, "k"), ["first", "second"]);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn d5_sqlite_a_second_writer_waits_so_commit_order_is_log_order() {
    let Some(db) = backends::sqlite("outbox_late_commit::d5_sqlite").await else {
        return;
    };
    let ob = Outbox::open(&db.store).await.unwrap();
    let mut a = db.store.begin().await.unwrap();
    ob.enqueue(&mut a, Message::new("t", "first").with_key("k"))
        .await
        .unwrap();
    let b = {
        let (store, ob) = (db.store.clone(), ob.clone());
        tokio::spawn(async move {
            let mut b = store.begin().await.unwrap();
            ob.enqueue(&mut b, Message::new("t", "second").with_key("k"))
                .await
                .unwrap();
            b.commit().await.unwrap();
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!b.is_finished(), "the second writer waits for the first");
    a.commit().await.unwrap();
    b.await.unwrap();
    let sink = MemorySink::new();
    let r = relay(&db.store, "d5")
        .sink(sink.clone())
        .build()
        .await
        .unwrap();
    r.run_once().await.unwrap();
    assert_eq!(bodies(&sink, "k"), ["first", "second"]);
    db.finish().await;
}
