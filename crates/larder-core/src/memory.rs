//! The in-memory backend: the reference implementation and test oracle.
//!
//! Semantics match the SQL backends (the conformance and differential suites prove it):
//! writers are serialized like SQLite's (one write transaction at a time, waiting up to the
//! busy timeout), readers share; uncommitted writes are invisible to other transactions
//! because a writer excludes them; rollback (explicit or on drop) replays an undo log.
//!
//! One difference is declared: a unit of work here is a lock on the whole store, so a
//! read-only unit of work waits for an open write unit of work (and vice versa), where
//! SQLite's WAL lets readers proceed. Opening a second unit of work while holding a write
//! one in the same task therefore fails with a transient `Busy` error after the busy
//! timeout instead of reading a snapshot.

use std::any::Any;
use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedRwLockReadGuard, OwnedRwLockWriteGuard, RwLock};

use crate::backend::{Backend, BeginOptions, BoxFuture, BoxStream, Capabilities, Transaction};
use crate::blob::{BlobRef, BlobRefTransaction};
use crate::deadline::Deadline;
use crate::entity::{EntityDef, Record};
use crate::error::{Error, Result, TransientKind};
use crate::eval::{compare, eval, is_after};
use crate::events::{
    Checkpoint, EventFilter, EventTransaction, ExpectedVersion, LogStats, NewEvent, ReadAllBatch,
    ReadDirection, RecordedEvent, Snapshot, StoredCheckpoint,
};
use crate::outbox::{
    Failure, MessageId, MessageState, NewMessage, OutboxCounts, OutboxTransaction, PartitionLease,
    StoredMessage, decode_headers,
};
use crate::query::Select;
use crate::spec::Pred;
use crate::value::Value;
use uuid::Uuid;

/// An id wrapper with a total order, for the row maps.
#[derive(Debug, Clone)]
struct Key(Value);

impl PartialEq for Key {
    fn eq(&self, o: &Self) -> bool {
        self.cmp(o) == Ordering::Equal
    }
}
impl Eq for Key {}
impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Self) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Key {
    fn cmp(&self, o: &Self) -> Ordering {
        self.0.total_cmp(&o.0)
    }
}

#[derive(Debug, Default)]
struct State {
    tables: HashMap<String, BTreeMap<Key, Record>>,
    /// The definition each table was registered with: its rows have that layout.
    defs: HashMap<String, EntityDef>,
    log: EventLog,
    outbox: OutboxMem,
    blobs: BlobRefsMem,
}

/// Blob references and the objects they hold.
#[derive(Debug, Default)]
struct BlobRefsMem {
    refs: BTreeMap<String, BlobRef>,
    objects: BTreeMap<String, BlobObject>,
}

#[derive(Debug, Clone, Copy)]
struct BlobObject {
    refs: u64,
    claimed: bool,
    created_micros: i64,
}

/// Partitions of the memory backend's outbox.
const MEMORY_PARTITIONS: u32 = 4;

#[derive(Debug, Default)]
struct OutboxMem {
    rows: BTreeMap<u64, StoredMessage>,
    by_id: HashMap<Uuid, u64>,
    last_seq: u64,
    leases: Vec<PartitionLease>,
    relays: HashMap<String, i64>,
    inbox: HashMap<(String, Uuid), i64>,
}

/// The event store's state. Writers are exclusive, so allocation order is commit order,
/// and appended events are always at the end of `events` (undo pops them).
#[derive(Debug, Default)]
struct EventLog {
    events: Vec<RecordedEvent>,
    /// Indices into `events`, by version − 1.
    streams: HashMap<String, Vec<usize>>,
    ids: HashMap<Uuid, usize>,
    /// Never decreases, not even on rollback: positions are never reused.
    last_position: u64,
    snapshots: HashMap<String, Snapshot>,
    checkpoints: BTreeMap<String, (Checkpoint, i64)>,
}

/// The in-memory backend. Cheap to clone (clones share data).
#[derive(Debug, Clone)]
pub struct MemoryBackend {
    state: Arc<RwLock<State>>,
    busy_timeout: Duration,
    caps: Capabilities,
}

impl Default for MemoryBackend {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBackend {
    /// An empty store.
    pub fn new() -> Self {
        MemoryBackend {
            state: Arc::new(RwLock::new(State::default())),
            busy_timeout: Duration::from_secs(5),
            caps: Capabilities {
                regex: true,
                json_contains: true,
                concurrent_writers: false,
                server_side_cancel: false,
            },
        }
    }

    /// How long a writer waits for another writer before failing with a transient
    /// `Busy` error (default 5 s).
    #[must_use]
    pub fn with_busy_timeout(mut self, timeout: Duration) -> Self {
        self.busy_timeout = timeout;
        self
    }
}

impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn capabilities(&self) -> &Capabilities {
        &self.caps
    }

    fn begin<'a>(&'a self, opts: &'a BeginOptions) -> BoxFuture<'a, Result<Box<dyn Transaction>>> {
        Box::pin(async move {
            let wait = match opts.deadline {
                Some(d) => d.remaining().min(self.busy_timeout),
                None => self.busy_timeout,
            };
            let guard = if opts.read_only {
                tokio::time::timeout(wait, self.state.clone().read_owned())
                    .await
                    .map(Guard::Read)
            } else {
                tokio::time::timeout(wait, self.state.clone().write_owned())
                    .await
                    .map(Guard::Write)
            };
            let guard = guard.map_err(|_| match opts.deadline {
                Some(d) if d.is_expired() => Error::DeadlineExceeded {
                    operation: "uow.begin",
                },
                _ => Error::Transient {
                    kind: TransientKind::Busy,
                },
            })?;
            Ok(Box::new(MemoryTx {
                guard: Some(guard),
                undo: Vec::new(),
                savepoints: Vec::new(),
                deadline: None,
            }) as Box<dyn Transaction>)
        })
    }

    fn prepare<'a>(&'a self, def: &'a EntityDef) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut s = self.state.write().await;
            match s.defs.get(def.table) {
                // Rows keep the layout of the registered definition: another definition of
                // the same table is drift, as an existing SQL table would be.
                Some(registered) => check_registered(registered, def),
                None => {
                    s.defs.insert(def.table.to_owned(), def.clone());
                    s.tables.entry(def.table.to_owned()).or_default();
                    Ok(())
                }
            }
        })
    }

    fn prepare_events(&self) -> BoxFuture<'_, Result<()>> {
        Box::pin(async { Ok(()) })
    }

    fn close(&self) -> BoxFuture<'_, ()> {
        Box::pin(async {})
    }

    fn as_any(&self) -> &dyn std::any::Any {
        self
    }
}

enum Guard {
    Read(OwnedRwLockReadGuard<State>),
    Write(OwnedRwLockWriteGuard<State>),
}

enum Undo {
    Row {
        table: String,
        key: Key,
        before: Option<Record>,
    },
    Appended {
        stream: String,
        count: usize,
    },
    Snapshot {
        stream: String,
        before: Option<Snapshot>,
    },
    Checkpoint {
        name: String,
        before: Option<(Checkpoint, i64)>,
    },
    OutboxRow {
        seq: u64,
        before: Option<StoredMessage>,
    },
    Lease {
        index: usize,
        before: PartitionLease,
    },
    Relay {
        name: String,
        before: Option<i64>,
    },
    Inbox {
        key: (String, Uuid),
        before: Option<i64>,
    },
    BlobRef {
        key: String,
        before: Option<BlobRef>,
    },
    BlobObject {
        object: String,
        before: Option<BlobObject>,
    },
}

struct MemoryTx {
    guard: Option<Guard>,
    undo: Vec<Undo>,
    savepoints: Vec<(String, usize)>,
    deadline: Option<Deadline>,
}

impl MemoryTx {
    fn state(&self) -> &State {
        match self.guard.as_ref() {
            Some(Guard::Read(g)) => g,
            Some(Guard::Write(g)) => g,
            None => unreachable_state(),
        }
    }

    fn state_mut(&mut self) -> Result<&mut State> {
        match self.guard.as_mut() {
            Some(Guard::Write(g)) => Ok(g),
            _ => Err(Error::ReadOnly { operation: "write" }),
        }
    }

    fn check(&self, op: &'static str) -> Result<()> {
        Deadline::check(self.deadline, op)
    }

    /// `def` is the definition its table was registered with (the layout of its rows).
    fn registered(&self, def: &EntityDef) -> Result<()> {
        match self.state().defs.get(def.table) {
            Some(registered) => check_registered(registered, def),
            None => Err(Error::NotRegistered {
                entity: def.name,
                table: def.table.to_owned(),
            }),
        }
    }

    fn table<'s>(&'s self, def: &EntityDef) -> Option<&'s BTreeMap<Key, Record>> {
        self.state().tables.get(def.table)
    }

    fn write(&mut self, def: &EntityDef, key: Key, after: Option<Record>) -> Result<()> {
        let table = def.table.to_owned();
        let rows = self.state_mut()?.tables.entry(table.clone()).or_default();
        let before = match after {
            Some(r) => rows.insert(key.clone(), r),
            None => rows.remove(&key),
        };
        self.undo.push(Undo::Row { table, key, before });
        Ok(())
    }

    fn undo_to(&mut self, mark: usize) {
        let entries: Vec<Undo> = self.undo.drain(mark..).collect();
        if let Some(Guard::Write(g)) = self.guard.as_mut() {
            for u in entries.into_iter().rev() {
                match u {
                    Undo::Row { table, key, before } => {
                        let rows = g.tables.entry(table).or_default();
                        match before {
                            Some(r) => {
                                rows.insert(key, r);
                            }
                            None => {
                                rows.remove(&key);
                            }
                        }
                    }
                    Undo::Appended { stream, count } => {
                        let log = &mut g.log;
                        for _ in 0..count {
                            if let Some(e) = log.events.pop() {
                                log.ids.remove(&e.event_id);
                            }
                        }
                        if let Some(v) = log.streams.get_mut(&stream) {
                            v.truncate(v.len().saturating_sub(count));
                            if v.is_empty() {
                                log.streams.remove(&stream);
                            }
                        }
                    }
                    Undo::Snapshot { stream, before } => match before {
                        Some(b) => {
                            g.log.snapshots.insert(stream, b);
                        }
                        None => {
                            g.log.snapshots.remove(&stream);
                        }
                    },
                    Undo::Checkpoint { name, before } => match before {
                        Some(b) => {
                            g.log.checkpoints.insert(name, b);
                        }
                        None => {
                            g.log.checkpoints.remove(&name);
                        }
                    },
                    Undo::OutboxRow { seq, before } => match before {
                        Some(b) => {
                            g.outbox.by_id.insert(b.id.0, seq);
                            g.outbox.rows.insert(seq, b);
                        }
                        None => {
                            if let Some(r) = g.outbox.rows.remove(&seq) {
                                g.outbox.by_id.remove(&r.id.0);
                            }
                        }
                    },
                    Undo::Lease { index, before } => {
                        if let Some(l) = g.outbox.leases.get_mut(index) {
                            *l = before;
                        }
                    }
                    Undo::Relay { name, before } => match before {
                        Some(b) => {
                            g.outbox.relays.insert(name, b);
                        }
                        None => {
                            g.outbox.relays.remove(&name);
                        }
                    },
                    Undo::Inbox { key, before } => match before {
                        Some(b) => {
                            g.outbox.inbox.insert(key, b);
                        }
                        None => {
                            g.outbox.inbox.remove(&key);
                        }
                    },
                    Undo::BlobRef { key, before } => match before {
                        Some(b) => {
                            g.blobs.refs.insert(key, b);
                        }
                        None => {
                            g.blobs.refs.remove(&key);
                        }
                    },
                    Undo::BlobObject { object, before } => match before {
                        Some(b) => {
                            g.blobs.objects.insert(object, b);
                        }
                        None => {
                            g.blobs.objects.remove(&object);
                        }
                    },
                }
            }
        }
    }

    fn matching(&self, def: &EntityDef, filter: &Pred) -> Vec<&Record> {
        self.table(def)
            .map(|t| {
                t.values()
                    .filter(|r| eval(filter, r) == Some(true))
                    .collect()
            })
            .unwrap_or_default()
    }

    fn run_select(&self, def: &EntityDef, plan: &Select) -> Vec<Record> {
        let mut rows = self.matching(def, &plan.filter);
        if let Some(after) = &plan.after {
            rows.retain(|r| is_after(r, after, &plan.order));
        }
        rows.sort_by(|a, b| compare(a, b, &plan.order));
        let skip = plan
            .offset
            .map_or(0, |o| usize::try_from(o).unwrap_or(usize::MAX));
        let take = plan
            .limit
            .map_or(usize::MAX, |l| usize::try_from(l).unwrap_or(usize::MAX));
        rows.into_iter().skip(skip).take(take).cloned().collect()
    }
}

/// `Ok` when `def` is the definition its table was registered with; otherwise the
/// differences, column by column, as a SQL backend reports a table that does not match.
fn check_registered(registered: &EntityDef, def: &EntityDef) -> Result<()> {
    if registered == def {
        return Ok(());
    }
    let mut diffs = Vec::new();
    let describe = |d: &EntityDef| {
        let mut cols: Vec<(&'static str, &'static str, bool, bool)> = vec![
            (d.id.column, d.id.ty.name(), d.id.nullable, true),
            (crate::entity::VERSION_COLUMN, "int", false, false),
        ];
        if d.storage == crate::entity::Storage::Document {
            cols.push((crate::entity::BODY_COLUMN, "json", false, false));
        }
        for f in &d.fields {
            cols.push((f.column, f.ty.name(), f.nullable, d.is_indexed(f)));
        }
        cols
    };
    let (found, expected) = (describe(registered), describe(def));
    let null = |n: bool| if n { "nullable" } else { "not null" };
    for (col, ty, nullable, indexed) in &expected {
        match found.iter().find(|f| f.0 == *col) {
            None => diffs.push(format!("column `{col}` ({ty}) is missing")),
            Some((_, fty, fnull, findexed)) => {
                if fty != ty {
                    diffs.push(format!("column `{col}` is {fty}, the entity needs {ty}"));
                }
                if fnull != nullable {
                    diffs.push(format!(
                        "column `{col}` is {}, the entity needs it {}",
                        null(*fnull),
                        null(*nullable)
                    ));
                }
                if *indexed && !findexed {
                    diffs.push(format!("column `{col}` has no index"));
                }
            }
        }
    }
    for (col, ..) in &found {
        if !expected.iter().any(|e| e.0 == *col) {
            diffs.push(format!("column `{col}` is not in the entity"));
        }
    }
    if diffs.is_empty() {
        // Same columns, other names or order: the rows' layout still differs.
        diffs.push("the fields are declared differently (names or order)".to_owned());
    }
    Err(Error::SchemaMismatch {
        entity: def.name,
        table: def.table.to_owned(),
        differences: diffs.join("; "),
    })
}

fn unreachable_state() -> ! {
    // The guard is only taken by commit/rollback, which consume the transaction.
    panic!("larder memory transaction used after it finished")
}

impl Drop for MemoryTx {
    fn drop(&mut self) {
        // Not committed: undo every write while we still hold the write lock.
        self.undo_to(0);
    }
}

impl Transaction for MemoryTx {
    fn set_deadline(&mut self, deadline: Option<Deadline>) {
        self.deadline = deadline;
    }

    fn insert<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check("repository.insert")?;
            self.registered(def)?;
            let key = Key(record.id.clone());
            if self.table(def).is_some_and(|t| t.contains_key(&key)) {
                return Err(Error::AlreadyExists {
                    entity: def.name,
                    id: record.id.display_id(),
                });
            }
            self.write(def, key, Some(record.clone()))
        })
    }

    fn update<'a>(
        &'a mut self,
        def: &'a EntityDef,
        record: &'a Record,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check("repository.update")?;
            self.registered(def)?;
            let key = Key(record.id.clone());
            let actual = self.table(def).and_then(|t| t.get(&key)).map(|r| r.version);
            if actual != Some(expected) {
                return Err(def.stale_write(&record.id, expected, actual));
            }
            self.write(def, key, Some(record.clone()))
        })
    }

    fn delete<'a>(
        &'a mut self,
        def: &'a EntityDef,
        id: &'a Value,
        expected: u64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.check("repository.delete")?;
            self.registered(def)?;
            let key = Key(id.clone());
            let actual = self.table(def).and_then(|t| t.get(&key)).map(|r| r.version);
            if actual != Some(expected) {
                return Err(def.stale_write(id, expected, actual));
            }
            self.write(def, key, None)
        })
    }

    fn get_many<'a>(
        &'a mut self,
        def: &'a EntityDef,
        ids: &'a [Value],
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            self.check("repository.get")?;
            self.registered(def)?;
            let Some(t) = self.table(def) else {
                return Ok(Vec::new());
            };
            // Each stored row at most once, however often its id is asked for: the SQL
            // backends' `WHERE id IN (…)` returns a row once too.
            let mut seen = std::collections::BTreeSet::new();
            Ok(ids
                .iter()
                .filter_map(|id| {
                    let key = Key(id.clone());
                    let row = t.get(&key)?;
                    seen.insert(key).then(|| row.clone())
                })
                .collect())
        })
    }

    fn count<'a>(&'a mut self, def: &'a EntityDef, filter: &'a Pred) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            self.check("repository.count")?;
            self.registered(def)?;
            Ok(self.matching(def, filter).len() as u64)
        })
    }

    fn select<'a>(
        &'a mut self,
        def: &'a EntityDef,
        plan: &'a Select,
    ) -> BoxFuture<'a, Result<Vec<Record>>> {
        Box::pin(async move {
            self.check("repository.find")?;
            self.registered(def)?;
            Ok(self.run_select(def, plan))
        })
    }

    fn stream<'a>(&'a mut self, def: &'a EntityDef, plan: Select) -> BoxStream<'a, Result<Record>> {
        let rows = match self
            .check("repository.stream")
            .and_then(|()| self.registered(def))
        {
            Ok(()) => self.run_select(def, &plan).into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        };
        Box::pin(futures_util::stream::iter(rows))
    }

    fn savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            self.savepoints.push((name.to_owned(), self.undo.len()));
            Ok(())
        })
    }

    fn release_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let pos = self.savepoints.iter().rposition(|(n, _)| n == name);
            match pos {
                Some(i) => {
                    self.savepoints.truncate(i);
                    Ok(())
                }
                None => Err(Error::InvalidQuery(format!("no savepoint `{name}`"))),
            }
        })
    }

    fn rollback_to_savepoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let pos = self.savepoints.iter().rposition(|(n, _)| n == name);
            match pos {
                Some(i) => {
                    let mark = self.savepoints[i].1;
                    self.savepoints.truncate(i + 1);
                    self.undo_to(mark);
                    Ok(())
                }
                None => Err(Error::InvalidQuery(format!("no savepoint `{name}`"))),
            }
        })
    }

    fn commit(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            Deadline::check(self.deadline, "uow.commit")?;
            self.undo.clear();
            self.guard = None;
            Ok(())
        })
    }

    fn rollback(mut self: Box<Self>) -> BoxFuture<'static, Result<()>> {
        Box::pin(async move {
            self.undo_to(0);
            self.guard = None;
            Ok(())
        })
    }

    fn events(&mut self) -> Option<&mut dyn EventTransaction> {
        Some(self)
    }

    fn outbox(&mut self) -> Option<&mut dyn OutboxTransaction> {
        Some(self)
    }

    fn blob_refs(&mut self) -> Option<&mut dyn BlobRefTransaction> {
        Some(self)
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl MemoryTx {
    fn log(&self) -> &EventLog {
        &self.state().log
    }

    fn set_checkpoint(&mut self, name: &str, value: Option<(Checkpoint, i64)>) -> Result<()> {
        let log = &mut self.state_mut()?.log;
        let before = match value {
            Some(v) => log.checkpoints.insert(name.to_owned(), v),
            None => log.checkpoints.remove(name),
        };
        self.undo.push(Undo::Checkpoint {
            name: name.to_owned(),
            before,
        });
        Ok(())
    }
}

fn ready<'a, T: Send + 'a>(r: Result<T>) -> BoxFuture<'a, Result<T>> {
    Box::pin(std::future::ready(r))
}

impl EventTransaction for MemoryTx {
    fn append<'a>(
        &'a mut self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<std::result::Result<(u64, Checkpoint), Option<u64>>>> {
        ready((|| {
            self.check("events.append")?;
            let current = self.log().streams.get(stream).map(|v| v.len() as u64);
            let ok = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => current.is_none(),
                ExpectedVersion::StreamExists => current.is_some(),
                ExpectedVersion::Exact(n) => current.unwrap_or(0) == n,
            };
            if !ok {
                return Ok(Err(current));
            }
            if events
                .iter()
                .any(|e| self.log().ids.contains_key(&e.event_id))
            {
                // A stored id: nothing is written; the event store tells "already
                // appended" from a conflict.
                return Ok(Err(current));
            }
            let log = &mut self.state_mut()?.log;
            let mut version = current.unwrap_or(0);
            let mut cp = Checkpoint::START;
            for e in events {
                version += 1;
                log.last_position += 1;
                cp = Checkpoint::new(0, log.last_position);
                let idx = log.events.len();
                log.events.push(RecordedEvent {
                    checkpoint: cp,
                    stream_id: stream.to_owned(),
                    stream_version: version,
                    event_id: e.event_id,
                    event_type: e.event_type.clone(),
                    schema_version: e.schema_version,
                    payload: e.payload.clone(),
                    metadata: e.metadata.clone(),
                    recorded_at_micros: e.recorded_at_micros,
                });
                log.ids.insert(e.event_id, idx);
                log.streams.entry(stream.to_owned()).or_default().push(idx);
            }
            self.undo.push(Undo::Appended {
                stream: stream.to_owned(),
                count: events.len(),
            });
            Ok(Ok((version, cp)))
        })())
    }

    fn find_events<'a>(
        &'a mut self,
        ids: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String, u64, Checkpoint)>>> {
        ready(self.check("events.append").map(|()| {
            let log = self.log();
            ids.iter()
                .filter_map(|id| log.ids.get(id))
                .map(|&i| {
                    let e = &log.events[i];
                    (
                        e.event_id,
                        e.stream_id.clone(),
                        e.stream_version,
                        e.checkpoint,
                    )
                })
                .collect()
        }))
    }

    fn read_stream<'a>(
        &'a mut self,
        stream: &'a str,
        from: u64,
        limit: u32,
        direction: ReadDirection,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        ready(self.check("events.read_stream").map(|()| {
            let log = self.log();
            let Some(idx) = log.streams.get(stream) else {
                return Vec::new();
            };
            let n = idx.len() as u64;
            let take = limit as usize;
            let pick = |i: &usize| log.events[*i].clone();
            match direction {
                ReadDirection::Forward => {
                    let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
                    idx.iter().skip(start).take(take).map(pick).collect()
                }
                ReadDirection::Backward => {
                    let end = usize::try_from(from.min(n)).unwrap_or(usize::MAX);
                    idx[..end].iter().rev().take(take).map(pick).collect()
                }
            }
        }))
    }

    fn read_all<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<ReadAllBatch>> {
        ready(self.check("events.read_all").map(|()| {
            let log = self.log();
            let start = log.events.partition_point(|e| e.checkpoint <= after);
            let events: Vec<RecordedEvent> = log.events[start..]
                .iter()
                .filter(|e| filter.matches(&e.stream_id, &e.event_type))
                .take(limit as usize)
                .cloned()
                .collect();
            let head = log.events.last().map(|e| e.checkpoint);
            ReadAllBatch { events, head }
        }))
    }

    fn stream_version<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<u64>>> {
        ready(
            self.check("events.stream_info")
                .map(|()| self.log().streams.get(stream).map(|v| v.len() as u64)),
        )
    }

    fn count_after<'a>(&'a mut self, after: Checkpoint, cap: u64) -> BoxFuture<'a, Result<u64>> {
        ready(self.check("events.count").map(|()| {
            let log = self.log();
            let start = log.events.partition_point(|e| e.checkpoint <= after);
            ((log.events.len() - start) as u64).min(cap)
        }))
    }

    fn stats(&mut self) -> BoxFuture<'_, Result<LogStats>> {
        ready(self.check("events.stats").map(|()| {
            let log = self.log();
            LogStats {
                events: log.events.len() as u64,
                streams: log.streams.len() as u64,
                head: log
                    .events
                    .last()
                    .map_or(Checkpoint::START, |e| e.checkpoint),
            }
        }))
    }

    fn load_snapshot<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        ready(
            self.check("events.load_snapshot")
                .map(|()| self.log().snapshots.get(stream).cloned()),
        )
    }

    fn save_snapshot<'a>(&'a mut self, snapshot: &'a Snapshot) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.check("events.save_snapshot")?;
            let log = &mut self.state_mut()?.log;
            let before = log
                .snapshots
                .insert(snapshot.stream_id.clone(), snapshot.clone());
            self.undo.push(Undo::Snapshot {
                stream: snapshot.stream_id.clone(),
                before,
            });
            Ok(())
        })())
    }

    fn load_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        ready(
            self.check("events.load_checkpoint")
                .map(|()| self.log().checkpoints.get(name).map(|c| c.0)),
        )
    }

    fn claim_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        ready((|| {
            self.check("events.claim_checkpoint")?;
            // Writers are exclusive: holding the write lock is the claim.
            if let Some(c) = self.log().checkpoints.get(name) {
                return Ok(c.0);
            }
            self.set_checkpoint(name, Some((Checkpoint::START, now_micros)))?;
            Ok(Checkpoint::START)
        })())
    }

    fn save_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        checkpoint: Checkpoint,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<()>> {
        ready(
            self.check("events.save_checkpoint")
                .and_then(|()| self.set_checkpoint(name, Some((checkpoint, now_micros)))),
        )
    }

    fn delete_checkpoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        ready(
            self.check("events.delete_checkpoint")
                .and_then(|()| self.set_checkpoint(name, None)),
        )
    }

    fn list_checkpoints(&mut self) -> BoxFuture<'_, Result<Vec<StoredCheckpoint>>> {
        ready(self.check("events.list_checkpoints").map(|()| {
            self.log()
                .checkpoints
                .iter()
                .map(|(name, (cp, at))| StoredCheckpoint {
                    name: name.clone(),
                    checkpoint: *cp,
                    updated_at_micros: *at,
                })
                .collect()
        }))
    }
}

impl MemoryTx {
    fn ob(&self) -> &OutboxMem {
        &self.state().outbox
    }

    /// Replaces (or removes) an outbox row, recording the undo.
    fn put_row(&mut self, seq: u64, row: Option<StoredMessage>) -> Result<()> {
        let ob = &mut self.state_mut()?.outbox;
        let before = match row {
            Some(r) => {
                ob.by_id.insert(r.id.0, seq);
                ob.rows.insert(seq, r)
            }
            None => {
                let b = ob.rows.remove(&seq);
                if let Some(b) = &b {
                    ob.by_id.remove(&b.id.0);
                }
                b
            }
        };
        self.undo.push(Undo::OutboxRow { seq, before });
        Ok(())
    }

    fn row_of(&self, id: Uuid) -> Option<(u64, StoredMessage)> {
        let seq = *self.ob().by_id.get(&id)?;
        self.ob().rows.get(&seq).map(|r| (seq, r.clone()))
    }

    fn ensure_leases(&mut self) -> Result<()> {
        let ob = &mut self.state_mut()?.outbox;
        if ob.leases.is_empty() {
            // Created once, like the SQL migration's rows (not part of any undo).
            ob.leases = (0..MEMORY_PARTITIONS)
                .map(|p| PartitionLease {
                    partition: p,
                    owner: None,
                    until_micros: 0,
                })
                .collect();
        }
        Ok(())
    }

    fn set_lease(&mut self, index: usize, lease: PartitionLease) -> Result<()> {
        let ob = &mut self.state_mut()?.outbox;
        let before = std::mem::replace(&mut ob.leases[index], lease);
        self.undo.push(Undo::Lease { index, before });
        Ok(())
    }
}

impl OutboxTransaction for MemoryTx {
    fn partitions(&self) -> u32 {
        MEMORY_PARTITIONS
    }

    fn enqueue<'a>(&'a mut self, messages: &'a [NewMessage]) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.check("outbox.enqueue")?;
            self.state_mut()?;
            if let Some(m) = messages
                .iter()
                .find(|m| self.ob().by_id.contains_key(&m.id))
            {
                return Err(Error::AlreadyExists {
                    entity: "message",
                    id: m.id.to_string(),
                });
            }
            for m in messages {
                let seq = {
                    let ob = &mut self.state_mut()?.outbox;
                    ob.last_seq += 1;
                    ob.last_seq
                };
                let row = StoredMessage {
                    id: MessageId(m.id),
                    topic: m.topic.clone(),
                    key: m.key.clone(),
                    partition: m.partition,
                    payload: m.payload.clone(),
                    headers: decode_headers(m.headers.as_deref())?,
                    seq: Checkpoint::new(0, seq),
                    state: MessageState::Pending,
                    attempts: 0,
                    last_error: None,
                    enqueued_at_micros: m.enqueued_at_micros,
                    // Due at once (see the SQL backend: never attempted, never held).
                    due_at_micros: 0,
                    done_at_micros: None,
                };
                self.put_row(seq, Some(row))?;
            }
            Ok(())
        })())
    }

    fn fetch_ready<'a>(
        &'a mut self,
        partitions: &'a [u32],
        now_micros: i64,
        limit: u32,
        exclude: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        ready((|| {
            self.check("outbox.fetch")?;
            let exclude: std::collections::HashSet<&Uuid> = exclude.iter().collect();
            let mut blocked: std::collections::HashSet<&str> = Default::default();
            let mut out = Vec::new();
            for r in self.ob().rows.values() {
                if out.len() >= limit as usize {
                    break;
                }
                if !partitions.contains(&r.partition) || exclude.contains(&r.id.0) {
                    continue;
                }
                let key = r.key.as_deref();
                if key.is_some_and(|k| blocked.contains(k)) {
                    continue;
                }
                match r.state {
                    MessageState::Dead => {
                        if let Some(k) = key {
                            blocked.insert(k);
                        }
                    }
                    MessageState::Pending if r.due_at_micros > now_micros => {
                        if let Some(k) = key {
                            blocked.insert(k);
                        }
                    }
                    MessageState::Pending => out.push(r.clone()),
                    _ => {}
                }
            }
            Ok(out)
        })())
    }

    fn delete_delivered<'a>(&'a mut self, ids: &'a [Uuid]) -> BoxFuture<'a, Result<u64>> {
        ready((|| {
            self.check("outbox.mark")?;
            let mut n = 0;
            for id in ids {
                if let Some((seq, r)) = self.row_of(*id)
                    && r.state == MessageState::Pending
                {
                    self.put_row(seq, None)?;
                    n += 1;
                }
            }
            Ok(n)
        })())
    }

    fn mark_delivered<'a>(
        &'a mut self,
        ids: &'a [Uuid],
        now_micros: i64,
    ) -> BoxFuture<'a, Result<u64>> {
        ready((|| {
            self.check("outbox.mark")?;
            let mut n = 0;
            for id in ids {
                if let Some((seq, mut r)) = self.row_of(*id)
                    && r.state == MessageState::Pending
                {
                    r.state = MessageState::Delivered;
                    r.done_at_micros = Some(now_micros);
                    self.put_row(seq, Some(r))?;
                    n += 1;
                }
            }
            Ok(n)
        })())
    }

    fn mark_failed<'a>(
        &'a mut self,
        failures: &'a [Failure],
        now_micros: i64,
    ) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.check("outbox.mark")?;
            for f in failures {
                if let Some((seq, mut r)) = self.row_of(f.id)
                    && r.state == MessageState::Pending
                {
                    if f.count_attempt {
                        r.attempts += 1;
                    }
                    r.last_error = Some(f.error.clone());
                    r.due_at_micros = f.due_at_micros;
                    if f.dead {
                        r.state = MessageState::Dead;
                        r.done_at_micros = Some(now_micros);
                    }
                    self.put_row(seq, Some(r))?;
                }
            }
            Ok(())
        })())
    }

    fn heartbeat<'a>(
        &'a mut self,
        relay: &'a str,
        now_micros: i64,
        live_after_micros: i64,
    ) -> BoxFuture<'a, Result<u32>> {
        ready((|| {
            self.check("outbox.lease")?;
            let stale: Vec<String> = self
                .ob()
                .relays
                .iter()
                .filter(|(n, t)| **t < live_after_micros && n.as_str() != relay)
                .map(|(n, _)| n.clone())
                .collect();
            for name in stale {
                let before = self.state_mut()?.outbox.relays.remove(&name);
                self.undo.push(Undo::Relay { name, before });
            }
            let before = self
                .state_mut()?
                .outbox
                .relays
                .insert(relay.to_owned(), now_micros);
            self.undo.push(Undo::Relay {
                name: relay.to_owned(),
                before,
            });
            Ok(u32::try_from(self.ob().relays.len()).unwrap_or(u32::MAX))
        })())
    }

    fn leases(&mut self) -> BoxFuture<'_, Result<Vec<PartitionLease>>> {
        ready((|| {
            if self.ob().leases.is_empty() {
                if matches!(self.guard, Some(Guard::Write(_))) {
                    self.ensure_leases()?;
                } else {
                    return Ok((0..MEMORY_PARTITIONS)
                        .map(|p| PartitionLease {
                            partition: p,
                            owner: None,
                            until_micros: 0,
                        })
                        .collect());
                }
            }
            Ok(self.ob().leases.clone())
        })())
    }

    fn take_partitions<'a>(
        &'a mut self,
        relay: &'a str,
        partitions: &'a [u32],
        now_micros: i64,
        until_micros: i64,
    ) -> BoxFuture<'a, Result<Vec<u32>>> {
        ready((|| {
            self.ensure_leases()?;
            let mut taken = Vec::new();
            for p in partitions {
                let Some(i) = self.ob().leases.iter().position(|l| l.partition == *p) else {
                    continue;
                };
                let l = &self.ob().leases[i];
                if l.owner.as_deref() == Some(relay) || l.until_micros < now_micros {
                    self.set_lease(
                        i,
                        PartitionLease {
                            partition: *p,
                            owner: Some(relay.to_owned()),
                            until_micros,
                        },
                    )?;
                    taken.push(*p);
                }
            }
            Ok(taken)
        })())
    }

    fn release_partitions<'a>(
        &'a mut self,
        relay: &'a str,
        partitions: Option<&'a [u32]>,
    ) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.ensure_leases()?;
            let idx: Vec<usize> = self
                .ob()
                .leases
                .iter()
                .enumerate()
                .filter(|(_, l)| {
                    l.owner.as_deref() == Some(relay)
                        && partitions.is_none_or(|ps| ps.contains(&l.partition))
                })
                .map(|(i, _)| i)
                .collect();
            for i in idx {
                let partition = self.ob().leases[i].partition;
                self.set_lease(
                    i,
                    PartitionLease {
                        partition,
                        owner: None,
                        until_micros: 0,
                    },
                )?;
            }
            if partitions.is_none() {
                let before = self.state_mut()?.outbox.relays.remove(relay);
                self.undo.push(Undo::Relay {
                    name: relay.to_owned(),
                    before,
                });
            }
            Ok(())
        })())
    }

    fn counts(&mut self) -> BoxFuture<'_, Result<OutboxCounts>> {
        ready({
            let mut c = OutboxCounts::default();
            let mut dead_keys: std::collections::HashSet<&str> = Default::default();
            for r in self.ob().rows.values() {
                match r.state {
                    MessageState::Pending => {
                        if r.key.as_deref().is_some_and(|k| dead_keys.contains(k)) {
                            c.parked += 1;
                        } else {
                            c.pending += 1;
                        }
                        c.oldest_pending_micros = Some(
                            c.oldest_pending_micros
                                .map_or(r.enqueued_at_micros, |o| o.min(r.enqueued_at_micros)),
                        );
                        c.max_attempts_pending = c.max_attempts_pending.max(r.attempts);
                    }
                    MessageState::Dead => {
                        c.dead += 1;
                        if let Some(k) = r.key.as_deref() {
                            dead_keys.insert(k);
                        }
                    }
                    MessageState::Delivered => c.delivered += 1,
                    MessageState::Skipped => c.skipped += 1,
                }
            }
            Ok(c)
        })
    }

    fn list<'a>(
        &'a mut self,
        state: MessageState,
        after: Option<Uuid>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<StoredMessage>>> {
        ready((|| {
            let from = match after {
                Some(a) => match self.ob().by_id.get(&a) {
                    Some(s) => *s,
                    None => return Ok(Vec::new()),
                },
                None => 0,
            };
            Ok(self
                .ob()
                .rows
                .range(from + 1..)
                .map(|(_, r)| r)
                .filter(|r| r.state == state)
                .take(limit as usize)
                .cloned()
                .collect())
        })())
    }

    fn get<'a>(&'a mut self, id: Uuid) -> BoxFuture<'a, Result<Option<StoredMessage>>> {
        ready(Ok(self.row_of(id).map(|(_, r)| r)))
    }

    fn set_state<'a>(
        &'a mut self,
        id: Uuid,
        from: MessageState,
        to: MessageState,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        ready((|| {
            let Some((seq, mut r)) = self.row_of(id) else {
                return Ok(false);
            };
            if r.state != from {
                return Ok(false);
            }
            r.state = to;
            if to == MessageState::Pending {
                r.attempts = 0;
                r.due_at_micros = 0;
                r.done_at_micros = None;
            } else {
                r.done_at_micros = Some(now_micros);
            }
            self.put_row(seq, Some(r))?;
            Ok(true)
        })())
    }

    fn purge<'a>(&'a mut self, before_micros: i64, limit: u32) -> BoxFuture<'a, Result<u64>> {
        ready((|| {
            let seqs: Vec<u64> = self
                .ob()
                .rows
                .iter()
                .filter(|(_, r)| {
                    matches!(r.state, MessageState::Delivered | MessageState::Skipped)
                        && r.done_at_micros.is_some_and(|d| d < before_micros)
                })
                .map(|(s, _)| *s)
                .take(limit as usize)
                .collect();
            for s in &seqs {
                self.put_row(*s, None)?;
            }
            Ok(seqs.len() as u64)
        })())
    }

    fn inbox_record<'a>(
        &'a mut self,
        consumer: &'a str,
        message: Uuid,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<bool>> {
        ready((|| {
            let key = (consumer.to_owned(), message);
            if self.ob().inbox.contains_key(&key) {
                return Ok(false);
            }
            self.state_mut()?
                .outbox
                .inbox
                .insert(key.clone(), now_micros);
            self.undo.push(Undo::Inbox { key, before: None });
            Ok(true)
        })())
    }

    fn inbox_purge<'a>(&'a mut self, before_micros: i64, limit: u32) -> BoxFuture<'a, Result<u64>> {
        ready((|| {
            let keys: Vec<(String, Uuid)> = self
                .ob()
                .inbox
                .iter()
                .filter(|(_, t)| **t < before_micros)
                .map(|(k, _)| k.clone())
                .take(limit as usize)
                .collect();
            for key in &keys {
                let before = self.state_mut()?.outbox.inbox.remove(key);
                self.undo.push(Undo::Inbox {
                    key: key.clone(),
                    before,
                });
            }
            Ok(keys.len() as u64)
        })())
    }
}

impl MemoryTx {
    fn set_blob_ref(&mut self, key: &str, r: Option<BlobRef>) -> Result<Option<BlobRef>> {
        let refs = &mut self.state_mut()?.blobs.refs;
        let before = match r {
            Some(r) => refs.insert(key.to_owned(), r),
            None => refs.remove(key),
        };
        self.undo.push(Undo::BlobRef {
            key: key.to_owned(),
            before: before.clone(),
        });
        Ok(before)
    }

    fn set_blob_object(&mut self, object: &str, o: Option<BlobObject>) -> Result<()> {
        let objects = &mut self.state_mut()?.blobs.objects;
        let before = match o {
            Some(o) => objects.insert(object.to_owned(), o),
            None => objects.remove(object),
        };
        self.undo.push(Undo::BlobObject {
            object: object.to_owned(),
            before,
        });
        Ok(())
    }
}

impl BlobRefTransaction for MemoryTx {
    fn acquire<'a>(
        &'a mut self,
        object: &'a str,
        create: Option<(u64, i64)>,
    ) -> BoxFuture<'a, Result<Option<u64>>> {
        ready((|| {
            self.check("blob.acquire")?;
            self.state_mut()?;
            let next = match (self.state().blobs.objects.get(object), create) {
                (Some(o), _) if o.claimed => return Ok(None),
                (Some(o), _) => BlobObject {
                    refs: o.refs + 1,
                    ..*o
                },
                (None, Some((_, now))) => BlobObject {
                    refs: 1,
                    claimed: false,
                    created_micros: now,
                },
                (None, None) => return Ok(None),
            };
            self.set_blob_object(object, Some(next))?;
            Ok(Some(next.refs))
        })())
    }

    fn release<'a>(&'a mut self, object: &'a str) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.state_mut()?;
            if let Some(o) = self.state().blobs.objects.get(object).copied()
                && o.refs > 0
            {
                let next = BlobObject {
                    refs: o.refs - 1,
                    ..o
                };
                self.set_blob_object(object, Some(next))?;
            }
            Ok(())
        })())
    }

    fn claim<'a>(&'a mut self, object: &'a str, now_micros: i64) -> BoxFuture<'a, Result<bool>> {
        ready((|| {
            self.check("blob.claim")?;
            self.state_mut()?;
            let next = match self.state().blobs.objects.get(object).copied() {
                Some(o) if o.refs > 0 => return Ok(false),
                Some(o) if o.claimed => return Ok(true),
                Some(o) => BlobObject { claimed: true, ..o },
                None => BlobObject {
                    refs: 0,
                    claimed: true,
                    created_micros: now_micros,
                },
            };
            self.set_blob_object(object, Some(next))?;
            Ok(true)
        })())
    }

    fn forget<'a>(&'a mut self, object: &'a str) -> BoxFuture<'a, Result<()>> {
        ready((|| {
            self.state_mut()?;
            if self
                .state()
                .blobs
                .objects
                .get(object)
                .is_some_and(|o| o.claimed)
            {
                self.set_blob_object(object, None)?;
            }
            Ok(())
        })())
    }

    fn unreferenced<'a>(
        &'a mut self,
        before_micros: i64,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<String>>> {
        ready(Ok(self
            .state()
            .blobs
            .objects
            .iter()
            .filter(|(_, o)| o.refs == 0 && o.created_micros < before_micros)
            .take(limit as usize)
            .map(|(k, _)| k.clone())
            .collect()))
    }

    fn put_ref<'a>(
        &'a mut self,
        r: &'a BlobRef,
        replace: bool,
    ) -> BoxFuture<'a, Result<Option<String>>> {
        ready((|| {
            self.check("blob.put_ref")?;
            self.state_mut()?;
            if !replace && self.state().blobs.refs.contains_key(&r.key) {
                return Err(Error::AlreadyExists {
                    entity: "blob",
                    id: r.key.clone(),
                });
            }
            Ok(self
                .set_blob_ref(&r.key, Some(r.clone()))?
                .map(|b| b.object))
        })())
    }

    fn delete_ref<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<String>>> {
        ready((|| {
            self.check("blob.delete_ref")?;
            self.state_mut()?;
            if !self.state().blobs.refs.contains_key(key) {
                return Ok(None);
            }
            Ok(self.set_blob_ref(key, None)?.map(|b| b.object))
        })())
    }

    fn get_ref<'a>(&'a mut self, key: &'a str) -> BoxFuture<'a, Result<Option<BlobRef>>> {
        ready((|| {
            self.check("blob.get_ref")?;
            Ok(self.state().blobs.refs.get(key).cloned())
        })())
    }

    fn list_refs<'a>(
        &'a mut self,
        prefix: &'a str,
        after: Option<&'a str>,
        limit: u32,
    ) -> BoxFuture<'a, Result<Vec<BlobRef>>> {
        ready((|| {
            self.check("blob.list_refs")?;
            let start = match after {
                Some(a) if a >= prefix => std::ops::Bound::Excluded(a),
                _ => std::ops::Bound::Included(prefix),
            };
            Ok(self
                .state()
                .blobs
                .refs
                .range::<str, _>((start, std::ops::Bound::Unbounded))
                .take_while(|(k, _)| k.starts_with(prefix))
                .take(limit as usize)
                .map(|(_, r)| r.clone())
                .collect())
        })())
    }

    fn usage<'a>(&'a mut self, prefix: &'a str) -> BoxFuture<'a, Result<(u64, u64)>> {
        ready((|| {
            self.check("blob.usage")?;
            let (mut n, mut bytes) = (0u64, 0u64);
            for (_, r) in self
                .state()
                .blobs
                .refs
                .range::<str, _>((
                    std::ops::Bound::Included(prefix),
                    std::ops::Bound::Unbounded,
                ))
                .take_while(|(k, _)| k.starts_with(prefix))
            {
                n += 1;
                bytes += r.size;
            }
            Ok((n, bytes))
        })())
    }
}
