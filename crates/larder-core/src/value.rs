//! Typed values that cross the boundary between entities and storage.

use std::cmp::Ordering;
use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result, shown};

/// The storage type of a registered field.
///
/// Each type maps to one column type per backend (see `larder-sql`), and has one comparison
/// semantics that the memory backend reproduces exactly:
/// text compares by bytes (PostgreSQL columns are created `COLLATE "C"`), booleans order
/// `false < true`, UUIDs order like their lowercase hyphenated text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum FieldType {
    /// `true` / `false`.
    Bool,
    /// A signed 64-bit integer.
    Int,
    /// A 64-bit float (NaN is rejected).
    Float,
    /// UTF-8 text.
    Text,
    /// A UUID.
    Uuid,
    /// A JSON document (not orderable; supports `json_contains` / `json_has_key`).
    Json,
}

impl FieldType {
    /// The type's name in error messages.
    pub fn name(self) -> &'static str {
        match self {
            FieldType::Bool => "bool",
            FieldType::Int => "int",
            FieldType::Float => "float",
            FieldType::Text => "text",
            FieldType::Uuid => "uuid",
            FieldType::Json => "json",
        }
    }

    /// Whether values of this type have a total order usable in `lt`/`gt`/ordering.
    pub fn is_orderable(self) -> bool {
        !matches!(self, FieldType::Json)
    }
}

/// A value of a registered field, an id, or a specification operand.
///
/// In the JSON form of a specification a value is written as plain JSON (`"open"`, `42`,
/// `true`, `null`); it is converted to the field's [`FieldType`] when the specification is
/// checked, with a [`Error::TypeMismatch`] if it does not fit.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Value {
    /// SQL `NULL`.
    Null,
    /// A boolean.
    Bool(bool),
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// Text.
    Text(String),
    /// A UUID.
    Uuid(Uuid),
    /// A JSON document.
    Json(serde_json::Value),
}

impl Value {
    /// Whether this is [`Value::Null`].
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short description of the value's type for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "bool",
            Value::Int(_) => "int",
            Value::Float(_) => "float",
            Value::Text(_) => "text",
            Value::Uuid(_) => "uuid",
            Value::Json(_) => "json",
        }
    }

    /// Converts the value to the field's type, or explains why it cannot.
    ///
    /// Integers widen to floats; text parses as a UUID for UUID fields; any value is accepted
    /// as JSON for JSON fields. `Null` is returned unchanged.
    pub fn coerce(self, field: &str, ty: FieldType) -> Result<Value> {
        let mismatch = |v: &Value| Error::TypeMismatch {
            field: shown(field),
            expected: ty.name(),
            found: v.type_name().to_owned(),
        };
        Ok(match (ty, self) {
            (_, Value::Null) => Value::Null,
            (FieldType::Bool, v @ Value::Bool(_)) => v,
            (FieldType::Int, v @ Value::Int(_)) => v,
            (FieldType::Float, Value::Float(f)) if f.is_nan() => {
                return Err(Error::TypeMismatch {
                    field: shown(field),
                    expected: "float",
                    found: "NaN".to_owned(),
                });
            }
            (FieldType::Float, v @ Value::Float(_)) => v,
            // Exact for |i| <= 2^53; larger integers lose precision like any SQL cast would.
            #[allow(clippy::cast_precision_loss)]
            (FieldType::Float, Value::Int(i)) => Value::Float(i as f64),
            (FieldType::Text, v @ Value::Text(_)) => v,
            (FieldType::Uuid, v @ Value::Uuid(_)) => v,
            (FieldType::Uuid, Value::Text(s)) => match Uuid::try_parse(&s) {
                Ok(u) => Value::Uuid(u),
                Err(_) => {
                    return Err(Error::TypeMismatch {
                        field: shown(field),
                        expected: "uuid",
                        found: format!("text `{}`", shown(&s)),
                    });
                }
            },
            (FieldType::Json, Value::Json(j)) => Value::Json(j),
            (FieldType::Json, other) => Value::Json(other.to_json()),
            (_, other) => return Err(mismatch(&other)),
        })
    }

    /// The value as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        match self {
            Value::Null => serde_json::Value::Null,
            Value::Bool(b) => (*b).into(),
            Value::Int(i) => (*i).into(),
            Value::Float(f) => serde_json::Number::from_f64(*f)
                .map(serde_json::Value::Number)
                .unwrap_or(serde_json::Value::Null),
            Value::Text(s) => s.clone().into(),
            Value::Uuid(u) => u.to_string().into(),
            Value::Json(j) => j.clone(),
        }
    }

    /// Builds a value from plain JSON (the specification wire form): scalars map to their
    /// variant, arrays and objects become [`Value::Json`].
    pub fn from_json(j: serde_json::Value) -> Value {
        match j {
            serde_json::Value::Null => Value::Null,
            serde_json::Value::Bool(b) => Value::Bool(b),
            serde_json::Value::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
            },
            serde_json::Value::String(s) => Value::Text(s),
            other => Value::Json(other),
        }
    }

    /// SQL-style comparison of two non-null values of the same type; `None` when either is
    /// null or the types differ (the caller treats that as SQL `UNKNOWN`).
    pub fn sql_cmp(&self, other: &Value) -> Option<Ordering> {
        match (self, other) {
            (Value::Bool(a), Value::Bool(b)) => Some(a.cmp(b)),
            (Value::Int(a), Value::Int(b)) => Some(a.cmp(b)),
            (Value::Float(a), Value::Float(b)) => a.partial_cmp(b),
            (Value::Text(a), Value::Text(b)) => Some(a.as_bytes().cmp(b.as_bytes())),
            (Value::Uuid(a), Value::Uuid(b)) => Some(a.cmp(b)),
            (Value::Json(a), Value::Json(b)) => (a == b).then_some(Ordering::Equal),
            _ => None,
        }
    }

    /// A total order used for sorting: `Null` first, then values by [`Value::sql_cmp`].
    pub fn total_cmp(&self, other: &Value) -> Ordering {
        match (self.is_null(), other.is_null()) {
            (true, true) => Ordering::Equal,
            (true, false) => Ordering::Less,
            (false, true) => Ordering::Greater,
            (false, false) => self.sql_cmp(other).unwrap_or(Ordering::Equal),
        }
    }

    /// Renders the value as it appears in an error message (ids in `NotFound` and friends).
    pub fn display_id(&self) -> String {
        match self {
            Value::Text(s) => shown(s),
            other => other.to_string(),
        }
    }
}

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Null => f.write_str("null"),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Int(i) => write!(f, "{i}"),
            Value::Float(x) => write!(f, "{x}"),
            Value::Text(s) => f.write_str(s),
            Value::Uuid(u) => write!(f, "{u}"),
            Value::Json(j) => write!(f, "{j}"),
        }
    }
}

impl Serialize for Value {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for Value {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        serde_json::Value::deserialize(d).map(Value::from_json)
    }
}

/// The byte offset of the first NUL character (U+0000) in `s`, if any.
///
/// No backend stores NUL in text the same way (PostgreSQL refuses it, SQLite's `LIKE` stops
/// at it), so larder rejects it in every written text value, id and JSON string, and in
/// every text operand of a specification, before any SQL is built.
pub fn text_nul(s: &str) -> Option<usize> {
    s.find('\0')
}

/// Whether a JSON value holds a NUL character (U+0000) in any string or object key.
pub fn json_nul(j: &serde_json::Value) -> bool {
    match j {
        serde_json::Value::String(s) => s.contains('\0'),
        serde_json::Value::Array(a) => a.iter().any(json_nul),
        serde_json::Value::Object(o) => o.iter().any(|(k, v)| k.contains('\0') || json_nul(v)),
        _ => false,
    }
}

/// Whether JSON text holds a NUL character: raw, or escaped as `\u0000` (an escape, not an
/// escaped backslash followed by `u0000`).
pub fn json_text_nul(text: &str) -> bool {
    let b = text.as_bytes();
    if b.contains(&0) {
        return true;
    }
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' {
            if b.get(i + 1) == Some(&b'u') && b.get(i + 2..i + 6) == Some(b"0000".as_slice()) {
                return true;
            }
            // Skip the escaped character (a backslash included).
            i += 2;
        } else {
            i += 1;
        }
    }
    false
}

macro_rules! value_from {
    ($($t:ty => $v:ident $(as $cast:ty)?),* $(,)?) => {$(
        impl From<$t> for Value {
            fn from(x: $t) -> Self { Value::$v(x $(as $cast)?) }
        }
    )*};
}
value_from!(bool => Bool, i64 => Int, i32 => Int as i64, u32 => Int as i64, i16 => Int as i64,
    f64 => Float, f32 => Float as f64, String => Text, Uuid => Uuid, serde_json::Value => Json);

impl From<&str> for Value {
    fn from(s: &str) -> Self {
        Value::Text(s.to_owned())
    }
}

impl<T: Into<Value>> From<Option<T>> for Value {
    fn from(o: Option<T>) -> Self {
        o.map_or(Value::Null, Into::into)
    }
}

/// A Rust type that can be stored in a registered field (or used as an id).
///
/// Implemented for `bool`, `i16`, `i32`, `i64`, `u32`, `f32`, `f64`, `String`, `Uuid`,
/// `serde_json::Value`, [`Json<T>`](crate::Json) and `Option<T>` of those. `#[derive(Entity)]`
/// uses it to map struct fields to columns; implement it for your own newtypes.
pub trait FieldValue: Sized {
    /// The field's storage type.
    const TYPE: FieldType;
    /// Whether the field may hold `NULL`.
    const NULLABLE: bool = false;
    /// Converts to a storage value.
    fn to_value(&self) -> Value;
    /// Converts from a storage value; the error says what was found.
    fn from_value(v: Value) -> std::result::Result<Self, String>;
}

fn wrong(expected: &str, v: &Value) -> String {
    format!("expected {expected}, found {}", v.type_name())
}

macro_rules! field_value_int {
    ($($t:ty),*) => {$(
        impl FieldValue for $t {
            const TYPE: FieldType = FieldType::Int;
            fn to_value(&self) -> Value { Value::Int(i64::from(*self)) }
            fn from_value(v: Value) -> std::result::Result<Self, String> {
                match v {
                    Value::Int(i) => <$t>::try_from(i).map_err(|_| format!("{i} out of range for {}", stringify!($t))),
                    other => Err(wrong("int", &other)),
                }
            }
        }
    )*};
}
field_value_int!(i16, i32, i64, u32);

impl FieldValue for bool {
    const TYPE: FieldType = FieldType::Bool;
    fn to_value(&self) -> Value {
        Value::Bool(*self)
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Bool(b) => Ok(b),
            Value::Int(0) => Ok(false),
            Value::Int(1) => Ok(true),
            other => Err(wrong("bool", &other)),
        }
    }
}

impl FieldValue for f64 {
    const TYPE: FieldType = FieldType::Float;
    fn to_value(&self) -> Value {
        Value::Float(*self)
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Float(f) => Ok(f),
            #[allow(clippy::cast_precision_loss)]
            Value::Int(i) => Ok(i as f64),
            other => Err(wrong("float", &other)),
        }
    }
}

impl FieldValue for f32 {
    const TYPE: FieldType = FieldType::Float;
    fn to_value(&self) -> Value {
        Value::Float(f64::from(*self))
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        // Narrowing is the point of choosing f32 for the field.
        #[allow(clippy::cast_possible_truncation)]
        f64::from_value(v).map(|f| f as f32)
    }
}

impl FieldValue for String {
    const TYPE: FieldType = FieldType::Text;
    fn to_value(&self) -> Value {
        Value::Text(self.clone())
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Text(s) => Ok(s),
            other => Err(wrong("text", &other)),
        }
    }
}

impl FieldValue for Uuid {
    const TYPE: FieldType = FieldType::Uuid;
    fn to_value(&self) -> Value {
        Value::Uuid(*self)
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Uuid(u) => Ok(u),
            Value::Text(s) => Uuid::try_parse(&s).map_err(|e| e.to_string()),
            other => Err(wrong("uuid", &other)),
        }
    }
}

impl FieldValue for serde_json::Value {
    const TYPE: FieldType = FieldType::Json;
    fn to_value(&self) -> Value {
        Value::Json(self.clone())
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Json(j) => Ok(j),
            Value::Text(s) => serde_json::from_str(&s).map_err(|e| e.to_string()),
            other => Ok(other.to_json()),
        }
    }
}

/// Stores any serde type in a JSON field (`JSONB` on PostgreSQL, JSON text on SQLite).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json<T>(pub T);

impl<T: Serialize + serde::de::DeserializeOwned> FieldValue for Json<T> {
    const TYPE: FieldType = FieldType::Json;
    fn to_value(&self) -> Value {
        Value::Json(serde_json::to_value(&self.0).unwrap_or(serde_json::Value::Null))
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        let j = serde_json::Value::from_value(v)?;
        serde_json::from_value(j)
            .map(Json)
            .map_err(|e| e.to_string())
    }
}

impl<T: FieldValue> FieldValue for Option<T> {
    const TYPE: FieldType = T::TYPE;
    const NULLABLE: bool = true;
    fn to_value(&self) -> Value {
        self.as_ref().map_or(Value::Null, T::to_value)
    }
    fn from_value(v: Value) -> std::result::Result<Self, String> {
        match v {
            Value::Null => Ok(None),
            v => T::from_value(v).map(Some),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coerce_widens_ints_and_parses_uuids() {
        assert_eq!(
            Value::Int(2).coerce("x", FieldType::Float).unwrap(),
            Value::Float(2.0)
        );
        let u = Uuid::nil();
        assert_eq!(
            Value::Text(u.to_string())
                .coerce("x", FieldType::Uuid)
                .unwrap(),
            Value::Uuid(u)
        );
        assert!(matches!(
            Value::Text("a".into()).coerce("age", FieldType::Int),
            Err(Error::TypeMismatch { .. })
        ));
        assert!(
            Value::Float(f64::NAN)
                .coerce("x", FieldType::Float)
                .is_err()
        );
    }

    #[test]
    fn nul_is_found_in_text_json_and_json_text() {
        assert_eq!(text_nul("a\0b"), Some(1));
        assert_eq!(text_nul("ab"), None);
        assert!(json_nul(&serde_json::json!({"k": ["x", "a\0"]})));
        assert!(json_nul(&serde_json::json!({"a\0": 1})));
        assert!(!json_nul(&serde_json::json!({"k": ["x\\u0000"]})));
        assert!(json_text_nul(r#"{"k":"a\u0000"}"#));
        assert!(json_text_nul("{\"k\":\"a\0\"}"));
        assert!(
            !json_text_nul(r#"{"k":"a\\u0000"}"#),
            "an escaped backslash"
        );
        assert!(json_text_nul(r#"{"k":"a\\\u0000"}"#));
        assert!(!json_text_nul(r#"{"k":"a\u0001"}"#));
    }

    #[test]
    fn text_compares_by_bytes() {
        let a = Value::from("Z");
        let b = Value::from("a");
        assert_eq!(a.sql_cmp(&b), Some(Ordering::Less));
        assert_eq!(Value::Null.sql_cmp(&b), None);
    }
}
