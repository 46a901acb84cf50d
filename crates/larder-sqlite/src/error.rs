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
        sqlx::Error::PoolTimedOut => Error::Backend {
            backend: BACKEND,
            source: "timed out waiting for a pooled connection".into(),
        },
        sqlx::Error::PoolClosed => Error::Closed("sqlite pool"),
        other => Error::backend(BACKEND, other),
    }
}
