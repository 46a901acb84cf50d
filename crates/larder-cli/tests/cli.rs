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

#[test]
fn doctor_reports_sqlite_pragmas_as_json() {
    let path = std::env::temp_dir().join(format!("larder-cli-{}.db", std::process::id()));
    let out = larder()
        .args(["doctor", "--json", "--database-url"])
        .arg(format!("sqlite://{}", path.display()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["ok"], true);
    assert_eq!(v["backend"], "sqlite");
    assert_eq!(v["settings"]["journal_mode"], "wal");
    assert_eq!(v["settings"]["synchronous"], "2");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
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
fn settings_redacts_passwords() {
    let out = larder()
        .args(["settings", "--json"])
        .env("LARDER_DATABASE_URL", "postgres://u:hunter2@db/app")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("postgres://u:***@db/app"), "{text}");
    assert!(!text.contains("hunter2"));
}
