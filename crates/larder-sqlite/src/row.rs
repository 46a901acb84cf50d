//! Binding sea-query values, and reading columns of rows.

use larder_core::Result;
use sqlx::Row;
use sqlx::sqlite::{Sqlite, SqliteArguments, SqliteRow};

use crate::error::BACKEND;

/// Binds compiled values. SQLite has no u64/uuid/json types: they arrive here already as
/// integers and text (see `larder_sql::compile::sql_value`).
pub(crate) fn bind(values: Vec<sea_query::Value>) -> Result<SqliteArguments> {
    use sea_query::Value as S;
    larder_sql::driver::bind_values::<Sqlite>(values, BACKEND, |args, v| match v {
        // Stored as text, as the event store's ids.
        S::Uuid(u) => Ok(sqlx::Arguments::add(args, u.map(|u| u.to_string()))),
        other => Err(other),
    })
}

/// Column access on SQLite rows: uuids and JSON are stored as text.
impl larder_sql::SqlRow<crate::uow::Lite> for SqliteRow {
    larder_sql::native_columns!(int: i64, text: String, boolean: bool, float: f64);

    fn text_ref(&self, i: usize) -> Result<Option<&str>, sqlx::Error> {
        self.try_get(i)
    }

    fn bytes_ref(&self, i: usize) -> Result<Option<&[u8]>, sqlx::Error> {
        self.try_get(i)
    }

    fn uuid(&self, i: usize) -> Result<Option<uuid::Uuid>, larder_core::BoxError> {
        let s: Option<&str> = self.try_get(i)?;
        Ok(s.map(uuid::Uuid::try_parse).transpose()?)
    }

    fn json(&self, i: usize) -> Result<Option<serde_json::Value>, larder_core::BoxError> {
        let s: Option<&str> = self.try_get(i)?;
        Ok(s.map(serde_json::from_str).transpose()?)
    }
}
