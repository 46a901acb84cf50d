//! W8-events: replay the whole log (1,000,000 events) through a projection that does
//! minimal work (it sums `qty` in memory), against raw keyset pages decoded into the same
//! struct and summed the same way. Also larder's constant-memory `stream_all`. The log is
//! loaded once per backend through larder's batch appends (not timed); read-only, so
//! every side reads larder's table. Peak RSS is measured per phase, as in W8.

use anyhow::{Result, ensure};
use larder::events::ProjectionRunner;

use super::Ctx;
use super::events::open;
use crate::data::{item_added, stream_id};
use crate::measure::{Metric, Side, Spent, median, phase, rss};
use crate::{larder_events, raw_events};

/// Events per stream.
const PER_STREAM: usize = 100;
/// Streams appended per loading unit of work (10,000 events per commit).
const STREAMS_PER_UOW: usize = 100;
/// Page size of `stream_all` and of the raw reader (the projection runner sizes its own
/// batches).
const PAGE: u32 = 1_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Projection,
    ProjectionOwned,
    StreamAll,
    StreamAllPages,
    Raw,
}

impl Phase {
    fn id(self) -> &'static str {
        match self {
            Phase::Projection => "projection",
            Phase::ProjectionOwned => "projection-owned",
            Phase::StreamAll => "stream-all",
            Phase::StreamAllPages => "stream-all-pages",
            Phase::Raw => "raw",
        }
    }
}

/// Runs W8-events.
pub(crate) async fn run(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let events = cx.sizes.w8e_events;
    let (db, es) = open(cx, &["page"]).await?;
    println!("  W8-events: loading {events} events through larder (batch appends) …");
    let streams = events.div_ceil(PER_STREAM);
    let appends = (0..streams).map(|i| {
        let id = stream_id(8_100, i as u64);
        let n = PER_STREAM.min(events - i * PER_STREAM);
        let evs = (1..=n as u64).map(|seq| item_added(&id, seq)).collect();
        (id, 0, evs)
    });
    let loaded = larder_events::load(&es, &db.store, appends, STREAMS_PER_UOW).await?;
    ensure!(loaded == events as u64, "W8-events: loaded {loaded}");
    raw_events::analyze(&db.raw).await?;
    // Warm the caches once (not measured) and learn the expected sum.
    let (n, expected_sum) = raw_events::read_log(&db.raw, i64::from(PAGE)).await?;
    ensure!(n == loaded, "W8-events: raw read {n} of {loaded} events");

    let can_rss = rss::reset_peak();
    let mut proj = Metric::new("W8e projection replay", "events/s", 1.0);
    proj.rss_limit_mib = Some(64.0);
    let mut proj_owned = Metric::new("W8e projection replay, owned events", "events/s", 1.0);
    proj_owned.rss_limit_mib = Some(64.0);
    let mut stream = Metric::new("W8e stream_all", "events/s", 1.0);
    stream.rss_limit_mib = Some(64.0);
    let mut pages = Metric::new("W8e stream_all_pages", "events/s", 1.0);
    pages.rss_limit_mib = Some(64.0);
    let mut baselines = Vec::new();
    let sides = Side::order(0);
    for run in 0..cx.runs {
        let mut phases = [
            Phase::Projection,
            Phase::Raw,
            Phase::StreamAll,
            Phase::ProjectionOwned,
            Phase::StreamAllPages,
        ];
        let n_phases = phases.len();
        phases.rotate_left(run as usize % n_phases);
        // For profiling one phase (`callgrind --toggle-collect='larder_bench::measure::phase*'`):
        // LARDER_BENCH_W8E_PHASES=projection,projection-owned,stream-all,stream-all-pages,raw
        let only = std::env::var("LARDER_BENCH_W8E_PHASES").ok();
        let mut spent = [(); 4].map(|()| Spent::default());
        let mut raw_rss = None;
        let mut larder_rss = [None; 4];
        for p in phases {
            let side = if p == Phase::Raw {
                Side::Raw
            } else {
                Side::Larder
            };
            if !sides.contains(&side)
                || only
                    .as_deref()
                    .is_some_and(|o| !o.split(',').any(|x| x == p.id()))
            {
                continue;
            }
            rss::reset_peak();
            if let Some(b) = rss::current_mib() {
                baselines.push(b);
            }
            let ((n, sum), wall, cpu) = phase(async {
                match p {
                    Phase::Projection | Phase::ProjectionOwned => {
                        let (projection, total) = larder_events::SumQty::new(
                            format!("w8e_sum_{run}_{p:?}"),
                            p == Phase::Projection,
                        );
                        // The runner's default batching (adaptive, 100..5,000 events).
                        let runner = ProjectionRunner::new(&es).with(projection);
                        let n = runner.catch_up().await?;
                        Ok((n, total.load(std::sync::atomic::Ordering::Relaxed)))
                    }
                    Phase::StreamAll => larder_events::stream_log(&es, PAGE).await,
                    Phase::StreamAllPages => larder_events::stream_log_pages(&es, PAGE).await,
                    Phase::Raw => raw_events::read_log(&db.raw, i64::from(PAGE)).await,
                }
            })
            .await?;
            ensure!(
                n == loaded && sum == expected_sum,
                "W8-events {p:?}: {n} events (sum {sum}), expected {loaded} (sum {expected_sum})"
            );
            let peak = if can_rss { rss::peak_mib() } else { None };
            match p {
                Phase::Raw => {
                    for s in &mut spent {
                        s.add(side, wall, cpu);
                    }
                    raw_rss = peak;
                }
                larder => {
                    let i = match larder {
                        Phase::Projection => 0,
                        Phase::ProjectionOwned => 1,
                        Phase::StreamAll => 2,
                        _ => 3,
                    };
                    spent[i].add(side, wall, cpu);
                    larder_rss[i] = peak;
                }
            }
        }
        let mut metrics = [&mut proj, &mut proj_owned, &mut stream, &mut pages];
        for (i, m) in metrics.iter_mut().enumerate() {
            m.record(events, &spent[i]);
            if let Some(l) = larder_rss[i] {
                m.push_rss(Side::Larder, l);
            }
            if let Some(r) = raw_rss {
                m.push_rss(Side::Raw, r);
            }
        }
    }
    stream.note = Some(format!(
        "W8-events: {events} events ({PER_STREAM} per stream), pages of {PAGE} for stream_all and raw. \
         `projection replay` = `ProjectionRunner::catch_up` with a projection summing `qty` \
         from each payload borrowed from its row (`handle_page`; `owned events`: the default path, \
         events copied first) (default adaptive batches, 500 growing to 5,000; each batch is a write unit of work: claim the checkpoint row, read_all, \
         handle, save the checkpoint, commit); `stream_all` = `EventStore::stream_all` (one \
         read-only unit of work per page, no checkpoint; `stream_all_pages`: the same \
         pages kept as rows, events borrowed); raw = keyset pages `WHERE position \
         > $1 ORDER BY position LIMIT {PAGE}` decoded into the struct and summed, no \
         checkpoint stored. Peak RSS = VmHWM of the whole process after resetting it before \
         each phase; RSS at phase start ≈ {:.1} MiB.",
        median(&baselines)
    ));
    db.close().await;
    Ok(vec![proj, proj_owned, stream, pages])
}
