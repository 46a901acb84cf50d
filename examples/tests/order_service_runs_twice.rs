//! The README's main command runs again and again on one database: the second run of
//! `order_service` works and finds the first run's data still there.
//!
//! Each run is a separate process running the example's own `main` (this test binary
//! compiles the example as a module and spawns itself for `order_service_child`), against
//! a database of this test's own, given through `LARDER_DATABASE_URL` as a user would.
//!
//! The PostgreSQL case uses `LARDER_TEST_POSTGRES_URL` with a schema of its own, and
//! skips without it unless `LARDER_REQUIRE_BACKENDS=1`.

use std::process::Command;

#[path = "../order_service.rs"]
mod order_service;

/// The example program itself: run only by the tests below, in a child process.
#[test]
#[ignore = "the example's main, run twice in child processes by the_example_runs_twice_*"]
fn order_service_child() {
    order_service::main().unwrap();
}

/// Runs the example once against `url`; returns its output.
fn run_example(url: &str) -> String {
    let out = Command::new(std::env::current_exe().unwrap())
        .args([
            "order_service_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads",
            "1",
        ])
        .env("LARDER_DATABASE_URL", url)
        .env_remove("LARDER_CONFIG")
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "the example failed:\n{text}");
    text
}

/// The counts from "the database now holds N order(s), N customer(s), N cart(s) and N event(s)".
fn holdings(output: &str) -> [u64; 4] {
    let line = output
        .lines()
        .find(|l| l.starts_with("the database now holds "))
        .unwrap_or_else(|| panic!("no summary line in:\n{output}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().unwrap())
        .collect();
    numbers
        .try_into()
        .unwrap_or_else(|n| panic!("expected four numbers in {line:?}, got {n:?}"))
}

/// Two runs on `url`: both succeed, and the second adds to the first's data.
fn runs_twice(url: &str) {
    let first = run_example(url);
    assert!(first.contains("checked out at version 3"), "{first}");
    // Each run: one customer, five accepted orders, one cart of three events.
    assert_eq!(holdings(&first), [5, 1, 1, 3], "{first}");
    let second = run_example(url);
    assert!(second.contains("checked out at version 3"), "{second}");
    assert_eq!(holdings(&second), [10, 2, 2, 6], "{second}");
}

#[test]
fn the_example_runs_twice_on_one_sqlite_file() {
    let dir = std::env::temp_dir().join(format!("larder-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    runs_twice(&format!("sqlite://{}", dir.join("orders.db").display()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_example_runs_twice_on_one_postgres_schema() {
    let Some(base) = std::env::var("LARDER_TEST_POSTGRES_URL")
        .ok()
        .filter(|s| !s.is_empty())
    else {
        assert!(
            std::env::var("LARDER_REQUIRE_BACKENDS").as_deref() != Ok("1"),
            "LARDER_TEST_POSTGRES_URL is not set and LARDER_REQUIRE_BACKENDS=1 forbids skipping"
        );
        eprintln!("SKIPPED: LARDER_TEST_POSTGRES_URL is not set");
        return;
    };
    let schema = "example_order_service_twice";
    let psql = |sql: String| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let pool = sqlx::PgPool::connect(&base).await.unwrap();
            // The schema name is a constant of this test, not input.
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&pool)
                .await
                .unwrap();
            pool.close().await;
        });
    };
    psql(format!("DROP SCHEMA IF EXISTS {schema} CASCADE"));
    psql(format!("CREATE SCHEMA {schema}"));
    let sep = if base.contains('?') { '&' } else { '?' };
    runs_twice(&format!("{base}{sep}options=-c%20search_path%3D{schema}"));
    psql(format!("DROP SCHEMA {schema} CASCADE"));
}
