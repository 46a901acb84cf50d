//! W6 (PostgreSQL only): concurrent appends. `writers` tasks each append `events`
//! single-event units of work to their own streams (5 events per stream, round robin),
//! at the same time. larder runs twice — appends sending `NOTIFY` (the default) and with
//! `PgBackend::with_notify(false)` — against raw's plain concurrent `INSERT`s into an
//! identity-keyed table with no ordering mechanism. Each phase starts from emptied tables;
//! the order of the three phases rotates from run to run. After each larder phase the whole
//! log is read back with `read_all` (everything committed must be readable: gap-free).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use larder::events::EventStore;

use super::Ctx;
use super::events::open;
use crate::backends::{Kind, Raw};
use crate::data::{item_added, stream_id};
use crate::measure::{Metric, Side, Spent, phase};
use crate::{larder_events, raw_events};

/// Events per stream.
const PER_STREAM: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    NotifyOn,
    NotifyOff,
    Raw,
}

impl Phase {
    fn side(self) -> Side {
        match self {
            Phase::NotifyOn | Phase::NotifyOff => Side::Larder,
            Phase::Raw => Side::Raw,
        }
    }
}

/// The appends of writer `w`, in order: (stream, expected version).
fn plan(w: usize, events: usize) -> Vec<(String, u64)> {
    let streams = events.div_ceil(PER_STREAM);
    let ids: Vec<String> = (0..streams as u64)
        .map(|i| stream_id(6_000 + w as u64, i))
        .collect();
    (0..events)
        .map(|k| (ids[k % streams].clone(), (k / streams) as u64))
        .collect()
}

/// Runs every writer concurrently (tokio tasks on the multi-thread runtime); returns the
/// per-unit-of-work latencies.
async fn concurrent(
    es: Option<&EventStore>,
    raw: &Raw,
    writers: usize,
    events: usize,
) -> Result<Vec<Duration>> {
    let mut tasks = Vec::with_capacity(writers);
    for w in 0..writers {
        let es = es.cloned();
        let raw = raw.clone();
        let work = plan(w, events);
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(work.len());
            for (stream, expected) in &work {
                let e = item_added(stream, expected + 1);
                let t0 = Instant::now();
                match &es {
                    Some(es) => {
                        larder_events::append_one(es, es.store(), stream, *expected, &e).await?;
                    }
                    None => raw_events::append_one(&raw, stream, *expected, &e).await?,
                }
                lat.push(t0.elapsed());
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::with_capacity(writers * events);
    for t in tasks {
        all.extend(t.await.context("W6 writer task")??);
    }
    Ok(all)
}

/// Runs W6.
pub(crate) async fn run(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    if cx.target.kind != Kind::Postgres {
        println!("  W6 is PostgreSQL only: skipped");
        return Ok(Vec::new());
    }
    let writers = cx.sizes.w6_writers;
    let events = cx.sizes.w6_events;
    let total = writers * events;
    let expected_sum: i64 = (0..writers)
        .flat_map(|w| plan(w, events))
        .map(|(s, v)| item_added(&s, v + 1).qty)
        .sum();
    let mut on = Metric::new("W6 concurrent (notify on)", "events/s", 0.8);
    let mut off = Metric::new("W6 concurrent (notify off)", "events/s", 0.8);
    let mut gap_free = true;
    let sides = Side::order(0);
    for run in 0..cx.runs {
        let (db, es_on) = open(cx, if run == 0 { &["append"] } else { &[] }).await?;
        let store_off = cx.target.pg_store(false).await?;
        let es_off = EventStore::open(&store_off).await?;
        let mut phases = [Phase::NotifyOn, Phase::Raw, Phase::NotifyOff];
        phases.rotate_left(run as usize % 3);
        let mut spent_on = Spent::default();
        let mut spent_off = Spent::default();
        for p in phases {
            if !sides.contains(&p.side()) {
                continue;
            }
            raw_events::truncate_all(&db.raw).await?;
            let es = match p {
                Phase::NotifyOn => Some(&es_on),
                Phase::NotifyOff => Some(&es_off),
                Phase::Raw => None,
            };
            let (lat, wall, cpu) = phase(concurrent(es, &db.raw, writers, events)).await?;
            ensure!(lat.len() == total, "W6: {} appends done", lat.len());
            if let Some(es) = es {
                // Gap-free: once every writer has committed, every event is readable.
                let got = larder_events::read_log(es, es.store(), 1_000).await?;
                if got != (total as u64, expected_sum) {
                    gap_free = false;
                    println!(
                        "  W6 {p:?}: read_all returned {got:?}, expected ({total}, {expected_sum})"
                    );
                }
            } else {
                let (n, _) = raw_events::totals(&db.raw, "raw_events").await?;
                ensure!(n == i64::try_from(total)?, "W6 raw: {n} events stored");
            }
            for s in match p {
                Phase::NotifyOn => vec![&mut spent_on],
                Phase::NotifyOff => vec![&mut spent_off],
                Phase::Raw => vec![&mut spent_on, &mut spent_off],
            } {
                s.add(p.side(), wall, cpu);
                s.latencies[p.side().index()].clone_from(&lat);
            }
        }
        on.record(total, &spent_on);
        off.record(total, &spent_off);
        store_off.close().await;
        db.close().await;
    }
    let note = format!(
        "W6: {writers} concurrent writers × {events} single-event units of work, each writer \
         on its own {} streams ({PER_STREAM} events each, expected-version checked); pools of 8 \
         connections on both sides; raw = the W1 INSERT (identity position, no ordering \
         mechanism). Gap-free check after each larder phase (read_all returns all {total} \
         events): {}. `notify on` is larder's default (pg_notify in every append: PostgreSQL \
         serializes the commits of notifying transactions); `notify off` is \
         `PgBackend::with_notify(false)`. Both larder lines share the raw measurement of their \
         run.",
        events.div_ceil(PER_STREAM),
        if gap_free { "passed" } else { "**failed**" }
    );
    off.note = Some(note);
    Ok(vec![on, off])
}

/// W6c: shared streams under contention, the writers' counts of the issue.
const W6C_WRITERS: [usize; 3] = [8, 16, 32];
/// W6c: the streams every writer appends to.
const W6C_STREAMS: usize = 4;

/// W6c (PostgreSQL only): `writers` tasks append single events with `ExpectedVersion::Any`
/// to [`W6C_STREAMS`] streams they all share, each append in `Store::transaction_with`
/// (up to 1,000 retries), counting the attempts: every retry is a unit of work refused as
/// retryable — "an older transaction would append after a younger one" (the stream row's
/// `last_tx` check) or a serialization failure. Raw: the W6 baseline, plain `INSERT`s on
/// the writers' own streams (no stream row, nothing to wait for).
pub(crate) async fn contended(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use larder::events::{EventData, ExpectedVersion};
    use larder::{TransactionOptions, UowOptions};

    if cx.target.kind != Kind::Postgres {
        println!("  W6c is PostgreSQL only: skipped");
        return Ok(Vec::new());
    }
    let total = cx.sizes.w6_events.max(W6C_WRITERS[2]) * 2;
    let mut out = Vec::new();
    let mut notes = Vec::new();
    for writers in W6C_WRITERS {
        let per = total / writers;
        let mut m = Metric::new(
            format!("W6c {writers} writers, {W6C_STREAMS} shared streams"),
            "events/s",
            0.8,
        );
        let mut retries_per_1000 = Vec::new();
        for run in 0..cx.runs {
            let (db, es) = open(cx, &[]).await?;
            let mut spent = Spent::default();
            let mut sides = [Side::Larder, Side::Raw];
            sides.rotate_left(run as usize % 2);
            for side in sides {
                raw_events::truncate_all(&db.raw).await?;
                if side == Side::Raw {
                    let (lat, wall, cpu) = phase(concurrent(None, &db.raw, writers, per)).await?;
                    spent.add(side, wall, cpu);
                    spent.latencies[side.index()] = lat;
                    continue;
                }
                let attempts = Arc::new(AtomicU64::new(0));
                let most = Arc::new(AtomicU64::new(0));
                // The default policy (3 retries) gives up under this contention (seen:
                // "serialization failure (retryable)" after 3 retries); count how many a
                // unit of work needs instead.
                let policy = TransactionOptions {
                    max_retries: 1_000,
                    ..TransactionOptions::default()
                };
                let streams: Vec<String> = (0..W6C_STREAMS as u64)
                    .map(|i| stream_id(66_000 + u64::from(run), i))
                    .collect();
                let (lat, wall, cpu) = phase(async {
                    let mut tasks = Vec::with_capacity(writers);
                    for w in 0..writers {
                        let es = es.clone();
                        let attempts = attempts.clone();
                        let most = most.clone();
                        let policy = policy.clone();
                        let streams = streams.clone();
                        tasks.push(tokio::spawn(async move {
                            let mut lat = Vec::with_capacity(per);
                            for k in 0..per {
                                let stream = streams[(w + k) % streams.len()].clone();
                                let e = item_added(&stream, (w * per + k) as u64);
                                let data = EventData::new(crate::data::ITEM_ADDED, &e)?;
                                let t0 = Instant::now();
                                let mine = AtomicU64::new(0);
                                es.store()
                                    .transaction_with(UowOptions::default(), &policy, |uow| {
                                        let es = es.clone();
                                        let stream = stream.clone();
                                        let data = data.clone();
                                        attempts.fetch_add(1, Ordering::Relaxed);
                                        mine.fetch_add(1, Ordering::Relaxed);
                                        Box::pin(async move {
                                            es.append(uow, &stream, ExpectedVersion::Any, [data])
                                                .await?;
                                            Ok::<_, larder::Error>(())
                                        })
                                    })
                                    .await?;
                                lat.push(t0.elapsed());
                                most.fetch_max(mine.into_inner(), Ordering::Relaxed);
                            }
                            anyhow::Ok(lat)
                        }));
                    }
                    let mut all = Vec::with_capacity(writers * per);
                    for t in tasks {
                        all.extend(t.await.context("W6c writer task")??);
                    }
                    anyhow::Ok(all)
                })
                .await?;
                let done = writers * per;
                ensure!(lat.len() == done, "W6c: {} appends done", lat.len());
                let (n, _) = larder_events::read_log(&es, es.store(), 1_000).await?;
                ensure!(
                    n == done as u64,
                    "W6c: read_all returned {n} of {done} events"
                );
                let tries = attempts.load(Ordering::Relaxed);
                #[allow(clippy::cast_precision_loss)]
                retries_per_1000.push((
                    (tries - done as u64) as f64 * 1000.0 / done as f64,
                    most.load(Ordering::Relaxed),
                ));
                spent.add(side, wall, cpu);
                spent.latencies[side.index()] = lat;
            }
            m.record(writers * per, &spent);
            db.close().await;
        }
        notes.push(format!(
            "{writers} writers: retries per 1,000 appends (most attempts of one append) {}",
            retries_per_1000
                .iter()
                .map(|(r, most)| format!("{r:.1} ({most})"))
                .collect::<Vec<_>>()
                .join(" ")
        ));
        out.push(m);
    }
    if let Some(last) = out.last_mut() {
        last.note = Some(format!(
            "W6c: {total} single-event appends per measurement, `ExpectedVersion::Any` on \
             {W6C_STREAMS} streams every writer shares, each in `Store::transaction_with` (default backoff, up \
             to 1,000 retries: the default 3 run out here); raw = the W6 baseline (plain INSERTs, own streams). \
             Every larder phase is read back with read_all (all events present). Retries \
             (units of work run again after a retryable refusal), per run: {}.",
            notes.join("; ")
        ));
    }
    Ok(out)
}
