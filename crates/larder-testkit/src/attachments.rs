//! The attachment rules (blobs coordinated with the unit of work), stamped for every SQL
//! backend by [`attachments_conformance!`](crate::attachments_conformance): references in
//! the backend's tables, objects in a filesystem blob store (the embedded default) in a
//! fresh folder. [`check_consistent`] is the invariant checker the atomicity and crash
//! tests use; its canaries live in `tests/blob_atomicity.rs`.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use larder::Error;
use larder::blob::{
    Attachments, BlobKey, Blobs, MANAGED_PREFIXES, PutOptions, SweepOptions, sha256_hex,
};
use larder::{Store, UowOptions};

use crate::TestDb;
use crate::blob::TempRoot;
use crate::rng::Rng;

/// Attachments of `db` over a filesystem store in a fresh folder (kept alive by the
/// returned [`TempRoot`]).
pub async fn open(db: &TestDb, content_addressed: bool) -> (Attachments, TempRoot) {
    let root = TempRoot::new("att");
    let blobs = Blobs::filesystem(root.path().join("store"))
        .await
        .expect("open filesystem blobs");
    let att = Attachments::builder(&db.store, blobs)
        .content_addressed(content_addressed)
        .open()
        .await
        .expect("open attachments");
    (att, root)
}

fn key(s: &str) -> BlobKey {
    BlobKey::new(s).unwrap()
}

/// Every managed object in the blob store (name → size), read from the store itself.
pub async fn objects(blobs: &Blobs) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for prefix in MANAGED_PREFIXES {
        let mut after: Option<BlobKey> = None;
        loop {
            let page = blobs
                .backend()
                .list(prefix, after.as_ref(), 1000)
                .await
                .expect("list managed objects");
            let full = page.len() == 1000;
            for m in &page {
                out.insert(m.key.clone(), m.size);
            }
            match page.last() {
                Some(m) if full => after = Some(BlobKey::managed(m.key.clone()).unwrap()),
                _ => break,
            }
        }
    }
    out
}

/// Every committed reference (key → (size, sha256)), read in one unit of work.
pub async fn references(att: &Attachments) -> BTreeMap<String, (u64, String)> {
    let store = att.store();
    let mut uow = store.read().await.expect("read");
    let mut out = BTreeMap::new();
    let mut after: Option<BlobKey> = None;
    loop {
        let page = att
            .list(&mut uow, "", after.as_ref(), 1000)
            .await
            .expect("list references");
        for m in &page.blobs {
            out.insert(m.key.clone(), (m.size, m.sha256.clone()));
        }
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    out
}

/// The invariant: every committed reference resolves to a blob whose content has the
/// recorded size and SHA-256 (and, when `expected` is given, the content the model says
/// was committed); with `swept`, the store holds no object beyond those referenced.
/// Returns what is wrong instead of panicking, so canaries can assert it fails.
pub async fn check_consistent(
    att: &Attachments,
    expected: Option<&BTreeMap<String, String>>,
    swept: bool,
) -> Result<(), String> {
    let refs = references(att).await;
    let mut uow = att.store().read().await.map_err(|e| e.to_string())?;
    for (k, (size, sha)) in &refs {
        let blob = att
            .get(&mut uow, &key(k))
            .await
            .map_err(|e| format!("committed reference `{k}` does not resolve: {e}"))?;
        if blob.content.len() as u64 != *size || sha256_hex(&blob.content) != *sha {
            return Err(format!(
                "`{k}`: content does not match its recorded size and hash"
            ));
        }
    }
    if let Some(model) = expected {
        let got: BTreeMap<String, String> =
            refs.iter().map(|(k, v)| (k.clone(), v.1.clone())).collect();
        if &got != model {
            return Err(format!(
                "committed references {got:?} differ from the model {model:?}"
            ));
        }
    }
    if swept {
        // Exactly the objects the references point at.
        let mut held = BTreeSet::new();
        for k in refs.keys() {
            let r = att
                .reference(&mut uow, &key(k))
                .await
                .map_err(|e| e.to_string())?
                .ok_or_else(|| format!("`{k}` vanished"))?;
            held.insert(r.object);
        }
        let objs: BTreeSet<String> = objects(att.blobs()).await.into_keys().collect();
        if objs != held {
            return Err(format!(
                "after the sweep the store holds {} objects for {} references: {} orphans \
                 {:?}, {} missing {:?}",
                objs.len(),
                refs.len(),
                objs.difference(&held).count(),
                objs.difference(&held).collect::<Vec<_>>(),
                held.difference(&objs).count(),
                held.difference(&objs).collect::<Vec<_>>(),
            ));
        }
    }
    Ok(())
}

/// A sweep with no grace period, after the deletions already started have finished.
pub async fn sweep_now(att: &Attachments) -> larder::blob::SweepReport {
    att.settled().await;
    att.sweep(SweepOptions::default().grace(Duration::ZERO))
        .await
        .expect("sweep")
}

/// Staged content is live after commit and gone after rollback, drop or a failed stage;
/// reads inside the unit of work see its own stages.
pub async fn staged_blobs_commit_and_roll_back_with_the_unit_of_work(db: &TestDb) {
    let (att, _root) = open(db, false).await;
    let store = &db.store;
    let a = key("docs/a.txt");
    let mut uow = store.begin().await.unwrap();
    let meta = uow
        .blobs()
        .unwrap()
        .stage(
            &a,
            b"alpha".to_vec(),
            PutOptions::new().content_type("text/plain"),
        )
        .await
        .unwrap();
    assert_eq!(meta.size, 5);
    assert_eq!(meta.sha256, sha256_hex(b"alpha"));
    // Visible to its own unit of work before commit.
    assert_eq!(
        &uow.blobs().unwrap().get(&a).await.unwrap().content[..],
        b"alpha"
    );
    uow.commit().await.unwrap();

    let mut r = store.read().await.unwrap();
    let got = att.get(&mut r, &a).await.unwrap();
    assert_eq!(&got.content[..], b"alpha");
    assert_eq!(got.meta.key, "docs/a.txt");
    assert_eq!(got.meta.content_type.as_deref(), Some("text/plain"));
    let part = att.get_range(&mut r, &a, 1..3).await.unwrap();
    assert_eq!(&part.content[..], b"lp");
    drop(r);

    // Rolled back, dropped: nothing recorded, the uploads deleted.
    let b = key("docs/b.txt");
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &b, b"beta".to_vec(), PutOptions::new())
        .await
        .unwrap();
    uow.rollback().await.unwrap();
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &b, b"beta".to_vec(), PutOptions::new())
        .await
        .unwrap();
    drop(uow);
    att.settled().await;
    let mut r = store.read().await.unwrap();
    assert!(att.head(&mut r, &b).await.unwrap().is_none());
    assert!(matches!(
        att.get(&mut r, &b).await,
        Err(Error::NotFound { entity: "blob", .. })
    ));
    drop(r);
    assert_eq!(
        objects(att.blobs()).await.len(),
        1,
        "only the committed upload is stored"
    );
    check_consistent(&att, None, true).await.unwrap();
}

/// A delete inside a unit of work hides the blob from it at once and deletes the object
/// only after commit; a rolled-back delete changes nothing. An overwrite deletes the old
/// object after commit.
pub async fn delete_and_overwrite_take_effect_after_commit(db: &TestDb) {
    let (att, _root) = open(db, false).await;
    let store = &db.store;
    let k = key("photos/cat.jpg");
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &k, b"v1".to_vec(), PutOptions::new())
        .await
        .unwrap();
    uow.commit().await.unwrap();

    let mut uow = store.begin().await.unwrap();
    assert!(att.delete(&mut uow, &k).await.unwrap());
    assert!(att.head(&mut uow, &k).await.unwrap().is_none());
    assert!(!att.delete(&mut uow, &k).await.unwrap(), "deleted twice");
    uow.rollback().await.unwrap();
    att.settled().await;
    assert_eq!(objects(att.blobs()).await.len(), 1);
    let mut r = store.read().await.unwrap();
    assert_eq!(&att.get(&mut r, &k).await.unwrap().content[..], b"v1");
    drop(r);

    // Overwrite: v2 wins, v1's object goes after commit.
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &k, b"v2".to_vec(), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(
        objects(att.blobs()).await.len(),
        2,
        "both objects until commit"
    );
    uow.commit().await.unwrap();
    att.settled().await;
    assert_eq!(objects(att.blobs()).await.len(), 1);
    let mut r = store.read().await.unwrap();
    assert_eq!(&att.get(&mut r, &k).await.unwrap().content[..], b"v2");
    drop(r);

    let mut uow = store.begin().await.unwrap();
    assert!(att.delete(&mut uow, &k).await.unwrap());
    uow.commit().await.unwrap();
    att.settled().await;
    assert!(
        objects(att.blobs()).await.is_empty(),
        "deleted after commit"
    );
    check_consistent(&att, Some(&BTreeMap::new()), true)
        .await
        .unwrap();
}

/// The sweep deletes uploads no committed reference holds once they are older than the
/// grace period, reports them in a dry run without deleting, and never touches a
/// referenced object.
pub async fn sweep_removes_only_unreferenced_objects(db: &TestDb) {
    let (att, _root) = open(db, false).await;
    let store = &db.store;
    let kept = key("kept/1");
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &kept, vec![7u8; 1000], PutOptions::new())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    // Uploaded, never attached: what a crash between upload and commit leaves.
    let _orphan = att
        .upload(&key("lost/1"), vec![1u8; 300], PutOptions::new())
        .await
        .unwrap();
    assert_eq!(objects(att.blobs()).await.len(), 2);

    let young = att.sweep(SweepOptions::default()).await.unwrap();
    assert_eq!(young.swept, 0, "inside the grace period: {young:?}");
    let dry = att
        .sweep(SweepOptions::default().grace(Duration::ZERO).dry_run(true))
        .await
        .unwrap();
    assert_eq!(
        (dry.swept, dry.bytes, dry.dry_run),
        (1, 300, true),
        "{dry:?}"
    );
    assert_eq!(
        objects(att.blobs()).await.len(),
        2,
        "a dry run deletes nothing"
    );
    let done = sweep_now(&att).await;
    assert_eq!((done.swept, done.bytes, done.kept), (1, 300, 1), "{done:?}");
    assert_eq!(objects(att.blobs()).await.len(), 1);
    let again = sweep_now(&att).await;
    assert_eq!(again.swept, 0, "{again:?}");
    check_consistent(&att, None, true).await.unwrap();

    // The background sweeper finds a new orphan on its own and stops on shutdown.
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let sweeper = {
        let att = att.clone();
        tokio::spawn(async move {
            att.sweep_every(
                Duration::from_millis(20),
                SweepOptions::default().grace(Duration::ZERO),
                async move {
                    let _ = stopped.await;
                },
            )
            .await;
        })
    };
    let _late = att
        .upload(&key("lost/2"), vec![2u8; 10], PutOptions::new())
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while objects(att.blobs()).await.len() > 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the sweeper never swept"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), sweeper)
        .await
        .expect("the sweeper stops on shutdown")
        .unwrap();
    check_consistent(&att, None, true).await.unwrap();
}

/// An upload the sweep deleted is never recorded (typed error, nothing committed); a
/// sweep that runs while a unit of work holds a fresh reference leaves it alone.
pub async fn a_swept_upload_is_never_recorded(db: &TestDb) {
    let (att, _root) = open(db, false).await;
    let store = &db.store;
    let late = att
        .upload(&key("late/1"), b"late".to_vec(), PutOptions::new())
        .await
        .unwrap();
    assert_eq!(sweep_now(&att).await.swept, 1);
    let mut uow = store.begin().await.unwrap();
    let e = att.attach(&mut uow, late).await.unwrap_err();
    assert!(matches!(e, Error::BlobSwept { .. }), "{e:?}");
    assert!(e.to_string().contains("stage it again"), "{e}");
    uow.commit().await.unwrap();
    let mut r = store.read().await.unwrap();
    assert!(att.head(&mut r, &key("late/1")).await.unwrap().is_none());
    drop(r);

    // A sweep racing a unit of work that holds a fresh reference: it waits for the row
    // (or the writer) and then finds it referenced.
    let k = key("race/1");
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &k, b"held".to_vec(), PutOptions::new())
        .await
        .unwrap();
    let sweeper = {
        let att = att.clone();
        tokio::spawn(async move {
            att.sweep(SweepOptions::default().grace(Duration::ZERO))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    uow.commit().await.unwrap();
    let report = sweeper.await.unwrap().unwrap();
    assert_eq!(report.swept, 0, "{report:?}");
    let mut r = store.read().await.unwrap();
    assert_eq!(&att.get(&mut r, &k).await.unwrap().content[..], b"held");
    drop(r);
    check_consistent(&att, None, true).await.unwrap();
}

/// Content-addressed mode stores identical content once, whatever the keys; the object
/// goes when its last reference does.
pub async fn content_addressed_mode_stores_identical_content_once(db: &TestDb) {
    let (att, _root) = open(db, true).await;
    let store = &db.store;
    let mut uow = store.begin().await.unwrap();
    for k in ["a/1", "a/2", "b/3"] {
        att.stage(&mut uow, &key(k), b"same bytes".to_vec(), PutOptions::new())
            .await
            .unwrap();
    }
    att.stage(&mut uow, &key("c/4"), b"other".to_vec(), PutOptions::new())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(objects(att.blobs()).await.len(), 2);
    // Staged again in a unit of work that rolls back: the shared object stays.
    let mut uow = store.begin().await.unwrap();
    att.stage(
        &mut uow,
        &key("a/9"),
        b"same bytes".to_vec(),
        PutOptions::new(),
    )
    .await
    .unwrap();
    uow.rollback().await.unwrap();
    att.settled().await;
    assert_eq!(objects(att.blobs()).await.len(), 2);

    let mut uow = store.begin().await.unwrap();
    assert!(att.delete(&mut uow, &key("a/1")).await.unwrap());
    assert!(att.delete(&mut uow, &key("c/4")).await.unwrap());
    uow.commit().await.unwrap();
    att.settled().await;
    assert_eq!(
        objects(att.blobs()).await.len(),
        1,
        "`other` had no other reference"
    );
    let mut r = store.read().await.unwrap();
    assert_eq!(
        &att.get(&mut r, &key("b/3")).await.unwrap().content[..],
        b"same bytes"
    );
    let usage = att.usage(&mut r, "a/").await.unwrap();
    assert_eq!((usage.blobs, usage.bytes), (1, 10));
    drop(r);
    assert_eq!(sweep_now(&att).await.swept, 0);
    check_consistent(&att, None, true).await.unwrap();
}

/// Bad input is typed and leaves nothing behind: read-only units of work, larder's own
/// keys, `if_absent` on a taken key (the unit of work still commits, nothing leaks), page
/// sizes, missing keys, a store without attachments.
pub async fn bad_attachment_input_is_typed(db: &TestDb) {
    let (att, _root) = open(db, false).await;
    let store = &db.store;
    let mut r = store
        .begin_with(UowOptions::default().read_only())
        .await
        .unwrap();
    let e = att
        .stage(&mut r, &key("x"), b"x".to_vec(), PutOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ReadOnly { .. }), "{e:?}");
    assert!(matches!(
        att.delete(&mut r, &key("x")).await,
        Err(Error::ReadOnly { .. })
    ));
    let managed = BlobKey::managed(".larder-objects/abc").unwrap();
    assert!(matches!(
        att.get(&mut r, &managed).await,
        Err(Error::InvalidBlobKey { .. })
    ));
    assert!(matches!(
        att.list(&mut r, "", None, 0).await,
        Err(Error::InvalidQuery(_))
    ));
    assert!(matches!(
        att.get(&mut r, &key("missing")).await,
        Err(Error::NotFound { .. })
    ));
    drop(r);
    assert!(BlobKey::managed("docs/x").is_err());
    assert!(BlobKey::new(".larder-objects/abc").is_err());
    assert!(matches!(
        att.blobs().get(&managed).await,
        Err(Error::InvalidBlobKey { .. })
    ));

    let taken = key("taken");
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &taken, b"first".to_vec(), PutOptions::new())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let mut uow = store.begin().await.unwrap();
    let e = att
        .stage(
            &mut uow,
            &taken,
            b"second".to_vec(),
            PutOptions::new().if_absent(),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::AlreadyExists { entity: "blob", .. }),
        "{e:?}"
    );
    att.stage(&mut uow, &key("other"), b"ok".to_vec(), PutOptions::new())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    let mut r = store.read().await.unwrap();
    assert_eq!(
        &att.get(&mut r, &taken).await.unwrap().content[..],
        b"first"
    );
    drop(r);
    att.settled().await;
    assert_eq!(
        sweep_now(&att).await.swept,
        0,
        "the refused upload was deleted at once"
    );
    check_consistent(&att, None, true).await.unwrap();

    // A second attachments handle on the same store uses its own blob store; the unit of
    // work's `blobs()` keeps the first.
    let other_root = TempRoot::new("att-other");
    let other = Attachments::open(
        store,
        Blobs::filesystem(other_root.path().join("store"))
            .await
            .unwrap(),
    )
    .await
    .unwrap();
    let mut uow = store.begin().await.unwrap();
    other
        .stage(&mut uow, &key("second/x"), b"2".to_vec(), PutOptions::new())
        .await
        .unwrap();
    uow.commit().await.unwrap();
    assert_eq!(objects(other.blobs()).await.len(), 1);
    assert!(
        !objects(att.blobs()).await.contains_key(
            &other
                .reference(&mut store.read().await.unwrap(), &key("second/x"))
                .await
                .unwrap()
                .unwrap()
                .object
        )
    );

    let bare = Store::memory();
    let mut uow = bare.begin().await.unwrap();
    let e = uow.blobs().unwrap_err();
    assert!(matches!(e, Error::Configuration(_)), "{e:?}");
    assert!(e.to_string().contains("Attachments::open"), "{e}");
}

/// U1: random stage / delete / overwrite sequences, each committed or rolled back (or
/// dropped). After each one every committed reference resolves to content with its
/// recorded hash and size and matches the model, and then the sweep leaves exactly the
/// referenced objects. `sequences` is 1,000 in CI on SQLite and
/// PostgreSQL.
pub async fn random_sequences_keep_references_and_objects_consistent(
    db: &TestDb,
    sequences: usize,
    content_addressed: bool,
    seed: u64,
) {
    let (att, _root) = open(db, content_addressed).await;
    let store = &db.store;
    let mut rng = Rng::seeded(seed);
    let mut model: BTreeMap<String, String> = BTreeMap::new();
    for seq in 0..sequences {
        let mut pending = model.clone();
        let mut uow = store.begin().await.unwrap();
        for _ in 0..rng.index(4) + 1 {
            let k = format!("k/{}", rng.index(8));
            if rng.index(4) == 0 {
                let existed = att.delete(&mut uow, &key(&k)).await.unwrap();
                assert_eq!(
                    existed,
                    pending.remove(&k).is_some(),
                    "seq {seq}: delete {k}"
                );
            } else {
                // Few distinct contents, so content-addressed mode shares objects.
                let body = format!("content {}", rng.index(6)).repeat(rng.index(50) + 1);
                let meta = att
                    .stage(
                        &mut uow,
                        &key(&k),
                        body.clone().into_bytes(),
                        PutOptions::new(),
                    )
                    .await
                    .unwrap();
                pending.insert(k, meta.sha256);
            }
        }
        match rng.index(3) {
            0 => uow.rollback().await.unwrap(),
            1 => drop(uow),
            _ => {
                uow.commit().await.unwrap();
                model = pending;
            }
        }
        // Every committed reference resolves and matches the model; then the sweep
        // leaves exactly the referenced objects.
        if let Err(e) = check_consistent(&att, Some(&model), false).await {
            panic!("sequence {seq} (seed {seed}): {e}");
        }
        sweep_now(&att).await;
        if let Err(e) = check_consistent(&att, Some(&model), true).await {
            panic!("sequence {seq} (seed {seed}), after the sweep: {e}");
        }
    }
}
