//! Binding sea-query values, and reading columns of rows.

use larder_core::Result;
use sqlx::postgres::{PgArguments, PgRow, Postgres};
use sqlx::{Arguments, Row, ValueRef as _};

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
        self.try_get(i)
    }

    fn bytes_ref(&self, i: usize) -> Result<Option<&[u8]>, sqlx::Error> {
        self.try_get(i)
    }

    fn int(&self, i: usize) -> Result<Option<i64>, sqlx::Error> {
        // Only event schema versions and a few catalog columns are narrower than BIGINT.
        let ty = self.try_get_raw(i)?.type_info().into_owned();
        if <i64 as sqlx::Type<Postgres>>::compatible(&ty) {
            self.try_get(i)
        } else if <i32 as sqlx::Type<Postgres>>::compatible(&ty) {
            Ok(self.try_get::<Option<i32>, _>(i)?.map(i64::from))
        } else {
            Ok(self.try_get::<Option<i16>, _>(i)?.map(i64::from))
        }
    }

    fn uuid(&self, i: usize) -> Result<Option<uuid::Uuid>, larder_core::BoxError> {
        Ok(self.try_get(i)?)
    }

    fn json(&self, i: usize) -> Result<Option<serde_json::Value>, larder_core::BoxError> {
        Ok(self.try_get(i)?)
    }
}
