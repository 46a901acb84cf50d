//! The blocking facade has the async semantics: commit on commit, rollback on drop and on
//! error, streaming as an iterator; appended events commit with repository writes or not at
//! all; projections apply every event once; migrations apply, report and revert.
//!
//! Plain `#[test]`s (no Tokio runtime around them): that is how the facade is used.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use larder::blocking::migrate::{self, MigrateError, MigrationState, Migrator};
use larder::blocking::{EventStore, ProjectionRunner, Store};
use larder::events::{
    Checkpoint, DomainEvent, EventFilter, EventSourced, ExpectedVersion, Projection,
    ProjectionState, ReadDirection, RecordedEvent,
};
use larder::{Deadline, Entity, Error, EventData, Query, Spec, field};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "notes", document)]
struct Note {
    id: i64,
    #[larder(indexed)]
    text: String,
}

fn note(id: i64, text: &str) -> Note {
    Note {
        id,
        text: text.into(),
    }
}

/// A temporary SQLite file named after the test; removed on drop.
struct TempDb(PathBuf);

impl TempDb {
    fn new(test: &str) -> TempDb {
        let path =
            std::env::temp_dir().join(format!("larder-blocking-{test}-{}.db", std::process::id()));
        let db = TempDb(path);
        db.remove();
        db
    }

    fn url(&self) -> String {
        format!("sqlite://{}", self.0.display())
    }

    fn remove(&self) {
        for suffix in ["", "-wal", "-shm"] {
            let _ = std::fs::remove_file(format!("{}{suffix}", self.0.display()));
        }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Runs `body` on a memory store and on a SQLite store.
fn on_each_backend(test: &str, body: impl Fn(&Store)) {
    let memory = Store::open("memory://").unwrap();
    body(&memory);
    memory.close();
    let db = TempDb::new(test);
    let sqlite = Store::open(&db.url()).unwrap();
    body(&sqlite);
    sqlite.close();
}

fn added(n: i64) -> EventData {
    EventData::new("NoteAdded", &serde_json::json!({ "id": n })).unwrap()
}

#[test]
fn blocking_units_of_work_commit_roll_back_and_stream() {
    on_each_backend("uow", |store| {
        store.register::<Note>().unwrap();
        // Dropped: rolled back.
        {
            let mut uow = store.begin().unwrap();
            uow.repo::<Note>().insert(&note(1, "dropped")).unwrap();
        }
        // Committed.
        let mut uow = store.begin().unwrap();
        for i in 2..12 {
            uow.repo::<Note>().insert(&note(i, "kept")).unwrap();
        }
        uow.commit().unwrap();
        // Err in transaction(): rolled back.
        let r: Result<(), Error> = store.transaction(|uow| {
            uow.repo::<Note>().insert(&note(99, "failed"))?;
            Err(Error::callback("test", "no"))
        });
        assert!(r.is_err());
        // Conflicts are typed.
        let mut uow = store.begin().unwrap();
        let e = uow.repo::<Note>().update(&note(2, "x"), 7);
        assert!(
            matches!(
                e,
                Err(Error::Conflict {
                    expected: 7,
                    actual: Some(1),
                    ..
                })
            ),
            "{e:?}"
        );
        uow.rollback().unwrap();

        let mut uow = store.read().unwrap();
        assert_eq!(uow.repo::<Note>().count(&Spec::all()).unwrap(), 10);
        assert!(uow.repo::<Note>().get(&1).unwrap().is_none());
        let ids: Vec<i64> = uow
            .repo::<Note>()
            .stream(&Query::new(field("text").eq("kept")))
            .map(|n| n.unwrap().id)
            .collect();
        assert_eq!(ids, (2..12).collect::<Vec<_>>());
    });
}

#[test]
fn blocking_unit_of_work_commits_appended_events_and_rows_together_or_neither() {
    on_each_backend("append", |store| {
        store.register::<Note>().unwrap();
        let events = EventStore::open(store).unwrap();

        // Committed: the row and both events.
        store
            .transaction(|uow| {
                uow.repo::<Note>().insert(&note(1, "one"))?;
                events.append(
                    uow,
                    "note-1",
                    ExpectedVersion::NoStream,
                    [added(1), added(2)],
                )?;
                Ok::<_, Error>(())
            })
            .unwrap();

        // The append succeeds, the row write fails: neither is kept.
        let r: Result<(), Error> = store.transaction(|uow| {
            events.append(uow, "note-2", ExpectedVersion::NoStream, [added(3)])?;
            uow.repo::<Note>().insert(&note(1, "duplicate"))?;
            Ok(())
        });
        assert!(matches!(r, Err(Error::AlreadyExists { .. })), "{r:?}");

        // The row write succeeds, the append conflicts: neither is kept, and the conflict
        // names the stream's actual version.
        let mut uow = store.begin().unwrap();
        uow.repo::<Note>().insert(&note(2, "two")).unwrap();
        let e = events.append(&mut uow, "note-1", ExpectedVersion::Exact(7), [added(4)]);
        assert!(
            matches!(
                e,
                Err(Error::Conflict {
                    expected: 7,
                    actual: Some(2),
                    ..
                })
            ),
            "{e:?}"
        );
        drop(uow);

        // A dropped unit of work keeps no event either.
        {
            let mut uow = store.begin().unwrap();
            events
                .append(&mut uow, "note-3", ExpectedVersion::Any, [added(5)])
                .unwrap();
        }

        // Read back through the blocking event store.
        let mut uow = store.read().unwrap();
        assert_eq!(uow.repo::<Note>().count(&Spec::all()).unwrap(), 1);
        assert_eq!(uow.repo::<Note>().require(&1).unwrap().text, "one");
        for stream in ["note-2", "note-3"] {
            assert_eq!(events.stream_info(&mut uow, stream).unwrap(), None);
        }
        assert_eq!(
            events
                .stream_info(&mut uow, "note-1")
                .unwrap()
                .map(|s| s.version),
            Some(2)
        );
        let stream = events
            .read_stream(&mut uow, "note-1", 1, 100, ReadDirection::Forward)
            .unwrap();
        let payloads: Vec<serde_json::Value> =
            stream.iter().map(|e| e.payload_as().unwrap()).collect();
        assert_eq!(
            payloads,
            [
                serde_json::json!({ "id": 1 }),
                serde_json::json!({ "id": 2 })
            ]
        );
        let all = events
            .read_all(&mut uow, Checkpoint::START, 100, &EventFilter::all())
            .unwrap();
        assert_eq!(all.events.len(), 2);
        assert!(all.end_of_log);
        let stats = events.stats(&mut uow).unwrap();
        assert_eq!((stats.events, stats.streams), (2, 1));
        assert_eq!(
            events
                .count_after(&mut uow, Checkpoint::START, 1_000)
                .unwrap(),
            2
        );
        drop(uow);
        // The whole log as an iterator, one event per page.
        let log: Vec<RecordedEvent> = events
            .stream_all(Checkpoint::START, EventFilter::all(), 1)
            .collect::<larder::Result<_>>()
            .unwrap();
        assert_eq!(log, all.events);
        // A live subscription delivers what is committed, then waits.
        let mut sub = events.subscribe(Checkpoint::START, EventFilter::all());
        let first = sub.next().unwrap().unwrap();
        assert_eq!(first.event_id, log[0].event_id);
        let second = sub.next_timeout(Duration::from_secs(5)).unwrap().unwrap();
        assert_eq!(second.event_id, log[1].event_id);
        assert!(sub.next_timeout(Duration::from_millis(50)).is_none());
        assert_eq!(sub.checkpoint(), log[1].checkpoint);
        assert_eq!(sub.lag().unwrap(), 0);
    });
}

#[derive(Debug, Serialize, Deserialize)]
enum TallyEvent {
    Added(u64),
}

impl DomainEvent for TallyEvent {
    const TYPES: &'static [&'static str] = &["Added"];
    fn event_type(&self) -> &'static str {
        "Added"
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Tally {
    total: u64,
}

impl EventSourced for Tally {
    type Event = TallyEvent;
    type Command = u64;
    type Error = String;
    const CATEGORY: &'static str = "tally";
    const SNAPSHOT_EVERY: Option<u64> = Some(2);

    fn apply(&mut self, e: &TallyEvent) {
        let TallyEvent::Added(n) = e;
        self.total += n;
    }

    fn decide(&self, n: u64) -> Result<Vec<TallyEvent>, String> {
        Ok(vec![TallyEvent::Added(n)])
    }
}

#[test]
fn blocking_aggregates_save_load_and_snapshot_in_a_unit_of_work() {
    on_each_backend("aggregate", |store| {
        let events = EventStore::open(store).unwrap();
        for n in [1, 2, 3] {
            store
                .transaction(|uow| {
                    let mut tally = events.load::<Tally>(uow, "a")?;
                    tally.handle(n).map_err(|e| Error::callback("decide", e))?;
                    events.save(uow, &mut tally)?;
                    Ok::<_, Error>(())
                })
                .unwrap();
        }
        let mut uow = store.read().unwrap();
        let tally = events.load::<Tally>(&mut uow, "a").unwrap();
        assert_eq!((tally.version(), tally.state().total), (3, 6));
        // Saved at version 2 (every 2 events).
        let snap = events.load_snapshot(&mut uow, "tally-a").unwrap().unwrap();
        assert_eq!(snap.stream_version, 2);
    });
}

/// Records each event it sees as a `seen` row (a second time would be `AlreadyExists`).
#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[larder(table = "seen", document)]
struct Seen {
    id: String,
}

struct Recorder {
    handled: Arc<AtomicU64>,
}

impl Projection for Recorder {
    fn name(&self) -> &str {
        "recorder"
    }

    async fn handle(&self, uow: &mut larder::Uow, event: &RecordedEvent) -> larder::Result<()> {
        uow.repo::<Seen>()
            .insert(&Seen {
                id: event.event_id.to_string(),
            })
            .await?;
        self.handled.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

fn append_notes(store: &Store, events: &EventStore, ids: std::ops::Range<i64>) -> Checkpoint {
    let mut uow = store.begin().unwrap();
    for i in ids {
        events
            .append(
                &mut uow,
                &format!("note-{i}"),
                ExpectedVersion::Any,
                [added(i)],
            )
            .unwrap();
    }
    uow.commit().unwrap().position.unwrap()
}

#[test]
fn blocking_projection_catch_up_and_run_apply_every_event_exactly_once() {
    on_each_backend("projection", |store| {
        store.register::<Seen>().unwrap();
        let events = EventStore::open(store).unwrap();
        let handled = Arc::new(AtomicU64::new(0));
        let runner = ProjectionRunner::new(&events)
            .with(Recorder {
                handled: handled.clone(),
            })
            .batch_size(7);
        assert_eq!(runner.names(), ["recorder"]);

        append_notes(store, &events, 0..25);
        assert_eq!(runner.catch_up().unwrap(), 25);
        assert_eq!(
            runner.catch_up().unwrap(),
            0,
            "nothing new: nothing handled"
        );
        let last = append_notes(store, &events, 25..28);
        assert_eq!(runner.catch_up().unwrap(), 3);
        assert_eq!(handled.load(Ordering::SeqCst), 28);
        let status = runner.status().unwrap();
        assert_eq!(status.len(), 1);
        assert_eq!(status[0].checkpoint, Some(last));
        assert_eq!(status[0].lag, 0);
        assert_eq!(status[0].state, ProjectionState::Idle);
        assert!(status[0].last_error.is_none());

        // `run` follows the log until the shutdown channel fires; another thread appends
        // and waits for the projection to have processed its write.
        let (stop, shutdown) = std::sync::mpsc::channel();
        std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let position = append_notes(store, &events, 28..33);
                events
                    .wait_for(
                        "recorder",
                        position,
                        Deadline::after(Duration::from_secs(20)),
                    )
                    .unwrap();
                stop.send(()).unwrap();
            });
            runner.run(shutdown).unwrap();
            writer.join().unwrap();
        });
        assert_eq!(handled.load(Ordering::SeqCst), 33);
        let mut uow = store.read().unwrap();
        assert_eq!(uow.repo::<Seen>().count(&Spec::all()).unwrap(), 33);
        let log: Vec<String> = events
            .stream_all(Checkpoint::START, EventFilter::all(), 10)
            .map(|e| e.unwrap().event_id.to_string())
            .collect();
        assert_eq!(log.len(), 33);
        let seen = uow.repo::<Seen>().get_many(&log).unwrap();
        assert_eq!(seen.len(), 33, "every event of the log has its row");
        drop(uow);
        assert_eq!(runner.status().unwrap()[0].lag, 0);

        // Dropping every sender also stops `run`.
        let (stop, shutdown) = std::sync::mpsc::channel::<()>();
        drop(stop);
        runner.run(shutdown).unwrap();
    });
}

#[test]
fn blocking_migrate_up_status_verify_and_down_on_a_sqlite_file() {
    let db = TempDb::new("migrate");
    let store = Store::open(&db.url()).unwrap();
    let dialect = migrate::dialect(&store).unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/db");
    let set = migrate::set_from_dir(&root, dialect).unwrap();
    let user_migrations = set
        .migrations()
        .filter(|m| m.module != migrate::BUILTIN_MODULE)
        .count();
    assert_eq!(user_migrations, 2);
    let total = set.migrations().count();
    let migrator = Migrator::new(set);
    let mut driver = migrate::driver(&store).unwrap();

    let before = migrator.status(&mut driver).unwrap();
    assert_eq!(before.len(), total);
    assert!(before.iter().all(|r| r.state == MigrationState::Pending));

    let mut calls = 0;
    let report = migrator
        .up(&mut driver, None, &mut |_, _, _| calls += 1)
        .unwrap();
    assert_eq!((report.applied.len(), calls), (total, total));
    let status = migrator.status(&mut driver).unwrap();
    assert!(
        status.iter().all(|r| r.state == MigrationState::Applied),
        "{status:?}"
    );
    let v = migrator.verify(&mut driver).unwrap();
    assert!(v.problems.is_empty() && v.pending == 0, "{v:?}");
    assert!(
        migrator
            .up(&mut driver, None, &mut |_, _, _| {})
            .unwrap()
            .applied
            .is_empty(),
        "a second run applies nothing"
    );

    // The invoices migration has no down script: `down` refuses, reverting nothing.
    let e = migrator.down(&mut driver, Some("billing"), Some(1), None);
    assert!(matches!(e, Err(MigrateError::NoDownScript(_))), "{e:?}");
    let report = migrator
        .down(&mut driver, Some("customers"), Some(1), None)
        .unwrap();
    assert_eq!(report.reverted.len(), 1);
    let pending: Vec<String> = migrator
        .status(&mut driver)
        .unwrap()
        .into_iter()
        .filter(|r| r.state == MigrationState::Pending)
        .map(|r| format!("{}/{}", r.module, r.name))
        .collect();
    assert_eq!(pending, ["customers/customers"]);
    assert_eq!(migrator.verify(&mut driver).unwrap().pending, 1);
    drop(driver);

    // The built-in module is applied: the event store opens without preparing anything.
    let events = EventStore::builder(&store).prepare(false).open().unwrap();
    let mut uow = store.begin().unwrap();
    events
        .append(&mut uow, "note-1", ExpectedVersion::NoStream, [added(1)])
        .unwrap();
    uow.commit().unwrap();
    store.close();
}

#[test]
fn blocking_migrations_on_the_memory_backend_are_a_typed_error() {
    let store = Store::open("memory://").unwrap();
    assert_eq!(migrate::dialect(&store), None);
    let e = migrate::driver(&store);
    assert!(matches!(e, Err(MigrateError::Unsupported(_))), "{e:?}");
}

#[test]
fn the_blocking_facade_panics_inside_an_async_runtime_as_documented() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let r = std::panic::catch_unwind(|| rt.block_on(async { Store::open("memory://") }));
    let panic = r.expect_err("opening a blocking store inside a runtime panics");
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or_default();
    assert!(message.contains("runtime"), "{message}");
}
