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
            // The server is going away or refuses connections: admin_shutdown,
            // crash_shutdown, cannot_connect_now, too_many_connections, and the
            // connection_exception class (08…).
            c if is_unavailable_code(c) => {
                return Error::Unavailable {
                    backend: BACKEND,
                    cause: format!("{} (SQLSTATE {c})", db.message()),
                };
            }
            _ => {}
        }
    }
    match e {
        sqlx::Error::PoolTimedOut => unavailable_pool(),
        // Refused, reset, unreachable, unknown host: the driver's I/O error kind says it.
        sqlx::Error::Io(io) => Error::Unavailable {
            backend: BACKEND,
            cause: io_cause(&io),
        },
        sqlx::Error::PoolClosed => Error::Closed("postgresql pool"),
        // Connection errors can carry the DSN in their message: never pass them through.
        sqlx::Error::Configuration(_) => {
            Error::Configuration("invalid postgresql connection options".into())
        }
        other @ sqlx::Error::Database(_) => Error::backend(BACKEND, ServerError(other)),
        other => Error::backend(BACKEND, other),
    }
}

/// Whether a SQLSTATE says the server is going away or refuses connections:
/// admin_shutdown, crash_shutdown, cannot_connect_now, too_many_connections, and the
/// connection_exception class (08…).
pub(crate) fn is_unavailable_code(code: &str) -> bool {
    matches!(code, "57P01" | "57P02" | "57P03" | "53300") || code.starts_with("08")
}

/// `PoolTimedOut`: no connection could be had within the pool's acquire timeout.
pub(crate) fn unavailable_pool() -> Error {
    Error::Unavailable {
        backend: BACKEND,
        cause: "no connection could be opened or freed within the pool's acquire timeout".into(),
    }
}

/// An I/O error while connecting or talking to the server, by its kind (the OS message,
/// e.g. "Connection refused (os error 111)", carries no address or secret).
pub(crate) fn io_cause(io: &std::io::Error) -> String {
    match io.kind() {
        std::io::ErrorKind::ConnectionRefused => format!("connection refused ({io})"),
        std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::ConnectionAborted => {
            format!("the connection was closed by the server ({io})")
        }
        std::io::ErrorKind::TimedOut => format!("connecting timed out ({io})"),
        _ => io.to_string(),
    }
}

/// A database error as larder shows it: the server's message and SQLSTATE, without the
/// position in the server's own C source that sqlx appends (`… at line 1234`). The sqlx
/// error stays available as the `source()`.
#[derive(Debug)]
pub(crate) struct ServerError(pub(crate) sqlx::Error);

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            sqlx::Error::Database(db) => match db.code() {
                Some(code) => write!(f, "{} (SQLSTATE {code})", db.message()),
                None => f.write_str(db.message()),
            },
            other => other.fmt(f),
        }
    }
}

impl std::error::Error for ServerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// The SQLSTATE behind an error larder returned: the server's own code for a driver error,
/// and the code larder classified for the typed ones.
pub(crate) fn sqlstate(e: &Error) -> Option<String> {
    match e {
        Error::Backend { source, .. } => match source.downcast_ref::<ServerError>() {
            Some(ServerError(sqlx::Error::Database(db))) => db.code().map(|c| c.into_owned()),
            _ => None,
        },
        Error::Transient { kind } => Some(
            match kind {
                TransientKind::Serialization => "40001",
                TransientKind::Deadlock => "40P01",
                _ => "55P03",
            }
            .to_owned(),
        ),
        Error::DeadlineExceeded { .. } => Some("57014".to_owned()),
        Error::TransactionAborted { .. } => Some("25P02".to_owned()),
        _ => None,
    }
}

/// What a failed repository statement found missing: SQLSTATE `42P01` undefined_table,
/// `42703` undefined_column.
pub(crate) fn missing(e: &Error) -> Option<larder_sql::Missing> {
    let Error::Backend { source, .. } = e else {
        return None;
    };
    let Some(ServerError(sqlx::Error::Database(db))) = source.downcast_ref::<ServerError>() else {
        return None;
    };
    match db.code().as_deref() {
        Some("42P01") => Some(larder_sql::Missing::Table),
        Some("42703") => Some(larder_sql::Missing::Column(db.message().to_owned())),
        _ => None,
    }
}
