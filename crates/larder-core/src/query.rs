//! Queries: a specification plus ordering, page size and a keyset cursor or an offset.

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::entity::{EntityDef, FieldRef, Record, Versioned};
use crate::error::{Error, Result, shown};
use crate::spec::{Limits, Pred, Spec};
use crate::value::Value;

/// Sort direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Smallest first.
    #[default]
    Asc,
    /// Largest first.
    Desc,
}

/// Where `NULL`s sort.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Nulls {
    /// Before all values.
    First,
    /// After all values.
    Last,
}

/// One ordering key, by registered field name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Order {
    /// The field.
    pub field: String,
    /// The direction (ascending by default).
    #[serde(default)]
    pub direction: Direction,
    /// Where nulls go; by default `NULL` sorts as the largest value (last when ascending,
    /// first when descending), as in PostgreSQL.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nulls: Option<Nulls>,
}

impl Order {
    /// Ascending by `field`.
    pub fn asc(field: impl Into<String>) -> Order {
        Order {
            field: field.into(),
            direction: Direction::Asc,
            nulls: None,
        }
    }

    /// Descending by `field`.
    pub fn desc(field: impl Into<String>) -> Order {
        Order {
            field: field.into(),
            direction: Direction::Desc,
            nulls: None,
        }
    }

    /// Sets where nulls sort.
    #[must_use]
    pub fn with_nulls(mut self, nulls: Nulls) -> Order {
        self.nulls = Some(nulls);
        self
    }

    /// Parses the sort-string form used in query strings: `total`, `-total`, `total asc`,
    /// `total desc`, optionally followed by `nulls first` or `nulls last`.
    ///
    /// Only the syntax is checked here; the field is checked against the entity when the
    /// query runs.
    ///
    /// ```
    /// use larder_core::query::{Direction, Order};
    /// assert_eq!(Order::parse("-total").unwrap().direction, Direction::Desc);
    /// assert!(Order::parse("total; drop table orders").is_err());
    /// assert!(Order::parse("total sideways").is_err());
    /// ```
    pub fn parse(s: &str) -> Result<Order> {
        let bad = || Error::InvalidQuery(format!("invalid sort key `{}`", shown(s)));
        let words: Vec<&str> = s.split_ascii_whitespace().collect();
        let (name, rest) = words.split_first().ok_or_else(bad)?;
        let (name, mut direction) = match name.strip_prefix('-') {
            Some(n) => (n, Direction::Desc),
            None => (name.strip_prefix('+').unwrap_or(name), Direction::Asc),
        };
        if !crate::entity::is_safe_identifier(name) {
            return Err(bad());
        }
        let mut rest = rest;
        if let Some((d, r)) = rest.split_first() {
            match d.to_ascii_lowercase().as_str() {
                "asc" => {
                    direction = Direction::Asc;
                    rest = r;
                }
                "desc" => {
                    direction = Direction::Desc;
                    rest = r;
                }
                _ => {}
            }
        }
        let nulls = match rest {
            [] => None,
            [n, w] if n.eq_ignore_ascii_case("nulls") => match w.to_ascii_lowercase().as_str() {
                "first" => Some(Nulls::First),
                "last" => Some(Nulls::Last),
                _ => return Err(bad()),
            },
            _ => return Err(bad()),
        };
        Ok(Order {
            field: name.to_owned(),
            direction,
            nulls,
        })
    }
}

/// A query: filter, ordering, page size, and where to start.
///
/// Serializable, so an HTTP API can accept it as JSON:
///
/// ```
/// use larder_core::query::Query;
/// let q: Query = serde_json::from_str(
///     r#"{"filter":{"op":"eq","field":"status","value":"open"},
///         "order":[{"field":"total","direction":"desc"}],"limit":20}"#,
/// ).unwrap();
/// assert_eq!(q.limit, Some(20));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// The filter (everything by default).
    #[serde(default)]
    pub filter: Spec,
    /// Ordering keys; the id is always appended as the final tie-break.
    #[serde(default)]
    pub order: Vec<Order>,
    /// Page size for `find` (default and cap come from [`Limits`]); for `stream`, the most
    /// rows to yield (unbounded if unset).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// Continue after this cursor (from [`Page::next`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// Skip this many rows (cannot be combined with `after`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

impl Query {
    /// A query with this filter.
    pub fn new(filter: Spec) -> Query {
        Query {
            filter,
            ..Query::default()
        }
    }

    /// Parses the JSON form (as an HTTP API receives it). Malformed JSON, unknown keys,
    /// unknown operators or directions, and nesting deeper than serde_json's recursion limit
    /// are [`Error::InvalidQuery`]; fields and values are checked when the query runs.
    pub fn from_json(json: &str) -> Result<Query> {
        serde_json::from_str(json).map_err(|e| Error::InvalidQuery(format!("malformed query: {e}")))
    }

    /// Every entity, ordered by id.
    pub fn all() -> Query {
        Query::default()
    }

    /// Adds an ordering key.
    #[must_use]
    pub fn order_by(mut self, order: Order) -> Query {
        self.order.push(order);
        self
    }

    /// Sets the page size.
    #[must_use]
    pub fn with_limit(mut self, limit: u32) -> Query {
        self.limit = Some(limit);
        self
    }

    /// Continues after a cursor returned in [`Page::next`].
    #[must_use]
    pub fn with_after(mut self, cursor: impl Into<String>) -> Query {
        self.after = Some(cursor.into());
        self
    }

    /// Skips rows (offset pagination).
    #[must_use]
    pub fn with_offset(mut self, offset: u64) -> Query {
        self.offset = Some(offset);
        self
    }

    /// Checks the query against the entity and the limits and produces the plan backends
    /// run. `paged` is true for `find` (the limit defaults and is capped) and false for
    /// `stream`.
    pub fn plan(&self, def: &EntityDef, limits: &Limits, paged: bool) -> Result<Select> {
        let filter = self.filter.resolve(def, limits)?;
        if self.order.len() > limits.max_order_keys {
            return Err(Error::LimitExceeded {
                what: "number of ordering keys",
                limit: limits.max_order_keys as u64,
                actual: self.order.len() as u64,
            });
        }
        let mut order = Vec::with_capacity(self.order.len() + 1);
        for o in &self.order {
            let f = def.field(&o.field).ok_or_else(|| Error::UnknownField {
                entity: def.name,
                field: shown(&o.field),
            })?;
            let fd = def.field_def(f);
            if !fd.ty.is_orderable() {
                return Err(Error::InvalidQuery(format!(
                    "cannot order by json field `{}`",
                    fd.name
                )));
            }
            let descending = o.direction == Direction::Desc;
            let nulls_first = match o.nulls {
                Some(Nulls::First) => true,
                Some(Nulls::Last) => false,
                None => descending,
            };
            if order.iter().any(|k: &OrderKey| k.field == f) {
                return Err(Error::InvalidQuery(format!(
                    "field `{}` appears twice in the ordering",
                    fd.name
                )));
            }
            order.push(OrderKey {
                field: f,
                descending,
                nulls_first,
                nullable: fd.nullable,
            });
            if f == FieldRef::Id {
                break;
            }
        }
        if !order.iter().any(|k| k.field == FieldRef::Id) {
            order.push(OrderKey {
                field: FieldRef::Id,
                descending: false,
                nulls_first: false,
                nullable: false,
            });
        }
        let limit = match (paged, self.limit) {
            (true, None) => Some(u64::from(limits.default_page_size)),
            (true, Some(0)) => {
                return Err(Error::InvalidQuery("page size must be at least 1".into()));
            }
            (true, Some(n)) if n > limits.max_page_size => {
                return Err(Error::LimitExceeded {
                    what: "page size",
                    limit: u64::from(limits.max_page_size),
                    actual: u64::from(n),
                });
            }
            (_, n) => n.map(u64::from),
        };
        if self.after.is_some() && self.offset.is_some() {
            return Err(Error::InvalidQuery(
                "a query takes a cursor or an offset, not both".into(),
            ));
        }
        let after = match &self.after {
            Some(token) => Some(decode_cursor(token, def, &order)?),
            None => None,
        };
        Ok(Select {
            filter,
            order,
            after,
            limit,
            offset: self.offset,
        })
    }
}

/// A resolved ordering key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrderKey {
    /// The field.
    pub field: FieldRef,
    /// Descending order.
    pub descending: bool,
    /// Nulls before values.
    pub nulls_first: bool,
    /// Whether the column can hold nulls (backends emit `NULLS FIRST/LAST` only then).
    pub nullable: bool,
}

/// A checked query plan: what backends compile to SQL or evaluate in memory.
#[derive(Debug, Clone, PartialEq)]
pub struct Select {
    /// The filter.
    pub filter: Pred,
    /// The ordering; always ends with the id, so it is total.
    pub order: Vec<OrderKey>,
    /// Keyset position: values of `order`'s keys on the last row already seen.
    pub after: Option<Vec<Value>>,
    /// Most rows to return.
    pub limit: Option<u64>,
    /// Rows to skip.
    pub offset: Option<u64>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq)]
pub struct Page<T> {
    /// The entities, in query order.
    pub items: Vec<Versioned<T>>,
    /// A cursor for the next page, or `None` if this was the last one.
    pub next: Option<String>,
}

impl<T> Page<T> {
    /// Whether another page follows.
    pub fn has_more(&self) -> bool {
        self.next.is_some()
    }
}

const CURSOR_MAX_LEN: usize = 8 * 1024;

#[derive(Serialize, Deserialize)]
struct CursorBody {
    /// Fingerprint of the ordering the cursor belongs to.
    o: String,
    /// The key values.
    k: Vec<CursorKey>,
}

/// A key value in a cursor, tagged with its type. Floats travel as their IEEE-754 bits so
/// that a cursor never depends on printing and parsing decimals: the keyset position is
/// exactly the last row's value, on every backend.
#[derive(Serialize, Deserialize)]
enum CursorKey {
    #[serde(rename = "n")]
    Null,
    #[serde(rename = "b")]
    Bool(bool),
    #[serde(rename = "i")]
    Int(i64),
    /// `f64::to_bits`, as 16 hex digits.
    #[serde(rename = "f")]
    Float(String),
    #[serde(rename = "t")]
    Text(String),
    #[serde(rename = "u")]
    Uuid(uuid::Uuid),
    #[serde(rename = "j")]
    Json(serde_json::Value),
}

impl CursorKey {
    fn from_value(v: &Value) -> CursorKey {
        match v {
            Value::Null => CursorKey::Null,
            Value::Bool(b) => CursorKey::Bool(*b),
            Value::Int(i) => CursorKey::Int(*i),
            Value::Float(f) => CursorKey::Float(format!("{:016x}", f.to_bits())),
            Value::Text(s) => CursorKey::Text(s.clone()),
            Value::Uuid(u) => CursorKey::Uuid(*u),
            Value::Json(j) => CursorKey::Json(j.clone()),
        }
    }

    fn into_value(self) -> Result<Value> {
        Ok(match self {
            CursorKey::Null => Value::Null,
            CursorKey::Bool(b) => Value::Bool(b),
            CursorKey::Int(i) => Value::Int(i),
            CursorKey::Float(bits) => {
                let bits = u64::from_str_radix(&bits, 16)
                    .ok()
                    .filter(|_| bits.len() == 16)
                    .ok_or_else(|| Error::InvalidCursor("malformed float key".into()))?;
                Value::Float(f64::from_bits(bits))
            }
            CursorKey::Text(s) => Value::Text(s),
            CursorKey::Uuid(u) => Value::Uuid(u),
            CursorKey::Json(j) => Value::Json(j),
        })
    }
}

fn fingerprint(def: &EntityDef, order: &[OrderKey]) -> String {
    // FNV-1a: tiny, stable across Rust versions (unlike `DefaultHasher`).
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut feed = |b: &[u8]| {
        for x in b {
            h ^= u64::from(*x);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    };
    feed(def.table.as_bytes());
    for k in order {
        feed(def.field_def(k.field).name.as_bytes());
        feed(&[u8::from(k.descending), u8::from(k.nulls_first), 0xff]);
    }
    format!("{h:016x}")
}

/// Encodes the keyset position after `last` as an opaque cursor token.
pub fn encode_cursor(def: &EntityDef, order: &[OrderKey], last: &Record) -> String {
    let body = CursorBody {
        o: fingerprint(def, order),
        k: order
            .iter()
            .map(|k| CursorKey::from_value(last.get(k.field)))
            .collect(),
    };
    let json = serde_json::to_vec(&body).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_cursor(token: &str, def: &EntityDef, order: &[OrderKey]) -> Result<Vec<Value>> {
    if token.len() > CURSOR_MAX_LEN {
        return Err(Error::LimitExceeded {
            what: "cursor length",
            limit: CURSOR_MAX_LEN as u64,
            actual: token.len() as u64,
        });
    }
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token)
        .map_err(|_| Error::InvalidCursor("not a larder cursor".into()))?;
    let body: CursorBody = serde_json::from_slice(&bytes)
        .map_err(|_| Error::InvalidCursor("not a larder cursor".into()))?;
    if body.o != fingerprint(def, order) {
        return Err(Error::InvalidCursor(
            "the cursor belongs to a different entity or ordering".into(),
        ));
    }
    if body.k.len() != order.len() {
        return Err(Error::InvalidCursor("wrong number of key values".into()));
    }
    order
        .iter()
        .zip(body.k)
        .map(|(k, v)| {
            let v = v.into_value()?;
            let fd = def.field_def(k.field);
            if v.is_null() && !fd.nullable {
                return Err(Error::InvalidCursor(format!("null for `{}`", fd.name)));
            }
            if let Value::Text(t) = &v
                && t.contains('\0')
            {
                return Err(Error::InvalidCursor("not a larder cursor".into()));
            }
            v.coerce(fd.name, fd.ty)
                .map_err(|e| Error::InvalidCursor(e.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entity::{FieldDef, Storage};
    use crate::value::FieldType;

    fn def() -> EntityDef {
        EntityDef {
            indexes: Vec::new(),
            name: "item",
            table: "items",
            storage: Storage::Columns,
            id: FieldDef::new("id", FieldType::Int),
            fields: vec![FieldDef::new("name", FieldType::Text).with_nullable(true)],
        }
    }

    #[test]
    fn the_id_is_always_the_last_key() {
        let s = Query::all()
            .order_by(Order::desc("name"))
            .plan(&def(), &Limits::default(), true)
            .unwrap();
        assert_eq!(s.order.len(), 2);
        assert_eq!(s.order[1].field, FieldRef::Id);
        assert!(s.order[0].nulls_first, "desc puts nulls first by default");
        assert_eq!(s.limit, Some(50));
    }

    #[test]
    fn page_size_over_the_cap_is_rejected() {
        let e = Query::all()
            .with_limit(5_000)
            .plan(&def(), &Limits::default(), true);
        assert!(matches!(e, Err(Error::LimitExceeded { .. })));
    }

    #[test]
    fn cursors_round_trip_and_reject_tampering() {
        let d = def();
        let q = Query::all().order_by(Order::asc("name"));
        let plan = q.plan(&d, &Limits::default(), true).unwrap();
        let rec = Record {
            id: Value::Int(7),
            version: 1,
            values: vec![Value::Null],
            body: None,
        };
        let c = encode_cursor(&d, &plan.order, &rec);
        let p2 = q
            .clone()
            .with_after(&c)
            .plan(&d, &Limits::default(), true)
            .unwrap();
        assert_eq!(p2.after, Some(vec![Value::Null, Value::Int(7)]));
        let other = Query::all().order_by(Order::desc("name")).with_after(&c);
        assert!(matches!(
            other.plan(&d, &Limits::default(), true),
            Err(Error::InvalidCursor(_))
        ));
        assert!(matches!(
            q.with_after("!!!").plan(&d, &Limits::default(), true),
            Err(Error::InvalidCursor(_))
        ));
    }

    #[test]
    fn float_cursor_keys_round_trip_bit_for_bit() {
        let d = EntityDef {
            indexes: Vec::new(),
            fields: vec![FieldDef::new("x", FieldType::Float)],
            ..def()
        };
        let q = Query::all().order_by(Order::desc("x"));
        let plan = q.plan(&d, &Limits::default(), true).unwrap();
        let floats = [
            f64::from(f32::MAX),
            -2.418_261_144_083_014_7e92,
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -0.0,
            0.1 + 0.2,
            2f64.sqrt(),
            f64::INFINITY,
        ];
        for x in floats {
            let rec = Record {
                id: Value::Int(1),
                version: 1,
                values: vec![Value::Float(x)],
                body: None,
            };
            let c = encode_cursor(&d, &plan.order, &rec);
            let p2 = q
                .clone()
                .with_after(&c)
                .plan(&d, &Limits::default(), true)
                .unwrap();
            let Some(Value::Float(y)) = p2.after.as_ref().map(|a| a[0].clone()) else {
                panic!("no float key in {:?}", p2.after);
            };
            assert_eq!(y.to_bits(), x.to_bits(), "{x:e}");
        }
    }
}
