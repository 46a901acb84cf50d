//! Classifying SQLite errors into larder's vocabulary.

use larder_core::{Error, TransientKind};

pub(crate) const BACKEND: &str = "sqlite";

// Primary result codes (the low byte of extended codes).
const SQLITE_BUSY: u32 = 5;
const SQLITE_LOCKED: u32 = 6;
const SQLITE_INTERRUPT: u32 = 9;

/// Maps a sqlx error; `operation` names the call for `DeadlineExceeded`.
pub(crate) fn map(e: sqlx::Error, operation: &'static str) -> Error {
    if let sqlx::Error::Database(db) = &e
        && let Some(code) = db.code().and_then(|c| c.parse::<u32>().ok())
    {
        match code & 0xff {
            SQLITE_BUSY | SQLITE_LOCKED => {
                return Error::Transient {
                    kind: TransientKind::Busy,
                };
            }
            SQLITE_INTERRUPT => return Error::DeadlineExceeded { operation },
            _ => {}
        }
    }
    match e {
        sqlx::Error::PoolTimedOut => Error::Unavailable {
            backend: BACKEND,
            cause: "no connection could be opened or freed within the pool's acquire timeout"
                .into(),
        },
        sqlx::Error::Io(io) => Error::Unavailable {
            backend: BACKEND,
            cause: io.to_string(),
        },
        sqlx::Error::PoolClosed => Error::Closed("sqlite pool"),
        other => Error::backend(BACKEND, other),
    }
}

/// What a failed repository statement found missing: SQLite reports both as
/// `SQLITE_ERROR` with a message (`no such table: t`, `no such column: c`, `table t has no
/// column named c`). With double-quoted string literals off (see the crate docs) an unknown
/// column is always such an error.
pub(crate) fn missing(e: &Error) -> Option<larder_sql::Missing> {
    let Error::Backend { source, .. } = e else {
        return None;
    };
    let Some(sqlx::Error::Database(db)) = source.downcast_ref::<sqlx::Error>() else {
        return None;
    };
    let msg = db.message();
    if msg.starts_with("no such table") {
        Some(larder_sql::Missing::Table)
    } else if msg.starts_with("no such column") || msg.contains("has no column named") {
        Some(larder_sql::Missing::Column(msg.to_owned()))
    } else {
        None
    }
}
