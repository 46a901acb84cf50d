//! The one public error type of larder's core.

use std::fmt;

/// A boxed error from a driver or a user callback.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with larder's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a transaction failed in a way that running it again may fix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransientKind {
    /// PostgreSQL `40001 serialization_failure`.
    Serialization,
    /// PostgreSQL `40P01 deadlock_detected`.
    Deadlock,
    /// SQLite `SQLITE_BUSY` / `SQLITE_LOCKED` after the busy timeout ran out.
    Busy,
}

impl fmt::Display for TransientKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TransientKind::Serialization => "serialization failure",
            TransientKind::Deadlock => "deadlock detected",
            TransientKind::Busy => "database is busy",
        })
    }
}

/// Every error larder returns, in the caller's vocabulary.
///
/// Database errors are classified once, in the backend, so callers match on
/// [`Error::Conflict`] or [`Error::AlreadyExists`] and never on a driver's error code.
/// Messages are lowercase and never contain secrets (passwords in URLs are redacted before
/// any error is built).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The entity does not exist.
    #[error("{entity} `{id}` not found")]
    NotFound {
        /// The entity (collection) name.
        entity: &'static str,
        /// The id that was looked up, rendered as text.
        id: String,
    },

    /// An entity with this id already exists.
    #[error("{entity} `{id}` already exists")]
    AlreadyExists {
        /// The entity (collection) name.
        entity: &'static str,
        /// The duplicate id, rendered as text.
        id: String,
    },

    /// Optimistic concurrency check failed: someone else wrote first.
    #[error("version conflict on {entity} `{id}`: expected version {expected}, found {}", fmt_actual(.actual))]
    Conflict {
        /// The entity (collection) name.
        entity: &'static str,
        /// The id of the entity, rendered as text.
        id: String,
        /// The version the caller based its write on.
        expected: u64,
        /// The version found in storage (`None` if it was deleted meanwhile).
        actual: Option<u64>,
    },

    /// The deadline passed; the database work was cancelled.
    #[error("deadline exceeded during {operation}")]
    DeadlineExceeded {
        /// The operation that was running, e.g. `repository.find`.
        operation: &'static str,
    },

    /// The transaction failed for a reason that a retry may fix.
    #[error("transaction aborted: {kind} (retryable)")]
    Transient {
        /// What happened.
        kind: TransientKind,
    },

    /// The database rolled the transaction back because a statement in it had failed (an
    /// error that was caught and ignored, raw SQL through a backend extension, a stream
    /// dropped after an error): nothing of the unit of work was committed.
    #[error(
        "{operation} failed: the database had already aborted the transaction because an earlier statement failed{}; nothing was committed, run the unit of work again",
        fmt_cause(.cause)
    )]
    TransactionAborted {
        /// The operation that found out (`uow.commit`, `uow.release_savepoint`).
        operation: &'static str,
        /// The first failure larder saw in this transaction, when it saw one.
        cause: Option<String>,
    },

    /// A field name that the entity does not register.
    #[error("unknown field `{field}` on {entity}")]
    UnknownField {
        /// The entity (collection) name.
        entity: &'static str,
        /// The rejected field name (truncated and escaped if hostile).
        field: String,
    },

    /// A value whose type does not fit the field.
    #[error("field `{field}` expects {expected}, got {found}")]
    TypeMismatch {
        /// The field name.
        field: String,
        /// The field's declared type.
        expected: &'static str,
        /// What the caller supplied.
        found: String,
    },

    /// A specification, query or cursor that is well-typed but not acceptable.
    #[error("invalid query: {0}")]
    InvalidQuery(String),

    /// A malformed or foreign pagination cursor.
    #[error("invalid cursor: {0}")]
    InvalidCursor(String),

    /// A malformed event-log checkpoint token.
    #[error("invalid checkpoint: {0}")]
    InvalidCheckpoint(String),

    /// An event that cannot be appended as given (empty stream id, bad type name, payload
    /// that is not a JSON object…).
    #[error("invalid event: {0}")]
    InvalidEvent(String),

    /// A stored event whose type (or schema version, after upcasting) the reader does not
    /// know.
    #[error(
        "unknown event type `{event_type}` (schema version {schema_version}): register an upcaster or add it to the event type"
    )]
    UnknownEventType {
        /// The stored event type.
        event_type: String,
        /// Its schema version after every registered upcaster ran.
        schema_version: u32,
    },

    /// An input over one of the configured limits (page size, list length, depth, size).
    #[error("{what} is {actual}, over the limit of {limit}")]
    LimitExceeded {
        /// What was too large, e.g. `page size`.
        what: &'static str,
        /// The configured limit.
        limit: u64,
        /// The supplied amount.
        actual: u64,
    },

    /// The backend cannot run this operation (a declared capability).
    #[error("{operation} is not supported by the {backend} backend")]
    Unsupported {
        /// The operation or operator.
        operation: &'static str,
        /// The backend name.
        backend: &'static str,
    },

    /// A write was attempted in a read-only unit of work.
    #[error("{operation} is not allowed in a read-only unit of work")]
    ReadOnly {
        /// The rejected operation.
        operation: &'static str,
    },

    /// The entity's declaration (table, field names) is invalid.
    #[error("invalid entity definition for {entity}: {reason}")]
    InvalidEntity {
        /// The entity name.
        entity: String,
        /// What is wrong.
        reason: String,
    },

    /// Converting between an entity and its stored form failed.
    #[error("could not {direction} {entity}: {source}")]
    Mapping {
        /// The entity name.
        entity: &'static str,
        /// `encode` or `decode`.
        direction: &'static str,
        /// The underlying error.
        #[source]
        source: BoxError,
    },

    /// The configuration (URL, settings file, environment) is invalid.
    #[error("invalid configuration: {0}")]
    Configuration(String),

    /// The store, pool or unit of work is closed.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// An error from a user callback (a hook or a transaction closure).
    #[error("{context}: {source}")]
    Callback {
        /// Where it happened, e.g. `pre-commit hook`.
        context: &'static str,
        /// The callback's error.
        #[source]
        source: BoxError,
    },

    /// Any other database or driver error, already stripped of secrets.
    #[error("{backend} error: {source}")]
    Backend {
        /// The backend name.
        backend: &'static str,
        /// The driver error.
        #[source]
        source: BoxError,
    },
}

fn fmt_cause(cause: &Option<String>) -> String {
    match cause {
        Some(c) => format!(" ({c})"),
        None => String::new(),
    }
}

fn fmt_actual(actual: &Option<u64>) -> String {
    match actual {
        Some(v) => v.to_string(),
        None => "none".to_owned(),
    }
}

impl Error {
    /// A stable, low-cardinality name for the variant, used as `error.type` on spans and in
    /// audit records.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::NotFound { .. } => "not_found",
            Error::AlreadyExists { .. } => "already_exists",
            Error::Conflict { .. } => "conflict",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
            Error::Transient { .. } => "transient",
            Error::TransactionAborted { .. } => "transaction_aborted",
            Error::UnknownField { .. } => "unknown_field",
            Error::TypeMismatch { .. } => "type_mismatch",
            Error::InvalidQuery(_) => "invalid_query",
            Error::InvalidCursor(_) => "invalid_cursor",
            Error::InvalidCheckpoint(_) => "invalid_checkpoint",
            Error::InvalidEvent(_) => "invalid_event",
            Error::UnknownEventType { .. } => "unknown_event_type",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::Unsupported { .. } => "unsupported",
            Error::ReadOnly { .. } => "read_only",
            Error::InvalidEntity { .. } => "invalid_entity",
            Error::Mapping { .. } => "mapping",
            Error::Configuration(_) => "configuration",
            Error::Closed(_) => "closed",
            Error::Callback { .. } => "callback",
            Error::Backend { .. } => "backend",
        }
    }

    /// Whether retrying the whole transaction may succeed without changing the input
    /// (serialization failures, deadlocks, busy databases). Optimistic [`Error::Conflict`]s are
    /// not included: retrying them is opt-in, see `TransactionOptions::retry_on_conflict`.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. })
    }

    /// Wraps a user callback's error.
    pub fn callback(context: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Callback {
            context,
            source: source.into(),
        }
    }

    /// Wraps a driver error that has no better classification.
    pub fn backend(backend: &'static str, source: impl Into<BoxError>) -> Self {
        Error::Backend {
            backend,
            source: source.into(),
        }
    }
}

/// Gives [`crate::Store::transaction`] access to the larder error inside a caller's own
/// error type, so it can decide whether to retry.
///
/// Implemented for [`Error`]. Implement it for your application's error type (usually a
/// `#[from] larder::Error` variant) to use that type as the transaction closure's error.
pub trait AsLarderError {
    /// The larder error this error wraps, if any.
    fn as_larder_error(&self) -> Option<&Error>;
}

impl AsLarderError for Error {
    fn as_larder_error(&self) -> Option<&Error> {
        Some(self)
    }
}

/// Renders a caller-supplied string safely into an error message: at most 64 characters,
/// control characters escaped.
pub(crate) fn shown(s: &str) -> String {
    let mut out: String = s.chars().take(64).flat_map(char::escape_debug).collect();
    if s.chars().count() > 64 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_lowercase_and_name_the_versions() {
        let e = Error::Conflict {
            entity: "order",
            id: "42".into(),
            expected: 3,
            actual: Some(4),
        };
        assert_eq!(
            e.to_string(),
            "version conflict on order `42`: expected version 3, found 4"
        );
        assert_eq!(e.kind(), "conflict");
    }

    #[test]
    fn shown_truncates_and_escapes() {
        let s = shown(&format!("a\n{}", "x".repeat(100)));
        assert!(s.starts_with("a\\n"));
        assert!(s.ends_with('…'));
    }
}
