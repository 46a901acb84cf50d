//! D13 on real catalogs: what `Store::register` reads from SQLite's `pragma_table_info` /
//! `pragma_index_list` and PostgreSQL's `information_schema` / `pg_indexes` — columns added
//! by your own migrations are tolerated when inserts still work without them; a dropped
//! index, a text column without the byte-wise collation, a required column larder does not
//! write are each a `SchemaMismatch` naming them. (The drift larder's own entities can
//! cause is the conformance rule `register_detects_schema_drift`.)

use larder::postgres::PgUowExt;
use larder::sqlite::SqliteUowExt;
use larder::{Error, Store};
use larder_testkit::backends;
use larder_testkit::entities::{Counter, Item};

fn mismatch(what: &str, r: larder::Result<()>, needle: &str) {
    match r {
        Err(Error::SchemaMismatch { differences, .. }) => {
            assert!(differences.contains(needle), "{what}: {differences}")
        }
        other => panic!("{what}: expected a schema mismatch naming {needle}, got {other:?}"),
    }
}

async fn insert_counter(store: &Store, id: &str) {
    let mut uow = store.begin().await.unwrap();
    uow.repo::<Counter>()
        .insert(&Counter {
            id: id.into(),
            count: 1,
        })
        .await
        .unwrap();
    uow.commit().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_register_reads_the_catalog() {
    let db = backends::sqlite("schema_drift::sqlite").await.unwrap();
    let store = &db.store;
    store.register::<Counter>().await.unwrap();
    store.register::<Item>().await.unwrap();
    let raw = async |sql: &'static str| {
        let mut uow = store.begin().await.unwrap();
        sqlx::query(sql)
            .execute(uow.sqlite().unwrap())
            .await
            .unwrap();
        uow.commit().await.unwrap();
    };
    raw("ALTER TABLE counters ADD COLUMN extra TEXT").await;
    raw("ALTER TABLE counters ADD COLUMN stamped INTEGER NOT NULL DEFAULT 0").await;
    store
        .register::<Counter>()
        .await
        .expect("extra columns with defaults are tolerated");
    insert_counter(store, "a").await;
    raw("DROP INDEX items_name_idx").await;
    mismatch(
        "a dropped index",
        store.register::<Item>().await,
        "index `items_name_idx` on `name` is missing",
    );
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_register_reads_the_catalog() {
    let Some(db) = backends::postgres("schema_drift::postgres").await else {
        return;
    };
    let store = &db.store;
    store.register::<Counter>().await.unwrap();
    store.register::<Item>().await.unwrap();
    let raw = async |sql: &'static str| {
        let mut uow = store.begin().await.unwrap();
        sqlx::query(sql)
            .execute(uow.postgres().unwrap())
            .await
            .unwrap();
        uow.commit().await.unwrap();
    };
    raw("ALTER TABLE counters ADD COLUMN extra text").await;
    raw("ALTER TABLE counters ADD COLUMN stamped timestamptz NOT NULL DEFAULT now()").await;
    raw("ALTER TABLE counters ADD COLUMN seq bigint GENERATED ALWAYS AS IDENTITY").await;
    store
        .register::<Counter>()
        .await
        .expect("extra columns with defaults are tolerated");
    insert_counter(store, "a").await;
    raw("ALTER TABLE counters ALTER COLUMN stamped DROP DEFAULT").await;
    mismatch(
        "a required column larder does not write",
        store.register::<Counter>().await,
        "column `stamped` is not null without a default",
    );
    raw("DROP INDEX items_qty_idx").await;
    raw(r#"ALTER TABLE items ALTER COLUMN name TYPE text COLLATE "default""#).await;
    let r = store.register::<Item>().await;
    mismatch(
        "a dropped index",
        r,
        "index `items_qty_idx` on `qty` is missing",
    );
    let r = store.register::<Item>().await;
    mismatch(
        "text without the byte-wise collation",
        r,
        "column `name` has collation default, the entity needs \"C\"",
    );
    db.finish().await;
}
