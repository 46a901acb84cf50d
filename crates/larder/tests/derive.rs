//! `#[derive(larder::Entity)]`: registries and record round trips (no database needed).

use larder::{Entity, Error, FieldDef, FieldType, Record, Storage, Value};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Line {
    sku: String,
    quantity: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, larder::Entity)]
#[larder(document, table = "orders", name = "order")]
struct Order {
    id: String,
    #[larder(indexed)]
    status: String,
    #[larder(indexed, column = "total_cents")]
    total: i64,
    #[larder(indexed)]
    shipped_at: Option<i64>,
    lines: Vec<Line>,
    note: String,
}

fn order() -> Order {
    Order {
        id: "o-1".into(),
        status: "open".into(),
        total: 1250,
        shipped_at: None,
        lines: vec![Line {
            sku: "tea".into(),
            quantity: 3,
        }],
        note: "leave at the door".into(),
    }
}

#[test]
fn document_entity_registers_only_the_id_and_indexed_fields() {
    let def = Order::def();
    def.validate().unwrap();
    assert_eq!(def.name, "order");
    assert_eq!(def.table, "orders");
    assert_eq!(def.storage, Storage::Document);
    assert_eq!(def.id, FieldDef::new("id", FieldType::Text));
    assert_eq!(
        def.fields,
        vec![
            FieldDef::new("status", FieldType::Text).with_index(true),
            FieldDef::new("total", FieldType::Int)
                .with_column("total_cents")
                .with_index(true),
            FieldDef::new("shipped_at", FieldType::Int)
                .with_nullable(true)
                .with_index(true),
        ]
    );
    // `def()` hands out the same static every time.
    assert!(std::ptr::eq(Order::def(), def));
}

#[test]
fn document_entity_round_trips() {
    let o = order();
    assert_eq!(o.id(), "o-1");
    let record = o.to_record().unwrap();
    assert_eq!(record.id, Value::Text("o-1".into()));
    assert_eq!(record.version, 0);
    assert_eq!(
        record.values,
        vec![Value::Text("open".into()), Value::Int(1250), Value::Null]
    );
    let body: serde_json::Value = serde_json::from_str(record.body.as_deref().unwrap()).unwrap();
    assert_eq!(body["lines"][0]["sku"], "tea");
    assert_eq!(body["note"], "leave at the door");
    assert_eq!(Order::from_record(record).unwrap(), o);
}

#[test]
fn document_entity_without_a_body_is_a_mapping_error() {
    let mut record = order().to_record().unwrap();
    record.body = None;
    assert!(matches!(
        Order::from_record(record),
        Err(Error::Mapping {
            entity: "order",
            direction: "decode",
            ..
        })
    ));
    let mut record = order().to_record().unwrap();
    record.body = Some("{\"id\": 3}".into());
    assert!(matches!(
        Order::from_record(record),
        Err(Error::Mapping { .. })
    ));
}

#[derive(Debug, Clone, Copy, PartialEq, Default)]
enum Tier {
    #[default]
    Basic,
    Gold,
}

/// Stores [`Tier`] as text.
mod tier_text {
    use super::Tier;
    use larder::Value;

    pub(crate) fn to_value(t: &Tier) -> Value {
        Value::Text(
            match t {
                Tier::Basic => "basic",
                Tier::Gold => "gold",
            }
            .into(),
        )
    }

    pub(crate) fn from_value(v: Value) -> Result<Tier, String> {
        match v {
            Value::Text(s) if s == "basic" => Ok(Tier::Basic),
            Value::Text(s) if s == "gold" => Ok(Tier::Gold),
            other => Err(format!("not a tier: {other}")),
        }
    }
}

/// Stores `Option<Tier>` as nullable text.
mod opt_tier {
    use super::{Tier, tier_text};
    use larder::Value;

    pub(crate) fn to_value(t: &Option<Tier>) -> Value {
        t.as_ref().map_or(Value::Null, tier_text::to_value)
    }

    pub(crate) fn from_value(v: Value) -> Result<Option<Tier>, String> {
        match v {
            Value::Null => Ok(None),
            v => tier_text::from_value(v).map(Some),
        }
    }
}

#[derive(Debug, Clone, PartialEq, larder::Entity)]
struct CustomerAccount {
    #[larder(id)]
    number: i64,
    #[larder(column = "display_name", indexed)]
    name: String,
    age: Option<i64>,
    #[larder(with = "tier_text", type = "text")]
    tier: Tier,
    #[larder(skip)]
    cache: Vec<u8>,
    active: bool,
    r#type: String,
    #[larder(with = "opt_tier", type = "text", nullable)]
    previous_tier: Option<Tier>,
    // Not the id: `number` is marked, so this is an ordinary column.
    id: String,
}

fn account() -> CustomerAccount {
    CustomerAccount {
        number: 42,
        name: "Ada".into(),
        age: Some(36),
        tier: Tier::Gold,
        cache: vec![1, 2, 3],
        active: true,
        r#type: "person".into(),
        previous_tier: None,
        id: "legacy-7".into(),
    }
}

#[test]
fn columns_entity_registers_every_stored_field() {
    let def = CustomerAccount::def();
    def.validate().unwrap();
    assert_eq!(def.name, "customer_account");
    assert_eq!(def.table, "customer_account");
    assert_eq!(def.storage, Storage::Columns);
    assert_eq!(def.id, FieldDef::new("number", FieldType::Int));
    assert_eq!(
        def.fields,
        vec![
            FieldDef::new("name", FieldType::Text)
                .with_column("display_name")
                .with_index(true),
            FieldDef::new("age", FieldType::Int).with_nullable(true),
            FieldDef::new("tier", FieldType::Text),
            FieldDef::new("active", FieldType::Bool),
            FieldDef::new("type", FieldType::Text),
            FieldDef::new("previous_tier", FieldType::Text).with_nullable(true),
            FieldDef::new("id", FieldType::Text),
        ]
    );
}

#[test]
fn columns_entity_round_trips() {
    let a = account();
    assert_eq!(a.id(), 42);
    let record = a.to_record().unwrap();
    assert_eq!(
        record,
        Record {
            id: Value::Int(42),
            version: 0,
            values: vec![
                Value::Text("Ada".into()),
                Value::Int(36),
                Value::Text("gold".into()),
                Value::Bool(true),
                Value::Text("person".into()),
                Value::Null,
                Value::Text("legacy-7".into()),
            ],
            body: None,
        }
    );
    // The skipped field comes back as its default.
    let expected = CustomerAccount {
        cache: Vec::new(),
        ..account()
    };
    assert_eq!(CustomerAccount::from_record(record).unwrap(), expected);

    let other = CustomerAccount {
        age: None,
        tier: Tier::Basic,
        previous_tier: Some(Tier::Gold),
        cache: Vec::new(),
        ..account()
    };
    let back = CustomerAccount::from_record(other.to_record().unwrap()).unwrap();
    assert_eq!(back, other);
}

fn decode_error(record: Record) -> String {
    match CustomerAccount::from_record(record) {
        Err(
            e @ Error::Mapping {
                entity: "customer_account",
                direction: "decode",
                ..
            },
        ) => std::error::Error::source(&e).unwrap().to_string(),
        other => panic!("expected a mapping error, got {other:?}"),
    }
}

#[test]
fn decoding_a_wrong_value_type_is_a_mapping_error() {
    let mut record = account().to_record().unwrap();
    record.values[1] = Value::Text("thirty".into());
    let msg = decode_error(record);
    assert!(msg.contains("field `age`"), "{msg}");

    let mut record = account().to_record().unwrap();
    record.values[2] = Value::Text("platinum".into());
    let msg = decode_error(record);
    assert!(msg.contains("field `tier`"), "{msg}");

    let mut record = account().to_record().unwrap();
    record.id = Value::Text("42".into());
    let msg = decode_error(record);
    assert!(msg.contains("field `number`"), "{msg}");
}

#[test]
fn missing_or_extra_values_are_mapping_errors_not_panics() {
    let mut record = account().to_record().unwrap();
    record.values.truncate(3);
    let msg = decode_error(record);
    assert!(msg.contains("expected 7 field values, found 3"), "{msg}");

    let mut record = account().to_record().unwrap();
    record.values.push(Value::Null);
    decode_error(record);

    let mut record = account().to_record().unwrap();
    record.values.clear();
    decode_error(record);
}

/// Defaults: the id is the field named `id`, names are the snake-cased struct name.
#[derive(Debug, Clone, PartialEq, larder::Entity)]
struct HTTPRequestLog {
    id: String,
    status: i32,
    #[larder(indexed)]
    path: String,
}

#[test]
fn defaults_come_from_the_struct() {
    let def = HTTPRequestLog::def();
    def.validate().unwrap();
    assert_eq!(def.name, "http_request_log");
    assert_eq!(def.table, "http_request_log");
    assert_eq!(def.id.name, "id");
    assert_eq!(
        def.fields,
        vec![
            FieldDef::new("status", FieldType::Int),
            FieldDef::new("path", FieldType::Text).with_index(true),
        ]
    );
    let log = HTTPRequestLog {
        id: "r1".into(),
        status: 200,
        path: "/".into(),
    };
    let back = HTTPRequestLog::from_record(log.to_record().unwrap()).unwrap();
    assert_eq!(back, log);
}
