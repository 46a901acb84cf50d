//! H2 on the filesystem backend: hostile keys never write outside the root, symbolic links
//! planted inside the root are never followed; and the atomicity rule's canary (a backend
//! that replaces blobs in two steps is caught).

use std::ops::Range;
use std::path::Path;

use bytes::Bytes;
use larder::backend::BoxFuture;
use larder::blob::{Blob, BlobBackend, BlobKey, BlobMeta, Blobs, MemoryBlobs, PutOptions};
use larder_testkit::blob::{BlobTarget, TempRoot, concurrent_overwrites_are_atomic, hostile_keys};

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            files_under(&e.path(), out);
        } else {
            out.push(e.path());
        }
    }
}

#[tokio::test]
async fn h2_hostile_keys_write_nothing_outside_the_root() {
    let sandbox = TempRoot::new("h2");
    let root = sandbox.path().join("store");
    let blobs = Blobs::filesystem(&root).await.unwrap();
    let corpus = hostile_keys();
    assert!(corpus.len() >= 100);
    for k in &corpus {
        assert!(BlobKey::new(k.clone()).is_err(), "{k:?} accepted");
    }
    // Names that look odd but are plain file names stay inside the root.
    for k in [
        "a..b",
        "...a/b",
        "a%41b",
        "100%",
        "x/.hidden",
        "a~/b",
        "-rf",
        "a b/c d",
    ] {
        blobs
            .put(&BlobKey::new(k).unwrap(), b"ok".to_vec(), PutOptions::new())
            .await
            .unwrap();
    }
    let mut files = Vec::new();
    files_under(sandbox.path(), &mut files);
    let root = root.canonicalize().unwrap();
    for f in &files {
        assert!(
            f.canonicalize().unwrap().starts_with(&root),
            "{} is outside the root",
            f.display()
        );
    }
    assert_eq!(files.len(), 8, "{files:?}");
}

#[cfg(unix)]
#[tokio::test]
async fn h2_symbolic_links_inside_the_root_are_not_followed() {
    use std::os::unix::fs::symlink;

    let sandbox = TempRoot::new("h2link");
    let outside = sandbox.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret"), b"do not read").unwrap();
    let root = sandbox.path().join("store");
    let blobs = Blobs::filesystem(&root).await.unwrap();
    symlink(&outside, root.join("link")).unwrap();
    symlink(outside.join("secret"), root.join("evil")).unwrap();
    let k = |s: &str| BlobKey::new(s).unwrap();
    for key in ["link/secret", "evil"] {
        let e = blobs.get(&k(key)).await.unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{key}: {e}");
        assert!(blobs.head(&k(key)).await.is_err(), "{key}");
        assert!(blobs.delete(&k(key)).await.is_err(), "{key}");
    }
    for key in ["link/new", "link/secret", "evil"] {
        let e = blobs
            .put(&k(key), b"pwned".to_vec(), PutOptions::new())
            .await
            .unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{key}: {e}");
    }
    assert_eq!(
        std::fs::read(outside.join("secret")).unwrap(),
        b"do not read"
    );
    let mut outside_files = Vec::new();
    files_under(&outside, &mut outside_files);
    assert_eq!(outside_files.len(), 1, "{outside_files:?}");
    // Listing does not walk into the link either.
    assert!(blobs.list("", None, 100).await.unwrap().blobs.is_empty());
}

/// Replaces a blob in two steps (a torn write a reader can see).
#[derive(Debug, Default)]
struct TornWrites(MemoryBlobs);

impl BlobBackend for TornWrites {
    fn system(&self) -> &'static str {
        "torn"
    }
    fn put<'a>(
        &'a self,
        key: &'a BlobKey,
        content: Bytes,
        meta: &'a BlobMeta,
        if_absent: bool,
    ) -> BoxFuture<'a, larder::Result<()>> {
        Box::pin(async move {
            let half = content.slice(..content.len() / 2);
            self.0.put(key, half, meta, if_absent).await?;
            tokio::task::yield_now().await;
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
            self.0.put(key, content, meta, false).await
        })
    }
    fn get<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, larder::Result<Option<Blob>>> {
        self.0.get(key, range)
    }
    fn head<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, larder::Result<Option<BlobMeta>>> {
        self.0.head(key)
    }
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a BlobKey>,
        limit: usize,
    ) -> BoxFuture<'a, larder::Result<Vec<BlobMeta>>> {
        self.0.list(prefix, after, limit)
    }
    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, larder::Result<bool>> {
        self.0.delete(key)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[should_panic(expected = "torn blob")]
async fn canary_a_backend_with_torn_writes_is_caught() {
    let target = BlobTarget::over(Blobs::new(TornWrites::default()));
    concurrent_overwrites_are_atomic(&target).await;
}
