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
