//! Entities, their field registry, and the record form that backends store.

use std::ops::{Deref, DerefMut};

use crate::error::{Error, Result, shown};
use crate::value::{FieldType, Value, json_nul, json_text_nul, text_nul};

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
}

/// The name of the version column every entity table carries.
pub const VERSION_COLUMN: &str = "version";
/// The name of the JSON body column of document entities.
pub const BODY_COLUMN: &str = "body";

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
                self.table
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
                    return Err(bad(format!("`{ident}` is not a safe identifier")));
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
        Ok(())
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

    /// The value of a resolved field.
    pub fn get(&self, f: FieldRef) -> &Value {
        match f {
            FieldRef::Id => &self.id,
            FieldRef::Field(i) => &self.values[i],
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
/// `values` empty, so that the field columns are not read for every row.
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
}
