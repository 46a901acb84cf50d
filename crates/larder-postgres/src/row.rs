//! Binding sea-query values, and reading columns of rows.

use larder_core::Result;
use sqlx::postgres::{PgArguments, PgRow, Postgres};
use sqlx::{Arguments, Column as _, Row};

use crate::error::BACKEND;

/// Binds compiled values with their PostgreSQL types (typed nulls included, so the server
/// never has to guess a parameter's type).
pub(crate) fn bind(values: Vec<sea_query::Value>) -> Result<PgArguments> {
    use sea_query::Value as S;
    larder_sql::driver::bind_values::<Postgres>(values, BACKEND, |args, v| match v {
        S::Uuid(u) => Ok(args.add(u)),
        S::Json(j) => Ok(args.add(j.map(|j| *j))),
        other => Err(other),
    })
}

/// Column access on PostgreSQL rows (native uuid and JSON; integers of any width).
impl larder_sql::SqlRow<crate::uow::Pg> for PgRow {
    larder_sql::native_columns!(text: String, boolean: bool, float: f64);

    fn text_ref(&self, i: usize) -> Result<Option<&str>, sqlx::Error> {
        match oid_of(self, i) {
            Some(TEXT | VARCHAR) => self.try_get_unchecked(i),
            _ => self.try_get(i),
        }
    }

    fn bytes_ref(&self, i: usize) -> Result<Option<&[u8]>, sqlx::Error> {
        match oid_of(self, i) {
            Some(BYTEA) => self.try_get_unchecked(i),
            _ => self.try_get(i),
        }
    }

    fn int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        // Only event schema versions and a few catalog columns are narrower than BIGINT.
        // The column's type is known from the statement's description: decoding by it
        // skips sqlx's per-value compatibility check (a hot path of every event read).
        match oid_of(self, i) {
            Some(INT8) => self.try_get_unchecked(i),
            Some(INT4) => Ok(self.try_get_unchecked::<Option<i32>, _>(i)?.map(i64::from)),
            Some(INT2) => Ok(self.try_get_unchecked::<Option<i16>, _>(i)?.map(i64::from)),
            _ => self.try_get(i),
        }
    }

    fn uuid(&self, i: usize) -> Result<Option<uuid::Uuid>, larder_core::BoxError> {
        match oid_of(self, i) {
            Some(UUID) => Ok(self.try_get_unchecked(i)?),
            _ => Ok(self.try_get(i)?),
        }
    }

    fn json(&self, i: usize) -> Result<Option<serde_json::Value>, larder_core::BoxError> {
        Ok(self.try_get(i)?)
    }
}

// Type oids of the columns decoded without sqlx's compatibility check (pg_type.dat).
const INT8: u32 = 20;
const INT2: u32 = 21;
const INT4: u32 = 23;
const TEXT: u32 = 25;
const BYTEA: u32 = 17;
const VARCHAR: u32 = 1043;
const UUID: u32 = 2950;

/// The type oid of column `i` as the server described it (`None`: out of range, or a
/// type known only by name).
fn oid_of(row: &PgRow, i: usize) -> Option<u32> {
    row.columns().get(i)?.type_info().oid().map(|o| o.0)
}
