//! The blob conformance suite on every blob backend (memory and the local filesystem here;
//! object stores join with their servers).

larder_testkit::blob_conformance!(memory);
larder_testkit::blob_conformance!(filesystem);

/// One audit record per call: operation, the key, rows and the outcome (refusals too).
#[tokio::test]
async fn every_blob_call_is_audited() {
    use larder::blob::{BlobKey, Blobs, PutOptions};
    use std::sync::Arc;
    let sink = Arc::new(larder::audit::MemoryAuditSink::default());
    let blobs = Blobs::memory().with_audit(sink.clone());
    let k = BlobKey::new("a/b").unwrap();
    blobs
        .put(&k, b"x".to_vec(), PutOptions::new())
        .await
        .unwrap();
    blobs.get(&k).await.unwrap();
    assert!(blobs.delete(&k).await.unwrap());
    assert!(blobs.get(&k).await.is_err());
    let managed = BlobKey::managed(".larder-objects/x").unwrap();
    assert!(blobs.head(&managed).await.is_err());
    type Seen = (&'static str, Option<String>, u64, Result<(), &'static str>);
    let got: Vec<Seen> = sink
        .records()
        .into_iter()
        .map(|r| (r.operation, r.entity_id, r.rows, r.outcome))
        .collect();
    assert_eq!(
        got,
        [
            ("blob.put", Some("a/b".into()), 1, Ok(())),
            ("blob.get", Some("a/b".into()), 1, Ok(())),
            ("blob.delete", Some("a/b".into()), 1, Ok(())),
            ("blob.get", Some("a/b".into()), 0, Err("not_found")),
            (
                "blob.head",
                Some(".larder-objects/x".into()),
                0,
                Err("invalid_blob_key")
            ),
        ]
    );
}
