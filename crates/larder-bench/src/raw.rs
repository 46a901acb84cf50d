//! The raw sqlx baseline: hand-written, minimal SQL issuing the same statements larder
//! generates (see `larder-sql/src/compile.rs`), on a table of the same shape, decoding rows
//! into the same struct with `serde_json::from_str` of the body.
//!
//! Statements are `&'static str`, so sqlx prepares each once per connection and caches it,
//! exactly as it does for larder's (identical text on every call) statements.

use anyhow::{Context, Result, bail};
use futures_util::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::sqlite::SqliteRow;
use sqlx::{Postgres, QueryBuilder, Row, Sqlite};
use uuid::Uuid;

use crate::backends::{Kind, Raw};
use crate::data::{Customer, LARDER_TABLE, RAW_TABLE};

/// SQLite statements (larder's SQLite dialect: `?` placeholders, TEXT body, uuid as text).
mod lite {
    pub(super) const DDL: [&str; 6] = [
        r#"CREATE TABLE IF NOT EXISTS "bench_raw_customers" ("id" TEXT NOT NULL PRIMARY KEY, "version" INTEGER NOT NULL, "body" TEXT NOT NULL, "age" INTEGER NOT NULL, "active" INTEGER NOT NULL, "balance_cents" INTEGER NOT NULL, "country" TEXT NOT NULL, "score" REAL NOT NULL) STRICT"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_age_idx" ON "bench_raw_customers" ("age")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_active_idx" ON "bench_raw_customers" ("active")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_balance_cents_idx" ON "bench_raw_customers" ("balance_cents")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_country_idx" ON "bench_raw_customers" ("country")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_score_idx" ON "bench_raw_customers" ("score")"#,
    ];
    pub(super) const INSERT: &str = r#"INSERT INTO "bench_raw_customers" ("id", "version", "body", "age", "active", "balance_cents", "country", "score") VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT ("id") DO NOTHING"#;
    pub(super) const GET: &str = r#"SELECT "id", "version", "body", "age", "active", "balance_cents", "country", "score" FROM "bench_raw_customers" WHERE "id" = ?"#;
    pub(super) const UPDATE: &str = r#"UPDATE "bench_raw_customers" SET "version" = ?, "body" = ?, "age" = ?, "active" = ?, "balance_cents" = ?, "country" = ?, "score" = ? WHERE "id" = ? AND "version" = ?"#;
    pub(super) const FIND: &str = r#"SELECT "id", "version", "body", "age", "active", "balance_cents", "country", "score" FROM "bench_raw_customers" WHERE ("country" = ? AND "age" >= ?) ORDER BY "score" DESC, "id" ASC LIMIT ?"#;
    /// larder streams document entities with id, version and body only.
    pub(super) const STREAM_LARDER_TABLE: &str =
        r#"SELECT "id", "version", "body" FROM "bench_larder_customers" ORDER BY "id" ASC"#;
}

/// PostgreSQL statements (larder's PostgreSQL dialect: body bound as text and cast).
mod pg {
    pub(super) const DDL: [&str; 6] = [
        r#"CREATE TABLE IF NOT EXISTS "bench_raw_customers" ("id" UUID NOT NULL PRIMARY KEY, "version" BIGINT NOT NULL, "body" JSONB NOT NULL, "age" BIGINT NOT NULL, "active" BOOLEAN NOT NULL, "balance_cents" BIGINT NOT NULL, "country" TEXT COLLATE "C" NOT NULL, "score" DOUBLE PRECISION NOT NULL)"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_age_idx" ON "bench_raw_customers" ("age")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_active_idx" ON "bench_raw_customers" ("active")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_balance_cents_idx" ON "bench_raw_customers" ("balance_cents")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_country_idx" ON "bench_raw_customers" ("country")"#,
        r#"CREATE INDEX IF NOT EXISTS "bench_raw_customers_score_idx" ON "bench_raw_customers" ("score")"#,
    ];
    pub(super) const INSERT: &str = r#"INSERT INTO "bench_raw_customers" ("id", "version", "body", "age", "active", "balance_cents", "country", "score") VALUES ($1, $2, CAST($3 AS jsonb), $4, $5, $6, $7, $8) ON CONFLICT ("id") DO NOTHING"#;
    pub(super) const GET: &str = r#"SELECT "id", "version", CAST("body" AS text), "age", "active", "balance_cents", "country", "score" FROM "bench_raw_customers" WHERE "id" = $1"#;
    pub(super) const UPDATE: &str = r#"UPDATE "bench_raw_customers" SET "version" = $1, "body" = CAST($2 AS jsonb), "age" = $3, "active" = $4, "balance_cents" = $5, "country" = $6, "score" = $7 WHERE "id" = $8 AND "version" = $9"#;
    pub(super) const FIND: &str = r#"SELECT "id", "version", CAST("body" AS text), "age", "active", "balance_cents", "country", "score" FROM "bench_raw_customers" WHERE ("country" = $1 AND "age" >= $2) ORDER BY "score" DESC, "id" ASC LIMIT $3"#;
    /// larder streams document entities with id, version and body only.
    pub(super) const STREAM_LARDER_TABLE: &str = r#"SELECT "id", "version", CAST("body" AS text) FROM "bench_larder_customers" ORDER BY "id" ASC"#;
}

/// The column list shared by both tables (bulk loading).
const COLUMNS: &str =
    r#""id", "version", "body", "age", "active", "balance_cents", "country", "score""#;

/// The raw table's DDL for an engine.
pub(crate) fn ddl(kind: Kind) -> &'static [&'static str] {
    match kind {
        Kind::Sqlite => &lite::DDL,
        Kind::Postgres => &pg::DDL,
    }
}

/// The statements of the W5/W7/W8 operations, for the report.
pub(crate) fn statements(kind: Kind) -> [(&'static str, &'static str); 5] {
    match kind {
        Kind::Sqlite => [
            ("insert", lite::INSERT),
            ("get", lite::GET),
            ("update", lite::UPDATE),
            ("find", lite::FIND),
            ("stream", lite::STREAM_LARDER_TABLE),
        ],
        Kind::Postgres => [
            ("insert", pg::INSERT),
            ("get", pg::GET),
            ("update", pg::UPDATE),
            ("find", pg::FIND),
            ("stream", pg::STREAM_LARDER_TABLE),
        ],
    }
}

/// Creates the raw table and its indexes (one transaction, like `store.register`).
pub(crate) async fn create_table(raw: &Raw) -> Result<()> {
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
            for s in pg::DDL {
                sqlx::query(s).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

fn decode_sqlite(row: &SqliteRow) -> Result<(Customer, i64)> {
    let version: i64 = row.try_get(1)?;
    let body: &str = row.try_get(2)?;
    Ok((serde_json::from_str(body)?, version))
}

fn decode_pg(row: &PgRow) -> Result<(Customer, i64)> {
    let version: i64 = row.try_get(1)?;
    let body: &str = row.try_get(2)?;
    Ok((serde_json::from_str(body)?, version))
}

/// The W5 insert statement on a SQLite connection (inside the caller's transaction).
pub(crate) async fn insert_in(conn: &mut sqlx::SqliteConnection, c: &Customer) -> Result<()> {
    let body = serde_json::to_string(c)?;
    let r = sqlx::query(lite::INSERT)
        .bind(c.id.hyphenated().to_string())
        .bind(1_i64)
        .bind(body)
        .bind(c.age)
        .bind(c.active)
        .bind(c.balance_cents)
        .bind(c.country.as_str())
        .bind(c.score)
        .execute(conn)
        .await?;
    if r.rows_affected() != 1 {
        bail!("raw insert: id {} already exists", c.id);
    }
    Ok(())
}

/// The W5 insert statement on a PostgreSQL connection (inside the caller's transaction).
pub(crate) async fn insert_in_pg(conn: &mut sqlx::PgConnection, c: &Customer) -> Result<()> {
    let body = serde_json::to_string(c)?;
    let r = sqlx::query(pg::INSERT)
        .bind(c.id)
        .bind(1_i64)
        .bind(body)
        .bind(c.age)
        .bind(c.active)
        .bind(c.balance_cents)
        .bind(c.country.as_str())
        .bind(c.score)
        .execute(conn)
        .await?;
    if r.rows_affected() != 1 {
        bail!("raw insert: id {} already exists", c.id);
    }
    Ok(())
}

/// W5 insert: one transaction, one `INSERT … ON CONFLICT DO NOTHING`, commit.
pub(crate) async fn insert(raw: &Raw, c: &Customer) -> Result<()> {
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            insert_in(&mut tx, c).await?;
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin().await?;
            insert_in_pg(&mut tx, c).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// W5 get: a read-only transaction, `SELECT … WHERE id = ?`, decode, commit.
pub(crate) async fn get(raw: &Raw, id: Uuid) -> Result<(Customer, i64)> {
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let row = sqlx::query(lite::GET)
                .bind(id.hyphenated().to_string())
                .fetch_optional(&mut *tx)
                .await?
                .with_context(|| format!("raw get: {id} not found"))?;
            let out = decode_sqlite(&row)?;
            tx.commit().await?;
            Ok(out)
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin_with("BEGIN READ ONLY").await?;
            let row = sqlx::query(pg::GET)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .with_context(|| format!("raw get: {id} not found"))?;
            let out = decode_pg(&row)?;
            tx.commit().await?;
            Ok(out)
        }
    }
}

/// W5 get as a sqlx user writes it: one bare `SELECT … WHERE id = ?` on the pool (no
/// transaction: one round trip), decode.
pub(crate) async fn get_bare(raw: &Raw, id: Uuid) -> Result<(Customer, i64)> {
    match raw {
        Raw::Sqlite(pool) => {
            let row = sqlx::query(lite::GET)
                .bind(id.hyphenated().to_string())
                .fetch_optional(pool)
                .await?
                .with_context(|| format!("raw get: {id} not found"))?;
            decode_sqlite(&row)
        }
        Raw::Pg(pool) => {
            let row = sqlx::query(pg::GET)
                .bind(id)
                .fetch_optional(pool)
                .await?
                .with_context(|| format!("raw get: {id} not found"))?;
            decode_pg(&row)
        }
    }
}

/// W5 update: one transaction: load, change `balance_cents`, write back with an optimistic
/// version check; returns the new version.
pub(crate) async fn update_balance(raw: &Raw, id: Uuid, delta: i64) -> Result<i64> {
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let id_text = id.hyphenated().to_string();
            let row = sqlx::query(lite::GET)
                .bind(id_text.as_str())
                .fetch_optional(&mut *tx)
                .await?
                .with_context(|| format!("raw update: {id} not found"))?;
            let (mut c, version) = decode_sqlite(&row)?;
            c.balance_cents += delta;
            let new_version = version + 1;
            let r = sqlx::query(lite::UPDATE)
                .bind(new_version)
                .bind(serde_json::to_string(&c)?)
                .bind(c.age)
                .bind(c.active)
                .bind(c.balance_cents)
                .bind(c.country.as_str())
                .bind(c.score)
                .bind(id_text)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() != 1 {
                bail!("raw update: version conflict on {id}");
            }
            tx.commit().await?;
            Ok(new_version)
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin().await?;
            let row = sqlx::query(pg::GET)
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?
                .with_context(|| format!("raw update: {id} not found"))?;
            let (mut c, version) = decode_pg(&row)?;
            c.balance_cents += delta;
            let new_version = version + 1;
            let r = sqlx::query(pg::UPDATE)
                .bind(new_version)
                .bind(serde_json::to_string(&c)?)
                .bind(c.age)
                .bind(c.active)
                .bind(c.balance_cents)
                .bind(c.country.as_str())
                .bind(c.score)
                .bind(id)
                .bind(version)
                .execute(&mut *tx)
                .await?;
            if r.rows_affected() != 1 {
                bail!("raw update: version conflict on {id}");
            }
            tx.commit().await?;
            Ok(new_version)
        }
    }
}

/// W7 find: a read-only transaction running the same statement larder compiles for
/// `country = ? AND age >= ? ORDER BY score DESC (, id ASC) LIMIT page + 1`; returns the
/// page and whether another follows.
pub(crate) async fn find(
    raw: &Raw,
    country: &str,
    min_age: i64,
    page: i64,
) -> Result<(Vec<(Customer, i64)>, bool)> {
    let mut items = match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            let rows = sqlx::query(lite::FIND)
                .bind(country)
                .bind(min_age)
                .bind(page + 1)
                .fetch_all(&mut *tx)
                .await?;
            let items = rows.iter().map(decode_sqlite).collect::<Result<Vec<_>>>()?;
            tx.commit().await?;
            items
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin_with("BEGIN READ ONLY").await?;
            let rows = sqlx::query(pg::FIND)
                .bind(country)
                .bind(min_age)
                .bind(page + 1)
                .fetch_all(&mut *tx)
                .await?;
            let items = rows.iter().map(decode_pg).collect::<Result<Vec<_>>>()?;
            tx.commit().await?;
            items
        }
    };
    let page = usize::try_from(page)?;
    let more = items.len() > page;
    items.truncate(page);
    Ok((items, more))
}

/// W8 stream: every row of larder's table, in id order, fetched as a stream in a
/// read-only transaction and decoded one by one. Returns (rows, sum of balances).
pub(crate) async fn stream_larder_table(raw: &Raw) -> Result<(u64, i64)> {
    let mut n = 0_u64;
    let mut sum = 0_i64;
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin().await?;
            {
                let mut rows = sqlx::query(lite::STREAM_LARDER_TABLE).fetch(&mut *tx);
                while let Some(row) = rows.try_next().await? {
                    let (c, _v) = decode_sqlite(&row)?;
                    n += 1;
                    sum = sum.wrapping_add(c.balance_cents);
                }
            }
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin_with("BEGIN READ ONLY").await?;
            {
                let mut rows = sqlx::query(pg::STREAM_LARDER_TABLE).fetch(&mut *tx);
                while let Some(row) = rows.try_next().await? {
                    let (c, _v) = decode_pg(&row)?;
                    n += 1;
                    sum = sum.wrapping_add(c.balance_cents);
                }
            }
            tx.commit().await?;
        }
    }
    Ok((n, sum))
}

/// Bulk loading (not measured): multi-row inserts of version-1 rows into `table` (either
/// benchmark table), in one transaction. The rows are exactly what larder writes: the
/// body is `serde_json::to_string` of the entity and the field columns mirror it.
pub(crate) async fn bulk_insert(raw: &Raw, table: &str, rows: &[Customer]) -> Result<()> {
    const PER_STATEMENT: usize = 1_000;
    if table != LARDER_TABLE && table != RAW_TABLE {
        bail!("not a benchmark table: {table}");
    }
    let head = format!("INSERT INTO \"{table}\" ({COLUMNS}) ");
    let bodies = rows
        .iter()
        .map(serde_json::to_string)
        .collect::<Result<Vec<_>, _>>()?;
    match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            for (chunk, bodies) in rows.chunks(PER_STATEMENT).zip(bodies.chunks(PER_STATEMENT)) {
                let mut qb = QueryBuilder::<Sqlite>::new(head.as_str());
                qb.push_values(chunk.iter().zip(bodies), |mut b, (c, body)| {
                    b.push_bind(c.id.hyphenated().to_string())
                        .push_bind(1_i64)
                        .push_bind(body.as_str())
                        .push_bind(c.age)
                        .push_bind(c.active)
                        .push_bind(c.balance_cents)
                        .push_bind(c.country.clone())
                        .push_bind(c.score);
                });
                qb.build().persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
        Raw::Pg(pool) => {
            let mut tx = pool.begin().await?;
            for (chunk, bodies) in rows.chunks(PER_STATEMENT).zip(bodies.chunks(PER_STATEMENT)) {
                let mut qb = QueryBuilder::<Postgres>::new(head.as_str());
                qb.push_values(chunk.iter().zip(bodies), |mut b, (c, body)| {
                    b.push_bind(c.id)
                        .push_bind(1_i64)
                        .push("CAST(")
                        .push_bind_unseparated(body.as_str())
                        .push_unseparated(" AS jsonb)")
                        .push_bind(c.age)
                        .push_bind(c.active)
                        .push_bind(c.balance_cents)
                        .push_bind(c.country.clone())
                        .push_bind(c.score);
                });
                qb.build().persistent(false).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Copies larder's table into the raw table (`INSERT … SELECT`, same rows, same order).
pub(crate) async fn copy_larder_into_raw(raw: &Raw) -> Result<u64> {
    const SQL: &str = r#"INSERT INTO "bench_raw_customers" ("id", "version", "body", "age", "active", "balance_cents", "country", "score") SELECT "id", "version", "body", "age", "active", "balance_cents", "country", "score" FROM "bench_larder_customers" ORDER BY "id""#;
    Ok(match raw {
        Raw::Sqlite(pool) => {
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
            let n = sqlx::query(SQL).execute(&mut *tx).await?.rows_affected();
            tx.commit().await?;
            n
        }
        Raw::Pg(pool) => sqlx::query(SQL).execute(pool).await?.rows_affected(),
    })
}

/// Refreshes planner statistics (and, on PostgreSQL, the visibility map and hint bits, so
/// that no measured read pays for them) on both tables.
pub(crate) async fn analyze(raw: &Raw) -> Result<()> {
    match raw {
        Raw::Sqlite(pool) => {
            sqlx::query("ANALYZE").execute(pool).await?;
        }
        Raw::Pg(pool) => {
            sqlx::query(r#"VACUUM ANALYZE "bench_larder_customers""#)
                .execute(pool)
                .await?;
            sqlx::query(r#"VACUUM ANALYZE "bench_raw_customers""#)
                .execute(pool)
                .await?;
        }
    }
    Ok(())
}

/// The query plan of the W7 statement on a table (`EXPLAIN`), one line per plan node.
pub(crate) async fn explain_find(
    raw: &Raw,
    table: &str,
    country: &str,
    min_age: i64,
) -> Result<String> {
    if table != LARDER_TABLE && table != RAW_TABLE {
        bail!("not a benchmark table: {table}");
    }
    Ok(match raw {
        Raw::Sqlite(pool) => {
            let sql = format!(
                "EXPLAIN QUERY PLAN {}",
                lite::FIND.replace(RAW_TABLE, table)
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .bind(country)
                .bind(min_age)
                .bind(51_i64)
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(3))
                .collect::<Result<Vec<_>, _>>()?
                .join("; ")
        }
        Raw::Pg(pool) => {
            // EXPLAIN cannot take parameters: the values are constants written here.
            let sql = format!(
                "EXPLAIN {}",
                pg::FIND
                    .replace(RAW_TABLE, table)
                    .replace("$1", &format!("'{country}'"))
                    .replace("$2", &min_age.to_string())
                    .replace("$3", "51")
            );
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
                .fetch_all(pool)
                .await?;
            rows.iter()
                .map(|r| r.try_get::<String, _>(0).map(|s| s.trim().to_owned()))
                .collect::<Result<Vec<_>, _>>()?
                .join(" / ")
        }
    })
}
