//! `larder blobs`, tested by running the real binary on a folder store (and the settings'
//! redaction of an S3 URL): put, ls, get, du, rm, typed refusals.

use std::process::{Command, Output, Stdio};

fn larder(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_larder"));
    c.env_remove("LARDER_DATABASE_URL")
        .env_remove("LARDER_CONFIG")
        .env_remove("LARDER_BLOB_URL")
        .current_dir(dir)
        .stdin(Stdio::null());
    c
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[track_caller]
fn ok_json(o: &Output) -> serde_json::Value {
    assert!(o.status.success(), "{}", text(o));
    let out = String::from_utf8_lossy(&o.stdout);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[test]
fn blobs_put_ls_get_du_rm_on_a_folder() {
    let dir = std::env::temp_dir().join(format!("larder-blobs-cli-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = dir.join("store");
    let url = format!("file://{}", store.display());
    let src = dir.join("in.bin");
    let content: Vec<u8> = (0..=255u8).cycle().take(5_000).collect();
    std::fs::write(&src, &content).unwrap();
    let run = |args: &[&str]| {
        larder(&dir)
            .args(["--json", "blobs", "--url", &url])
            .args(args)
            .output()
            .unwrap()
    };
    let put = ok_json(&run(&[
        "put",
        "docs/a.bin",
        src.to_str().unwrap(),
        "--content-type",
        "application/octet-stream",
    ]));
    assert_eq!(put["size"], 5000);
    assert_eq!(put["key"], "docs/a.bin");
    ok_json(&run(&["put", "docs/b.bin", src.to_str().unwrap()]));
    ok_json(&run(&["put", "img/c.png", src.to_str().unwrap()]));
    let again = run(&["put", "docs/a.bin", src.to_str().unwrap(), "--if-absent"]);
    assert_eq!(again.status.code(), Some(1), "{}", text(&again));
    assert!(text(&again).contains("already exists"), "{}", text(&again));

    let ls = ok_json(&run(&["ls", "docs/"]));
    let keys: Vec<&str> = ls
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["docs/a.bin", "docs/b.bin"]);
    assert_eq!(ls[0]["content_type"], "application/octet-stream");

    let out = dir.join("out.bin");
    let got = ok_json(&run(&["get", "docs/a.bin", out.to_str().unwrap()]));
    assert_eq!(got["sha256"], put["sha256"]);
    assert_eq!(std::fs::read(&out).unwrap(), content);

    let du = ok_json(&run(&["du"]));
    assert_eq!(du["blobs"], 3);
    assert_eq!(du["bytes"], 15_000);
    assert_eq!(du["by_prefix"][0]["prefix"], "docs");
    assert_eq!(du["by_prefix"][0]["blobs"], 2);

    let rm = ok_json(&run(&["rm", "docs/b.bin"]));
    assert_eq!(rm["deleted"], true);
    let rm = ok_json(&run(&["rm", "docs/b.bin"]));
    assert_eq!(rm["deleted"], false);

    for hostile in ["../escape", "/etc/passwd", "a/%2e%2e/b", "docs//x"] {
        let o = run(&["put", hostile, src.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1), "{hostile}: {}", text(&o));
        assert!(
            text(&o).contains("invalid blob key"),
            "{hostile}: {}",
            text(&o)
        );
    }
    assert!(!dir.join("escape").exists());
    let missing = run(&["get", "docs/none", out.to_str().unwrap()]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing).contains("not found"), "{}", text(&missing));

    // Plain text output and the settings' default folder.
    let plain = larder(&dir)
        .args(["blobs", "--url", &url, "ls"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&plain.stdout).contains("docs/a.bin\t5000\t"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_blob_url_setting_is_used_and_redacted() {
    let dir = std::env::temp_dir().join(format!("larder-blobs-set-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let o = larder(&dir)
        .env(
            "LARDER_BLOB_URL",
            "s3://bucket?region=eu-west-1&access_key_id=AKIAXYZ&secret_access_key=SEKRIT",
        )
        .args(["settings"])
        .output()
        .unwrap();
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    assert!(t.contains("blob.url"), "{t}");
    assert!(t.contains("region=eu-west-1"), "{t}");
    assert!(!t.contains("SEKRIT") && !t.contains("AKIAXYZ"), "{t}");
    // With no URL at all, the folder `larder-blobs` in the working directory.
    let src = dir.join("f");
    std::fs::write(&src, b"x").unwrap();
    let o = larder(&dir)
        .args(["blobs", "put", "k", src.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
    assert!(dir.join("larder-blobs/k").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

/// `--attached`: blobs recorded in the database (staged in a unit of work), and `sweep`
/// removing an upload nothing references; a store that was never initialised is refused.
#[test]
fn attached_blobs_and_the_sweep() {
    let dir = std::env::temp_dir().join(format!("larder-blobs-att-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let db = format!("sqlite://{}", dir.join("app.db").display());
    let store = dir.join("store");
    let url = format!("file://{}", store.display());
    let run = |args: &[&str]| {
        larder(&dir)
            .args(["--json", "--database-url", &db, "blobs", "--url", &url])
            .args(args)
            .output()
            .unwrap()
    };
    let refused = run(&["--attached", "ls"]);
    assert_eq!(refused.status.code(), Some(1), "{}", text(&refused));
    assert!(
        text(&refused).contains("larder migrate up"),
        "{}",
        text(&refused)
    );
    let up = larder(&dir)
        .args(["migrate", "up", "--database-url", &db])
        .output()
        .unwrap();
    assert!(up.status.success(), "{}", text(&up));

    let src = dir.join("in.bin");
    std::fs::write(&src, vec![9u8; 4096]).unwrap();
    let put = ok_json(&run(&[
        "--attached",
        "put",
        "docs/a.bin",
        src.to_str().unwrap(),
    ]));
    assert_eq!(put["size"], 4096);
    ok_json(&run(&[
        "--attached",
        "put",
        "docs/b.bin",
        src.to_str().unwrap(),
    ]));
    let ls = ok_json(&run(&["--attached", "ls", "docs/"]));
    assert_eq!(ls.as_array().unwrap().len(), 2, "{ls}");
    // The raw view hides larder's managed objects.
    let raw = ok_json(&run(&["ls"]));
    assert_eq!(raw.as_array().unwrap().len(), 0, "{raw}");
    let du = ok_json(&run(&["--attached", "du"]));
    assert_eq!(
        (du["blobs"].as_u64(), du["bytes"].as_u64()),
        (Some(2), Some(8192))
    );
    let out = dir.join("out.bin");
    let got = ok_json(&run(&[
        "--attached",
        "get",
        "docs/a.bin",
        out.to_str().unwrap(),
    ]));
    assert_eq!(got["sha256"], put["sha256"]);
    assert_eq!(std::fs::read(&out).unwrap(), vec![9u8; 4096]);
    let rm = ok_json(&run(&["--attached", "rm", "docs/b.bin"]));
    assert_eq!(rm["deleted"], true);

    // An orphan: a copy of a stored object under a managed name nothing references.
    let objects = store.join(".larder-objects");
    let first = std::fs::read_dir(&objects)
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    std::fs::copy(&first, objects.join("orphan")).unwrap();
    let young = ok_json(&run(&["sweep"]));
    assert_eq!(young["swept"], 0, "{young}");
    let dry = ok_json(&run(&["sweep", "--dry-run", "--grace", "0s"]));
    assert_eq!(
        (dry["swept"].as_u64(), dry["dry_run"].as_bool()),
        (Some(1), Some(true))
    );
    assert!(objects.join("orphan").exists());
    let done = ok_json(&run(&["sweep", "--grace", "0s"]));
    assert_eq!(done["swept"], 1, "{done}");
    assert!(!objects.join("orphan").exists());
    let got = run(&["--attached", "get", "docs/a.bin", out.to_str().unwrap()]);
    assert!(got.status.success(), "{}", text(&got));
    let bad = run(&["sweep", "--grace", "ten"]);
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
    let _ = std::fs::remove_dir_all(&dir);
}
