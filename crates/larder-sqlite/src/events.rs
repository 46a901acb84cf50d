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

use larder_core::backend::BoxFuture;
use larder_core::events::{
    Checkpoint, EventFilter, EventTransaction, ExpectedVersion, LogStats, NewEvent, ReadAllBatch,
    ReadDirection, RecordedEvent, Snapshot, StoredCheckpoint,
};
use larder_core::{Error, Result};
use sqlx::Row;
use sqlx::sqlite::{SqliteArguments, SqliteRow};
use uuid::Uuid;

use crate::error::{BACKEND, map};
use crate::uow::SqliteTransaction;

type Query<'q> = sqlx::query::Query<'q, sqlx::Sqlite, SqliteArguments>;

/// A stream's version: its highest event version (`None`: no events). SQLite has one
/// writer at a time, so no row needs locking and no streams table is kept: one B-tree
/// fewer to write per append.
const STREAM_VERSION: &str = "SELECT max(stream_version) FROM larder_events WHERE stream_id = ?1";

const COLS: &str = "position, stream_id, stream_version, event_id, event_type, schema_version, \
                    payload, metadata, recorded_at";

/// Events per INSERT statement (8 parameters each, well under SQLite's 32,766).
const ROWS_PER_INSERT: usize = 1_000;

fn u64_of(v: i64, what: &str) -> Result<u64> {
    u64::try_from(v).map_err(|_| Error::backend(BACKEND, format!("negative {what}")))
}

fn i64_of(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Decodes `COLS` starting at column `at`.
fn event(row: &SqliteRow, at: usize) -> Result<RecordedEvent> {
    let d = |e| map(e, "events.read");
    let position: i64 = row.try_get(at).map_err(d)?;
    let id: String = row.try_get(at + 3).map_err(d)?;
    let version: i64 = row.try_get(at + 2).map_err(d)?;
    let schema: i64 = row.try_get(at + 5).map_err(d)?;
    Ok(RecordedEvent {
        checkpoint: Checkpoint::new(0, u64_of(position, "position")?),
        stream_id: row.try_get(at + 1).map_err(d)?,
        stream_version: u64_of(version, "version")?,
        event_id: Uuid::parse_str(&id)
            .map_err(|e| Error::backend(BACKEND, format!("stored event id is not a uuid: {e}")))?,
        event_type: row.try_get(at + 4).map_err(d)?,
        schema_version: u32::try_from(schema).unwrap_or(0),
        payload: row.try_get(at + 6).map_err(d)?,
        metadata: row.try_get(at + 7).map_err(d)?,
        recorded_at_micros: row.try_get(at + 8).map_err(d)?,
    })
}

fn map_event_error(e: sqlx::Error, op: &'static str) -> Error {
    if let sqlx::Error::Database(db) = &e
        && db.message().contains("larder_events.event_id")
    {
        return Error::AlreadyExists {
            entity: "event",
            id: "an event id of this append (in another stream)".into(),
        };
    }
    map(e, op)
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
        "SELECT {COLS} FROM larder_events WHERE position > ?1{filter} ORDER BY position LIMIT ?2"
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

impl SqliteTransaction {
    async fn ev_fetch_all(&mut self, q: Query<'_>, op: &'static str) -> Result<Vec<SqliteRow>> {
        self.arm().await?;
        let r = q.fetch_all(self.conn()?).await;
        r.map_err(|e| self.write_failed(e, op, map_event_error))
    }

    async fn ev_execute(
        &mut self,
        q: Query<'_>,
        op: &'static str,
    ) -> Result<sqlx::sqlite::SqliteQueryResult> {
        self.arm().await?;
        let r = q.execute(self.conn()?).await;
        r.map_err(|e| self.write_failed(e, op, map_event_error))
    }

    async fn ev_i64(&mut self, q: Query<'_>, op: &'static str) -> Result<Option<i64>> {
        let rows = self.ev_fetch_all(q, op).await?;
        match rows.first() {
            None => Ok(None),
            Some(r) => r.try_get::<Option<i64>, _>(0).map_err(|e| map(e, op)),
        }
    }

    async fn insert_events(
        &mut self,
        stream: &str,
        first_version: u64,
        events: &[NewEvent],
    ) -> Result<i64> {
        let mut last = 0;
        let mut version = first_version;
        for chunk in events.chunks(ROWS_PER_INSERT) {
            let sql = insert_sql(chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for e in chunk {
                q = q
                    .bind(stream)
                    .bind(i64_of(version))
                    .bind(e.event_id.hyphenated().to_string())
                    .bind(e.event_type.as_str())
                    .bind(i64::from(e.schema_version))
                    .bind(e.payload.as_str())
                    .bind(e.metadata.as_deref())
                    .bind(e.recorded_at_micros);
                version += 1;
            }
            last = self
                .ev_execute(q, "events.append")
                .await?
                .last_insert_rowid();
        }
        Ok(last)
    }
}

impl EventTransaction for SqliteTransaction {
    fn append<'a>(
        &'a mut self,
        stream: &'a str,
        expected: ExpectedVersion,
        events: &'a [NewEvent],
    ) -> BoxFuture<'a, Result<std::result::Result<(u64, Checkpoint), Option<u64>>>> {
        Box::pin(async move {
            let q = sqlx::query(STREAM_VERSION).bind(stream);
            let current = self
                .ev_i64(q, "events.append")
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
                match self.insert_events(stream, base + 1, events).await {
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
                self.ev_execute(sqlx::query("SAVEPOINT larder_append"), "events.append")
                    .await?;
                match self.insert_events(stream, base + 1, events).await {
                    Ok(l) => {
                        self.ev_execute(sqlx::query("RELEASE larder_append"), "events.append")
                            .await?;
                        l
                    }
                    Err(e) => {
                        let _ = self
                            .ev_execute(sqlx::query("ROLLBACK TO larder_append"), "events.append")
                            .await;
                        let _ = self
                            .ev_execute(sqlx::query("RELEASE larder_append"), "events.append")
                            .await;
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
        &'a mut self,
        ids: &'a [Uuid],
    ) -> BoxFuture<'a, Result<Vec<(Uuid, String, u64, Checkpoint)>>> {
        Box::pin(async move {
            let list = serde_json::to_string(
                &ids.iter()
                    .map(|i| i.hyphenated().to_string())
                    .collect::<Vec<_>>(),
            )
            .map_err(|e| Error::backend(BACKEND, e))?;
            let q = sqlx::query(
                "SELECT event_id, stream_id, stream_version, position FROM larder_events \
                 WHERE event_id IN (SELECT value FROM json_each(?1))",
            )
            .bind(list);
            let rows = self.ev_fetch_all(q, "events.append").await?;
            let d = |e| map(e, "events.append");
            rows.iter()
                .map(|r| {
                    let id: String = r.try_get(0).map_err(d)?;
                    Ok((
                        Uuid::parse_str(&id).map_err(|e| Error::backend(BACKEND, e))?,
                        r.try_get::<String, _>(1).map_err(d)?,
                        u64_of(r.try_get(2).map_err(d)?, "version")?,
                        Checkpoint::new(0, u64_of(r.try_get(3).map_err(d)?, "position")?),
                    ))
                })
                .collect()
        })
    }

    fn read_stream<'a>(
        &'a mut self,
        stream: &'a str,
        from: u64,
        limit: u32,
        direction: ReadDirection,
    ) -> BoxFuture<'a, Result<Vec<RecordedEvent>>> {
        Box::pin(async move {
            const FWD: &str = "SELECT position, stream_id, stream_version, event_id, event_type, \
                schema_version, payload, metadata, recorded_at FROM larder_events \
                WHERE stream_id = ?1 AND stream_version >= ?2 ORDER BY stream_version LIMIT ?3";
            const BWD: &str = "SELECT position, stream_id, stream_version, event_id, event_type, \
                schema_version, payload, metadata, recorded_at FROM larder_events \
                WHERE stream_id = ?1 AND stream_version <= ?2 ORDER BY stream_version DESC \
                LIMIT ?3";
            let sql = match direction {
                ReadDirection::Forward => FWD,
                ReadDirection::Backward => BWD,
            };
            let q = sqlx::query(sql)
                .bind(stream)
                .bind(i64_of(from))
                .bind(i64::from(limit));
            let rows = self.ev_fetch_all(q, "events.read_stream").await?;
            rows.iter().map(|r| event(r, 0)).collect()
        })
    }

    fn read_all<'a>(
        &'a mut self,
        after: Checkpoint,
        limit: u32,
        filter: &'a EventFilter,
    ) -> BoxFuture<'a, Result<ReadAllBatch>> {
        Box::pin(async move {
            let cats = !filter.categories.is_empty();
            let types = !filter.event_types.is_empty();
            let sql = read_all_sql(cats, types);
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(i64_of(after.position()))
                .bind(i64::from(limit));
            let json =
                |v: &Vec<String>| serde_json::to_string(v).map_err(|e| Error::backend(BACKEND, e));
            if cats || types {
                q = q.bind(if cats {
                    json(&filter.categories)?
                } else {
                    "[]".into()
                });
            }
            if types {
                q = q.bind(json(&filter.event_types)?);
            }
            let rows = self.ev_fetch_all(q, "events.read_all").await?;
            let events = rows
                .iter()
                .map(|r| event(r, 0))
                .collect::<Result<Vec<_>>>()?;
            // A short page reached the end: report how far the log goes, so the reader's
            // checkpoint passes filtered-out events. Same transaction, same snapshot (a
            // read transaction keeps its snapshot; a write one holds the only write lock).
            let head = if events.len() < limit as usize {
                let q = sqlx::query("SELECT max(position) FROM larder_events");
                let h = self.ev_i64(q, "events.read_all").await?.unwrap_or(0);
                Some(Checkpoint::new(0, u64_of(h, "position")?))
            } else {
                None
            };
            Ok(ReadAllBatch { events, head })
        })
    }

    fn stream_version<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<u64>>> {
        Box::pin(async move {
            let q = sqlx::query(STREAM_VERSION).bind(stream);
            self.ev_i64(q, "events.stream_info")
                .await?
                .map(|v| u64_of(v, "version"))
                .transpose()
        })
    }

    fn count_after<'a>(&'a mut self, after: Checkpoint, cap: u64) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let q = sqlx::query(
                "SELECT count(*) FROM (SELECT 1 FROM larder_events WHERE position > ?1 LIMIT ?2)",
            )
            .bind(i64_of(after.position()))
            .bind(i64_of(cap));
            u64_of(self.ev_i64(q, "events.count").await?.unwrap_or(0), "count")
        })
    }

    fn stats(&mut self) -> BoxFuture<'_, Result<LogStats>> {
        Box::pin(async move {
            let q = sqlx::query(
                "SELECT (SELECT count(*) FROM larder_events), (SELECT count(DISTINCT \
                 stream_id) FROM larder_events), (SELECT max(position) FROM larder_events)",
            );
            let rows = self.ev_fetch_all(q, "events.stats").await?;
            let d = |e| map(e, "events.stats");
            let r = rows
                .first()
                .ok_or_else(|| Error::backend(BACKEND, "stats returned no row"))?;
            let head: Option<i64> = r.try_get(2).map_err(d)?;
            Ok(LogStats {
                events: u64_of(r.try_get(0).map_err(d)?, "count")?,
                streams: u64_of(r.try_get(1).map_err(d)?, "count")?,
                head: Checkpoint::new(0, u64_of(head.unwrap_or(0), "position")?),
            })
        })
    }

    fn load_snapshot<'a>(&'a mut self, stream: &'a str) -> BoxFuture<'a, Result<Option<Snapshot>>> {
        Box::pin(async move {
            let q = sqlx::query(
                "SELECT stream_version, schema_version, state FROM larder_snapshots \
                 WHERE stream_id = ?1",
            )
            .bind(stream);
            let rows = self.ev_fetch_all(q, "events.load_snapshot").await?;
            let d = |e| map(e, "events.load_snapshot");
            match rows.first() {
                None => Ok(None),
                Some(r) => Ok(Some(Snapshot {
                    stream_id: stream.to_owned(),
                    stream_version: u64_of(r.try_get(0).map_err(d)?, "version")?,
                    schema_version: u32::try_from(r.try_get::<i64, _>(1).map_err(d)?).unwrap_or(0),
                    state: r.try_get(2).map_err(d)?,
                })),
            }
        })
    }

    fn save_snapshot<'a>(&'a mut self, s: &'a Snapshot) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let q = sqlx::query(
                "INSERT INTO larder_snapshots (stream_id, stream_version, schema_version, state, \
                 taken_at) VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (stream_id) DO UPDATE SET \
                 stream_version = excluded.stream_version, schema_version = \
                 excluded.schema_version, state = excluded.state, taken_at = excluded.taken_at",
            )
            .bind(&s.stream_id)
            .bind(i64_of(s.stream_version))
            .bind(i64::from(s.schema_version))
            .bind(&s.state)
            .bind(larder_core::events::now_micros());
            self.ev_execute(q, "events.save_snapshot").await.map(|_| ())
        })
    }

    fn load_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
    ) -> BoxFuture<'a, Result<Option<Checkpoint>>> {
        Box::pin(async move {
            let q =
                sqlx::query("SELECT position FROM larder_checkpoints WHERE name = ?1").bind(name);
            self.ev_i64(q, "events.load_checkpoint")
                .await?
                .map(|p| Ok(Checkpoint::new(0, u64_of(p, "position")?)))
                .transpose()
        })
    }

    fn claim_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<Checkpoint>> {
        Box::pin(async move {
            // The write transaction (BEGIN IMMEDIATE) already excludes other claimants.
            let q = sqlx::query(
                "INSERT INTO larder_checkpoints (name, tx, position, updated_at) \
                 VALUES (?1, 0, 0, ?2) ON CONFLICT (name) DO NOTHING",
            )
            .bind(name)
            .bind(now_micros);
            self.ev_execute(q, "events.claim_checkpoint").await?;
            let q =
                sqlx::query("SELECT position FROM larder_checkpoints WHERE name = ?1").bind(name);
            let p = self
                .ev_i64(q, "events.claim_checkpoint")
                .await?
                .unwrap_or(0);
            Ok(Checkpoint::new(0, u64_of(p, "position")?))
        })
    }

    fn save_checkpoint<'a>(
        &'a mut self,
        name: &'a str,
        cp: Checkpoint,
        now_micros: i64,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let q = sqlx::query(
                "INSERT INTO larder_checkpoints (name, tx, position, updated_at) \
                 VALUES (?1, ?2, ?3, ?4) ON CONFLICT (name) DO UPDATE SET tx = excluded.tx, \
                 position = excluded.position, updated_at = excluded.updated_at",
            )
            .bind(name)
            .bind(i64_of(cp.tx()))
            .bind(i64_of(cp.position()))
            .bind(now_micros);
            self.ev_execute(q, "events.save_checkpoint")
                .await
                .map(|_| ())
        })
    }

    fn delete_checkpoint<'a>(&'a mut self, name: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let q = sqlx::query("DELETE FROM larder_checkpoints WHERE name = ?1").bind(name);
            self.ev_execute(q, "events.delete_checkpoint")
                .await
                .map(|_| ())
        })
    }

    fn list_checkpoints(&mut self) -> BoxFuture<'_, Result<Vec<StoredCheckpoint>>> {
        Box::pin(async move {
            let q = sqlx::query(
                "SELECT name, position, updated_at FROM larder_checkpoints ORDER BY name",
            );
            let rows = self.ev_fetch_all(q, "events.list_checkpoints").await?;
            let d = |e| map(e, "events.list_checkpoints");
            rows.iter()
                .map(|r| {
                    Ok(StoredCheckpoint {
                        name: r.try_get(0).map_err(d)?,
                        checkpoint: Checkpoint::new(
                            0,
                            u64_of(r.try_get(1).map_err(d)?, "position")?,
                        ),
                        updated_at_micros: r.try_get(2).map_err(d)?,
                    })
                })
                .collect()
        })
    }
}
