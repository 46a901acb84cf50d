//! DDL for entity tables.
//!
//! Written as text rather than with sea-query's schema builder because it needs
//! dialect-specific column options that builder does not model (`COLLATE "C"`, SQLite
//! `STRICT` tables); every identifier comes from a validated [`EntityDef`] and is quoted.

use larder_core::entity::{BODY_COLUMN, VERSION_COLUMN};
use larder_core::{EntityDef, Error, FieldDef, FieldType, Result, Storage};

use crate::Dialect;

/// Quotes a registry identifier (already validated: no quotes can occur).
pub fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

/// A column larder creates for an entity, as the database's catalog describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpectedColumn {
    /// The column name.
    pub name: &'static str,
    /// The declared type as the catalog reports it (SQLite `pragma_table_info.type`,
    /// PostgreSQL `information_schema.columns.data_type`), compared ignoring ASCII case.
    pub sql_type: &'static str,
    /// The collation larder declares (`C` for PostgreSQL text), `None` for the default.
    pub collation: Option<&'static str>,
    /// `NOT NULL`.
    pub not_null: bool,
    /// The primary key (the id).
    pub primary_key: bool,
}

impl ExpectedColumn {
    fn render(&self) -> String {
        let mut s = format!("{} {}", quote(self.name), self.sql_type);
        if let Some(c) = self.collation {
            s.push_str(&format!(" COLLATE {}", quote(c)));
        }
        if self.not_null {
            s.push_str(" NOT NULL");
        }
        if self.primary_key {
            s.push_str(" PRIMARY KEY");
        }
        s
    }
}

fn column_type(ty: FieldType, d: Dialect) -> (&'static str, Option<&'static str>) {
    match (d, ty) {
        (Dialect::Postgres, FieldType::Bool) => ("BOOLEAN", None),
        (Dialect::Postgres, FieldType::Int) => ("BIGINT", None),
        (Dialect::Postgres, FieldType::Float) => ("DOUBLE PRECISION", None),
        // Byte-wise comparison and ordering on every database, matching SQLite and memory.
        (Dialect::Postgres, FieldType::Text) => ("TEXT", Some("C")),
        (Dialect::Postgres, FieldType::Uuid) => ("UUID", None),
        (Dialect::Postgres, FieldType::Json) => ("JSONB", None),
        (Dialect::Sqlite, FieldType::Bool) => ("INTEGER", None),
        (Dialect::Sqlite, FieldType::Int) => ("INTEGER", None),
        (Dialect::Sqlite, FieldType::Float) => ("REAL", None),
        (Dialect::Sqlite, _) => ("TEXT", None),
        (_, _) => ("TEXT", None),
    }
}

fn field_column(f: &FieldDef, d: Dialect, primary_key: bool) -> ExpectedColumn {
    let (sql_type, collation) = column_type(f.ty, d);
    ExpectedColumn {
        name: f.column,
        sql_type,
        collation,
        not_null: !f.nullable,
        primary_key,
    }
}

/// The columns of the entity's table, in order: id, version, body (documents), fields.
///
/// [`create_table`] renders exactly these, and [`compare`] checks an existing table
/// against them, so the two cannot disagree.
pub fn expected_columns(def: &EntityDef, d: Dialect) -> Vec<ExpectedColumn> {
    let big = |name| ExpectedColumn {
        name,
        sql_type: if d == Dialect::Postgres {
            "BIGINT"
        } else {
            "INTEGER"
        },
        collation: None,
        not_null: true,
        primary_key: false,
    };
    let mut cols = vec![field_column(&def.id, d, true), big(VERSION_COLUMN)];
    if def.storage == Storage::Document {
        cols.push(ExpectedColumn {
            name: BODY_COLUMN,
            sql_type: if d == Dialect::Postgres {
                "JSONB"
            } else {
                "TEXT"
            },
            collation: None,
            not_null: true,
            primary_key: false,
        });
    }
    cols.extend(def.fields.iter().map(|f| field_column(f, d, false)));
    cols
}

/// The indexes larder creates for the entity: `(index name, columns)` for every field
/// [`EntityDef::is_indexed`] says is indexed, then every multi-column index
/// ([`EntityDef::indexes`]) with its columns in order.
pub fn expected_indexes(def: &EntityDef) -> Vec<(String, Vec<&'static str>)> {
    let single = def
        .fields
        .iter()
        .filter(|f| def.is_indexed(f))
        .map(|f| (index_name(def.table, f.column), vec![f.column]));
    let multi = def.indexes.iter().map(|ix| {
        let cols = def.index_columns(ix);
        (index_name(def.table, &cols.join("_")), cols)
    });
    single.chain(multi).collect()
}

/// A column of an existing table, as a backend's catalog query reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundColumn {
    /// The column name.
    pub name: String,
    /// The declared type (SQLite) or `data_type` (PostgreSQL).
    pub sql_type: String,
    /// The column's collation, when the catalog reports one (PostgreSQL).
    pub collation: Option<String>,
    /// `NOT NULL`.
    pub not_null: bool,
    /// Part of the primary key.
    pub primary_key: bool,
    /// Has a default value (an insert that leaves it out does not fail).
    pub has_default: bool,
}

/// An existing table, as a backend's catalog queries report it. No columns: the table
/// does not exist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FoundTable {
    /// Its columns.
    pub columns: Vec<FoundColumn>,
    /// The names of its indexes.
    pub indexes: Vec<String>,
}

/// Checks an existing table against the entity definition, column by column.
///
/// Every column of [`expected_columns`] must exist with the same type (ignoring ASCII
/// case), nullability, primary-key membership and (where the catalog reports it)
/// collation, and every index of [`expected_indexes`] must exist by name. Columns larder
/// did not create (added by your own migrations) are tolerated when an insert that
/// leaves them out still works: nullable, or with a default. Extra indexes are tolerated.
///
/// # Errors
///
/// [`Error::SchemaMismatch`] listing every difference.
///
/// ```
/// use larder_core::{EntityDef, Error, FieldDef, FieldType, Storage};
/// use larder_sql::{Dialect, ddl::{FoundColumn, FoundTable, compare}};
/// let def = EntityDef {
///     indexes: vec![],
///     name: "order", table: "orders", storage: Storage::Columns,
///     id: FieldDef::new("id", FieldType::Int),
///     fields: vec![FieldDef::new("total", FieldType::Int)],
/// };
/// let col = |name: &str, ty: &str, pk| FoundColumn {
///     name: name.into(), sql_type: ty.into(), collation: None,
///     not_null: true, primary_key: pk, has_default: false,
/// };
/// let found = FoundTable {
///     columns: vec![col("id", "TEXT", true), col("version", "INTEGER", false)],
///     indexes: vec![],
/// };
/// let e = compare(&def, Dialect::Sqlite, &found).unwrap_err();
/// assert!(matches!(&e, Error::SchemaMismatch { differences, .. }
///     if differences == "column `id` is TEXT, the entity needs INTEGER; \
///                        column `total` (INTEGER NOT NULL) is missing"), "{e}");
/// ```
pub fn compare(def: &EntityDef, d: Dialect, found: &FoundTable) -> Result<()> {
    let mut diffs = Vec::new();
    let null = |not_null: bool| if not_null { "not null" } else { "nullable" };
    let expected = expected_columns(def, d);
    for e in &expected {
        let Some(f) = found.columns.iter().find(|f| f.name == e.name) else {
            let mut ty = e.sql_type.to_owned();
            if e.not_null {
                ty.push_str(" NOT NULL");
            }
            diffs.push(format!("column `{}` ({ty}) is missing", e.name));
            continue;
        };
        if !same_type(d, &f.sql_type, e.sql_type) {
            diffs.push(format!(
                "column `{}` is {}, the entity needs {}",
                e.name,
                quote_found(&f.sql_type),
                e.sql_type
            ));
        }
        if f.not_null != e.not_null {
            diffs.push(format!(
                "column `{}` is {}, the entity needs it {}",
                e.name,
                null(f.not_null),
                null(e.not_null)
            ));
        }
        if f.primary_key != e.primary_key {
            diffs.push(format!(
                "column `{}` {} the primary key, the entity needs it {}",
                e.name,
                if f.primary_key { "is" } else { "is not" },
                if e.primary_key { "to be" } else { "not to be" }
            ));
        }
        if let Some(c) = e.collation
            && f.collation.as_deref() != Some(c)
        {
            diffs.push(format!(
                "column `{}` has collation {}, the entity needs \"{c}\"",
                e.name,
                f.collation.as_deref().map_or_else(
                    || "default".to_owned(),
                    |c| format!("\"{}\"", quote_found(c))
                )
            ));
        }
    }
    for f in &found.columns {
        if !expected.iter().any(|e| e.name == f.name) && f.not_null && !f.has_default {
            diffs.push(format!(
                "column `{}` is not null without a default and the entity does not write it",
                quote_found(&f.name)
            ));
        }
    }
    for (name, columns) in expected_indexes(def) {
        if !found.indexes.contains(&name) {
            diffs.push(format!(
                "index `{name}` on `{}` is missing",
                columns.join("`, `")
            ));
        }
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(Error::SchemaMismatch {
            entity: def.name,
            table: def.table.to_owned(),
            differences: diffs.join("; "),
        })
    }
}

/// Whether a declared type is the type larder expects. PostgreSQL's catalog reports
/// canonical names (`int8` and `bigint` are both `bigint`); SQLite keeps the declared text,
/// and a column's behaviour follows from it by SQLite's affinity rules (`INT`, `BIGINT` →
/// INTEGER, `VARCHAR(9)` → TEXT, `DOUBLE` → REAL, sqlite.org/datatype3.html §3.1), so that
/// is what is compared.
fn same_type(d: Dialect, found: &str, expected: &str) -> bool {
    match d {
        Dialect::Sqlite => sqlite_affinity(found) == sqlite_affinity(expected),
        _ => found.eq_ignore_ascii_case(expected),
    }
}

fn sqlite_affinity(declared: &str) -> &'static str {
    let t = declared.to_ascii_uppercase();
    if t.contains("INT") {
        "INTEGER"
    } else if ["CHAR", "CLOB", "TEXT"].iter().any(|k| t.contains(k)) {
        "TEXT"
    } else if t.is_empty() || t.contains("BLOB") {
        "BLOB"
    } else if ["REAL", "FLOA", "DOUB"].iter().any(|k| t.contains(k)) {
        "REAL"
    } else {
        "NUMERIC"
    }
}

/// Catalog text (a type or column name someone else created) shown in a message.
fn quote_found(s: &str) -> String {
    larder_core::error::quote(s)
}

/// The statements that create the entity's table and indexes if they do not exist.
///
/// Document entities get `(id, version, body, fields…)` with a real index per registered
/// field; mapped-column entities get `(id, version, fields…)` with indexes on fields marked
/// `indexed`.
///
/// ```
/// use larder_core::{EntityDef, FieldDef, FieldType, Storage};
/// use larder_sql::{Dialect, ddl::create_table};
/// let def = EntityDef {
///     indexes: vec![],
///     name: "order", table: "orders", storage: Storage::Document,
///     id: FieldDef::new("id", FieldType::Uuid),
///     fields: vec![FieldDef::new("status", FieldType::Text)],
/// };
/// let sql = create_table(&def, Dialect::Postgres).unwrap();
/// assert_eq!(sql[0], r#"CREATE TABLE IF NOT EXISTS "orders" ("id" UUID NOT NULL PRIMARY KEY, "version" BIGINT NOT NULL, "body" JSONB NOT NULL, "status" TEXT COLLATE "C" NOT NULL)"#);
/// assert_eq!(sql[1], r#"CREATE INDEX IF NOT EXISTS "orders_status_idx" ON "orders" ("status")"#);
/// ```
pub fn create_table(def: &EntityDef, d: Dialect) -> Result<Vec<String>> {
    def.validate()?;
    let cols: Vec<String> = expected_columns(def, d)
        .iter()
        .map(ExpectedColumn::render)
        .collect();
    let strict = if d == Dialect::Sqlite { " STRICT" } else { "" };
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} ({}){strict}",
        quote(def.table),
        cols.join(", ")
    )];
    for (name, columns) in expected_indexes(def) {
        // JSON fields are only ever indexed alone (containment); `validate` refuses them
        // in multi-column indexes.
        let json = def
            .fields
            .iter()
            .any(|f| columns == [f.column] && f.ty == FieldType::Json);
        let using = if d == Dialect::Postgres && json {
            " USING GIN"
        } else {
            ""
        };
        let cols: Vec<String> = columns.iter().map(|c| quote(c)).collect();
        out.push(format!(
            "CREATE INDEX IF NOT EXISTS {} ON {}{using} ({})",
            quote(&name),
            quote(def.table),
            cols.join(", ")
        ));
    }
    Ok(out)
}

fn index_name(table: &str, column: &str) -> String {
    let mut name = format!("{table}_{column}_idx");
    // PostgreSQL truncates identifiers at 63 bytes; keep the name unique and valid.
    if name.len() > 63 {
        let h = name
            .bytes()
            .fold(0u32, |h, b| h.wrapping_mul(31).wrapping_add(u32::from(b)));
        name = format!("{}_{h:08x}", &name[..50]);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(storage: Storage) -> EntityDef {
        EntityDef {
            indexes: Vec::new(),
            name: "order",
            table: "orders",
            storage,
            id: FieldDef::new("id", FieldType::Text),
            fields: vec![
                FieldDef::new("status", FieldType::Text).with_index(true),
                FieldDef::new("note", FieldType::Text).with_nullable(true),
                FieldDef::new("meta", FieldType::Json).with_nullable(true),
            ],
        }
    }

    /// The table `create_table` makes, as a catalog would report it.
    fn as_created(def: &EntityDef, d: Dialect) -> FoundTable {
        FoundTable {
            columns: expected_columns(def, d)
                .into_iter()
                .map(|c| FoundColumn {
                    name: c.name.into(),
                    sql_type: c.sql_type.to_ascii_lowercase(),
                    collation: c.collation.map(str::to_owned),
                    not_null: c.not_null,
                    primary_key: c.primary_key,
                    has_default: false,
                })
                .collect(),
            indexes: expected_indexes(def).into_iter().map(|i| i.0).collect(),
        }
    }

    fn differences(r: Result<()>) -> String {
        match r {
            Err(Error::SchemaMismatch { differences, .. }) => differences,
            other => panic!("expected a schema mismatch, got {other:?}"),
        }
    }

    #[test]
    fn the_table_larder_creates_matches_its_definition() {
        for d in [Dialect::Sqlite, Dialect::Postgres] {
            for s in [Storage::Columns, Storage::Document] {
                compare(&def(s), d, &as_created(&def(s), d)).unwrap();
            }
        }
    }

    #[test]
    fn every_kind_of_drift_is_named_column_by_column() {
        let d = Dialect::Postgres;
        let v1 = def(Storage::Columns);
        let found = as_created(&v1, d);
        // A new indexed field.
        let mut v2 = v1.clone();
        v2.fields
            .push(FieldDef::new("total", FieldType::Int).with_index(true));
        assert_eq!(
            differences(compare(&v2, d, &found)),
            "column `total` (BIGINT NOT NULL) is missing; index `orders_total_idx` on `total` is missing"
        );
        // A changed id type.
        let mut v2 = v1.clone();
        v2.id = FieldDef::new("id", FieldType::Uuid);
        assert_eq!(
            differences(compare(&v2, d, &found)),
            "column `id` is text, the entity needs UUID"
        );
        // A changed field type and nullability.
        let mut v2 = v1.clone();
        v2.fields[1] = FieldDef::new("note", FieldType::Int);
        assert_eq!(
            differences(compare(&v2, d, &found)),
            "column `note` is text, the entity needs BIGINT; column `note` is nullable, the entity needs it not null"
        );
        // A removed field: nullable is tolerated, NOT NULL without default is not.
        let mut v2 = v1.clone();
        v2.fields.remove(1);
        compare(&v2, d, &found).unwrap();
        let mut v2 = v1.clone();
        v2.fields.remove(0);
        assert_eq!(
            differences(compare(&v2, d, &found)),
            "column `status` is not null without a default and the entity does not write it"
        );
        // Mapped → document: no body. Document → mapped: a body larder would not write.
        let doc = def(Storage::Document);
        assert!(
            differences(compare(&doc, d, &found))
                .contains("column `body` (JSONB NOT NULL) is missing")
        );
        assert!(
            differences(compare(&v1, d, &as_created(&doc, d)))
                .contains("column `body` is not null without a default")
        );
        // Text without the byte-wise collation.
        let mut plain = found.clone();
        plain.columns[0].collation = None;
        assert_eq!(
            differences(compare(&v1, d, &plain)),
            "column `id` has collation default, the entity needs \"C\""
        );
    }

    #[test]
    fn sqlite_types_compare_by_affinity() {
        let d = Dialect::Sqlite;
        let v1 = def(Storage::Columns);
        let mut found = as_created(&v1, d);
        found.columns[0].sql_type = "VARCHAR(64)".into();
        found.columns[1].sql_type = "bigint".into();
        compare(&v1, d, &found).unwrap();
        found.columns[1].sql_type = "DOUBLE".into();
        assert_eq!(
            differences(compare(&v1, d, &found)),
            "column `version` is DOUBLE, the entity needs INTEGER"
        );
    }

    #[test]
    fn the_message_says_a_migration_is_needed() {
        let mut v2 = def(Storage::Columns);
        v2.fields.push(FieldDef::new("total", FieldType::Int));
        let e = compare(
            &v2,
            Dialect::Sqlite,
            &as_created(&def(Storage::Columns), Dialect::Sqlite),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "table `orders` does not match order: column `total` (INTEGER NOT NULL) is missing; the table needs a migration (write one with `larder migrate new <name>`)"
        );
    }
}
