//! Decoding repository rows, and what a failed statement found missing — shared by every
//! SQL dialect (see [`SqlTx`](crate::SqlTx)).

use larder_core::entity::mapping_error;
use larder_core::{EntityDef, FieldType, Record, Result, Storage, Value};

use crate::compile::Shape;
use crate::dialect::SqlRow;
use sqlx::{Arguments, Database, Encode, Type};

/// What a failed repository statement found missing (see [`SqlDialect::missing`](crate::SqlDialect::missing)).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Missing {
    /// The entity's table does not exist: the entity was not registered.
    Table,
    /// A column the statement names does not exist; the database's words.
    Column(String),
}

/// Decodes a row selected by [`compile`](crate::compile) (id, version, body for documents, then the
/// registered fields unless `shape` is [`Shape::Body`], in which case `values` is left
/// empty).
pub fn decode_record<D>(def: &EntityDef, row: &impl SqlRow<D>, shape: Shape) -> Result<Record> {
    let get = |row: &_, i, ty| value::<D>(def, row, i, ty);
    let bad = |what: &str| mapping_error(def.name, "decode", format!("unexpected {what} column"));
    let id = get(row, 0, def.id.ty)?;
    let version = match get(row, 1, FieldType::Int)? {
        Value::Int(v) => u64::try_from(v).map_err(|_| bad("version"))?,
        _ => return Err(bad("version")),
    };
    let (body, first) = if def.storage == Storage::Document {
        match get(row, 2, FieldType::Text)? {
            Value::Text(s) => (Some(s), 3),
            _ => return Err(bad("body")),
        }
    } else {
        (None, 2)
    };
    let values = if shape == Shape::Body && def.storage == Storage::Document {
        Vec::new()
    } else {
        def.fields
            .iter()
            .enumerate()
            .map(|(i, f)| get(row, first + i, f.ty))
            .collect::<Result<Vec<_>>>()?
    };
    Ok(Record {
        id,
        version,
        values,
        body,
    })
}

/// Reads column `i` as a value of type `ty`.
fn value<D>(def: &EntityDef, row: &impl SqlRow<D>, i: usize, ty: FieldType) -> Result<Value> {
    let e = |e: sqlx::Error| mapping_error(def.name, "decode", e);
    let b = |e: larder_core::BoxError| mapping_error(def.name, "decode", e);
    Ok(match ty {
        FieldType::Bool => row.boolean(i).map_err(e)?.into(),
        FieldType::Int => row.int(i).map_err(e)?.into(),
        FieldType::Float => row.float(i).map_err(e)?.into(),
        FieldType::Text => row.text(i).map_err(e)?.into(),
        FieldType::Uuid => row.uuid(i).map_err(b)?.into(),
        FieldType::Json => row.json(i).map_err(b)?.map_or(Value::Null, Value::Json),
        _ => return Err(mapping_error(def.name, "decode", "unsupported field type")),
    })
}

/// Binds compiled values of the types every dialect has (bool, integers, double, text);
/// `other` binds the rest where the dialect has native types (uuid, JSON) and hands back
/// (`Err`) a value of a type it does not take (SQLite gets those as text and integers already:
/// see [`compile::sql_value`](crate::compile::sql_value)).
pub fn bind_values<DB: Database>(
    values: Vec<sea_query::Value>,
    backend: &'static str,
    mut other: impl FnMut(
        &mut DB::Arguments,
        sea_query::Value,
    ) -> std::result::Result<
        std::result::Result<(), larder_core::BoxError>,
        sea_query::Value,
    >,
) -> Result<DB::Arguments>
where
    for<'q> Option<bool>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<i32>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<f64>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<String>: Encode<'q, DB> + Type<DB>,
    for<'q> Option<Vec<u8>>: Encode<'q, DB> + Type<DB>,
{
    use sea_query::Value as S;
    let mut args = DB::Arguments::default();
    for v in values {
        let r = match v {
            S::Bool(b) => args.add(b),
            S::BigInt(i) => args.add(i),
            S::Int(i) => args.add(i),
            S::BigUnsigned(u) => args.add(u.map(|u| i64::try_from(u).unwrap_or(i64::MAX))),
            S::Double(f) => args.add(f),
            S::String(s) => args.add(s),
            S::Bytes(b) => args.add(b),
            v => match other(&mut args, v) {
                Ok(r) => r,
                Err(v) => {
                    let shown = format!("unexpected parameter type {v:?}");
                    return Err(larder_core::Error::backend(backend, shown));
                }
            },
        };
        r.map_err(|source| larder_core::Error::Backend { backend, source })?;
    }
    Ok(args)
}
