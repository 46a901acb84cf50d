//! The event store's primitives on any SQL dialect: stream reads, snapshots and
//! checkpoints are written once here; appends and the global log's reads come from the
//! dialect's [`LogDialect`] (they are where databases genuinely differ).

use std::sync::{Arc, OnceLock};

use larder_core::backend::BoxFuture;
use larder_core::events::{
    Checkpoint, EventFilter, EventRef, EventRows, EventTransaction, EventVisitor, ExpectedVersion,
    HorizonHolder, LogStats, NewEvent, ReadAllBatch, ReadDirection, RecordedEvent, RowsBatch,
    Snapshot, StoredCheckpoint, VisitedBatch,
};
use larder_core::{Error, Result};
use sea_query::Value as V;
use uuid::Uuid;

use crate::compile::{Built, Dialect};
use crate::dialect::{LogDialect, RowOf, SqlDialect, SqlRow};
use crate::tx::{Kind, SqlTx};

/// A statement text of dialect `D`, built once per dialect and process (statics in generic
/// functions are shared by every instantiation, hence one cell per dialect).
macro_rules! per_dialect {
    ($d:ty, $build:expr) => {{
        static CELLS: [OnceLock<Arc<str>>; Dialect::COUNT] =
            [const { OnceLock::new() }; Dialect::COUNT];
        CELLS[<$d as SqlDialect>::DIALECT.index()]
            .get_or_init(|| Arc::from($build))
            .clone()
    }};
}

/// A stored (non-negative) integer as `u64`.
pub fn u64_of<D: SqlDialect>(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::backend(D::BACKEND, format!("negative {what}")))
}

/// A `u64` as a bound integer (saturating).
pub fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn int(v: i64) -> V {
    V::BigInt(Some(v))
}

fn text(s: &str) -> V {
    V::String(Some(s.to_owned()))
}

/// A column that must not be `NULL`.
fn required<T>(v: Option<T>, what: &str, backend: &'static str) -> Result<T> {
    v.ok_or_else(|| Error::backend(backend, format!("unexpected NULL {what}")))
}

/// Reads an integer column that must be present.
pub fn req_int<D: SqlDialect>(
    r: &impl SqlRow<D>,
    i: usize,
    op: &'static str,
    what: &str,
) -> Result<i64> {
    required(r.int(i).map_err(|e| D::map(e, op))?, what, D::BACKEND)
}

/// Reads a checkpoint from the `(tx, position)` columns at `at`.
pub fn checkpoint_at<D: SqlDialect>(
    r: &impl SqlRow<D>,
    at: usize,
    op: &'static str,
) -> Result<Checkpoint> {
    Ok(Checkpoint::new(
        u64_of::<D>(req_int::<D>(r, at, op, "tx")?, "tx")?,
        u64_of::<D>(req_int::<D>(r, at + 1, op, "position")?, "position")?,
    ))
}

/// Decodes the columns of [`LogDialect::EVENT_COLUMNS`] starting at column `at` into an
/// owned event (see [`decode_event_ref`]).
pub fn decode_event<D: SqlDialect>(
    r: &impl SqlRow<D>,
    at: usize,
    op: &'static str,
) -> Result<RecordedEvent> {
    decode_event_ref::<D>(r, at, op).map(|e| e.to_owned())
}

/// A page of the global log as the driver's rows (see
/// [`EventTransaction::read_all_rows`]): each event is decoded when asked for.
struct LogPageRows<D: SqlDialect> {
    rows: Vec<RowOf<D>>,
    at: usize,
}

impl<D: SqlDialect> EventRows for LogPageRows<D> {
    fn len(&self) -> usize {
        self.rows.len()
    }

    fn event(&self, i: usize) -> Result<EventRef<'_>> {
        decode_event_ref::<D>(&self.rows[i], self.at, "events.read_all")
    }
}

/// Decodes the columns of [`LogDialect::EVENT_COLUMNS`] starting at column `at`, borrowing
/// the text columns from the row.
pub fn decode_event_ref<'r, D: SqlDialect>(
    r: &'r impl SqlRow<D>,
    at: usize,
    op: &'static str,
) -> Result<EventRef<'r>> {
    let m = |e| D::map(e, op);
    let b = D::BACKEND;
    let event_id = r
        .uuid(at + 4)
        .map_err(|e| Error::backend(b, format!("stored event id is not a uuid: {e}")))?;
    Ok(EventRef {
        checkpoint: Checkpoint::new(
            u64_of::<D>(req_int::<D>(r, at + 1, op, "tx")?, "tx")?,
            u64_of::<D>(req_int::<D>(r, at, op, "position")?, "position")?,
        ),
        stream_id: required(r.text_ref(at + 2).map_err(m)?, "stream id", b)?,
        stream_version: u64_of::<D>(req_int::<D>(r, at + 3, op, "version")?, "version")?,
        event_id: required(event_id, "event id", b)?,
        event_type: required(r.text_ref(at + 5).map_err(m)?, "event type", b)?,
        schema_version: u32::try_from(req_int::<D>(r, at + 6, op, "schema version")?).unwrap_or(0),
        payload: required(r.text_ref(at + 7).map_err(m)?, "payload", b)?,
        metadata: r.text_ref(at + 8).map_err(m)?,
        recorded_at_micros: req_int::<D>(r, at + 9, op, "recorded_at")?,
    })
}

impl<D: LogDialect> SqlTx<D> {
    /// Runs an event-log query that only reads (shared statements use `$n` placeholders:
    /// both dialects accept them).
    async fn ev_rows(
        &mut self,
        sql: Arc<str>,
        values: Vec<V>,
        op: &'static str,
    ) -> Result<Vec<crate::dialect::RowOf<D>>> {
        self.fetch(Built { sql, values }, op, Kind::EventRead).await
    }

    async fn ev_exec(&mut self, sql: Arc<str>, values: Vec<V>, op: &'static str) -> Result<u64> {
        self.execute(Built { sql, values }, op, Kind::Event).await
    }
}

impl<D: LogDialect> EventTransaction for SqlTx<D> {
    fn append<'a>(
        &'a mut self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<std::result::Result<(u64, Checkpoint), Option<u64>>>> {
        D::append(self, stream, expected, events)
    }

    fn find_events<'a>(
        &'a mut self,
        ids: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String, u64, Checkpoint)>>> {
        D::find_events(self, ids)
    }

    fn read_stream<'a>(
        &'a mut self,
        stream: &'a str,
        from: u64,
        limit: u32,
        direction: ReadDirection,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(async move {
            let sql = match direction {
                ReadDirection::Forward => per_dialect!(
                    D,
                    format!(
                        "SELECT {} FROM larder_events WHERE stream_id = $1 AND \
                         stream_version >= $2 ORDER BY stream_version LIMIT $3",
                        D::EVENT_COLUMNS
                    )
                ),
                ReadDirection::Backward => per_dialect!(
                    D,
                    format!(
                        "SELECT {} FROM larder_events WHERE stream_id = $1 AND \
                         stream_version <= $2 ORDER BY stream_version DESC LIMIT $3",
                        D::EVENT_COLUMNS
                    )
                ),
            };
            let op = "events.read_stream";
            let values = vec![text(stream), int(i64_of(from)), int(i64::from(limit))];
            let rows = self.ev_rows(sql, values, op).await?;
            rows.iter().map(|r| decode_event::<D>(r, 0, op)).collect()
        })
    }

    fn read_all<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<ReadAllBatch>> {
        Box::pin(async move {
            let op = "events.read_all";
            let page = D::read_all_rows(self, after, limit, filter).await?;
            let mut events = Vec::with_capacity(page.rows.len());
            for r in &page.rows {
                if SqlRow::<D>::int(r, page.at)
                    .map_err(|e| D::map(e, op))?
                    .is_some()
                {
                    events.push(decode_event::<D>(r, page.at, op)?);
                }
            }
            Ok(ReadAllBatch {
                events,
                head: page.head,
            })
        })
    }

    fn read_all_each<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
        visit: &'a mut EventVisitor<'_>,
    ) -> BoxFuture<'a, Result<VisitedBatch>> {
        Box::pin(async move {
            let op = "events.read_all";
            let page = D::read_all_rows(self, after, limit, filter).await?;
            let mut out = VisitedBatch {
                head: page.head,
                ..VisitedBatch::default()
            };
            for r in &page.rows {
                if SqlRow::<D>::int(r, page.at)
                    .map_err(|e| D::map(e, op))?
                    .is_some()
                {
                    let e = decode_event_ref::<D>(r, page.at, op)?;
                    out.count += 1;
                    out.last = Some(e.checkpoint);
                    visit(e)?;
                }
            }
            Ok(out)
        })
    }

    fn read_all_rows<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<RowsBatch>> {
        Box::pin(async move {
            let op = "events.read_all";
            let page = D::read_all_rows(self, after, limit, filter).await?;
            let at = page.at;
            let mut rows = page.rows;
            // A row without a position carries no event (a page that only reports the head).
            let mut bad = None;
            rows.retain(|r| match SqlRow::<D>::int(r, at) {
                Ok(position) => position.is_some(),
                Err(e) => {
                    bad.get_or_insert(e);
                    true
                }
            });
            if let Some(e) = bad {
                return Err(D::map(e, op));
            }
            let last = match rows.last() {
                Some(r) => Some(decode_event_ref::<D>(r, at, op)?.checkpoint),
                None => None,
            };
            Ok(RowsBatch {
                rows: Box::new(LogPageRows::<D> { rows, at }),
                last,
                head: page.head,
            })
        })
    }

    fn stream_version<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let op = "events.stream_info";
            let b = Built {
                sql: per_dialect!(D, D::STREAM_VERSION),
                values: vec![text(stream)],
            };
            self.fetch_int(b, op, Kind::EventRead)
                .await?
                .map(|v| u64_of::<D>(v, "version"))
                .transpose()
        })
    }

    fn count_after<'a>(&'a mut self, after: Checkpoint, cap: u64) -> BoxFuture<'a, Result<u64>> {
        D::count_after(self, after, cap)
    }

    fn stats(&mut self) -> BoxFuture<'_, Result<LogStats>> {
        D::stats(self)
    }

    fn horizon_holder(&mut self) -> BoxFuture<'_, Result<Option<HorizonHolder>>> {
        D::horizon_holder(self)
    }

    fn load_snapshot<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        Box::pin(async move {
            let op = "events.load_snapshot";
            let sql = per_dialect!(
                D,
                "SELECT stream_version, schema_version, CAST(state AS TEXT) FROM larder_snapshots \
                 WHERE stream_id = $1"
            );
            let rows = self.ev_rows(sql, vec![text(stream)], op).await?;
            let Some(r) = rows.first() else {
                return Ok(None);
            };
            Ok(Some(Snapshot {
                stream_id: stream.to_owned(),
                stream_version: u64_of::<D>(req_int::<D>(r, 0, op, "version")?, "version")?,
                schema_version: u32::try_from(req_int::<D>(r, 1, op, "schema version")?)
                    .unwrap_or(0),
                state: required(r.text(2).map_err(|e| D::map(e, op))?, "state", D::BACKEND)?,
            }))
        })
    }

    fn save_snapshot<'a>(&'a mut self, s: &'a Snapshot) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sql = per_dialect!(
                D,
                format!(
                    "INSERT INTO larder_snapshots (stream_id, stream_version, schema_version, \
                     state, taken_at) VALUES ($1, $2, $3, $4{}, $5) ON CONFLICT (stream_id) DO \
                     UPDATE SET stream_version = excluded.stream_version, schema_version = \
                     excluded.schema_version, state = excluded.state, taken_at = \
                     excluded.taken_at",
                    D::JSON_PARAM
                )
            );
            let values = vec![
                text(&s.stream_id),
                int(i64_of(s.stream_version)),
                V::Int(Some(i32::try_from(s.schema_version).unwrap_or(i32::MAX))),
                text(&s.state),
                int(larder_core::events::now_micros()),
            ];
            self.ev_exec(sql, values, "events.save_snapshot")
                .await
                .map(drop)
        })
    }

    fn load_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        Box::pin(async move {
            let op = "events.load_checkpoint";
            let sql = per_dialect!(
                D,
                "SELECT tx, position FROM larder_checkpoints WHERE name = $1"
            );
            let rows = self.ev_rows(sql, vec![text(name)], op).await?;
            rows.first()
                .map(|r| checkpoint_at::<D>(r, 0, op))
                .transpose()
        })
    }

    fn claim_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        Box::pin(async move {
            let op = "events.claim_checkpoint";
            let insert = per_dialect!(
                D,
                "INSERT INTO larder_checkpoints (name, tx, position, updated_at) \
                 VALUES ($1, 0, 0, $2) ON CONFLICT (name) DO NOTHING"
            );
            self.ev_exec(insert, vec![text(name), int(now_micros)], op)
                .await?;
            // Locked until the unit of work ends: one runner of a projection at a time.
            let claim = per_dialect!(
                D,
                format!(
                    "SELECT tx, position FROM larder_checkpoints WHERE name = $1{}",
                    D::LOCK_ROW
                )
            );
            let rows = self
                .fetch(
                    Built {
                        sql: claim,
                        values: vec![text(name)],
                    },
                    op,
                    Kind::Event,
                )
                .await?;
            let r = rows
                .first()
                .ok_or_else(|| Error::backend(D::BACKEND, "claimed checkpoint vanished"))?;
            checkpoint_at::<D>(r, 0, op)
        })
    }

    fn save_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        cp: Checkpoint,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sql = per_dialect!(
                D,
                "INSERT INTO larder_checkpoints (name, tx, position, updated_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT (name) DO UPDATE SET tx = excluded.tx, \
                 position = excluded.position, updated_at = excluded.updated_at"
            );
            let values = vec![
                text(name),
                int(i64_of(cp.tx())),
                int(i64_of(cp.position())),
                int(now_micros),
            ];
            self.ev_exec(sql, values, "events.save_checkpoint")
                .await
                .map(drop)
        })
    }

    fn delete_checkpoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let sql = per_dialect!(D, "DELETE FROM larder_checkpoints WHERE name = $1");
            self.ev_exec(sql, vec![text(name)], "events.delete_checkpoint")
                .await
                .map(drop)
        })
    }

    fn list_checkpoints(&mut self) -> BoxFuture<'_, Result<Vec<StoredCheckpoint>>> {
        Box::pin(async move {
            let op = "events.list_checkpoints";
            let sql = per_dialect!(
                D,
                "SELECT name, tx, position, updated_at FROM larder_checkpoints ORDER BY name"
            );
            let rows = self.ev_rows(sql, Vec::new(), op).await?;
            rows.iter()
                .map(|r| {
                    Ok(StoredCheckpoint {
                        name: required(r.text(0).map_err(|e| D::map(e, op))?, "name", D::BACKEND)?,
                        checkpoint: checkpoint_at::<D>(r, 1, op)?,
                        updated_at_micros: req_int::<D>(r, 3, op, "updated_at")?,
                    })
                })
                .collect()
        })
    }
}
