//! The CLI, tested by running the real binary.

use std::process::Command;

fn larder() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_larder"));
    c.env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG");
    c
}

#[test]
fn help_lists_the_commands() {
    let out = larder().arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    for word in ["doctor", "settings", "--database-url", "--json"] {
        assert!(text.contains(word), "{word} missing from:\n{text}");
    }
}

/// A fresh directory for one test.
fn temp_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("larder-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[track_caller]
fn stdout_ok(out: &std::process::Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).unwrap()
}

#[test]
fn doctor_reports_sqlite_pragmas_by_name() {
    let dir = temp_dir("doctor");
    let url = format!("sqlite://{}", dir.join("app.db").display());
    stdout_ok(
        &larder()
            .args(["migrate", "up", "--database-url", &url])
            .current_dir(&dir)
            .output()
            .unwrap(),
    );
    let out = stdout_ok(
        &larder()
            .args(["doctor", "--json", "--database-url", &url])
            .output()
            .unwrap(),
    );
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["backend"], "sqlite");
    assert_eq!(v["settings"]["journal_mode"], "WAL");
    assert_eq!(v["settings"]["synchronous"], "FULL");
    assert_eq!(v["settings"]["foreign_keys"], "ON");

    let out = stdout_ok(
        &larder()
            .args(["doctor", "--database-url", &url])
            .output()
            .unwrap(),
    );
    for line in [
        "journal_mode = WAL",
        "synchronous = FULL",
        "foreign_keys = ON",
        "busy_timeout = 5000 ms",
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "{line} missing from:\n{out}"
        );
    }
    // Configured durability is what the connection runs with, by name.
    let out = stdout_ok(
        &larder()
            .args(["doctor", "--database-url", &url])
            .env("LARDER_SQLITE_SYNCHRONOUS", "normal")
            .output()
            .unwrap(),
    );
    assert!(out.lines().any(|l| l == "synchronous = NORMAL"), "{out}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn doctor_fails_with_exit_code_and_no_password_when_unreachable() {
    let out = larder()
        .args([
            "doctor",
            "--database-url",
            "postgres://app:Sup3rS3cret@127.0.0.1:1/db",
        ])
        .env("LARDER_POOL_ACQUIRE_TIMEOUT_MS", "500")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        all.contains("cannot open postgres://app:***@127.0.0.1:1/db"),
        "{all}"
    );
    assert!(!all.contains("Sup3rS3cret"), "{all}");
}

#[test]
fn settings_print_a_table_of_key_value_and_source_with_the_password_redacted() {
    let out = stdout_ok(
        &larder()
            .arg("settings")
            .env("LARDER_DATABASE_URL", "postgres://u:hunter2@db/app")
            .env("LARDER_POOL_MAX_CONNECTIONS", "12")
            .env("LARDER_OUTBOX_SINK", "amqp://relay:hunter3@mq:5672/%2f")
            .env_remove("LARDER_SQLITE_SYNCHRONOUS")
            .env_remove("LARDER_DEFAULT_DEADLINE_MS")
            .output()
            .unwrap(),
    );
    assert!(
        !out.contains("hunter2") && !out.contains("hunter3"),
        "{out}"
    );
    assert!(!out.contains("Settings {"), "Debug output: {out}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(header, ["KEY", "VALUE", "SOURCE"], "{out}");
    let row = |key: &str| -> String {
        out.lines()
            .find(|l| l.split_whitespace().next() == Some(key))
            .unwrap_or_else(|| panic!("no row {key} in:\n{out}"))
            .split_whitespace()
            .skip(1)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(
        row("database.url"),
        "postgres://u:***@db/app env LARDER_DATABASE_URL"
    );
    assert_eq!(
        row("database.max_connections"),
        "12 env LARDER_POOL_MAX_CONNECTIONS"
    );
    assert_eq!(row("sqlite.synchronous"), "full default");
    assert_eq!(row("database.default_deadline_ms"), "none default");
    assert_eq!(row("postgres.ssl_mode"), "the URL's, else prefer default");
    assert_eq!(
        row("outbox.sink"),
        "amqp://relay:***@mq:5672/%2f env LARDER_OUTBOX_SINK"
    );
    assert_eq!(row("outbox.batch_size"), "512 default");
    assert_eq!(row("blob.url"), "larder-blobs default");
    assert_eq!(
        out.lines().count(),
        18,
        "a header and seventeen settings: {out}"
    );

    // The flag beats the environment, and says so.
    let out = stdout_ok(
        &larder()
            .args(["settings", "--database-url", "postgres://v:s3cr3t@db/other"])
            .env("LARDER_DATABASE_URL", "postgres://u:hunter2@db/app")
            .output()
            .unwrap(),
    );
    assert!(!out.contains("s3cr3t") && !out.contains("hunter2"), "{out}");
    assert!(
        out.lines().any(|l| l.starts_with("database.url")
            && l.contains("postgres://v:***@db/other")
            && l.ends_with("flag --database-url")),
        "{out}"
    );
}

#[test]
fn settings_json_parses_and_names_each_source_with_the_password_redacted() {
    let dir = temp_dir("settings_json");
    let file = dir.join("larder.toml");
    std::fs::write(
        &file,
        "[database]\nurl = \"postgres://app:Fil3Secret@db/app\"\nmax_connections = 3\n\
         [sqlite]\nbusy_timeout_ms = 5000\n",
    )
    .unwrap();
    let out = larder()
        .args(["settings", "--json", "--config"])
        .arg(&file)
        .env("LARDER_SQLITE_SYNCHRONOUS", "normal")
        .env_remove("LARDER_POOL_MAX_CONNECTIONS")
        .env_remove("LARDER_SQLITE_BUSY_TIMEOUT_MS")
        .env_remove("LARDER_MAX_PAGE_SIZE")
        .output()
        .unwrap();
    let text = stdout_ok(&out);
    assert!(!text.contains("Fil3Secret"), "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["database_url"], "postgres://app:***@db/app");
    assert_eq!(v["max_connections"], 3);
    assert_eq!(v["sqlite_synchronous"], "normal");
    assert_eq!(v["sqlite_busy_timeout_ms"], 5000);
    let file_source = format!("file {}", file.display());
    assert_eq!(v["sources"]["database_url"], file_source.as_str());
    assert_eq!(v["sources"]["max_connections"], file_source.as_str());
    // Set by the file to its default value: still the file's.
    assert_eq!(v["sources"]["sqlite_busy_timeout_ms"], file_source.as_str());
    assert_eq!(
        v["sources"]["sqlite_synchronous"],
        "env LARDER_SQLITE_SYNCHRONOUS"
    );
    assert_eq!(v["sources"]["max_page_size"], "default");
    std::fs::remove_dir_all(&dir).unwrap();
}
