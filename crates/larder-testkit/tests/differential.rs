//! F1 differential test: random specifications (depth ≤ 5, every operator, NULLs, empty
//! `IN`, unicode, `%` `_` `\` in patterns, regex patterns with case-insensitive non-ASCII,
//! `.` against newlines, anchors, escapes and ASCII classes) over random entities (names
//! with newlines, tabs, `é`/`É`, digits, underscores, spaces) return the same ids in the
//! same order on memory, SQLite and PostgreSQL; patterns outside the regex dialect are
//! rejected with the same typed error everywhere. F3: different literal values never change
//! the generated SQL text.
//!
//! `LARDER_DIFF_CASES` sets the number of specifications (default 1,000; the "full" run uses
//! 100,000), `LARDER_DIFF_SEED` the seed (printed on failure for replay).

use larder::{Order, Query, Spec, Value, field};
use larder_core::Entity;
use larder_core::spec::Limits;
use larder_sql::{Dialect, compile};
use larder_testkit::backends;
use larder_testkit::entities::Item;
use larder_testkit::rng::Rng;
use serde_json::json;

const NAMES: &[&str] = &[
    "apple",
    "Apple",
    "APPLE",
    "banana",
    "",
    "a",
    "ab",
    "50%",
    "100% off",
    "under_score",
    "back\\slash",
    "ünïcode",
    "Ünïcode",
    "naïve",
    "日本",
    "a%b_c",
    "zz",
    "Zebra",
    " space",
    "a\nb",
    "\n",
    "line one\nline two",
    "é",
    "É",
    "école",
    "École",
    "x9_y",
    "12 34",
    "tab\tend",
    "a.b",
];
const TAGS: &[&str] = &["x", "y", "X", "", "tag", "ü", "%", "_"];
const PRICES: &[f64] = &[-1.5, 0.0, 0.5, 2.0, 2.5, 1e10, -0.25];

fn metas() -> Vec<serde_json::Value> {
    vec![
        json!({}),
        json!([]),
        json!({"a": 1}),
        json!({"a": 1, "b": [1, 2]}),
        json!({"b": {"c": "d"}}),
        json!(["a", "b"]),
        json!([1, 2, 3]),
        json!(["x", {"a": 1}]),
        json!("a"),
        json!(5),
    ]
}

fn random_items(rng: &mut Rng, n: usize) -> Vec<Item> {
    let metas = metas();
    (0..n)
        .map(|i| Item {
            id: format!("d{i:04}"),
            name: (*rng.pick(NAMES)).to_owned(),
            qty: rng.below(13i64) - 3,
            price: rng.chance(75).then(|| *rng.pick(PRICES)),
            active: rng.chance(50),
            tag: rng.chance(70).then(|| (*rng.pick(TAGS)).to_owned()),
            meta: rng.chance(70).then(|| rng.pick(&metas).clone()),
            note: String::new(),
        })
        .collect()
}

fn like_pattern(rng: &mut Rng) -> String {
    const TOKENS: &[&str] = &[
        "a", "A", "p", "%", "_", "\\%", "\\_", "\\\\", "ü", "n", "e", " ",
    ];
    let len = rng.below(4) + 1;
    (0..len).map(|_| *rng.pick(TOKENS)).collect()
}

fn literal(rng: &mut Rng) -> String {
    const PARTS: &[&str] = &["a", "p", "%", "_", "\\", "ü", "an", "A", "0", "le"];
    let len = rng.below(3);
    (0..len).map(|_| *rng.pick(PARTS)).collect()
}

/// A regex pattern: mostly inside larder's dialect (case-insensitive non-ASCII, `.`
/// against newlines, anchors, escapes, ASCII classes), sometimes outside it (Unicode
/// classes, word boundaries, `\z`, counts over 255…), which every backend must reject alike.
fn regex_pattern(rng: &mut Rng) -> String {
    const WHOLE: &[&str] = &[
        "^a",
        "e$",
        "^[a-c]",
        "an",
        "^.$",
        "x|y",
        "^$",
        "p+l",
        "(?i)é",
        "(?i)^É",
        "(?i)école",
        "(?i)^ÉCOLE$",
        "^[éÉ]",
        "(?s)^.$",
        "a.*b",
        "(?s)a.*b",
        "^a.b$",
        "(?s)^a.b$",
        r"\d",
        r"^\d+",
        r"\w+$",
        r"^\W",
        r"\s",
        r"^\S+$",
        r"\D$",
        "[^a-z]",
        r"[\d_]",
        r"a\.b",
        r"\\",
        r"\n",
        r"^\n",
        r"(?i)a\.B",
        "^(?:a|x)[0-9_]",
        "(a|é)$",
        "e{2}",
        "p{1,2}",
        r"[[:alpha:]]",
        r"\p{L}",
        r"\pL",
        r"e\b",
        r"\z",
        r"\x{41}",
        "a{256}",
        "(?P<x>a)",
        "a**",
        "(?m)^b",
    ];
    const PIECES: &[&str] = &[
        "a", "é", "É", ".", "^", "$", r"\d", r"\w", r"\s", "[a-c]", "[^e]", r"\n", " ", "_",
        "(?i)", "(?s)", "*", "+", "?", "|", "(?:b|e)", r"\.",
    ];
    if rng.chance(60) {
        return (*rng.pick(WHOLE)).to_owned();
    }
    let len = rng.below(4) + 1;
    (0..len).map(|_| *rng.pick(PIECES)).collect()
}

fn value_for(rng: &mut Rng, f: &str) -> Value {
    match f {
        "name" => Value::from(*rng.pick(NAMES)),
        "tag" => Value::from(*rng.pick(TAGS)),
        "qty" => Value::Int(rng.below(13i64) - 3),
        "price" => Value::Float(*rng.pick(PRICES)),
        "active" => Value::Bool(rng.chance(50)),
        "id" => Value::from(format!("d{:04}", rng.below(60))),
        _ => unreachable!(),
    }
}

const SCALAR_FIELDS: &[&str] = &["name", "tag", "qty", "price", "active", "id"];
const TEXT_FIELDS: &[&str] = &["name", "tag", "id"];

fn random_spec(rng: &mut Rng, depth: usize) -> Spec {
    if depth < 5 && rng.chance(35) {
        return match rng.below(3) {
            0 => Spec::And {
                of: (0..rng.below(4))
                    .map(|_| random_spec(rng, depth + 1))
                    .collect(),
            },
            1 => Spec::Or {
                of: (0..rng.below(4))
                    .map(|_| random_spec(rng, depth + 1))
                    .collect(),
            },
            _ => random_spec(rng, depth + 1).not(),
        };
    }
    let f = *rng.pick(SCALAR_FIELDS);
    let t = *rng.pick(TEXT_FIELDS);
    match rng.below(22) {
        0 => field(f).eq(value_for(rng, f)),
        1 => field(f).ne(value_for(rng, f)),
        2 => field(f).lt(value_for(rng, f)),
        3 => field(f).le(value_for(rng, f)),
        4 => field(f).gt(value_for(rng, f)),
        5 => field(f).ge(value_for(rng, f)),
        6 => field(f).is_in(
            (0..rng.below(4))
                .map(|_| value_for(rng, f))
                .collect::<Vec<_>>(),
        ),
        7 => field(f).not_in(
            (0..rng.below(4))
                .map(|_| value_for(rng, f))
                .collect::<Vec<_>>(),
        ),
        8 => field(f).between(value_for(rng, f), value_for(rng, f)),
        9 => field(f).not_between(value_for(rng, f), value_for(rng, f)),
        10 => field(t).like(like_pattern(rng)),
        11 => field(t).ilike(like_pattern(rng)),
        12 => field(t).contains(literal(rng)),
        13 => field(t).icontains(literal(rng)),
        14 => field(t).starts_with(literal(rng)),
        15 => field(t).ends_with(literal(rng)),
        16 => field(*rng.pick(&["price", "tag", "meta", "name"])).is_null(),
        17 => field(*rng.pick(&["tag", "meta", "name"])).is_empty(),
        18 => match rng.below(3) {
            0 => field("meta").json_has_key(*rng.pick(&["a", "b", "x", "c"])),
            1 => field("meta").json_contains(rng.pick(&metas()).clone()),
            _ => field(t).regex(regex_pattern(rng)),
        },
        19 | 20 => field(t).regex(regex_pattern(rng)),
        _ => field(f).is_null().not(),
    }
}

fn random_order(rng: &mut Rng) -> Vec<Order> {
    let keys = ["name", "qty", "price", "active", "tag"];
    let mut out: Vec<Order> = Vec::new();
    for _ in 0..rng.below(4) {
        let k = *rng.pick(&keys);
        if out.iter().any(|o| o.field == k) {
            continue;
        }
        let mut o = if rng.chance(50) {
            Order::asc(k)
        } else {
            Order::desc(k)
        };
        if rng.chance(40) {
            o = o.with_nulls(if rng.chance(50) {
                larder::Nulls::First
            } else {
                larder::Nulls::Last
            });
        }
        out.push(o);
    }
    out
}

/// Replaces every literal with another of the same type and shape.
fn perturb(s: &Spec, rng: &mut Rng) -> Spec {
    let v = |v: &Value, rng: &mut Rng| match v {
        Value::Int(i) => Value::Int(i.wrapping_add(1 + rng.below(9i64))),
        Value::Float(f) => Value::Float(f + 1.25),
        Value::Text(t) => Value::Text(format!("{t}'; DROP TABLE items; --")),
        Value::Bool(b) => Value::Bool(!b),
        other => other.clone(),
    };
    match s {
        Spec::And { of } => Spec::And {
            of: of.iter().map(|s| perturb(s, rng)).collect(),
        },
        Spec::Or { of } => Spec::Or {
            of: of.iter().map(|s| perturb(s, rng)).collect(),
        },
        Spec::Not { spec } => perturb(spec, rng).not(),
        Spec::Eq { field, value } => Spec::Eq {
            field: field.clone(),
            value: v(value, rng),
        },
        Spec::Ne { field, value } => Spec::Ne {
            field: field.clone(),
            value: v(value, rng),
        },
        Spec::Lt { field, value } => Spec::Lt {
            field: field.clone(),
            value: v(value, rng),
        },
        Spec::Le { field, value } => Spec::Le {
            field: field.clone(),
            value: v(value, rng),
        },
        Spec::Gt { field, value } => Spec::Gt {
            field: field.clone(),
            value: v(value, rng),
        },
        Spec::Ge { field, value } => Spec::Ge {
            field: field.clone(),
            value: v(value, rng),
        },
        Spec::In { field, values } => Spec::In {
            field: field.clone(),
            values: values.iter().map(|x| v(x, rng)).collect(),
        },
        Spec::NotIn { field, values } => Spec::NotIn {
            field: field.clone(),
            values: values.iter().map(|x| v(x, rng)).collect(),
        },
        Spec::Between { field, low, high } => Spec::Between {
            field: field.clone(),
            low: v(low, rng),
            high: v(high, rng),
        },
        Spec::NotBetween { field, low, high } => Spec::NotBetween {
            field: field.clone(),
            low: v(low, rng),
            high: v(high, rng),
        },
        Spec::Like { field, pattern } => Spec::Like {
            field: field.clone(),
            pattern: format!("{pattern}x"),
        },
        Spec::Ilike { field, pattern } => Spec::Ilike {
            field: field.clone(),
            pattern: format!("x{pattern}"),
        },
        Spec::Contains { field, value } => Spec::Contains {
            field: field.clone(),
            value: format!("{value}'\""),
        },
        Spec::Icontains { field, value } => Spec::Icontains {
            field: field.clone(),
            value: format!("{value}%"),
        },
        Spec::StartsWith { field, value } => Spec::StartsWith {
            field: field.clone(),
            value: format!("{value}_"),
        },
        Spec::EndsWith { field, value } => Spec::EndsWith {
            field: field.clone(),
            value: format!("\\{value}"),
        },
        Spec::Regex { field, pattern } => Spec::Regex {
            field: field.clone(),
            pattern: format!("{pattern}|q"),
        },
        Spec::JsonHasKey { field, key } => Spec::JsonHasKey {
            field: field.clone(),
            key: format!("{key}'"),
        },
        Spec::JsonContains { field, .. } => Spec::JsonContains {
            field: field.clone(),
            value: json!({"z": "'"}),
        },
        other => other.clone(),
    }
}

#[test]
fn different_literal_values_never_change_the_sql_text() {
    let mut rng = Rng::seeded(seed() ^ 0xf3);
    let def = Item::def();
    let limits = Limits::default();
    for _ in 0..cases() {
        let spec = random_spec(&mut rng, 0);
        let twin = perturb(&spec, &mut rng);
        let q = |s: Spec| Query {
            filter: s,
            order: vec![Order::asc("qty")],
            ..Query::default()
        };
        let (Ok(a), Ok(b)) = (
            q(spec.clone()).plan(def, &limits, true),
            q(twin).plan(def, &limits, true),
        ) else {
            continue;
        };
        for d in [Dialect::Postgres, Dialect::Sqlite] {
            let (Ok(x), Ok(y)) = (compile::select(def, &a, d), compile::select(def, &b, d)) else {
                continue;
            };
            assert_eq!(x.sql, y.sql, "{d:?}: {spec:?}");
            assert_eq!(x.values.len(), y.values.len());
            assert!(!x.sql.contains("DROP") && !y.sql.contains("DROP"));
        }
    }
}

fn seed() -> u64 {
    std::env::var("LARDER_DIFF_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x001a_2de5)
}

fn cases() -> usize {
    std::env::var("LARDER_DIFF_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_specifications_agree_on_memory_sqlite_and_postgres() {
    let seed = seed();
    let total = cases();
    let rounds = 4;
    let mut checked = 0usize;
    let mut compared_with_pg = 0usize;
    let mut non_empty = 0usize;
    let mut rejected = 0usize;
    for round in 0..rounds {
        let mut rng = Rng::seeded(seed.wrapping_add(round));
        let items = random_items(&mut rng, 80);
        let name = format!("differential::round{round}");
        let mem = backends::memory(&name).await.unwrap();
        let lite = backends::sqlite(&name).await.unwrap();
        let pg = backends::postgres(&name).await;
        let mut dbs = vec![&mem, &lite];
        if let Some(pg) = &pg {
            dbs.push(pg);
        }
        for db in &dbs {
            db.store.register::<Item>().await.unwrap();
            let mut uow = db.store.begin().await.unwrap();
            for it in &items {
                uow.repo::<Item>().insert(it).await.unwrap();
            }
            uow.commit().await.unwrap();
        }
        let mut uows = Vec::new();
        for db in &dbs {
            uows.push(db.store.read().await.unwrap());
        }
        for case in 0..total / usize::try_from(rounds).unwrap() {
            let spec = random_spec(&mut rng, 0);
            let q = Query {
                filter: spec.clone(),
                order: random_order(&mut rng),
                limit: Some(1000),
                ..Query::default()
            };
            let reference = uows[0].repo::<Item>().find(&q).await;
            let reference: Vec<String> = match reference {
                Ok(p) => p.items.iter().map(|v| v.id.clone()).collect(),
                Err(e) => {
                    // Rejected by validation (a pattern outside the regex dialect, a
                    // repetition without operand…): every backend must reject it the same
                    // way, with the same typed error (never a backend error).
                    assert!(
                        !matches!(e, larder::Error::Backend { .. }),
                        "memory failed on {q:?}: {e}"
                    );
                    for u in uows.iter_mut().skip(1) {
                        match u.repo::<Item>().find(&q).await {
                            Err(o) => assert_eq!(
                                o.kind(),
                                e.kind(),
                                "memory rejected {q:?} with {e} but a backend with {o}"
                            ),
                            Ok(_) => {
                                panic!("memory rejected {q:?} ({e}) but a backend accepted it")
                            }
                        }
                    }
                    rejected += 1;
                    continue;
                }
            };
            if !reference.is_empty() {
                non_empty += 1;
            }
            for (i, u) in uows.iter_mut().enumerate().skip(1) {
                let got = u.repo::<Item>().find(&q).await;
                match got {
                    Ok(p) => {
                        let got: Vec<String> = p.items.iter().map(|v| v.id.clone()).collect();
                        assert_eq!(
                            got,
                            reference,
                            "backend #{i} differs from memory (seed {seed}, round {round}, case {case})\nquery: {}",
                            serde_json::to_string(&q).unwrap()
                        );
                        if i == 2 {
                            compared_with_pg += 1;
                        }
                    }
                    Err(larder::Error::Unsupported { .. }) => {
                        assert!(
                            !dbs[i].store.capabilities().json_contains
                                || !dbs[i].store.capabilities().regex
                        );
                    }
                    Err(e) => panic!(
                        "backend #{i} failed on {}: {e}",
                        serde_json::to_string(&q).unwrap()
                    ),
                }
            }
            checked += 1;
        }
        for u in uows {
            u.commit().await.unwrap();
        }
        mem.finish().await;
        lite.finish().await;
        if let Some(pg) = pg {
            pg.finish().await;
        }
    }
    eprintln!(
        "differential: {checked} specifications checked, {compared_with_pg} also on PostgreSQL, {non_empty} with non-empty results, {rejected} rejected alike"
    );
    assert!(
        checked * 10 >= total * 9,
        "too many specifications rejected: {checked}/{total}"
    );
    assert!(
        non_empty * 4 >= checked,
        "the generator selects too little: {non_empty}/{checked}"
    );
}
