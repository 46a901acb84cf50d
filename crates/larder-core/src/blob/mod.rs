//! Blobs: binary objects beside the SQL data (STORES.md, category 3: outside SQL,
//! coordinated with the unit of work).
//!
//! - [`BlobKey`]: validated keys (no traversal on any backend, never a silent rewrite).
//! - [`Blobs`]: the policy layer every backend shares — size and SHA-256 computed once,
//!   metadata limits, a span per operation (`larder.blob.*`, with the key's first segment
//!   and the size, never the content), a deadline on every call, typed errors.
//! - [`BlobBackend`]: the small primitives a backend implements. In this crate: memory
//!   ([`MemoryBlobs`], the reference model) and the local filesystem ([`FsBlobs`], the
//!   embedded default: temp file, fsync, rename, fsync of the folder; symbolic links inside
//!   the root are never followed).
//!
//! ```
//! # async fn demo() -> larder_core::Result<()> {
//! use larder_core::blob::{BlobKey, Blobs, PutOptions};
//!
//! let blobs = Blobs::memory();
//! let key = BlobKey::new("invoices/2026/inv-1.pdf")?;
//! let meta = blobs
//!     .put(&key, b"%PDF-1.7 ...".to_vec(), PutOptions::new().content_type("application/pdf"))
//!     .await?;
//! assert_eq!(meta.size, 12);
//! let blob = blobs.get(&key).await?;
//! assert_eq!(blob.meta.sha256, meta.sha256);
//! assert!(BlobKey::new("../etc/passwd").is_err());
//! # Ok(()) }
//! ```

mod attach;
mod fs;
mod key;
mod memory;
mod refs;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tracing::Instrument;

pub(crate) use attach::AttachCore;
pub use attach::{
    Attachments, AttachmentsBuilder, BlobUsage, Staged, SweepOptions, SweepReport, UowBlobs,
};
pub use fs::FsBlobs;
pub use key::{BlobKey, MANAGED_PREFIXES, MAX_KEY_BYTES, RESERVED_PREFIX};
pub use memory::MemoryBlobs;
pub use refs::{BlobRef, BlobRefTransaction, decode_metadata, encode_metadata};

use crate::backend::BoxFuture;
use crate::error::{Error, Result};
use crate::events::now_micros;

/// Most user metadata entries per blob.
pub const MAX_METADATA_ENTRIES: usize = 32;
/// Most bytes of user metadata per blob (names and values).
pub const MAX_METADATA_BYTES: usize = 2048;

/// What is recorded about a blob.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct BlobMeta {
    /// The key.
    pub key: String,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the content, lowercase hex.
    pub sha256: String,
    /// Content type, when one was given.
    pub content_type: Option<String>,
    /// User metadata.
    pub metadata: BTreeMap<String, String>,
    /// When it was stored, microseconds since the Unix epoch.
    pub created_micros: i64,
}

impl BlobMeta {
    /// An empty record of `key` (backends fill in what they read back).
    pub fn default_for(key: &str) -> BlobMeta {
        BlobMeta {
            key: key.to_owned(),
            size: 0,
            sha256: String::new(),
            content_type: None,
            metadata: BTreeMap::new(),
            created_micros: 0,
        }
    }
}

/// A blob read whole or in part.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Blob {
    /// Its record.
    pub meta: BlobMeta,
    /// The bytes read (the whole content, or the range asked for).
    pub content: Bytes,
}

impl Blob {
    /// A blob of `meta` holding `content`.
    pub fn new(meta: BlobMeta, content: Bytes) -> Blob {
        Blob { meta, content }
    }
}

/// Options of [`Blobs::put`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PutOptions {
    /// Content type (e.g. `application/pdf`).
    pub content_type: Option<String>,
    /// User metadata (names: a lowercase ASCII letter, then lowercase letters, digits and
    /// `_`, at most 64 — what S3 keeps (it lowercases) and Azure accepts (identifiers);
    /// values: no control characters).
    pub metadata: BTreeMap<String, String>,
    /// Store only if no blob has the key ([`Error::AlreadyExists`] otherwise).
    pub if_absent: bool,
}

impl PutOptions {
    /// No content type, no metadata, overwrite.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the content type.
    #[must_use]
    pub fn content_type(mut self, t: impl Into<String>) -> Self {
        self.content_type = Some(t.into());
        self
    }

    /// Adds a metadata entry.
    #[must_use]
    pub fn metadata(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.metadata.insert(name.into(), value.into());
        self
    }

    /// Fails with [`Error::AlreadyExists`] instead of overwriting.
    #[must_use]
    pub fn if_absent(mut self) -> Self {
        self.if_absent = true;
        self
    }
}

/// A page of [`Blobs::list`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct BlobPage {
    /// Blobs in key order.
    pub blobs: Vec<BlobMeta>,
    /// Pass as `after` for the next page (`None`: this was the last).
    pub next: Option<BlobKey>,
}

/// The primitives a blob backend implements; [`Blobs`] adds the policy.
///
/// # Contract
/// - Keys are validated [`BlobKey`]s; `meta` is complete (size and hash computed by the
///   caller from `content`).
/// - `put` is atomic: a reader sees the old blob or the new one, whole, never a mix or a
///   partial file; with `if_absent` it refuses an existing key with
///   [`Error::AlreadyExists`] (entity `blob`) and leaves it unchanged.
/// - `get` returns `None` for a missing key; `range` is already checked against the size
///   by the caller only when it knows it: a backend returns [`Error::InvalidRange`] for a
///   range past the end.
/// - `list` returns keys that start with `prefix` (a plain string prefix), after `after`
///   (exclusive), in byte order of the key, at most `limit`, never larder's reserved keys
///   unless `prefix` itself starts with [`RESERVED_PREFIX`] (the sweep lists the managed
///   folders that way), and never a backend's temporary files.
/// - `delete` returns whether the key existed.
pub trait BlobBackend: Send + Sync + fmt::Debug + 'static {
    /// The system's name for spans (`memory`, `filesystem`, `s3`, `azure`).
    fn system(&self) -> &'static str;

    /// Stores `content` under `key` with `meta`.
    fn put<'a>(
        &'a self,
        key: &'a BlobKey,
        content: Bytes,
        meta: &'a BlobMeta,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<()>>;

    /// Reads a blob, or `range` of it.
    fn get<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<Blob>>>;

    /// Reads a blob's record.
    fn head<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<Option<BlobMeta>>>;

    /// Lists records (see the contract).
    fn list<'a>(
        &'a self,
        prefix: &'a str,
        after: Option<&'a BlobKey>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<BlobMeta>>>;

    /// Deletes a blob; returns whether it existed.
    fn delete<'a>(&'a self, key: &'a BlobKey) -> BoxFuture<'a, Result<bool>>;

    /// Whether the backend streams ([`BlobBackend::put_writer`] and
    /// [`BlobBackend::get_stream`]); when it does not, [`Blobs`] buffers streamed puts and
    /// serves streamed gets from one read.
    fn streams(&self) -> bool {
        false
    }

    /// Starts a streamed upload of `key`: chunks are written as they come, and the blob
    /// appears (atomically, as with `put`) only when the writer finishes. `meta` holds
    /// everything but the size and the hash, which [`BlobWriter::finish`] brings.
    fn put_writer<'a>(
        &'a self,
        key: &'a BlobKey,
        meta: &'a BlobMeta,
        if_absent: bool,
    ) -> BoxFuture<'a, Result<Box<dyn BlobWriter + 'a>>> {
        let _ = (key, meta, if_absent);
        Box::pin(std::future::ready(Err(Error::Unsupported {
            operation: "streamed blob puts",
            backend: self.system(),
        })))
    }

    /// Reads a blob, or `range` of it, as a stream of chunks (`None`: no blob).
    fn get_stream<'a>(
        &'a self,
        key: &'a BlobKey,
        range: Option<Range<u64>>,
    ) -> BoxFuture<'a, Result<Option<(BlobMeta, ByteStream)>>> {
        let _ = (key, range);
        Box::pin(std::future::ready(Err(Error::Unsupported {
            operation: "streamed blob gets",
            backend: self.system(),
        })))
    }
}

/// Content as a stream of chunks.
pub type ByteStream = std::pin::Pin<Box<dyn futures_core::Stream<Item = Result<Bytes>> + Send>>;

/// A streamed upload in progress ([`BlobBackend::put_writer`]). Dropped without
/// [`finish`](BlobWriter::finish), it leaves no blob.
pub trait BlobWriter: Send {
    /// Appends a chunk.
    fn write(&mut self, chunk: Bytes) -> BoxFuture<'_, Result<()>>;

    /// Makes the blob appear with `meta` (its size and hash now known).
    fn finish<'a>(self: Box<Self>, meta: &'a BlobMeta) -> BoxFuture<'a, Result<()>>
    where
        Self: 'a;

    /// Gives up: no blob appears.
    fn abort<'a>(self: Box<Self>) -> BoxFuture<'a, Result<()>>
    where
        Self: 'a;
}

/// The blob store: a backend with larder's policy (see the module docs).
#[derive(Clone)]
pub struct Blobs {
    backend: Arc<dyn BlobBackend>,
    timeout: Duration,
    audit: Option<Arc<dyn crate::audit::AuditSink>>,
}

impl fmt::Debug for Blobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Blobs")
            .field("backend", &self.backend)
            .field("timeout", &self.timeout)
            .field("audit", &self.audit.is_some())
            .finish()
    }
}

fn check_metadata(opts: &PutOptions) -> Result<()> {
    if opts.metadata.len() > MAX_METADATA_ENTRIES {
        return Err(Error::LimitExceeded {
            what: "blob metadata entries",
            actual: opts.metadata.len() as u64,
            limit: MAX_METADATA_ENTRIES as u64,
        });
    }
    let bytes: usize = opts.metadata.iter().map(|(k, v)| k.len() + v.len()).sum();
    if bytes > MAX_METADATA_BYTES {
        return Err(Error::LimitExceeded {
            what: "blob metadata bytes",
            actual: bytes as u64,
            limit: MAX_METADATA_BYTES as u64,
        });
    }
    for (k, v) in &opts.metadata {
        let good = k.len() <= 64
            && k.bytes().next().is_some_and(|b| b.is_ascii_lowercase())
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
        if !good {
            return Err(Error::InvalidQuery(format!(
                "blob metadata name `{}`: start with a lowercase ASCII letter, then use \
                 lowercase letters, digits and `_` (at most 64)",
                crate::error::one_line(k)
            )));
        }
        if v.chars().any(char::is_control) {
            return Err(Error::InvalidQuery(format!(
                "blob metadata `{k}` has a control character in its value"
            )));
        }
    }
    if let Some(t) = &opts.content_type
        && (t.is_empty() || t.len() > 255 || t.chars().any(|c| c.is_control()))
    {
        return Err(Error::InvalidQuery(
            "content type: 1 to 255 characters, no control characters".into(),
        ));
    }
    Ok(())
}

/// Lowercase hex SHA-256 of `content`.
pub fn sha256_hex(content: &[u8]) -> String {
    hex(&Sha256::digest(content))
}

fn hex(d: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    for b in d {
        use std::fmt::Write as _;
        let _ = write!(s, "{b:02x}");
    }
    s
}

macro_rules! blob_span {
    ($name:literal, $op:literal, $system:expr, $key:expr) => {
        tracing::info_span!(
            $name,
            otel.kind = "client",
            larder.blob.system = $system,
            larder.blob.operation = $op,
            larder.blob.prefix = $key,
            larder.blob.size = tracing::field::Empty,
            error.type = tracing::field::Empty,
            error.message = tracing::field::Empty,
        )
    };
}

impl Blobs {
    /// A store over `backend`, with a 60 s deadline per call.
    pub fn new(backend: impl BlobBackend) -> Blobs {
        Blobs::from_arc(Arc::new(backend))
    }

    /// [`Blobs::new`] for a shared backend.
    pub fn from_arc(backend: Arc<dyn BlobBackend>) -> Blobs {
        Blobs {
            backend,
            timeout: Duration::from_secs(60),
            audit: None,
        }
    }

    /// An in-memory store (tests, examples).
    pub fn memory() -> Blobs {
        Blobs::new(MemoryBlobs::default())
    }

    /// A store in the folder `root` (created if missing).
    pub async fn filesystem(root: impl Into<std::path::PathBuf>) -> Result<Blobs> {
        Ok(Blobs::new(FsBlobs::open(root).await?))
    }

    /// The deadline of every call (default 60 s): a call that takes longer fails with
    /// [`Error::DeadlineExceeded`].
    #[must_use]
    pub fn with_timeout(mut self, d: Duration) -> Blobs {
        self.timeout = d;
        self
    }

    /// Sends one audit record per call (operation `blob.put`, `blob.get`, …; collection
    /// `blob`; the key as the entity id; the outcome) to `sink`. Blobs staged in a unit of
    /// work are audited by the store's sink as part of it.
    #[must_use]
    pub fn with_audit(mut self, sink: Arc<dyn crate::audit::AuditSink>) -> Blobs {
        self.audit = Some(sink);
        self
    }

    fn audit<T>(&self, operation: &'static str, key: &str, r: &Result<T>, rows: u64) {
        if let Some(sink) = &self.audit {
            sink.record(crate::audit::AuditRecord {
                at: std::time::SystemTime::now(),
                actor: None,
                correlation_id: None,
                operation,
                collection: Some("blob"),
                entity_id: Some(key.to_owned()),
                rows: if r.is_ok() { rows } else { 0 },
                outcome: r.as_ref().map(|_| ()).map_err(Error::kind),
            });
        }
    }

    /// Stores `content` under `key` (atomically: readers see the old blob or the new one).
    pub async fn put(
        &self,
        key: &BlobKey,
        content: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<BlobMeta> {
        let r = self.put_unaudited(key, content, opts).await;
        self.audit("blob.put", key.as_str(), &r, 1);
        r
    }

    /// Stores the chunks of `content` under `key` without holding the whole content in
    /// memory (on backends that stream: the filesystem writes a temporary file, object
    /// stores upload parts; memory buffers). Size and SHA-256 are computed on the way; the
    /// blob appears atomically at the end, and not at all if the stream fails. The deadline
    /// bounds each step (opening, every chunk, finishing), not the whole transfer.
    ///
    /// On S3 and Azure the object's own metadata has no hash for a streamed put (it is
    /// written before the first part); the returned record has it, and
    /// [`Attachments`] keep it in SQL. A streamed put only if absent is refused there
    /// ([`Error::Unsupported`]: multipart uploads cannot be conditional).
    pub async fn put_stream<S>(
        &self,
        key: &BlobKey,
        content: S,
        opts: PutOptions,
    ) -> Result<BlobMeta>
    where
        S: futures_core::Stream<Item = Result<Bytes>> + Send,
    {
        let r = self.put_stream_unaudited(key, content, opts).await;
        self.audit("blob.put", key.as_str(), &r, 1);
        r
    }

    /// Reads a whole blob ([`Error::NotFound`] if there is none).
    pub async fn get(&self, key: &BlobKey) -> Result<Blob> {
        let r = self.get_unaudited(key).await;
        self.audit("blob.get", key.as_str(), &r, 1);
        r
    }

    /// Reads `range` of a blob: `start..end` in bytes, `end` at most the size
    /// ([`Error::InvalidRange`] otherwise; an empty range is allowed).
    pub async fn get_range(&self, key: &BlobKey, range: Range<u64>) -> Result<Blob> {
        let r = self.get_range_unaudited(key, range).await;
        self.audit("blob.get", key.as_str(), &r, 1);
        r
    }

    /// Reads a blob (or `range` of it) as a stream of chunks, without holding it whole in
    /// memory on backends that stream ([`Error::NotFound`] if there is none). The deadline
    /// bounds opening the blob; reading the chunks is up to the caller.
    pub async fn get_stream(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<(BlobMeta, ByteStream)> {
        let r = self.get_stream_unaudited(key, range).await;
        self.audit("blob.get", key.as_str(), &r, 1);
        r
    }

    /// A blob's record, or `None`.
    pub async fn head(&self, key: &BlobKey) -> Result<Option<BlobMeta>> {
        let r = self.head_unaudited(key).await;
        let n = r.as_ref().map_or(0, |m| u64::from(m.is_some()));
        self.audit("blob.head", key.as_str(), &r, n);
        r
    }

    /// Records of the blobs whose key starts with `prefix`, after `after`, at most `limit`
    /// (1 to 1,000) per page.
    pub async fn list(
        &self,
        prefix: &str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<BlobPage> {
        let r = self.list_unaudited(prefix, after, limit).await;
        let n = r.as_ref().map_or(0, |p| p.blobs.len() as u64);
        self.audit("blob.list", prefix, &r, n);
        r
    }

    /// Deletes a blob; returns whether it existed.
    pub async fn delete(&self, key: &BlobKey) -> Result<bool> {
        let r = self.delete_unaudited(key).await;
        let n = r.as_ref().map_or(0, |d| u64::from(*d));
        self.audit("blob.delete", key.as_str(), &r, n);
        r
    }

    /// Copies a blob to `to` (overwriting it), with its content type and metadata.
    pub async fn copy(&self, from: &BlobKey, to: &BlobKey) -> Result<BlobMeta> {
        let r = self.copy_unaudited(from, to).await;
        self.audit("blob.copy", to.as_str(), &r, 1);
        r
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn BlobBackend> {
        &self.backend
    }

    async fn bounded<T>(
        &self,
        op: &'static str,
        span: tracing::Span,
        f: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        let r = match tokio::time::timeout(self.timeout, f.instrument(span.clone())).await {
            Ok(r) => r,
            Err(_) => Err(Error::DeadlineExceeded { operation: op }),
        };
        if let Err(e) = &r {
            span.record("error.type", e.kind());
            span.record("error.message", tracing::field::display(e));
        }
        r
    }

    /// Stores `content` under `key` (atomically: readers see the old blob or the new one).
    async fn put_unaudited(
        &self,
        key: &BlobKey,
        content: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<BlobMeta> {
        let content: Bytes = content.into();
        let span = blob_span!("larder.blob.put", "put", self.backend.system(), key.top());
        span.record("larder.blob.size", content.len() as u64);
        public(key)?;
        check_metadata(&opts)?;
        let meta = BlobMeta {
            key: key.as_str().to_owned(),
            size: content.len() as u64,
            sha256: sha256_hex(&content),
            content_type: opts.content_type,
            metadata: opts.metadata,
            created_micros: now_micros(),
        };
        let m = &meta;
        self.bounded("blob.put", span, async move {
            self.backend.put(key, content, m, opts.if_absent).await
        })
        .await?;
        Ok(meta)
    }

    /// Stores the chunks of `content` under `key` without holding the whole content in
    /// memory (on backends that stream: the filesystem writes a temporary file, object
    /// stores upload parts; memory buffers). Size and SHA-256 are computed on the way; the
    /// blob appears atomically at the end, and not at all if the stream fails. The deadline
    /// bounds each step (opening, every chunk, finishing), not the whole transfer.
    ///
    /// On S3 and Azure the object's own metadata has no hash for a streamed put (it is
    /// written before the first part); the returned record has it, and
    /// [`Attachments`] keep it in SQL.
    async fn put_stream_unaudited<S>(
        &self,
        key: &BlobKey,
        content: S,
        opts: PutOptions,
    ) -> Result<BlobMeta>
    where
        S: futures_core::Stream<Item = Result<Bytes>> + Send,
    {
        public(key)?;
        self.put_stream_object(key, content, opts).await
    }

    async fn put_stream_object<S>(
        &self,
        key: &BlobKey,
        content: S,
        opts: PutOptions,
    ) -> Result<BlobMeta>
    where
        S: futures_core::Stream<Item = Result<Bytes>> + Send,
    {
        use futures_util::StreamExt as _;
        let span = blob_span!(
            "larder.blob.put",
            "put_stream",
            self.backend.system(),
            key.top()
        );
        check_metadata(&opts)?;
        let mut meta = BlobMeta {
            key: key.as_str().to_owned(),
            size: 0,
            sha256: String::new(),
            content_type: opts.content_type,
            metadata: opts.metadata,
            created_micros: now_micros(),
        };
        let mut content = std::pin::pin!(content);
        let mut hasher = Sha256::new();
        if !self.backend.streams() {
            let mut buf = bytes::BytesMut::new();
            while let Some(chunk) = content.next().await {
                let chunk = chunk?;
                hasher.update(&chunk);
                buf.extend_from_slice(&chunk);
            }
            meta.size = buf.len() as u64;
            meta.sha256 = hex(&hasher.finalize());
            span.record("larder.blob.size", meta.size);
            let m = &meta;
            self.bounded("blob.put", span, async move {
                self.backend.put(key, buf.freeze(), m, opts.if_absent).await
            })
            .await?;
            return Ok(meta);
        }
        let s = span.clone();
        let mut writer = self
            .bounded(
                "blob.put",
                s.clone(),
                self.backend.put_writer(key, &meta, opts.if_absent),
            )
            .await?;
        let mut size = 0u64;
        while let Some(chunk) = content.next().await {
            let step = match chunk {
                Ok(chunk) => {
                    hasher.update(&chunk);
                    size += chunk.len() as u64;
                    self.bounded("blob.put", s.clone(), writer.write(chunk))
                        .await
                }
                Err(e) => Err(e),
            };
            if let Err(e) = step {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
        let mut done = meta.clone();
        done.size = size;
        done.sha256 = hex(&hasher.finalize());
        span.record("larder.blob.size", size);
        self.bounded("blob.put", span, writer.finish(&done)).await?;
        Ok(done)
    }

    /// Reads a blob (or `range` of it) as a stream of chunks, without holding it whole in
    /// memory on backends that stream ([`Error::NotFound`] if there is none). The deadline
    /// bounds opening the blob; reading the chunks is up to the caller.
    async fn get_stream_unaudited(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<(BlobMeta, ByteStream)> {
        public(key)?;
        self.get_stream_object(key, range)
            .await?
            .ok_or_else(|| not_found(key))
    }

    async fn get_stream_object(
        &self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<Option<(BlobMeta, ByteStream)>> {
        let span = blob_span!(
            "larder.blob.get",
            "get_stream",
            self.backend.system(),
            key.top()
        );
        if let Some(r) = &range
            && r.start > r.end
        {
            return Err(Error::InvalidRange(format!(
                "{}..{} is reversed",
                r.start, r.end
            )));
        }
        self.bounded("blob.get", span, async move {
            if self.backend.streams() {
                return self.backend.get_stream(key, range).await;
            }
            Ok(self.backend.get(key, range).await?.map(|b| {
                let one: ByteStream = Box::pin(futures_util::stream::once(std::future::ready(Ok(
                    b.content,
                ))));
                (b.meta, one)
            }))
        })
        .await
    }

    /// Reads a whole blob ([`Error::NotFound`] if there is none).
    async fn get_unaudited(&self, key: &BlobKey) -> Result<Blob> {
        let span = blob_span!("larder.blob.get", "get", self.backend.system(), key.top());
        public(key)?;
        let s = span.clone();
        self.bounded("blob.get", span, async move {
            let b = self
                .backend
                .get(key, None)
                .await?
                .ok_or_else(|| not_found(key))?;
            s.record("larder.blob.size", b.content.len() as u64);
            Ok(b)
        })
        .await
    }

    /// Reads `range` of a blob: `start..end` in bytes, `end` at most the size
    /// ([`Error::InvalidRange`] otherwise; an empty range is allowed).
    async fn get_range_unaudited(&self, key: &BlobKey, range: Range<u64>) -> Result<Blob> {
        let span = blob_span!(
            "larder.blob.get",
            "get_range",
            self.backend.system(),
            key.top()
        );
        public(key)?;
        if range.start > range.end {
            return Err(Error::InvalidRange(format!(
                "{}..{} is reversed",
                range.start, range.end
            )));
        }
        let s = span.clone();
        self.bounded("blob.get", span, async move {
            let b = self
                .backend
                .get(key, Some(range))
                .await?
                .ok_or_else(|| not_found(key))?;
            s.record("larder.blob.size", b.content.len() as u64);
            Ok(b)
        })
        .await
    }

    /// A blob's record, or `None`.
    async fn head_unaudited(&self, key: &BlobKey) -> Result<Option<BlobMeta>> {
        let span = blob_span!("larder.blob.head", "head", self.backend.system(), key.top());
        public(key)?;
        self.bounded("blob.head", span, self.backend.head(key))
            .await
    }

    /// Records of the blobs whose key starts with `prefix`, after `after`, at most `limit`
    /// (1 to 1,000) per page.
    async fn list_unaudited(
        &self,
        prefix: &str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<BlobPage> {
        let span = blob_span!("larder.blob.list", "list", self.backend.system(), prefix);
        if !(1..=1000).contains(&limit) {
            return Err(Error::InvalidQuery(format!(
                "a blob page holds 1 to 1,000 records, not {limit}"
            )));
        }
        if prefix.chars().any(char::is_control)
            || prefix.starts_with('/')
            || prefix.starts_with(RESERVED_PREFIX)
        {
            return Err(Error::InvalidQuery(
                "a blob prefix is relative, has no control characters and does not start with `.larder`".into(),
            ));
        }
        self.bounded("blob.list", span, async move {
            let blobs = self.backend.list(prefix, after, limit).await?;
            let next = if blobs.len() == limit {
                blobs
                    .last()
                    .map(|m| BlobKey::new(m.key.clone()))
                    .transpose()?
            } else {
                None
            };
            Ok(BlobPage { blobs, next })
        })
        .await
    }

    /// Deletes a blob; returns whether it existed.
    async fn delete_unaudited(&self, key: &BlobKey) -> Result<bool> {
        let span = blob_span!(
            "larder.blob.delete",
            "delete",
            self.backend.system(),
            key.top()
        );
        public(key)?;
        self.bounded("blob.delete", span, self.backend.delete(key))
            .await
    }

    /// Copies a blob to `to` (overwriting it), with its content type and metadata.
    async fn copy_unaudited(&self, from: &BlobKey, to: &BlobKey) -> Result<BlobMeta> {
        let span = blob_span!("larder.blob.copy", "copy", self.backend.system(), to.top());
        public(from)?;
        public(to)?;
        self.bounded("blob.copy", span, async move {
            let b = self
                .backend
                .get(from, None)
                .await?
                .ok_or_else(|| not_found(from))?;
            let meta = BlobMeta {
                key: to.as_str().to_owned(),
                created_micros: now_micros(),
                ..b.meta
            };
            self.backend.put(to, b.content, &meta, false).await?;
            Ok(meta)
        })
        .await
    }
}

// The calls `Attachments` makes on managed objects: the same span, deadline and record as
// the public calls, without the reserved-key check.
impl Blobs {
    fn describe(key: &BlobKey, content: &[u8], opts: PutOptions) -> Result<BlobMeta> {
        check_metadata(&opts)?;
        Ok(BlobMeta {
            key: key.as_str().to_owned(),
            size: content.len() as u64,
            sha256: sha256_hex(content),
            content_type: opts.content_type,
            metadata: opts.metadata,
            created_micros: now_micros(),
        })
    }

    async fn put_object(
        &self,
        object: &BlobKey,
        content: Bytes,
        meta: &BlobMeta,
        if_absent: bool,
    ) -> Result<()> {
        let span = blob_span!(
            "larder.blob.put",
            "put",
            self.backend.system(),
            object.top()
        );
        span.record("larder.blob.size", content.len() as u64);
        self.bounded(
            "blob.put",
            span,
            self.backend.put(object, content, meta, if_absent),
        )
        .await
    }

    async fn get_object(
        &self,
        object: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<Option<Blob>> {
        let span = blob_span!(
            "larder.blob.get",
            "get",
            self.backend.system(),
            object.top()
        );
        let s = span.clone();
        self.bounded("blob.get", span, async move {
            let b = self.backend.get(object, range).await?;
            if let Some(b) = &b {
                s.record("larder.blob.size", b.content.len() as u64);
            }
            Ok(b)
        })
        .await
    }

    async fn delete_object(&self, object: &BlobKey) -> Result<bool> {
        let span = blob_span!(
            "larder.blob.delete",
            "delete",
            self.backend.system(),
            object.top()
        );
        self.bounded("blob.delete", span, self.backend.delete(object))
            .await
    }

    async fn list_objects(
        &self,
        prefix: &'static str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<Vec<BlobMeta>> {
        let span = blob_span!("larder.blob.list", "list", self.backend.system(), prefix);
        self.bounded("blob.list", span, self.backend.list(prefix, after, limit))
            .await
    }
}

/// Callers' keys leave larder's managed objects alone ([`Blobs`]' and
/// [`Attachments`]' own calls).
fn public(key: &BlobKey) -> Result<()> {
    if key.is_reserved() {
        return Err(Error::InvalidBlobKey {
            key: key.as_str().chars().take(200).collect(),
            reason: "is in larder's managed area",
        });
    }
    Ok(())
}

fn not_found(key: &BlobKey) -> Error {
    Error::NotFound {
        entity: "blob",
        id: key.as_str().to_owned(),
    }
}

/// Refuses a range that is reversed or ends past `size` (every backend's rule; an empty
/// range inside the blob is allowed).
pub fn check_range(r: &Range<u64>, size: u64) -> Result<()> {
    if r.end > size || r.start > r.end {
        return Err(Error::InvalidRange(format!(
            "{}..{} is outside the blob's {size} bytes",
            r.start, r.end
        )));
    }
    Ok(())
}

/// Cuts `range` out of `content` (backends that hold whole blobs), refusing a range past
/// the end.
pub(crate) fn slice(content: &Bytes, range: Option<Range<u64>>) -> Result<Bytes> {
    let Some(r) = range else {
        return Ok(content.clone());
    };
    check_range(&r, content.len() as u64)?;
    let (s, e) = (
        usize::try_from(r.start).unwrap_or(usize::MAX),
        usize::try_from(r.end).unwrap_or(usize::MAX),
    );
    Ok(content.slice(s..e))
}
