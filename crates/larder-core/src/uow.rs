//! The store and the unit of work.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tracing::Instrument;

use crate::audit::{AuditRecord, AuditSink};
use crate::backend::{Backend, BeginOptions, BoxFuture, Capabilities, Transaction};
use crate::deadline::{Deadline, bounded};
use crate::entity::Entity;
use crate::error::{AsLarderError, Error, Result};
use crate::repo::Repo;
use crate::spec::Limits;

/// Store-wide policy: limits, audit, tracing detail, retries.
#[derive(Clone, Default)]
pub struct StoreConfig {
    /// Input limits (page size cap, list lengths, …).
    pub limits: Limits,
    /// Receives one record per operation.
    pub audit: Option<Arc<dyn AuditSink>>,
    /// Record `db.query.text` on spans (off by default: queries can be large; values are
    /// never included, only the parameterized SQL).
    pub record_query_text: bool,
    /// Deadline applied to every unit of work that does not set its own.
    pub default_deadline: Option<Duration>,
    /// Retry policy of [`Store::transaction`].
    pub transaction: TransactionOptions,
}

impl fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreConfig")
            .field("limits", &self.limits)
            .field("audit", &self.audit.is_some())
            .field("record_query_text", &self.record_query_text)
            .field("default_deadline", &self.default_deadline)
            .field("transaction", &self.transaction)
            .finish()
    }
}

/// Retry policy for [`Store::transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TransactionOptions {
    /// How many times to run the closure again after a retryable failure (0: never).
    pub max_retries: u32,
    /// Also retry on an optimistic [`Error::Conflict`] (the closure must re-read what it
    /// changes, so that the retry works on fresh data).
    pub retry_on_conflict: bool,
    /// First backoff; doubled on each retry, with jitter, capped at 50× this value.
    pub backoff: Duration,
}

impl Default for TransactionOptions {
    fn default() -> Self {
        TransactionOptions {
            max_retries: 3,
            retry_on_conflict: false,
            backoff: Duration::from_millis(2),
        }
    }
}

impl TransactionOptions {
    /// After attempt number `attempt` (0-based) failed with `e`: how long to wait before
    /// running the closure again, or `None` to give up and return the error. Shared by the
    /// async and the blocking `transaction`.
    pub fn retry_after(&self, e: Option<&Error>, attempt: u32) -> Option<Duration> {
        let retryable = e.is_some_and(|le| {
            le.is_transient() || (self.retry_on_conflict && matches!(le, Error::Conflict { .. }))
        });
        (retryable && attempt < self.max_retries).then(|| backoff(self.backoff, attempt + 1))
    }

    /// Sets the retry budget.
    #[must_use]
    pub fn with_max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// Opts in to retrying optimistic conflicts.
    #[must_use]
    pub fn with_retry_on_conflict(mut self, yes: bool) -> Self {
        self.retry_on_conflict = yes;
        self
    }
}

/// Options of one unit of work.
#[derive(Debug, Clone, Default)]
pub struct UowOptions {
    read_only: bool,
    deadline: Option<Deadline>,
    actor: Option<Arc<str>>,
    correlation_id: Option<Arc<str>>,
}

impl UowOptions {
    /// Read-only: writes fail with [`Error::ReadOnly`]; backends use a cheaper transaction.
    #[must_use]
    pub fn read_only(mut self) -> Self {
        self.read_only = true;
        self
    }

    /// Bounds the whole unit of work, commit included.
    #[must_use]
    pub fn with_deadline(mut self, deadline: Deadline) -> Self {
        self.deadline = Some(deadline);
        self
    }

    /// Bounds the whole unit of work to `timeout` from now.
    #[must_use]
    pub fn with_timeout(self, timeout: Duration) -> Self {
        self.with_deadline(Deadline::after(timeout))
    }

    /// Who is acting (recorded on every span and audit record).
    #[must_use]
    pub fn with_actor(mut self, actor: impl Into<Arc<str>>) -> Self {
        self.actor = Some(actor.into());
        self
    }

    /// The request's correlation id (recorded on every span and audit record).
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<Arc<str>>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }
}

/// A handle to a storage backend; cheap to clone. Opens units of work.
///
/// Build one with `larder::open(url)` or `larder::Settings`; in core,
/// [`Store::new`] wraps any [`Backend`].
#[derive(Clone)]
pub struct Store {
    inner: Arc<StoreInner>,
}

struct StoreInner {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    signals: Signals,
    /// The attachments `uow.blobs()` uses (the first ones opened on this store).
    blobs: std::sync::OnceLock<Arc<crate::blob::AttachCore>>,
}

/// In-process wake-ups: the log advanced (a unit of work that appended committed), a
/// consumer checkpoint moved. Counters in `watch` channels, so a waiter that subscribes
/// late still sees that something changed.
#[derive(Debug)]
pub(crate) struct Signals {
    pub(crate) log: tokio::sync::watch::Sender<u64>,
    pub(crate) checkpoints: tokio::sync::watch::Sender<u64>,
    pub(crate) outbox: tokio::sync::watch::Sender<u64>,
}

impl Signals {
    fn new() -> Signals {
        Signals {
            log: tokio::sync::watch::Sender::new(0),
            checkpoints: tokio::sync::watch::Sender::new(0),
            outbox: tokio::sync::watch::Sender::new(0),
        }
    }
}

/// The outcome of a successful [`Uow::commit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub struct Committed {
    /// The log position of the last event this unit of work appended (`None`: it appended
    /// none). Hand it to [`EventStore::wait_for`](crate::events::EventStore::wait_for) to
    /// read your own writes from a projection.
    pub position: Option<crate::events::Checkpoint>,
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .field("config", &self.inner.config)
            .finish()
    }
}

impl Store {
    /// Wraps a backend with the default configuration.
    pub fn new(backend: Arc<dyn Backend>) -> Store {
        Store::with_config(backend, StoreConfig::default())
    }

    /// Wraps a backend.
    pub fn with_config(backend: Arc<dyn Backend>, config: StoreConfig) -> Store {
        Store {
            inner: Arc::new(StoreInner {
                backend,
                config,
                signals: Signals::new(),
                blobs: std::sync::OnceLock::new(),
            }),
        }
    }

    /// An in-memory store (the reference backend; nothing survives the process).
    pub fn memory() -> Store {
        Store::new(Arc::new(crate::memory::MemoryBackend::new()))
    }

    /// The backend name (`sqlite`, `postgresql`, `memory`).
    pub fn backend_name(&self) -> &'static str {
        self.inner.backend.name()
    }

    /// The backend's capabilities.
    pub fn capabilities(&self) -> &Capabilities {
        self.inner.backend.capabilities()
    }

    /// The configuration.
    pub fn config(&self) -> &StoreConfig {
        &self.inner.config
    }

    /// The backend itself.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    pub(crate) fn signals(&self) -> &Signals {
        &self.inner.signals
    }

    /// Makes `core` the store's attachments unless it has some.
    pub(crate) fn attach_blobs(&self, core: Arc<crate::blob::AttachCore>) {
        let _ = self.inner.blobs.set(core);
    }

    /// The attachments opened on this store first
    /// ([`Attachments::open`](crate::blob::Attachments::open)), if any.
    pub fn attachments(&self) -> Option<crate::blob::Attachments> {
        let core = self.inner.blobs.get()?.clone();
        Some(crate::blob::Attachments::from_core(core, self.clone()))
    }

    /// Creates `T`'s table and indexes if they are missing (idempotent). For production
    /// schemas prefer migrations; `larder_sql::ddl` renders the same DDL for a migration file.
    ///
    /// An existing table is checked, never altered: if it does not match `T` (a field
    /// added, removed or retyped, another id type or storage layout, a missing index) the
    /// result is [`Error::SchemaMismatch`](crate::Error::SchemaMismatch) saying what differs,
    /// column by column; write a migration. Every entity must be registered before use:
    /// repository calls on one that is not fail with
    /// [`Error::NotRegistered`](crate::Error::NotRegistered).
    pub async fn register<T: Entity>(&self) -> Result<()> {
        let def = T::def();
        def.validate()?;
        let ep = self.inner.backend.endpoint();
        let span = tracing::info_span!(
            "larder.store.register",
            otel.kind = "client",
            db.system.name = self.backend_name(),
            db.namespace = ep.namespace.as_deref(),
            server.address = ep.address.as_deref(),
            server.port = ep.port,
            db.operation.name = "register",
            db.collection.name = def.table,
        );
        self.inner.backend.prepare(def).instrument(span).await
    }

    /// Opens a read-write unit of work.
    pub async fn begin(&self) -> Result<Uow> {
        self.begin_with(UowOptions::default()).await
    }

    /// Opens a read-only unit of work.
    pub async fn read(&self) -> Result<Uow> {
        self.begin_with(UowOptions::default().read_only()).await
    }

    /// Opens a unit of work with options.
    pub async fn begin_with(&self, opts: UowOptions) -> Result<Uow> {
        let deadline = opts
            .deadline
            .or_else(|| self.inner.config.default_deadline.map(Deadline::after));
        let ep = self.inner.backend.endpoint();
        let span = tracing::info_span!(
            "larder.uow.begin",
            otel.kind = "client",
            db.system.name = self.backend_name(),
            db.namespace = ep.namespace.as_deref(),
            server.address = ep.address.as_deref(),
            server.port = ep.port,
            db.response.status_code = tracing::field::Empty,
            db.operation.name = "begin",
            larder.read_only = opts.read_only,
            larder.actor = opts.actor.as_deref(),
            larder.correlation_id = opts.correlation_id.as_deref(),
            error.type = tracing::field::Empty,
        );
        let begin = BeginOptions {
            read_only: opts.read_only,
            deadline,
        };
        let res = bounded(deadline, "uow.begin", self.inner.backend.begin(&begin))
            .instrument(span.clone())
            .await;
        let tx = match res {
            Ok(tx) => tx,
            Err(e) => {
                span.record("error.type", e.kind());
                return Err(e);
            }
        };
        Ok(Uow {
            tx: Some(tx),
            store: self.clone(),
            read_only: opts.read_only,
            deadline,
            actor: opts.actor,
            correlation_id: opts.correlation_id,
            hooks: Hooks::default(),
            savepoints: 0,
            appended: None,
            enqueued: false,
        })
    }

    /// Runs `f` in a unit of work: commits on `Ok`, rolls back on `Err` (and on panic, by
    /// drop), and retries the whole closure on transient failures (serialization failure,
    /// deadlock, busy) up to [`TransactionOptions::max_retries`] times, with backoff.
    ///
    /// ```
    /// # use larder_core::{Store, Error};
    /// # async fn demo(store: Store) -> Result<(), Error> {
    /// let n: u64 = store
    ///     .transaction(|uow| Box::pin(async move {
    ///         // … repository calls through `uow` …
    ///         Ok::<_, Error>(1)
    ///     }))
    ///     .await?;
    /// # Ok(()) }
    /// ```
    pub async fn transaction<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: for<'u> FnMut(&'u mut Uow) -> BoxFuture<'u, Result<R, E>>,
        E: From<Error> + AsLarderError,
    {
        let opts = self.inner.config.transaction.clone();
        self.transaction_with(UowOptions::default(), &opts, f).await
    }

    /// [`Store::transaction`] with explicit unit-of-work options and retry policy.
    pub async fn transaction_with<R, E, F>(
        &self,
        uow_opts: UowOptions,
        opts: &TransactionOptions,
        mut f: F,
    ) -> Result<R, E>
    where
        F: for<'u> FnMut(&'u mut Uow) -> BoxFuture<'u, Result<R, E>>,
        E: From<Error> + AsLarderError,
    {
        let mut attempt = 0u32;
        loop {
            let result = async {
                let mut uow = self.begin_with(uow_opts.clone()).await?;
                match f(&mut uow).await {
                    Ok(r) => {
                        uow.commit().await?;
                        Ok::<R, E>(r)
                    }
                    Err(e) => {
                        // Roll back now rather than on drop, so the connection is clean
                        // before we return (or retry).
                        let _ = uow.rollback().await;
                        Err(e)
                    }
                }
            }
            .await;
            match result {
                Ok(r) => return Ok(r),
                Err(e) => match opts.retry_after(e.as_larder_error(), attempt) {
                    None => return Err(e),
                    Some(wait) => {
                        attempt += 1;
                        tracing::debug!(attempt, "larder: retrying transaction");
                        tokio::time::sleep(wait).await;
                    }
                },
            }
        }
    }

    /// Closes the backend's pool.
    pub async fn close(&self) {
        self.inner.backend.close().await;
    }
}

/// Whether an operation name is a write (spans record `larder.rows_affected` for writes and
/// `db.response.returned_rows` for reads).
pub(crate) fn is_write(op: &str) -> bool {
    matches!(
        op,
        "repository.insert"
            | "repository.update"
            | "repository.delete"
            | "events.append"
            | "events.save_snapshot"
            | "events.save_checkpoint"
            | "events.delete_checkpoint"
            | "outbox.enqueue"
            | "outbox.mark"
            | "outbox.lease"
            | "outbox.replay"
            | "outbox.skip"
            | "outbox.purge"
            | "inbox.record"
            | "inbox.purge"
    )
}

fn backoff(base: Duration, attempt: u32) -> Duration {
    jittered_backoff(base, attempt, base.saturating_mul(50))
}

/// The wait before retry number `attempt` (1-based): `base` doubled per attempt, capped at
/// `cap`, times a random factor in [0.5, 1.5). The factor comes from a real random number
/// generator (thread-local ChaCha seeded by the OS), not from the clock, so retriers that
/// failed together (the losers of one deadlock, every projection of a restarted database)
/// spread out instead of retrying in step.
pub(crate) fn jittered_backoff(base: Duration, attempt: u32, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(30)).min(cap);
    let factor: f64 = rand::RngExt::random_range(&mut rand::rng(), 0.5..1.5);
    Duration::try_from_secs_f64(exp.as_secs_f64() * factor).unwrap_or(Duration::MAX)
}

type PreCommitHook = Box<dyn for<'a> FnOnce(&'a mut Uow) -> BoxFuture<'a, Result<()>> + Send>;
type PlainHook = Box<dyn FnOnce() + Send>;

#[derive(Default)]
struct Hooks {
    pre_commit: Vec<PreCommitHook>,
    post_commit: Vec<PlainHook>,
    pre_rollback: Vec<PlainHook>,
    post_rollback: Vec<PlainHook>,
}

impl Hooks {
    fn lens(&self) -> [usize; 4] {
        [
            self.pre_commit.len(),
            self.post_commit.len(),
            self.pre_rollback.len(),
            self.post_rollback.len(),
        ]
    }

    fn truncate(&mut self, l: [usize; 4]) {
        self.pre_commit.truncate(l[0]);
        self.post_commit.truncate(l[1]);
        self.pre_rollback.truncate(l[2]);
        self.post_rollback.truncate(l[3]);
    }
}

/// A unit of work: one database transaction and everything done in it.
///
/// It commits only through [`Uow::commit`]. [`Uow::rollback`], an error in a pre-commit
/// hook, a panic, or simply dropping it rolls the transaction back (on drop the backend
/// finishes the rollback in the background, because `Drop` cannot await, and the
/// connection serves nobody else before it is done; no other transaction ever sees its
/// writes). Repositories are borrowed from it with [`Uow::repo`].
///
/// # What happens on commit
///
/// 1. pre-commit hooks run in registration order, inside the transaction (they may write;
///    hooks they register run too); the first error rolls everything back and is returned;
/// 2. the backend commits (bounded by the deadline);
/// 3. post-commit hooks run. If the commit itself fails, post-rollback hooks run instead.
pub struct Uow {
    tx: Option<Box<dyn Transaction>>,
    store: Store,
    read_only: bool,
    deadline: Option<Deadline>,
    actor: Option<Arc<str>>,
    correlation_id: Option<Arc<str>>,
    hooks: Hooks,
    savepoints: u32,
    appended: Option<crate::events::Checkpoint>,
    enqueued: bool,
}

impl fmt::Debug for Uow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Uow")
            .field("backend", &self.store.backend_name())
            .field("open", &self.tx.is_some())
            .field("read_only", &self.read_only)
            .field("deadline", &self.deadline)
            .field("actor", &self.actor)
            .field("correlation_id", &self.correlation_id)
            .field("savepoints", &self.savepoints)
            .finish_non_exhaustive()
    }
}

impl Uow {
    /// A repository for `T` working in this unit of work.
    pub fn repo<T: Entity>(&mut self) -> Repo<'_, T> {
        Repo::new(self)
    }

    /// The store's blobs in this unit of work: staged uploads recorded with the
    /// transaction (see [`Attachments`](crate::blob::Attachments)).
    /// [`Error::Configuration`] until attachments are opened on the store.
    pub fn blobs(&mut self) -> Result<crate::blob::UowBlobs<'_>> {
        let att = self.store.attachments().ok_or_else(|| {
            Error::Configuration(
                "no blob store is attached to this store: open one with \
                 `Attachments::open(&store, blobs)` first"
                    .into(),
            )
        })?;
        Ok(crate::blob::UowBlobs::new(self, att))
    }

    /// The store this unit of work belongs to.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Whether writes are refused.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// The unit of work's deadline.
    pub fn deadline(&self) -> Option<Deadline> {
        self.deadline
    }

    /// The actor recorded on spans and audit records.
    pub fn actor(&self) -> Option<&str> {
        self.actor.as_deref()
    }

    /// The correlation id recorded on spans and audit records.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// Runs `hook` inside the transaction just before commit. An error rolls back.
    pub fn on_pre_commit<H>(&mut self, hook: H)
    where
        H: for<'a> FnOnce(&'a mut Uow) -> BoxFuture<'a, Result<()>> + Send + 'static,
    {
        self.hooks.pre_commit.push(Box::new(hook));
    }

    /// Runs `hook` after a successful commit.
    pub fn on_post_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.post_commit.push(Box::new(hook));
    }

    /// Runs `hook` before a rollback (explicit, on error, or on drop).
    pub fn on_pre_rollback(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.pre_rollback.push(Box::new(hook));
    }

    /// Runs `hook` after a rollback (explicit, on error, on drop, or a failed commit).
    pub fn on_post_rollback(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.post_rollback.push(Box::new(hook));
    }

    /// Runs `f` in a nested scope backed by a savepoint: on `Ok` the scope's work stays
    /// part of the unit of work, on `Err` it is undone (and hooks registered inside it are
    /// dropped) while the rest of the unit of work goes on.
    pub async fn savepoint<R, E, F>(&mut self, f: F) -> Result<R, E>
    where
        F: for<'u> FnOnce(&'u mut Uow) -> BoxFuture<'u, Result<R, E>>,
        E: From<Error>,
    {
        self.savepoints += 1;
        let name = format!("larder_sp_{}", self.savepoints);
        let hooks_before = self.hooks.lens();
        // Events appended inside the scope are undone with it: so is their position.
        let appended_before = self.appended;
        let deadline = self.deadline;
        let span = self.span_for("larder.uow.savepoint");
        let tx = self.tx_mut()?;
        tx.set_deadline(deadline);
        let r = bounded(deadline, "uow.savepoint", tx.savepoint(&name))
            .instrument(span)
            .await;
        if let Err(e) = r {
            self.savepoints -= 1;
            return Err(e.into());
        }
        let result = f(self).await;
        let end = match &result {
            Ok(_) => {
                let tx = self.tx_mut()?;
                bounded(
                    deadline,
                    "uow.release_savepoint",
                    tx.release_savepoint(&name),
                )
                .await
            }
            Err(_) => {
                self.hooks.truncate(hooks_before);
                self.appended = appended_before;
                let tx = self.tx_mut()?;
                bounded(
                    deadline,
                    "uow.rollback_to_savepoint",
                    tx.rollback_to_savepoint(&name),
                )
                .await
            }
        };
        self.savepoints -= 1;
        end?;
        result
    }

    /// Commits the unit of work. See the type docs for the order of events. The result
    /// carries the log position of the last event appended, if any.
    pub async fn commit(mut self) -> Result<Committed> {
        let span = self.span_for("larder.uow.commit");
        async {
            // Pre-commit hooks may register further hooks: drain until none are left.
            while !self.hooks.pre_commit.is_empty() {
                let hooks = std::mem::take(&mut self.hooks.pre_commit);
                for hook in hooks {
                    if let Err(e) = hook(&mut self).await {
                        let _ = self.finish_rollback().await;
                        self.audit("uow.commit", Err(e.kind()));
                        return Err(e);
                    }
                }
            }
            let Some(mut tx) = self.tx.take() else {
                return Err(Error::Closed("unit of work"));
            };
            // A per-call deadline (`Repo::with_deadline`) bounded its call only: the commit
            // is bounded by the unit of work's own deadline, on every backend.
            tx.set_deadline(self.deadline);
            let r = bounded(self.deadline, "uow.commit", tx.commit()).await;
            match r {
                Ok(()) => {
                    self.audit("uow.commit", Ok(()));
                    if self.enqueued {
                        self.store.signals().outbox.send_modify(|n| *n += 1);
                    }
                    if self.appended.is_some() || self.enqueued {
                        if self.appended.is_some() {
                            self.store.signals().log.send_modify(|n| *n += 1);
                        }
                        // One cross-process wake-up channel for the log and the outbox.
                        self.store.backend().events_committed();
                    }
                    for hook in std::mem::take(&mut self.hooks.post_commit) {
                        hook();
                    }
                    Ok(Committed {
                        position: self.appended,
                    })
                }
                Err(e) => {
                    tracing::Span::current().record("error.type", e.kind());
                    self.audit("uow.commit", Err(e.kind()));
                    for hook in std::mem::take(&mut self.hooks.post_rollback) {
                        hook();
                    }
                    Err(e)
                }
            }
        }
        .instrument(span)
        .await
    }

    /// Rolls the unit of work back.
    pub async fn rollback(mut self) -> Result<()> {
        let span = self.span_for("larder.uow.rollback");
        let r = self.finish_rollback().instrument(span).await;
        self.audit("uow.rollback", r.as_ref().map(|_| ()).map_err(Error::kind));
        r
    }

    async fn finish_rollback(&mut self) -> Result<()> {
        for hook in std::mem::take(&mut self.hooks.pre_rollback) {
            hook();
        }
        let r = match self.tx.take() {
            Some(tx) => tx.rollback().await,
            None => Ok(()),
        };
        for hook in std::mem::take(&mut self.hooks.post_rollback) {
            hook();
        }
        r
    }

    /// The position of the last event appended in this unit of work so far.
    pub fn appended_position(&self) -> Option<crate::events::Checkpoint> {
        self.appended
    }

    pub(crate) fn note_appended(&mut self, cp: crate::events::Checkpoint) {
        self.appended = Some(self.appended.map_or(cp, |a| a.max(cp)));
    }

    /// The ceremony of one storage operation, written once for every category (repositories,
    /// the event store, what comes next): the deadline checked before any I/O, the backend
    /// transaction bounded by it, the client backstop timer, the span. Record the outcome
    /// with [`Uow::finish_op`].
    pub(crate) async fn call<'a, R>(
        &'a mut self,
        op: &'static str,
        deadline: Option<Deadline>,
        span: &tracing::Span,
        f: impl FnOnce(&'a mut (dyn Transaction + 'static)) -> BoxFuture<'a, Result<R>>,
    ) -> Result<R> {
        Deadline::check(deadline, op)?;
        let tx = self
            .tx
            .as_deref_mut()
            .ok_or(Error::Closed("unit of work"))?;
        tx.set_deadline(deadline);
        bounded(deadline, op, f(tx)).instrument(span.clone()).await
    }

    pub(crate) fn note_enqueued(&mut self) {
        self.enqueued = true;
    }

    /// [`Uow::call`] on the transaction's outbox primitives ([`Error::Unsupported`] on a
    /// backend without an outbox).
    pub(crate) async fn call_outbox<'a, R>(
        &'a mut self,
        op: &'static str,
        deadline: Option<Deadline>,
        span: &tracing::Span,
        f: impl FnOnce(&'a mut dyn crate::outbox::OutboxTransaction) -> BoxFuture<'a, Result<R>>,
    ) -> Result<R> {
        let backend = self.store.backend_name();
        self.call(op, deadline, span, move |tx| match tx.outbox() {
            Some(ob) => f(ob),
            None => Box::pin(async move {
                Err(Error::Unsupported {
                    operation: "outbox",
                    backend,
                })
            }),
        })
        .await
    }

    /// [`Uow::call`] on the transaction's blob reference primitives
    /// ([`Error::Unsupported`] on a backend without them).
    pub(crate) async fn call_blob_refs<'a, R>(
        &'a mut self,
        op: &'static str,
        deadline: Option<Deadline>,
        span: &tracing::Span,
        f: impl FnOnce(&'a mut dyn crate::blob::BlobRefTransaction) -> BoxFuture<'a, Result<R>>,
    ) -> Result<R> {
        let backend = self.store.backend_name();
        self.call(op, deadline, span, move |tx| match tx.blob_refs() {
            Some(b) => f(b),
            None => Box::pin(async move {
                Err(Error::Unsupported {
                    operation: "blob references",
                    backend,
                })
            }),
        })
        .await
    }

    /// [`Uow::call`] on the transaction's event-log primitives
    /// ([`Error::Unsupported`] on a backend without an event store).
    pub(crate) async fn call_events<'a, R>(
        &'a mut self,
        op: &'static str,
        deadline: Option<Deadline>,
        span: &tracing::Span,
        f: impl FnOnce(&'a mut dyn crate::events::EventTransaction) -> BoxFuture<'a, Result<R>>,
    ) -> Result<R> {
        let backend = self.store.backend_name();
        self.call(op, deadline, span, move |tx| match tx.events() {
            Some(ev) => f(ev),
            None => Box::pin(async move {
                Err(Error::Unsupported {
                    operation: "event store",
                    backend,
                })
            }),
        })
        .await
    }

    /// Records the outcome of an operation on its span (`db.response.returned_rows` or
    /// `error.type` + `error.message`) and writes its one audit record.
    pub(crate) fn finish_op<R>(
        &self,
        span: &tracing::Span,
        op: &'static str,
        collection: Option<&'static str>,
        entity_id: Option<&crate::Value>,
        result: &Result<R>,
        rows: impl Fn(&R) -> u64,
    ) {
        match result {
            Ok(r) => {
                let n = rows(r);
                // Reads report the rows they returned, writes the rows they changed.
                if is_write(op) {
                    span.record("larder.rows_affected", n);
                } else {
                    span.record("db.response.returned_rows", n);
                }
                self.audit_full(op, collection, entity_id, n, Ok(()));
            }
            Err(e) => self.record_failure(span, op, collection, entity_id, e),
        }
    }

    /// The failure half of [`Uow::finish_op`], for errors found before the backend call.
    pub(crate) fn record_failure(
        &self,
        span: &tracing::Span,
        op: &'static str,
        collection: Option<&'static str>,
        entity_id: Option<&crate::Value>,
        e: &Error,
    ) {
        span.record("error.type", e.kind());
        span.record("error.message", tracing::field::display(e));
        if let Some(code) = self.store.backend().status_code(e) {
            span.record("db.response.status_code", code.as_str());
        }
        self.audit_full(op, collection, entity_id, 0, Err(e.kind()));
    }

    pub(crate) fn tx_mut(&mut self) -> Result<&mut Box<dyn Transaction>> {
        self.tx.as_mut().ok_or(Error::Closed("unit of work"))
    }

    /// The backend transaction, for backend extension traits (raw driver access inside
    /// this unit of work). Returns `None` after commit or rollback.
    pub fn backend_transaction(&mut self) -> Option<&mut (dyn Transaction + 'static)> {
        self.tx.as_deref_mut()
    }

    pub(crate) fn limits(&self) -> &Limits {
        &self.store.inner.config.limits
    }

    pub(crate) fn audit(&self, operation: &'static str, outcome: Result<(), &'static str>) {
        self.audit_full(operation, None, None, 0, outcome);
    }

    pub(crate) fn audit_full(
        &self,
        operation: &'static str,
        collection: Option<&'static str>,
        entity_id: Option<&crate::Value>,
        rows: u64,
        outcome: Result<(), &'static str>,
    ) {
        // The id is rendered only when someone listens: not on the hot path otherwise.
        if let Some(sink) = &self.store.inner.config.audit {
            let entity_id = entity_id.map(crate::Value::display_id);
            sink.record(AuditRecord {
                at: SystemTime::now(),
                actor: self.actor.clone(),
                correlation_id: self.correlation_id.clone(),
                operation,
                collection,
                entity_id,
                rows,
                outcome,
            });
        }
    }

    fn span_for(&self, name: &'static str) -> tracing::Span {
        // Span names must be literals; one arm per unit-of-work operation.
        let ep = self.store.backend().endpoint();
        macro_rules! s {
            ($n:literal, $op:literal) => {
                tracing::info_span!(
                    $n,
                    otel.kind = "client",
                    db.system.name = self.store.backend_name(),
                    db.namespace = ep.namespace.as_deref(),
                    server.address = ep.address.as_deref(),
                    server.port = ep.port,
                    db.response.status_code = tracing::field::Empty,
                    db.operation.name = $op,
                    larder.actor = self.actor.as_deref(),
                    larder.correlation_id = self.correlation_id.as_deref(),
                    error.type = tracing::field::Empty,
                )
            };
        }
        match name {
            "larder.uow.commit" => s!("larder.uow.commit", "commit"),
            "larder.uow.rollback" => s!("larder.uow.rollback", "rollback"),
            _ => s!("larder.uow.savepoint", "savepoint"),
        }
    }
}

impl Drop for Uow {
    fn drop(&mut self) {
        if self.tx.is_some() {
            for hook in std::mem::take(&mut self.hooks.pre_rollback) {
                hook();
            }
            // Dropping the backend transaction rolls it back (the SQL backends run the
            // ROLLBACK in a task that holds the connection until it is answered). Nothing
            // was committed.
            self.tx = None;
            tracing::debug!(
                target: "larder::uow",
                actor = self.actor.as_deref(),
                correlation_id = self.correlation_id.as_deref(),
                "unit of work dropped without commit: rolled back"
            );
            self.audit("uow.rollback", Ok(()));
            for hook in std::mem::take(&mut self.hooks.post_rollback) {
                hook();
            }
        }
    }
}

/// The span of one storage operation, the same fields for every category (OpenTelemetry's
/// database client conventions plus larder's own): `storage_span!(uow, "larder.x.y", "op",
/// collection, stream)`. A macro because a span's name must be a literal.
macro_rules! storage_span {
    ($uow:expr, $name:literal, $op:literal, $collection:expr, $stream:expr) => {
        $crate::uow::storage_span!($uow, $name, $op, $collection, $stream,)
    };
    ($uow:expr, $name:literal, $op:literal, $collection:expr, $stream:expr, $($extra:tt)*) => {{
        let uow: &$crate::Uow = $uow;
        let ep = uow.store().backend().endpoint();
        tracing::info_span!(
            $name,
            otel.kind = "client",
            db.system.name = uow.store().backend_name(),
            db.namespace = ep.namespace.as_deref(),
            server.address = ep.address.as_deref(),
            server.port = ep.port,
            db.response.status_code = tracing::field::Empty,
            db.operation.name = $op,
            db.collection.name = $collection,
            larder.stream = $stream,
            db.response.returned_rows = tracing::field::Empty,
            larder.rows_affected = tracing::field::Empty,
            larder.actor = uow.actor(),
            larder.correlation_id = uow.correlation_id(),
            db.query.text = tracing::field::Empty,
            error.type = tracing::field::Empty,
            error.message = tracing::field::Empty,
            $($extra)*
        )
    }};
}
pub(crate) use storage_span;

#[cfg(test)]
mod tests {
    use super::*;

    /// The jitter is random, not clock noise: draws taken back to back differ, are not
    /// ordered (a clock-derived factor grows between two quick calls), cover the whole
    /// 50 %–150 % band, and never leave it.
    #[test]
    fn backoff_jitter_spreads_within_bounds() {
        let base = Duration::from_millis(10);
        for attempt in 1..=8u32 {
            let step = base.saturating_mul(1 << attempt.min(6)).min(base * 50);
            let draws: Vec<Duration> = (0..2_000).map(|_| backoff(base, attempt)).collect();
            for d in &draws {
                assert!(
                    *d >= step / 2 && *d < step.mul_f64(1.5),
                    "{d:?} for step {step:?}"
                );
            }
            let distinct: std::collections::HashSet<_> = draws.iter().collect();
            assert!(
                distinct.len() > 1_900,
                "only {} distinct draws",
                distinct.len()
            );
            let mut tenths = [0u32; 10];
            for d in &draws {
                let tenth = (1..10u32)
                    .filter(|&i| *d >= step.mul_f64(0.5 + f64::from(i) / 10.0))
                    .count();
                tenths[tenth] += 1;
            }
            assert!(tenths.iter().all(|&n| n >= 100), "uneven spread {tenths:?}");
            let rising = draws.windows(2).filter(|w| w[1] > w[0]).count();
            assert!(
                (800..=1_200).contains(&rising),
                "{rising} of 1,999 successive draws rise: correlated jitter"
            );
        }
    }

    #[test]
    fn backoff_is_capped() {
        let base = Duration::from_millis(2);
        for attempt in [10, 31, 200, u32::MAX] {
            let d = jittered_backoff(base, attempt, Duration::from_secs(1));
            assert!(d >= Duration::from_millis(500) && d < Duration::from_millis(1_500));
            assert!(backoff(base, attempt) < Duration::from_millis(150));
        }
        assert!(jittered_backoff(Duration::MAX, 3, Duration::MAX) >= Duration::MAX / 2);
    }
}
