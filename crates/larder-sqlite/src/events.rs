//! The event store on SQLite.
//!
//! **No gaps, no skips.** SQLite has one writer at a time (larder's write units of work
//! are `BEGIN IMMEDIATE`), so an appender allocates `AUTOINCREMENT` positions while no
//! other writer can, and commits before the next writer allocates: positions are in commit
//! order. A reader's snapshot therefore holds every event up to its highest position, and
//! a later commit can only add events after it. `AUTOINCREMENT` never hands out a committed
//! position again.
//!
//! An append reads the stream's version (its highest event version, from the
//! `(stream_id, stream_version)` index), checks the expectation in Rust (the write lock is
//! held, nobody can interleave) and inserts every event in one statement (atomic: a stored
//! event id leaves nothing behind). Two statements, one table written.

use std::sync::Arc;

use larder_core::backend::BoxFuture;
use larder_core::events::{Checkpoint, EventFilter, ExpectedVersion, LogStats, NewEvent};
use larder_core::{Error, Result};
use larder_sql::dialect::LogRows;
use larder_sql::events::{i64_of, req_int};
use larder_sql::{Kind, LogDialect, SqlTx};
use sqlx::Arguments;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use uuid::Uuid;

use crate::error::BACKEND;
use crate::uow::Lite;

/// Bound values of one event-log statement.
macro_rules! args {
    ($($v:expr),* $(,)?) => {{
        #[allow(unused_mut)]
        let mut a = SqliteArguments::default();
        $( a.add($v).map_err(|e| Error::backend(BACKEND, e))?; )*
        a
    }};
}

/// Events per INSERT statement (8 parameters each, well under SQLite's 32,766).
const ROWS_PER_INSERT: usize = 1_000;

fn u64_of(v: i64, what: &str) -> Result<u64> {
    larder_sql::events::u64_of::<Lite>(v, what)
}

fn read_all_sql(categories: bool, types: bool) -> String {
    let mut filter = String::new();
    if categories {
        filter.push_str(
            " AND (CASE WHEN instr(stream_id, '-') > 0 THEN substr(stream_id, 1, \
             instr(stream_id, '-') - 1) ELSE stream_id END) IN (SELECT value FROM json_each(?3))",
        );
    }
    if types {
        filter.push_str(" AND event_type IN (SELECT value FROM json_each(?4))");
    }
    format!(
        "SELECT {} FROM larder_events WHERE position > ?1{filter} ORDER BY position LIMIT ?2",
        Lite::EVENT_COLUMNS
    )
}

fn insert_sql(rows: usize) -> String {
    let mut sql = String::from(
        "INSERT INTO larder_events (stream_id, stream_version, event_id, event_type, \
         schema_version, payload, metadata, recorded_at) VALUES ",
    );
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str("(?,?,?,?,?,?,?,?)");
    }
    sql
}

/// An event-log query on this transaction.
async fn fetch(
    tx: &mut SqlTx<Lite>,
    sql: impl Into<Arc<str>>,
    args: SqliteArguments,
    op: &'static str,
) -> Result<Vec<SqliteRow>> {
    tx.fetch_with(sql.into(), args, op, Kind::EventRead).await
}

/// The integer in the first column of the first row (`None`: no row, or `NULL`).
async fn fetch_int(
    tx: &mut SqlTx<Lite>,
    sql: &'static str,
    args: SqliteArguments,
    op: &'static str,
) -> Result<Option<i64>> {
    let rows = fetch(tx, sql, args, op).await?;
    let r = rows.first().map(|r| larder_sql::SqlRow::<Lite>::int(r, 0));
    r.transpose()
        .map(Option::flatten)
        .map_err(|e| crate::error::map(e, op))
}

async fn exec(
    tx: &mut SqlTx<Lite>,
    sql: impl Into<Arc<str>>,
    args: SqliteArguments,
) -> Result<sqlx::sqlite::SqliteQueryResult> {
    tx.execute_with(sql.into(), args, "events.append", Kind::Event)
        .await
}

async fn insert_events(
    tx: &mut SqlTx<Lite>,
    stream: &str,
    first_version: u64,
    events: &[NewEvent],
) -> Result<i64> {
    let mut last = 0;
    let mut version = first_version;
    for chunk in events.chunks(ROWS_PER_INSERT) {
        let mut a = SqliteArguments::default();
        for e in chunk {
            let add = |a: &mut SqliteArguments| -> std::result::Result<(), larder_core::BoxError> {
                a.add(stream)?;
                a.add(i64_of(version))?;
                a.add(e.event_id.hyphenated().to_string())?;
                a.add(e.event_type.as_str())?;
                a.add(i64::from(e.schema_version))?;
                a.add(e.payload.as_str())?;
                a.add(e.metadata.as_deref())?;
                a.add(e.recorded_at_micros)?;
                Ok(())
            };
            add(&mut a).map_err(|e| Error::backend(BACKEND, e))?;
            version += 1;
        }
        last = exec(tx, insert_sql(chunk.len()), a)
            .await?
            .last_insert_rowid();
    }
    Ok(last)
}

impl LogDialect for Lite {
    // SQLite's log has no transaction ids: positions are in commit order (one writer).
    const EVENT_COLUMNS: &'static str = "position, 0, stream_id, stream_version, event_id, \
        event_type, schema_version, payload, metadata, recorded_at";
    /// A stream's version: its highest event version (`NULL`: no events). SQLite has one
    /// writer at a time, so no row needs locking and no streams table is kept: one B-tree
    /// fewer to write per append.
    const STREAM_VERSION: &'static str =
        "SELECT max(stream_version) FROM larder_events WHERE stream_id = $1";

    fn append<'a>(
        tx: &'a mut SqlTx<Lite>,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<std::result::Result<(u64, Checkpoint), Option<u64>>>> {
        Box::pin(async move {
            let current = fetch_int(tx, Self::STREAM_VERSION, args![stream], "events.append")
                .await?
                .map(|v| u64_of(v, "version"))
                .transpose()?;
            let ok = match expected {
                ExpectedVersion::Any => true,
                ExpectedVersion::NoStream => current.is_none(),
                ExpectedVersion::StreamExists => current.is_some(),
                ExpectedVersion::Exact(n) => current.unwrap_or(0) == n,
            };
            if !ok {
                return Ok(Err(current));
            }
            let base = current.unwrap_or(0);
            let new_version = base + events.len() as u64;
            let last = if events.len() <= ROWS_PER_INSERT {
                match insert_events(tx, stream, base + 1, events).await {
                    Ok(l) => l,
                    // A stored event id (a retry): the statement changed nothing and the
                    // transaction goes on; the event store tells "already appended" apart.
                    Err(Error::AlreadyExists {
                        entity: "event", ..
                    }) => return Ok(Err(current)),
                    Err(e) => return Err(e),
                }
            } else {
                // Several statements: keep the append atomic with a savepoint.
                exec(tx, "SAVEPOINT larder_append", args![]).await?;
                match insert_events(tx, stream, base + 1, events).await {
                    Ok(l) => {
                        exec(tx, "RELEASE larder_append", args![]).await?;
                        l
                    }
                    Err(e) => {
                        let _ = exec(tx, "ROLLBACK TO larder_append", args![]).await;
                        let _ = exec(tx, "RELEASE larder_append", args![]).await;
                        return Err(e);
                    }
                }
            };
            Ok(Ok((
                new_version,
                Checkpoint::new(0, u64_of(last, "position")?),
            )))
        })
    }

    fn find_events<'a>(
        tx: &'a mut SqlTx<Lite>,
        ids: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String, u64, Checkpoint)>>> {
        Box::pin(async move {
            let op = "events.append";
            let list = serde_json::to_string(
                &ids.iter()
                    .map(|i| i.hyphenated().to_string())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::backend(BACKEND, e))?;
            let sql = "SELECT position, 0, stream_id, stream_version, event_id FROM larder_events \
                       WHERE event_id IN (SELECT value FROM json_each(?1))";
            let rows = fetch(tx, sql, args![list], op).await?;
            rows.iter()
                .map(|r| {
                    // The leading columns of `EVENT_COLUMNS`: decode them the same way.
                    use larder_sql::SqlRow;
                    let m = |e| crate::error::map(e, op);
                    let id = SqlRow::<Lite>::uuid(r, 4).map_err(|e| Error::backend(BACKEND, e))?;
                    Ok((
                        id.ok_or_else(|| Error::backend(BACKEND, "unexpected NULL event id"))?,
                        SqlRow::<Lite>::text(r, 2).map_err(m)?.unwrap_or_default(),
                        u64_of(req_int::<Lite>(r, 3, op, "version")?, "version")?,
                        Checkpoint::new(
                            0,
                            u64_of(req_int::<Lite>(r, 0, op, "position")?, "position")?,
                        ),
                    ))
                })
                .collect()
        })
    }

    fn read_all_rows<'a>(
        tx: &'a mut SqlTx<Lite>,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<LogRows<Lite>>> {
        Box::pin(async move {
            let op = "events.read_all";
            let cats = !filter.categories.is_empty();
            let types = !filter.event_types.is_empty();
            let mut a = args![i64_of(after.position()), i64::from(limit)];
            let json =
                |v: &Vec<String>| serde_json::to_string(v).map_err(|e| Error::backend(BACKEND, e));
            if cats || types {
                let c = if cats {
                    json(&filter.categories)?
                } else {
                    "[]".into()
                };
                a.add(c).map_err(|e| Error::backend(BACKEND, e))?;
            }
            if types {
                a.add(json(&filter.event_types)?)
                    .map_err(|e| Error::backend(BACKEND, e))?;
            }
            let rows = fetch(tx, read_all_sql(cats, types), a, op).await?;
            // A short page reached the end: report how far the log goes, so the reader's
            // checkpoint passes filtered-out events. Same transaction, same snapshot (a
            // read transaction keeps its snapshot; a write one holds the only write lock).
            let head = if rows.len() < limit as usize {
                let sql = "SELECT max(position) FROM larder_events";
                let h = fetch_int(tx, sql, args![], op).await?.unwrap_or(0);
                Some(Checkpoint::new(0, u64_of(h, "position")?))
            } else {
                None
            };
            Ok(LogRows { rows, at: 0, head })
        })
    }

    fn count_after(
        tx: &mut SqlTx<Lite>,
        after: Checkpoint,
        cap: u64,
    ) -> BoxFuture<'_, Result<u64>> {
        Box::pin(async move {
            let sql =
                "SELECT count(*) FROM (SELECT 1 FROM larder_events WHERE position > ?1 LIMIT ?2)";
            let a = args![i64_of(after.position()), i64_of(cap)];
            let n = fetch_int(tx, sql, a, "events.count").await?;
            u64_of(n.unwrap_or(0), "count")
        })
    }

    fn stats(tx: &mut SqlTx<Lite>) -> BoxFuture<'_, Result<LogStats>> {
        Box::pin(async move {
            let op = "events.stats";
            let sql = "SELECT (SELECT count(*) FROM larder_events), (SELECT count(DISTINCT \
                 stream_id) FROM larder_events), (SELECT max(position) FROM larder_events)";
            let rows = fetch(tx, sql, args![], op).await?;
            let r = rows
                .first()
                .ok_or_else(|| Error::backend(BACKEND, "stats returned no row"))?;
            let head =
                larder_sql::SqlRow::<Lite>::int(r, 2).map_err(|e| crate::error::map(e, op))?;
            Ok(LogStats {
                events: u64_of(req_int::<Lite>(r, 0, op, "count")?, "count")?,
                streams: u64_of(req_int::<Lite>(r, 1, op, "count")?, "count")?,
                head: Checkpoint::new(0, u64_of(head.unwrap_or(0), "position")?),
            })
        })
    }
}
