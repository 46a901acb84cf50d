//! DDL for entity tables.
//!
//! Written as text rather than with sea-query's schema builder because it needs
//! dialect-specific column options that builder does not model (`COLLATE "C"`, SQLite
//! `STRICT` tables); every identifier comes from a validated [`EntityDef`] and is quoted.

use larder_core::entity::{BODY_COLUMN, VERSION_COLUMN};
use larder_core::{EntityDef, FieldDef, FieldType, Result, Storage};

use crate::Dialect;

/// Quotes a registry identifier (already validated: no quotes can occur).
pub fn quote(ident: &str) -> String {
    format!("\"{ident}\"")
}

fn column_type(ty: FieldType, d: Dialect) -> &'static str {
    match (d, ty) {
        (Dialect::Postgres, FieldType::Bool) => "BOOLEAN",
        (Dialect::Postgres, FieldType::Int) => "BIGINT",
        (Dialect::Postgres, FieldType::Float) => "DOUBLE PRECISION",
        // Byte-wise comparison and ordering on every database, matching SQLite and memory.
        (Dialect::Postgres, FieldType::Text) => "TEXT COLLATE \"C\"",
        (Dialect::Postgres, FieldType::Uuid) => "UUID",
        (Dialect::Postgres, FieldType::Json) => "JSONB",
        (Dialect::Sqlite, FieldType::Bool) => "INTEGER",
        (Dialect::Sqlite, FieldType::Int) => "INTEGER",
        (Dialect::Sqlite, FieldType::Float) => "REAL",
        (Dialect::Sqlite, _) => "TEXT",
        (_, _) => "TEXT",
    }
}

fn column_def(f: &FieldDef, d: Dialect) -> String {
    let mut s = format!("{} {}", quote(f.column), column_type(f.ty, d));
    if !f.nullable {
        s.push_str(" NOT NULL");
    }
    s
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
    let mut cols = vec![format!("{} PRIMARY KEY", column_def(&def.id, d))];
    cols.push(format!(
        "{} {} NOT NULL",
        quote(VERSION_COLUMN),
        if d == Dialect::Postgres {
            "BIGINT"
        } else {
            "INTEGER"
        }
    ));
    if def.storage == Storage::Document {
        cols.push(format!(
            "{} {} NOT NULL",
            quote(BODY_COLUMN),
            if d == Dialect::Postgres {
                "JSONB"
            } else {
                "TEXT"
            }
        ));
    }
    cols.extend(def.fields.iter().map(|f| column_def(f, d)));
    let strict = if d == Dialect::Sqlite { " STRICT" } else { "" };
    let mut out = vec![format!(
        "CREATE TABLE IF NOT EXISTS {} ({}){strict}",
        quote(def.table),
        cols.join(", ")
    )];
    for f in &def.fields {
        let indexed = f.indexed || (def.storage == Storage::Document && f.ty != FieldType::Json);
        if indexed {
            let name = index_name(def.table, f.column);
            let using = if d == Dialect::Postgres && f.ty == FieldType::Json {
                " USING GIN"
            } else {
                ""
            };
            out.push(format!(
                "CREATE INDEX IF NOT EXISTS {} ON {}{using} ({})",
                quote(&name),
                quote(def.table),
                quote(f.column)
            ));
        }
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
