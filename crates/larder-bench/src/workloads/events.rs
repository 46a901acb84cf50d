//! W1–W4, the event store: single-event appends, batch appends, stream reads and
//! global-log reads, larder's `EventStore` against the raw baseline of
//! [`raw_events`].
//!
//! W1 and W2 write: every run starts from a fresh database (larder's event tables created
//! by `EventStore::open`, `raw_events` by hand-written DDL checked against them), and the
//! two sides alternate in blocks. W3 and W4 read: the log (W1 + W2 shaped) is loaded once
//! per backend through larder (not timed) and both sides read larder's table.

use anyhow::{Result, ensure};
use larder::events::EventStore;

use super::Ctx;
use crate::backends::Db;
use crate::data::{Rng, item_added, stream_id};
use crate::measure::{Metric, Side, Spent, interleaved, phase};
use crate::{larder_events, raw_events};

/// W1 operations per block: the sides alternate every block (see [`interleaved`]).
const BLOCK_W1: usize = 25;
/// W2 appends (of 50 events) per block.
const BLOCK_W2: usize = 5;
/// W3 stream reads per block.
const BLOCK_W3: usize = 25;
/// W4 page size.
const PAGE: u32 = 1_000;

/// A fresh database with larder's event tables and `raw_events` (checked to be the same
/// shape).
pub(crate) async fn open(cx: &Ctx<'_>, show: &[&str]) -> Result<(Db, EventStore)> {
    let db = cx.target.fresh().await?;
    let es = EventStore::open(&db.store).await?;
    raw_events::create(&db.raw).await?;
    for (op, sql) in raw_events::statements(cx.target.kind) {
        if show.contains(&op) {
            println!("  raw {op:<6} {sql}");
        }
    }
    Ok((db, es))
}

/// Runs W1: `streams × events`, every event appended in its own unit of work with an
/// expected-version check, in round-robin order (event 1 of every stream, then event 2 …).
pub(crate) async fn w1(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let streams = cx.sizes.w1_streams;
    let per = cx.sizes.w1_events;
    let mut m = Metric::new("W1 append-single", "events/s", 0.9);
    for run in 0..cx.runs {
        let (db, es) = open(cx, if run == 0 { &["append"] } else { &[] }).await?;
        let ids: Vec<String> = (0..streams as u64)
            .map(|i| stream_id(1_000 + u64::from(run), i))
            .collect();
        let items: Vec<(usize, u64)> = (1..=per as u64)
            .flat_map(|seq| (0..streams).map(move |s| (s, seq)))
            .collect();
        let spent = interleaved(run, &items, BLOCK_W1, async |side, &(s, seq)| {
            let stream = ids[s].as_str();
            let e = item_added(stream, seq);
            match side {
                Side::Larder => {
                    larder_events::append_one(&es, &db.store, stream, seq - 1, &e).await
                }
                Side::Raw => raw_events::append_one(&db.raw, stream, seq - 1, &e).await,
            }
        })
        .await?;
        m.record(items.len(), &spent);
        if Side::both() {
            let l = raw_events::totals(&db.raw, "larder_events").await?;
            let r = raw_events::totals(&db.raw, "raw_events").await?;
            ensure!(
                l == r && l.0 == i64::try_from(items.len())?,
                "W1: larder {l:?} and raw {r:?} disagree (events, sum of versions)"
            );
        }
        db.close().await;
    }
    m.note = Some(format!(
        "W1: {streams} streams × {per} events, one unit of work per event (larder: \
         `ExpectedVersion::Exact`, one CTE statement on PostgreSQL / SELECT + INSERT + upsert \
         on SQLite; raw: one INSERT whose expected-version check is the UNIQUE (stream_id, \
         stream_version) constraint), alternating in blocks of {BLOCK_W1}."
    ));
    Ok(vec![m])
}

/// Runs W2: every event of a new stream appended in one unit of work.
pub(crate) async fn w2(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let streams = cx.sizes.w2_streams;
    let per = cx.sizes.w2_events;
    let mut m = Metric::new("W2 append-batch", "events/s", 1.0);
    for run in 0..cx.runs {
        let (db, es) = open(cx, if run == 0 { &["batch"] } else { &[] }).await?;
        let ids: Vec<String> = (0..streams as u64)
            .map(|i| stream_id(2_000 + u64::from(run), i))
            .collect();
        let spent = interleaved(run, &ids, BLOCK_W2, async |side, stream: &String| {
            let events: Vec<_> = (1..=per as u64)
                .map(|seq| item_added(stream, seq))
                .collect();
            match side {
                Side::Larder => larder_events::append_batch(&es, &db.store, stream, &events).await,
                Side::Raw => raw_events::append_batch(&db.raw, stream, &events).await,
            }
        })
        .await?;
        m.record(streams * per, &spent);
        if Side::both() {
            let l = raw_events::totals(&db.raw, "larder_events").await?;
            let r = raw_events::totals(&db.raw, "raw_events").await?;
            ensure!(
                l == r && l.0 == i64::try_from(streams * per)?,
                "W2: larder {l:?} and raw {r:?} disagree (events, sum of versions)"
            );
        }
        db.close().await;
    }
    m.note = Some(format!(
        "W2: {streams} new streams × {per} events, one unit of work per stream (larder: \
         `ExpectedVersion::NoStream`; raw: one INSERT of {per} rows, versions 1..={per}, \
         checked by the UNIQUE constraint), alternating in blocks of {BLOCK_W2} streams; \
         p50 is per unit of work."
    ));
    Ok(vec![m])
}

/// The W1 + W2 shaped log, loaded through larder in a few large units of work (not
/// timed). Returns the W1 stream ids and (events, sum of `qty`).
async fn load_log(cx: &Ctx<'_>, es: &EventStore, db: &Db) -> Result<(Vec<String>, u64, i64)> {
    let s = cx.sizes;
    let w1_ids: Vec<String> = (0..s.w1_streams as u64)
        .map(|i| stream_id(3_000, i))
        .collect();
    let w2_ids: Vec<String> = (0..s.w2_streams as u64)
        .map(|i| stream_id(3_001, i))
        .collect();
    let w1 = (1..=s.w1_events as u64).flat_map(|seq| {
        w1_ids
            .iter()
            .map(move |id| (id.clone(), seq - 1, vec![item_added(id, seq)]))
    });
    let mut n = larder_events::load(es, &db.store, w1, 500).await?;
    let w2 = w2_ids.iter().map(|id| {
        let events = (1..=s.w2_events as u64)
            .map(|seq| item_added(id, seq))
            .collect();
        (id.clone(), 0, events)
    });
    n += larder_events::load(es, &db.store, w2, 20).await?;
    raw_events::analyze(&db.raw).await?;
    let mut sum = 0_i64;
    for id in w1_ids.iter() {
        for seq in 1..=s.w1_events as u64 {
            sum = sum.wrapping_add(item_added(id, seq).qty);
        }
    }
    for id in w2_ids.iter() {
        for seq in 1..=s.w2_events as u64 {
            sum = sum.wrapping_add(item_added(id, seq).qty);
        }
    }
    Ok((w1_ids, n, sum))
}

/// Runs W3: read each W1 stream fully, events decoded into structs.
pub(crate) async fn w3(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let (db, es) = open(cx, &["stream"]).await?;
    println!("  W3: loading the W1 + W2 log through larder …");
    let (ids, _, _) = load_log(cx, &es, &db).await?;
    // Same answers on both sides (and a warm-up).
    if Side::both() {
        for id in ids.iter().take(100) {
            let l = larder_events::read_stream(&es, &db.store, id).await?;
            let r = raw_events::read_stream(&db.raw, id).await?;
            ensure!(
                l == r && l.len() == cx.sizes.w1_events,
                "W3: larder and raw read different events from {id}"
            );
        }
    }
    let mut m = Metric::new("W3 read-stream", "streams/s", 0.9);
    for run in 0..cx.runs {
        let mut order = ids.clone();
        Rng::seeded(3_100 + u64::from(run)).shuffle(&mut order);
        let spent = interleaved(run, &order, BLOCK_W3, async |side, id: &String| {
            let events = match side {
                Side::Larder => larder_events::read_stream(&es, &db.store, id).await?,
                Side::Raw => raw_events::read_stream(&db.raw, id).await?,
            };
            ensure!(
                events.len() == cx.sizes.w1_events,
                "W3: {} read {} events from {id}",
                side.name(),
                events.len()
            );
            std::hint::black_box(events);
            Ok(())
        })
        .await?;
        m.record(order.len(), &spent);
    }
    m.note = Some(format!(
        "W3: {} streams of {} events read per run in random order, one read-only unit of \
         work each (larder `read_stream(…, 1, 1000, Forward)` + `payload_as`; raw SELECT of the \
         same columns `WHERE stream_id = $1 ORDER BY stream_version` + serde_json), both on \
         larder's table.",
        ids.len(),
        cx.sizes.w1_events
    ));
    db.close().await;
    Ok(vec![m])
}

/// Runs W4: the whole global log in pages of [`PAGE`], decoded, `w4_passes` passes per
/// side and run.
pub(crate) async fn w4(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let (db, es) = open(cx, &["page"]).await?;
    println!("  W4: loading the W1 + W2 log through larder …");
    let (_, total, sum) = load_log(cx, &es, &db).await?;
    let page = i64::from(PAGE);
    // Warm-up and cross-check: both readers see the whole log.
    let l = larder_events::read_log(&es, &db.store, PAGE).await?;
    let r = raw_events::read_log(&db.raw, page).await?;
    ensure!(
        l == (total, sum) && r == (total, sum),
        "W4: larder read {l:?}, raw {r:?}, expected {:?} (events, sum of qty); on \
         PostgreSQL larder reads below the commit horizon: is another session holding a \
         transaction open?",
        (total, sum)
    );
    let passes = cx.sizes.w4_passes;
    let mut m = Metric::new("W4 read-all", "events/s", 1.0);
    // The same log through `read_all_each`: events borrowed from the rows, not collected.
    let mut borrowed = Metric::new("W4 read-all (read_all_each)", "events/s", 1.0);
    for (metric, each) in [(&mut m, false), (&mut borrowed, true)] {
        for run in 0..cx.runs {
            let mut spent = Spent::default();
            for pass in 0..passes {
                for side in Side::order(run + pass) {
                    let (got, wall, cpu) = phase(async {
                        match side {
                            Side::Larder if each => {
                                larder_events::read_log_each(&es, &db.store, PAGE).await
                            }
                            Side::Larder => larder_events::read_log(&es, &db.store, PAGE).await,
                            Side::Raw => raw_events::read_log(&db.raw, page).await,
                        }
                    })
                    .await?;
                    ensure!(
                        got == (total, sum),
                        "W4: {} read {got:?}, expected {:?}",
                        side.name(),
                        (total, sum)
                    );
                    spent.add(side, wall, cpu);
                }
            }
            metric.record(usize::try_from(total)? * passes as usize, &spent);
        }
    }
    m.note = Some(format!(
        "W4: {total} events (W1 + W2 shaped), {passes} passes per side and run, pages of {PAGE}, \
         one read-only unit of work per page, every payload decoded. larder `read_all` reads \
         below the commit horizon in (tx, position) order (never skips an event that commits \
         late); raw is the naive keyset reader `WHERE position > $1 ORDER BY position LIMIT \
         1000`, which has no such protection. Both read larder's table."
    ));
    db.close().await;
    Ok(vec![m, borrowed])
}
