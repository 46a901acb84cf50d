//! Binding sea-query values and decoding rows into records.

use larder_core::entity::{EntityDef, Record, mapping_error};
use larder_core::{FieldType, Result, Value};
use larder_sql::Shape;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use sqlx::{Arguments, Row};

use crate::error::BACKEND;

/// Binds compiled values. SQLite has no u64/uuid/json types: they arrive here already as
/// integers and text (see `larder_sql::compile::sql_value`).
pub(crate) fn bind(values: Vec<sea_query::Value>) -> Result<SqliteArguments> {
    use sea_query::Value as S;
    let mut args = SqliteArguments::default();
    for v in values {
        let r = match v {
            S::Bool(b) => args.add(b),
            S::BigInt(i) => args.add(i),
            S::Int(i) => args.add(i),
            S::BigUnsigned(u) => args.add(u.map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
            S::Double(f) => args.add(f),
            S::String(s) => args.add(s),
            other => {
                return Err(larder_core::Error::backend(
                    BACKEND,
                    format!("unexpected parameter type {other:?}"),
                ));
            }
        };
        r.map_err(|e| larder_core::Error::Backend {
            backend: BACKEND,
            source: e,
        })?;
    }
    Ok(args)
}

fn decode_err(def: &EntityDef, e: impl Into<larder_core::BoxError>) -> larder_core::Error {
    mapping_error(def.name, "decode", e)
}

fn get(def: &EntityDef, row: &SqliteRow, i: usize, ty: FieldType) -> Result<Value> {
    let e = |e: sqlx::Error| decode_err(def, e);
    Ok(match ty {
        FieldType::Bool => row.try_get::<Option<bool>, _>(i).map_err(e)?.into(),
        FieldType::Int => row.try_get::<Option<i64>, _>(i).map_err(e)?.into(),
        FieldType::Float => row.try_get::<Option<f64>, _>(i).map_err(e)?.into(),
        FieldType::Text => row.try_get::<Option<String>, _>(i).map_err(e)?.into(),
        FieldType::Uuid => match row.try_get::<Option<String>, _>(i).map_err(e)? {
            None => Value::Null,
            Some(s) => Value::Uuid(uuid::Uuid::try_parse(&s).map_err(|e| decode_err(def, e))?),
        },
        FieldType::Json => match row.try_get::<Option<String>, _>(i).map_err(e)? {
            None => Value::Null,
            Some(s) => Value::Json(serde_json::from_str(&s).map_err(|e| decode_err(def, e))?),
        },
        _ => return Err(decode_err(def, "unsupported field type")),
    })
}

/// Decodes a row selected with `larder_sql::compile`'s column order.
pub(crate) fn record(def: &EntityDef, row: &SqliteRow, shape: Shape) -> Result<Record> {
    larder_sql::decode_record(def, row, shape, |row, i, ty| get(def, row, i, ty))
}
