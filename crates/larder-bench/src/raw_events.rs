//! The raw sqlx baseline of the event-store workloads: hand-written, minimal SQL.
//!
//! - **Table**: `raw_events` is larder's `larder_events` renamed, column for column and
//!   index for index (checked against the catalog at start, see [`check_ddl`]), including
//!   the `tx` column and the `(tx, position)` index that only larder's reader uses.
//!   There is no `raw_streams`: raw's append does not keep a per-stream version row.
//! - **Append** (W1, W2, W6): one plain `INSERT` of the events with their stream versions
//!   (`expected + 1 …`). The expected-version check is the `UNIQUE (stream_id,
//!   stream_version)` constraint: if another writer got there first, the insert fails with
//!   a unique violation (PostgreSQL: after waiting for the other transaction). This is the
//!   check hand-written event stores usually rely on; it is weaker than larder's exact check
//!   (it does not notice an expectation *ahead* of the stream, which would leave a version
//!   gap), and the failed statement aborts a PostgreSQL transaction, whereas larder's
//!   conflict leaves the unit of work usable.
//! - **Reads** (W3, W4, W8-events) run on larder's table (read-only workloads: same rows,
//!   same physical layout), selecting the same columns larder selects; raw decodes the
//!   version, type and payload (borrowed `&str`, `serde_json::from_str` into the struct).
//!   The global-log reader is the naive keyset `WHERE position > $1 ORDER BY position
//!   LIMIT n`: no protection against skipping an event whose transaction commits late with
//!   an earlier position.

use anyhow::{Result, bail, ensure};
use sqlx::Row;
use uuid::Uuid;

use crate::backends::{Kind, Raw};
use crate::data::{ITEM_ADDED, ItemAdded};

/// PostgreSQL statements.
mod pg {
    /// `larder_events` of `larder-sql/builtin/postgres/20261122000000_event_store.sql`,
    /// renamed.
    pub(super) const DDL: [&str; 2] = [
        r#"CREATE TABLE raw_events (
    position BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tx BIGINT NOT NULL DEFAULT (pg_current_xact_id()::text::bigint),
    stream_id TEXT COLLATE "C" NOT NULL,
    stream_version BIGINT NOT NULL CHECK (stream_version >= 1),
    event_id UUID NOT NULL,
    event_type TEXT COLLATE "C" NOT NULL,
    schema_version INTEGER NOT NULL,
    payload JSON NOT NULL,
    metadata JSON,
    recorded_at BIGINT NOT NULL,
    CONSTRAINT raw_events_stream_version_key UNIQUE (stream_id, stream_version),
    CONSTRAINT raw_events_event_id_key UNIQUE (event_id)
)"#,
        "CREATE INDEX raw_events_log_idx ON raw_events (tx, position)",
    ];
    pub(super) const APPEND_ONE: &str = "INSERT INTO raw_events (stream_id, stream_version, \
        event_id, event_type, schema_version, payload, metadata, recorded_at) \
        VALUES ($1, $2, $3, $4, $5, CAST($6 AS json), CAST($7 AS json), $8)";
    /// larder's insert from arrays, without the stream-version row.
    pub(super) const APPEND_BATCH: &str = "INSERT INTO raw_events (stream_id, stream_version, \
        event_id, event_type, schema_version, payload, metadata, recorded_at) \
        SELECT $1, $2 + u.ord, u.id, u.ty, u.sv, u.payload::json, u.meta::json, $8 \
        FROM unnest($3::uuid[], $4::text[], $5::int4[], $6::text[], $7::text[]) \
        WITH ORDINALITY AS u(id, ty, sv, payload, meta, ord) ORDER BY u.ord";
    pub(super) const READ_STREAM: &str = "SELECT position, tx, stream_id, stream_version, \
        event_id, event_type, schema_version, payload::text, metadata::text, recorded_at \
        FROM larder_events WHERE stream_id = $1 ORDER BY stream_version";
    pub(super) const READ_PAGE: &str = "SELECT position, tx, stream_id, stream_version, \
        event_id, event_type, schema_version, payload::text, metadata::text, recorded_at \
        FROM larder_events WHERE position > $1 ORDER BY position LIMIT $2";
    /// Column indexes of (position, stream_version, event_type, payload).
    pub(super) const AT: (usize, usize, usize, usize) = (0, 3, 5, 7);
}

/// SQLite statements.
mod lite {
    /// `larder_events` of `larder-sql/builtin/sqlite/20261122000000_event_store.sql`,
    /// renamed.
    pub(super) const DDL: [&str; 1] = [r#"CREATE TABLE raw_events (
    position INTEGER PRIMARY KEY AUTOINCREMENT,
    stream_id TEXT NOT NULL,
    stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
    event_id TEXT NOT NULL,
    event_type TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload TEXT NOT NULL,
    metadata TEXT,
    recorded_at INTEGER NOT NULL,
    UNIQUE (stream_id, stream_version),
    UNIQUE (event_id)
) STRICT"#];
    pub(super) const APPEND_ONE: &str = "INSERT INTO raw_events (stream_id, stream_version, \
        event_id, event_type, schema_version, payload, metadata, recorded_at) \
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)";
    pub(super) const READ_STREAM: &str = "SELECT position, stream_id, stream_version, \
        event_id, event_type, schema_version, payload, metadata, recorded_at \
        FROM larder_events WHERE stream_id = ?1 ORDER BY stream_version";
    pub(super) const READ_PAGE: &str = "SELECT position, stream_id, stream_version, \
        event_id, event_type, schema_version, payload, metadata, recorded_at \
        FROM larder_events WHERE position > ?1 ORDER BY position LIMIT ?2";
    /// Column indexes of (position, stream_version, event_type, payload).
    pub(super) const AT: (usize, usize, usize, usize) = (0, 2, 4, 6);

    /// The multi-row insert of `rows` events (larder's SQLite append does the same).
    pub(super) fn append_batch(rows: usize) -> String {
        let mut sql = String::from(
            "INSERT INTO raw_events (stream_id, stream_version, event_id, event_type, \
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
}

/// The statements, for the report.
pub(crate) fn statements(kind: Kind) -> Vec<(&'static str, String)> {
    match kind {
        Kind::Sqlite => vec![
            ("append", lite::APPEND_ONE.to_owned()),
            ("batch", format!("{} (n rows)", &lite::append_batch(2))),
            ("stream", lite::READ_STREAM.to_owned()),
            ("page", lite::READ_PAGE.to_owned()),
        ],
        Kind::Postgres => vec![
            ("append", pg::APPEND_ONE.to_owned()),
            ("batch", pg::APPEND_BATCH.to_owned()),
            ("stream", pg::READ_STREAM.to_owned()),
            ("page", pg::READ_PAGE.to_owned()),
        ],
    }
}

/// Creates `raw_events` (after `EventStore::open` created larder's tables) and checks that
/// it is `larder_events` renamed.
pub(crate) async fn create(raw: &Raw) -> Result<()> {
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            for s in lite::DDL {
                sqlx::query(s).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query("DROP TABLE IF EXISTS raw_events")
                .execute(&mut *tx)
                .await?;
            for s in pg::DDL {
                sqlx::query(s).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
    }
    check_ddl(raw).await
}

/// Compares the catalog's description of both tables (names replaced): SQLite the stored
/// `CREATE` statements; PostgreSQL the columns (type, collation, nullability, default,
/// identity), constraints and indexes.
async fn check_ddl(raw: &Raw) -> Result<()> {
    let (larder, ours) = match raw {
        Raw::Sqlite(pool) => {
            const Q: &str = "SELECT sql FROM sqlite_master WHERE tbl_name = ?1 AND sql IS NOT NULL \
                             ORDER BY type, name";
            let get = async |t: &str| -> Result<Vec<String>> {
                let v: Vec<String> = sqlx::query_scalar(Q).bind(t).fetch_all(pool).await?;
                Ok(v.iter()
                    .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
                    .collect())
            };
            (get("larder_events").await?, get("raw_events").await?)
        }
        Raw::Pg(pool) => {
            const COLS: &str = "SELECT concat_ws(' ', column_name, data_type, collation_name, \
                is_nullable, column_default, is_identity, identity_generation) \
                FROM information_schema.columns WHERE table_schema = current_schema() \
                AND table_name = $1 ORDER BY ordinal_position";
            const CONS: &str = "SELECT conname || ' ' || pg_get_constraintdef(c.oid) \
                FROM pg_constraint c JOIN pg_class t ON t.oid = c.conrelid \
                WHERE t.relname = $1 AND t.relnamespace = current_schema()::regnamespace \
                ORDER BY conname";
            const IDX: &str = "SELECT indexdef FROM pg_indexes WHERE schemaname = \
                current_schema() AND tablename = $1 ORDER BY indexname";
            let get = async |t: &str| -> Result<Vec<String>> {
                let mut out = Vec::new();
                for q in [COLS, CONS, IDX] {
                    let v: Vec<String> = sqlx::query_scalar(q).bind(t).fetch_all(pool).await?;
                    out.extend(v);
                }
                Ok(out)
            };
            (get("larder_events").await?, get("raw_events").await?)
        }
    };
    let renamed: Vec<String> = larder
        .iter()
        .map(|s| s.replace("larder_events", "raw_events"))
        .collect();
    ensure!(
        !ours.is_empty() && renamed == ours,
        "raw_events differs from larder_events:\nlarder: {renamed:#?}\nraw:    {ours:#?}"
    );
    Ok(())
}

fn now_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

fn conflict_or(e: sqlx::Error, stream: &str) -> anyhow::Error {
    if let sqlx::Error::Database(db) = &e
        && db.is_unique_violation()
    {
        return anyhow::anyhow!("raw append: version conflict on stream {stream}");
    }
    e.into()
}

/// W1/W6: one event appended in its own transaction at version `expected + 1`.
pub(crate) async fn append_one(
    raw: &Raw,
    stream: &str,
    expected: u64,
    event: &ItemAdded,
) -> Result<()> {
    let payload = serde_json::to_string(event)?;
    let version = i64::try_from(expected + 1)?;
    let id = Uuid::now_v7();
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(lite::APPEND_ONE)
                .bind(stream)
                .bind(version)
                .bind(id.hyphenated().to_string())
                .bind(ITEM_ADDED)
                .bind(1_i64)
                .bind(payload)
                .bind(None::<&str>)
                .bind(now_micros())
                .execute(&mut *tx)
                .await
                .map_err(|e| conflict_or(e, stream))?;
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin().await?;
            sqlx::query(pg::APPEND_ONE)
                .bind(stream)
                .bind(version)
                .bind(id)
                .bind(ITEM_ADDED)
                .bind(1_i32)
                .bind(payload)
                .bind(None::<&str>)
                .bind(now_micros())
                .execute(&mut *tx)
                .await
                .map_err(|e| conflict_or(e, stream))?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// W2: every event of a new stream in one transaction, one statement.
pub(crate) async fn append_batch(raw: &Raw, stream: &str, events: &[ItemAdded]) -> Result<()> {
    let payloads = events
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    let ids: Vec<Uuid> = events.iter().map(|_| Uuid::now_v7()).collect();
    let now = now_micros();
    let n = match raw {
        Raw::Sqlite(pool) => {
            let sql = lite::append_batch(events.len());
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (i, (p, id)) in payloads.iter().zip(&ids).enumerate() {
                q = q
                    .bind(stream)
                    .bind(i64::try_from(i + 1)?)
                    .bind(id.hyphenated().to_string())
                    .bind(ITEM_ADDED)
                    .bind(1_i64)
                    .bind(p.as_str())
                    .bind(None::<&str>)
                    .bind(now);
            }
            let r = q
                .execute(&mut *tx)
                .await
                .map_err(|e| conflict_or(e, stream))?;
            tx.commit().await?;
            r.rows_affected()
        }
        Raw::Pg(pool) => {
            let types: Vec<&str> = events.iter().map(|_| ITEM_ADDED).collect();
            let schema: Vec<i32> = events.iter().map(|_| 1).collect();
            let payloads: Vec<&str> = payloads.iter().map(String::as_str).collect();
            let metas: Vec<Option<&str>> = events.iter().map(|_| None).collect();
            let mut tx = pool.begin().await?;
            let r = sqlx::query(pg::APPEND_BATCH)
                .bind(stream)
                .bind(0_i64)
                .bind(ids)
                .bind(types)
                .bind(schema)
                .bind(payloads)
                .bind(metas)
                .bind(now)
                .execute(&mut *tx)
                .await
                .map_err(|e| conflict_or(e, stream))?;
            tx.commit().await?;
            r.rows_affected()
        }
    };
    ensure!(
        n == events.len() as u64,
        "raw batch append inserted {n} rows"
    );
    Ok(())
}

/// Decodes (position, version, payload) of one row: the type must be `ItemAdded`.
macro_rules! decode_row {
    ($row:expr, $at:expr) => {{
        let row = $row;
        let (p, v, t, b) = $at;
        let position: i64 = row.try_get(p)?;
        let version: i64 = row.try_get(v)?;
        let ty: &str = row.try_get(t)?;
        if ty != ITEM_ADDED {
            bail!("unexpected event type {ty}");
        }
        let payload: &str = row.try_get(b)?;
        let e: ItemAdded = serde_json::from_str(payload)?;
        (position, version, e)
    }};
}

/// W3: a whole stream, decoded, in a read-only transaction.
pub(crate) async fn read_stream(raw: &Raw, stream: &str) -> Result<Vec<ItemAdded>> {
    let mut out = Vec::new();
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(lite::READ_STREAM)
                .bind(stream)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                let (_, v, e) = decode_row!(r, lite::AT);
                ensure!(
                    v == i64::try_from(out.len() + 1)?,
                    "version {v} out of order"
                );
                out.push(e);
            }
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin_with("BEGIN READ ONLY").await?;
            let rows = sqlx::query(pg::READ_STREAM)
                .bind(stream)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                let (_, v, e) = decode_row!(r, pg::AT);
                ensure!(
                    v == i64::try_from(out.len() + 1)?,
                    "version {v} out of order"
                );
                out.push(e);
            }
            tx.commit().await?;
        }
    }
    Ok(out)
}

/// One page of the global log (larder's table) after `after`, in a read-only transaction,
/// decoded. Returns (events, sum of `qty`, last position).
pub(crate) async fn read_page(raw: &Raw, after: i64, limit: i64) -> Result<(usize, i64, i64)> {
    let mut n = 0;
    let mut sum = 0_i64;
    let mut last = after;
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(lite::READ_PAGE)
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                let (p, _, e) = decode_row!(r, lite::AT);
                n += 1;
                sum = sum.wrapping_add(e.qty);
                last = p;
            }
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin_with("BEGIN READ ONLY").await?;
            let rows = sqlx::query(pg::READ_PAGE)
                .bind(after)
                .bind(limit)
                .fetch_all(&mut *tx)
                .await?;
            for r in &rows {
                let (p, _, e) = decode_row!(r, pg::AT);
                n += 1;
                sum = sum.wrapping_add(e.qty);
                last = p;
            }
            tx.commit().await?;
        }
    }
    Ok((n, sum, last))
}

/// The whole log (larder's table) in keyset pages of `page`: (events, sum of `qty`).
pub(crate) async fn read_log(raw: &Raw, page: i64) -> Result<(u64, i64)> {
    let mut after = 0;
    let mut total = 0_u64;
    let mut sum = 0_i64;
    loop {
        let (n, s, last) = read_page(raw, after, page).await?;
        total += n as u64;
        sum = sum.wrapping_add(s);
        after = last;
        if i64::try_from(n)? < page {
            return Ok((total, sum));
        }
    }
}

/// (events, sum of stream versions) of a table (cross-checks; not timed).
pub(crate) async fn totals(raw: &Raw, table: &str) -> Result<(i64, i64)> {
    if table != "larder_events" && table != "raw_events" {
        bail!("not an event table: {table}");
    }
    let sql =
        format!("SELECT count(*), CAST(coalesce(sum(stream_version), 0) AS BIGINT) FROM {table}");
    Ok(match raw {
        Raw::Sqlite(pool) => {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await?;
            (r.try_get(0)?, r.try_get(1)?)
        }
        Raw::Pg(pool) => {
            let r = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_one(pool)
                .await?;
            (r.try_get(0)?, r.try_get(1)?)
        }
    })
}

/// PostgreSQL: empties every event table (W6 between phases; not timed).
pub(crate) async fn truncate_all(raw: &Raw) -> Result<()> {
    if let Raw::Pg(pool) = raw {
        sqlx::query(
            "TRUNCATE larder_events, larder_streams, larder_checkpoints, larder_snapshots, \
             raw_events RESTART IDENTITY",
        )
        .execute(pool)
        .await?;
        sqlx::query("VACUUM ANALYZE larder_events, larder_streams, raw_events")
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// Refreshes the planner statistics after loading (not timed).
pub(crate) async fn analyze(raw: &Raw) -> Result<()> {
    match raw {
        Raw::Sqlite(pool) => {
            sqlx::query("ANALYZE").execute(pool).await?;
        }
        Raw::Pg(pool) => {
            sqlx::query("VACUUM ANALYZE larder_events, larder_streams")
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}
