//! W8: stream every entity (decoded) through `repo.stream(&Query::all())`, against a raw
//! `sqlx::query(…).fetch(…)` of the same statement. W8 is read-only, so both sides read the
//! same table (larder's): same rows, same SQL. Peak RSS is measured per phase.

use anyhow::{Result, ensure};

use super::Ctx;
use crate::data::{Customer, LARDER_TABLE, customer};
use crate::larder_side;
use crate::measure::{Metric, Side, Spent, phase, rss};
use crate::raw;

const SEED: u64 = 8_000;
/// Rows per loading transaction (multi-row inserts of 1,000 rows inside).
const LOAD_TX_ROWS: u64 = 10_000;

/// Runs W8.
pub(crate) async fn run(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let rows = u64::try_from(cx.sizes.w8_rows)?;
    let db = cx.target.fresh().await?;
    println!("  W8: bulk-loading {rows} entities into larder's table …");
    let mut start = 0;
    while start < rows {
        let end = (start + LOAD_TX_ROWS).min(rows);
        let batch: Vec<Customer> = (start..end).map(|i| customer(SEED, i)).collect();
        raw::bulk_insert(&db.raw, LARDER_TABLE, &batch).await?;
        start = end;
    }
    raw::analyze(&db.raw).await?;
    // Warm the caches once (not measured), so the first measured side is not penalized.
    let (warm_rows, expected_sum) = raw::stream_larder_table(&db.raw).await?;
    ensure!(
        warm_rows == rows,
        "W8: {warm_rows} rows streamed, {rows} loaded"
    );

    let can_rss = rss::reset_peak();
    let mut m = Metric::new("W8 stream", "rows/s", 1.0);
    m.rss_limit_mib = Some(64.0);
    let mut baselines = Vec::new();
    let mut growth: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for run in 0..cx.runs {
        let mut spent = Spent::default();
        for side in Side::order(run) {
            rss::reset_peak();
            let start_rss = rss::current_mib();
            if let Some(b) = start_rss {
                baselines.push(b);
            }
            let ((n, sum), wall, cpu) = phase(async {
                match side {
                    Side::Larder => larder_side::stream_all(&db.store).await,
                    Side::Raw => raw::stream_larder_table(&db.raw).await,
                }
            })
            .await?;
            ensure!(
                n == rows && sum == expected_sum,
                "W8: {} streamed {n} rows (sum {sum}), expected {rows} (sum {expected_sum})",
                side.name()
            );
            if can_rss && let Some(peak) = rss::peak_mib() {
                m.push_rss(side, peak);
                if let Some(start) = start_rss {
                    growth[side.index()].push(peak - start);
                }
            }
            spent.add(side, wall, cpu);
        }
        m.record(cx.sizes.w8_rows, &spent);
    }
    let base = crate::measure::median(&baselines);
    m.note = Some(if can_rss {
        format!(
            "W8: {rows} entities; both sides stream larder's table (read-only: same rows, same \
             SQL). Peak RSS = VmHWM of the whole process after resetting it (clear_refs) before \
             each phase; RSS at phase start ≈ {base:.1} MiB (what bulk loading left \
             resident); growth during the phase: larder +{:.1} MiB, raw +{:.1} MiB.",
            crate::measure::median(&growth[0]),
            crate::measure::median(&growth[1]),
        )
    } else {
        format!(
            "W8: {rows} entities; both sides stream larder's table. Peak RSS not measured \
             (/proc/self/clear_refs is not writable here)."
        )
    });
    db.close().await;
    Ok(vec![m])
}
