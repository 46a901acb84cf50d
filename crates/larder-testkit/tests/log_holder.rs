//! Who holds the log back: `EventStore::horizon_holder` names the oldest running
//! transaction with an id — here one in ANOTHER database of the cluster — that keeps
//! PostgreSQL readers below their horizon, and how many committed events it holds back.
//! Memory and SQLite have one writer at a time: nothing holds their log back.
//!
//! The holder session stalls every event-store test on the server while it is open, so it
//! stays open for a second or two at most: it is rolled back explicitly, closed on drop if
//! the test panics (the server ends the transaction when the socket closes), and the
//! server itself ends it after `idle_in_transaction_session_timeout` as the last backstop.

use std::str::FromStr;
use std::time::{Duration, Instant};

use larder::events::{
    Checkpoint, EventData, EventFilter, EventStore, ExpectedVersion, HorizonHolder, Projection,
    ProjectionRunner, RecordedEvent,
};
use larder::postgres::PgUowExt;
use larder_testkit::backends::{self, TestDb};
use sqlx::{Connection, Row};

/// The holder's application name, so the checks can tell it from other tests' sessions.
const HOLDER_APP: &str = "larder_log_holder_test";

/// A session in the `postgres` database (not the test's) whose transaction has an id and
/// stays idle: (connection, pid, transaction id).
async fn open_holder(url: &str) -> (sqlx::PgConnection, u32, u64) {
    let opts = sqlx::postgres::PgConnectOptions::from_str(url)
        .expect("postgres url")
        .database("postgres")
        .application_name(HOLDER_APP);
    let mut conn = sqlx::PgConnection::connect_with(&opts)
        .await
        .expect("connect to the postgres database");
    // The server ends the transaction by itself should this test die without closing.
    sqlx::query("SET idle_in_transaction_session_timeout = '10s'")
        .execute(&mut conn)
        .await
        .unwrap();
    sqlx::query("BEGIN").execute(&mut conn).await.unwrap();
    let row = sqlx::query("SELECT pg_backend_pid(), pg_current_xact_id()::text")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let pid = u32::try_from(row.get::<i32, _>(0)).unwrap();
    let xid: u64 = row.get::<String, _>(1).parse().unwrap();
    (conn, pid, xid)
}

/// A projection that does nothing (the status test only needs its checkpoint and lag).
struct Nothing;

impl Projection for Nothing {
    fn name(&self) -> &str {
        "nothing"
    }
    async fn handle(&self, _uow: &mut larder::Uow, _e: &RecordedEvent) -> larder::Result<()> {
        Ok(())
    }
}

async fn holder_of(es: &EventStore) -> Option<HorizonHolder> {
    let mut uow = es.store().read().await.unwrap();
    let h = es.horizon_holder(&mut uow).await.unwrap();
    uow.commit().await.unwrap();
    h
}

async fn append_one(es: &EventStore, stream: &str) -> Checkpoint {
    let mut uow = es.store().begin().await.unwrap();
    let r = es
        .append(
            &mut uow,
            stream,
            ExpectedVersion::Any,
            vec![EventData::new("Held", &serde_json::json!({ "n": 1 })).unwrap()],
        )
        .await
        .unwrap();
    uow.commit().await.unwrap();
    r.checkpoint
}

async fn readable(es: &EventStore) -> Vec<Checkpoint> {
    let mut uow = es.store().read().await.unwrap();
    let page = es
        .read_all(&mut uow, Checkpoint::START, 100, &EventFilter::all())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    page.events.iter().map(|e| e.checkpoint).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_names_an_idle_transaction_in_another_database() {
    let Some(db) = backends::postgres("log_holder::names_idle_transaction").await else {
        return;
    };
    let url = backends::postgres_url().unwrap();
    let es = EventStore::open(&db.store).await.unwrap();

    let (mut conn, pid, xid) = open_holder(&url).await;
    let event = append_one(&es, "held-1").await;
    assert!(event.tx() > xid, "the append is younger than the holder");

    // Readers cannot see the event while the older transaction runs (deterministic: the
    // horizon is at most the holder's id, below the event's).
    assert!(!readable(&es).await.contains(&event));

    // Another test's transaction may briefly be older still (the horizon is
    // cluster-wide): ask again until the holder is ours.
    let started = Instant::now();
    let h = loop {
        let h = holder_of(&es).await;
        if let Some(h) = &h
            && h.pid == Some(pid)
        {
            break h.clone();
        }
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "pid {pid} was never reported as the holder; last answer: {h:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(h.backend_xid, xid, "the reported id is the horizon: {h:?}");
    assert_eq!(h.database.as_deref(), Some("postgres"), "{h:?}");
    assert_eq!(h.application_name.as_deref(), Some(HOLDER_APP), "{h:?}");
    assert_eq!(h.state.as_deref(), Some("idle in transaction"), "{h:?}");
    assert_eq!(h.prepared_gid, None);
    assert!(h.transaction_age.is_some(), "{h:?}");
    assert!(h.held_events >= 1, "the appended event is held back: {h:?}");
    let line = h.to_string();
    assert!(
        line.starts_with(&format!(
            "held back by pid {pid} (database postgres, application {HOLDER_APP}, idle in \
             transaction for "
        )),
        "{line}"
    );
    assert!(line.contains("not yet readable"), "{line}");

    // A projection runner's status carries it too, next to the lag it explains. (The
    // status is read in one unit of work: ask again if another test's session was older.)
    let runner = ProjectionRunner::new(&es).with(Nothing);
    let started = Instant::now();
    let status = loop {
        let s = runner.status().await.unwrap().remove(0);
        if s.held_back_by.as_ref().and_then(|h| h.pid) == Some(pid)
            || started.elapsed() > Duration::from_secs(3)
        {
            break s;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let held = status
        .held_back_by
        .as_ref()
        .expect("a holder in the status");
    assert_eq!(held.pid, Some(pid), "{status:?}");
    assert!(held.held_events >= 1 && status.lag >= 1, "{status:?}");

    // Released: the event becomes readable and the pid is no longer reported (other
    // tests' transactions may hold the horizon for a moment: wait for them).
    sqlx::query("ROLLBACK").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    let started = Instant::now();
    loop {
        let seen = readable(&es).await.contains(&event);
        let still = holder_of(&es).await.filter(|h| h.pid == Some(pid));
        assert!(
            still.is_none(),
            "pid {pid} ended but is still reported: {still:?}"
        );
        if seen {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the event never became readable"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    db.finish().await;
}

/// The caller's own transaction is never reported, even when it is the horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_never_reports_the_callers_own_transaction() {
    let Some(db) = backends::postgres("log_holder::not_own_transaction").await else {
        return;
    };
    let es = EventStore::open(&db.store).await.unwrap();
    let mut uow = db.store.begin().await.unwrap();
    es.append(
        &mut uow,
        "own-1",
        ExpectedVersion::Any,
        vec![EventData::new("Own", &serde_json::json!({})).unwrap()],
    )
    .await
    .unwrap();
    let own: i32 = sqlx::query_scalar("SELECT pg_backend_pid()")
        .fetch_one(uow.postgres().unwrap())
        .await
        .unwrap();
    let h = es.horizon_holder(&mut uow).await.unwrap();
    assert!(
        h.as_ref().is_none_or(|h| h.pid != u32::try_from(own).ok()),
        "{h:?}"
    );
    uow.rollback().await.unwrap();
    db.finish().await;
}

/// Memory and SQLite (one writer at a time) never report a holder, not even while a
/// write unit of work that appended is open.
async fn single_writer_reports_no_holder(db: TestDb) {
    let es = EventStore::open(&db.store).await.unwrap();
    append_one(&es, "single-1").await;
    assert_eq!(holder_of(&es).await, None, "{}", db.backend);
    let mut open = db.store.begin().await.unwrap();
    es.append(
        &mut open,
        "single-2",
        ExpectedVersion::Any,
        vec![EventData::new("Open", &serde_json::json!({})).unwrap()],
    )
    .await
    .unwrap();
    assert_eq!(
        es.horizon_holder(&mut open).await.unwrap(),
        None,
        "{}",
        db.backend
    );
    open.rollback().await.unwrap();
    db.finish().await;
}

#[tokio::test]
async fn memory_reports_no_holder() {
    single_writer_reports_no_holder(backends::memory("log_holder::memory").await.unwrap()).await;
}

#[tokio::test]
async fn sqlite_reports_no_holder() {
    single_writer_reports_no_holder(backends::sqlite("log_holder::sqlite").await.unwrap()).await;
}
