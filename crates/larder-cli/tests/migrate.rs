//! `larder migrate`, tested by running the real binary, on SQLite and PostgreSQL.
//!
//! PostgreSQL cases use `LARDER_TEST_POSTGRES_URL` with a schema per test (through the
//! URL's `options=-c search_path=…`), and skip without it unless
//! `LARDER_REQUIRE_BACKENDS=1`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sqlx::Row;

/// Migrations of larder's built-in `larder` module (bookkeeping, event store, outbox, blob references).
const BUILTIN: usize = 4;

fn larder(url: &str, dir: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_larder"));
    c.env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .env_remove("LARDER_MIGRATIONS_DIR")
        .args(["--database-url", url, "migrate", "--dir"])
        .arg(dir);
    c
}

fn run(url: &str, dir: &Path, args: &[&str]) -> Output {
    larder(url, dir).args(args).output().expect("run larder")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{}", text(o));
    text(o)
}

struct Db {
    url: String,
    backend: &'static str,
    dir: PathBuf,
    schema: Option<String>,
}

fn scratch(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("larder-migrate-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn pg_url() -> Option<String> {
    let url = std::env::var("LARDER_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty());
    if url.is_none() {
        assert!(
            std::env::var("LARDER_REQUIRE_BACKENDS").as_deref() != Ok("1"),
            "LARDER_TEST_POSTGRES_URL is not set and LARDER_REQUIRE_BACKENDS=1 forbids skipping"
        );
        eprintln!("skipping the PostgreSQL half: LARDER_TEST_POSTGRES_URL is not set");
    }
    url
}

/// A fresh SQLite database and, when configured, a fresh PostgreSQL schema.
fn databases(name: &str) -> Vec<Db> {
    let mut out = Vec::new();
    let dir = scratch(&format!("{name}-sqlite"));
    out.push(Db {
        url: format!("sqlite://{}", dir.join("db.sqlite").display()),
        backend: "sqlite",
        dir: dir.join("src"),
        schema: None,
    });
    if let Some(base) = pg_url() {
        let schema = format!("lm_{name}");
        rt().block_on(async {
            let pool = sqlx::PgPool::connect(&base).await.unwrap();
            for s in [
                format!("DROP SCHEMA IF EXISTS {schema} CASCADE"),
                format!("CREATE SCHEMA {schema}"),
            ] {
                sqlx::query(sqlx::AssertSqlSafe(s))
                    .execute(&pool)
                    .await
                    .unwrap();
            }
            pool.close().await;
        });
        let sep = if base.contains('?') { '&' } else { '?' };
        out.push(Db {
            url: format!("{base}{sep}options=-c%20search_path%3D{schema}"),
            backend: "postgresql",
            dir: scratch(&format!("{name}-pg")).join("src"),
            schema: Some(schema),
        });
    }
    out
}

fn write(dir: &Path, module: &str, file: &str, sql: &str) {
    let d = dir.join(module).join("migrations");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(file), sql).unwrap();
}

/// Rows of `sql` (one text column) on the test database.
fn query(db: &Db, sql: &str) -> Vec<String> {
    rt().block_on(async {
        if db.backend == "sqlite" {
            let pool = sqlx::SqlitePool::connect(&db.url).await.unwrap();
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows.iter().map(|r| r.get::<String, _>(0)).collect()
        } else {
            let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
            let rows = sqlx::query(sqlx::AssertSqlSafe(sql.to_owned()))
                .fetch_all(&pool)
                .await
                .unwrap();
            pool.close().await;
            rows.iter().map(|r| r.get::<String, _>(0)).collect()
        }
    })
}

fn history(db: &Db) -> Vec<String> {
    query(
        db,
        "SELECT module || '/' || CAST(version AS TEXT) || '_' || name FROM _larder_migrations ORDER BY module, version, name",
    )
}

fn tables(db: &Db) -> Vec<String> {
    if db.backend == "sqlite" {
        query(
            db,
            "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name",
        )
    } else {
        query(
            db,
            &format!(
                "SELECT table_name::text FROM information_schema.tables WHERE table_schema = '{}' ORDER BY 1",
                db.schema.as_deref().unwrap()
            ),
        )
    }
}

/// A normalized description of the schema: tables, columns, indexes.
fn schema_snapshot(db: &Db) -> Vec<String> {
    if db.backend == "sqlite" {
        query(
            db,
            "SELECT type || ' ' || name || ' ' || COALESCE(sql, '') FROM sqlite_master \
             WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name",
        )
    } else {
        let s = db.schema.as_deref().unwrap();
        let mut v = query(
            db,
            &format!(
                "SELECT table_name || '.' || column_name || ' ' || data_type || ' ' || is_nullable \
                 FROM information_schema.columns WHERE table_schema = '{s}' ORDER BY 1"
            ),
        );
        v.extend(query(
            db,
            &format!("SELECT indexname || ' ' || indexdef FROM pg_indexes WHERE schemaname = '{s}' ORDER BY 1"),
        ));
        v.iter().map(|l| l.replace(&format!("{s}."), "")).collect()
    }
}

#[test]
fn up_status_verify_down_round_trip() {
    for db in databases("round_trip") {
        write(
            &db.dir,
            "shop",
            "1_create_orders.sql",
            "CREATE TABLE orders (id INTEGER PRIMARY KEY, total INTEGER NOT NULL);",
        );
        write(
            &db.dir,
            "shop",
            "1_create_orders.down.sql",
            "DROP VIEW IF EXISTS totals;\nDROP TABLE orders;",
        );
        write(
            &db.dir,
            "shop",
            "2_add_lines.sql",
            "CREATE TABLE lines (id INTEGER PRIMARY KEY, order_id INTEGER NOT NULL);\nCREATE INDEX lines_order ON lines (order_id);",
        );
        write(&db.dir, "shop", "2_add_lines.down.sql", "DROP TABLE lines;");
        write(
            &db.dir,
            "shop",
            "R__totals.sql",
            "CREATE VIEW IF NOT EXISTS totals AS SELECT COUNT(*) AS n FROM orders;"
                .replace(
                    "CREATE VIEW IF NOT EXISTS",
                    if db.backend == "sqlite" {
                        "CREATE VIEW IF NOT EXISTS"
                    } else {
                        "CREATE OR REPLACE VIEW"
                    },
                )
                .as_str(),
        );
        let out = ok(&run(&db.url, &db.dir, &["up"]));
        assert!(
            out.contains(&format!("{} migration(s) applied", 3 + BUILTIN)),
            "{out}"
        );
        assert_eq!(history(&db).len(), 3 + BUILTIN);
        let status = ok(&run(&db.url, &db.dir, &["status", "--json"]));
        let v: serde_json::Value = serde_json::from_str(status.lines().next().unwrap()).unwrap();
        assert!(
            v["migrations"]
                .as_array()
                .unwrap()
                .iter()
                .all(|m| m["state"] == "applied"),
            "{status}"
        );
        ok(&run(&db.url, &db.dir, &["verify"]));
        // Re-running applies nothing.
        assert!(ok(&run(&db.url, &db.dir, &["up"])).contains("0 migration(s) applied"));
        // Down one, then down to before version 1 of `shop`.
        assert!(ok(&run(&db.url, &db.dir, &["down"])).contains("reverted shop/2_add_lines"));
        assert!(!tables(&db).contains(&"lines".to_owned()));
        ok(&run(
            &db.url,
            &db.dir,
            &["down", "--module", "shop", "--to", "0"],
        ));
        assert!(!tables(&db).contains(&"orders".to_owned()));
        // Up again restores everything.
        ok(&run(&db.url, &db.dir, &["up"]));
        assert!(tables(&db).contains(&"lines".to_owned()), "{}", db.backend);
        // A repeatable migration is re-applied when it changes.
        let changed = if db.backend == "sqlite" {
            "DROP VIEW IF EXISTS totals; CREATE VIEW totals AS SELECT COUNT(*) AS n, 1 AS v FROM orders;"
        } else {
            "CREATE OR REPLACE VIEW totals AS SELECT COUNT(*) AS n, 1 AS v FROM orders;"
        };
        write(&db.dir, "shop", "R__totals.sql", changed);
        assert!(ok(&run(&db.url, &db.dir, &["up"])).contains("applied shop/R__totals"));
        // A migration without a down script cannot be reverted: nothing happens.
        write(
            &db.dir,
            "shop",
            "3_no_down.sql",
            "CREATE TABLE t3 (x INTEGER);",
        );
        ok(&run(&db.url, &db.dir, &["up"]));
        let o = run(&db.url, &db.dir, &["down", "--steps", "2"]);
        assert!(
            !o.status.success() && text(&o).contains("shop/3_no_down has no down script"),
            "{}",
            text(&o)
        );
        assert!(tables(&db).contains(&"lines".to_owned()));
    }
}

#[test]
fn new_scaffolds_files_that_up_applies_and_dry_run_prints_the_plan() {
    for db in databases("scaffold") {
        let o = ok(&run(
            &db.url,
            &db.dir,
            &["new", "billing", "create_invoices", "--json"],
        ));
        let v: serde_json::Value = serde_json::from_str(o.lines().next().unwrap()).unwrap();
        let up = PathBuf::from(v["up"].as_str().unwrap());
        assert!(up.exists() && PathBuf::from(v["down"].as_str().unwrap()).exists());
        std::fs::write(&up, "CREATE TABLE invoices (id INTEGER PRIMARY KEY);\n").unwrap();
        let second = ok(&run(
            &db.url,
            &db.dir,
            &["new", "billing", "add_paid", "--json"],
        ));
        let v2: serde_json::Value = serde_json::from_str(second.lines().next().unwrap()).unwrap();
        assert!(
            v2["version"].as_i64() > v["version"].as_i64(),
            "versions grow"
        );
        std::fs::write(
            v2["up"].as_str().unwrap(),
            "ALTER TABLE invoices ADD COLUMN paid INTEGER;\n",
        )
        .unwrap();
        let plan = ok(&run(&db.url, &db.dir, &["up", "--dry-run"]));
        assert!(
            plan.contains("CREATE TABLE invoices")
                && plan.contains(&format!("{} migration(s) would be applied", 2 + BUILTIN)),
            "{plan}"
        );
        assert!(
            !tables(&db).contains(&"invoices".to_owned()),
            "dry run applied something"
        );
        let to = v["version"].as_i64().unwrap().to_string();
        ok(&run(&db.url, &db.dir, &["up", "--to", &to]));
        let h = history(&db);
        assert!(
            h.contains(&format!("billing/{to}_create_invoices"))
                && !h.iter().any(|m| m.ends_with("_add_paid")),
            "--to stops at the version: {h:?}"
        );
        ok(&run(&db.url, &db.dir, &["up"]));
        assert_eq!(history(&db).len(), 2 + BUILTIN);

        // The scaffolded down script is comments only: `down` refuses it (dry run too),
        // reverting nothing, until it has statements or is marked as a no-op.
        let down = std::fs::read_to_string(v2["down"].as_str().unwrap()).unwrap();
        assert!(down.contains("-- larder:no-op-down"), "{down}");
        assert!(migrate_split_is_empty(&down), "{down}");
        for args in [&["down"][..], &["down", "--dry-run"]] {
            let o = run(&db.url, &db.dir, args);
            assert_eq!(o.status.code(), Some(1), "{args:?}: {}", text(&o));
            assert!(
                text(&o).contains("_add_paid has no statements")
                    && text(&o).contains("`-- larder:no-op-down`"),
                "{}",
                text(&o)
            );
        }
        assert_eq!(history(&db).len(), 2 + BUILTIN);
        std::fs::write(
            v2["down"].as_str().unwrap(),
            "-- larder:no-op-down\n-- SQLite before 3.35 cannot drop a column.\n",
        )
        .unwrap();
        let plan = ok(&run(&db.url, &db.dir, &["down", "--dry-run"]));
        assert!(plan.contains("_add_paid (no-op down"), "{plan}");
        assert!(ok(&run(&db.url, &db.dir, &["down"])).contains("1 migration(s) reverted"));
        assert_eq!(history(&db).len(), 1 + BUILTIN);
        // The first one's scaffold was never filled in either.
        let o = run(&db.url, &db.dir, &["down"]);
        assert!(
            text(&o).contains("_create_invoices has no statements"),
            "{}",
            text(&o)
        );
        assert!(tables(&db).contains(&"invoices".to_owned()));
    }
}

/// Whether a script has no statement (comments only), as the migration runner sees it.
fn migrate_split_is_empty(script: &str) -> bool {
    script
        .lines()
        .all(|l| l.trim().is_empty() || l.trim_start().starts_with("--"))
}

/// A tree of 3 modules with dependencies and ~30 migrations.
fn big_tree(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for (m, deps) in [
        ("customers", ""),
        ("orders", "customers"),
        ("reports", "orders"),
    ] {
        if !deps.is_empty() {
            write(dir, m, "module.toml", &format!("depends_on = [\"{deps}\"]"));
        }
        for v in 1..=10 {
            write(
                dir,
                m,
                &format!("{v}_step{v}.sql"),
                &format!(
                    "CREATE TABLE {m}_{v} (id INTEGER PRIMARY KEY, note TEXT);\n\
                     CREATE INDEX {m}_{v}_note ON {m}_{v} (note);\n\
                     INSERT INTO {m}_{v} (id, note) VALUES (1, 'seed');"
                ),
            );
        }
    }
}

/// E1: 8 concurrent migrator processes on an empty database apply every migration
/// exactly once, all exit successfully, and the schema equals a single run's.
#[test]
fn e1_eight_concurrent_migrators_apply_each_migration_exactly_once() {
    for db in databases("e1") {
        big_tree(&db.dir);
        let children: Vec<_> = (0..8)
            .map(|_| larder(&db.url, &db.dir).arg("up").spawn().unwrap())
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}: {}", db.backend, text(&o));
        }
        let h = history(&db);
        assert_eq!(h.len(), 30 + BUILTIN, "{}: {h:?}", db.backend);
        let mut dedup = h.clone();
        dedup.dedup();
        assert_eq!(dedup, h, "each migration recorded once");
        // The same tree applied by a single migrator gives the same schema.
        let single = databases("e1_single")
            .into_iter()
            .find(|d| d.backend == db.backend)
            .unwrap();
        big_tree(&single.dir);
        ok(&run(&single.url, &single.dir, &["up"]));
        assert_eq!(
            schema_snapshot(&db),
            schema_snapshot(&single),
            "{}",
            db.backend
        );
        ok(&run(&db.url, &db.dir, &["verify"]));
    }
}

/// E2: a no-transaction `CREATE INDEX CONCURRENTLY` among concurrent migrators finishes
/// without deadlock and the index is valid (PostgreSQL).
#[test]
fn e2_create_index_concurrently_among_concurrent_migrators() {
    for db in databases("e2")
        .into_iter()
        .filter(|d| d.backend == "postgresql")
    {
        write(
            &db.dir,
            "big",
            "1_table.sql",
            "CREATE TABLE big (id BIGINT PRIMARY KEY, v INT NOT NULL);\nINSERT INTO big SELECT g, g % 97 FROM generate_series(1, 200000) g;",
        );
        write(
            &db.dir,
            "big",
            "2_index.sql",
            "-- larder:no-transaction\nCREATE INDEX CONCURRENTLY big_v ON big (v);",
        );
        write(
            &db.dir,
            "big",
            "3_after.sql",
            "CREATE TABLE after_index (id INT);",
        );
        let children: Vec<_> = (0..8)
            .map(|_| {
                larder(&db.url, &db.dir)
                    .args(["up", "--lock-timeout", "120"])
                    .spawn()
                    .unwrap()
            })
            .collect();
        for c in children {
            let o = c.wait_with_output().unwrap();
            assert!(o.status.success(), "{}", text(&o));
        }
        let valid = query(
            &db,
            "SELECT CAST(i.indisvalid AS TEXT) FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid WHERE c.relname = 'big_v'",
        );
        assert_eq!(valid, ["true"]);
        assert_eq!(history(&db).len(), 3 + BUILTIN);
    }
}

/// E3: a content change of an applied migration stops the run naming module and version;
/// a whitespace-only change (CRLF, trailing spaces, trailing blank lines) does not.
#[test]
fn e3_checksum_drift_stops_the_run() {
    for db in databases("e3") {
        let sql =
            "CREATE TABLE drift (id INTEGER PRIMARY KEY);\nCREATE INDEX drift_id ON drift (id);\n";
        write(&db.dir, "app", "7_drift.sql", sql);
        ok(&run(&db.url, &db.dir, &["up"]));
        write(
            &db.dir,
            "app",
            "7_drift.sql",
            &sql.replace('\n', "  \r\n")
                .replace("(id);", "(id);\r\n\r\n"),
        );
        ok(&run(&db.url, &db.dir, &["verify"]));
        ok(&run(&db.url, &db.dir, &["up"]));
        write(
            &db.dir,
            "app",
            "7_drift.sql",
            &sql.replace("drift_id", "drift_id2"),
        );
        let o = run(&db.url, &db.dir, &["up"]);
        assert!(!o.status.success());
        assert!(
            text(&o).contains("migration app/7_drift was applied with checksum"),
            "{}",
            text(&o)
        );
        let v = run(&db.url, &db.dir, &["verify"]);
        assert_eq!(v.status.code(), Some(3), "{}", text(&v));
        // A deleted file of an applied migration also stops it, unless overridden.
        std::fs::remove_file(db.dir.join("app/migrations/7_drift.sql")).unwrap();
        let o = run(&db.url, &db.dir, &["up"]);
        assert!(
            text(&o).contains("app/7_drift is applied but its file is missing"),
            "{}",
            text(&o)
        );
        ok(&run(&db.url, &db.dir, &["up", "--ignore-missing"]));
    }
}

/// E4: a migration failing at statement 3 of 5 leaves no trace and says what failed and
/// what was applied before; a failing no-transaction migration is dirty and blocks the
/// next run until repaired.
#[test]
fn e4_failed_migrations_leave_no_trace_or_stay_dirty_until_repaired() {
    for db in databases("e4") {
        write(&db.dir, "app", "1_ok.sql", "CREATE TABLE ok1 (id INTEGER);");
        write(
            &db.dir,
            "app",
            "2_bad.sql",
            "CREATE TABLE half (id INTEGER);\nINSERT INTO half VALUES (1);\n\nINSERT INTO no_such_table VALUES (1);\nCREATE TABLE never (id INTEGER);\nSELECT 1;",
        );
        let o = run(&db.url, &db.dir, &["up"]);
        assert_eq!(o.status.code(), Some(1));
        let msg = text(&o);
        assert!(
            msg.contains("migration app/2_bad") && msg.contains("2_bad.sql"),
            "{msg}"
        );
        assert!(msg.contains("statement 3 of 5 (line 4)"), "{msg}");
        assert!(
            msg.contains("applied before it in this run: larder/"),
            "{msg}"
        );
        assert!(msg.contains("app/1_ok"), "{msg}");
        let t = tables(&db);
        assert!(
            t.contains(&"ok1".to_owned()) && !t.contains(&"half".to_owned()),
            "{t:?}"
        );
        assert!(!history(&db).iter().any(|h| h.contains("2_bad")));
        // Fixed file: applies.
        write(
            &db.dir,
            "app",
            "2_bad.sql",
            "CREATE TABLE half (id INTEGER);",
        );
        ok(&run(&db.url, &db.dir, &["up"]));

        // A no-transaction migration that fails stays dirty and blocks later runs.
        write(
            &db.dir,
            "app",
            "3_notx.sql",
            "-- larder:no-transaction\nCREATE TABLE notx (id INTEGER);\nINSERT INTO missing_table VALUES (1);",
        );
        let o = run(&db.url, &db.dir, &["up"]);
        assert!(!o.status.success());
        let status = ok(&run(&db.url, &db.dir, &["status"]));
        assert!(
            status
                .lines()
                .any(|l| l.contains("notx") && l.ends_with("dirty")),
            "{status}"
        );
        let o = run(&db.url, &db.dir, &["up"]);
        assert!(text(&o).contains("app/3_notx is dirty"), "{}", text(&o));
        assert_eq!(run(&db.url, &db.dir, &["verify"]).status.code(), Some(3));
        // Fix by hand, repair, run again.
        write(
            &db.dir,
            "app",
            "3_notx.sql",
            "-- larder:no-transaction\nCREATE TABLE IF NOT EXISTS notx (id INTEGER);",
        );
        ok(&run(&db.url, &db.dir, &["repair", "app", "3"]));
        ok(&run(&db.url, &db.dir, &["up"]));
        ok(&run(&db.url, &db.dir, &["verify"]));
    }
}

/// A dirty migration of a user's module stops `migrate up` until repaired, but not the
/// event store: `larder events` and `larder projections` commands (which apply the
/// built-in module) keep working.
#[test]
fn a_dirty_user_migration_does_not_block_events_commands() {
    for db in databases("dirty_events") {
        write(
            &db.dir,
            "app",
            "1_notx.sql",
            "-- larder:no-transaction\nCREATE TABLE notx (id INTEGER);\nINSERT INTO missing_table VALUES (1);",
        );
        assert!(!run(&db.url, &db.dir, &["up"]).status.success());
        for args in [&["events", "stats"][..], &["projections", "status"]] {
            let o = Command::new(env!("CARGO_BIN_EXE_larder"))
                .env_remove("LARDER_DATABASE_URL")
                .env_remove("LARDER_CONFIG")
                .args(["--database-url", &db.url])
                .args(args)
                .output()
                .unwrap();
            assert!(o.status.success(), "{}: {args:?}: {}", db.backend, text(&o));
        }
        let o = run(&db.url, &db.dir, &["up"]);
        assert!(text(&o).contains("app/1_notx is dirty"), "{}", text(&o));
        write(
            &db.dir,
            "app",
            "1_notx.sql",
            "-- larder:no-transaction\nCREATE TABLE IF NOT EXISTS notx (id INTEGER);",
        );
        ok(&run(&db.url, &db.dir, &["repair", "app", "1"]));
        ok(&run(&db.url, &db.dir, &["up"]));
    }
}

#[test]
fn baseline_marks_an_existing_schema_as_applied() {
    for db in databases("baseline") {
        write(&db.dir, "legacy", "1_a.sql", "CREATE TABLE a (id INTEGER);");
        write(&db.dir, "legacy", "2_b.sql", "CREATE TABLE b (id INTEGER);");
        write(&db.dir, "legacy", "3_c.sql", "CREATE TABLE c (id INTEGER);");
        ok(&run(
            &db.url,
            &db.dir,
            &["baseline", "--module", "legacy", "--to", "2"],
        ));
        ok(&run(&db.url, &db.dir, &["up"]));
        let t = tables(&db);
        assert!(
            t.contains(&"c".to_owned()) && !t.contains(&"a".to_owned()),
            "{t:?}"
        );
    }
}

/// Files that look like migrations but are not read are reported by `status`, `up` and
/// `verify` (stderr, and `skipped_files` in --json), never applied; `verify` still passes.
#[test]
fn skipped_files_are_reported_as_warnings() {
    let db = databases("skipped").remove(0);
    write(&db.dir, "app", "1_a.sql", "CREATE TABLE a (id INTEGER);");
    write(&db.dir, "app", "2_b.SQL", "CREATE TABLE b (id INTEGER);");
    write(
        &db.dir,
        "app",
        "3_c.sql.txt",
        "CREATE TABLE c (id INTEGER);",
    );
    write(&db.dir, "app", "README.md", "notes");
    std::fs::create_dir_all(db.dir.join("app/migrations/old")).unwrap();
    write(
        &db.dir,
        "app",
        "old/4_d.sql",
        "CREATE TABLE d (id INTEGER);",
    );
    let warned = |o: &Output| {
        let err = String::from_utf8_lossy(&o.stderr).into_owned();
        for f in ["2_b.SQL: skipped", "3_c.sql.txt: skipped", "old: skipped"] {
            assert!(
                err.contains(&format!("warning: {}", db.dir.display())) && err.contains(f),
                "{f}: {err}"
            );
        }
        assert!(!err.contains("README"), "{err}");
    };
    let o = run(&db.url, &db.dir, &["up"]);
    ok(&o);
    warned(&o);
    assert_eq!(tables(&db).iter().filter(|t| t.len() == 1).count(), 1);
    let o = run(&db.url, &db.dir, &["verify"]);
    ok(&o);
    warned(&o);
    let o = run(&db.url, &db.dir, &["status", "--json"]);
    warned(&o);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let files: Vec<(&str, &str)> = v["skipped_files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["file"].as_str().unwrap(), f["reason"].as_str().unwrap()))
        .collect();
    assert_eq!(files.len(), 3, "{v}");
    assert!(
        files[0].0.ends_with("app/migrations/2_b.SQL") && files[0].1 == "extension_case",
        "{files:?}"
    );
    assert_eq!((files[1].1, files[2].1), ("not_sql", "folder"), "{files:?}");
}

#[test]
fn bad_input_is_a_clear_error_naming_the_file() {
    let url = format!("sqlite://{}", scratch("bad").join("db.sqlite").display());
    type Files<'a> = &'a [(&'a str, &'a str, &'a str)];
    let cases: [(&str, Files<'_>, &str); 8] = [
        ("dash", &[("m", "1-foo.sql", "SELECT 1;")], "1-foo.sql"),
        (
            "flyway name",
            &[("m", "V1__x.sql", "SELECT 1;")],
            "V1__x.sql",
        ),
        (
            "missing version",
            &[("m", "_x.sql", "SELECT 1;")],
            "`` is not a version",
        ),
        (
            "unparsable name",
            &[("m", "create_things.sql", "SELECT 1;")],
            "create_things.sql",
        ),
        (
            "duplicate version",
            &[
                ("m", "1_a.sql", "SELECT 1;"),
                ("m", "01_b.sql", "SELECT 2;"),
            ],
            "two migrations with version 1",
        ),
        (
            "down without up",
            &[("m", "4_x.down.sql", "SELECT 1;")],
            "4_x.down.sql: down script without its up script",
        ),
        (
            "unknown dependency",
            &[
                ("m", "module.toml", "depends_on = [\"ghost\"]"),
                ("m", "1_a.sql", "SELECT 1;"),
            ],
            "module `m` depends on unknown module `ghost`",
        ),
        (
            "uppercase name",
            &[("m", "1_CreateThings.sql", "SELECT 1;")],
            "1_CreateThings.sql",
        ),
    ];
    for (what, files, needle) in cases {
        let dir = scratch(&format!("bad-{}", what.replace(' ', "_"))).join("src");
        for (m, f, sql) in files {
            write(&dir, m, f, sql);
        }
        let o = run(&url, &dir, &["status"]);
        assert_eq!(o.status.code(), Some(1), "{what}");
        assert!(text(&o).contains(needle), "{what}: {}", text(&o));
    }
}
