//! Binding sea-query values and decoding rows into records.

use larder_core::entity::{EntityDef, Record, mapping_error};
use larder_core::{FieldType, Result, Value};
use larder_sql::Shape;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Row};

use crate::error::BACKEND;

/// Binds compiled values with their PostgreSQL types (typed nulls included, so the server
/// never has to guess a parameter's type).
pub(crate) fn bind(values: Vec<sea_query::Value>) -> Result<PgArguments> {
    use sea_query::Value as S;
    let mut args = PgArguments::default();
    for v in values {
        let r = match v {
            S::Bool(b) => args.add(b),
            S::BigInt(i) => args.add(i),
            S::Int(i) => args.add(i),
            S::BigUnsigned(u) => args.add(u.map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
            S::Double(f) => args.add(f),
            S::String(s) => args.add(s),
            S::Uuid(u) => args.add(u),
            S::Json(j) => args.add(j.map(|j| *j)),
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

fn get(def: &EntityDef, row: &PgRow, i: usize, ty: FieldType) -> Result<Value> {
    let e = |e: sqlx::Error| decode_err(def, e);
    Ok(match ty {
        FieldType::Bool => row.try_get::<Option<bool>, _>(i).map_err(e)?.into(),
        FieldType::Int => row.try_get::<Option<i64>, _>(i).map_err(e)?.into(),
        FieldType::Float => row.try_get::<Option<f64>, _>(i).map_err(e)?.into(),
        FieldType::Text => row.try_get::<Option<String>, _>(i).map_err(e)?.into(),
        FieldType::Uuid => row.try_get::<Option<uuid::Uuid>, _>(i).map_err(e)?.into(),
        FieldType::Json => row
            .try_get::<Option<serde_json::Value>, _>(i)
            .map_err(e)?
            .map_or(Value::Null, Value::Json),
        _ => return Err(decode_err(def, "unsupported field type")),
    })
}

/// Decodes a row selected with `larder_sql::compile`'s column order.
pub(crate) fn record(def: &EntityDef, row: &PgRow, shape: Shape) -> Result<Record> {
    larder_sql::decode_record(def, row, shape, |row, i, ty| get(def, row, i, ty))
}
