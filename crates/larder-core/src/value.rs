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
    /// A 64-bit float. Only finite values are stored: NaN and ±infinity are rejected on
    /// write (and as specification operands), and negative zero is stored as `0.0` (SQLite
    /// `REAL` columns and PostgreSQL `jsonb` cannot hold it). Every other `f64` reads back
    /// bit for bit on every backend.
    Float,
    /// UTF-8 text.
    Text,
    /// A UUID.
    Uuid,
    /// A JSON document (not orderable; supports `json_contains` / `json_has_key`). In a
    /// nullable JSON field, JSON `null` is stored as SQL `NULL` (it reads back as `None` and
    /// matches `is_null`); in a required one it is a value that `is_null` does not match.
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
///
/// Floats inside follow [`FieldType::Float`]: a NaN or infinity anywhere in `T` makes the
/// write fail with [`Error::TypeMismatch`]; every finite float reads back bit for bit,
/// except negative zero, stored as `0.0`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Json<T>(pub T);

impl<T: Serialize + serde::de::DeserializeOwned> FieldValue for Json<T> {
    const TYPE: FieldType = FieldType::Json;
    /// A non-finite float anywhere inside `T` (which `serde_json` would silently turn into
    /// `null`) is returned as that [`Value::Float`], so the write is rejected with a typed
    /// error instead of storing a value that cannot be read back.
    fn to_value(&self) -> Value {
        if let Some(bad) = find_non_finite(&self.0) {
            return Value::Float(bad.value);
        }
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

/// A non-finite float found inside a serializable value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NonFinite {
    /// Where: `field`, `list[2]`, `map.key` (empty for the value itself).
    pub(crate) path: String,
    /// The value (NaN or ±infinity).
    pub(crate) value: f64,
}

impl NonFinite {
    /// The typed write error for this float.
    pub(crate) fn into_error(self) -> Error {
        Error::TypeMismatch {
            field: shown(&self.path),
            expected: "a finite float",
            found: non_finite_found(self.value, None),
        }
    }
}

/// The `found` of the write error for a non-finite float (`inside`: the type of the JSON
/// value it was found in, if any).
pub(crate) fn non_finite_found(f: f64, inside: Option<FieldType>) -> String {
    let name = if f.is_nan() {
        "NaN"
    } else if f > 0.0 {
        "inf"
    } else {
        "-inf"
    };
    match inside {
        None => format!("{name} (larder stores finite floats only)"),
        Some(ty) => format!(
            "{name} inside a {} value (larder stores finite floats only)",
            ty.name()
        ),
    }
}

/// Walks `v`'s serde serialization and returns the first non-finite `f32`/`f64`, which
/// `serde_json` would silently write as `null` (a value that then cannot be read back).
/// Serialization errors are not reported here: the real serializer reports them.
pub(crate) fn find_non_finite<T: Serialize + ?Sized>(v: &T) -> Option<NonFinite> {
    // The common case (no bad float) walks without building paths; only a hit walks again
    // to name where it is.
    let found = |track| {
        let mut check = float_check::FloatCheck::new(track);
        match v.serialize(&mut check) {
            Err(float_check::CheckError::NonFinite(n)) => Some(n),
            _ => None,
        }
    };
    found(false)?;
    found(true)
}

/// Replaces negative zero with `0.0` throughout a JSON document (see [`FieldType::Float`]).
pub(crate) fn normalize_json_zeros(j: &mut serde_json::Value) {
    match j {
        serde_json::Value::Number(n) => {
            if n.is_f64()
                && n.as_f64().is_some_and(|f| f == 0.0 && f.is_sign_negative())
                && let Some(zero) = serde_json::Number::from_f64(0.0)
            {
                *n = zero;
            }
        }
        serde_json::Value::Array(a) => a.iter_mut().for_each(normalize_json_zeros),
        serde_json::Value::Object(o) => o.values_mut().for_each(normalize_json_zeros),
        _ => {}
    }
}

/// A `serde_json` formatter that writes negative zero as `0.0` (see [`FieldType::Float`]);
/// otherwise compact, and floats print in their shortest round-trip form.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CanonicalFloats;

impl serde_json::ser::Formatter for CanonicalFloats {
    fn write_f64<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f64) -> std::io::Result<()> {
        let v = if v == 0.0 { 0.0 } else { v };
        serde_json::ser::CompactFormatter.write_f64(w, v)
    }

    fn write_f32<W: ?Sized + std::io::Write>(&mut self, w: &mut W, v: f32) -> std::io::Result<()> {
        let v = if v == 0.0 { 0.0 } else { v };
        serde_json::ser::CompactFormatter.write_f32(w, v)
    }
}

mod float_check {
    //! A serde `Serializer` that writes nothing and stops at the first non-finite float.

    use std::fmt;

    use serde::Serialize;
    use serde::ser::{self, Serializer};

    use super::NonFinite;

    #[derive(Debug)]
    pub(super) enum CheckError {
        NonFinite(NonFinite),
        Other,
    }

    impl fmt::Display for CheckError {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("non-finite float")
        }
    }

    impl std::error::Error for CheckError {}

    impl ser::Error for CheckError {
        fn custom<T: fmt::Display>(_: T) -> Self {
            CheckError::Other
        }
    }

    #[derive(Debug)]
    pub(super) struct FloatCheck {
        /// Whether to record the path (only needed to name a bad float in the error).
        track: bool,
        path: Vec<String>,
    }

    impl FloatCheck {
        pub(super) fn new(track: bool) -> Self {
            FloatCheck {
                track,
                path: Vec::new(),
            }
        }

        fn push(&mut self, seg: impl FnOnce() -> String) {
            if self.track {
                self.path.push(seg());
            }
        }

        fn pop(&mut self) {
            if self.track {
                self.path.pop();
            }
        }

        fn float(&self, value: f64) -> Result<(), CheckError> {
            if value.is_finite() {
                return Ok(());
            }
            let mut path = String::new();
            for seg in &self.path {
                if !path.is_empty() && !seg.starts_with('[') {
                    path.push('.');
                }
                path.push_str(seg);
            }
            Err(CheckError::NonFinite(NonFinite { path, value }))
        }

        fn nested<T: Serialize + ?Sized>(
            &mut self,
            seg: impl FnOnce() -> String,
            v: &T,
        ) -> Result<(), CheckError> {
            self.push(seg);
            let r = v.serialize(&mut *self);
            self.pop();
            r
        }
    }

    pub(super) struct Compound<'a> {
        check: &'a mut FloatCheck,
        index: usize,
        key: String,
    }

    impl<'a> Compound<'a> {
        fn new(check: &'a mut FloatCheck) -> Self {
            Compound {
                check,
                index: 0,
                key: String::new(),
            }
        }

        fn element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CheckError> {
            let i = self.index;
            self.index += 1;
            self.check.nested(|| format!("[{i}]"), v)
        }
    }

    macro_rules! ok_scalars {
        ($($m:ident: $t:ty),* $(,)?) => {$(
            fn $m(self, _: $t) -> Result<(), CheckError> { Ok(()) }
        )*};
    }

    impl<'a> Serializer for &'a mut FloatCheck {
        type Ok = ();
        type Error = CheckError;
        type SerializeSeq = Compound<'a>;
        type SerializeTuple = Compound<'a>;
        type SerializeTupleStruct = Compound<'a>;
        type SerializeTupleVariant = Compound<'a>;
        type SerializeMap = Compound<'a>;
        type SerializeStruct = Compound<'a>;
        type SerializeStructVariant = Compound<'a>;

        ok_scalars!(serialize_bool: bool, serialize_i8: i8, serialize_i16: i16,
            serialize_i32: i32, serialize_i64: i64, serialize_i128: i128, serialize_u8: u8,
            serialize_u16: u16, serialize_u32: u32, serialize_u64: u64, serialize_u128: u128,
            serialize_char: char, serialize_str: &str, serialize_bytes: &[u8],
            serialize_unit_struct: &'static str);

        fn serialize_f32(self, v: f32) -> Result<(), CheckError> {
            self.float(f64::from(v))
        }
        fn serialize_f64(self, v: f64) -> Result<(), CheckError> {
            self.float(v)
        }
        fn serialize_none(self) -> Result<(), CheckError> {
            Ok(())
        }
        fn serialize_some<T: Serialize + ?Sized>(self, v: &T) -> Result<(), CheckError> {
            v.serialize(self)
        }
        fn serialize_unit(self) -> Result<(), CheckError> {
            Ok(())
        }
        fn serialize_unit_variant(
            self,
            _: &'static str,
            _: u32,
            _: &'static str,
        ) -> Result<(), CheckError> {
            Ok(())
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            v: &T,
        ) -> Result<(), CheckError> {
            v.serialize(self)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            v: &T,
        ) -> Result<(), CheckError> {
            self.nested(|| variant.to_owned(), v)
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<Compound<'a>, CheckError> {
            Ok(Compound::new(self))
        }
        fn serialize_tuple(self, _: usize) -> Result<Compound<'a>, CheckError> {
            Ok(Compound::new(self))
        }
        fn serialize_tuple_struct(
            self,
            _: &'static str,
            _: usize,
        ) -> Result<Compound<'a>, CheckError> {
            Ok(Compound::new(self))
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Compound<'a>, CheckError> {
            self.push(|| variant.to_owned());
            Ok(Compound::new(self))
        }
        fn serialize_map(self, _: Option<usize>) -> Result<Compound<'a>, CheckError> {
            Ok(Compound::new(self))
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<Compound<'a>, CheckError> {
            Ok(Compound::new(self))
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<Compound<'a>, CheckError> {
            self.push(|| variant.to_owned());
            Ok(Compound::new(self))
        }
    }

    impl ser::SerializeSeq for Compound<'_> {
        type Ok = ();
        type Error = CheckError;
        fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CheckError> {
            self.element(v)
        }
        fn end(self) -> Result<(), CheckError> {
            Ok(())
        }
    }

    impl ser::SerializeTuple for Compound<'_> {
        type Ok = ();
        type Error = CheckError;
        fn serialize_element<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CheckError> {
            self.element(v)
        }
        fn end(self) -> Result<(), CheckError> {
            Ok(())
        }
    }

    impl ser::SerializeTupleStruct for Compound<'_> {
        type Ok = ();
        type Error = CheckError;
        fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CheckError> {
            self.element(v)
        }
        fn end(self) -> Result<(), CheckError> {
            Ok(())
        }
    }

    impl ser::SerializeTupleVariant for Compound<'_> {
        type Ok = ();
        type Error = CheckError;
        fn serialize_field<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CheckError> {
            self.element(v)
        }
        fn end(self) -> Result<(), CheckError> {
            self.check.pop();
            Ok(())
        }
    }

    impl ser::SerializeMap for Compound<'_> {
        type Ok = ();
        type Error = CheckError;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, k: &T) -> Result<(), CheckError> {
            // Keys name the path in the error only; JSON keys are text.
            if self.check.track {
                self.key = match serde_json::to_value(k) {
                    Ok(serde_json::Value::String(s)) => s,
                    Ok(other) => other.to_string(),
                    Err(_) => "?".to_owned(),
                };
            }
            Ok(())
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, v: &T) -> Result<(), CheckError> {
            let key = std::mem::take(&mut self.key);
            self.check.nested(|| key, v)
        }
        fn end(self) -> Result<(), CheckError> {
            Ok(())
        }
    }

    impl ser::SerializeStruct for Compound<'_> {
        type Ok = ();
        type Error = CheckError;
        fn serialize_field<T: Serialize + ?Sized>(
            &mut self,
            key: &'static str,
            v: &T,
        ) -> Result<(), CheckError> {
            self.check.nested(|| key.to_owned(), v)
        }
        fn end(self) -> Result<(), CheckError> {
            Ok(())
        }
    }

    impl ser::SerializeStructVariant for Compound<'_> {
        type Ok = ();
        type Error = CheckError;
        fn serialize_field<T: Serialize + ?Sized>(
            &mut self,
            key: &'static str,
            v: &T,
        ) -> Result<(), CheckError> {
            self.check.nested(|| key.to_owned(), v)
        }
        fn end(self) -> Result<(), CheckError> {
            self.check.pop();
            Ok(())
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
