//! The larder side of the event-store workloads, written the way an application would
//! write them: one unit of work per operation, `EventStore` calls, payloads decoded with
//! `RecordedEvent::payload_as`.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use anyhow::{Result, ensure};
use futures_util::StreamExt;
use larder::events::{
    BatchError, Checkpoint, EventData, EventFilter, EventPage, EventStore, ExpectedVersion,
    Projection, ReadDirection, RecordedEvent,
};
use larder::{Store, Uow};

use crate::data::{ITEM_ADDED, ItemAdded};

/// W1/W6: one event in its own unit of work, with the expected-version check.
pub(crate) async fn append_one(
    es: &EventStore,
    store: &Store,
    stream: &str,
    expected: u64,
    event: &ItemAdded,
) -> Result<()> {
    let mut uow = store.begin().await?;
    let r = es
        .append(
            &mut uow,
            stream,
            ExpectedVersion::Exact(expected),
            [EventData::new(ITEM_ADDED, event)?],
        )
        .await?;
    uow.commit().await?;
    ensure!(
        r.stream_version == expected + 1,
        "larder append to {stream}: version {}",
        r.stream_version
    );
    Ok(())
}

/// W2: every event of a new stream in one unit of work (`NoStream`).
pub(crate) async fn append_batch(
    es: &EventStore,
    store: &Store,
    stream: &str,
    events: &[ItemAdded],
) -> Result<()> {
    let data = events
        .iter()
        .map(|e| EventData::new(ITEM_ADDED, e))
        .collect::<larder::Result<Vec<_>>>()?;
    let mut uow = store.begin().await?;
    let r = es
        .append(&mut uow, stream, ExpectedVersion::NoStream, data)
        .await?;
    uow.commit().await?;
    ensure!(
        r.stream_version == events.len() as u64,
        "larder batch append to {stream}: version {}",
        r.stream_version
    );
    Ok(())
}

/// W3: a whole stream, decoded, in a read-only unit of work.
pub(crate) async fn read_stream(
    es: &EventStore,
    store: &Store,
    stream: &str,
) -> Result<Vec<ItemAdded>> {
    let mut uow = store.read().await?;
    let events = es
        .read_stream(&mut uow, stream, 1, 1_000, ReadDirection::Forward)
        .await?;
    uow.commit().await?;
    events
        .iter()
        .map(|e| Ok(e.payload_as::<ItemAdded>()?))
        .collect()
}

/// One page of the global log after `after`, in a read-only unit of work, decoded.
/// Returns (events, sum of `qty`, next checkpoint, end of log).
pub(crate) async fn read_page(
    es: &EventStore,
    store: &Store,
    after: Checkpoint,
    limit: u32,
) -> Result<(usize, i64, Checkpoint, bool)> {
    let mut uow = store.read().await?;
    let page = es
        .read_all(&mut uow, after, limit, &EventFilter::all())
        .await?;
    uow.commit().await?;
    let mut sum = 0_i64;
    for e in &page.events {
        sum = sum.wrapping_add(e.payload_as::<ItemAdded>()?.qty);
    }
    Ok((page.events.len(), sum, page.next, page.end_of_log))
}

/// W4: the whole global log in pages of `page`: (events, sum of `qty`).
pub(crate) async fn read_log(es: &EventStore, store: &Store, page: u32) -> Result<(u64, i64)> {
    let mut cp = Checkpoint::START;
    let mut total = 0_u64;
    let mut sum = 0_i64;
    loop {
        let (n, s, next, end) = read_page(es, store, cp, page).await?;
        total += n as u64;
        sum = sum.wrapping_add(s);
        cp = next;
        if end {
            return Ok((total, sum));
        }
    }
}

/// W4 through `read_all_each`: every payload decoded straight from the row, pages of
/// `page` in one read-only unit of work each: (events, sum of `qty`).
pub(crate) async fn read_log_each(es: &EventStore, store: &Store, page: u32) -> Result<(u64, i64)> {
    let mut cp = Checkpoint::START;
    let mut total = 0_u64;
    let mut sum = 0_i64;
    loop {
        let mut uow = store.read().await?;
        let end = es
            .read_all_each(&mut uow, cp, page, &EventFilter::all(), &mut |e| {
                sum = sum.wrapping_add(e.payload_as::<ItemAdded>()?.qty);
                Ok(())
            })
            .await?;
        uow.commit().await?;
        total += end.count as u64;
        cp = end.next;
        if end.end_of_log {
            return Ok((total, sum));
        }
    }
}

/// W8-events: the constant-memory `stream_all` over the whole log: (events, sum of `qty`).
pub(crate) async fn stream_log(es: &EventStore, page: u32) -> Result<(u64, i64)> {
    let mut s = es.stream_all(Checkpoint::START, EventFilter::all(), page);
    let mut n = 0_u64;
    let mut sum = 0_i64;
    while let Some(e) = s.next().await {
        let e = e?;
        n += 1;
        sum = sum.wrapping_add(e.payload_as::<ItemAdded>()?.qty);
    }
    Ok((n, sum))
}

/// W8-events: `stream_all_pages` over the whole log, each event borrowed from its row:
/// (events, sum of `qty`).
pub(crate) async fn stream_log_pages(es: &EventStore, page: u32) -> Result<(u64, i64)> {
    let mut s = es.stream_all_pages(Checkpoint::START, EventFilter::all(), page);
    let mut n = 0_u64;
    let mut sum = 0_i64;
    while let Some(p) = s.next().await {
        for e in p?.iter() {
            n += 1;
            sum = sum.wrapping_add(e?.payload_as::<ItemAdded>()?.qty);
        }
    }
    Ok((n, sum))
}

/// W8-events: a projection doing minimal work: it sums `qty` in memory, reading each
/// payload borrowed from its row (`handle_page`).
#[derive(Debug)]
pub(crate) struct SumQty {
    name: String,
    sum: Arc<AtomicI64>,
    /// Whether pages are read borrowed (`handle_page`) or copied into owned events first
    /// (the trait's default path).
    borrowed: bool,
}

impl SumQty {
    /// A projection with its own checkpoint name; the sum is read through the handle.
    pub(crate) fn new(name: String, borrowed: bool) -> (SumQty, Arc<AtomicI64>) {
        let sum = Arc::new(AtomicI64::new(0));
        (
            SumQty {
                name,
                sum: sum.clone(),
                borrowed,
            },
            sum,
        )
    }
}

impl Projection for SumQty {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle(&self, _uow: &mut Uow, event: &RecordedEvent) -> larder::Result<()> {
        let e: ItemAdded = event.payload_as()?;
        self.sum.fetch_add(e.qty, Ordering::Relaxed);
        Ok(())
    }

    async fn handle_page(
        &self,
        _uow: &mut Uow,
        page: &EventPage,
    ) -> std::result::Result<(), BatchError> {
        if !self.borrowed {
            // What `Projection::handle_page` does by default.
            let events = page.to_events()?;
            for (i, e) in events.iter().enumerate() {
                self.handle(_uow, e)
                    .await
                    .map_err(|e| BatchError::at(i, e))?;
            }
            return Ok(());
        }
        let mut sum = 0_i64;
        for (i, e) in page.iter().enumerate() {
            let e = e
                .and_then(|e| e.payload_as::<ItemAdded>())
                .map_err(|e| BatchError::at(i, e))?;
            sum = sum.wrapping_add(e.qty);
        }
        self.sum.fetch_add(sum, Ordering::Relaxed);
        Ok(())
    }
}

/// Loading (not timed): `per_uow` appends per unit of work, each appending `events` to
/// its stream at the given expected version.
pub(crate) async fn load(
    es: &EventStore,
    store: &Store,
    appends: impl Iterator<Item = (String, u64, Vec<ItemAdded>)>,
    per_uow: usize,
) -> Result<u64> {
    let mut n = 0_u64;
    let mut uow = store.begin().await?;
    let mut in_uow = 0;
    for (stream, expected, events) in appends {
        let data = events
            .iter()
            .map(|e| EventData::new(ITEM_ADDED, e))
            .collect::<larder::Result<Vec<_>>>()?;
        es.append(&mut uow, &stream, ExpectedVersion::Exact(expected), data)
            .await?;
        n += events.len() as u64;
        in_uow += 1;
        if in_uow == per_uow {
            uow.commit().await?;
            uow = store.begin().await?;
            in_uow = 0;
        }
    }
    uow.commit().await?;
    Ok(n)
}
