//! `writer-fairness` (issue 8 D5): how writers of one process share SQLite's single write
//! lock. `W` tasks loop for `S` seconds: open a write transaction, hold it `H` ms (a sleep
//! standing in for work), commit. Reported per side: commits, `begin` wait p50 / p99 / max,
//! the fairness ratio (fewest commits of a task / most), and `Busy` failures.
//!
//! - `raw`: sqlx with the same pool settings larder uses (WAL, `BEGIN IMMEDIATE`,
//!   `busy_timeout` 5 s): SQLite's sleep-and-poll busy handler decides who goes next —
//!   larder's behaviour before the fix.
//! - `larder`: `store.begin()`, which queues writers for the backend's FIFO write permit
//!   before `BEGIN IMMEDIATE`.
//!
//! ```text
//! cargo run --release -p larder-bench --bin writer-fairness -- [writers] [seconds] [hold_ms]
//! ```

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use larder::{Error, Settings};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions};

#[derive(Debug, Default)]
struct Outcome {
    commits: u64,
    busy: u64,
    waits_us: Vec<u64>,
}

fn report(side: &str, per_task: &[Outcome]) {
    let mut waits: Vec<u64> = per_task.iter().flat_map(|o| o.waits_us.clone()).collect();
    waits.sort_unstable();
    let pct = |p: f64| -> f64 {
        if waits.is_empty() {
            return 0.0;
        }
        #[allow(
            clippy::cast_possible_truncation,
            clippy::cast_sign_loss,
            clippy::cast_precision_loss
        )]
        let i = ((waits.len() - 1) as f64 * p).round() as usize;
        #[allow(clippy::cast_precision_loss)]
        let ms = waits[i] as f64 / 1000.0;
        ms
    };
    let commits: Vec<u64> = per_task.iter().map(|o| o.commits).collect();
    let total: u64 = commits.iter().sum();
    let busy: u64 = per_task.iter().map(|o| o.busy).sum();
    let (lo, hi) = (
        *commits.iter().min().unwrap_or(&0),
        *commits.iter().max().unwrap_or(&0),
    );
    #[allow(clippy::cast_precision_loss)]
    let fairness = if hi == 0 { 0.0 } else { lo as f64 / hi as f64 };
    println!(
        "{side:>7}: commits {total:>5}  begin wait p50 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms  \
         fairness (min/max commits per task) {fairness:.2} ({lo}/{hi})  busy errors {busy}",
        pct(0.5),
        pct(0.99),
        pct(1.0),
    );
}

async fn run_raw(
    path: &str,
    writers: usize,
    run: Duration,
    hold: Duration,
) -> Result<Vec<Outcome>> {
    let opts = SqliteConnectOptions::from_str(&format!("sqlite://{path}"))?
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(5));
    let pool = SqlitePoolOptions::new()
        .max_connections(u32::try_from(writers)?.max(4))
        .connect_with(opts)
        .await?;
    sqlx::query("CREATE TABLE IF NOT EXISTS t (id INTEGER PRIMARY KEY, n INTEGER)")
        .execute(&pool)
        .await?;
    let end = Instant::now() + run;
    let mut tasks = Vec::new();
    for w in 0..writers {
        let pool = pool.clone();
        tasks.push(tokio::spawn(async move {
            let mut o = Outcome::default();
            while Instant::now() < end {
                let t0 = Instant::now();
                match pool.begin_with("BEGIN IMMEDIATE").await {
                    Ok(mut tx) => {
                        o.waits_us
                            .push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
                        sqlx::query("INSERT INTO t (n) VALUES (?)")
                            .bind(i64::try_from(w).unwrap_or(0))
                            .execute(&mut *tx)
                            .await
                            .ok();
                        tokio::time::sleep(hold).await;
                        if tx.commit().await.is_ok() {
                            o.commits += 1;
                        }
                    }
                    Err(_) => o.busy += 1,
                }
            }
            o
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await?);
    }
    pool.close().await;
    Ok(out)
}

async fn run_larder(
    path: &str,
    writers: usize,
    run: Duration,
    hold: Duration,
) -> Result<Vec<Outcome>> {
    let mut settings = Settings::from_url(format!("sqlite://{path}"));
    settings.max_connections = Some(u32::try_from(writers)?.max(4));
    let store = larder::connect(&settings).await?;
    let store = Arc::new(store);
    let end = Instant::now() + run;
    let mut tasks = Vec::new();
    for _ in 0..writers {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut o = Outcome::default();
            while Instant::now() < end {
                let t0 = Instant::now();
                match store.begin().await {
                    Ok(uow) => {
                        o.waits_us
                            .push(u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX));
                        tokio::time::sleep(hold).await;
                        if uow.commit().await.is_ok() {
                            o.commits += 1;
                        }
                    }
                    Err(Error::Transient { .. }) => o.busy += 1,
                    Err(e) => panic!("{e}"),
                }
            }
            o
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await?);
    }
    store.close().await;
    Ok(out)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let writers: usize = args.get(1).map_or(Ok(8), |s| s.parse())?;
    let secs: u64 = args.get(2).map_or(Ok(20), |s| s.parse())?;
    let hold_ms: u64 = args.get(3).map_or(Ok(10), |s| s.parse())?;
    let (run, hold) = (Duration::from_secs(secs), Duration::from_millis(hold_ms));
    println!("{writers} writers, {secs} s per side, each transaction holds the lock {hold_ms} ms");
    let dir = std::env::temp_dir().join(format!("larder-fairness-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    for (i, side) in ["raw", "larder", "raw", "larder"].iter().enumerate() {
        let path = dir.join(format!("{side}-{i}.db"));
        let path = path.display().to_string();
        let per_task = if *side == "raw" {
            run_raw(&path, writers, run, hold).await?
        } else {
            run_larder(&path, writers, run, hold).await?
        };
        report(side, &per_task);
    }
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}
