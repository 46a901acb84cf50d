//! The blob conformance rules: one function per rule, run against every blob backend by
//! [`blob_conformance!`](crate::blob_conformance), plus the hostile key corpus (H2).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use larder::Error;
use larder::blob::{BlobKey, Blobs, PutOptions, sha256_hex};

/// A folder under the system's temp folder, removed on drop.
#[derive(Debug)]
pub struct TempRoot(PathBuf);

impl TempRoot {
    /// A fresh, empty folder.
    pub fn new(label: &str) -> TempRoot {
        let p = std::env::temp_dir().join(format!(
            "larder-blob-{label}-{}",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::create_dir_all(&p).expect("temp folder");
        TempRoot(p)
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempRoot {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A blob store under test and what keeps it alive.
#[derive(Debug)]
pub struct BlobTarget {
    /// The store.
    pub blobs: Blobs,
    _root: Option<TempRoot>,
}

impl BlobTarget {
    /// A target over any store (canaries, third-party backends).
    pub fn over(blobs: Blobs) -> BlobTarget {
        BlobTarget { blobs, _root: None }
    }
}

/// The in-memory store.
pub async fn memory() -> BlobTarget {
    BlobTarget {
        blobs: Blobs::memory(),
        _root: None,
    }
}

/// A filesystem store in a fresh temp folder.
pub async fn filesystem() -> BlobTarget {
    let root = TempRoot::new("conf");
    let blobs = Blobs::filesystem(root.path().join("store"))
        .await
        .expect("open filesystem blobs");
    BlobTarget {
        blobs,
        _root: Some(root),
    }
}

fn key(s: &str) -> BlobKey {
    BlobKey::new(s).unwrap()
}

/// What is put is what is read: content, size, SHA-256, content type, metadata; `head`
/// agrees; an empty blob and every byte value round-trip.
pub async fn put_get_head_round_trip(t: &BlobTarget) {
    let b = &t.blobs;
    let k = key("docs/2026/report.pdf");
    let meta = b
        .put(
            &k,
            b"hello".to_vec(),
            PutOptions::new()
                .content_type("application/pdf")
                .metadata("owner", "ana")
                .metadata("x_trace", "t-1"),
        )
        .await
        .unwrap();
    assert_eq!(meta.size, 5);
    assert_eq!(
        meta.sha256,
        "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"
    );
    let got = b.get(&k).await.unwrap();
    assert_eq!(&got.content[..], b"hello");
    assert_eq!(got.meta, meta);
    assert_eq!(b.head(&k).await.unwrap(), Some(meta));
    let empty = key("empty");
    b.put(&empty, Vec::new(), PutOptions::new()).await.unwrap();
    let e = b.get(&empty).await.unwrap();
    assert!(e.content.is_empty());
    assert_eq!(e.meta.sha256, sha256_hex(b""));
    let all: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
    let bin = key("bin/all-bytes");
    b.put(&bin, all.clone(), PutOptions::new()).await.unwrap();
    assert_eq!(&b.get(&bin).await.unwrap().content[..], &all[..]);
    assert!(b.head(&key("docs/none")).await.unwrap().is_none());
    match b.get(&key("docs/none")).await {
        Err(Error::NotFound { entity: "blob", id }) => assert_eq!(id, "docs/none"),
        other => panic!("expected NotFound, got {other:?}"),
    }
}

/// A put over an existing key replaces content and record together; `if_absent` refuses
/// an existing key and leaves it unchanged.
pub async fn overwrite_replaces_and_if_absent_refuses(t: &BlobTarget) {
    let b = &t.blobs;
    let k = key("a/b");
    b.put(
        &k,
        b"one".to_vec(),
        PutOptions::new().content_type("text/plain"),
    )
    .await
    .unwrap();
    let m2 = b
        .put(&k, b"second".to_vec(), PutOptions::new())
        .await
        .unwrap();
    let got = b.get(&k).await.unwrap();
    assert_eq!(&got.content[..], b"second");
    assert_eq!(got.meta, m2);
    assert_eq!(got.meta.content_type, None);
    match b
        .put(&k, b"third".to_vec(), PutOptions::new().if_absent())
        .await
    {
        Err(Error::AlreadyExists { entity: "blob", .. }) => {}
        other => panic!("expected AlreadyExists, got {other:?}"),
    }
    assert_eq!(&b.get(&k).await.unwrap().content[..], b"second");
    let fresh = key("a/c");
    b.put(&fresh, b"x".to_vec(), PutOptions::new().if_absent())
        .await
        .unwrap();
    assert_eq!(&b.get(&fresh).await.unwrap().content[..], b"x");
}

/// Ranges: any `start..end` within the size (empty ranges included); past the end or
/// reversed is [`Error::InvalidRange`].
pub async fn ranges_read_exactly_their_bytes(t: &BlobTarget) {
    let b = &t.blobs;
    let k = key("r");
    let data: Vec<u8> = (0..100u8).collect();
    b.put(&k, data.clone(), PutOptions::new()).await.unwrap();
    for (s, e) in [
        (0usize, 100usize),
        (10, 20),
        (99, 100),
        (0, 0),
        (100, 100),
        (50, 51),
    ] {
        let got = b.get_range(&k, s as u64..e as u64).await.unwrap();
        assert_eq!(&got.content[..], &data[s..e], "{s}..{e}");
        assert_eq!(got.meta.size, 100);
    }
    for (s, e) in [(0, 101), (101, 102), (200, 300)] {
        assert!(
            matches!(b.get_range(&k, s..e).await, Err(Error::InvalidRange(_))),
            "{s}..{e}"
        );
    }
    #[allow(clippy::reversed_empty_ranges)]
    let reversed = 20..10;
    assert!(matches!(
        b.get_range(&k, reversed).await,
        Err(Error::InvalidRange(_))
    ));
}

/// Streamed puts and gets: chunks (an empty one among them) make one blob with the right
/// size and hash, readable whole or by range as a stream; a stream that fails halfway
/// leaves no blob and the old one in place.
pub async fn streamed_put_and_get_round_trip(t: &BlobTarget) {
    use futures_util::StreamExt as _;
    let b = &t.blobs;
    let k = key("stream/one");
    let chunks: Vec<Vec<u8>> = vec![
        vec![1u8; 1000],
        Vec::new(),
        (0..=255u8).collect(),
        vec![7u8; 70_000],
    ];
    let whole: Vec<u8> = chunks.concat();
    let stream = futures_util::stream::iter(
        chunks
            .clone()
            .into_iter()
            .map(|c| Ok::<_, Error>(bytes::Bytes::from(c))),
    );
    let meta = b
        .put_stream(
            &k,
            stream,
            PutOptions::new()
                .content_type("application/x-test")
                .metadata("part", "1"),
        )
        .await
        .unwrap();
    assert_eq!(meta.size, whole.len() as u64);
    assert_eq!(meta.sha256, sha256_hex(&whole));
    let got = b.get(&k).await.unwrap();
    assert_eq!(&got.content[..], &whole[..]);
    assert_eq!(got.meta.content_type.as_deref(), Some("application/x-test"));
    assert_eq!(got.meta.metadata.get("part").map(String::as_str), Some("1"));
    let collect = |s: larder::blob::ByteStream| async move {
        let parts: Vec<bytes::Bytes> = s.map(|c| c.unwrap()).collect().await;
        parts.concat()
    };
    let (m, s) = b.get_stream(&k, None).await.unwrap();
    assert_eq!(m.size, whole.len() as u64);
    assert_eq!(collect(s).await, whole);
    let (_, s) = b.get_stream(&k, Some(900..1300)).await.unwrap();
    assert_eq!(collect(s).await, &whole[900..1300]);
    let (_, s) = b.get_stream(&k, Some(5..5)).await.unwrap();
    assert!(collect(s).await.is_empty());
    assert!(matches!(
        b.get_stream(&k, Some(0..whole.len() as u64 + 1)).await,
        Err(Error::InvalidRange(_))
    ));
    assert!(matches!(
        b.get_stream(&key("stream/none"), None).await,
        Err(Error::NotFound { .. })
    ));
    // A failing stream: nothing appears, the old blob stays.
    let failing = futures_util::stream::iter(vec![
        Ok(bytes::Bytes::from_static(b"partial")),
        Err(Error::InvalidQuery("the source failed".into())),
    ]);
    let e = b
        .put_stream(&k, failing, PutOptions::new())
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidQuery(_)), "{e:?}");
    assert_eq!(&b.get(&k).await.unwrap().content[..], &whole[..]);
    let fresh = key("stream/fresh");
    let failing = futures_util::stream::iter(vec![
        Ok(bytes::Bytes::from_static(b"partial")),
        Err(Error::InvalidQuery("the source failed".into())),
    ]);
    assert!(
        b.put_stream(&fresh, failing, PutOptions::new())
            .await
            .is_err()
    );
    assert!(b.head(&fresh).await.unwrap().is_none());
    let listed: Vec<String> = b
        .list("stream/", None, 10)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(listed, ["stream/one"]);
}

/// A 20 MiB stream (over object stores: three parts of a multipart upload) arrives whole,
/// with its size and hash, and reads back as a stream.
pub async fn a_large_stream_goes_up_in_parts(t: &BlobTarget) {
    use futures_util::StreamExt as _;
    use sha2::Digest as _;
    const MIB: usize = 1024 * 1024;
    let chunk = |i: usize| -> bytes::Bytes {
        bytes::Bytes::from(
            (0..MIB)
                .map(|j| ((i * 7 + j) % 253).to_le_bytes()[0])
                .collect::<Vec<u8>>(),
        )
    };
    let mut h = sha2::Sha256::new();
    for i in 0..20 {
        h.update(chunk(i));
    }
    let sha: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let k = key("large/parts.bin");
    let stream = futures_util::stream::iter((0..20).map(move |i| Ok::<_, Error>(chunk(i))));
    let meta = t
        .blobs
        .put_stream(&k, stream, PutOptions::new())
        .await
        .unwrap();
    assert_eq!(
        (meta.size, meta.sha256.as_str()),
        ((20 * MIB) as u64, sha.as_str())
    );
    assert_eq!(
        t.blobs.head(&k).await.unwrap().unwrap().size,
        (20 * MIB) as u64
    );
    let (_, mut s) = t.blobs.get_stream(&k, None).await.unwrap();
    let mut h = sha2::Sha256::new();
    while let Some(c) = s.next().await {
        h.update(c.unwrap());
    }
    let back: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(back, sha);
}

/// Attachments over this store (references in the memory backend): staged, rolled back,
/// deleted after commit, orphans swept; every reference resolves and nothing else stays.
pub async fn attachments_over_the_store_keep_their_rules(t: &BlobTarget) {
    use larder::blob::Attachments;
    let store = larder::Store::memory();
    let att = Attachments::open(&store, t.blobs.clone()).await.unwrap();
    let mut uow = store.begin().await.unwrap();
    for k in ["att/1", "att/2", "att/3"] {
        att.stage(&mut uow, &key(k), k.as_bytes().to_vec(), PutOptions::new())
            .await
            .unwrap();
    }
    uow.commit().await.unwrap();
    let mut uow = store.begin().await.unwrap();
    att.stage(&mut uow, &key("att/4"), b"no".to_vec(), PutOptions::new())
        .await
        .unwrap();
    uow.rollback().await.unwrap();
    let mut uow = store.begin().await.unwrap();
    assert!(att.delete(&mut uow, &key("att/2")).await.unwrap());
    att.stage(
        &mut uow,
        &key("att/3"),
        b"replaced".to_vec(),
        PutOptions::new(),
    )
    .await
    .unwrap();
    uow.commit().await.unwrap();
    let _orphan = att
        .upload(&key("att/lost"), b"lost".to_vec(), PutOptions::new())
        .await
        .unwrap();
    let report = crate::attachments::sweep_now(&att).await;
    assert_eq!(report.swept, 1, "{report:?}");
    let mut r = store.read().await.unwrap();
    assert_eq!(
        &att.get(&mut r, &key("att/3")).await.unwrap().content[..],
        b"replaced"
    );
    drop(r);
    let mut model = std::collections::BTreeMap::new();
    model.insert("att/1".to_owned(), sha256_hex(b"att/1"));
    model.insert("att/3".to_owned(), sha256_hex(b"replaced"));
    crate::attachments::check_consistent(&att, Some(&model), true)
        .await
        .unwrap();
}

/// `list` returns the keys with a prefix in key order, in pages that resume after the
/// last key, and nothing of larder's own.
pub async fn list_by_prefix_in_pages(t: &BlobTarget) {
    let b = &t.blobs;
    let keys = ["a/1", "a/2", "a/3", "a/4", "a/5", "ab", "b/1", "a0"];
    for k in keys {
        b.put(&key(k), k.as_bytes().to_vec(), PutOptions::new())
            .await
            .unwrap();
    }
    let mut seen = Vec::new();
    let mut after: Option<BlobKey> = None;
    loop {
        let page = b.list("a/", after.as_ref(), 2).await.unwrap();
        assert!(page.blobs.len() <= 2);
        seen.extend(page.blobs.iter().map(|m| m.key.clone()));
        match page.next {
            Some(n) => after = Some(n),
            None => break,
        }
    }
    assert_eq!(seen, ["a/1", "a/2", "a/3", "a/4", "a/5"]);
    let all: Vec<String> = b
        .list("", None, 1000)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|m| m.key)
        .collect();
    let mut want: Vec<String> = keys.iter().map(|s| (*s).to_owned()).collect();
    want.sort();
    assert_eq!(all, want);
    let a: Vec<String> = b
        .list("a", None, 1000)
        .await
        .unwrap()
        .blobs
        .into_iter()
        .map(|m| m.key)
        .collect();
    assert_eq!(a, ["a/1", "a/2", "a/3", "a/4", "a/5", "a0", "ab"]);
    assert!(b.list("zzz", None, 10).await.unwrap().blobs.is_empty());
    assert!(matches!(
        b.list("", None, 0).await,
        Err(Error::InvalidQuery(_))
    ));
}

/// `delete` says whether the blob existed; afterwards it is gone from get, head and list.
pub async fn delete_is_idempotent(t: &BlobTarget) {
    let b = &t.blobs;
    let k = key("d/x");
    b.put(&k, b"x".to_vec(), PutOptions::new()).await.unwrap();
    assert!(b.delete(&k).await.unwrap());
    assert!(!b.delete(&k).await.unwrap());
    assert!(b.head(&k).await.unwrap().is_none());
    assert!(matches!(b.get(&k).await, Err(Error::NotFound { .. })));
    assert!(b.list("d/", None, 10).await.unwrap().blobs.is_empty());
    // The key can be used again.
    b.put(&k, b"y".to_vec(), PutOptions::new().if_absent())
        .await
        .unwrap();
}

/// `copy` duplicates content, content type and metadata under the new key (overwriting
/// it); the source stays; copying a missing blob is `NotFound`.
pub async fn copy_duplicates_a_blob(t: &BlobTarget) {
    let b = &t.blobs;
    let (src, dst) = (key("c/src"), key("c/dst"));
    let m = b
        .put(
            &src,
            b"payload".to_vec(),
            PutOptions::new()
                .content_type("text/plain")
                .metadata("k", "v"),
        )
        .await
        .unwrap();
    b.put(&dst, b"old".to_vec(), PutOptions::new())
        .await
        .unwrap();
    let c = b.copy(&src, &dst).await.unwrap();
    assert_eq!(
        (c.size, &c.sha256, &c.content_type),
        (m.size, &m.sha256, &m.content_type)
    );
    assert_eq!(c.metadata, m.metadata);
    assert_eq!(&b.get(&dst).await.unwrap().content[..], b"payload");
    assert_eq!(&b.get(&src).await.unwrap().content[..], b"payload");
    assert!(matches!(
        b.copy(&key("c/none"), &dst).await,
        Err(Error::NotFound { .. })
    ));
}

/// Bad metadata and content types are typed errors before anything is stored.
pub async fn bad_metadata_is_refused_before_storing(t: &BlobTarget) {
    let b = &t.blobs;
    let k = key("m");
    let mut many = PutOptions::new();
    for i in 0..33 {
        many = many.metadata(format!("k{i}"), "v");
    }
    for (opts, want) in [
        (many, "limit_exceeded"),
        (
            PutOptions::new().metadata("x".repeat(3000), "v"),
            "limit_exceeded",
        ),
        (PutOptions::new().metadata("bad name", "v"), "invalid_query"),
        (PutOptions::new().metadata("Upper", "v"), "invalid_query"),
        (
            PutOptions::new().metadata("with-dash", "v"),
            "invalid_query",
        ),
        (
            PutOptions::new().metadata("ok", "line\nbreak"),
            "invalid_query",
        ),
        (
            PutOptions::new().content_type("text/\r\nplain"),
            "invalid_query",
        ),
    ] {
        let e = b.put(&k, b"x".to_vec(), opts).await.unwrap_err();
        assert_eq!(e.kind(), want, "{e}");
    }
    assert!(b.head(&k).await.unwrap().is_none(), "nothing stored");
}

/// Writers replacing one key concurrently while readers read it: every read is one
/// writer's whole blob (its content hashes to its record's SHA-256), never a mix or a
/// partial file.
pub async fn concurrent_overwrites_are_atomic(t: &BlobTarget) {
    let b = Arc::new(t.blobs.clone());
    let k = key("hot/blob");
    b.put(&k, vec![0u8; 10_000], PutOptions::new())
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for w in 0..4u8 {
        let (b, k) = (b.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25u8 {
                let len = 1_000 + (usize::from(w) * 7_919 + usize::from(i) * 104_729) % 60_000;
                let content = vec![w.wrapping_add(i); len];
                b.put(&k, content, PutOptions::new()).await.unwrap();
            }
        }));
    }
    let mut reads = 0;
    for _ in 0..2 {
        let (b, k) = (b.clone(), k.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..60 {
                let got = b.get(&k).await.unwrap();
                assert_eq!(got.content.len() as u64, got.meta.size, "torn blob (size)");
                assert_eq!(sha256_hex(&got.content), got.meta.sha256, "torn blob");
                let first = got.content.first().copied();
                assert!(
                    got.content.iter().all(|x| Some(*x) == first),
                    "torn blob (mixed)"
                );
            }
        }));
        reads += 60;
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(reads, 120);
}

/// H2: the hostile key corpus, more than 100 keys, every one refused by [`BlobKey::new`].
pub fn hostile_keys() -> Vec<String> {
    let mut v: Vec<String> = [
        "",
        "/",
        "//",
        "/etc/passwd",
        "/a",
        "..",
        ".",
        "../a",
        "a/..",
        "a/../b",
        "./a",
        "a/.",
        "a/./b",
        "a//b",
        "a/",
        "a\\b",
        "..\\a",
        "a\\..\\b",
        "C:\\Windows",
        "\\\\server\\share",
        "%2e%2e/a",
        "%2E%2E/a",
        "a/%2e%2e",
        "%2e/a",
        "a%2fb",
        "a%2Fb",
        "..%2fa",
        "%2e%2e%2fetc",
        "a%5cb",
        "a%5C..",
        "%00",
        "a%00b",
        "a%0ab",
        "a%0Db",
        "a%7f",
        "%25",
        "%252e%252e",
        "a\0",
        "\0",
        "a\nb",
        "a\rb",
        "a\tb",
        "\u{7f}",
        "a\u{1b}[31m",
        "a\u{85}b",
        "a\u{9b}b",
        "\u{FF0E}\u{FF0E}/a",
        "\u{2024}\u{2024}",
        "\u{FE52}\u{FE52}",
        "a/\u{FF0E}",
        "a\u{FF0F}b",
        "a\u{FF3C}b",
        "a\u{2215}b",
        "a\u{2044}b",
        "a\u{202E}fdp.exe",
        "a\u{200B}",
        "\u{FEFF}a",
        "a\u{2066}b",
        "a\u{00AD}b",
        "...",
        "....",
        "a/...",
        ".../a",
        ".larder-tmp/x",
        ".larder-staging/a",
        ".larder",
        ".larderx/y",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    v.push("a".repeat(1025));
    v.push(format!("{}/x", "a/".repeat(600)));
    for sep in ["/", "\\"] {
        for depth in 1..=6 {
            v.push(format!(
                "{}etc{sep}passwd",
                format!("..{sep}").repeat(depth)
            ));
            v.push(format!("a{sep}{}b", format!("..{sep}").repeat(depth)));
        }
    }
    for c in 0u8..0x20 {
        v.push(format!("x{}y", char::from(c)));
    }
    v
}

/// Every hostile key is refused with [`Error::InvalidBlobKey`]; the store stays empty.
pub async fn hostile_keys_never_reach_the_store(t: &BlobTarget) {
    let keys = hostile_keys();
    assert!(keys.len() >= 100, "corpus of {}", keys.len());
    let mut rules = BTreeSet::new();
    for k in &keys {
        match BlobKey::new(k.clone()) {
            Err(Error::InvalidBlobKey { reason, .. }) => {
                rules.insert(reason);
            }
            other => panic!("{k:?} was not refused: {other:?}"),
        }
    }
    assert!(rules.len() >= 8, "rules exercised: {rules:?}");
    assert!(t.blobs.list("", None, 1000).await.unwrap().blobs.is_empty());
}

/// Every rule in turn, each on a fresh target from `fresh` — for backends whose server one
/// test starts once (S3, Azure). Prints each rule's name before it runs.
pub async fn all_rules<F, Fut>(mut fresh: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = BlobTarget>,
{
    macro_rules! each {
        ($($rule:ident),* $(,)?) => {$(
            eprintln!("blob rule: {}", stringify!($rule));
            $rule(&fresh().await).await;
        )*};
    }
    each!(
        put_get_head_round_trip,
        overwrite_replaces_and_if_absent_refuses,
        ranges_read_exactly_their_bytes,
        list_by_prefix_in_pages,
        delete_is_idempotent,
        copy_duplicates_a_blob,
        bad_metadata_is_refused_before_storing,
        concurrent_overwrites_are_atomic,
        hostile_keys_never_reach_the_store,
        streamed_put_and_get_round_trip,
        a_large_stream_goes_up_in_parts,
        attachments_over_the_store_keep_their_rules,
    );
}
