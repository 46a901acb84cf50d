//! Entities, their field registry, and the record form that backends store.

use std::ops::{Deref, DerefMut};

use serde::Serialize;

use crate::error::{Error, Result, shown};
use crate::value::{
    CanonicalFloats, FieldType, Value, find_non_finite, json_nul, json_text_nul,
    normalize_json_zeros, text_nul,
};

/// How an entity is laid out in storage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Storage {
    /// `(id, version, body)` with the whole entity as a JSON body, plus one real, indexed
    /// column per registered field (kept in step with the body on every write).
    Document,
    /// One column per field (the seeds' ModelMapper): `(id, version, field columns…)`.
    Columns,
}

/// A registered, queryable field of an entity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDef {
    /// The name used in specifications and ordering (the Rust field name unless renamed).
    pub name: &'static str,
    /// The column that stores it.
    pub column: &'static str,
    /// Its storage type.
    pub ty: FieldType,
    /// Whether it may be `NULL`.
    pub nullable: bool,
    /// Whether larder creates an index on the column.
    pub indexed: bool,
}

impl FieldDef {
    /// A non-null, non-indexed field stored in a column of the same name.
    pub const fn new(name: &'static str, ty: FieldType) -> Self {
        FieldDef {
            name,
            column: name,
            ty,
            nullable: false,
            indexed: false,
        }
    }

    /// Stores the field in another column.
    #[must_use]
    pub const fn with_column(mut self, column: &'static str) -> Self {
        self.column = column;
        self
    }

    /// Allows `NULL`.
    #[must_use]
    pub const fn with_nullable(mut self, nullable: bool) -> Self {
        self.nullable = nullable;
        self
    }

    /// Creates an index on the column.
    #[must_use]
    pub const fn with_index(mut self, indexed: bool) -> Self {
        self.indexed = indexed;
        self
    }
}

/// The registry of an entity: its table, id and fields. The only source of identifiers that
/// ever reach SQL text.
///
/// # Invariants
///
/// Checked by [`EntityDef::validate`] (and at compile time by `#[derive(Entity)]`):
/// table, column and field names match `[a-z_][a-z0-9_]{0,62}`, do not start with `_larder`,
/// and are unique; the id is not nullable and has type int, text or uuid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntityDef {
    /// The entity name (used in errors, spans and audit records).
    pub name: &'static str,
    /// The table.
    pub table: &'static str,
    /// The storage layout.
    pub storage: Storage,
    /// The id field (its `name` is what specifications call it, usually `id`).
    pub id: FieldDef,
    /// The registered fields, in column order. The id is not repeated here.
    pub fields: Vec<FieldDef>,
    /// Multi-column indexes (`#[larder(index(country, score))]`), beside the one-column
    /// indexes of [`EntityDef::is_indexed`] fields.
    pub indexes: Vec<IndexDef>,
}

/// A multi-column index of an entity: registered fields (by name, the id included) in index
/// order (in a document entity, only `indexed` fields are registered and have columns).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexDef {
    /// The fields, in index order (2 to [`IndexDef::MAX_FIELDS`]).
    pub fields: Vec<&'static str>,
}

impl IndexDef {
    /// The most fields one index may have.
    pub const MAX_FIELDS: usize = 8;

    /// An index on `fields`, in this order.
    pub fn new(fields: &[&'static str]) -> Self {
        IndexDef {
            fields: fields.to_vec(),
        }
    }
}

/// The name of the version column every entity table carries.
pub const VERSION_COLUMN: &str = "version";
/// The name of the JSON body column of document entities.
pub const BODY_COLUMN: &str = "body";

/// The longest text, in UTF-8 bytes, that a text id or an indexed text field may hold.
///
/// Every backend enforces it on write with [`Error::LimitExceeded`], before any SQL: an
/// index entry must fit in a PostgreSQL btree page (about 2.7 KB), and memory and SQLite
/// refuse the same values so that data written on one backend can move to another. Which
/// fields are indexed is [`EntityDef::is_indexed`]. Text fields that are not indexed (in
/// mapped-column entities), and the JSON body of documents, are bounded only by
/// [`Limits::max_record_bytes`](crate::Limits::max_record_bytes).
pub const MAX_INDEXED_TEXT_BYTES: usize = 2048;

/// Checks that `s` is a safe SQL identifier by larder's grammar.
///
/// ```
/// use larder_core::entity::is_safe_identifier;
/// assert!(is_safe_identifier("order_lines"));
/// assert!(!is_safe_identifier("orders; drop table x"));
/// assert!(!is_safe_identifier("Orders"));
/// assert!(!is_safe_identifier(""));
/// ```
pub fn is_safe_identifier(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0] == b'_')
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_')
}

impl EntityDef {
    /// Checks the invariants listed on the type.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Error::InvalidEntity {
            entity: self.name.to_owned(),
            reason,
        };
        if !is_safe_identifier(self.table) || self.table.starts_with("_larder") {
            return Err(bad(format!(
                "table name `{}` is not a safe identifier",
                crate::error::quote(self.table)
            )));
        }
        if !matches!(
            self.id.ty,
            FieldType::Int | FieldType::Text | FieldType::Uuid
        ) {
            return Err(bad("the id must be int, text or uuid".into()));
        }
        if self.id.nullable {
            return Err(bad("the id cannot be nullable".into()));
        }
        let mut columns = vec![VERSION_COLUMN];
        if self.storage == Storage::Document {
            columns.push(BODY_COLUMN);
        }
        let mut names: Vec<&str> = Vec::new();
        for f in std::iter::once(&self.id).chain(&self.fields) {
            for ident in [f.name, f.column] {
                if !is_safe_identifier(ident) {
                    return Err(bad(format!(
                        "`{}` is not a safe identifier",
                        crate::error::quote(ident)
                    )));
                }
            }
            if columns.contains(&f.column) {
                return Err(bad(format!(
                    "column `{}` is used twice or reserved",
                    f.column
                )));
            }
            if names.contains(&f.name) {
                return Err(bad(format!("field `{}` is declared twice", f.name)));
            }
            columns.push(f.column);
            names.push(f.name);
        }
        for ix in &self.indexes {
            let shown = ix.fields.join(", ");
            if ix.fields.len() < 2 || ix.fields.len() > IndexDef::MAX_FIELDS {
                return Err(bad(format!(
                    "index({shown}) needs 2 to {} fields (one field: mark it indexed)",
                    IndexDef::MAX_FIELDS
                )));
            }
            let mut seen: Vec<&str> = Vec::new();
            for name in &ix.fields {
                if seen.contains(name) {
                    return Err(bad(format!("index({shown}) names `{name}` twice")));
                }
                seen.push(name);
                let ty = match self.field(name) {
                    Some(FieldRef::Id) => self.id.ty,
                    Some(FieldRef::Field(i)) => self.fields[i].ty,
                    None => {
                        return Err(bad(format!(
                            "index({shown}) names `{}`, which is not a registered field (in \
                             a document entity, mark it #[larder(indexed)])",
                            crate::error::quote(name)
                        )));
                    }
                };
                if ty == FieldType::Json {
                    return Err(bad(format!(
                        "index({shown}) names the JSON field `{name}`: JSON fields get their own \
                         index (containment), not a place in a multi-column one"
                    )));
                }
            }
        }
        Ok(())
    }

    /// The columns of a multi-column index, in index order (unknown fields left out:
    /// [`EntityDef::validate`] refuses them).
    pub fn index_columns(&self, ix: &IndexDef) -> Vec<&'static str> {
        ix.fields
            .iter()
            .filter_map(|n| match self.field(n)? {
                FieldRef::Id => Some(self.id.column),
                FieldRef::Field(i) => Some(self.fields[i].column),
            })
            .collect()
    }

    /// Looks a field up by its registered name (the id included).
    pub fn field(&self, name: &str) -> Option<FieldRef> {
        if name == self.id.name {
            return Some(FieldRef::Id);
        }
        self.fields
            .iter()
            .position(|f| f.name == name)
            .map(FieldRef::Field)
    }

    /// The error for a versioned write that found `actual` instead of `expected`:
    /// [`Error::NotFound`] when the row is gone, [`Error::Conflict`] otherwise.
    pub fn stale_write(&self, id: &crate::Value, expected: u64, actual: Option<u64>) -> Error {
        match actual {
            None => Error::NotFound {
                entity: self.name,
                id: id.display_id(),
            },
            Some(actual) => Error::Conflict {
                entity: self.name,
                id: id.display_id(),
                expected,
                actual: Some(actual),
            },
        }
    }

    /// Whether larder keeps an index on the field's column: fields marked `indexed`, and
    /// every non-JSON field of a document entity (the id is always indexed: it is the
    /// primary key).
    pub fn is_indexed(&self, f: &FieldDef) -> bool {
        f.indexed || (self.storage == Storage::Document && f.ty != FieldType::Json)
    }

    /// Checks an id used to look entities up (`get`, `get_many`, `delete`, `exists`): a text
    /// id holding a NUL character (U+0000) is an [`Error::InvalidQuery`], on every backend
    /// (no such id can be stored, see [`Record::check_storable`]).
    pub fn check_id(&self, id: &Value) -> Result<()> {
        if let Value::Text(t) = id
            && let Some(at) = text_nul(t)
        {
            return Err(Error::InvalidQuery(format!(
                "{} id `{}` contains a NUL character (U+0000) at byte {at}; ids cannot contain NUL",
                self.name,
                shown(t)
            )));
        }
        Ok(())
    }

    /// The definition of a resolved field.
    pub fn field_def(&self, f: FieldRef) -> &FieldDef {
        match f {
            FieldRef::Id => &self.id,
            FieldRef::Field(i) => &self.fields[i],
        }
    }
}

/// A field resolved against an [`EntityDef`]: the id, or an index into `fields`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FieldRef {
    /// The id column.
    Id,
    /// `fields[i]`.
    Field(usize),
}

/// An entity in its stored form: what backends read and write.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// The id.
    pub id: Value,
    /// The version (1 after insert, +1 per update).
    pub version: u64,
    /// One value per [`EntityDef::fields`] entry, in order.
    pub values: Vec<Value>,
    /// The JSON body (document storage only).
    pub body: Option<String>,
}

impl Record {
    /// Checks a record about to be written and brings it to its stored form, so that every
    /// backend stores (and refuses) exactly the same values. Called by the repository on
    /// every insert and update, before any SQL.
    ///
    /// - A non-finite float (NaN, ±infinity) anywhere in `id` or `values` is an
    ///   [`Error::TypeMismatch`]: SQL backends cannot store it, and JSON would turn it into
    ///   `null`.
    /// - Text in the id or in an indexed field ([`EntityDef::is_indexed`]) longer than
    ///   [`MAX_INDEXED_TEXT_BYTES`] is an [`Error::LimitExceeded`].
    /// - Negative zero becomes `0.0`, in float fields and inside JSON values (see
    ///   [`FieldType::Float`]).
    /// - JSON `null` in a nullable JSON field becomes SQL `NULL`: `Some(json!(null))` is
    ///   stored as `None`, reads back as `None` and matches `is_null()` on every backend,
    ///   as it does in a document body. In a non-nullable JSON field it stays JSON `null`,
    ///   which is a value: `is_null()` never matches it.
    ///
    /// The JSON body of a document is checked when it is encoded: use [`encode_body`].
    pub fn prepare_for_write(&mut self, def: &EntityDef) -> Result<()> {
        check_value(&def.id, &mut self.id, true)?;
        for (f, v) in def.fields.iter().zip(self.values.iter_mut()) {
            check_value(f, v, def.is_indexed(f))?;
        }
        Ok(())
    }

    /// Checks that every text this record would write can be stored identically on every
    /// backend: no NUL character (U+0000) in the id, a text field, a JSON field's strings or
    /// keys, or a document body (PostgreSQL rejects NUL in `text` and `jsonb`). A field is
    /// reported as [`Error::TypeMismatch`] naming it, a body as [`Error::Mapping`]. Called
    /// by the repository on every insert and update, before any SQL is built.
    pub fn check_storable(&self, def: &EntityDef) -> Result<()> {
        let nul = |f: &FieldDef, v: &Value| -> Result<()> {
            let found = match v {
                Value::Text(t) => text_nul(t).map(|at| format!("text with one at byte {at}")),
                Value::Json(j) if json_nul(j) => Some("json with one in a string".to_owned()),
                _ => None,
            };
            match found {
                Some(found) => Err(Error::TypeMismatch {
                    field: f.name.to_owned(),
                    expected: "a value without NUL characters (U+0000)",
                    found,
                }),
                None => Ok(()),
            }
        };
        nul(&def.id, &self.id)?;
        for (f, v) in def.fields.iter().zip(&self.values) {
            nul(f, v)?;
        }
        if let Some(body) = &self.body
            && json_text_nul(body)
        {
            return Err(mapping_error(
                def.name,
                "encode",
                "the document holds a NUL character (U+0000) in a string; remove it (no backend stores NUL the same way)",
            ));
        }
        Ok(())
    }

    /// The value of a resolved field (`NULL`, not a panic, for an index past `values`: a
    /// field resolved against another definition than the record's).
    pub fn get(&self, f: FieldRef) -> &Value {
        static NULL: Value = Value::Null;
        match f {
            FieldRef::Id => &self.id,
            FieldRef::Field(i) => self.values.get(i).unwrap_or(&NULL),
        }
    }
}

/// A domain type that larder can store.
///
/// Usually derived: `#[derive(Entity)]` generates the registry and the mapping, either as a
/// document (`#[larder(document)]`) or as mapped columns. Implement it by hand for full
/// control; [`EntityDef::validate`] then checks your registry when the store first sees it.
///
/// # Contract
///
/// `from_record(to_record(x)?)` must give back an equal entity; `to_record` must fill
/// `values` in the order of `def().fields`, and `body` exactly for document storage.
/// For document storage `from_record` must decode from the body alone: streams leave
/// `values` empty, so that the field columns are not read for every row; build the body
/// with [`encode_body`] (not `serde_json::to_string`, which writes NaN as `null`).
///
/// The repository checks every record before writing it ([`Record::prepare_for_write`]):
/// non-finite floats and over-long indexed text are refused with a typed error, negative
/// zero is stored as `0.0`, JSON `null` in a nullable JSON field as SQL `NULL`.
pub trait Entity: Send + Sync + Sized + 'static {
    /// The id type.
    type Id: crate::value::FieldValue + Clone + Send + Sync;

    /// The registry. Called often: return a reference to a `static`.
    fn def() -> &'static EntityDef;

    /// This entity's id.
    fn id(&self) -> Self::Id;

    /// Encodes the entity (the version is filled in by the repository).
    fn to_record(&self) -> Result<Record>;

    /// Decodes an entity from storage.
    fn from_record(record: Record) -> Result<Self>;
}

/// An entity together with the version it was read at (or written as).
///
/// Pass `version` back to `update`/`delete` as the expected version. Derefs to the entity.
#[derive(Debug, Clone, PartialEq)]
pub struct Versioned<T> {
    /// The entity.
    pub value: T,
    /// Its version in storage.
    pub version: u64,
}

impl<T> Versioned<T> {
    /// Unwraps the entity.
    pub fn into_inner(self) -> T {
        self.value
    }
}

impl<T> Deref for Versioned<T> {
    type Target = T;
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T> DerefMut for Versioned<T> {
    fn deref_mut(&mut self) -> &mut T {
        &mut self.value
    }
}

fn check_value(f: &FieldDef, v: &mut Value, indexed: bool) -> Result<()> {
    match v {
        Value::Float(x) if !x.is_finite() => {
            let inside = (f.ty != FieldType::Float).then_some(f.ty);
            return Err(Error::TypeMismatch {
                field: f.name.to_owned(),
                expected: "a finite float",
                found: crate::value::non_finite_found(*x, inside),
            });
        }
        Value::Float(x) if *x == 0.0 => *x = 0.0,
        Value::Text(s) if indexed && s.len() > MAX_INDEXED_TEXT_BYTES => {
            return Err(Error::LimitExceeded {
                what: "length in bytes of a text id or indexed text field",
                limit: MAX_INDEXED_TEXT_BYTES as u64,
                actual: s.len() as u64,
            });
        }
        Value::Json(serde_json::Value::Null) if f.nullable => *v = Value::Null,
        Value::Json(j) => normalize_json_zeros(j),
        _ => {}
    }
    Ok(())
}

/// Encodes a document entity's JSON body: what `#[derive(Entity)]` calls for
/// `Record::body`, and what hand-written document entities should call too.
///
/// Unlike `serde_json::to_string`, which silently writes NaN and ±infinity as `null` (a
/// body that then cannot be decoded), a non-finite float anywhere in the entity is an
/// [`Error::TypeMismatch`] naming its path (`samples[2]`); negative zero is written as
/// `0.0` (see [`FieldType::Float`]). Every other float is written in its shortest form
/// that reads back bit for bit.
pub fn encode_body<T: Serialize + ?Sized>(def: &EntityDef, entity: &T) -> Result<String> {
    if let Some(bad) = find_non_finite(entity) {
        return Err(bad.into_error());
    }
    let mut out = Vec::with_capacity(128);
    let mut ser = serde_json::Serializer::with_formatter(&mut out, CanonicalFloats);
    entity
        .serialize(&mut ser)
        .map_err(|e| mapping_error(def.name, "encode", e))?;
    String::from_utf8(out).map_err(|e| mapping_error(def.name, "encode", e))
}

/// Builds a [`Error::Mapping`] for an entity.
pub fn mapping_error(
    entity: &'static str,
    direction: &'static str,
    e: impl Into<crate::error::BoxError>,
) -> Error {
    Error::Mapping {
        entity,
        direction,
        source: e.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> EntityDef {
        EntityDef {
            indexes: Vec::new(),
            name: "order",
            table: "orders",
            storage: Storage::Columns,
            id: FieldDef::new("id", FieldType::Text),
            fields: vec![
                FieldDef::new("status", FieldType::Text),
                FieldDef::new("total", FieldType::Int).with_column("total_cents"),
            ],
        }
    }

    #[test]
    fn a_valid_definition_passes() {
        def().validate().unwrap();
        assert_eq!(def().field("total"), Some(FieldRef::Field(1)));
        assert_eq!(def().field("total_cents"), None);
    }

    #[test]
    fn nul_in_written_text_is_a_typed_error() {
        let d = def();
        let rec = |id: &str, status: &str, body: Option<&str>| Record {
            id: Value::from(id),
            version: 1,
            values: vec![Value::from(status), Value::Int(1)],
            body: body.map(str::to_owned),
        };
        rec("a", "open", None).check_storable(&d).unwrap();
        assert!(matches!(
            rec("a\0b", "open", None).check_storable(&d),
            Err(Error::TypeMismatch { ref field, .. }) if field == "id"
        ));
        assert!(matches!(
            rec("a", "op\0en", None).check_storable(&d),
            Err(Error::TypeMismatch { ref field, .. }) if field == "status"
        ));
        assert!(matches!(
            rec("a", "open", Some(r#"{"note":"x\u0000"}"#)).check_storable(&d),
            Err(Error::Mapping { .. })
        ));
        rec("a", "open", Some(r#"{"note":"x\\u0000"}"#))
            .check_storable(&d)
            .unwrap();
        assert!(matches!(
            d.check_id(&Value::from("a\0")),
            Err(Error::InvalidQuery(_))
        ));
        d.check_id(&Value::Int(0)).unwrap();
    }

    #[test]
    fn hostile_or_duplicate_identifiers_are_rejected() {
        let mut d = def();
        d.table = "orders\"; drop";
        assert!(d.validate().is_err());
        let mut d = def();
        d.fields.push(FieldDef::new("version", FieldType::Int));
        assert!(d.validate().is_err());
        let mut d = def();
        d.fields
            .push(FieldDef::new("status", FieldType::Int).with_column("s2"));
        assert!(d.validate().is_err());
    }

    #[test]
    fn writes_reject_non_finite_floats_and_long_indexed_text() {
        let d = EntityDef {
            indexes: Vec::new(),
            fields: vec![
                FieldDef::new("x", FieldType::Float),
                FieldDef::new("label", FieldType::Text).with_index(true),
                FieldDef::new("note", FieldType::Text),
                FieldDef::new("meta", FieldType::Json).with_nullable(true),
            ],
            ..def()
        };
        let rec = |x: f64, label: &str, note: &str, meta: Value| Record {
            id: Value::from("a"),
            version: 1,
            values: vec![Value::Float(x), label.into(), note.into(), meta],
            body: None,
        };
        let long = "x".repeat(MAX_INDEXED_TEXT_BYTES + 1);
        for x in [f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
            let e = rec(x, "", "", Value::Null).prepare_for_write(&d);
            assert!(matches!(e, Err(Error::TypeMismatch { .. })), "{x}: {e:?}");
        }
        let e = rec(1.0, &long, "", Value::Null).prepare_for_write(&d);
        assert!(matches!(e, Err(Error::LimitExceeded { .. })), "{e:?}");
        let mut r = rec(1.0, "", "", Value::Null);
        r.id = Value::Text(long.clone());
        assert!(matches!(
            r.prepare_for_write(&d),
            Err(Error::LimitExceeded { .. })
        ));
        // Not indexed: only the record size limit applies.
        let mut r = rec(-0.0, "", &long, Value::Json(serde_json::json!({"z": -0.0})));
        r.prepare_for_write(&d).unwrap();
        assert_eq!(r.values[0], Value::Float(0.0));
        assert!(matches!(r.values[0], Value::Float(z) if z.is_sign_positive()));
        assert_eq!(r.values[3], Value::Json(serde_json::json!({"z": 0.0})));
        let mut r = rec(1.0, "", "", Value::Json(serde_json::Value::Null));
        r.prepare_for_write(&d).unwrap();
        assert_eq!(r.values[3], Value::Null);
    }

    #[test]
    fn document_bodies_reject_non_finite_floats_by_path() {
        #[derive(Serialize)]
        struct Doc {
            id: String,
            samples: Vec<f64>,
            inner: std::collections::BTreeMap<String, Option<f32>>,
        }
        let d = def();
        let mut doc = Doc {
            id: "a".into(),
            samples: vec![1.0, -0.0, 0.1],
            inner: [("k".to_owned(), Some(-0.0f32))].into(),
        };
        assert_eq!(
            encode_body(&d, &doc).unwrap(),
            r#"{"id":"a","samples":[1.0,0.0,0.1],"inner":{"k":0.0}}"#
        );
        doc.samples[2] = f64::NAN;
        let e = encode_body(&d, &doc).unwrap_err();
        assert!(
            matches!(&e, Error::TypeMismatch { field, .. } if field == "samples[2]"),
            "{e}"
        );
        doc.samples[2] = 0.5;
        doc.inner.insert("k".into(), Some(f32::NEG_INFINITY));
        let e = encode_body(&d, &doc).unwrap_err();
        assert!(
            matches!(&e, Error::TypeMismatch { field, .. } if field == "inner.k"),
            "{e}"
        );
    }
}
