//! Floats round-trip bit for bit (issue 8, D7/D8): random finite `f64`s and `f32`s (any
//! bit pattern, plus the values whose shortest decimal form is hard to parse back) written
//! through the repository read back with the same bits on memory, SQLite and PostgreSQL —
//! in mapped columns, document columns, document bodies and JSON fields — except negative
//! zero, which every backend stores as `0.0`. An `eq` specification on each value matches
//! the same rows whether it is built in Rust or parsed from its JSON form.
//!
//! `LARDER_FLOAT_CASES` sets the number of cases (default 64).

use std::sync::atomic::{AtomicU64, Ordering};

use larder::{Entity, Query, Spec, Store, field};
use larder_testkit::TestDb;
use larder_testkit::backends;
use larder_testkit::entities::{Measurement, Sample};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        3 => any::<u64>().prop_map(f64::from_bits).prop_filter("finite", |f| f.is_finite()),
        1 => (1u32..100_000).prop_map(|i| f64::from(i).sqrt()),
        1 => (1i32..100_000).prop_map(|i| f64::from(i) * 1e-9),
        1 => any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(f64::from),
        1 => proptest::sample::select(vec![
            f64::MAX, f64::MIN, f64::MIN_POSITIVE, 5e-324, -5e-324, -0.0, 0.0, 1e16, 1e22,
        ]),
    ]
}

fn small() -> impl Strategy<Value = f32> {
    any::<u32>()
        .prop_map(f32::from_bits)
        .prop_filter("finite", |f| f.is_finite())
}

#[derive(Debug, Clone)]
struct Row {
    x: f64,
    y: Option<f64>,
    small: f32,
    more: Vec<f64>,
}

fn rows() -> impl Strategy<Value = Vec<Row>> {
    proptest::collection::vec(
        (
            float(),
            proptest::option::of(float()),
            small(),
            proptest::collection::vec(float(), 0..4),
        )
            .prop_map(|(x, y, small, more)| Row { x, y, small, more }),
        1..6,
    )
}

/// What a stored float reads back as: itself, except that negative zero is `0.0`.
fn stored(f: f64) -> u64 {
    if f == 0.0 { 0 } else { f.to_bits() }
}

fn stored32(f: f32) -> u32 {
    if f == 0.0 { 0 } else { f.to_bits() }
}

static CASE: AtomicU64 = AtomicU64::new(0);

async fn matching<T: Entity<Id = String>>(store: &Store, spec: &Spec) -> Vec<String> {
    let mut uow = store.read().await.unwrap();
    let p = uow
        .repo::<T>()
        .find(&Query::new(spec.clone()).with_limit(1000))
        .await
        .unwrap();
    uow.commit().await.unwrap();
    p.items.iter().map(|v| v.id()).collect()
}

async fn run_case(dbs: &[TestDb], rows: &[Row]) {
    let prefix = format!("r{:05}-", CASE.fetch_add(1, Ordering::Relaxed));
    let ids: Vec<String> = (0..rows.len()).map(|i| format!("{prefix}{i}")).collect();
    for db in dbs {
        let mut uow = db.store.begin().await.unwrap();
        for (r, id) in rows.iter().zip(&ids) {
            let s = Sample {
                y: r.y,
                small: r.small,
                series: larder::Json(r.more.clone()),
                meta: Some(serde_json::json!({ "x": r.x, "more": r.more })),
                ..Sample::new(id, r.x)
            };
            uow.repo::<Sample>().insert(&s).await.unwrap();
            let m = Measurement {
                y: r.y,
                small: r.small,
                samples: r.more.clone(),
                ..Measurement::new(id, r.x)
            };
            uow.repo::<Measurement>().insert(&m).await.unwrap();
        }
        uow.commit().await.unwrap();

        let mut uow = db.store.read().await.unwrap();
        let samples = uow.repo::<Sample>().get_many(&ids).await.unwrap();
        let measurements = uow.repo::<Measurement>().get_many(&ids).await.unwrap();
        uow.commit().await.unwrap();
        assert_eq!(samples.len(), rows.len());
        assert_eq!(measurements.len(), rows.len());
        let b = db.backend;
        for ((r, s), m) in rows.iter().zip(&samples).zip(&measurements) {
            let more: Vec<u64> = r.more.iter().copied().map(stored).collect();
            assert_eq!(s.x.to_bits(), stored(r.x), "{b}: sample x {:e}", r.x);
            assert_eq!(s.y.map(f64::to_bits), r.y.map(stored), "{b}: sample y");
            assert_eq!(s.small.to_bits(), stored32(r.small), "{b}: sample small");
            let series: Vec<u64> = s.series.0.iter().map(|f| f.to_bits()).collect();
            assert_eq!(series, more, "{b}: sample series (Json<Vec<f64>>)");
            let meta = s.meta.as_ref().unwrap();
            assert_eq!(
                meta["x"].as_f64().map(f64::to_bits),
                Some(stored(r.x)),
                "{b}: sample meta (serde_json::Value) {meta}"
            );
            assert_eq!(m.x.to_bits(), stored(r.x), "{b}: measurement x {:e}", r.x);
            assert_eq!(m.y.map(f64::to_bits), r.y.map(stored), "{b}: measurement y");
            assert_eq!(
                m.small.to_bits(),
                stored32(r.small),
                "{b}: measurement small"
            );
            let samples: Vec<u64> = m.samples.iter().map(|f| f.to_bits()).collect();
            assert_eq!(samples, more, "{b}: measurement samples (body)");
        }

        // The same specification, built or parsed from its JSON form, matches the same rows.
        let mine = field("id").starts_with(prefix.as_str());
        for r in rows {
            let mut specs = vec![field("x").eq(r.x), field("x").ge(r.x)];
            if let Some(y) = r.y {
                specs.push(field("y").le(y));
            }
            for spec in specs {
                let built = Spec::And {
                    of: vec![mine.clone(), spec],
                };
                let parsed = Spec::from_json(&serde_json::to_string(&built).unwrap()).unwrap();
                let want = matching::<Sample>(&db.store, &built).await;
                assert!(!want.is_empty(), "{b}: {built:?} matches nothing");
                assert_eq!(
                    matching::<Sample>(&db.store, &parsed).await,
                    want,
                    "{b}: {built:?}"
                );
                let want = matching::<Measurement>(&db.store, &built).await;
                assert!(!want.is_empty(), "{b}: {built:?} matches nothing");
                assert_eq!(
                    matching::<Measurement>(&db.store, &parsed).await,
                    want,
                    "{b}: {built:?}"
                );
            }
        }
    }
}

#[test]
fn floats_round_trip_bit_for_bit_through_the_repository_and_json_specs() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let name = "float_round_trip::every_backend";
    let dbs = rt.block_on(async {
        let mut dbs = vec![
            backends::memory(name).await.unwrap(),
            backends::sqlite(name).await.unwrap(),
        ];
        if let Some(pg) = backends::postgres(name).await {
            dbs.push(pg);
        }
        for db in &dbs {
            db.store.register::<Sample>().await.unwrap();
            db.store.register::<Measurement>().await.unwrap();
        }
        dbs
    });
    let cases = std::env::var("LARDER_FLOAT_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&rows(), |rows| {
        rt.block_on(run_case(&dbs, &rows));
        Ok(())
    });
    rt.block_on(async {
        for db in dbs {
            db.finish().await;
        }
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}
