//! Sinks without a broker: in memory (tests), stdout and a JSON-lines file (development
//! and the embedded default).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::relay::{Outgoing, Sink, SinkError};
use super::types::MessageId;
use crate::backend::BoxFuture;

/// A published message as [`MemorySink`] keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Id.
    pub id: MessageId,
    /// Topic.
    pub topic: String,
    /// Key.
    pub key: Option<String>,
    /// Body.
    pub payload: Vec<u8>,
    /// Headers.
    pub headers: BTreeMap<String, String>,
}

type Verdict = dyn Fn(&Outgoing<'_>) -> Option<SinkError> + Send + Sync;

/// A sink that keeps what it was given, in publish order: the test double of a broker
/// (clones share the list). [`MemorySink::failing_with`] makes it refuse messages.
#[derive(Clone, Default)]
pub struct MemorySink {
    published: Arc<Mutex<Vec<Published>>>,
    verdict: Option<Arc<Verdict>>,
}

impl std::fmt::Debug for MemorySink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemorySink")
            .field("published", &self.len())
            .finish_non_exhaustive()
    }
}

impl MemorySink {
    /// An empty sink that accepts everything.
    pub fn new() -> MemorySink {
        MemorySink::default()
    }

    /// A sink that asks `verdict` first: `Some(error)` refuses the message.
    pub fn failing_with(
        verdict: impl Fn(&Outgoing<'_>) -> Option<SinkError> + Send + Sync + 'static,
    ) -> MemorySink {
        MemorySink {
            published: Arc::default(),
            verdict: Some(Arc::new(verdict)),
        }
    }

    /// Everything published so far, in order.
    pub fn messages(&self) -> Vec<Published> {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// How many were published.
    pub fn len(&self) -> usize {
        self.published
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }

    /// Whether nothing was published.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Sink for MemorySink {
    fn system(&self) -> &'static str {
        "memory"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            if let Some(v) = &self.verdict
                && let Some(e) = v(&m)
            {
                return Err(e);
            }
            self.published
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(Published {
                    id: m.id,
                    topic: m.topic.to_owned(),
                    key: m.key.map(str::to_owned),
                    payload: m.payload.to_vec(),
                    headers: m.headers.clone(),
                });
            Ok(())
        })
    }
}

/// One message as a JSON line (`id`, `topic`, `key`, `headers`, and `payload` as text
/// when it is UTF-8, else `payload_base64`).
pub fn json_line(m: &Outgoing<'_>) -> String {
    use base64::Engine as _;
    let mut o = serde_json::Map::new();
    o.insert("id".into(), m.id.to_string().into());
    o.insert("topic".into(), m.topic.into());
    o.insert(
        "key".into(),
        m.key.map_or(serde_json::Value::Null, Into::into),
    );
    o.insert(
        "headers".into(),
        serde_json::to_value(m.headers).unwrap_or_default(),
    );
    match std::str::from_utf8(m.payload) {
        Ok(s) => o.insert("payload".into(), s.into()),
        Err(_) => o.insert(
            "payload_base64".into(),
            base64::engine::general_purpose::STANDARD
                .encode(m.payload)
                .into(),
        ),
    };
    serde_json::Value::Object(o).to_string()
}

/// Prints each message as a JSON line on standard output (development; the default sink
/// of `larder outbox relay`).
#[derive(Debug, Clone, Copy, Default)]
pub struct StdoutSink;

impl Sink for StdoutSink {
    fn system(&self) -> &'static str {
        "stdout"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let line = json_line(&m);
            let mut out = std::io::stdout().lock();
            writeln!(out, "{line}").map_err(|e| SinkError::Unavailable(format!("stdout: {e}")))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async {
            std::io::stdout()
                .flush()
                .map_err(|e| SinkError::Unavailable(format!("stdout: {e}")))
        })
    }
}

/// Appends each message as a JSON line to a file, synced to disk after every batch
/// (so a batch recorded as delivered is on disk).
#[derive(Debug, Clone)]
pub struct JsonLinesSink {
    path: PathBuf,
    file: Arc<Mutex<std::fs::File>>,
}

impl JsonLinesSink {
    /// Opens (creating) `path` for appending.
    pub fn open(path: impl AsRef<Path>) -> crate::Result<JsonLinesSink> {
        let path = path.as_ref().to_path_buf();
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| {
                crate::Error::Configuration(format!(
                    "cannot open the outbox file {}: {e}",
                    path.display()
                ))
            })?;
        Ok(JsonLinesSink {
            path,
            file: Arc::new(Mutex::new(file)),
        })
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Sink for JsonLinesSink {
    fn system(&self) -> &'static str {
        "file"
    }

    fn publish<'a>(&'a self, m: Outgoing<'a>) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut line = json_line(&m);
            line.push('\n');
            let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.write_all(line.as_bytes())
                .map_err(|e| SinkError::Unavailable(format!("{}: {e}", self.path.display())))
        })
    }

    fn flush(&self) -> BoxFuture<'_, Result<(), SinkError>> {
        Box::pin(async move {
            let f = self.file.lock().unwrap_or_else(|p| p.into_inner());
            f.sync_data()
                .map_err(|e| SinkError::Unavailable(format!("{}: {e}", self.path.display())))
        })
    }
}
