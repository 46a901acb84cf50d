//! O1: the transactional outbox's enqueue cost. One unit of work inserts an entity and
//! enqueues one message (larder: `repo.insert` + `Outbox::enqueue`); raw sqlx does the
//! same two inserts in one transaction, into a copy of the outbox table with the same
//! columns and indexes (`bench_raw_outbox`). Every run starts from a fresh database;
//! within a run the two sides alternate in blocks of [`BLOCK`] operations.

use anyhow::Result;
use larder::outbox::{Message, Outbox};
use uuid::Uuid;

use super::Ctx;
use crate::backends::Raw;
use crate::data::{Customer, customer};
use crate::measure::{Metric, Side, interleaved};
use crate::raw;

const BLOCK: usize = 25;

const LITE_DDL: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS bench_raw_outbox (position INTEGER PRIMARY KEY AUTOINCREMENT, \
     tx INTEGER NOT NULL DEFAULT 0, id TEXT NOT NULL UNIQUE, topic TEXT NOT NULL, key TEXT, \
     partition INTEGER NOT NULL CHECK (partition >= 0), payload BLOB NOT NULL, headers TEXT, \
     state INTEGER NOT NULL DEFAULT 0 CHECK (state BETWEEN 0 AND 3), attempts INTEGER NOT NULL \
     DEFAULT 0, last_error TEXT, enqueued_at INTEGER NOT NULL, due_at INTEGER NOT NULL, done_at \
     INTEGER) STRICT",
    "CREATE INDEX IF NOT EXISTS bench_raw_outbox_pending_idx ON bench_raw_outbox (tx, position) \
     WHERE state = 0",
    "CREATE INDEX IF NOT EXISTS bench_raw_outbox_blocking_idx ON bench_raw_outbox (key, tx, \
     position) WHERE state = 2 OR (state = 0 AND attempts > 0)",
    "CREATE INDEX IF NOT EXISTS bench_raw_outbox_done_idx ON bench_raw_outbox (done_at) WHERE \
     state IN (1, 3)",
];

const PG_DDL: &[&str] =
    &["CREATE TABLE IF NOT EXISTS bench_raw_outbox (LIKE _larder_outbox INCLUDING ALL)"];

const LITE_INSERT: &str = "INSERT INTO bench_raw_outbox (id, topic, key, partition, payload, \
     headers, enqueued_at, due_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
const PG_INSERT: &str = "INSERT INTO bench_raw_outbox (id, topic, key, partition, payload, \
     headers, enqueued_at, due_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)";

fn payload(c: &Customer) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "customer": c.id, "balance": c.balance_cents }))
        .unwrap_or_default()
}

async fn larder_enqueue(store: &larder::Store, ob: &Outbox, c: &Customer) -> Result<()> {
    let mut uow = store.begin().await?;
    uow.repo::<Customer>().insert(c).await?;
    ob.enqueue(
        &mut uow,
        Message::new("customers.created", payload(c)).with_key(c.id.to_string()),
    )
    .await?;
    uow.commit().await?;
    Ok(())
}

async fn raw_enqueue(db: &Raw, c: &Customer) -> Result<()> {
    let now = larder::events::now_micros();
    let id = Uuid::now_v7();
    let key = c.id.to_string();
    match db {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            raw::insert_in(&mut tx, c).await?;
            sqlx::query(LITE_INSERT)
                .bind(id.to_string())
                .bind("customers.created")
                .bind(&key)
                .bind(0_i64)
                .bind(payload(c))
                .bind(None::<String>)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin().await?;
            raw::insert_in_pg(&mut tx, c).await?;
            sqlx::query(PG_INSERT)
                .bind(id)
                .bind("customers.created")
                .bind(&key)
                .bind(0_i32)
                .bind(payload(c))
                .bind(None::<String>)
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Runs O1.
pub(crate) async fn o1(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let n = cx.sizes.w5_ops;
    let mut m = Metric::new("O1 insert + enqueue", "ops/s", 0.9);
    for run in 0..cx.runs {
        let db = cx.target.fresh().await?;
        let ob = Outbox::open(&db.store).await?;
        match &db.raw {
            Raw::Sqlite(pool) => {
                for s in LITE_DDL {
                    sqlx::query(*s).execute(pool).await?;
                }
            }
            Raw::Pg(pool) => {
                for s in PG_DDL {
                    sqlx::query(*s).execute(pool).await?;
                }
            }
        }
        let seed = 9_000 + u64::from(run);
        let entities: Vec<Customer> = (0..u64::try_from(n)?).map(|i| customer(seed, i)).collect();
        let spent = interleaved(
            run,
            &entities,
            BLOCK,
            async |side, c: &Customer| match side {
                Side::Larder => larder_enqueue(&db.store, &ob, c).await,
                Side::Raw => raw_enqueue(&db.raw, c).await,
            },
        )
        .await?;
        m.record(n, &spent);
        db.close().await;
    }
    Ok(vec![m])
}
