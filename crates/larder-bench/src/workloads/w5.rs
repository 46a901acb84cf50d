//! W5: entities inserted one per unit of work; gets by id (one read-only unit of work
//! each; against a raw read-only transaction and against a bare `SELECT`); load + change `balance_cents` + save with an optimistic version check, one per
//! unit of work. Every run starts from a fresh database; within a run the two sides
//! alternate in blocks of [`BLOCK`] operations.

use anyhow::{Result, ensure};
use uuid::Uuid;

use super::Ctx;
use crate::data::{Customer, Rng, customer};
use crate::larder_side;
use crate::measure::{Metric, Side, interleaved};
use crate::raw;

/// Operations per block: the sides alternate every block (see [`interleaved`]).
const BLOCK: usize = 25;

/// Runs W5.
pub(crate) async fn run(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let n = cx.sizes.w5_ops;
    let mut inserts = Metric::new("W5 insert", "ops/s", 0.9);
    let mut gets = Metric::new("W5 get", "ops/s", 0.9);
    // The same gets against the raw side a sqlx user writes: one bare `SELECT` on the pool.
    let mut gets_bare = Metric::new("W5 get vs bare SELECT", "ops/s", 0.9);
    let mut updates = Metric::new("W5 update", "ops/s", 0.9);
    for run in 0..cx.runs {
        let db = cx.target.fresh().await?;
        let seed = 5_000 + u64::from(run);
        let entities: Vec<Customer> = (0..u64::try_from(n)?).map(|i| customer(seed, i)).collect();
        let mut rng = Rng::seeded(seed);
        let mut get_order: Vec<Uuid> = entities.iter().map(|c| c.id).collect();
        rng.shuffle(&mut get_order);
        let mut update_order = get_order.clone();
        rng.shuffle(&mut update_order);

        let spent = interleaved(
            run,
            &entities,
            BLOCK,
            async |side, c: &Customer| match side {
                Side::Larder => larder_side::insert(&db.store, c).await,
                Side::Raw => raw::insert(&db.raw, c).await,
            },
        )
        .await?;
        inserts.record(n, &spent);

        let spent = interleaved(run, &get_order, BLOCK, async |side, id: &Uuid| {
            let balance = match side {
                Side::Larder => larder_side::get(&db.store, *id).await?.value.balance_cents,
                Side::Raw => raw::get(&db.raw, *id).await?.0.balance_cents,
            };
            std::hint::black_box(balance);
            Ok(())
        })
        .await?;
        gets.record(n, &spent);

        let spent = interleaved(run, &get_order, BLOCK, async |side, id: &Uuid| {
            let balance = match side {
                Side::Larder => larder_side::get(&db.store, *id).await?.value.balance_cents,
                Side::Raw => raw::get_bare(&db.raw, *id).await?.0.balance_cents,
            };
            std::hint::black_box(balance);
            Ok(())
        })
        .await?;
        gets_bare.record(n, &spent);

        let spent = interleaved(run, &update_order, BLOCK, async |side, id: &Uuid| {
            let version = match side {
                Side::Larder => larder_side::update_balance(&db.store, *id, 1).await?,
                Side::Raw => u64::try_from(raw::update_balance(&db.raw, *id, 1).await?)?,
            };
            ensure!(
                version == 2,
                "{} update of {id}: version {version}",
                side.name()
            );
            Ok(())
        })
        .await?;
        updates.record(n, &spent);

        // Both sides must have ended up with the same data.
        let checked = if Side::both() { 20 } else { 0 };
        for id in get_order.iter().take(checked) {
            let l = larder_side::get(&db.store, *id).await?;
            let (r, rv) = raw::get(&db.raw, *id).await?;
            ensure!(
                l.value == r && l.version == u64::try_from(rv)?,
                "W5: larder and raw disagree on {id}"
            );
        }
        db.close().await;
    }
    Ok(vec![inserts, gets, gets_bare, updates])
}
