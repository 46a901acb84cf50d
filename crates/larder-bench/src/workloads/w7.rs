//! W7: `find` with a two-field specification + order + page of 50 over a table of entities
//! whose queried fields are indexed. The data is loaded once per backend (read-only
//! workload); each run times the same parameter sequence on both sides, alternating in
//! blocks of [`BLOCK`] queries.

use anyhow::{Result, ensure};

use super::Ctx;
use crate::data::{COUNTRIES, LARDER_TABLE, MIN_AGE, RAW_TABLE, Rng, customer};
use crate::larder_side;
use crate::measure::{Metric, Side, count_f64, interleaved};
use crate::raw;

const PAGE: u32 = 50;
const SEED: u64 = 7_000;
/// Queries per block: the sides alternate every block (see [`interleaved`]).
const BLOCK: usize = 25;
/// Queries with `age >= MAX_QUERY_AGE` would match too few rows to fill a page.
const MAX_QUERY_AGE: i64 = 80;

/// Runs W7.
pub(crate) async fn run(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let rows = cx.sizes.w7_rows;
    let queries = cx.sizes.w7_queries;
    let db = cx.target.fresh().await?;
    println!("  W7: loading {rows} entities through larder (1,000 per unit of work) …");
    let loaded = larder_side::load(
        &db.store,
        (0..u64::try_from(rows)?).map(|i| customer(SEED, i)),
        1_000,
    )
    .await?;
    let copied = raw::copy_larder_into_raw(&db.raw).await?;
    ensure!(
        loaded == copied,
        "W7: loaded {loaded} rows but copied {copied}"
    );
    raw::analyze(&db.raw).await?;

    let mut rng = Rng::seeded(SEED);
    let params: Vec<(&str, i64)> = (0..queries)
        .map(|_| {
            (
                COUNTRIES[rng.index(COUNTRIES.len())],
                rng.range_i64(MIN_AGE, MAX_QUERY_AGE),
            )
        })
        .collect();
    let larder_queries: Vec<larder::Query> = params
        .iter()
        .map(|(c, a)| larder_side::find_query(c, *a, PAGE))
        .collect();
    let page = i64::from(PAGE);

    // Same answers on both sides (and a warm-up).
    let mut returned = 0_usize;
    let checked = if Side::both() { 50 } else { 0 };
    for ((country, age), q) in params.iter().zip(&larder_queries).take(checked) {
        let (l, l_more) = larder_side::find(&db.store, q).await?;
        let (r, r_more) = raw::find(&db.raw, country, *age, page).await?;
        let l_ids: Vec<_> = l.iter().map(|v| v.value.id).collect();
        let r_ids: Vec<_> = r.iter().map(|(c, _)| c.id).collect();
        ensure!(
            l_ids == r_ids && l_more == r_more,
            "W7: larder and raw pages differ for country={country} age>={age}"
        );
        returned += l_ids.len();
    }
    let plan_larder = raw::explain_find(&db.raw, LARDER_TABLE, params[0].0, params[0].1).await?;
    let plan_raw = raw::explain_find(&db.raw, RAW_TABLE, params[0].0, params[0].1).await?;

    let work: Vec<(&str, i64, &larder::Query)> = params
        .iter()
        .zip(&larder_queries)
        .map(|((c, a), q)| (*c, *a, q))
        .collect();
    let mut m = Metric::new("W7 find", "queries/s", 0.9);
    for run in 0..cx.runs {
        let spent = interleaved(run, &work, BLOCK, async |side, (country, age, q)| {
            let n = match side {
                Side::Larder => larder_side::find(&db.store, q).await?.0.len(),
                Side::Raw => raw::find(&db.raw, country, *age, page).await?.0.len(),
            };
            std::hint::black_box(n);
            Ok(())
        })
        .await?;
        m.record(queries, &spent);
    }
    let avg = count_f64(returned) / count_f64(params.len().min(checked).max(1));
    let mut note = format!(
        "W7: {rows} entities, {queries} queries per run, page {PAGE} (limit {} fetched), \
         {avg:.1} rows per page on average.\n  plan (larder table): {plan_larder}",
        PAGE + 1
    );
    if without_costs(&plan_raw.replace(RAW_TABLE, LARDER_TABLE)) != without_costs(&plan_larder) {
        note.push_str(&format!("\n  plan (raw table, differs!): {plan_raw}"));
    } else {
        note.push_str("\n  plan (raw table): identical");
    }
    m.note = Some(note);
    db.close().await;
    Ok(vec![m])
}

/// A PostgreSQL plan without its `(cost=…)` estimates (they differ by table size noise).
fn without_costs(plan: &str) -> String {
    let mut out = String::with_capacity(plan.len());
    let mut rest = plan;
    while let Some(i) = rest.find("(cost=") {
        out.push_str(&rest[..i]);
        match rest[i..].find(')') {
            Some(j) => rest = &rest[i + j + 1..],
            None => {
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}
