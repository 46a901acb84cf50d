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
/// any error is built). A message is always one line without control characters: caller
/// input is embedded through [`quote`], and `Display` escapes whatever a driver's or a
/// callback's text still holds (see [`one_line`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The entity does not exist.
    #[error("{entity} `{}` not found", ol(.id))]
    NotFound {
        /// The entity (collection) name.
        entity: &'static str,
        /// The id that was looked up, rendered as text.
        id: String,
    },

    /// An entity with this id already exists.
    #[error("{entity} `{}` already exists", ol(.id))]
    AlreadyExists {
        /// The entity (collection) name.
        entity: &'static str,
        /// The duplicate id, rendered as text.
        id: String,
    },

    /// Optimistic concurrency check failed: someone else wrote first.
    #[error("version conflict on {entity} `{}`: expected version {expected}, found {}", ol(.id), fmt_actual(.actual))]
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

    /// The database cannot be reached right now (connection refused, unknown host, no
    /// connection free before the pool's timeout, server shutting down or refusing
    /// connections). Retryable: [`Error::is_transient`] is true.
    #[error("{backend} is unavailable: {}; check that the server is running and reachable, then retry", ol(.cause))]
    Unavailable {
        /// The backend name.
        backend: &'static str,
        /// What failed, without secrets.
        cause: String,
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
    #[error("unknown field `{}` on {entity}", ol(.field))]
    UnknownField {
        /// The entity (collection) name.
        entity: &'static str,
        /// The rejected field name (truncated and escaped if hostile).
        field: String,
    },

    /// A value whose type does not fit the field.
    #[error("field `{}` expects {expected}, got {}", ol(.field), ol(.found))]
    TypeMismatch {
        /// The field name.
        field: String,
        /// The field's declared type.
        expected: &'static str,
        /// What the caller supplied.
        found: String,
    },

    /// A specification, query or cursor that is well-typed but not acceptable.
    #[error("invalid query: {}", ol(.0))]
    InvalidQuery(String),

    /// A malformed or foreign pagination cursor.
    #[error("invalid cursor: {}", ol(.0))]
    InvalidCursor(String),

    /// A malformed event-log checkpoint token.
    #[error("invalid checkpoint: {}", ol(.0))]
    InvalidCheckpoint(String),

    /// An event that cannot be appended as given (empty stream id, bad type name, payload
    /// that is not a JSON object…).
    #[error("invalid event: {}", ol(.0))]
    InvalidEvent(String),

    /// A message that cannot be enqueued as given (empty topic, control characters in a
    /// key or header…), or a malformed message id.
    #[error("invalid message: {}", ol(.0))]
    InvalidMessage(String),

    /// A blob key broke one of [`BlobKey`](crate::blob::BlobKey)'s rules; nothing was
    /// stored or read.
    #[error("invalid blob key `{}`: {reason}; keys are relative `/`-separated segments", ol(.key))]
    InvalidBlobKey {
        /// The key (at most 200 characters of it).
        key: String,
        /// The rule it broke.
        reason: &'static str,
    },

    /// A byte range outside a blob, or reversed.
    #[error("invalid range: {}", ol(.0))]
    InvalidRange(String),

    /// The upload staged for a blob was deleted by the sweep before its unit of work
    /// recorded it (the upload took longer than the sweep's grace period). Nothing was
    /// recorded: stage it again, or give the sweep a longer grace period.
    #[error("the upload staged for blob `{}` was swept before it was recorded; stage it again or lengthen the sweep's grace period", ol(.key))]
    BlobSwept {
        /// The key.
        key: String,
    },

    /// A committed blob reference whose object is missing from the blob store (deleted
    /// behind larder's back, or a store restored from an older backup).
    #[error("blob `{}` is recorded but its object `{}` is missing from the blob store; restore the object or delete the reference", ol(.key), ol(.object))]
    BlobMissing {
        /// The key.
        key: String,
        /// The stored object it points at.
        object: String,
    },

    /// An outbox operation on a message id the outbox does not hold in the required state
    /// (replaying a message that is not a dead letter, an unknown id).
    #[error("no {state} message `{id}` in the outbox; list them with `larder outbox dead`")]
    UnknownMessage {
        /// The message id.
        id: uuid::Uuid,
        /// The state the operation needs (`dead`).
        state: &'static str,
    },

    /// A stored event whose type (or schema version, after upcasting) the reader does not
    /// know.
    #[error(
        "unknown event type `{}` (schema version {schema_version}): register an upcaster or add it to the event type",
        ol(.event_type)
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
    #[error("invalid entity definition for {}: {}", ol(.entity), ol(.reason))]
    InvalidEntity {
        /// The entity name.
        entity: String,
        /// What is wrong.
        reason: String,
    },

    /// The entity's table exists but does not match the entity's definition (a field
    /// added, removed or retyped, a changed id type, another storage layout, a missing
    /// index): found by `Store::register`, which never alters an existing table, and by
    /// a repository statement that names a column the table lacks.
    #[error(
        "table `{table}` does not match {entity}: {}; the table needs a migration (write one with `larder migrate new <name>`)",
        ol(.differences)
    )]
    SchemaMismatch {
        /// The entity name.
        entity: &'static str,
        /// The table.
        table: String,
        /// What differs, column by column (`; `-separated).
        differences: String,
    },

    /// The entity was used before `Store::register` created or checked its table.
    #[error(
        "{entity} is not registered: call `store.register::<T>()` for it before use (table `{table}`)"
    )]
    NotRegistered {
        /// The entity name.
        entity: &'static str,
        /// The table.
        table: String,
    },

    /// Converting between an entity and its stored form failed.
    #[error("could not {direction} {entity}: {}", src_line(.source))]
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
    #[error("invalid configuration: {}", ol(.0))]
    Configuration(String),

    /// The store, pool or unit of work is closed.
    #[error("{0} is closed")]
    Closed(&'static str),

    /// An error from a user callback (a hook or a transaction closure).
    #[error("{context}: {}", src_line(.source))]
    Callback {
        /// Where it happened, e.g. `pre-commit hook`.
        context: &'static str,
        /// The callback's error.
        #[source]
        source: BoxError,
    },

    /// Any other database or driver error, already stripped of secrets.
    #[error("{backend} error: {}", src_line(.source))]
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
        Some(c) => format!(" ({})", one_line(c)),
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
            Error::Unavailable { .. } => "unavailable",
            Error::UnknownField { .. } => "unknown_field",
            Error::TypeMismatch { .. } => "type_mismatch",
            Error::InvalidQuery(_) => "invalid_query",
            Error::InvalidCursor(_) => "invalid_cursor",
            Error::InvalidCheckpoint(_) => "invalid_checkpoint",
            Error::InvalidEvent(_) => "invalid_event",
            Error::InvalidMessage(_) => "invalid_message",
            Error::UnknownMessage { .. } => "unknown_message",
            Error::InvalidBlobKey { .. } => "invalid_blob_key",
            Error::InvalidRange(_) => "invalid_range",
            Error::BlobSwept { .. } => "blob_swept",
            Error::BlobMissing { .. } => "blob_missing",
            Error::UnknownEventType { .. } => "unknown_event_type",
            Error::LimitExceeded { .. } => "limit_exceeded",
            Error::Unsupported { .. } => "unsupported",
            Error::ReadOnly { .. } => "read_only",
            Error::InvalidEntity { .. } => "invalid_entity",
            Error::SchemaMismatch { .. } => "schema_mismatch",
            Error::NotRegistered { .. } => "not_registered",
            Error::Mapping { .. } => "mapping",
            Error::Configuration(_) => "configuration",
            Error::Closed(_) => "closed",
            Error::Callback { .. } => "callback",
            Error::Backend { .. } => "backend",
        }
    }

    /// Whether retrying the whole transaction may succeed without changing the input
    /// (serialization failures, deadlocks, busy databases, an unavailable server). Optimistic [`Error::Conflict`]s are
    /// not included: retrying them is opt-in, see `TransactionOptions::retry_on_conflict`.
    pub fn is_transient(&self) -> bool {
        matches!(self, Error::Transient { .. } | Error::Unavailable { .. })
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

/// The longest caller input, in characters, that [`quote`] copies into a message.
pub const QUOTE_MAX_CHARS: usize = 64;

/// Renders caller input (a field name, an id, a pattern, a token, a stream name…) so that it
/// can be embedded in an error message, a log line or a terminal: control characters
/// (newlines, tabs, `ESC`, `NUL`, U+0080–U+009F), Unicode line/paragraph separators,
/// bidirectional overrides and other invisible format characters, and the backslash itself
/// are escaped like [`char::escape_default`] (`\n`, `\u{1b}`, `\\`), so the text stays on
/// one line and cannot move the cursor or recolour a terminal; input longer than
/// [`QUOTE_MAX_CHARS`] characters is cut there and ends with `…`.
///
/// Every [`Error`] that quotes caller input builds its message with this function. On top
/// of that, the `Display` of every [`Error`] escapes any control character that a message
/// still holds (a driver's or a callback's text), so no error prints on more than one line.
///
/// ```
/// use larder_core::error::quote;
/// assert_eq!(quote("total"), "total");
/// assert_eq!(quote("a\nb\u{1b}[2J"), "a\\nb\\u{1b}[2J");
/// assert_eq!(quote(&"x".repeat(100)), format!("{}…", "x".repeat(64)));
/// ```
pub fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len().min(QUOTE_MAX_CHARS * 2));
    let mut chars = s.chars();
    for c in chars.by_ref().take(QUOTE_MAX_CHARS) {
        push_escaped(&mut out, c, true);
    }
    if chars.next().is_some() {
        out.push('…');
    }
    out
}

/// The crate's short name for [`quote`].
pub(crate) fn shown(s: &str) -> String {
    quote(s)
}

/// Whether `c` must not appear raw in an error message: control characters, line and
/// paragraph separators, and invisible format characters (bidirectional overrides and
/// isolates, zero-width characters, the byte-order mark) that can disguise text.
fn needs_escape(c: char) -> bool {
    c.is_control()
        || matches!(
            c,
            '\u{061c}'
                | '\u{200b}'..='\u{200f}'
                | '\u{2028}'..='\u{202e}'
                | '\u{2060}'..='\u{2069}'
                | '\u{feff}'
        )
}

fn push_escaped(out: &mut String, c: char, backslash: bool) {
    if c == '\\' && backslash {
        out.push_str("\\\\");
    } else if needs_escape(c) {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            _ => out.extend(c.escape_unicode()),
        }
    } else {
        out.push(c);
    }
}

/// Text of a foreign error (a driver's, a parser's, a callback's) flattened to one line:
/// lines are trimmed and joined with a space, lines that only point at a column (`^^^`)
/// are dropped, and control characters are escaped (backslashes are kept, so text that
/// [`quote`] already escaped is left as it is). At most 1,000 characters are kept.
pub fn one_line(s: &str) -> String {
    const MAX: usize = 1000;
    let mut out = String::with_capacity(s.len().min(MAX));
    let lines = s
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.chars().all(|c| matches!(c, '^' | '~' | '-')));
    let mut n = 0;
    for (i, line) in lines.enumerate() {
        if i > 0 {
            out.push(' ');
        }
        for c in line.chars() {
            if n == MAX {
                out.push('…');
                return out;
            }
            push_escaped(&mut out, c, false);
            n += 1;
        }
    }
    out
}

/// `Display` adapter that writes a message with [`one_line`]'s escaping (used by the
/// `Display` of [`Error`], so that no variant can print a control character).
struct OneLine<'a>(&'a str);

impl fmt::Display for OneLine<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.0.chars().any(needs_escape) {
            return f.write_str(self.0);
        }
        let mut out = String::with_capacity(self.0.len() + 8);
        for c in self.0.chars() {
            push_escaped(&mut out, c, false);
        }
        f.write_str(&out)
    }
}

fn ol(s: &str) -> OneLine<'_> {
    OneLine(s)
}

fn src_line(e: &BoxError) -> String {
    one_line(&e.to_string())
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
    fn quote_escapes_controls_separators_and_backslashes() {
        assert_eq!(
            quote("a\u{1b}[2J\n\u{2028}\u{202e}\\"),
            "a\\u{1b}[2J\\n\\u{2028}\\u{202e}\\\\"
        );
        assert_eq!(quote("héllo `x`"), "héllo `x`");
        assert_eq!(quote(&"é".repeat(70)), format!("{}…", "é".repeat(64)));
    }

    #[test]
    fn every_variant_prints_on_one_line() {
        let raw = "x\n\u{1b}[2Jy";
        for e in [
            Error::NotFound {
                entity: "item",
                id: raw.into(),
            },
            Error::InvalidQuery(raw.into()),
            Error::Configuration(raw.into()),
            Error::backend("sqlite", raw.to_owned()),
            Error::callback("hook", raw.to_owned()),
        ] {
            let text = e.to_string();
            assert!(!text.chars().any(char::is_control), "{text:?}");
            assert!(text.contains("\\u{1b}[2Jy"), "{text:?}");
        }
        // Text already quoted is not escaped twice.
        let e = Error::InvalidQuery(format!("field `{}`", quote("a\nb")));
        assert_eq!(e.to_string(), "invalid query: field `a\\nb`");
    }

    #[test]
    fn one_line_joins_lines_and_drops_carets() {
        assert_eq!(
            one_line("a:\n    b(\n     ^\nerror: c\u{7}"),
            "a: b( error: c\\u{7}"
        );
    }

    #[test]
    fn shown_truncates_and_escapes() {
        let s = shown(&format!("a\n{}", "x".repeat(100)));
        assert!(s.starts_with("a\\n"));
        assert!(s.ends_with('…'));
    }
}
