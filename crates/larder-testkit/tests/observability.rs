//! Every storage operation is a `larder.<component>.<operation>` span with OpenTelemetry
//! database attributes, the unit of work's actor and correlation id, rows, and the error
//! type on failure; query text only when opted in.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use larder::{Query, Settings, UowOptions, field};
use larder_testkit::backends;
use larder_testkit::entities::Item;
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt};

#[derive(Debug, Clone, Default)]
struct Captured {
    name: &'static str,
    fields: HashMap<String, String>,
}

#[derive(Clone, Default)]
struct Spans(Arc<Mutex<HashMap<u64, Captured>>>, Arc<Mutex<Vec<u64>>>);

struct V<'a>(&'a mut HashMap<String, String>);

impl Visit for V<'_> {
    fn record_debug(&mut self, f: &Field, v: &dyn std::fmt::Debug) {
        self.0.insert(
            f.name().to_owned(),
            format!("{v:?}").trim_matches('"').to_owned(),
        );
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        self.0.insert(f.name().to_owned(), v.to_owned());
    }
}

impl<S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>> Layer<S>
    for Spans
{
    fn on_new_span(&self, attrs: &Attributes<'_>, id: &Id, _: Context<'_, S>) {
        let mut c = Captured {
            name: attrs.metadata().name(),
            ..Captured::default()
        };
        attrs.record(&mut V(&mut c.fields));
        self.0.lock().unwrap().insert(id.into_u64(), c);
        self.1.lock().unwrap().push(id.into_u64());
    }
    fn on_record(&self, id: &Id, values: &Record<'_>, _: Context<'_, S>) {
        if let Some(c) = self.0.lock().unwrap().get_mut(&id.into_u64()) {
            values.record(&mut V(&mut c.fields));
        }
    }
}

impl Spans {
    fn all(&self) -> Vec<Captured> {
        let map = self.0.lock().unwrap();
        self.1
            .lock()
            .unwrap()
            .iter()
            .filter_map(|id| map.get(id).cloned())
            .collect()
    }
    fn clear(&self) {
        self.0.lock().unwrap().clear();
        self.1.lock().unwrap().clear();
    }
}

async fn exercise(store: &larder::Store, system: &str, spans: &Spans, expect_query_text: bool) {
    store.register::<Item>().await.unwrap();
    spans.clear();
    let mut uow = store
        .begin_with(
            UowOptions::default()
                .with_actor("alice")
                .with_correlation_id("req-7"),
        )
        .await
        .unwrap();
    uow.repo::<Item>()
        .insert(&Item::new("a", "x", 1))
        .await
        .unwrap();
    let dup = uow.repo::<Item>().insert(&Item::new("a", "x", 1)).await;
    assert!(dup.is_err());
    let page = uow
        .repo::<Item>()
        .find(&Query::new(field("name").eq("x")))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    uow.commit().await.unwrap();

    let all = spans.all();
    let names: Vec<&str> = all.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "larder.uow.begin",
            "larder.repository.insert",
            "larder.repository.insert",
            "larder.repository.find",
            "larder.uow.commit"
        ],
        "{system}"
    );
    for c in &all {
        assert_eq!(
            c.fields.get("db.system.name").map(String::as_str),
            Some(system),
            "{c:?}"
        );
        assert_eq!(
            c.fields.get("larder.actor").map(String::as_str),
            Some("alice"),
            "{c:?}"
        );
        assert_eq!(
            c.fields.get("larder.correlation_id").map(String::as_str),
            Some("req-7"),
            "{c:?}"
        );
        assert!(c.fields.contains_key("db.operation.name"), "{c:?}");
        assert_eq!(
            c.fields.get("otel.kind").map(String::as_str),
            Some("client"),
            "{c:?}"
        );
        match system {
            "postgresql" => {
                assert_eq!(c.fields["db.namespace"], "test", "{c:?}");
                assert_eq!(c.fields["server.address"], "127.0.0.1", "{c:?}");
                assert_eq!(c.fields["server.port"], "5432", "{c:?}");
            }
            "sqlite" => {
                assert!(c.fields["db.namespace"].ends_with(".db"), "{c:?}");
                assert!(!c.fields.contains_key("server.address"), "{c:?}");
            }
            _ => assert!(!c.fields.contains_key("db.namespace"), "{c:?}"),
        }
    }
    let ins = &all[1];
    // Writes report the rows they changed, reads the rows they returned.
    assert_eq!(ins.fields["larder.rows_affected"], "1", "{ins:?}");
    assert!(
        !ins.fields.contains_key("db.response.returned_rows"),
        "{ins:?}"
    );
    assert!(!all[3].fields.contains_key("larder.rows_affected"));
    assert_eq!(ins.fields["db.operation.name"], "insert");
    assert_eq!(ins.fields["db.collection.name"], "items");
    assert!(!ins.fields.contains_key("error.type"));
    assert_eq!(all[2].fields["error.type"], "already_exists");
    assert!(all[2].fields["error.message"].contains("already exists"));
    assert_eq!(all[3].fields["db.response.returned_rows"], "1");
    assert_eq!(
        all[3].fields.contains_key("db.query.text"),
        expect_query_text,
        "{system}: {:?}",
        all[3]
    );
    if expect_query_text {
        let q = &all[3].fields["db.query.text"];
        assert!(
            q.contains("SELECT") && !q.contains("'x'"),
            "parameterized text only: {q}"
        );
    }
}

#[tokio::test]
async fn every_operation_is_a_span_with_db_attributes() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _g = tracing::subscriber::set_default(subscriber);

    let mem = backends::memory("observability::memory").await.unwrap();
    exercise(&mem.store, "memory", &spans, false).await;

    let lite = backends::sqlite("observability::sqlite").await.unwrap();
    exercise(&lite.store, "sqlite", &spans, false).await;
    lite.finish().await;

    // Opt in to query text.
    let traced = backends::sqlite_with(
        "observability::sqlite_text",
        |s: &mut Settings| s.record_query_text = true,
        larder::StoreConfig::default(),
    )
    .await;
    exercise(&traced.store, "sqlite", &spans, true).await;
    traced.finish().await;

    if let Some(pg) = backends::postgres("observability::postgres").await {
        exercise(&pg.store, "postgresql", &spans, false).await;
        pg.finish().await;
    }
}

async fn exercise_events(store: &larder::Store, system: &str, spans: &Spans) {
    use larder::events::{EventData, EventStore, ExpectedVersion, ReadDirection};
    let es = EventStore::open(store).await.unwrap();
    spans.clear();
    let mut uow = store
        .begin_with(
            UowOptions::default()
                .with_actor("bob")
                .with_correlation_id("req-8"),
        )
        .await
        .unwrap();
    let ev = || EventData::new("Placed", &serde_json::json!({"n": 1})).unwrap();
    es.append(&mut uow, "order-1", ExpectedVersion::NoStream, vec![ev()])
        .await
        .unwrap();
    let conflict = es
        .append(&mut uow, "order-1", ExpectedVersion::NoStream, vec![ev()])
        .await;
    assert!(conflict.is_err());
    let read = es
        .read_stream(&mut uow, "order-1", 1, 10, ReadDirection::Forward)
        .await
        .unwrap();
    assert_eq!(read.len(), 1);
    uow.commit().await.unwrap();
    let all = spans.all();
    let names: Vec<&str> = all.iter().map(|c| c.name).collect();
    assert_eq!(
        names,
        [
            "larder.uow.begin",
            "larder.events.append",
            "larder.events.append",
            "larder.events.read_stream",
            "larder.uow.commit"
        ],
        "{system}"
    );
    for c in &all[1..4] {
        assert_eq!(c.fields["db.system.name"], system, "{c:?}");
        assert_eq!(c.fields["db.collection.name"], "larder_events", "{c:?}");
        assert_eq!(c.fields["larder.stream"], "order-1", "{c:?}");
        assert_eq!(c.fields["larder.actor"], "bob", "{c:?}");
        assert_eq!(c.fields["larder.correlation_id"], "req-8", "{c:?}");
    }
    // An append is a write: it reports the events it wrote as rows affected.
    assert_eq!(all[1].fields["larder.rows_affected"], "1");
    assert!(!all[1].fields.contains_key("db.response.returned_rows"));
    assert_eq!(all[2].fields["error.type"], "conflict");
    assert!(all[2].fields["error.message"].contains("order-1"));
    assert_eq!(all[3].fields["db.response.returned_rows"], "1");
}

#[tokio::test]
async fn every_event_store_operation_is_a_span() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _g = tracing::subscriber::set_default(subscriber);

    let mem = backends::memory("observability::ev_memory").await.unwrap();
    exercise_events(&mem.store, "memory", &spans).await;
    let lite = backends::sqlite("observability::ev_sqlite").await.unwrap();
    exercise_events(&lite.store, "sqlite", &spans).await;
    lite.finish().await;
    if let Some(pg) = backends::postgres("observability::ev_postgres").await {
        exercise_events(&pg.store, "postgresql", &spans).await;
        pg.finish().await;
    }
}

/// A database error's own code is on the span: `db.response.status_code` (SQLSTATE).
#[tokio::test]
async fn database_errors_carry_their_status_code() {
    use larder::postgres::PgUowExt;
    let Some(pg) = backends::postgres("observability::status_code").await else {
        return;
    };
    pg.store.register::<Item>().await.unwrap();
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _g = tracing::subscriber::set_default(subscriber);
    let mut uow = pg.store.begin().await.unwrap();
    let _ = sqlx::query("SELECT 1/0")
        .execute(uow.postgres().unwrap())
        .await;
    let e = uow.repo::<Item>().get(&"a".to_owned()).await.unwrap_err();
    assert!(
        matches!(e, larder::Error::TransactionAborted { .. }),
        "{e:?}"
    );
    drop(uow);
    let get = spans
        .all()
        .into_iter()
        .find(|c| c.name == "larder.repository.get")
        .expect("a get span");
    assert_eq!(get.fields["db.response.status_code"], "25P02", "{get:?}");
    assert_eq!(get.fields["error.type"], "transaction_aborted");
    pg.finish().await;
}

async fn exercise_outbox(store: &larder::Store, system: &str, spans: &Spans) {
    use larder::outbox::{MemorySink, Message, Outbox, Relay};
    let ob = Outbox::open(store).await.unwrap();
    let relay = Relay::builder(store)
        .name("spans")
        .sink(MemorySink::new())
        .build()
        .await
        .unwrap();
    spans.clear();
    let mut uow = store
        .begin_with(
            UowOptions::default()
                .with_actor("carol")
                .with_correlation_id("req-9"),
        )
        .await
        .unwrap();
    let id = ob
        .enqueue(
            &mut uow,
            Message::new("orders.placed", "{}").with_key("o-1"),
        )
        .await
        .unwrap();
    uow.commit().await.unwrap();
    relay.run_once().await.unwrap();
    let all = spans.all();
    let find = |name: &str| {
        all.iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| {
                panic!(
                    "{system}: no span {name} in {:?}",
                    all.iter().map(|c| c.name).collect::<Vec<_>>()
                )
            })
            .clone()
    };
    let e = find("larder.outbox.enqueue");
    assert_eq!(e.fields["db.system.name"], system, "{e:?}");
    assert_eq!(e.fields["db.collection.name"], "_larder_outbox", "{e:?}");
    assert_eq!(
        e.fields["messaging.destination.name"], "orders.placed",
        "{e:?}"
    );
    assert_eq!(e.fields["messaging.message.id"], id.to_string(), "{e:?}");
    assert_eq!(e.fields["larder.actor"], "carol", "{e:?}");
    assert_eq!(e.fields["larder.rows_affected"], "1", "{e:?}");
    let b = find("larder.relay.batch");
    assert_eq!(b.fields["messaging.system"], "memory", "{b:?}");
    assert_eq!(b.fields["messaging.batch.message_count"], "1", "{b:?}");
    let p = find("larder.relay.publish");
    assert_eq!(
        p.fields["messaging.destination.name"], "orders.placed",
        "{p:?}"
    );
    assert_eq!(p.fields["messaging.message.id"], id.to_string(), "{p:?}");
    for name in [
        "larder.relay.lease",
        "larder.relay.fetch",
        "larder.relay.mark",
    ] {
        let s = find(name);
        assert_eq!(s.fields["db.system.name"], system, "{s:?}");
    }
    assert_eq!(
        find("larder.relay.fetch").fields["db.response.returned_rows"],
        "1"
    );
    assert_eq!(
        find("larder.relay.mark").fields["larder.rows_affected"],
        "1"
    );
}

#[tokio::test]
async fn every_outbox_and_relay_operation_is_a_span_with_messaging_attributes() {
    let spans = Spans::default();
    let subscriber = tracing_subscriber::registry().with(spans.clone());
    let _g = tracing::subscriber::set_default(subscriber);

    let mem = backends::memory("observability::ob_memory").await.unwrap();
    exercise_outbox(&mem.store, "memory", &spans).await;
    let lite = backends::sqlite("observability::ob_sqlite").await.unwrap();
    exercise_outbox(&lite.store, "sqlite", &spans).await;
    lite.finish().await;
    if let Some(pg) = backends::postgres("observability::ob_postgres").await {
        exercise_outbox(&pg.store, "postgresql", &spans).await;
        pg.finish().await;
    }
}
