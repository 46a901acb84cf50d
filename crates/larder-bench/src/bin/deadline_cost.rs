//! `deadline-cost` (issue 9): what a deadline costs a unit of work on PostgreSQL. The same
//! read-only unit of work — `begin`, five `get`s by id, `commit` — runs in alternating blocks
//! with no deadline and with a 5 s deadline; the report is units of work per second for
//! each (medians of the blocks) and their ratio. Before the change every statement under a
//! deadline paid a `set_config` round trip (2–2.7× slower); now `BEGIN` carries the
//! `statement_timeout` and it is re-armed only when it no longer fits.
//!
//! ```text
//! LARDER_BENCH_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p larder-bench --bin deadline-cost -- [blocks] [uows_per_block]
//! ```

use std::time::{Duration, Instant};

use anyhow::Result;
use larder::{Entity, Settings, UowOptions};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize, Entity)]
#[larder(table = "deadline_cost", document)]
struct Row {
    id: String,
    #[larder(indexed)]
    n: i64,
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let blocks: usize = args.get(1).map_or(Ok(10), |s| s.parse())?;
    let per_block: u32 = args.get(2).map_or(Ok(500), |s| s.parse())?;
    let url = std::env::var("LARDER_BENCH_POSTGRES_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut settings = Settings::from_url(url);
    settings.max_connections = Some(2);
    let store = larder::connect(&settings).await?;
    store.register::<Row>().await?;
    let ids: Vec<String> = (0..5).map(|i| format!("dc-{i}")).collect();
    let mut uow = store.begin().await?;
    for (i, id) in ids.iter().enumerate() {
        let row = Row {
            id: id.clone(),
            n: i64::try_from(i)?,
        };
        if uow.repo::<Row>().get(id).await?.is_none() {
            uow.repo::<Row>().insert(&row).await?;
        }
    }
    uow.commit().await?;
    let (mut without, mut with) = (Vec::new(), Vec::new());
    for b in 0..blocks * 2 {
        let deadline = (b % 2 == 1) == (b / 2 % 2 == 0);
        let t0 = Instant::now();
        for _ in 0..per_block {
            let opts = if deadline {
                UowOptions::default()
                    .read_only()
                    .with_timeout(Duration::from_secs(5))
            } else {
                UowOptions::default().read_only()
            };
            let mut uow = store.begin_with(opts).await?;
            for id in &ids {
                uow.repo::<Row>().get(id).await?;
            }
            uow.commit().await?;
        }
        let rate = f64::from(per_block) / t0.elapsed().as_secs_f64();
        if deadline {
            with.push(rate);
        } else {
            without.push(rate);
        }
    }
    let (a, b) = (median(&mut without), median(&mut with));
    println!(
        "5-get read unit of work on PostgreSQL, {blocks} blocks × {per_block} per side: \
         without deadline {a:.0}/s, with a 5 s deadline {b:.0}/s, ratio with/without {:.3}",
        b / a
    );
    store.close().await;
    Ok(())
}
