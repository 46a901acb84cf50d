//! The event-log primitives a backend implements; policy (validation, limits, idempotency,
//! upcasting, spans, deadlines) lives in [`EventStore`](super::EventStore).

use uuid::Uuid;

use super::types::{
    Checkpoint, EventFilter, ExpectedVersion, HorizonHolder, ReadDirection, RecordedEvent, Snapshot,
};
use crate::backend::BoxFuture;
use crate::error::Result;

/// An event validated and encoded for storage.
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    /// Unique id.
    pub event_id: Uuid,
    /// Type name.
    pub event_type: String,
    /// Schema version.
    pub schema_version: u32,
    /// JSON text.
    pub payload: String,
    /// JSON text, `None` when empty.
    pub metadata: Option<String>,
    /// Microseconds since the Unix epoch.
    pub recorded_at_micros: i64,
}

/// A batch of the global log as a backend returns it.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadAllBatch {
    /// Matching events after the checkpoint, in log order (at most `limit`).
    pub events: Vec<RecordedEvent>,
    /// The readable end of the log when the query ran (`None` if the backend did not
    /// compute it because the page was full). Every event at or before it, matching or not,
    /// was considered by the query when fewer than `limit` events came back.
    pub head: Option<Checkpoint>,
}

/// What [`EventTransaction::read_all_each`] reports besides the visited events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct VisitedBatch {
    /// How many events were visited.
    pub count: usize,
    /// The checkpoint of the last visited event.
    pub last: Option<Checkpoint>,
    /// As [`ReadAllBatch::head`].
    pub head: Option<Checkpoint>,
}

/// The events of one page of the global log, held as the backend read them (for SQL
/// backends: the driver's rows). Each event is decoded when it is asked for, borrowing its
/// text columns from the row (see [`EventPage`](crate::events::EventPage)).
pub trait EventRows: Send + Sync {
    /// How many events.
    fn len(&self) -> usize;

    /// Whether there are none.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The event at `i` (`i < len()`), decoded from its row.
    fn event(&self, i: usize) -> Result<crate::events::EventRef<'_>>;
}

impl EventRows for Vec<RecordedEvent> {
    fn len(&self) -> usize {
        self.as_slice().len()
    }

    fn event(&self, i: usize) -> Result<crate::events::EventRef<'_>> {
        Ok(self[i].as_ref())
    }
}

/// What [`EventTransaction::read_all_rows`] returns: the page's events as rows, and what
/// the store needs to resume after them.
pub struct RowsBatch {
    /// The matching events after the checkpoint, in log order (at most `limit`).
    pub rows: Box<dyn EventRows>,
    /// The checkpoint of the last event.
    pub last: Option<Checkpoint>,
    /// As [`ReadAllBatch::head`].
    pub head: Option<Checkpoint>,
}

impl std::fmt::Debug for RowsBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RowsBatch")
            .field("rows", &self.rows.len())
            .field("last", &self.last)
            .field("head", &self.head)
            .finish()
    }
}

/// The visitor of [`EventTransaction::read_all_each`].
pub type EventVisitor<'v> = dyn FnMut(crate::events::EventRef<'_>) -> Result<()> + Send + 'v;

/// Counters of the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct LogStats {
    /// Events in the log.
    pub events: u64,
    /// Streams in the log.
    pub streams: u64,
    /// The readable end of the log.
    pub head: Checkpoint,
}

/// A stored projection checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredCheckpoint {
    /// The projection (consumer) name.
    pub name: String,
    /// Its checkpoint.
    pub checkpoint: Checkpoint,
    /// When it was last written, microseconds since the Unix epoch.
    pub updated_at_micros: i64,
}

/// Event-log primitives inside one backend transaction.
///
/// # Contract
///
/// - `append` is atomic: either every event is stored with the versions following the
///   stream's current one, or nothing is and the stream is unchanged. When the stream's
///   version does not satisfy `expected`, or one of the event ids is already stored, it
///   returns `Ok(Err(actual))` (no error raised in the database, the transaction stays
///   usable).
/// - In the global log, a stream's events keep their version order. Two transactions appending to the same
///   stream with the same expectation: exactly one succeeds.
/// - `read_all` never returns an event while an event before it in log order may still
///   commit (no gaps, no skips), and orders by [`Checkpoint`].
/// - Ids, names and stream ids are already validated; values are bound, never interpolated.
pub trait EventTransaction: Send {
    /// Appends `events` to `stream` if its version satisfies `expected`; returns the new
    /// version and the last event's checkpoint, or `Err(actual)` (the stream's current
    /// version, `None` if it does not exist).
    #[allow(clippy::type_complexity)]
    fn append<'a>(
        &'a mut self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<std::result::Result<(u64, Checkpoint), Option<u64>>>>;

    /// The stored events with these ids: (id, stream, version, checkpoint).
    #[allow(clippy::type_complexity)]
    fn find_events<'a>(
        &'a mut self,
        ids: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String, u64, Checkpoint)>>>;

    /// Events of one stream: `Forward` from version `from` upwards, `Backward` from
    /// version `from` downwards; at most `limit`.
    fn read_stream<'a>(
        &'a mut self,
        stream: &'a str,
        from: u64,
        limit: u32,
        direction: ReadDirection,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>>;

    /// Matching events after `after`, in log order, at most `limit`, below the commit
    /// horizon.
    fn read_all<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<ReadAllBatch>>;

    /// [`EventTransaction::read_all`], handing each event to `visit` borrowed from the
    /// driver's row instead of collecting owned events (a visitor error stops the read and
    /// is returned). The default reads owned events and lends them.
    fn read_all_each<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
        visit: &'a mut EventVisitor<'_>,
    ) -> BoxFuture<'a, Result<VisitedBatch>> {
        Box::pin(async move {
            let batch = self.read_all(after, limit, filter).await?;
            for e in &batch.events {
                visit(e.as_ref())?;
            }
            Ok(VisitedBatch {
                count: batch.events.len(),
                last: batch.events.last().map(|e| e.checkpoint),
                head: batch.head,
            })
        })
    }

    /// [`EventTransaction::read_all`], keeping the page as rows that decode each event on
    /// demand, borrowed ([`EventRows`]). The default reads owned events.
    fn read_all_rows<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<RowsBatch>> {
        Box::pin(async move {
            let batch = self.read_all(after, limit, filter).await?;
            Ok(RowsBatch {
                last: batch.events.last().map(|e| e.checkpoint),
                head: batch.head,
                rows: Box::new(batch.events),
            })
        })
    }

    /// The stream's current version (`None`: no such stream).
    fn stream_version<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<u64>>>;

    /// Committed events after `after` (a reader's lag), capped at `cap`. Counts events
    /// not readable yet because an older transaction is still open, so a long transaction
    /// holding the horizon back shows up as lag.
    fn count_after<'a>(&'a mut self, after: Checkpoint, cap: u64) -> BoxFuture<'a, Result<u64>>;

    /// Log counters.
    fn stats(&mut self) -> BoxFuture<'_, Result<LogStats>>;

    /// The oldest other running transaction that holds the `read_all` horizon back, and
    /// how many committed events it keeps unreadable; `None` when nothing does.
    ///
    /// Override it when readers wait for older transactions (PostgreSQL: any transaction
    /// with an id, in any database of the cluster, prepared ones included). Report only a
    /// transaction whose id *is* the horizon of this call's snapshot, never the caller's
    /// own. The default returns `Ok(None)`: with a single writer (memory, SQLite) nothing
    /// holds the log back.
    fn horizon_holder(&mut self) -> BoxFuture<'_, Result<Option<HorizonHolder>>> {
        Box::pin(async { Ok(None) })
    }

    /// The newest snapshot of a stream.
    fn load_snapshot<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<Snapshot>>>;

    /// Stores (replaces) a stream's snapshot.
    fn save_snapshot<'a>(&'a mut self, snapshot: &'a Snapshot) -> BoxFuture<'a, Result<()>>;

    /// A consumer's stored checkpoint.
    fn load_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>>>;

    /// Claims a consumer for this transaction: creates its checkpoint at
    /// [`Checkpoint::START`] if missing and locks it until the transaction ends (a second
    /// claimant waits, then sees the first one's committed checkpoint). Returns the
    /// checkpoint.
    fn claim_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<Checkpoint>>;

    /// Stores a consumer's checkpoint (insert or replace).
    fn save_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        checkpoint: Checkpoint,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<()>>;

    /// Forgets a consumer's checkpoint.
    fn delete_checkpoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>>;

    /// Every stored checkpoint.
    fn list_checkpoints(&mut self) -> BoxFuture<'_, Result<Vec<StoredCheckpoint>>>;
}
