//! `larder-bench`: larder against hand-written sqlx, in the same process, the same run and
//! the same fresh database, with the same durability settings (see
//! `WORKLOADS.md` in this crate).
//!
//! ```text
//! cargo run --release -p larder-bench -- [--backend sqlite|postgres|all]
//!     [--workload w1|w2|w3|w4|w5|w6|w6c|w7|b1|b2|w8|w8e|o1|o2|o3|migrations|all] [--runs N] [--quick|--full]
//! ```
//!
//! Every workload runs each side `N` times, alternating which side goes first, and reports
//! the medians (with min and max) of ops/s for larder and raw sqlx and the ratio
//! larder / raw. PostgreSQL comes from `LARDER_BENCH_POSTGRES_URL`.

mod backends;
mod data;
mod larder_events;
mod larder_side;
mod measure;
mod raw;
mod raw_events;
mod workloads;

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::{Parser, ValueEnum};

use crate::backends::{Kind, Target};
use crate::measure::{Metric, Side, max, median, min};
use crate::workloads::{Ctx, REGISTRY, Sizes, Workload};

/// Which backends to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum BackendArg {
    /// An SQLite file in a temporary directory.
    Sqlite,
    /// PostgreSQL at `LARDER_BENCH_POSTGRES_URL`.
    Postgres,
    /// Both.
    All,
}

/// `--only`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum OnlyArg {
    /// larder only.
    Larder,
    /// Raw sqlx only.
    Raw,
}

/// larder benchmarks: larder vs raw sqlx on the same database, same run.
#[derive(Debug, Parser)]
#[command(name = "larder-bench", version)]
struct Cli {
    /// Backend(s) to run on.
    #[arg(long, value_enum, default_value = "all")]
    backend: BackendArg,
    /// Workload(s): `all`, or ids separated by commas (w1, w2, w3, w4, w5, w6, w7, w8, w8e,
    /// migrations).
    #[arg(long, default_value = "all")]
    workload: String,
    /// Runs per side; medians are reported.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Small sizes (smoke test).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The sizes of WORKLOADS.md (the default).
    #[arg(long)]
    full: bool,
    /// PostgreSQL server (a schema `larder_bench` is dropped and recreated in it).
    #[arg(
        long,
        env = "LARDER_BENCH_POSTGRES_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/test",
        hide_env_values = true
    )]
    postgres_url: String,
    /// Directory for the SQLite files (default: the system temporary directory).
    #[arg(long)]
    sqlite_dir: Option<PathBuf>,
    /// Run only one side (for profiling it in isolation; no ratios then).
    #[arg(long, value_enum)]
    only: Option<OnlyArg>,
    /// Override: W5 operations per side and run.
    #[arg(long)]
    w5_ops: Option<usize>,
    /// Override: W7 entities.
    #[arg(long)]
    w7_rows: Option<usize>,
    /// Override: W7 queries per side and run.
    #[arg(long)]
    w7_queries: Option<usize>,
    /// Override: W8 entities.
    #[arg(long)]
    w8_rows: Option<usize>,
    /// Override: W1 streams (5 events each; also the W3/W4 log).
    #[arg(long)]
    w1_streams: Option<usize>,
    /// Override: W2 streams (50 events each; also the W4 log).
    #[arg(long)]
    w2_streams: Option<usize>,
    /// Override: W6 single-event units of work per writer.
    #[arg(long)]
    w6_events: Option<usize>,
    /// Run on tokio's current-thread runtime (one thread) instead of the multi-thread one.
    #[arg(long)]
    current_thread: bool,
    /// Override: W6 concurrent writers (default 8).
    #[arg(long)]
    w6_writers: Option<usize>,
    /// Override: W8-events events.
    #[arg(long)]
    w8e_events: Option<usize>,
    /// Override: migrations applied by the `migrations` workload.
    #[arg(long)]
    migrations: Option<usize>,
}

fn selected_workloads(arg: &str) -> Result<Vec<&'static Workload>> {
    if arg.eq_ignore_ascii_case("all") {
        return Ok(REGISTRY.iter().collect());
    }
    let mut out = Vec::new();
    for id in arg.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match REGISTRY.iter().find(|w| w.id.eq_ignore_ascii_case(id)) {
            Some(w) => out.push(w),
            None => bail!(
                "unknown workload `{id}`; known: all, {}",
                REGISTRY.iter().map(|w| w.id).collect::<Vec<_>>().join(", ")
            ),
        }
    }
    Ok(out)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // `--current-thread`: one runtime thread, so client CPU adds to latency as on a busy
    // host (with `scripts/bench-pinned.sh`, client and server share one core).
    let rt = if cli.current_thread {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()?
    };
    rt.block_on(run(cli))
}

async fn run(cli: Cli) -> Result<()> {
    if cli.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let workloads = selected_workloads(&cli.workload)?;
    Side::set_only(cli.only.map(|o| match o {
        OnlyArg::Larder => Side::Larder,
        OnlyArg::Raw => Side::Raw,
    }));
    let mut sizes = if cli.quick {
        Sizes::quick()
    } else {
        Sizes::full()
    };
    sizes.w5_ops = cli.w5_ops.unwrap_or(sizes.w5_ops);
    sizes.w7_rows = cli.w7_rows.unwrap_or(sizes.w7_rows);
    sizes.w7_queries = cli.w7_queries.unwrap_or(sizes.w7_queries);
    sizes.w8_rows = cli.w8_rows.unwrap_or(sizes.w8_rows);
    sizes.migrations = cli.migrations.unwrap_or(sizes.migrations);
    sizes.w1_streams = cli.w1_streams.unwrap_or(sizes.w1_streams);
    sizes.w2_streams = cli.w2_streams.unwrap_or(sizes.w2_streams);
    sizes.w6_events = cli.w6_events.unwrap_or(sizes.w6_events);
    sizes.w6_writers = cli.w6_writers.unwrap_or(sizes.w6_writers).max(1);
    sizes.w8e_events = cli.w8e_events.unwrap_or(sizes.w8e_events);
    let kinds = match cli.backend {
        BackendArg::Sqlite => vec![Kind::Sqlite],
        BackendArg::Postgres => vec![Kind::Postgres],
        BackendArg::All => vec![Kind::Sqlite, Kind::Postgres],
    };
    let sqlite_dir = cli
        .sqlite_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("larder-bench"));

    println!("larder-bench {}", env!("CARGO_PKG_VERSION"));
    println!(
        "machine: {} logical CPUs; {}; runs per side: {}; sizes: {sizes:?}",
        std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        std::fs::read_to_string("/proc/version")
            .ok()
            .and_then(|v| v.split_whitespace().nth(2).map(|k| format!("Linux {k}")))
            .unwrap_or_else(|| std::env::consts::OS.to_owned()),
        cli.runs
    );
    let started = Instant::now();
    let mut reports = Vec::new();
    for kind in kinds {
        reports.push(run_backend(kind, &cli, &sizes, &workloads, &sqlite_dir).await?);
    }
    println!("\n===== summary (medians of {} runs) =====", cli.runs);
    for r in &reports {
        print_report(r);
    }
    println!("total time: {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// Everything measured on one backend.
#[derive(Debug)]
struct Report {
    kind: Kind,
    version: String,
    location: String,
    durability_larder: String,
    durability_raw: String,
    metrics: Vec<Metric>,
}

async fn run_backend(
    kind: Kind,
    cli: &Cli,
    sizes: &Sizes,
    workloads: &[&Workload],
    sqlite_dir: &std::path::Path,
) -> Result<Report> {
    println!("\n===== {} =====", kind.name());
    backends::check_ddl(kind)?;
    println!("raw DDL = larder's DDL (table renamed) — checked");
    for (op, sql) in raw::statements(kind) {
        println!("  raw {op:<6} {sql}");
    }
    let target = Target::new(kind, &cli.postgres_url, sqlite_dir).await?;
    let probe = target.fresh().await?;
    let version = probe.version().await?;
    let location = probe.location(&target);
    let (durability_larder, durability_raw) = probe.durability().await?;
    probe.close().await;
    println!("{version} at {location}");
    println!("durability (larder's connection): {durability_larder}");
    println!("durability (raw pool):            {durability_raw}");
    if durability_larder != durability_raw {
        bail!("larder and raw run with different durability settings");
    }

    let cx = Ctx {
        target: &target,
        sizes,
        runs: cli.runs,
    };
    let mut metrics = Vec::new();
    for w in workloads {
        println!("-- {} {}", w.id.to_uppercase(), w.title);
        let t0 = Instant::now();
        let ms = (w.run)(&cx).await?;
        for m in &ms {
            print_metric_line(m);
        }
        println!("   ({:.0} s)", t0.elapsed().as_secs_f64());
        metrics.extend(ms);
    }
    Ok(Report {
        kind,
        version,
        location,
        durability_larder,
        durability_raw,
        metrics,
    })
}

fn print_metric_line(m: &Metric) {
    let p50 = if m.larder_p50.is_empty() && m.raw_p50.is_empty() {
        String::new()
    } else {
        format!(
            "  p50 µs {:.0} / {:.0}",
            median(&m.larder_p50),
            median(&m.raw_p50)
        )
    };
    println!(
        "   {:<10} larder {:>9.0} {}  raw {:>9.0}  ratio {:.2}{p50}  CPU µs/op {:.1} / {:.1}  runs: larder {:?} raw {:?}",
        m.name,
        median(&m.larder),
        m.unit,
        median(&m.raw),
        m.ratio(),
        median(&m.larder_cpu),
        median(&m.raw_cpu),
        m.larder.iter().map(|v| v.round()).collect::<Vec<_>>(),
        m.raw.iter().map(|v| v.round()).collect::<Vec<_>>(),
    );
}

fn print_report(r: &Report) {
    println!("\n### {} ({})\n", r.kind.name(), r.version);
    println!("location: {}", r.location);
    println!("durability (larder): {}", r.durability_larder);
    println!("durability (raw):    {}\n", r.durability_raw);
    println!(
        "| workload | unit | larder (median) | raw (median) | ratio larder/raw | target | met? | larder min–max | raw min–max | per-run ratios | p50 latency µs larder / raw (ratio) | client CPU µs/op larder / raw | peak RSS MiB larder / raw |"
    );
    println!("|---|---|---:|---:|---:|---|---|---|---|---|---|---|---|");
    for m in &r.metrics {
        let rss = if m.larder_rss.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1} / {:.1}", median(&m.larder_rss), median(&m.raw_rss))
        };
        let target = match m.rss_limit_mib {
            Some(l) => format!("≥ {:.1}×, RSS < {l:.0} MiB", m.target_ratio),
            None => format!("≥ {:.1}×", m.target_ratio),
        };
        let cpu = if m.larder_cpu.is_empty() && m.raw_cpu.is_empty() {
            "–".to_owned()
        } else {
            format!("{:.1} / {:.1}", median(&m.larder_cpu), median(&m.raw_cpu))
        };
        let p50 = if m.larder_p50.is_empty() && m.raw_p50.is_empty() {
            "–".to_owned()
        } else {
            format!(
                "{:.0} / {:.0} ({:.2})",
                median(&m.larder_p50),
                median(&m.raw_p50),
                m.p50_ratio()
            )
        };
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} | {} | {:.0}–{:.0} | {:.0}–{:.0} | {} | {} | {} | {} |",
            m.name,
            m.unit,
            median(&m.larder),
            median(&m.raw),
            m.ratio(),
            target,
            if m.met() { "yes" } else { "**no**" },
            min(&m.larder),
            max(&m.larder),
            min(&m.raw),
            max(&m.raw),
            m.run_ratios()
                .iter()
                .map(|x| format!("{x:.2}"))
                .collect::<Vec<_>>()
                .join(" "),
            p50,
            cpu,
            rss
        );
    }
    for m in &r.metrics {
        if let Some(n) = &m.note {
            println!("\n{n}");
        }
    }
}
