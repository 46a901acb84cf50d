//! U1: blobs staged in the unit of work stay consistent with their references through
//! 1,000 random stage / overwrite / delete sequences, each committed, rolled back or
//! dropped (SQLite and PostgreSQL; the memory reference too), in both naming modes. After
//! every sequence each committed reference resolves to content with its recorded size and
//! SHA-256 and matches the model, and then the sweep leaves exactly the referenced
//! objects.
//!
//! Canaries: the checker must catch a referenced object deleted behind larder's back (a
//! dangling reference) and an orphan the sweep has not removed.

use larder::blob::{BlobKey, PutOptions};
use larder_testkit::attachments::{
    check_consistent, objects, open, random_sequences_keep_references_and_objects_consistent,
};
use larder_testkit::backends;

macro_rules! u1 {
    ($name:ident, $backend:ident, $n:expr, $cas:expr, $seed:expr) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            let Some(db) = backends::$backend(concat!("u1_", stringify!($name))).await else {
                return;
            };
            random_sequences_keep_references_and_objects_consistent(&db, $n, $cas, $seed).await;
            db.finish().await;
        }
    };
}

u1!(memory_one_object_per_stage, memory, 1000, false, 11);
u1!(memory_content_addressed, memory, 1000, true, 12);
u1!(sqlite_one_object_per_stage, sqlite, 1000, false, 13);
u1!(sqlite_content_addressed, sqlite, 300, true, 14);
u1!(postgres_one_object_per_stage, postgres, 1000, false, 15);
u1!(postgres_content_addressed, postgres, 300, true, 16);

/// Canary: a committed reference whose object was deleted behind larder's back is
/// reported as dangling.
#[tokio::test]
async fn canary_a_dangling_reference_is_caught() {
    let db = backends::memory("u1_canary_dangling").await.unwrap();
    let (att, _root) = open(&db, false).await;
    let mut uow = db.store.begin().await.unwrap();
    att.stage(
        &mut uow,
        &BlobKey::new("a").unwrap(),
        b"x".to_vec(),
        PutOptions::new(),
    )
    .await
    .unwrap();
    uow.commit().await.unwrap();
    check_consistent(&att, None, true).await.unwrap();
    for name in objects(att.blobs()).await.keys() {
        att.blobs()
            .backend()
            .delete(&BlobKey::managed(name.clone()).unwrap())
            .await
            .unwrap();
    }
    let e = check_consistent(&att, None, false).await.unwrap_err();
    assert!(e.contains("does not resolve"), "{e}");
}

/// Canary: an upload nobody recorded is an orphan until the sweep runs.
#[tokio::test]
async fn canary_an_orphan_is_caught_until_swept() {
    let db = backends::memory("u1_canary_orphan").await.unwrap();
    let (att, _root) = open(&db, false).await;
    let _ = att
        .upload(
            &BlobKey::new("o").unwrap(),
            b"orphan".to_vec(),
            PutOptions::new(),
        )
        .await
        .unwrap();
    let e = check_consistent(&att, None, true).await.unwrap_err();
    assert!(e.contains("1 orphans"), "{e}");
    assert!(e.contains("holds 1 objects for 0 references"), "{e}");
    larder_testkit::attachments::sweep_now(&att).await;
    check_consistent(&att, None, true).await.unwrap();
}
