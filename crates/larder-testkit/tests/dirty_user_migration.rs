//! A dirty migration in a user's module stops that module only: larder's built-in module
//! (applied by `EventStore::open`) still applies and the event store works, while `up` of
//! the user's module keeps refusing until the migration is repaired. On SQLite and
//! PostgreSQL.

use larder::events::{Checkpoint, EventData, EventFilter, EventStore, ExpectedVersion};
use larder::migrate::{self, MigrateError, MigrationSet, MigrationState, Migrator};
use larder_testkit::backends::{self, TestDb};

fn app(files: &[(&str, &str)]) -> migrate::Module {
    let files: Vec<(String, String)> = files
        .iter()
        .map(|(a, b)| ((*a).to_owned(), (*b).to_owned()))
        .collect();
    migrate::parse_module("app", &files, "test").unwrap()
}

const OK: (&str, &str) = ("1_ok.sql", "CREATE TABLE ok1 (id INTEGER);");
/// Fails outside a transaction after its first statement: stays dirty.
const NOTX_BAD: (&str, &str) = (
    "2_notx.sql",
    "-- larder:no-transaction\nCREATE TABLE notx (id INTEGER);\nINSERT INTO missing_table VALUES (1);",
);
const NOTX_FIXED: (&str, &str) = (
    "2_notx.sql",
    "-- larder:no-transaction\nCREATE TABLE IF NOT EXISTS notx (id INTEGER);",
);

async fn a_dirty_user_migration_does_not_block_the_event_store(db: TestDb) {
    let store = &db.store;
    let b = db.backend;
    let dialect = migrate::dialect(store).unwrap();
    // The user's module alone first, so the built-in module is still pending when the
    // event store opens.
    let user_only = Migrator::new(MigrationSet::new(vec![app(&[OK, NOTX_BAD])]).unwrap());
    let mut d = migrate::driver(store).await.unwrap();
    let e = user_only.up(d.as_mut(), None, &mut |_, _, _| {}).await;
    assert!(matches!(e, Err(MigrateError::Failed(_))), "{b}: {e:?}");
    let rows = user_only.status(d.as_mut()).await.unwrap();
    assert!(
        rows.iter()
            .any(|r| r.name == "notx" && r.state == MigrationState::Dirty),
        "{b}: {rows:?}"
    );
    drop(d);

    // The event store opens (applying the built-in module) and works.
    let events = EventStore::open(store)
        .await
        .unwrap_or_else(|e| panic!("{b}: a dirty user migration blocked the event store: {e}"));
    let mut uow = store.begin().await.unwrap();
    events
        .append(
            &mut uow,
            "order-1",
            ExpectedVersion::NoStream,
            vec![EventData::raw("OrderPlaced", "{}")],
        )
        .await
        .unwrap();
    uow.commit().await.unwrap();
    // PostgreSQL: other tests' transactions may hold the log horizon back for a moment.
    larder_testkit::events::settle(&events).await;
    let mut uow = store.read().await.unwrap();
    let page = events
        .read_all(&mut uow, Checkpoint::START, 10, &EventFilter::all())
        .await
        .unwrap();
    assert_eq!(page.events.len(), 1, "{b}");
    assert_eq!(page.events[0].event_type, "OrderPlaced", "{b}");
    uow.rollback().await.unwrap();
    // Opening again (every `larder events` command does) works too.
    EventStore::open(store).await.unwrap();

    // `up` of the user's module still refuses, alone or with the built-in module.
    let mut d = migrate::driver(store).await.unwrap();
    let full = Migrator::new(
        MigrationSet::new(vec![migrate::builtin(dialect), app(&[OK, NOTX_FIXED])]).unwrap(),
    );
    for m in [&user_only, &full] {
        let e = m.up(d.as_mut(), None, &mut |_, _, _| {}).await;
        assert!(
            matches!(&e, Err(MigrateError::Dirty { module, version: 2, .. }) if module == "app"),
            "{b}: {e:?}"
        );
    }
    let v = full.verify(d.as_mut()).await.unwrap();
    assert_eq!(v.problems.len(), 1, "{b}: {:?}", v.problems);
    // Repaired: it applies.
    full.repair(d.as_mut(), "app", 2, false).await.unwrap();
    let r = full.up(d.as_mut(), None, &mut |_, _, _| {}).await.unwrap();
    assert_eq!(r.applied.len(), 1, "{b}: {r:?}");
    assert!(full.verify(d.as_mut()).await.unwrap().problems.is_empty());
    drop(d);
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_dirty_user_migration_does_not_block_the_event_store() {
    let db = backends::sqlite("dirty_user_migration").await.unwrap();
    a_dirty_user_migration_does_not_block_the_event_store(db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_dirty_user_migration_does_not_block_the_event_store() {
    let Some(db) = backends::postgres("dirty_user_migration").await else {
        return;
    };
    a_dirty_user_migration_does_not_block_the_event_store(db).await;
}
