//! Keyset walks (issue 8, D7): random rows with floats at their limits (signed zero,
//! subnormals, ±`f64::MAX`, values whose decimal form needs 17 digits), `i64` near its
//! limits, text with ties and NULLs, under random orderings (1–3 keys, both directions,
//! NULLs first or last) and page sizes 1–3. Walking page by page through the cursors must
//! return every matching row exactly once, in the order of one big page — on memory,
//! SQLite and PostgreSQL, for mapped columns and documents — and that order must be the
//! one an independent comparator in this file computes.
//!
//! `LARDER_KEYSET_CASES` sets the number of cases (default 64).

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use larder::{Entity, Nulls, Order, Query, Spec, Store, field};
use larder_testkit::TestDb;
use larder_testkit::backends;
use larder_testkit::entities::{Measurement, Sample};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

/// Floats where printing and parsing go wrong, and the edges of `f64`.
const SPECIAL_FLOATS: &[f64] = &[
    0.0,
    -0.0,
    1.0,
    -1.0,
    f64::MAX,
    f64::MIN,
    f64::MIN_POSITIVE,
    5e-324,
    -5e-324,
    3.402_823_466_385_288_6e38,
    -2.418_261_144_083_014_7e92,
    0.1,
    0.30000000000000004,
    1e16,
];

const SPECIAL_INTS: &[i64] = &[i64::MIN, i64::MIN + 1, -1, 0, 1, i64::MAX - 1, i64::MAX];

const TEXTS: &[&str] = &["", "a", "a", "ab", "b", "Z", "é", "日本", "~", "a b"];

fn float() -> impl Strategy<Value = f64> {
    prop_oneof![
        4 => proptest::sample::select(SPECIAL_FLOATS),
        1 => any::<u64>().prop_map(f64::from_bits).prop_filter("finite", |f| f.is_finite()),
        1 => (1u32..10_000).prop_map(|i| f64::from(i).sqrt()),
        1 => (1i32..10_000).prop_map(|i| f64::from(i) * 1e-9),
        1 => any::<f32>().prop_filter("finite", |f| f.is_finite()).prop_map(f64::from),
    ]
}

fn int() -> impl Strategy<Value = i64> {
    prop_oneof![
        3 => proptest::sample::select(SPECIAL_INTS),
        1 => any::<i64>(),
    ]
}

fn text() -> impl Strategy<Value = String> {
    proptest::sample::select(TEXTS).prop_map(str::to_owned)
}

#[derive(Debug, Clone)]
struct Row {
    x: f64,
    y: Option<f64>,
    n: i64,
    label: Option<String>,
}

fn row() -> impl Strategy<Value = Row> {
    (
        float(),
        proptest::option::weighted(0.7, float()),
        int(),
        proptest::option::weighted(0.7, text()),
    )
        .prop_map(|(x, y, n, label)| Row { x, y, n, label })
}

#[derive(Debug, Clone)]
struct Key {
    field: &'static str,
    desc: bool,
    nulls: Option<Nulls>,
}

impl Key {
    fn order(&self) -> Order {
        let o = if self.desc {
            Order::desc(self.field)
        } else {
            Order::asc(self.field)
        };
        match self.nulls {
            Some(n) => o.with_nulls(n),
            None => o,
        }
    }

    fn nulls_first(&self) -> bool {
        match self.nulls {
            Some(Nulls::First) => true,
            Some(Nulls::Last) => false,
            None => self.desc,
        }
    }
}

fn ordering() -> impl Strategy<Value = Vec<Key>> {
    proptest::sample::subsequence(vec!["x", "y", "n", "label"], 1..=3)
        .prop_shuffle()
        .prop_flat_map(|fields| {
            let n = fields.len();
            (
                Just(fields),
                proptest::collection::vec(
                    (
                        any::<bool>(),
                        proptest::option::of(prop_oneof![Just(Nulls::First), Just(Nulls::Last)]),
                    ),
                    n,
                ),
            )
        })
        .prop_map(|(fields, dirs)| {
            fields
                .into_iter()
                .zip(dirs)
                .map(|(field, (desc, nulls))| Key { field, desc, nulls })
                .collect()
        })
}

#[derive(Debug, Clone)]
struct Case {
    rows: Vec<Row>,
    order: Vec<Key>,
    page: u32,
    /// `n >= min_n`, when set.
    min_n: Option<i64>,
}

fn case() -> impl Strategy<Value = Case> {
    (
        proptest::collection::vec(row(), 0..10),
        ordering(),
        1u32..=3,
        proptest::option::weighted(0.3, int()),
    )
        .prop_map(|(rows, order, page, min_n)| Case {
            rows,
            order,
            page,
            min_n,
        })
}

/// A key value as the comparator sees it.
#[derive(Debug, Clone, PartialEq)]
enum K {
    Null,
    F(f64),
    I(i64),
    T(String),
}

fn key(r: &Row, field: &str) -> K {
    match field {
        "x" => K::F(r.x),
        "y" => r.y.map_or(K::Null, K::F),
        "n" => K::I(r.n),
        "label" => r.label.clone().map_or(K::Null, K::T),
        other => unreachable!("{other}"),
    }
}

/// SQL ordering, written independently of larder: NULLs where the key says, floats by
/// value (`-0.0 = 0.0`), text by bytes, then the id ascending.
fn expected_order(c: &Case, ids: &[String]) -> Vec<String> {
    let mut idx: Vec<usize> = (0..c.rows.len())
        .filter(|&i| c.min_n.is_none_or(|m| c.rows[i].n >= m))
        .collect();
    idx.sort_by(|&a, &b| {
        for k in &c.order {
            let (va, vb) = (key(&c.rows[a], k.field), key(&c.rows[b], k.field));
            let o = match (&va, &vb) {
                (K::Null, K::Null) => Ordering::Equal,
                (K::Null, _) if k.nulls_first() => Ordering::Less,
                (K::Null, _) => Ordering::Greater,
                (_, K::Null) if k.nulls_first() => Ordering::Greater,
                (_, K::Null) => Ordering::Less,
                (K::F(x), K::F(y)) => dir(x.partial_cmp(y).unwrap(), k.desc),
                (K::I(x), K::I(y)) => dir(x.cmp(y), k.desc),
                (K::T(x), K::T(y)) => dir(x.as_bytes().cmp(y.as_bytes()), k.desc),
                _ => unreachable!(),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        ids[a].as_bytes().cmp(ids[b].as_bytes())
    });
    idx.into_iter().map(|i| ids[i].clone()).collect()
}

fn dir(o: Ordering, desc: bool) -> Ordering {
    if desc { o.reverse() } else { o }
}

static CASE: AtomicU64 = AtomicU64::new(0);
static ROWS_WALKED: AtomicU64 = AtomicU64::new(0);

fn cases() -> u32 {
    std::env::var("LARDER_KEYSET_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(64)
}

async fn open(name: &str) -> Vec<TestDb> {
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
}

/// Walks the query page by page; panics if it does not end within `bound` pages.
async fn walk<T: Entity<Id = String>>(
    store: &Store,
    base: &Query,
    page: u32,
    bound: usize,
) -> Vec<String> {
    let mut uow = store.read().await.unwrap();
    let mut seen = Vec::new();
    let mut q = base.clone().with_limit(page);
    for _ in 0..bound {
        let p = uow.repo::<T>().find(&q).await.unwrap();
        assert!(p.items.len() <= usize::try_from(page).unwrap());
        seen.extend(p.items.iter().map(|v| v.id()));
        match p.next {
            Some(c) => q = base.clone().with_limit(page).with_after(c),
            None => {
                uow.commit().await.unwrap();
                return seen;
            }
        }
    }
    panic!("the walk did not end after {bound} pages; seen so far: {seen:?}");
}

async fn all_at_once<T: Entity<Id = String>>(store: &Store, base: &Query) -> Vec<String> {
    let mut uow = store.read().await.unwrap();
    let p = uow
        .repo::<T>()
        .find(&base.clone().with_limit(1000))
        .await
        .unwrap();
    assert!(p.next.is_none());
    uow.commit().await.unwrap();
    p.items.iter().map(|v| v.id()).collect()
}

async fn run_case(dbs: &[TestDb], c: &Case) {
    let prefix = format!("c{:05}-", CASE.fetch_add(1, AtomicOrdering::Relaxed));
    let ids: Vec<String> = (0..c.rows.len())
        .map(|i| format!("{prefix}{i:02}"))
        .collect();
    for db in dbs {
        let mut uow = db.store.begin().await.unwrap();
        for (r, id) in c.rows.iter().zip(&ids) {
            let s = Sample {
                y: r.y,
                n: r.n,
                label: r.label.clone(),
                ..Sample::new(id, r.x)
            };
            uow.repo::<Sample>().insert(&s).await.unwrap();
            let m = Measurement {
                y: r.y,
                n: r.n,
                label: r.label.clone(),
                ..Measurement::new(id, r.x)
            };
            uow.repo::<Measurement>().insert(&m).await.unwrap();
        }
        uow.commit().await.unwrap();
    }
    let mut filter = field("id").starts_with(prefix.as_str());
    if let Some(m) = c.min_n {
        filter = Spec::And {
            of: vec![filter, field("n").ge(m)],
        };
    }
    let base = Query {
        filter,
        order: c.order.iter().map(Key::order).collect(),
        ..Query::default()
    };
    let expected = expected_order(c, &ids);
    let bound = c.rows.len() + 2;
    for db in dbs {
        for (entity, once, walked) in [
            (
                "sample",
                all_at_once::<Sample>(&db.store, &base).await,
                walk::<Sample>(&db.store, &base, c.page, bound).await,
            ),
            (
                "measurement",
                all_at_once::<Measurement>(&db.store, &base).await,
                walk::<Measurement>(&db.store, &base, c.page, bound).await,
            ),
        ] {
            assert_eq!(once, expected, "{}: one page of {entity}s", db.backend);
            ROWS_WALKED.fetch_add(walked.len() as u64, AtomicOrdering::Relaxed);
            assert_eq!(
                walked, expected,
                "{}: keyset walk over {entity}s with pages of {}",
                db.backend, c.page
            );
        }
    }
}

#[test]
fn keyset_walks_return_every_row_once_in_order_on_every_backend() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dbs = rt.block_on(open("keyset_walk::every_backend"));
    let backends = dbs.len();
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let result = runner.run(&case(), |c| {
        rt.block_on(run_case(&dbs, &c));
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
    let walked = ROWS_WALKED.load(AtomicOrdering::Relaxed);
    eprintln!(
        "keyset walks: {} cases, {walked} rows walked on {backends} backends",
        CASE.load(AtomicOrdering::Relaxed),
    );
    assert!(
        walked >= u64::from(cases()) * u64::try_from(backends).unwrap(),
        "the generator walks too little"
    );
}
