//! M1/M2 (the migrations issue): applying N small migrations across 10 modules, and
//! `status` on a database with N applied migrations — larder's runner against executing
//! the same scripts (and reading the same history rows) directly through sqlx.
//!
//! Each side gets its own fresh database per run. The raw side runs every script in its
//! own transaction (`BEGIN IMMEDIATE` on SQLite), like the runner, but keeps no history
//! and takes no lock: the difference is the runner's whole overhead (verification, lock,
//! re-check, history row). Target: runner time ≤ 1.2 × raw, i.e. a throughput ratio ≥ 0.83.

use anyhow::Result;
use larder::migrate::{self, MigrationSet, Migrator};
use sqlx::Row;

use super::Ctx;
use crate::backends::Raw;
use crate::measure::{Metric, Side, Spent, phase};

const MODULES: usize = 10;

fn scripts(total: usize, prefix: &str) -> Vec<(String, Vec<(String, String)>)> {
    let per = total.div_ceil(MODULES);
    (0..MODULES)
        .map(|m| {
            let files = (1..=per)
                .map(|v| {
                    let t = format!("{prefix}{m}_{v}");
                    (
                        format!("{v}_create_{t}.sql"),
                        format!(
                            "CREATE TABLE {t} (id INTEGER PRIMARY KEY, note TEXT NOT NULL);\n\
                             INSERT INTO {t} (id, note) VALUES (1, 'seed');"
                        ),
                    )
                })
                .collect();
            (format!("mod{m}"), files)
        })
        .collect()
}

async fn raw_apply(raw: &Raw, modules: &[(String, Vec<(String, String)>)]) -> Result<()> {
    match raw {
        Raw::Sqlite(pool) => {
            let mut conn = pool.acquire().await?;
            for (_, files) in modules {
                for (_, sql) in files {
                    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("COMMIT").execute(&mut *conn).await?;
                }
            }
        }
        Raw::Pg(pool) => {
            let mut conn = pool.acquire().await?;
            for (_, files) in modules {
                for (_, sql) in files {
                    sqlx::query("BEGIN").execute(&mut *conn).await?;
                    sqlx::raw_sql(sqlx::AssertSqlSafe(sql.clone()))
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("COMMIT").execute(&mut *conn).await?;
                }
            }
        }
    }
    Ok(())
}

/// PostgreSQL: `fresh()` recreates only the entity tables, so drop what earlier runs of
/// this workload created (not timed). SQLite gets a new file per `fresh()`.
async fn reset(raw: &Raw) -> Result<()> {
    if let Raw::Pg(pool) = raw {
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT quote_ident(tablename) FROM pg_tables WHERE schemaname = current_schema() \
             AND (tablename ~ '^[lr]r[0-9]+m[0-9]+_' OR tablename = '_larder_migrations')",
        )
        .fetch_all(pool)
        .await?;
        for chunk in names.chunks(200) {
            // Identifiers come from the catalog, quoted by quote_ident.
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                "DROP TABLE IF EXISTS {}",
                chunk.join(", ")
            )))
            .execute(pool)
            .await?;
        }
    }
    Ok(())
}

/// What a status needs from the database: every history row, decoded.
async fn raw_status(raw: &Raw) -> Result<usize> {
    const Q: &str = "SELECT module, version, name, kind, checksum, applied_at, execution_ms, success \
                     FROM _larder_migrations ORDER BY module, version, name";
    type Row = (String, i64, String, String, String, String, i64, bool);
    fn decode<R: Row_>(r: &R) -> Row {
        r.row()
    }
    let rows: Vec<Row> = match raw {
        Raw::Sqlite(pool) => sqlx::query(Q)
            .fetch_all(pool)
            .await?
            .iter()
            .map(decode)
            .collect(),
        Raw::Pg(pool) => sqlx::query(Q)
            .fetch_all(pool)
            .await?
            .iter()
            .map(decode)
            .collect(),
    };
    let n = std::hint::black_box(rows).len();
    Ok(n)
}

/// Decodes a history row on either backend (the same work `status` does).
trait Row_ {
    fn row(&self) -> (String, i64, String, String, String, String, i64, bool);
}

macro_rules! row_impl {
    ($t:ty) => {
        impl Row_ for $t {
            fn row(&self) -> (String, i64, String, String, String, String, i64, bool) {
                (
                    self.get(0),
                    self.get(1),
                    self.get(2),
                    self.get(3),
                    self.get(4),
                    self.get(5),
                    self.get(6),
                    self.get(7),
                )
            }
        }
    };
}
row_impl!(sqlx::sqlite::SqliteRow);
row_impl!(sqlx::postgres::PgRow);

/// Runs M1 (apply) and M2 (status).
pub(crate) async fn run(cx: &Ctx<'_>) -> Result<Vec<Metric>> {
    let n = cx.sizes.migrations;
    let mut apply = Metric::new(format!("M1 apply {n} migrations"), "migr/s", 0.83);
    let mut status = Metric::new(format!("M2 status ({n} applied)"), "status/s", 0.83);
    const STATUS_REPEATS: usize = 20;
    for run in 0..cx.runs {
        let mut spent = Spent::default();
        let mut status_spent = Spent::default();
        for side in Side::order(run) {
            // Fresh tables for this side: larder's and raw's tables have different names,
            // and each side gets its own database.
            let db = cx.target.fresh().await?;
            reset(&db.raw).await?;
            let prefix = format!("{}r{run}m", &side.name()[..1]);
            let modules = scripts(n, &prefix);
            match side {
                Side::Larder => {
                    let parsed = modules
                        .iter()
                        .map(|(m, files)| migrate::parse_module(m, files, m))
                        .collect::<Result<Vec<_>, _>>()?;
                    let migrator = Migrator::new(MigrationSet::new(parsed)?);
                    let mut d = migrate::driver(&db.store).await?;
                    let (report, wall, cpu) = phase(async {
                        Ok(migrator.up(d.as_mut(), None, &mut |_, _, _| {}).await?)
                    })
                    .await?;
                    anyhow::ensure!(
                        report.applied.len() == n,
                        "larder applied {}",
                        report.applied.len()
                    );
                    spent.add(side, wall, cpu);
                    let (_, wall, cpu) = phase(async {
                        for _ in 0..STATUS_REPEATS {
                            let rows = migrator.status(d.as_mut()).await?;
                            std::hint::black_box(rows.len());
                        }
                        Ok(())
                    })
                    .await?;
                    status_spent.add(side, wall, cpu);
                }
                Side::Raw => {
                    let (_, wall, cpu) = phase(raw_apply(&db.raw, &modules)).await?;
                    spent.add(side, wall, cpu);
                    // The raw status reads the same history rows: build them with larder
                    // on this side's database first (not timed).
                    let parsed = modules
                        .iter()
                        .map(|(m, files)| migrate::parse_module(m, files, m))
                        .collect::<Result<Vec<_>, _>>()?;
                    let migrator = Migrator::new(MigrationSet::new(parsed)?);
                    let mut d = migrate::driver(&db.store).await?;
                    migrator.baseline(d.as_mut(), None, i64::MAX).await?;
                    drop(d);
                    let (_, wall, cpu) = phase(async {
                        for _ in 0..STATUS_REPEATS {
                            std::hint::black_box(raw_status(&db.raw).await?);
                        }
                        Ok(())
                    })
                    .await?;
                    status_spent.add(side, wall, cpu);
                }
            }
            db.close().await;
        }
        apply.record(n, &spent);
        status.record(STATUS_REPEATS, &status_spent);
    }
    Ok(vec![apply, status])
}
