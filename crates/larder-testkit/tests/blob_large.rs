//! Large objects: a 256 MiB blob streamed in and out of the filesystem store, and staged
//! from a stream in a unit of work (SQLite), with constant memory. The content is
//! generated chunk by chunk and hashed on the way back, so the test itself holds one chunk
//! at a time; the process's peak RSS (VmHWM) is reported and must grow by far less than
//! the blob's size.

use futures_util::StreamExt as _;
use larder::blob::{Attachments, BlobKey, Blobs, ByteStream, PutOptions};
use larder_testkit::backends;
use larder_testkit::blob::TempRoot;
use sha2::{Digest, Sha256};

const SIZE: u64 = 256 * 1024 * 1024;
const CHUNK: u64 = 1024 * 1024;

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0)
}

/// `SIZE` bytes in `CHUNK`s, made as they are asked for; and their SHA-256.
fn content() -> (
    impl futures_util::Stream<Item = larder::Result<bytes::Bytes>> + Send,
    String,
) {
    let chunk = |i: u64| -> Vec<u8> {
        (0..CHUNK)
            .map(|j| ((i * 31 + j) % 251).to_le_bytes()[0])
            .collect()
    };
    let mut h = Sha256::new();
    for i in 0..SIZE / CHUNK {
        h.update(chunk(i));
    }
    let digest: String = h.finalize().iter().map(|b| format!("{b:02x}")).collect();
    let s =
        futures_util::stream::iter(0..SIZE / CHUNK).map(move |i| Ok(bytes::Bytes::from(chunk(i))));
    (s, digest)
}

async fn drain(s: ByteStream) -> (u64, String) {
    let mut h = Sha256::new();
    let mut n = 0u64;
    let mut s = s;
    while let Some(c) = s.next().await {
        let c = c.unwrap();
        n += c.len() as u64;
        h.update(&c);
    }
    (n, h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_256_mib_blob_streams_in_and_out_in_constant_memory() {
    let root = TempRoot::new("large");
    let blobs = Blobs::filesystem(root.path().join("store")).await.unwrap();
    let before = peak_rss_kib();
    let (stream, sha) = content();
    let key = BlobKey::new("big/raw.bin").unwrap();
    let meta = blobs
        .put_stream(&key, stream, PutOptions::new())
        .await
        .unwrap();
    assert_eq!((meta.size, meta.sha256.as_str()), (SIZE, sha.as_str()));
    let (m, s) = blobs.get_stream(&key, None).await.unwrap();
    assert_eq!(m.sha256, sha);
    assert_eq!(drain(s).await, (SIZE, sha.clone()));

    // Staged from a stream in a unit of work, read back as a stream.
    let db = backends::sqlite("blob_large").await.unwrap();
    let att = Attachments::open(&db.store, blobs.clone()).await.unwrap();
    let (stream, _) = content();
    let staged_key = BlobKey::new("big/staged.bin").unwrap();
    let staged = att
        .upload_stream(&staged_key, stream, PutOptions::new())
        .await
        .unwrap();
    let mut uow = db.store.begin().await.unwrap();
    let m = att.attach(&mut uow, staged).await.unwrap();
    uow.commit().await.unwrap();
    assert_eq!(m.sha256, sha);
    let mut uow = db.store.read().await.unwrap();
    let (m, s) = att.get_stream(&mut uow, &staged_key, None).await.unwrap();
    drop(uow);
    assert_eq!(m.size, SIZE);
    assert_eq!(drain(s).await, (SIZE, sha));

    let grew_mib = peak_rss_kib().saturating_sub(before) / 1024;
    let peak_mib = peak_rss_kib() / 1024;
    use std::io::Write as _;
    let _ = writeln!(
        std::io::stderr(),
        "blob_large: 2 x 256 MiB streamed in and out; peak RSS {peak_mib} MiB (grew {grew_mib} MiB)"
    );
    assert!(
        grew_mib < 64,
        "peak RSS grew by {grew_mib} MiB streaming 256 MiB blobs"
    );
    db.finish().await;
}
