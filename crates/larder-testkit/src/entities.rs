//! Entities used by the suite: one document entity covering every field type and
//! nullability, and one mapped-columns entity.

use larder::Entity;
use serde::{Deserialize, Serialize};

/// A document entity: every registered field is a real, indexed column.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "items", document)]
pub struct Item {
    /// Text id.
    pub id: String,
    /// Required text.
    #[larder(indexed)]
    pub name: String,
    /// Required integer.
    #[larder(indexed)]
    pub qty: i64,
    /// Nullable float.
    #[larder(indexed)]
    pub price: Option<f64>,
    /// Required bool.
    #[larder(indexed)]
    pub active: bool,
    /// Nullable text.
    #[larder(indexed)]
    pub tag: Option<String>,
    /// Nullable JSON.
    #[larder(indexed)]
    pub meta: Option<serde_json::Value>,
    /// Only in the body (not queryable).
    pub note: String,
}

impl Item {
    /// A plain item.
    pub fn new(id: &str, name: &str, qty: i64) -> Item {
        Item {
            id: id.into(),
            name: name.into(),
            qty,
            price: None,
            active: true,
            tag: None,
            meta: None,
            note: String::new(),
        }
    }
}

/// A mapped-columns entity (the seeds' ModelMapper): an integer id, a renamed column, a
/// UUID, a skipped field.
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "accounts")]
pub struct Account {
    /// Integer id.
    pub id: i64,
    /// Owner.
    #[larder(indexed)]
    pub owner: String,
    /// Stored in column `balance_cents`.
    #[larder(column = "balance_cents")]
    pub balance: i64,
    /// Nullable UUID.
    pub external_ref: Option<uuid::Uuid>,
    /// Not stored.
    #[larder(skip)]
    pub cached: Option<String>,
}

/// A counter for lost-update tests.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "counters", document)]
pub struct Counter {
    /// Id.
    pub id: String,
    /// The count.
    pub count: i64,
}

/// A mapped-columns entity for float, integer and text values at their limits: orderable
/// keys of every type (nullable and not), an `f32`, JSON fields, unindexed text.
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "samples")]
pub struct Sample {
    /// Text id.
    pub id: String,
    /// Required float.
    #[larder(indexed)]
    pub x: f64,
    /// Nullable float.
    #[larder(indexed)]
    pub y: Option<f64>,
    /// Required integer.
    #[larder(indexed)]
    pub n: i64,
    /// Nullable indexed text.
    #[larder(indexed)]
    pub label: Option<String>,
    /// A float stored from `f32`.
    pub small: f32,
    /// Unindexed text (only the record size limit applies).
    pub note: String,
    /// Nullable JSON.
    pub meta: Option<serde_json::Value>,
    /// Required JSON (JSON `null` is a value here).
    pub attrs: serde_json::Value,
    /// Floats inside a JSON field.
    pub series: larder::Json<Vec<f64>>,
}

impl Sample {
    /// A sample with `x` and everything else plain.
    pub fn new(id: &str, x: f64) -> Sample {
        Sample {
            id: id.into(),
            x,
            y: None,
            n: 0,
            label: None,
            small: 0.0,
            note: String::new(),
            meta: None,
            attrs: serde_json::json!({}),
            series: larder::Json(Vec::new()),
        }
    }
}

/// A document entity with the same keys as [`Sample`], plus floats that live only in the
/// JSON body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "measurements", document)]
pub struct Measurement {
    /// Text id.
    pub id: String,
    /// Required float.
    #[larder(indexed)]
    pub x: f64,
    /// Nullable float.
    #[larder(indexed)]
    pub y: Option<f64>,
    /// Required integer.
    #[larder(indexed)]
    pub n: i64,
    /// Nullable text.
    #[larder(indexed)]
    pub label: Option<String>,
    /// A float stored from `f32` (body only).
    pub small: f32,
    /// Floats in the body only.
    pub samples: Vec<f64>,
}

impl Measurement {
    /// A measurement with `x` and everything else plain.
    pub fn new(id: &str, x: f64) -> Measurement {
        Measurement {
            id: id.into(),
            x,
            y: None,
            n: 0,
            label: None,
            small: 0.0,
            samples: Vec::new(),
        }
    }
}

/// Schema drift: the version of `drift_orders` whose table exists (mapped columns).
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "drift_orders", name = "drift_order")]
pub struct DriftV1 {
    /// Text id.
    pub id: String,
    /// Required, indexed.
    #[larder(indexed)]
    pub status: String,
    /// Nullable.
    pub note: Option<String>,
}

/// Schema drift: [`DriftV1`] plus a new indexed field.
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "drift_orders", name = "drift_order")]
pub struct DriftAddedField {
    /// Text id.
    pub id: String,
    /// Required, indexed.
    #[larder(indexed)]
    pub status: String,
    /// Nullable.
    pub note: Option<String>,
    /// New: not in the table.
    #[larder(indexed)]
    pub total: i64,
}

/// Schema drift: [`DriftV1`] with an integer id.
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "drift_orders", name = "drift_order")]
pub struct DriftIntId {
    /// Integer id (the table's is text).
    pub id: i64,
    /// Required, indexed.
    #[larder(indexed)]
    pub status: String,
    /// Nullable.
    pub note: Option<String>,
}

/// Schema drift: [`DriftV1`] with `status` as an integer.
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "drift_orders", name = "drift_order")]
pub struct DriftRetyped {
    /// Text id.
    pub id: String,
    /// Integer (the table's is text).
    #[larder(indexed)]
    pub status: i64,
    /// Nullable.
    pub note: Option<String>,
}

/// Schema drift: [`DriftV1`] without its required `status`.
#[derive(Debug, Clone, PartialEq, Entity)]
#[larder(table = "drift_orders", name = "drift_order")]
pub struct DriftRemoved {
    /// Text id.
    pub id: String,
    /// Nullable.
    pub note: Option<String>,
}

/// Schema drift: [`DriftV1`]'s fields stored as a document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Entity)]
#[larder(table = "drift_orders", name = "drift_order", document)]
pub struct DriftDocument {
    /// Text id.
    pub id: String,
    /// Required.
    pub status: String,
    /// Nullable.
    pub note: Option<String>,
}
