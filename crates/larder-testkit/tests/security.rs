//! Security and limits.
//!
//! - H1: a corpus of ≥ 250 hostile field names, sort keys, directions and operators is
//!   rejected with a typed error before any SQL is built (proved with a tripwire backend
//!   that panics if reached).
//! - H3 lives in `secrets.rs` (its own binary: it installs a TRACE subscriber).
//! - H4: page size over the cap, oversized entities, huge `IN` lists, deep and oversized
//!   specifications, too many ids: typed errors; the unit of work stays usable.

use std::any::Any;
use std::sync::Arc;

use larder::backend::{Backend, BeginOptions, BoxFuture, BoxStream, Capabilities, Transaction};
use larder::query::Order;
use larder::spec::Spec;
use larder::{Deadline, EntityDef, Error, Query, Record, Store, Value, field};
use larder_core::Entity as _;
use larder_core::query::Select;
use larder_core::spec::Pred;
use larder_testkit::backends;
use larder_testkit::entities::Item;

/// A backend that fails the test if any storage primitive is reached.
#[derive(Debug, Default)]
struct Tripwire(Capabilities);

struct TripTx;

fn tripped<T>() -> T {
    panic!("input reached the backend: it should have been rejected before any SQL")
}

impl Backend for Tripwire {
    fn name(&self) -> &'static str {
        "tripwire"
    }
    fn capabilities(&self) -> &Capabilities {
        &self.0
    }
    fn begin<'a>(
        &'a self,
        _: &'a BeginOptions,
    ) -> BoxFuture<'a, larder::Result<Box<dyn Transaction>>> {
        Box::pin(async { Ok(Box::new(TripTx) as Box<dyn Transaction>) })
    }
    fn prepare<'a>(&'a self, _: &'a EntityDef) -> BoxFuture<'a, larder::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

impl Transaction for TripTx {
    fn set_deadline(&mut self, _: Option<Deadline>) {}
    fn insert<'a>(
        &'a mut self,
        _: &'a EntityDef,
        _: &'a Record,
    ) -> BoxFuture<'a, larder::Result<()>> {
        tripped()
    }
    fn update<'a>(
        &'a mut self,
        _: &'a EntityDef,
        _: &'a Record,
        _: u64,
    ) -> BoxFuture<'a, larder::Result<()>> {
        tripped()
    }
    fn delete<'a>(
        &'a mut self,
        _: &'a EntityDef,
        _: &'a Value,
        _: u64,
    ) -> BoxFuture<'a, larder::Result<()>> {
        tripped()
    }
    fn get_many<'a>(
        &'a mut self,
        _: &'a EntityDef,
        _: &'a [Value],
    ) -> BoxFuture<'a, larder::Result<Vec<Record>>> {
        tripped()
    }
    fn count<'a>(
        &'a mut self,
        _: &'a EntityDef,
        _: &'a Pred,
    ) -> BoxFuture<'a, larder::Result<u64>> {
        tripped()
    }
    fn select<'a>(
        &'a mut self,
        _: &'a EntityDef,
        _: &'a Select,
    ) -> BoxFuture<'a, larder::Result<Vec<Record>>> {
        tripped()
    }
    fn stream<'a>(
        &'a mut self,
        _: &'a EntityDef,
        _: Select,
    ) -> BoxStream<'a, larder::Result<Record>> {
        tripped()
    }
    fn savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, larder::Result<()>> {
        tripped()
    }
    fn release_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, larder::Result<()>> {
        tripped()
    }
    fn rollback_to_savepoint<'a>(&'a mut self, _: &'a str) -> BoxFuture<'a, larder::Result<()>> {
        tripped()
    }
    fn commit(self: Box<Self>) -> BoxFuture<'static, larder::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn rollback(self: Box<Self>) -> BoxFuture<'static, larder::Result<()>> {
        Box::pin(async { Ok(()) })
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

const BASE: &[&str] = &[
    "name; DROP TABLE items; --",
    "name'--",
    "name\"--",
    "\"name\"",
    "`name`",
    "[name]",
    "name)",
    "(name",
    "name OR 1=1",
    "1=1",
    "*",
    "name, qty",
    "name AS x",
    "name COLLATE \"C\"",
    "name::text",
    "CAST(name AS text)",
    "lower(name)",
    "(SELECT 1)",
    "name/**/",
    "/* */name",
    "name -- comment",
    "name\0",
    "name\n",
    "name\r\nqty",
    "name\t",
    " name",
    "name ",
    "NAME",
    "Name",
    "nаme", // Cyrillic а
    "name\u{200b}",
    "ñame",
    "items.name",
    "public.items",
    "\"items\".\"name\"",
    "body->>'name'",
    "body",
    "version",
    "_larder_outbox",
    "pg_sleep(10)",
    "name; SELECT pg_sleep(10)",
    "$1",
    "?",
    "?1",
    ":name",
    "@name",
    "%s",
    "{name}",
    "../name",
    "",
    "\\",
    "name\\",
    "'",
    "\"",
    ";",
    "--",
    "/*",
    "1",
    "-1",
    "0x41",
    "null",
    "NULL",
    "true",
    "name ASK",
    "name DESC NULLS SOMEWHERE",
    "name; --",
    "qty UNION SELECT password FROM users",
];

/// The corpus: every base payload and variants of it (wrapped in quotes, uppercased,
/// suffixed with a comment).
fn corpus() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let long = [
        "a".repeat(64),
        "a".repeat(10_000),
        format!("{}; DROP TABLE items", "b".repeat(70)),
    ];
    for b in BASE.iter().copied().chain(long.iter().map(String::as_str)) {
        for v in [
            b.to_owned(),
            format!("{b}\"; DELETE FROM items; --"),
            b.to_uppercase(),
            format!("'{b}'"),
        ] {
            if !out.contains(&v) {
                out.push(v);
            }
        }
    }
    out
}

fn tripwire_store() -> Store {
    Store::new(Arc::new(Tripwire::default()))
}

#[tokio::test]
async fn hostile_field_names_sort_keys_and_directions_are_rejected_before_sql() {
    let corpus = corpus();
    assert!(
        corpus.len() >= 250,
        "corpus has only {} payloads",
        corpus.len()
    );
    let store = tripwire_store();
    let mut uow = store.begin().await.unwrap();
    let mut rejected = 0;
    for p in &corpus {
        // 1. field name in a specification
        let e = uow.repo::<Item>().count(&field(p.as_str()).eq(1)).await;
        assert!(
            matches!(
                e,
                Err(Error::UnknownField { .. } | Error::TypeMismatch { .. })
            ),
            "{p:?}: {e:?}"
        );
        // 2. ordering field
        let e = uow
            .repo::<Item>()
            .find(&Query::all().order_by(Order::asc(p.as_str())))
            .await;
        assert!(
            matches!(e, Err(Error::UnknownField { .. } | Error::InvalidQuery(_))),
            "{p:?}: {e:?}"
        );
        // 3. sort string
        let parsed = Order::parse(p);
        if let Ok(o) = parsed {
            // Parsing only ever yields a safe identifier (surrounding whitespace is
            // trimmed, so " name" is the legitimate key `name`); anything else must still
            // be refused as an unknown field.
            assert!(larder_core::entity::is_safe_identifier(&o.field), "{p:?}");
            if Item::def().field(&o.field).is_none() {
                let e = uow.repo::<Item>().find(&Query::all().order_by(o)).await;
                assert!(matches!(e, Err(Error::UnknownField { .. })), "{p:?}: {e:?}");
            }
        }
        // 4. direction and 5. operator, through the JSON form
        let q = serde_json::json!({"order": [{"field": "qty", "direction": p}]}).to_string();
        assert!(
            matches!(Query::from_json(&q), Err(Error::InvalidQuery(_))),
            "{p:?}"
        );
        let s = serde_json::json!({"op": p, "field": "qty", "value": 1}).to_string();
        assert!(
            matches!(Spec::from_json(&s), Err(Error::InvalidQuery(_))),
            "{p:?}"
        );
        // 6. field name inside the JSON form
        let s = serde_json::json!({"op": "eq", "field": p, "value": 1}).to_string();
        let spec = Spec::from_json(&s).unwrap();
        let e = uow.repo::<Item>().count(&spec).await;
        assert!(matches!(e, Err(Error::UnknownField { .. })), "{p:?}: {e:?}");
        // 7. a cursor token
        let e = uow
            .repo::<Item>()
            .find(&Query::all().with_after(p.as_str()))
            .await;
        assert!(
            matches!(
                e,
                Err(Error::InvalidCursor(_) | Error::LimitExceeded { .. })
            ),
            "{p:?}: {e:?}"
        );
        rejected += 1;
    }
    // Messages quote hostile input escaped and truncated.
    let e = uow
        .repo::<Item>()
        .count(&field("x\n".repeat(500)).eq(1))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.len() < 300 && !e.contains('\n'), "{e}");
    eprintln!("{rejected} hostile payloads × 7 positions rejected before any SQL");
}

#[tokio::test]
async fn limits_give_typed_errors_before_sql() {
    let store = tripwire_store();
    let mut uow = store.begin().await.unwrap();
    let limits = store.config().limits.clone();
    let e = uow
        .repo::<Item>()
        .find(&Query::all().with_limit(limits.max_page_size + 1))
        .await;
    assert!(
        matches!(
            e,
            Err(Error::LimitExceeded {
                what: "page size",
                ..
            })
        ),
        "{e:?}"
    );
    let e = uow
        .repo::<Item>()
        .count(&field("qty").is_in((0..5_000).map(i64::from)))
        .await;
    assert!(
        matches!(
            e,
            Err(Error::LimitExceeded {
                what: "in-list length",
                ..
            })
        ),
        "{e:?}"
    );
    let e = uow
        .repo::<Item>()
        .count(&field("name").contains("x".repeat(100_000)))
        .await;
    assert!(matches!(e, Err(Error::LimitExceeded { .. })), "{e:?}");
    let mut deep = field("qty").eq(1);
    for _ in 0..100 {
        deep = deep.not();
    }
    let e = uow.repo::<Item>().count(&deep).await;
    assert!(
        matches!(
            e,
            Err(Error::LimitExceeded {
                what: "specification depth",
                ..
            })
        ),
        "{e:?}"
    );
    let wide = Spec::Or {
        of: (0..10_000).map(|i| field("qty").eq(i64::from(i))).collect(),
    };
    let e = uow.repo::<Item>().count(&wide).await;
    assert!(matches!(e, Err(Error::LimitExceeded { .. })), "{e:?}");
    // JSON nesting deeper than serde_json's recursion limit: an error, not a stack overflow.
    let json = format!(
        "{}{}{}",
        "{\"op\":\"not\",\"spec\":".repeat(10_000),
        "{\"op\":\"all\"}",
        "}".repeat(10_000)
    );
    assert!(matches!(
        Spec::from_json(&json),
        Err(Error::InvalidQuery(_))
    ));
    let ids: Vec<String> = (0..limits.max_batch + 1).map(|i| i.to_string()).collect();
    let e = uow.repo::<Item>().get_many(&ids).await;
    assert!(matches!(e, Err(Error::LimitExceeded { .. })), "{e:?}");
    let mut big = Item::new("big", "x", 1);
    big.note = "x".repeat(limits.max_record_bytes + 1);
    let e = uow.repo::<Item>().insert(&big).await;
    assert!(matches!(e, Err(Error::LimitExceeded { .. })), "{e:?}");
}

/// On a real backend, rejected input leaves the unit of work usable and commits nothing
/// partial.
#[tokio::test]
async fn rejected_input_leaves_the_unit_of_work_usable() {
    for db in [
        backends::sqlite("security::usable").await,
        backends::postgres("security::usable").await,
    ]
    .into_iter()
    .flatten()
    {
        db.store.register::<Item>().await.unwrap();
        let mut uow = db.store.begin().await.unwrap();
        uow.repo::<Item>()
            .insert(&Item::new("a", "x", 1))
            .await
            .unwrap();
        for p in corpus().iter().take(40) {
            assert!(
                uow.repo::<Item>()
                    .count(&field(p.as_str()).eq(1))
                    .await
                    .is_err()
            );
        }
        let mut big = Item::new("big", "x", 1);
        big.note = "x".repeat(5 * 1024 * 1024);
        assert!(uow.repo::<Item>().insert(&big).await.is_err());
        uow.repo::<Item>()
            .insert(&Item::new("b", "x", 1))
            .await
            .unwrap();
        uow.commit().await.unwrap();
        let mut uow = db.store.read().await.unwrap();
        assert_eq!(uow.repo::<Item>().count(&Spec::all()).await.unwrap(), 2);
        drop(uow);
        db.finish().await;
    }
}

/// Regex patterns outside larder's dialect and NUL characters in text (operands, looked-up
/// ids, written values) are typed errors decided in core, before any SQL: the tripwire
/// backend is never reached.
#[tokio::test]
async fn non_portable_regex_and_nul_text_are_rejected_before_sql() {
    let store = Store::new(Arc::new(Tripwire(Capabilities::default().with_regex(true))));
    let mut uow = store.begin().await.unwrap();
    for p in [
        r"\p{L}", r"\pL", "a{256}", "(?P<x>a)", "a**", r"\z", r"\x{41}", r"\b", "(?m)^a", "a\0",
    ] {
        let e = uow.repo::<Item>().count(&field("name").regex(p)).await;
        assert!(matches!(e, Err(Error::InvalidQuery(_))), "{p:?}: {e:?}");
    }
    for spec in [
        field("name").eq("a\0b"),
        field("name").contains("a\0b"),
        Spec::from_json(r#"{"op":"contains","field":"name","value":"a\u0000b"}"#).unwrap(),
    ] {
        let e = uow.repo::<Item>().count(&spec).await;
        assert!(matches!(e, Err(Error::InvalidQuery(_))), "{spec:?}: {e:?}");
    }
    let e = uow.repo::<Item>().get(&"a\0b".to_owned()).await;
    assert!(matches!(e, Err(Error::InvalidQuery(_))), "{e:?}");
    let e = uow.repo::<Item>().insert(&Item::new("a", "x\0", 1)).await;
    assert!(matches!(e, Err(Error::TypeMismatch { .. })), "{e:?}");
}
