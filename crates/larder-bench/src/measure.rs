//! Measurements: per-run samples, medians, peak RSS.

use std::future::Future;
use std::time::{Duration, Instant};

/// Which side of a comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// larder's repository API.
    Larder,
    /// Hand-written sqlx.
    Raw,
}

impl Side {
    /// The order of the two sides in run `run`: alternated so neither side always goes
    /// first (cache warmth, WAL checkpoints, background noise).
    /// With `--only`, just that side (for profiling one side in isolation).
    pub(crate) fn order(run: u32) -> Vec<Side> {
        let both = if run.is_multiple_of(2) {
            [Side::Larder, Side::Raw]
        } else {
            [Side::Raw, Side::Larder]
        };
        let only = ONLY.get().copied().flatten();
        both.into_iter()
            .filter(|s| only.is_none_or(|o| o == *s))
            .collect()
    }

    /// Whether both sides run (no `--only`): cross-checks need both.
    pub(crate) fn both() -> bool {
        Side::order(0).len() == 2
    }

    /// Restricts every workload to one side (`--only`; set once at start).
    pub(crate) fn set_only(side: Option<Side>) {
        let _ = ONLY.set(side);
    }

    /// 0 for larder, 1 for raw.
    pub(crate) fn index(self) -> usize {
        match self {
            Side::Larder => 0,
            Side::Raw => 1,
        }
    }

    /// A label.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Side::Larder => "larder",
            Side::Raw => "raw",
        }
    }
}

static ONLY: std::sync::OnceLock<Option<Side>> = std::sync::OnceLock::new();

/// One reported line: a throughput measured for both sides over several runs.
#[derive(Debug, Clone)]
pub(crate) struct Metric {
    /// E.g. `W5 insert`.
    pub(crate) name: String,
    /// E.g. `ops/s`.
    pub(crate) unit: &'static str,
    /// The target ratio larder / raw.
    pub(crate) target_ratio: f64,
    /// The peak-RSS limit for larder, in MiB, if the workload has one.
    pub(crate) rss_limit_mib: Option<f64>,
    /// larder throughput per run.
    pub(crate) larder: Vec<f64>,
    /// Raw throughput per run.
    pub(crate) raw: Vec<f64>,
    /// larder peak RSS per run (MiB), when measured.
    pub(crate) larder_rss: Vec<f64>,
    /// Raw peak RSS per run (MiB), when measured.
    pub(crate) raw_rss: Vec<f64>,
    /// larder median operation latency (µs) per run, when measured.
    pub(crate) larder_p50: Vec<f64>,
    /// Raw median operation latency (µs) per run, when measured.
    pub(crate) raw_p50: Vec<f64>,
    /// larder client CPU per operation (µs) per run, when measured.
    pub(crate) larder_cpu: Vec<f64>,
    /// Raw client CPU per operation (µs) per run, when measured.
    pub(crate) raw_cpu: Vec<f64>,
    /// A remark printed under the table.
    pub(crate) note: Option<String>,
}

impl Metric {
    /// An empty metric.
    pub(crate) fn new(name: impl Into<String>, unit: &'static str, target_ratio: f64) -> Metric {
        Metric {
            name: name.into(),
            unit,
            target_ratio,
            rss_limit_mib: None,
            larder: Vec::new(),
            raw: Vec::new(),
            larder_rss: Vec::new(),
            raw_rss: Vec::new(),
            larder_p50: Vec::new(),
            raw_p50: Vec::new(),
            larder_cpu: Vec::new(),
            raw_cpu: Vec::new(),
            note: None,
        }
    }

    /// Records one run's throughput for a side.
    /// Sides skipped by `--only` record nothing.
    pub(crate) fn push(&mut self, side: Side, value: f64) {
        if !Side::order(0).contains(&side) {
            return;
        }
        match side {
            Side::Larder => self.larder.push(value),
            Side::Raw => self.raw.push(value),
        }
    }

    /// Records one run of both sides: `count` operations each.
    pub(crate) fn record(&mut self, count: usize, spent: &Spent) {
        for side in Side::order(0) {
            let i = side.index();
            self.push(side, per_sec(count, spent.wall[i]));
            if !spent.latencies[i].is_empty() {
                let us: Vec<f64> = spent.latencies[i]
                    .iter()
                    .map(|d| d.as_secs_f64() * 1e6)
                    .collect();
                match side {
                    Side::Larder => self.larder_p50.push(median(&us)),
                    Side::Raw => self.raw_p50.push(median(&us)),
                }
            }
            if let Some(cpu) = spent.cpu[i] {
                let us = cpu.as_secs_f64() * 1e6 / count_f64(count).max(1.0);
                match side {
                    Side::Larder => self.larder_cpu.push(us),
                    Side::Raw => self.raw_cpu.push(us),
                }
            }
        }
    }

    /// Records one run's peak RSS for a side.
    pub(crate) fn push_rss(&mut self, side: Side, mib: f64) {
        match side {
            Side::Larder => self.larder_rss.push(mib),
            Side::Raw => self.raw_rss.push(mib),
        }
    }

    /// median(larder) / median(raw).
    pub(crate) fn ratio(&self) -> f64 {
        median(&self.larder) / median(&self.raw)
    }

    /// The latency-based ratio: median(raw p50) / median(larder p50) (> 1: larder is
    /// faster). Robust against stalls on a noisy machine; NaN when latencies were not
    /// measured.
    pub(crate) fn p50_ratio(&self) -> f64 {
        median(&self.raw_p50) / median(&self.larder_p50)
    }

    /// The per-run ratios larder / raw (runs pair up: same run, same database).
    pub(crate) fn run_ratios(&self) -> Vec<f64> {
        self.larder
            .iter()
            .zip(&self.raw)
            .map(|(l, r)| l / r)
            .collect()
    }

    /// Whether the throughput target (and the RSS limit, if any) is met by the medians.
    pub(crate) fn met(&self) -> bool {
        let rss_ok = match self.rss_limit_mib {
            Some(limit) if !self.larder_rss.is_empty() => median(&self.larder_rss) < limit,
            _ => true,
        };
        self.ratio() >= self.target_ratio && rss_ok
    }
}

/// The median (mean of the middle two for even lengths); NaN when empty.
pub(crate) fn median(v: &[f64]) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let mid = s.len() / 2;
    if s.len() % 2 == 1 {
        s[mid]
    } else {
        f64::midpoint(s[mid - 1], s[mid])
    }
}

/// The smallest value (NaN when empty).
pub(crate) fn min(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::min).unwrap_or(f64::NAN)
}

/// The largest value (NaN when empty).
pub(crate) fn max(v: &[f64]) -> f64 {
    v.iter().copied().reduce(f64::max).unwrap_or(f64::NAN)
}

/// `count` as a float (counts here stay far below 2^32).
pub(crate) fn count_f64(count: usize) -> f64 {
    f64::from(u32::try_from(count).unwrap_or(u32::MAX))
}

/// Operations per second.
pub(crate) fn per_sec(count: usize, elapsed: Duration) -> f64 {
    count_f64(count) / elapsed.as_secs_f64().max(1e-9)
}

/// Wall-clock and client CPU time spent by each side (`[larder, raw]`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Spent {
    /// Wall-clock time.
    pub(crate) wall: [Duration; 2],
    /// CPU time of this process (all threads: tokio workers, sqlx's SQLite worker threads;
    /// not the PostgreSQL server), when `/proc/self/stat` is readable.
    pub(crate) cpu: [Option<Duration>; 2],
    /// Per-operation latencies, when the workload has operations (not W8).
    pub(crate) latencies: [Vec<Duration>; 2],
}

impl Spent {
    /// Records a phase of one side.
    pub(crate) fn add(&mut self, side: Side, wall: Duration, cpu: Option<Duration>) {
        let i = side.index();
        self.wall[i] += wall;
        self.cpu[i] = match (self.cpu[i], cpu) {
            (Some(a), Some(b)) => Some(a + b),
            (None, Some(b)) if self.wall[i] == wall => Some(b),
            _ => None,
        };
    }
}

/// Times one phase: wall clock and process CPU.
pub(crate) async fn phase<T>(
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<(T, Duration, Option<Duration>)> {
    let c0 = cpu::process_time();
    let t0 = Instant::now();
    let r = Profiled(Box::pin(f)).await?;
    let wall = t0.elapsed();
    let cpu = match (c0, cpu::process_time()) {
        (Some(a), Some(b)) => Some(b.saturating_sub(a)),
        _ => None,
    };
    Ok((r, wall, cpu))
}

/// A timed phase's future behind a poll that is never inlined, so that a profiler can
/// count exactly the phase: `valgrind --tool=callgrind --collect-atstart=no
/// '--toggle-collect=<larder_bench::measure::Profiled*'`.
struct Profiled<F>(std::pin::Pin<Box<F>>);

impl<F: Future> Future for Profiled<F> {
    type Output = F::Output;

    #[inline(never)]
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        self.0.as_mut().poll(cx)
    }
}

/// Runs `op` for every item on both sides, in interleaved blocks of `block` items
/// (larder's block, raw's block, then raw first for the next block, and so on), and returns
/// the time each side spent. Interleaving pairs both sides with the same background
/// conditions, which matters on a shared, noisy machine.
pub(crate) async fn interleaved<T>(
    run: u32,
    items: &[T],
    block: usize,
    mut op: impl AsyncFnMut(Side, &T) -> anyhow::Result<()>,
) -> anyhow::Result<Spent> {
    let mut spent = Spent::default();
    for (b, chunk) in items.chunks(block.max(1)).enumerate() {
        let b = u32::try_from(b % 2).unwrap_or(0);
        for side in Side::order(run.wrapping_add(b)) {
            let lat = &mut spent.latencies[side.index()];
            let ((), wall, cpu) = phase(async {
                for item in chunk {
                    let t0 = Instant::now();
                    op(side, item).await?;
                    lat.push(t0.elapsed());
                }
                Ok(())
            })
            .await?;
            spent.add(side, wall, cpu);
        }
    }
    Ok(spent)
}

/// Process CPU time from `/proc/self/stat` (Linux; clock ticks of 10 ms, so only sums
/// over many phases are meaningful: the truncation errors cancel out on average).
pub(crate) mod cpu {
    use std::time::Duration;

    /// utime + stime of every thread of this process, live and exited.
    pub(crate) fn process_time() -> Option<Duration> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        // Fields after the command name (which may contain spaces) start at field 3.
        let rest = &stat[stat.rfind(')')? + 1..];
        let mut fields = rest.split_whitespace();
        let utime: u64 = fields.nth(11)?.parse().ok()?;
        let stime: u64 = fields.next()?.parse().ok()?;
        // USER_HZ is 100 on every Linux ABI /proc reports in.
        Some(Duration::from_millis((utime + stime) * 10))
    }
}

/// Peak resident set size of this process, via `/proc/self/status` (Linux only).
pub(crate) mod rss {
    /// Resets the peak (VmHWM) to the current RSS: writing `5` to `/proc/self/clear_refs`.
    /// Returns false where that is not possible (not Linux, restricted /proc).
    pub(crate) fn reset_peak() -> bool {
        std::fs::write("/proc/self/clear_refs", "5").is_ok()
    }

    fn status_kib(key: &str) -> Option<u64> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    }

    fn kib_to_mib(kib: u64) -> f64 {
        f64::from(u32::try_from(kib).unwrap_or(u32::MAX)) / 1024.0
    }

    /// The peak RSS since the last reset, in MiB.
    pub(crate) fn peak_mib() -> Option<f64> {
        status_kib("VmHWM:").map(kib_to_mib)
    }

    /// The current RSS, in MiB.
    pub(crate) fn current_mib() -> Option<f64> {
        status_kib("VmRSS:").map(kib_to_mib)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians() {
        assert!((median(&[3.0, 1.0, 2.0]) - 2.0).abs() < 1e-12);
        assert!((median(&[4.0, 1.0, 2.0, 3.0]) - 2.5).abs() < 1e-12);
        assert!(median(&[]).is_nan());
    }
}
