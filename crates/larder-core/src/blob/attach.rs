//! Blobs coordinated with the unit of work (STORES.md, category 3): a committed reference
//! always points at a complete object, and what no committed reference holds is swept.
//!
//! How (see [`BlobRefTransaction`] for the SQL side):
//! 1. **stage** uploads the content under a fresh managed name (`.larder-objects/<uuid>`,
//!    or `.larder-cas/<sha256>` in content-addressed mode) *before* anything is recorded,
//!    then, in the caller's transaction, takes a reference on the object (its row locked
//!    until commit) and points the key at it;
//! 2. **commit** makes the new reference live: the key resolves through its row, so there
//!    is no copy or rename to do, and nothing to lose between commit and a rename;
//! 3. **rollback** (explicit, on error, on drop) deletes the staged upload right away;
//!    a crash, or a savepoint that rolls back, leaves it for the sweep;
//! 4. **delete** (and overwrite) drops the reference in the transaction; the object is
//!    deleted after commit, once no reference holds it;
//! 5. the **sweep** claims objects no reference holds (older than a grace period, so
//!    uploads on their way to being recorded are left alone), deletes them, then forgets
//!    them. A claimed object is never referenced again (a stage that finds its upload
//!    claimed fails with [`Error::BlobSwept`] and records nothing), and a stage checks its
//!    object is still there after taking the reference, so no interleaving of stage, sweep
//!    and crash leaves a committed reference without its object.

use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use uuid::Uuid;

use super::refs::BlobRef;
use super::{Blob, BlobKey, BlobMeta, BlobPage, Blobs, MANAGED_PREFIXES, PutOptions};
use crate::error::{Error, Result};
use crate::events::now_micros;
use crate::uow::{Store, Uow, storage_span};

const TABLE: &str = "_larder_blob_refs";
const OBJECTS: &str = ".larder-objects/";
const CAS: &str = ".larder-cas/";
/// Objects claimed per sweep transaction.
const SWEEP_BATCH: usize = 100;

/// What a store keeps about its attachments (held by the store, so `uow.blobs()` finds
/// it; the store itself is not held, so there is no cycle).
#[derive(Debug)]
pub(crate) struct AttachCore {
    blobs: Blobs,
    content_addressed: bool,
    cleanups: Cleanups,
}

/// Background deletions after commit or rollback, counted so that tests and shutdown can
/// wait for them ([`Attachments::settled`]).
#[derive(Debug, Default)]
struct Cleanups {
    running: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// Configures [`Attachments`].
#[derive(Debug)]
pub struct AttachmentsBuilder {
    store: Store,
    blobs: Blobs,
    content_addressed: bool,
    prepare: bool,
}

impl AttachmentsBuilder {
    /// Content-addressed mode: an object is named by the SHA-256 of its content, so
    /// identical content staged under many keys (or many times) is stored once; the object
    /// is deleted when its last reference goes. Off by default (one object per stage).
    #[must_use]
    pub fn content_addressed(mut self, yes: bool) -> Self {
        self.content_addressed = yes;
        self
    }

    /// Whether [`AttachmentsBuilder::open`] makes larder's tables ready (default `true`;
    /// turn it off when migrations are applied by `larder migrate` only).
    #[must_use]
    pub fn prepare(mut self, yes: bool) -> Self {
        self.prepare = yes;
        self
    }

    /// Opens the attachments and makes them the store's (`uow.blobs()`), unless the store
    /// has some already (then `uow.blobs()` keeps using the first; the returned handle
    /// always uses these).
    pub async fn open(self) -> Result<Attachments> {
        if self.prepare {
            let span = tracing::info_span!(
                "larder.blob.prepare",
                db.system.name = self.store.backend_name(),
                db.operation.name = "prepare",
            );
            use tracing::Instrument;
            self.store
                .backend()
                .prepare_events()
                .instrument(span)
                .await?;
        }
        let core = Arc::new(AttachCore {
            blobs: self.blobs,
            content_addressed: self.content_addressed,
            cleanups: Cleanups::default(),
        });
        // `uow.blobs()` uses the first attachments opened on the store; these ones are
        // used as configured through the returned handle either way.
        self.store.attach_blobs(core.clone());
        Ok(Attachments {
            core,
            store: self.store,
        })
    }
}

/// Blobs whose references live in SQL, in the unit of work: cheap to clone.
///
/// The references of every `Attachments` opened on one store share one table, so one key
/// space: give each blob store its own key prefix (`invoices/…` on S3, `avatars/…` on
/// the filesystem) and read a key through the handle that staged it.
///
/// ```
/// use larder_core::blob::{Attachments, BlobKey, Blobs, PutOptions};
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> larder_core::Result<()> {
/// let store = larder_core::Store::memory();
/// let attachments = Attachments::open(&store, Blobs::memory()).await?;
/// let key = BlobKey::new("invoices/inv-1.pdf")?;
///
/// let mut uow = store.begin().await?;
/// uow.blobs()?.stage(&key, b"%PDF-1.7".to_vec(), PutOptions::new()).await?;
/// uow.commit().await?;
///
/// let mut uow = store.read().await?;
/// assert_eq!(&uow.blobs()?.get(&key).await?.content[..], b"%PDF-1.7");
/// drop(uow);
///
/// let mut uow = store.begin().await?;
/// uow.blobs()?.stage(&BlobKey::new("tmp/x")?, b"x".to_vec(), PutOptions::new()).await?;
/// uow.rollback().await?; // the upload is deleted
/// # attachments.settled().await;
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct Attachments {
    core: Arc<AttachCore>,
    store: Store,
}

/// An upload not yet recorded ([`Attachments::upload`]); hand it to
/// [`Attachments::attach`]. One that is never attached is swept.
#[derive(Debug, Clone)]
#[must_use = "an upload that is never attached is garbage for the sweep"]
pub struct Staged {
    key: BlobKey,
    object: BlobKey,
    meta: BlobMeta,
}

impl Staged {
    /// What will be recorded.
    pub fn meta(&self) -> &BlobMeta {
        &self.meta
    }
}

/// Options of [`Attachments::sweep`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct SweepOptions {
    /// Objects younger than this are left alone (default one hour): an upload on its way
    /// to being recorded must not be swept. A stage that takes longer fails with
    /// [`Error::BlobSwept`] instead of recording a reference to a deleted object.
    pub grace: Duration,
    /// Report what would be deleted, delete nothing.
    pub dry_run: bool,
}

impl Default for SweepOptions {
    fn default() -> Self {
        SweepOptions {
            grace: Duration::from_secs(3600),
            dry_run: false,
        }
    }
}

impl SweepOptions {
    /// Sets the grace period.
    #[must_use]
    pub fn grace(mut self, d: Duration) -> Self {
        self.grace = d;
        self
    }

    /// Sets dry-run mode.
    #[must_use]
    pub fn dry_run(mut self, yes: bool) -> Self {
        self.dry_run = yes;
        self
    }
}

/// What a sweep found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct SweepReport {
    /// Managed objects looked at.
    pub scanned: u64,
    /// Objects deleted (in a dry run: that would be).
    pub swept: u64,
    /// Their bytes, as far as the store reported them.
    pub bytes: u64,
    /// Objects a reference holds, or younger than the grace period.
    pub kept: u64,
    /// Records of unreferenced objects that were gone from the store already (a deletion
    /// cut short, a stage that failed after taking its reference), forgotten.
    pub stale_records: u64,
    /// Whether nothing was deleted.
    pub dry_run: bool,
}

/// References and bytes under a prefix ([`Attachments::usage`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct BlobUsage {
    /// Live references.
    pub blobs: u64,
    /// Their total size.
    pub bytes: u64,
}

macro_rules! att_span {
    ($uow:expr, $name:literal, $op:literal, $key:expr) => {
        storage_span!(
            &*$uow,
            $name,
            $op,
            TABLE,
            tracing::field::Empty,
            larder.blob.prefix = $key,
            larder.blob.size = tracing::field::Empty,
        )
    };
}

macro_rules! run {
    ($uow:expr, $span:expr, $op:literal, |$tx:ident| $call:expr) => {{
        let deadline = $uow.deadline();
        $uow.call_blob_refs($op, deadline, &$span, |$tx| Box::pin($call))
            .await
    }};
}

impl Attachments {
    /// Opens attachments of `store` kept in `blobs` (one object per stage), making
    /// larder's tables ready.
    pub async fn open(store: &Store, blobs: Blobs) -> Result<Attachments> {
        Attachments::builder(store, blobs).open().await
    }

    /// Configures attachments of `store` kept in `blobs`.
    pub fn builder(store: &Store, blobs: Blobs) -> AttachmentsBuilder {
        AttachmentsBuilder {
            store: store.clone(),
            blobs,
            content_addressed: false,
            prepare: true,
        }
    }

    pub(crate) fn from_core(core: Arc<AttachCore>, store: Store) -> Attachments {
        Attachments { core, store }
    }

    /// The blob store objects are kept in.
    pub fn blobs(&self) -> &Blobs {
        &self.core.blobs
    }

    /// The SQL store references are kept in.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether identical content is stored once.
    pub fn is_content_addressed(&self) -> bool {
        self.core.content_addressed
    }

    fn object_for(&self, meta: &BlobMeta) -> Result<BlobKey> {
        if self.core.content_addressed {
            BlobKey::managed(format!("{CAS}{}", meta.sha256))
        } else {
            BlobKey::managed(format!("{OBJECTS}{}", Uuid::now_v7().simple()))
        }
    }

    /// Uploads `content` for `key` without recording it (no unit of work is open during
    /// the upload: on SQLite, whose one writer would wait for it, upload first and
    /// [`attach`](Attachments::attach) in a short unit of work).
    pub async fn upload(
        &self,
        key: &BlobKey,
        content: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<Staged> {
        super::public(key)?;
        let content: Bytes = content.into();
        let meta = Blobs::describe(key, &content, opts)?;
        let object = self.object_for(&meta)?;
        self.put_staged(key, content, meta, object).await
    }

    /// [`upload`](Attachments::upload) from a stream of chunks, without holding the whole
    /// content in memory ([`Blobs::put_stream`]). Streamed content always gets a fresh
    /// object, also in content-addressed mode (its hash is known only at the end).
    pub async fn upload_stream<S>(
        &self,
        key: &BlobKey,
        content: S,
        opts: PutOptions,
    ) -> Result<Staged>
    where
        S: futures_core::Stream<Item = Result<Bytes>> + Send,
    {
        super::public(key)?;
        let object = BlobKey::managed(format!("{OBJECTS}{}", Uuid::now_v7().simple()))?;
        // The fresh name is unique: no conditional put needed (object stores cannot make
        // a multipart upload conditional).
        let opts = PutOptions {
            if_absent: false,
            ..opts
        };
        let mut meta = self
            .core
            .blobs
            .put_stream_object(&object, content, opts)
            .await?;
        key.as_str().clone_into(&mut meta.key);
        Ok(Staged {
            key: key.clone(),
            object,
            meta,
        })
    }

    /// [`stage`](Attachments::stage) from a stream of chunks (see
    /// [`upload_stream`](Attachments::upload_stream)).
    pub async fn stage_stream<S>(
        &self,
        uow: &mut Uow,
        key: &BlobKey,
        content: S,
        opts: PutOptions,
    ) -> Result<BlobMeta>
    where
        S: futures_core::Stream<Item = Result<Bytes>> + Send,
    {
        if uow.is_read_only() {
            return Err(Error::ReadOnly {
                operation: "blob.stage",
            });
        }
        let if_absent = opts.if_absent;
        let staged = self.upload_stream(key, content, opts).await?;
        self.attach_with(uow, staged, if_absent).await
    }

    async fn put_staged(
        &self,
        key: &BlobKey,
        content: Bytes,
        meta: BlobMeta,
        object: BlobKey,
    ) -> Result<Staged> {
        let stored = BlobMeta {
            key: object.as_str().to_owned(),
            ..meta.clone()
        };
        // A fresh name is never taken; a content-addressed one holds the same bytes.
        let fresh = object.as_str().starts_with(OBJECTS);
        self.core
            .blobs
            .put_object(&object, content, &stored, fresh)
            .await?;
        Ok(Staged {
            key: key.clone(),
            object,
            meta,
        })
    }

    /// Stages `content` as `key` in `uow`: uploaded now, recorded in the transaction, live
    /// when it commits, deleted if it rolls back. Replaces what `key` held (deleted after
    /// commit) unless `opts` says [`if_absent`](PutOptions::if_absent)
    /// ([`Error::AlreadyExists`] then, nothing recorded).
    pub async fn stage(
        &self,
        uow: &mut Uow,
        key: &BlobKey,
        content: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<BlobMeta> {
        if uow.is_read_only() {
            return Err(Error::ReadOnly {
                operation: "blob.stage",
            });
        }
        super::public(key)?;
        let content: Bytes = content.into();
        let if_absent = opts.if_absent;
        let meta = Blobs::describe(key, &content, opts)?;
        if self.core.content_addressed {
            let staged = Staged {
                key: key.clone(),
                object: self.object_for(&meta)?,
                meta: meta.clone(),
            };
            // Identical content already stored: take a reference, upload nothing.
            if let Some(meta) = self.link(uow, &staged, false, if_absent).await? {
                return Ok(meta);
            }
            let staged = self
                .put_staged(key, content.clone(), meta.clone(), staged.object)
                .await?;
            match self.link(uow, &staged, true, if_absent).await {
                Ok(Some(meta)) => return Ok(meta),
                // The object's last reference just went and it is being deleted: store
                // this content under a fresh name instead (correct, only not shared).
                Ok(None) | Err(Error::BlobSwept { .. }) => {}
                Err(e) => {
                    self.discard(&staged);
                    return Err(e);
                }
            }
        }
        let object = BlobKey::managed(format!("{OBJECTS}{}", Uuid::now_v7().simple()))?;
        let staged = self.put_staged(key, content, meta, object).await?;
        self.attach_with(uow, staged, if_absent).await
    }

    /// Records an [`upload`](Attachments::upload) as its key in `uow` (see
    /// [`stage`](Attachments::stage); overwrites what the key held).
    pub async fn attach(&self, uow: &mut Uow, staged: Staged) -> Result<BlobMeta> {
        self.attach_with(uow, staged, false).await
    }

    /// [`attach`](Attachments::attach), failing with [`Error::AlreadyExists`] when the
    /// key holds a blob.
    pub async fn attach_new(&self, uow: &mut Uow, staged: Staged) -> Result<BlobMeta> {
        self.attach_with(uow, staged, true).await
    }

    async fn attach_with(
        &self,
        uow: &mut Uow,
        staged: Staged,
        if_absent: bool,
    ) -> Result<BlobMeta> {
        match self.link(uow, &staged, true, if_absent).await {
            Ok(Some(meta)) => Ok(meta),
            Ok(None) => Err(Error::BlobSwept {
                key: staged.key.as_str().to_owned(),
            }),
            Err(e) => {
                // Not recorded: the upload is garbage (a content-addressed object is
                // deleted only if nothing else holds it).
                self.discard(&staged);
                Err(e)
            }
        }
    }

    /// In `uow`: takes a reference on the staged object (creating its row when `create`),
    /// checks that the object is there, points the key at it and drops the reference of
    /// what the key held. `Ok(None)`: the object has no row (`create` off) or the sweep
    /// claimed it; nothing changed.
    async fn link(
        &self,
        uow: &mut Uow,
        staged: &Staged,
        create: bool,
        if_absent: bool,
    ) -> Result<Option<BlobMeta>> {
        let span = att_span!(uow, "larder.blob.stage", "stage", staged.key.top());
        span.record("larder.blob.size", staged.meta.size);
        if uow.is_read_only() {
            let e = Error::ReadOnly {
                operation: "blob.stage",
            };
            uow.record_failure(&span, "blob.stage", Some(TABLE), None, &e);
            return Err(e);
        }
        let r = BlobRef::new(staged.key.as_str(), staged.object.as_str(), &staged.meta);
        let (rr, object) = (&r, &staged.object);
        let backend = self.core.blobs.backend().clone();
        let created = create.then(|| (staged.meta.size, now_micros()));
        let key = staged.key.as_str().to_owned();
        let result = run!(uow, span, "blob.stage", |tx| async move {
            let name = object.as_str();
            let Some(refs) = tx.acquire(name, created).await? else {
                return Ok(None);
            };
            // The reference holds the object's row now: if the sweep deleted the object
            // before that, it must not be recorded.
            let present = if refs == 1 {
                backend.head(object).await.map(|m| m.is_some())
            } else {
                Ok(true)
            };
            let linked = match present {
                Ok(true) => tx.put_ref(rr, !if_absent).await,
                Ok(false) => Err(Error::BlobSwept { key }),
                Err(e) => Err(e),
            };
            match linked {
                Ok(before) => {
                    if let Some(old) = &before {
                        // The same object staged again drops the reference just taken.
                        tx.release(old).await?;
                    }
                    Ok(Some(before))
                }
                Err(e) => {
                    // Leave the row as it was, so the unit of work may still commit.
                    let _ = tx.release(name).await;
                    Err(e)
                }
            }
        });
        uow.finish_op(&span, "blob.stage", Some(TABLE), None, &result, |r| {
            u64::from(r.is_some())
        });
        let Some(before) = result? else {
            return Ok(None);
        };
        if let Some(old) = before
            && old != r.object
        {
            let me = self.clone();
            uow.on_post_commit(move || me.spawn_collect(old));
        }
        let me = self.clone();
        let s = staged.clone();
        uow.on_post_rollback(move || me.discard(&s));
        Ok(Some(staged.meta.clone()))
    }

    /// The reference of `key` in `uow`.
    pub async fn head(&self, uow: &mut Uow, key: &BlobKey) -> Result<Option<BlobMeta>> {
        Ok(self.reference(uow, key).await?.map(|r| r.meta()))
    }

    /// The stored reference of `key` in `uow`, with the name of the object it points at
    /// (operations and checks; [`head`](Attachments::head) is the caller's view).
    pub async fn reference(&self, uow: &mut Uow, key: &BlobKey) -> Result<Option<BlobRef>> {
        super::public(key)?;
        let span = att_span!(uow, "larder.blob.head", "head", key.top());
        let k = key.as_str();
        let r = run!(uow, span, "blob.head", |tx| tx.get_ref(k));
        uow.finish_op(&span, "blob.head", Some(TABLE), None, &r, |r| {
            u64::from(r.is_some())
        });
        r
    }

    /// Reads `key` as `uow` sees it ([`Error::NotFound`] when it has no reference).
    pub async fn get(&self, uow: &mut Uow, key: &BlobKey) -> Result<Blob> {
        self.read(uow, key, None).await
    }

    /// Reads `range` of `key` as `uow` sees it.
    pub async fn get_range(&self, uow: &mut Uow, key: &BlobKey, range: Range<u64>) -> Result<Blob> {
        self.read(uow, key, Some(range)).await
    }

    async fn read(&self, uow: &mut Uow, key: &BlobKey, range: Option<Range<u64>>) -> Result<Blob> {
        super::public(key)?;
        if let Some(r) = &range
            && r.start > r.end
        {
            return Err(Error::InvalidRange(format!(
                "{}..{} is reversed",
                r.start, r.end
            )));
        }
        let span = att_span!(uow, "larder.blob.get", "get", key.top());
        let k = key.as_str();
        let r = run!(uow, span, "blob.get", |tx| tx.get_ref(k));
        uow.finish_op(&span, "blob.get", Some(TABLE), None, &r, |r| {
            u64::from(r.is_some())
        });
        let r = r?.ok_or_else(|| super::not_found(key))?;
        let object = BlobKey::managed(r.object.clone())?;
        let blob = self
            .core
            .blobs
            .get_object(&object, range)
            .await?
            .ok_or_else(|| Error::BlobMissing {
                key: r.key.clone(),
                object: r.object.clone(),
            })?;
        span.record("larder.blob.size", blob.content.len() as u64);
        Ok(Blob::new(r.meta(), blob.content))
    }

    /// Reads `key` (or `range` of it) as `uow` sees it, as a stream of chunks
    /// ([`Blobs::get_stream`]).
    pub async fn get_stream(
        &self,
        uow: &mut Uow,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<(BlobMeta, super::ByteStream)> {
        let r = self
            .reference(uow, key)
            .await?
            .ok_or_else(|| super::not_found(key))?;
        let object = BlobKey::managed(r.object.clone())?;
        let (_, stream) = self
            .core
            .blobs
            .get_stream_object(&object, range)
            .await?
            .ok_or_else(|| Error::BlobMissing {
                key: r.key.clone(),
                object: r.object.clone(),
            })?;
        Ok((r.meta(), stream))
    }

    /// References whose key starts with `prefix`, after `after`, at most `limit` (1 to
    /// 1,000), in key order.
    pub async fn list(
        &self,
        uow: &mut Uow,
        prefix: &str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<BlobPage> {
        if !(1..=1000).contains(&limit) {
            return Err(Error::InvalidQuery(format!(
                "a blob page holds 1 to 1,000 records, not {limit}"
            )));
        }
        if prefix.chars().any(char::is_control) || prefix.starts_with('/') {
            return Err(Error::InvalidQuery(
                "a blob prefix is relative and has no control characters".into(),
            ));
        }
        let span = att_span!(uow, "larder.blob.list", "list", prefix);
        let a = after.map(BlobKey::as_str);
        let lim = u32::try_from(limit).unwrap_or(1000);
        let r = run!(uow, span, "blob.list", |tx| tx.list_refs(prefix, a, lim));
        uow.finish_op(&span, "blob.list", Some(TABLE), None, &r, |r| {
            r.len() as u64
        });
        let blobs: Vec<BlobMeta> = r?.iter().map(BlobRef::meta).collect();
        let next = if blobs.len() == limit {
            blobs
                .last()
                .map(|m| BlobKey::new(m.key.clone()))
                .transpose()?
        } else {
            None
        };
        Ok(BlobPage { blobs, next })
    }

    /// Live references and their bytes under `prefix`.
    pub async fn usage(&self, uow: &mut Uow, prefix: &str) -> Result<BlobUsage> {
        let span = att_span!(uow, "larder.blob.usage", "usage", prefix);
        let r = run!(uow, span, "blob.usage", |tx| tx.usage(prefix));
        uow.finish_op(&span, "blob.usage", Some(TABLE), None, &r, |_| 1);
        let (blobs, bytes) = r?;
        Ok(BlobUsage { blobs, bytes })
    }

    /// Deletes `key` in `uow`: the reference goes with the transaction, the object after
    /// commit. Returns whether the key had a blob.
    ///
    /// A reader whose unit of work still sees the old reference (a snapshot taken before
    /// the delete committed: SQLite read transactions, PostgreSQL `REPEATABLE READ`) may
    /// find the object gone ([`Error::BlobMissing`]); read blobs in short units of work.
    pub async fn delete(&self, uow: &mut Uow, key: &BlobKey) -> Result<bool> {
        super::public(key)?;
        if uow.is_read_only() {
            return Err(Error::ReadOnly {
                operation: "blob.delete",
            });
        }
        let span = att_span!(uow, "larder.blob.delete", "delete", key.top());
        let k = key.as_str();
        let r = run!(uow, span, "blob.delete", |tx| async move {
            let before = tx.delete_ref(k).await?;
            if let Some(o) = &before {
                tx.release(o).await?;
            }
            Ok(before)
        });
        uow.finish_op(&span, "blob.delete", Some(TABLE), None, &r, |r| {
            u64::from(r.is_some())
        });
        match r? {
            Some(old) => {
                let me = self.clone();
                uow.on_post_commit(move || me.spawn_collect(old));
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// Waits until the deletions started after commits and rollbacks have finished.
    pub async fn settled(&self) {
        loop {
            let idle = self.core.cleanups.idle.notified();
            if self.core.cleanups.running.load(Ordering::Acquire) == 0 {
                return;
            }
            idle.await;
        }
    }

    fn spawn(&self, f: impl std::future::Future<Output = ()> + Send + 'static) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            // No runtime (a unit of work dropped outside one): the sweep gets it.
            return;
        };
        let core = self.core.clone();
        core.cleanups.running.fetch_add(1, Ordering::AcqRel);
        rt.spawn(async move {
            f.await;
            if core.cleanups.running.fetch_sub(1, Ordering::AcqRel) == 1 {
                core.cleanups.idle.notify_waiters();
            }
        });
    }

    /// Deletes an upload that will not be recorded (a fresh name only this unit of work
    /// knows: deleted at once; a content-addressed object only if nothing holds it).
    fn discard(&self, staged: &Staged) {
        let me = self.clone();
        let object = staged.object.clone();
        self.spawn(async move {
            let r = if object.as_str().starts_with(CAS) {
                me.collect(object.as_str()).await.map(|_| ())
            } else {
                me.core.blobs.delete_object(&object).await.map(|_| ())
            };
            if let Err(e) = r {
                tracing::warn!(object = object.as_str(), error = %e, "could not delete a blob upload that was not recorded; the sweep will");
            }
        });
    }

    fn spawn_collect(&self, object: String) {
        let me = self.clone();
        self.spawn(async move {
            if let Err(e) = me.collect(&object).await {
                tracing::warn!(object = object.as_str(), error = %e, "could not delete a blob object after commit; the sweep will");
            }
        });
    }

    /// Claims, deletes and forgets `object` if no reference holds it; returns whether it
    /// did.
    async fn collect(&self, object: &str) -> Result<bool> {
        let claimed = self.claim_all(&[object.to_owned()], false).await?;
        if claimed.is_empty() {
            return Ok(false);
        }
        self.delete_claimed(&claimed).await?;
        Ok(true)
    }

    /// Claims what it can of `objects` in one transaction (rolled back in a dry run).
    async fn claim_all(&self, objects: &[String], dry_run: bool) -> Result<Vec<String>> {
        let mut uow = self.store.begin().await?;
        let span = att_span!(&uow, "larder.blob.claim", "claim", tracing::field::Empty);
        let now = now_micros();
        let r = run!(uow, span, "blob.claim", |tx| async move {
            let mut claimed = Vec::new();
            for o in objects {
                if tx.claim(o, now).await? {
                    claimed.push(o.clone());
                }
            }
            Ok(claimed)
        });
        uow.finish_op(&span, "blob.claim", Some(TABLE), None, &r, |r| {
            r.len() as u64
        });
        let claimed = r?;
        if dry_run {
            uow.rollback().await?;
        } else {
            uow.commit().await?;
        }
        Ok(claimed)
    }

    async fn delete_claimed(&self, claimed: &[String]) -> Result<()> {
        for o in claimed {
            self.core
                .blobs
                .delete_object(&BlobKey::managed(o.clone())?)
                .await?;
        }
        let mut uow = self.store.begin().await?;
        let span = att_span!(&uow, "larder.blob.forget", "forget", tracing::field::Empty);
        let r = run!(uow, span, "blob.forget", |tx| async move {
            for o in claimed {
                tx.forget(o).await?;
            }
            Ok(())
        });
        uow.finish_op(&span, "blob.forget", Some(TABLE), None, &r, |()| {
            claimed.len() as u64
        });
        r?;
        uow.commit().await?;
        Ok(())
    }

    /// Deletes managed objects no committed reference holds (older than the grace period),
    /// and the records of objects already gone. Safe to run at any time, from any number
    /// of processes, beside any number of writers.
    pub async fn sweep(&self, opts: SweepOptions) -> Result<SweepReport> {
        let cutoff =
            now_micros().saturating_sub(i64::try_from(opts.grace.as_micros()).unwrap_or(i64::MAX));
        let mut report = SweepReport {
            dry_run: opts.dry_run,
            ..SweepReport::default()
        };
        // Objects the store listed (name → size), and every candidate.
        let mut listed: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
        let mut candidates_set: std::collections::BTreeSet<String> =
            std::collections::BTreeSet::new();
        for prefix in MANAGED_PREFIXES {
            let mut after: Option<BlobKey> = None;
            loop {
                let page = self
                    .core
                    .blobs
                    .list_objects(prefix, after.as_ref(), 1000)
                    .await?;
                let full = page.len() == 1000;
                for m in &page {
                    report.scanned += 1;
                    if m.created_micros < cutoff {
                        listed.insert(m.key.clone(), m.size);
                        candidates_set.insert(m.key.clone());
                    } else {
                        report.kept += 1;
                    }
                }
                match page.last() {
                    Some(m) if full => after = Some(BlobKey::managed(m.key.clone())?),
                    _ => break,
                }
            }
        }
        // Records whose object is gone already (a deletion cut short by a crash).
        {
            let mut uow = self.store.read().await?;
            let span = att_span!(
                &uow,
                "larder.blob.unreferenced",
                "unreferenced",
                tracing::field::Empty
            );
            let r = run!(uow, span, "blob.unreferenced", |tx| tx
                .unreferenced(cutoff, 10_000));
            uow.finish_op(&span, "blob.unreferenced", Some(TABLE), None, &r, |r| {
                r.len() as u64
            });
            candidates_set.extend(r?);
        }
        let candidates: Vec<String> = candidates_set.into_iter().collect();
        for chunk in candidates.chunks(SWEEP_BATCH) {
            let claimed = self.claim_all(chunk, opts.dry_run).await?;
            report.kept += (chunk.len() - claimed.len()) as u64;
            for o in &claimed {
                // Only objects the store listed count; the rest are records of objects
                // gone already.
                match listed.get(o) {
                    Some(size) => {
                        report.swept += 1;
                        report.bytes += size;
                    }
                    None => report.stale_records += 1,
                }
            }
            if !opts.dry_run && !claimed.is_empty() {
                self.delete_claimed(&claimed).await?;
            }
        }
        tracing::info!(
            target: "larder::blob",
            scanned = report.scanned,
            swept = report.swept,
            bytes = report.bytes,
            dry_run = report.dry_run,
            "blob sweep"
        );
        Ok(report)
    }

    /// Sweeps every `every` until `shutdown` resolves (errors are logged and the next
    /// round tries again).
    pub async fn sweep_every(
        &self,
        every: Duration,
        opts: SweepOptions,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) {
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            if let Err(e) = self.sweep(opts.clone()).await {
                tracing::warn!(target: "larder::blob", error = %e, "blob sweep failed; retrying next round");
            }
            tokio::select! {
                () = &mut shutdown => return,
                () = tokio::time::sleep(every) => {}
            }
        }
    }
}

/// The store's attachments inside one unit of work ([`Uow::blobs`]).
#[derive(Debug)]
pub struct UowBlobs<'u> {
    uow: &'u mut Uow,
    att: Attachments,
}

impl<'u> UowBlobs<'u> {
    pub(crate) fn new(uow: &'u mut Uow, att: Attachments) -> Self {
        UowBlobs { uow, att }
    }

    /// [`Attachments::stage`].
    pub async fn stage(
        &mut self,
        key: &BlobKey,
        content: impl Into<Bytes>,
        opts: PutOptions,
    ) -> Result<BlobMeta> {
        self.att.stage(self.uow, key, content, opts).await
    }

    /// [`Attachments::attach`].
    pub async fn attach(&mut self, staged: Staged) -> Result<BlobMeta> {
        self.att.attach(self.uow, staged).await
    }

    /// [`Attachments::stage_stream`].
    pub async fn stage_stream<S>(
        &mut self,
        key: &BlobKey,
        content: S,
        opts: PutOptions,
    ) -> Result<BlobMeta>
    where
        S: futures_core::Stream<Item = Result<Bytes>> + Send,
    {
        self.att.stage_stream(self.uow, key, content, opts).await
    }

    /// [`Attachments::get_stream`].
    pub async fn get_stream(
        &mut self,
        key: &BlobKey,
        range: Option<Range<u64>>,
    ) -> Result<(BlobMeta, super::ByteStream)> {
        self.att.get_stream(self.uow, key, range).await
    }

    /// [`Attachments::get`].
    pub async fn get(&mut self, key: &BlobKey) -> Result<Blob> {
        self.att.get(self.uow, key).await
    }

    /// [`Attachments::get_range`].
    pub async fn get_range(&mut self, key: &BlobKey, range: Range<u64>) -> Result<Blob> {
        self.att.get_range(self.uow, key, range).await
    }

    /// [`Attachments::head`].
    pub async fn head(&mut self, key: &BlobKey) -> Result<Option<BlobMeta>> {
        self.att.head(self.uow, key).await
    }

    /// [`Attachments::list`].
    pub async fn list(
        &mut self,
        prefix: &str,
        after: Option<&BlobKey>,
        limit: usize,
    ) -> Result<BlobPage> {
        self.att.list(self.uow, prefix, after, limit).await
    }

    /// [`Attachments::delete`].
    pub async fn delete(&mut self, key: &BlobKey) -> Result<bool> {
        self.att.delete(self.uow, key).await
    }
}
