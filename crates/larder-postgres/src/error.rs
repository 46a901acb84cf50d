//! Classifying PostgreSQL errors (SQLSTATE) into larder's vocabulary.

use larder_core::{Error, TransientKind};

pub(crate) const BACKEND: &str = "postgresql";

/// Maps a sqlx error; `operation` names the call for `DeadlineExceeded`.
pub(crate) fn map(e: sqlx::Error, operation: &'static str) -> Error {
    if let sqlx::Error::Database(db) = &e
        && let Some(code) = db.code()
    {
        match code.as_ref() {
            "40001" => {
                return Error::Transient {
                    kind: TransientKind::Serialization,
                };
            }
            "40P01" => {
                return Error::Transient {
                    kind: TransientKind::Deadlock,
                };
            }
            "55P03" => {
                return Error::Transient {
                    kind: TransientKind::Busy,
                };
            }
            // in_failed_sql_transaction: an earlier statement failed and the server aborted
            // the transaction; every statement but ROLLBACK fails until it ends.
            "25P02" => {
                return Error::TransactionAborted {
                    operation,
                    cause: None,
                };
            }
            // query_canceled: our statement_timeout fired.
            "57014" => return Error::DeadlineExceeded { operation },
            _ => {}
        }
    }
    match e {
        sqlx::Error::PoolTimedOut => Error::Backend {
            backend: BACKEND,
            source: "timed out waiting for a pooled connection".into(),
        },
        sqlx::Error::PoolClosed => Error::Closed("postgresql pool"),
        // Connection errors can carry the DSN in their message: never pass them through.
        sqlx::Error::Configuration(_) => {
            Error::Configuration("invalid postgresql connection options".into())
        }
        other => Error::backend(BACKEND, other),
    }
}

/// What a failed repository statement found missing: SQLSTATE `42P01` undefined_table,
/// `42703` undefined_column.
pub(crate) fn missing(e: &Error) -> Option<larder_sql::Missing> {
    let Error::Backend { source, .. } = e else {
        return None;
    };
    let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>() else {
        return None;
    };
    match db.code().as_deref() {
        Some("42P01") => Some(larder_sql::Missing::Table),
        Some("42703") => Some(larder_sql::Missing::Column(db.message().to_owned())),
        _ => None,
    }
}
