//! The event store on PostgreSQL.
//!
//! **No gaps, no skips, no serialized appenders.** Each event stores the id of the
//! transaction that appended it (`tx`, `pg_current_xact_id()`). `read_all` only returns
//! events whose transaction is older than the oldest transaction still running in its own
//! snapshot (`tx < pg_snapshot_xmin(pg_current_snapshot())`), in `(tx, position)` order. A
//! transaction that commits later than the read has an id at or above that horizon, so
//! its events sort after everything the reader has seen: the reader cannot skip them.
//! Appenders take no lock beyond the row of their own stream.
//!
//! **Each stream stays in version order in the log.** Transaction ids are assigned at a
//! transaction's first write, not at commit: an older transaction that appends to a stream
//! after a younger one committed to it would sort first. `larder_streams.last_tx` records
//! the last appender; an append by an older transaction is refused with a retryable
//! [`Error::Transient`] (serialization), and `Store::transaction` runs the unit of work
//! again with a new transaction id.
//!
//! **Appends are one round trip**: a data-modifying CTE checks and moves the stream's
//! version (`larder_streams`, a conditional upsert or update: concurrent appenders with the
//! same expectation queue on the row and exactly one wins) and inserts the events from
//! arrays with `ON CONFLICT (event_id) DO NOTHING`. When the version check fails nothing is
//! written and no error is raised, so the transaction stays usable. When an event id was
//! already stored (a retry after an unknown commit outcome), fewer rows come back than
//! were sent: a second statement undoes the append's writes and the event store reports
//! "already appended". No statement probes the event ids on the common path.
//!
//! **Who holds the log back** (`horizon_holder`): one statement reads the horizon of its
//! own snapshot, counts this log's committed events at or above it (not readable yet),
//! and takes the oldest other transaction with an id from `pg_stat_activity` (every
//! database of the cluster) and `pg_prepared_xacts`; it is reported only if its id is the
//! horizon (otherwise it ended meanwhile, or the caller's own transaction is the horizon).
//!
//! **Wake-ups**: after a commit that appended, the backend's notifier task sends
//! `NOTIFY larder_events` (payload: the schema) on a pooled connection, coalescing bursts;
//! the notification is not part of the appending transaction, whose commit would otherwise
//! take PostgreSQL's database-wide notification lock.

use std::sync::{Arc, LazyLock};

use larder_core::backend::BoxFuture;
use larder_core::events::{
    Checkpoint, EventFilter, ExpectedVersion, HorizonHolder, LogStats, NewEvent,
};
use larder_core::{Error, Result};
use larder_sql::dialect::LogRows;
use larder_sql::events::{checkpoint_at, i64_of, req_int};
use larder_sql::{Kind, LogDialect, SqlTx};
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::{Arguments, Row};
use uuid::Uuid;

use crate::error::{BACKEND, map};
use crate::uow::Pg;

/// Bound values of one event-log statement.
macro_rules! args {
    ($($v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut a = PgArguments::default();
        $( a.add($v).map_err(|e| Error::backend(BACKEND, e))?; )*
        a
    }};
}

/// The notification channel of appends (payload: the appender's `current_schema()`).
pub const NOTIFY_CHANNEL: &str = "larder_events";

macro_rules! event_columns {
    () => {
        "position, tx, stream_id, stream_version, event_id, event_type, schema_version, \
         payload::text, metadata::text, recorded_at"
    };
}

/// The statement of one append, by expectation: `$1` stream, `$2` number of events,
/// `$3..$7` the event arrays, `$8` recorded_at, `$9` the expected version.
fn append_sql(expected: ExpectedVersion, single: bool) -> &'static str {
    // `s`: moves the version only if the expectation holds and no younger transaction
    // appended to the stream last. `e`: inserts the events; a stored event id is skipped
    // (`ON CONFLICT DO NOTHING`), which the caller detects by the count and repairs.
    // One event (W1's shape, the common case) binds scalars: no arrays to encode, no
    // `unnest … WITH ORDINALITY` and sort to run (pgbench, this machine: ≈ 0.30 against
    // ≈ 0.36–0.55 ms per append transaction).
    macro_rules! stmt {
        ($stream:literal) => {
            if single {
                concat!(
                    "WITH s AS (",
                    $stream,
                    "), e AS (INSERT INTO larder_events (stream_id, stream_version, event_id, \
                     event_type, schema_version, payload, metadata, recorded_at) \
                     SELECT $1, s.version - $2 + 1, $3::uuid, $4::text, $5::int4, \
                     $6::text::json, $7::text::json, $8 FROM s \
                     ON CONFLICT (event_id) DO NOTHING RETURNING position, tx) \
                     SELECT (SELECT version FROM s), (SELECT max(position) FROM e), \
                     (SELECT max(tx) FROM e), (SELECT count(*) FROM e)"
                )
            } else {
                concat!(
                    "WITH s AS (",
                    $stream,
                    "), e AS (INSERT INTO larder_events (stream_id, stream_version, event_id, \
                     event_type, schema_version, payload, metadata, recorded_at) \
                     SELECT $1, s.version - $2 + u.ord, u.id, u.ty, u.sv, u.payload::json, \
                     u.meta::json, $8 FROM s, unnest($3::uuid[], $4::text[], $5::int4[], \
                     $6::text[], $7::text[]) WITH ORDINALITY AS u(id, ty, sv, payload, meta, ord) \
                     ORDER BY u.ord ON CONFLICT (event_id) DO NOTHING RETURNING position, tx) \
                     SELECT (SELECT version FROM s), (SELECT max(position) FROM e), \
                     (SELECT max(tx) FROM e), (SELECT count(*) FROM e)"
                )
            }
        };
    }
    match expected {
        ExpectedVersion::Any => stmt!(
            "INSERT INTO larder_streams AS t (stream_id, version, last_tx) VALUES ($1, $2, \
             pg_current_xact_id()::text::bigint) ON CONFLICT (stream_id) DO UPDATE SET \
             version = t.version + $2, last_tx = excluded.last_tx \
             WHERE t.last_tx <= excluded.last_tx RETURNING t.version"
        ),
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => stmt!(
            "INSERT INTO larder_streams (stream_id, version, last_tx) VALUES ($1, $2, \
             pg_current_xact_id()::text::bigint) ON CONFLICT (stream_id) DO NOTHING \
             RETURNING version"
        ),
        ExpectedVersion::StreamExists => stmt!(
            "UPDATE larder_streams SET version = version + $2, last_tx = \
             pg_current_xact_id()::text::bigint WHERE stream_id = $1 AND last_tx <= \
             pg_current_xact_id()::text::bigint RETURNING version"
        ),
        ExpectedVersion::Exact(_) => stmt!(
            "UPDATE larder_streams SET version = version + $2, last_tx = \
             pg_current_xact_id()::text::bigint WHERE stream_id = $1 AND version = $9 \
             AND last_tx <= pg_current_xact_id()::text::bigint RETURNING version"
        ),
    }
}

/// [`append_sql`] as shared text, built once per form (an `Arc::from` per append would
/// copy the statement into a new allocation every time).
fn append_stmt(expected: ExpectedVersion, single: bool) -> Arc<str> {
    static FORMS: LazyLock<[Arc<str>; 8]> = LazyLock::new(|| {
        let forms = [
            ExpectedVersion::Any,
            ExpectedVersion::NoStream,
            ExpectedVersion::StreamExists,
            ExpectedVersion::Exact(1),
        ];
        std::array::from_fn(|i| Arc::from(append_sql(forms[i / 2], i % 2 == 1)))
    });
    let form = match expected {
        ExpectedVersion::Any => 0,
        ExpectedVersion::NoStream | ExpectedVersion::Exact(0) => 1,
        ExpectedVersion::StreamExists => 2,
        ExpectedVersion::Exact(_) => 3,
    };
    FORMS[form * 2 + usize::from(single)].clone()
}

/// `read_all` by filter shape: `$1, $2` the checkpoint, `$3` the limit, then the
/// category and type arrays when filtered. One statement, so the horizon and the events
/// come from the same snapshot.
fn read_all_sql(categories: bool, types: bool) -> String {
    let mut filter = String::new();
    let mut n = 3;
    if categories {
        n += 1;
        filter.push_str(&format!(
            " AND split_part(stream_id, '-', 1) = ANY(${n}::text[])"
        ));
    }
    if types {
        n += 1;
        filter.push_str(&format!(" AND event_type = ANY(${n}::text[])"));
    }
    format!(
        "SELECT h.x, e.* FROM (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint AS x) h \
         LEFT JOIN LATERAL (SELECT {} FROM larder_events \
         WHERE (tx, position) > ($1, $2) AND tx < h.x{filter} \
         ORDER BY tx, position LIMIT $3) e ON true",
        event_columns!()
    )
}

/// `horizon_holder`: the horizon (`$h.x`), the events it holds back, and the oldest other
/// transaction with an id — a session (not the caller's) or a prepared transaction — with
/// whether its id is the horizon. No parameters.
const HORIZON_HOLDER_SQL: &str = "WITH h AS (SELECT pg_snapshot_xmin(pg_current_snapshot()) AS x) \
     SELECT h.x::text::bigint, \
     (SELECT count(*) FROM larder_events WHERE tx >= h.x::text::bigint), \
     c.pid, c.gid, c.db, c.usr, c.app, c.state, c.age_us, c.xid = h.x::xid \
     FROM h LEFT JOIN LATERAL (\
     SELECT pid, NULL::text AS gid, datname::text AS db, usename::text AS usr, \
     application_name::text AS app, state::text AS state, \
     (extract(epoch FROM clock_timestamp() - xact_start) * 1000000)::bigint AS age_us, \
     backend_xid AS xid, age(backend_xid) AS xage \
     FROM pg_stat_activity WHERE backend_xid IS NOT NULL AND pid <> pg_backend_pid() \
     UNION ALL \
     SELECT NULL, gid, database::text, owner::text, NULL, 'prepared', \
     (extract(epoch FROM clock_timestamp() - prepared) * 1000000)::bigint, \
     transaction, age(transaction) FROM pg_prepared_xacts \
     ORDER BY xage DESC LIMIT 1) c ON true";

fn u64_of(v: i64, what: &str) -> Result<u64> {
    larder_sql::events::u64_of::<Pg>(v, what)
}

fn checkpoint(tx: i64, position: i64) -> Result<Checkpoint> {
    Ok(Checkpoint::new(
        u64_of(tx, "tx")?,
        u64_of(position, "position")?,
    ))
}

fn dec(op: &'static str) -> impl Fn(sqlx::Error) -> Error {
    move |e| map(e, op)
}

/// An event-log query on this transaction that only reads.
async fn fetch(
    tx: &mut SqlTx<Pg>,
    sql: &'static str,
    args: PgArguments,
    op: &'static str,
) -> Result<Vec<PgRow>> {
    tx.fetch_with(Arc::from(sql), args, op, Kind::EventRead)
        .await
}

impl LogDialect for Pg {
    const EVENT_COLUMNS: &'static str = event_columns!();
    const STREAM_VERSION: &'static str = "SELECT version FROM larder_streams WHERE stream_id = $1";
    const OUTBOX_HORIZON: &'static str =
        " AND o.tx < pg_snapshot_xmin(pg_current_snapshot())::text::bigint";
    const OUTBOX_PARTITIONS: u32 = 16;
    const RELAXED_COMMIT: Option<&'static str> = Some("SET LOCAL synchronous_commit = off");
    // Without fresh statistics (a new table, or a burst after statistics saw few pending
    // rows) the planner estimates one ready row, scans every pending row through a bitmap,
    // runs the per-key check on each and sorts: 18 ms at 20,000 pending instead of 0.5 ms
    // walking the pending index in order and stopping at the limit.
    const OUTBOX_FETCH_PLAN: Option<&'static str> = Some("SET LOCAL enable_bitmapscan = off");

    fn append<'a>(
        tx: &'a mut SqlTx<Pg>,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<std::result::Result<(u64, Checkpoint), Option<u64>>>> {
        Box::pin(async move {
            let op = "events.append";
            let n = i64::try_from(events.len()).unwrap_or(i64::MAX);
            let recorded = events.first().map_or(0, |e| e.recorded_at_micros);
            let schema = |e: &NewEvent| i32::try_from(e.schema_version).unwrap_or(i32::MAX);
            let single = events.len() == 1;
            let mut a = if let [e] = events {
                args![
                    stream,
                    n,
                    e.event_id,
                    e.event_type.as_str(),
                    schema(e),
                    e.payload.as_str(),
                    e.metadata.as_deref(),
                    recorded
                ]
            } else {
                let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
                let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
                let versions: Vec<i32> = events.iter().map(schema).collect();
                let payloads: Vec<&str> = events.iter().map(|e| e.payload.as_str()).collect();
                let metas: Vec<Option<&str>> =
                    events.iter().map(|e| e.metadata.as_deref()).collect();
                args![stream, n, ids, types, versions, payloads, metas, recorded]
            };
            if let ExpectedVersion::Exact(v) = expected
                && v > 0
            {
                a.add(i64_of(v)).map_err(|e| Error::backend(BACKEND, e))?;
            }
            let rows = tx
                .fetch_with(append_stmt(expected, single), a, op, Kind::Event)
                .await?;
            let d = dec(op);
            let row = rows
                .first()
                .ok_or_else(|| Error::backend(BACKEND, "append returned no row"))?;
            let version: Option<i64> = row.try_get(0).map_err(&d)?;
            if let Some(version) = version {
                let inserted: i64 = row.try_get(3).map_err(&d)?;
                if inserted == n {
                    let pos: Option<i64> = row.try_get(1).map_err(&d)?;
                    let last_tx: Option<i64> = row.try_get(2).map_err(&d)?;
                    let cp = checkpoint(last_tx.unwrap_or(0), pos.unwrap_or(0))?;
                    return Ok(Ok((u64_of(version, "version")?, cp)));
                }
                // An event id was already stored (a retry): undo this statement's
                // writes, so nothing of the append remains.
                // (A stream is never stored at version 0: back at 0, it did not exist.)
                let before = version - n;
                let (sql, a) = if before == 0 {
                    (
                        "WITH d AS (DELETE FROM larder_events WHERE stream_id = $1) \
                         DELETE FROM larder_streams WHERE stream_id = $1",
                        args![stream],
                    )
                } else {
                    // `last_tx` stays this transaction's id: at worst an older transaction
                    // appending to the stream later retries once.
                    (
                        "WITH d AS (DELETE FROM larder_events WHERE stream_id = $1 AND \
                         stream_version > $2 AND stream_version <= $3) UPDATE larder_streams \
                         SET version = $2 WHERE stream_id = $1",
                        args![stream, before, version],
                    )
                };
                tx.execute_with(Arc::from(sql), a, op, Kind::Event).await?;
                let actual = (before > 0)
                    .then(|| u64_of(before, "version"))
                    .transpose()?;
                return Ok(Err(actual));
            }
            // Nothing was written: a wrong version, or a younger transaction appended to
            // the stream last.
            let sql = "SELECT version, last_tx > pg_current_xact_id()::text::bigint \
                       FROM larder_streams WHERE stream_id = $1";
            let rows = tx
                .fetch_with(Arc::from(sql), args![stream], op, Kind::Event)
                .await?;
            let Some(r) = rows.first() else {
                return Ok(Err(None));
            };
            let actual = u64_of(r.try_get::<i64, _>(0).map_err(&d)?, "version")?;
            let younger: bool = r.try_get(1).map_err(&d)?;
            let satisfied = match expected {
                ExpectedVersion::Any | ExpectedVersion::StreamExists => true,
                ExpectedVersion::NoStream => false,
                ExpectedVersion::Exact(n) => n == actual,
            };
            if satisfied && younger {
                // Appending now would put this stream's new events before the younger
                // transaction's in the global log: run the unit of work again (it gets a
                // younger transaction id).
                return Err(Error::Transient {
                    kind: larder_core::TransientKind::Serialization,
                });
            }
            Ok(Err(Some(actual)))
        })
    }

    fn find_events<'a>(
        tx: &'a mut SqlTx<Pg>,
        ids: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String, u64, Checkpoint)>>> {
        Box::pin(async move {
            let op = "events.append";
            let sql = "SELECT event_id, stream_id, stream_version, tx, position FROM larder_events \
                       WHERE event_id = ANY($1)";
            // Planned per execution: a generic plan cached while the table was small
            // would scan it.
            let rows = tx
                .fetch_planned(Arc::from(sql), args![ids], op, Kind::Event, false)
                .await?;
            let d = dec(op);
            rows.iter()
                .map(|r| {
                    Ok((
                        r.try_get::<Uuid, _>(0).map_err(&d)?,
                        r.try_get::<String, _>(1).map_err(&d)?,
                        u64_of(r.try_get::<i64, _>(2).map_err(&d)?, "version")?,
                        checkpoint_at::<Pg>(r, 3, op)?,
                    ))
                })
                .collect()
        })
    }

    fn read_all_rows<'a>(
        tx: &'a mut SqlTx<Pg>,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<LogRows<Pg>>> {
        Box::pin(async move {
            let op = "events.read_all";
            let cats = !filter.categories.is_empty();
            let types = !filter.event_types.is_empty();
            let mut a = args![
                i64_of(after.tx()),
                i64_of(after.position()),
                i64::from(limit)
            ];
            if cats {
                a.add(&filter.categories)
                    .map_err(|e| Error::backend(BACKEND, e))?;
            }
            if types {
                a.add(&filter.event_types)
                    .map_err(|e| Error::backend(BACKEND, e))?;
            }
            let sql = Arc::from(read_all_sql(cats, types));
            let rows = tx.fetch_with(sql, a, op, Kind::EventRead).await?;
            // Every row carries the horizon of the statement's snapshot (column 0); the
            // LEFT JOIN keeps one row when no event matched.
            let head = match rows.first() {
                None => None,
                Some(r) => {
                    let x: i64 = r.try_get(0).map_err(dec(op))?;
                    Some(Checkpoint::new(
                        u64::try_from(x - 1).unwrap_or(0),
                        i64::MAX as u64,
                    ))
                }
            };
            Ok(LogRows { rows, at: 1, head })
        })
    }

    fn count_after(tx: &mut SqlTx<Pg>, after: Checkpoint, cap: u64) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let op = "events.count";
            let sql = "SELECT count(*) FROM (SELECT 1 FROM larder_events \
                       WHERE (tx, position) > ($1, $2) LIMIT $3) c";
            let a = args![i64_of(after.tx()), i64_of(after.position()), i64_of(cap)];
            let rows = fetch(tx, sql, a, op).await?;
            let n = rows.first().map(|r| req_int::<Pg>(r, 0, op, "count"));
            u64_of(n.transpose()?.unwrap_or(0), "count")
        })
    }

    fn stats(tx: &mut SqlTx<Pg>) -> BoxFuture<'_, Result<LogStats>> {
        Box::pin(async move {
            let op = "events.stats";
            let sql = "SELECT (SELECT count(*) FROM larder_events), (SELECT count(*) FROM \
                 larder_streams), h.tx, h.position FROM (SELECT 1) one LEFT JOIN LATERAL \
                 (SELECT tx, position FROM larder_events WHERE tx < \
                 pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 ORDER BY tx DESC, position DESC LIMIT 1) h ON true";
            let rows = fetch(tx, sql, args![], op).await?;
            let d = dec(op);
            let r = rows
                .first()
                .ok_or_else(|| Error::backend(BACKEND, "stats returned no row"))?;
            let last_tx: Option<i64> = r.try_get(2).map_err(&d)?;
            let pos: Option<i64> = r.try_get(3).map_err(&d)?;
            Ok(LogStats {
                events: u64_of(r.try_get(0).map_err(&d)?, "count")?,
                streams: u64_of(r.try_get(1).map_err(&d)?, "count")?,
                head: match (last_tx, pos) {
                    (Some(t), Some(p)) => checkpoint(t, p)?,
                    _ => Checkpoint::START,
                },
            })
        })
    }

    fn horizon_holder(tx: &mut SqlTx<Pg>) -> BoxFuture<'_, Result<Option<HorizonHolder>>> {
        Box::pin(async move {
            let op = "events.horizon_holder";
            let rows = fetch(tx, HORIZON_HOLDER_SQL, args![], op).await?;
            let d = dec(op);
            let r = rows
                .first()
                .ok_or_else(|| Error::backend(BACKEND, "horizon_holder returned no row"))?;
            // No other transaction with an id, or the oldest one is not the horizon (it
            // ended between the snapshot and the session list, or the horizon is the
            // caller's own transaction): nobody else holds the log back.
            if r.try_get::<Option<bool>, _>(9).map_err(&d)? != Some(true) {
                return Ok(None);
            }
            let horizon = u64_of(r.try_get(0).map_err(&d)?, "horizon")?;
            let held = u64_of(r.try_get(1).map_err(&d)?, "count")?;
            let mut h = HorizonHolder::new(horizon, held);
            h.pid = r
                .try_get::<Option<i32>, _>(2)
                .map_err(&d)?
                .and_then(|p| u32::try_from(p).ok());
            h.prepared_gid = r.try_get(3).map_err(&d)?;
            h.database = r.try_get(4).map_err(&d)?;
            h.user = r.try_get(5).map_err(&d)?;
            h.application_name = r
                .try_get::<Option<String>, _>(6)
                .map_err(&d)?
                .filter(|a| !a.is_empty());
            h.state = r.try_get(7).map_err(&d)?;
            h.transaction_age = r
                .try_get::<Option<i64>, _>(8)
                .map_err(&d)?
                .map(|us| std::time::Duration::from_micros(u64::try_from(us).unwrap_or(0)));
            Ok(Some(h))
        })
    }
}
