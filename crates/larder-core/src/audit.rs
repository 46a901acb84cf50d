//! The "who accessed what" audit trail: one record per storage operation.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// One audited operation.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// When the operation finished.
    pub at: SystemTime,
    /// Who (the unit of work's actor).
    pub actor: Option<Arc<str>>,
    /// The correlation id of the unit of work.
    pub correlation_id: Option<Arc<str>>,
    /// What, e.g. `repository.update` or `uow.commit`.
    pub operation: &'static str,
    /// Which collection (entity name); `None` for unit-of-work operations.
    pub collection: Option<&'static str>,
    /// Which entity, when the operation names one.
    pub entity_id: Option<String>,
    /// Rows read or written.
    pub rows: u64,
    /// `Ok(())`, or the error kind (see [`Error::kind`](crate::Error::kind)).
    pub outcome: Result<(), &'static str>,
}

/// Receives audit records. Called inline after every operation: keep it fast (push to a
/// channel for slow sinks).
pub trait AuditSink: Send + Sync + fmt::Debug + 'static {
    /// Records one operation.
    fn record(&self, record: AuditRecord);
}

/// An audit sink that keeps records in memory (for tests and small tools).
#[derive(Debug, Default, Clone)]
pub struct MemoryAuditSink(Arc<Mutex<Vec<AuditRecord>>>);

impl MemoryAuditSink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// The records so far.
    pub fn records(&self) -> Vec<AuditRecord> {
        self.0.lock().map(|v| v.clone()).unwrap_or_default()
    }
}

impl AuditSink for MemoryAuditSink {
    fn record(&self, record: AuditRecord) {
        if let Ok(mut v) = self.0.lock() {
            v.push(record);
        }
    }
}

/// An audit sink that emits each record as a `tracing` event at INFO on target
/// `larder::audit`.
#[derive(Debug, Default, Clone, Copy)]
pub struct TracingAuditSink;

impl AuditSink for TracingAuditSink {
    fn record(&self, r: AuditRecord) {
        tracing::info!(
            target: "larder::audit",
            actor = r.actor.as_deref(),
            correlation_id = r.correlation_id.as_deref(),
            operation = r.operation,
            collection = r.collection,
            entity_id = r.entity_id.as_deref(),
            rows = r.rows,
            outcome = match r.outcome { Ok(()) => "ok", Err(k) => k },
            "audit"
        );
    }
}
