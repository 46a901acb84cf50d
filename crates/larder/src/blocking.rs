//! A blocking facade with the same semantics, for CLI tools, scripts and tests: the store,
//! units of work and repositories ([`Store`], [`Uow`], [`Repo`]), the event store
//! ([`EventStore`]: appends in a blocking unit of work, reads, snapshots, aggregates,
//! checkpoints, [`EventStore::stream_all`] and [`EventStore::subscribe`] as iterators),
//! projections ([`ProjectionRunner`]: `catch_up`, `run` until a shutdown channel fires,
//! `status`) and migrations ([`migrate`]: up / status / verify / down).
//!
//! Every type mirrors its async counterpart's names, arguments and errors (the same
//! [`Error`], [`crate::migrate::MigrateError`] for migrations), minus `async`: a blocking
//! unit of work commits its repository writes and its appended events together, or neither.
//!
//! # Runtime
//!
//! Each [`Store`] owns one small current-thread Tokio runtime, shared by everything opened
//! from it (units of work, event store, projection runner, migration driver); every call
//! blocks on it, and several threads may call into one store at once. Do not use the
//! facade from inside an async runtime (a `#[tokio::main]` or `#[tokio::test]` body, a
//! spawned task, a projection handler): like [`tokio::runtime::Runtime::block_on`] it
//! panics there ("Cannot start a runtime from within a runtime"), and so does dropping the
//! last handle of a store there. Use the async API in async code.
//!
//! ```
//! use larder::blocking::{EventStore, ProjectionRunner, Store};
//! use larder::events::{Checkpoint, EventFilter, ExpectedVersion, Projection, RecordedEvent};
//! use larder::{Entity, EventData};
//! # #[derive(Debug, Clone, serde::Serialize, serde::Deserialize, Entity)]
//! # #[larder(table = "notes", document)]
//! # struct Note { id: i64, text: String }
//! let store = Store::open("memory://")?;
//! store.register::<Note>()?;
//! let events = EventStore::open(&store)?;
//!
//! // A row and an event, committed together (or, on `Err`, neither).
//! store.transaction(|uow| {
//!     uow.repo::<Note>().insert(&Note { id: 1, text: "hi".into() })?;
//!     let added = EventData::new("NoteAdded", &serde_json::json!({ "id": 1 }))?;
//!     events.append(uow, "note-1", ExpectedVersion::NoStream, [added])?;
//!     Ok::<_, larder::Error>(())
//! })?;
//!
//! let mut uow = store.read()?;
//! assert_eq!(uow.repo::<Note>().require(&1)?.text, "hi");
//! assert_eq!(events.stream_info(&mut uow, "note-1")?.map(|s| s.version), Some(1));
//! drop(uow);
//! let log: Vec<_> = events.stream_all(Checkpoint::START, EventFilter::all(), 100)
//!     .collect::<larder::Result<_>>()?;
//! assert_eq!(log.len(), 1);
//!
//! // Projections are written against the async trait and run from blocking code.
//! struct Count;
//! impl Projection for Count {
//!     fn name(&self) -> &str { "count" }
//!     async fn handle(&self, _uow: &mut larder::Uow, _e: &RecordedEvent) -> larder::Result<()> {
//!         Ok(())
//!     }
//! }
//! let runner = ProjectionRunner::new(&events).with(Count);
//! assert_eq!(runner.catch_up()?, 1);
//! assert_eq!(runner.status()?[0].lag, 0);
//! # Ok::<(), larder::Error>(())
//! ```

use std::sync::Arc;

use futures_util::StreamExt;
use tokio::runtime::Runtime;

mod events;
pub mod migrate;

pub use events::{EventIter, EventStore, EventStoreBuilder, ProjectionRunner, Subscription};

use crate::{
    AsLarderError, Entity, Error, Page, Query, Result, Settings, Spec, TransactionOptions,
    UowOptions, Versioned,
};

/// A blocking store. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    rt: Arc<Runtime>,
    inner: crate::Store,
}

fn runtime() -> Result<Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::backend("runtime", e))
}

impl Store {
    /// Opens a store from a URL (see [`crate::open`]).
    pub fn open(url: &str) -> Result<Store> {
        Self::connect(&Settings::from_url(url))
    }

    /// Builds the store that `settings` describe (see [`crate::connect`]).
    pub fn connect(settings: &Settings) -> Result<Store> {
        let rt = runtime()?;
        let inner = rt.block_on(crate::connect(settings))?;
        Ok(Store {
            rt: Arc::new(rt),
            inner,
        })
    }

    /// The async store inside.
    pub fn as_async(&self) -> &crate::Store {
        &self.inner
    }

    /// See [`crate::Store::register`].
    pub fn register<T: Entity>(&self) -> Result<()> {
        self.rt.block_on(self.inner.register::<T>())
    }

    /// Opens a read-write unit of work.
    pub fn begin(&self) -> Result<Uow> {
        self.begin_with(UowOptions::default())
    }

    /// Opens a read-only unit of work.
    pub fn read(&self) -> Result<Uow> {
        self.begin_with(UowOptions::default().read_only())
    }

    /// Opens a unit of work with options.
    pub fn begin_with(&self, opts: UowOptions) -> Result<Uow> {
        let inner = self.rt.block_on(self.inner.begin_with(opts))?;
        Ok(Uow {
            rt: self.rt.clone(),
            inner: Some(inner),
        })
    }

    /// Runs `f` in a unit of work: commit on `Ok`, rollback on `Err` or panic, retries on
    /// transient failures — the same policy as [`crate::Store::transaction`].
    pub fn transaction<R, E, F>(&self, f: F) -> Result<R, E>
    where
        F: FnMut(&mut Uow) -> Result<R, E>,
        E: From<Error> + AsLarderError,
    {
        let opts = self.inner.config().transaction.clone();
        self.transaction_with(UowOptions::default(), &opts, f)
    }

    /// [`Store::transaction`] with explicit options.
    pub fn transaction_with<R, E, F>(
        &self,
        uow_opts: UowOptions,
        opts: &TransactionOptions,
        mut f: F,
    ) -> Result<R, E>
    where
        F: FnMut(&mut Uow) -> Result<R, E>,
        E: From<Error> + AsLarderError,
    {
        let mut attempt = 0u32;
        loop {
            let result = (|| {
                let mut uow = self.begin_with(uow_opts.clone())?;
                match f(&mut uow) {
                    Ok(r) => {
                        uow.commit()?;
                        Ok(r)
                    }
                    Err(e) => {
                        let _ = uow.rollback();
                        Err(e)
                    }
                }
            })();
            match result {
                Ok(r) => return Ok(r),
                Err(e) => match opts.retry_after(e.as_larder_error(), attempt) {
                    None => return Err(e),
                    Some(wait) => {
                        attempt += 1;
                        std::thread::sleep(wait);
                    }
                },
            }
        }
    }

    /// Closes the pool.
    pub fn close(&self) {
        self.rt.block_on(self.inner.close());
    }
}

/// A blocking unit of work; see [`crate::Uow`] for the semantics (commit only on
/// [`Uow::commit`], rollback on drop).
#[derive(Debug)]
pub struct Uow {
    rt: Arc<Runtime>,
    inner: Option<crate::Uow>,
}

impl Uow {
    fn get(&mut self) -> &mut crate::Uow {
        self.parts().1
    }

    /// The runtime and the async unit of work, borrowed apart (for the event store).
    fn parts(&mut self) -> (&Runtime, &mut crate::Uow) {
        // `inner` is only taken by commit/rollback, which consume `self`.
        let uow = self
            .inner
            .as_mut()
            .unwrap_or_else(|| unreachable!("unit of work already finished"));
        (&self.rt, uow)
    }

    /// A repository for `T` in this unit of work.
    pub fn repo<T: Entity>(&mut self) -> Repo<'_, T> {
        let rt = self.rt.clone();
        Repo {
            rt,
            inner: self.get().repo::<T>(),
        }
    }

    /// The async unit of work inside (e.g. for backend extension traits).
    pub fn as_async(&mut self) -> &mut crate::Uow {
        self.get()
    }

    /// Runs `hook` after a successful commit.
    pub fn on_post_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.get().on_post_commit(hook);
    }

    /// Runs `hook` after a rollback.
    pub fn on_post_rollback(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.get().on_post_rollback(hook);
    }

    /// Commits.
    pub fn commit(mut self) -> Result<crate::Committed> {
        let uow = self.inner.take().ok_or(Error::Closed("unit of work"))?;
        self.rt.block_on(uow.commit())
    }

    /// Rolls back.
    pub fn rollback(mut self) -> Result<()> {
        let uow = self.inner.take().ok_or(Error::Closed("unit of work"))?;
        self.rt.block_on(uow.rollback())
    }
}

impl Drop for Uow {
    fn drop(&mut self) {
        // The queued rollback needs the runtime's context to be scheduled.
        let _guard = self.rt.enter();
        self.inner = None;
    }
}

/// A blocking repository; see [`crate::Repo`].
pub struct Repo<'u, T> {
    rt: Arc<Runtime>,
    inner: crate::Repo<'u, T>,
}

impl<T> std::fmt::Debug for Repo<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

impl<'u, T: Entity> Repo<'u, T> {
    /// See [`crate::Repo::insert`].
    pub fn insert(&mut self, entity: &T) -> Result<Versioned<()>> {
        self.rt.block_on(self.inner.insert(entity))
    }

    /// See [`crate::Repo::update`].
    pub fn update(&mut self, entity: &T, expected_version: u64) -> Result<u64> {
        self.rt
            .block_on(self.inner.update(entity, expected_version))
    }

    /// See [`crate::Repo::save`].
    pub fn save(&mut self, entity: &mut Versioned<T>) -> Result<u64> {
        self.rt.block_on(self.inner.save(entity))
    }

    /// See [`crate::Repo::delete`].
    pub fn delete(&mut self, id: &T::Id, expected_version: u64) -> Result<()> {
        self.rt.block_on(self.inner.delete(id, expected_version))
    }

    /// See [`crate::Repo::get`].
    pub fn get(&mut self, id: &T::Id) -> Result<Option<Versioned<T>>> {
        self.rt.block_on(self.inner.get(id))
    }

    /// See [`crate::Repo::require`].
    pub fn require(&mut self, id: &T::Id) -> Result<Versioned<T>> {
        self.rt.block_on(self.inner.require(id))
    }

    /// See [`crate::Repo::get_many`].
    pub fn get_many(&mut self, ids: &[T::Id]) -> Result<Vec<Versioned<T>>> {
        self.rt.block_on(self.inner.get_many(ids))
    }

    /// See [`crate::Repo::exists`].
    pub fn exists(&mut self, id: &T::Id) -> Result<bool> {
        self.rt.block_on(self.inner.exists(id))
    }

    /// See [`crate::Repo::count`].
    pub fn count(&mut self, spec: &Spec) -> Result<u64> {
        self.rt.block_on(self.inner.count(spec))
    }

    /// See [`crate::Repo::find`].
    pub fn find(&mut self, query: &Query) -> Result<Page<T>> {
        self.rt.block_on(self.inner.find(query))
    }

    /// See [`crate::Repo::stream`]: an iterator that fetches rows as it is advanced.
    pub fn stream(self, query: &Query) -> Iter<'u, T> {
        Iter {
            rt: self.rt,
            inner: self.inner.stream(query),
        }
    }
}

/// A blocking iterator over streamed entities.
pub struct Iter<'u, T> {
    rt: Arc<Runtime>,
    inner: larder_core::BoxStream<'u, Result<Versioned<T>>>,
}

impl<T> std::fmt::Debug for Iter<'_, T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Iter")
    }
}

impl<T> Iterator for Iter<'_, T> {
    type Item = Result<Versioned<T>>;

    fn next(&mut self) -> Option<Self::Item> {
        self.rt.block_on(self.inner.next())
    }
}
