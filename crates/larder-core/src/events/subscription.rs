//! Subscriptions: catch up from a checkpoint, then follow the log live.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::store::EventStore;
use super::types::{Checkpoint, EventFilter, RecordedEvent};
use crate::backend::BoxStream;
use crate::error::Result;

/// A live view of the global log: a [`Stream`] of events after a checkpoint, first the
/// backlog (catch-up), then new events as they commit.
///
/// - **No gaps, no skips**: it reads through [`EventStore::read_all`], so an event that
///   commits late with an earlier position is still delivered, in log order.
/// - **Wake-ups**: appends committed in this process wake it at once; on PostgreSQL,
///   appends from other processes wake it through `LISTEN/NOTIFY`; otherwise it polls
///   (the event store's poll interval).
/// - **Back-pressure**: a background task reads a page at a time into a bounded buffer and
///   stops reading while the buffer is full.
/// - Read errors are yielded as `Err` items; the subscription retries after the poll
///   interval. Dropping it stops the background task.
pub struct Subscription {
    rx: mpsc::Receiver<Result<RecordedEvent>>,
    task: tokio::task::JoinHandle<()>,
    delivered: Checkpoint,
    events: EventStore,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("delivered", &self.delivered)
            .field("buffered", &self.rx.len())
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(crate) fn start(
        events: EventStore,
        after: Checkpoint,
        filter: EventFilter,
        buffer: u32,
    ) -> Subscription {
        let (tx, rx) = mpsc::channel(buffer as usize);
        let task = tokio::spawn(follow(events.clone(), after, filter, buffer, tx));
        Subscription {
            rx,
            task,
            delivered: after,
            events,
        }
    }

    /// The checkpoint of the last event handed out (where to resume after a restart).
    pub fn checkpoint(&self) -> Checkpoint {
        self.delivered
    }

    /// Events read but not consumed yet.
    pub fn buffered(&self) -> usize {
        self.rx.len()
    }

    /// The subscription's lag: committed events after the last one handed out
    /// (all events, whatever the filter; capped at one billion).
    pub async fn lag(&self) -> Result<u64> {
        let mut uow = self.events.store().read().await?;
        let n = self
            .events
            .count_after(&mut uow, self.delivered, 1_000_000_000)
            .await?;
        uow.commit().await?;
        Ok(n)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stream for Subscription {
    type Item = Result<RecordedEvent>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.rx.poll_recv(cx);
        if let Poll::Ready(Some(Ok(e))) = &r {
            self.delivered = e.checkpoint;
        }
        r
    }
}

/// Waits for the log to move: an in-process commit that appended, a wake-up from another
/// process (PostgreSQL `LISTEN/NOTIFY`), or the poll interval, whichever comes first.
/// Shared by subscriptions and projection runners.
pub(crate) struct LogWaker {
    local: tokio::sync::watch::Receiver<u64>,
    remote: Option<BoxStream<'static, ()>>,
    poll: std::time::Duration,
}

impl LogWaker {
    pub(crate) async fn new(events: &EventStore) -> LogWaker {
        let local = events.store().signals().log.subscribe();
        LogWaker::with(events.store(), local, events.inner.poll_interval).await
    }

    /// A waker on another in-process signal of `store` (the outbox's), with the same
    /// cross-process wake-ups.
    pub(crate) async fn with(
        store: &crate::Store,
        local: tokio::sync::watch::Receiver<u64>,
        poll: std::time::Duration,
    ) -> LogWaker {
        LogWaker {
            local,
            remote: store.backend().listen_events().await.ok().flatten(),
            poll,
        }
    }

    /// Call before reading: a commit after this point ends the next [`LogWaker::wait`].
    pub(crate) fn mark_seen(&mut self) {
        self.local.mark_unchanged();
    }

    /// Sleeps until the log may have moved (or the poll interval passed).
    pub(crate) async fn wait(&mut self) {
        let local_wake = Box::pin(self.local.changed());
        let remote_wake: Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> =
            match self.remote.as_mut() {
                Some(r) => Box::pin(async move { r.next().await.is_some() }),
                None => Box::pin(std::future::pending()),
            };
        let woke = tokio::time::timeout(
            self.poll,
            futures_util::future::select(local_wake, remote_wake),
        )
        .await;
        let lost = matches!(woke, Ok(futures_util::future::Either::Right((false, _))));
        drop(woke);
        if lost {
            // The notification connection is gone: fall back to polling.
            self.remote = None;
        }
    }
}

async fn follow(
    events: EventStore,
    mut cp: Checkpoint,
    filter: EventFilter,
    page: u32,
    tx: mpsc::Sender<Result<RecordedEvent>>,
) {
    let poll = events.inner.poll_interval;
    let mut waker = LogWaker::new(&events).await;
    loop {
        waker.mark_seen();
        let batch = match events.read_page(cp, page, &filter).await {
            Ok(b) => b,
            Err(e) => {
                if tx.send(Err(e)).await.is_err() {
                    return;
                }
                tokio::time::sleep(poll).await;
                continue;
            }
        };
        for e in batch.events {
            if tx.send(Ok(e)).await.is_err() {
                return;
            }
        }
        cp = batch.next;
        if batch.end_of_log {
            waker.wait().await;
        }
    }
}
