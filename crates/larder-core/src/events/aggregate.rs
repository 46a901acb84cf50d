//! Event-sourced aggregates: load = newest snapshot + tail, save = append with the loaded
//! version as the expected version.

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::store::EventStore;
use super::types::{
    AppendResult, DomainEvent, EventData, ExpectedVersion, ReadDirection, Snapshot,
};
use crate::error::{Error, Result};
use crate::uow::Uow;

/// An event-sourced aggregate's state: how events change it and how commands become events.
///
/// ```
/// use larder_core::events::{DomainEvent, EventSourced};
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Serialize, Deserialize)]
/// enum CartEvent { ItemAdded { sku: String }, CheckedOut }
/// impl DomainEvent for CartEvent {
///     const TYPES: &'static [&'static str] = &["ItemAdded", "CheckedOut"];
///     fn event_type(&self) -> &'static str {
///         match self { CartEvent::ItemAdded { .. } => "ItemAdded", CartEvent::CheckedOut => "CheckedOut" }
///     }
/// }
///
/// #[derive(Debug, Default, Serialize, Deserialize)]
/// struct Cart { items: Vec<String>, checked_out: bool }
///
/// enum CartCommand { Add(String), CheckOut }
///
/// impl EventSourced for Cart {
///     type Event = CartEvent;
///     type Command = CartCommand;
///     type Error = String;
///     const CATEGORY: &'static str = "cart";
///     fn apply(&mut self, e: &CartEvent) {
///         match e {
///             CartEvent::ItemAdded { sku } => self.items.push(sku.clone()),
///             CartEvent::CheckedOut => self.checked_out = true,
///         }
///     }
///     fn decide(&self, c: CartCommand) -> Result<Vec<CartEvent>, String> {
///         if self.checked_out { return Err("cart is checked out".into()); }
///         Ok(match c {
///             CartCommand::Add(sku) => vec![CartEvent::ItemAdded { sku }],
///             CartCommand::CheckOut => vec![CartEvent::CheckedOut],
///         })
///     }
/// }
/// ```
pub trait EventSourced: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// The events it is made of.
    type Event: DomainEvent;
    /// What it is asked to do.
    type Command;
    /// Why it refuses.
    type Error;

    /// The stream category: aggregate `42` lives in stream `<CATEGORY>-42`. No `-`.
    const CATEGORY: &'static str;

    /// Take a snapshot every this many events (`None`: never). The event store's
    /// [`snapshot_every`](super::EventStoreBuilder::snapshot_every) overrides it.
    const SNAPSHOT_EVERY: Option<u64> = None;

    /// The snapshot schema: snapshots of another version are ignored (the stream is
    /// replayed from the start) and replaced at the next snapshot.
    const SNAPSHOT_VERSION: u32 = 1;

    /// Applies an event to the state (must not fail: the event happened).
    fn apply(&mut self, event: &Self::Event);

    /// Decides which events a command produces, from the current state.
    fn decide(&self, command: Self::Command) -> std::result::Result<Vec<Self::Event>, Self::Error>;
}

/// A loaded aggregate: its state, its version and the events not saved yet.
pub struct Aggregate<A: EventSourced> {
    stream_id: String,
    version: u64,
    state: A,
    pending: Vec<A::Event>,
}

impl<A: EventSourced + fmt::Debug> fmt::Debug for Aggregate<A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aggregate")
            .field("stream_id", &self.stream_id)
            .field("version", &self.version)
            .field("state", &self.state)
            .field("pending", &self.pending.len())
            .finish()
    }
}

impl<A: EventSourced> Aggregate<A> {
    /// A new, empty aggregate with this id (stream `<CATEGORY>-<id>`).
    pub fn new(id: &str) -> Aggregate<A> {
        Aggregate {
            stream_id: format!("{}-{id}", A::CATEGORY),
            version: 0,
            state: A::default(),
            pending: Vec::new(),
        }
    }

    /// Its stream.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// Its id (the stream id without the category).
    pub fn id(&self) -> &str {
        &self.stream_id[A::CATEGORY.len() + 1..]
    }

    /// The version it was loaded (or last saved) at: 0 if it has no events yet.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Its current state (pending events included).
    pub fn state(&self) -> &A {
        &self.state
    }

    /// Events decided but not saved yet.
    pub fn pending(&self) -> &[A::Event] {
        &self.pending
    }

    /// Runs a command: decides, applies the events to the state and queues them for
    /// [`EventStore::save`].
    pub fn handle(&mut self, command: A::Command) -> std::result::Result<(), A::Error> {
        let events = self.state.decide(command)?;
        for e in events {
            self.record(e);
        }
        Ok(())
    }

    /// Applies and queues one event.
    pub fn record(&mut self, event: A::Event) {
        self.state.apply(&event);
        self.pending.push(event);
    }
}

impl EventStore {
    fn snapshot_every<A: EventSourced>(&self) -> Option<u64> {
        self.inner
            .snapshot_every
            .get(A::CATEGORY)
            .copied()
            .or(A::SNAPSHOT_EVERY)
            .filter(|n| *n > 0)
    }

    /// Loads aggregate `id`: its newest usable snapshot, then the events after it
    /// (upcast, decoded as `A::Event`; an undeclared type is [`Error::UnknownEventType`]).
    /// A missing stream gives a new aggregate at version 0.
    pub async fn load<A: EventSourced>(&self, uow: &mut Uow, id: &str) -> Result<Aggregate<A>> {
        let mut agg = Aggregate::<A>::new(id);
        self.check_stream(&agg.stream_id)?;
        if self.snapshot_every::<A>().is_some()
            && let Some(s) = self.load_snapshot(uow, &agg.stream_id).await?
            && s.schema_version == A::SNAPSHOT_VERSION
        {
            agg.state = serde_json::from_str(&s.state).map_err(|e| Error::Mapping {
                entity: "snapshot",
                direction: "decode",
                source: Box::new(e),
            })?;
            agg.version = s.stream_version;
        }
        let page = self.limits().max_read.min(1_000);
        loop {
            let events = self
                .read_stream(
                    uow,
                    &agg.stream_id.clone(),
                    agg.version + 1,
                    page,
                    ReadDirection::Forward,
                )
                .await?;
            let n = events.len();
            for e in &events {
                agg.state.apply(&e.decode::<A::Event>()?);
                agg.version = e.stream_version;
            }
            if n < page as usize {
                return Ok(agg);
            }
        }
    }

    /// Appends the aggregate's pending events with the loaded version as the expected
    /// version (a concurrent writer makes this [`Error::Conflict`]), and snapshots it when
    /// it crosses a multiple of its snapshot interval. `None` when nothing was pending.
    pub async fn save<A: EventSourced>(
        &self,
        uow: &mut Uow,
        agg: &mut Aggregate<A>,
    ) -> Result<Option<AppendResult>> {
        if agg.pending.is_empty() {
            return Ok(None);
        }
        let data = agg
            .pending
            .iter()
            .map(EventData::from_event)
            .collect::<Result<Vec<_>>>()?;
        let expected = if agg.version == 0 {
            ExpectedVersion::NoStream
        } else {
            ExpectedVersion::Exact(agg.version)
        };
        let r = self
            .append(uow, &agg.stream_id.clone(), expected, data)
            .await?;
        let before = agg.version;
        agg.version = r.stream_version;
        agg.pending.clear();
        if let Some(every) = self.snapshot_every::<A>()
            && before / every != agg.version / every
        {
            let state = serde_json::to_string(&agg.state).map_err(|e| Error::Mapping {
                entity: "snapshot",
                direction: "encode",
                source: Box::new(e),
            })?;
            let snap = Snapshot {
                stream_id: agg.stream_id.clone(),
                stream_version: agg.version,
                schema_version: A::SNAPSHOT_VERSION,
                state,
            };
            self.save_snapshot(uow, &snap).await?;
        }
        Ok(Some(r))
    }
}
