//! U2: a process staging blobs is SIGKILLed at random points of upload → record → commit →
//! delete-after-commit, 20 times (SQLite and PostgreSQL, objects on the local
//! filesystem). Afterwards no committed reference is dangling, every key the child saw
//! commit has its reference, and the sweep removes every orphan (the store then holds
//! exactly the referenced objects).
//!
//! The child is this test binary re-executed with `--exact blob_child --ignored`; it prints
//! `COMMIT <key>` after each commit returns. The canary child records the reference first
//! and uploads after commit (what a post-commit upload hook does): the same kills must
//! leave a dangling reference the checks catch.

use std::collections::BTreeSet;
use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use larder::StoreConfig;
use larder::blob::{Attachments, BlobKey, BlobMeta, BlobRef, Blobs, PutOptions, sha256_hex};
use larder_testkit::attachments::{check_consistent, sweep_now};
use larder_testkit::backends::{self, TestDb};
use larder_testkit::blob::TempRoot;
use larder_testkit::rng::Rng;

const CHILD_TEST: &str = "blob_child";

async fn open_target(target: &str) -> TestDb {
    if let Some(path) = target.strip_prefix("sqlite:") {
        backends::sqlite_existing(Path::new(path), |_| {}, StoreConfig::default()).await
    } else if let Some(schema) = target.strip_prefix("postgres:") {
        backends::postgres_existing(schema, |_| {}, StoreConfig::default())
            .await
            .expect("LARDER_TEST_POSTGRES_URL")
    } else {
        panic!("unknown target {target}");
    }
}

async fn attachments(db: &TestDb, root: &Path) -> Attachments {
    let blobs = Blobs::filesystem(root)
        .await
        .expect("open filesystem blobs");
    Attachments::open(&db.store, blobs)
        .await
        .expect("open attachments")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "child process of the blob crash tests (runs only with LARDER_BLOB_CHILD)"]
async fn blob_child() {
    let Ok(target) = std::env::var("LARDER_BLOB_CHILD") else {
        return;
    };
    let root = PathBuf::from(std::env::var("LARDER_BLOB_ROOT").unwrap());
    let canary = std::env::var("LARDER_BLOB_CANARY").is_ok();
    let db = open_target(&target).await;
    let att = attachments(&db, &root).await;
    let mut rng = Rng::seeded(std::process::id().into());
    for i in 0u64.. {
        let key = BlobKey::new(format!("k/{}", i % 16)).unwrap();
        let size = 1 + rng.index(64 * 1024);
        let content: Vec<u8> = (0..size)
            .map(|j| ((j as u64 ^ i) & 0xff).to_le_bytes()[0])
            .collect();
        if canary {
            // Record first, upload after commit: a kill in between dangles.
            let object =
                BlobKey::managed(format!(".larder-objects/c{i}-{}", std::process::id())).unwrap();
            let mut meta = BlobMeta::default_for(key.as_str());
            meta.size = content.len() as u64;
            meta.sha256 = sha256_hex(&content);
            let mut uow = db.store.begin().await.unwrap();
            {
                let tx = uow.backend_transaction().unwrap().blob_refs().unwrap();
                tx.acquire(object.as_str(), Some((meta.size, 0)))
                    .await
                    .unwrap();
                let before = tx
                    .put_ref(&BlobRef::new(key.as_str(), object.as_str(), &meta), true)
                    .await
                    .unwrap();
                if let Some(b) = before {
                    tx.release(&b).await.unwrap();
                }
            }
            uow.commit().await.unwrap();
            println!("COMMIT {key}");
            tokio::time::sleep(Duration::from_millis(15)).await;
            let mut stored = meta;
            stored.key = object.as_str().to_owned();
            att.blobs()
                .backend()
                .put(&object, content.into(), &stored, false)
                .await
                .unwrap();
            continue;
        }
        if i % 7 == 3 {
            // An upload never attached: what a crash before the record leaves.
            let _ = att
                .upload(
                    &BlobKey::new("lost/x").unwrap(),
                    content.clone(),
                    PutOptions::new(),
                )
                .await
                .unwrap();
        }
        let mut uow = db.store.begin().await.unwrap();
        att.stage(&mut uow, &key, content, PutOptions::new())
            .await
            .unwrap();
        if i % 5 == 0 {
            let gone = BlobKey::new(format!("k/{}", (i + 8) % 16)).unwrap();
            att.delete(&mut uow, &gone).await.unwrap();
            uow.commit().await.unwrap();
            println!("DELETE {gone}");
        } else {
            uow.commit().await.unwrap();
        }
        println!("COMMIT {key}");
    }
}

/// Runs the child `kills` times, SIGKILLing each at a random moment; returns the keys
/// whose last line was a commit (deleted keys removed).
fn kill_repeatedly(
    target: &str,
    root: &Path,
    kills: usize,
    canary: bool,
    seed: u64,
) -> BTreeSet<String> {
    let mut rng = Rng::seeded(seed);
    let live = Arc::new(Mutex::new(BTreeSet::new()));
    for _ in 0..kills {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        if canary {
            cmd.env("LARDER_BLOB_CANARY", "1");
        }
        let mut child = cmd
            .args(["--exact", CHILD_TEST, "--nocapture", "--ignored"])
            .env("LARDER_BLOB_CHILD", target)
            .env("LARDER_BLOB_ROOT", root)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn the blob child");
        let out = child.stdout.take().unwrap();
        let commits = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let reader = {
            let (live, commits) = (live.clone(), commits.clone());
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(out).lines() {
                    let Ok(line) = line else { break };
                    if let Some(k) = line.strip_prefix("COMMIT ") {
                        live.lock().unwrap().insert(k.to_owned());
                        commits.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    } else if let Some(k) = line.strip_prefix("DELETE ") {
                        live.lock().unwrap().remove(k);
                    }
                }
            })
        };
        // Let it get going (the first commit), then kill it at a random point.
        let started = std::time::Instant::now();
        while commits.load(std::sync::atomic::Ordering::Relaxed) == 0
            && started.elapsed() < Duration::from_secs(30)
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.range_i64(5, 200).unsigned_abs()));
        let _ = child.kill();
        let _ = child.wait();
        reader.join().unwrap();
        assert!(
            commits.load(std::sync::atomic::Ordering::Relaxed) > 0,
            "the child never committed"
        );
    }
    Arc::try_unwrap(live).unwrap().into_inner().unwrap()
}

async fn u2(db: TestDb, target: String, canary: bool) {
    let root = TempRoot::new("crash");
    let store_root = root.path().join("store");
    // The tables exist before the first child runs.
    let att = attachments(&db, &store_root).await;
    let (t, r) = (target.clone(), store_root.clone());
    let live = tokio::task::spawn_blocking(move || kill_repeatedly(&t, &r, 20, canary, 2026))
        .await
        .unwrap();
    let resolved = check_consistent(&att, None, false).await;
    if canary {
        assert!(
            resolved
                .as_ref()
                .is_err_and(|e| e.contains("does not resolve")),
            "the canary's dangling references went unnoticed: {resolved:?}"
        );
        return;
    }
    resolved.expect("no committed reference is dangling after 20 kills");
    let mut uow = db.store.read().await.unwrap();
    for k in &live {
        assert!(
            att.head(&mut uow, &BlobKey::new(k.clone()).unwrap())
                .await
                .unwrap()
                .is_some(),
            "`{k}` was committed but has no reference"
        );
    }
    drop(uow);
    let report = sweep_now(&att).await;
    assert!(
        report.swept > 0,
        "the kills and lost uploads left orphans: {report:?}"
    );
    check_consistent(&att, None, true)
        .await
        .expect("the sweep leaves exactly the referenced objects");
    db.finish().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_sqlite_stager_killed_20_times_leaves_nothing_dangling() {
    let db = backends::sqlite("blob_crash::u2_sqlite").await.unwrap();
    let target = format!("sqlite:{}", db.sqlite_path.as_ref().unwrap().display());
    u2(db, target, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_postgres_stager_killed_20_times_leaves_nothing_dangling() {
    let Some(db) = backends::postgres("blob_crash::u2_postgres").await else {
        return;
    };
    let target = format!("postgres:{}", db.pg_schema.as_ref().unwrap());
    u2(db, target, false).await;
}

/// Canary: recording before uploading (upload after commit) dangles under the same kills.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn u2_canary_upload_after_commit_is_caught() {
    let db = backends::sqlite("blob_crash::u2_canary").await.unwrap();
    let target = format!("sqlite:{}", db.sqlite_path.as_ref().unwrap().display());
    u2(db, target, true).await;
}
