//! The registry of workloads (WORKLOADS.md). Each workload runs larder and raw sqlx on the
//! same fresh database, alternating which side goes first, `runs` times, and returns one
//! [`Metric`] per reported line. New workloads register here.

use futures_util::future::LocalBoxFuture;

use crate::backends::Target;
use crate::measure::Metric;

mod blob;
pub(crate) mod events;
mod migrations;
mod outbox;
mod relay;
mod w5;
mod w6;
mod w7;
mod w8;
mod w8e;

/// Workload sizes.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
    /// W1 (and the W3/W4 log): streams.
    pub(crate) w1_streams: usize,
    /// W1: events per stream, one unit of work each.
    pub(crate) w1_events: usize,
    /// W2 (and the W4 log): streams.
    pub(crate) w2_streams: usize,
    /// W2: events per stream, all in one unit of work.
    pub(crate) w2_events: usize,
    /// W4: passes over the log per side and run.
    pub(crate) w4_passes: u32,
    /// W6: concurrent writers.
    pub(crate) w6_writers: usize,
    /// W6: single-event units of work per writer.
    pub(crate) w6_events: usize,
    /// W8-events: events replayed.
    pub(crate) w8e_events: usize,
    /// W5: inserts, gets and updates per side and run.
    pub(crate) w5_ops: usize,
    /// W7: entities loaded.
    pub(crate) w7_rows: usize,
    /// W7: queries per side and run.
    pub(crate) w7_queries: usize,
    /// W8: entities streamed.
    pub(crate) w8_rows: usize,
    /// M1/M2: migrations applied (across 10 modules).
    pub(crate) migrations: usize,
}

impl Sizes {
    /// The sizes WORKLOADS.md specifies.
    pub(crate) fn full() -> Sizes {
        Sizes {
            w1_streams: 2_000,
            w1_events: 5,
            w2_streams: 200,
            w2_events: 50,
            w4_passes: 3,
            w6_writers: 8,
            w6_events: 2_000,
            w8e_events: 1_000_000,
            w5_ops: 5_000,
            w7_rows: 100_000,
            w7_queries: 2_000,
            w8_rows: 1_000_000,
            migrations: 1_000,
        }
    }

    /// A smoke-test run.
    pub(crate) fn quick() -> Sizes {
        Sizes {
            w1_streams: 200,
            w1_events: 5,
            w2_streams: 20,
            w2_events: 50,
            w4_passes: 3,
            w6_writers: 8,
            w6_events: 200,
            w8e_events: 100_000,
            w5_ops: 500,
            w7_rows: 20_000,
            w7_queries: 200,
            w8_rows: 100_000,
            migrations: 100,
        }
    }
}

/// What a workload gets to run with.
#[derive(Debug)]
pub(crate) struct Ctx<'a> {
    /// Where fresh databases come from.
    pub(crate) target: &'a Target,
    /// Sizes.
    pub(crate) sizes: &'a Sizes,
    /// Runs per side (alternating order); medians are reported.
    pub(crate) runs: u32,
}

/// Runs a workload.
pub(crate) type RunFn = for<'a> fn(&'a Ctx<'a>) -> LocalBoxFuture<'a, anyhow::Result<Vec<Metric>>>;

/// A registered workload.
#[derive(Debug)]
pub(crate) struct Workload {
    /// The id used on the command line (`w5`).
    pub(crate) id: &'static str,
    /// What it measures.
    pub(crate) title: &'static str,
    /// The runner.
    pub(crate) run: RunFn,
}

/// Every workload, in the order they run.
pub(crate) const REGISTRY: &[Workload] = &[
    Workload {
        id: "w1",
        title: "event store: append-single, one unit of work per event, expected version",
        run: |cx| Box::pin(events::w1(cx)),
    },
    Workload {
        id: "w2",
        title: "event store: append-batch, all events of a new stream in one unit of work",
        run: |cx| Box::pin(events::w2(cx)),
    },
    Workload {
        id: "w3",
        title: "event store: read each W1 stream fully, decoded",
        run: |cx| Box::pin(events::w3(cx)),
    },
    Workload {
        id: "w4",
        title: "event store: read the whole global log in pages of 1,000, decoded",
        run: |cx| Box::pin(events::w4(cx)),
    },
    Workload {
        id: "w5",
        title: "insert / get / update, one unit of work each",
        run: |cx| Box::pin(w5::run(cx)),
    },
    Workload {
        id: "w6",
        title: "event store: concurrent single-event appends (PostgreSQL)",
        run: |cx| Box::pin(w6::run(cx)),
    },
    Workload {
        id: "w6c",
        title: "event store: 8, 16 and 32 writers on shared streams, retries counted (PostgreSQL)",
        run: |cx| Box::pin(w6::contended(cx)),
    },
    Workload {
        id: "w7",
        title: "find: two-field specification + order + page of 50",
        run: |cx| Box::pin(w7::run(cx)),
    },
    Workload {
        id: "w8",
        title: "stream every entity, decoded",
        run: |cx| Box::pin(w8::run(cx)),
    },
    Workload {
        id: "w8e",
        title: "event store: replay the log through a projection (and stream_all)",
        run: |cx| Box::pin(w8e::run(cx)),
    },
    Workload {
        id: "b1",
        title: "blobs: put and get of 1 KiB and 64 MiB objects, larder vs object_store (filesystem)",
        run: |cx| Box::pin(blob::b1(cx)),
    },
    Workload {
        id: "b2",
        title: "blobs: put and get of 1 KiB and 64 MiB objects, larder vs the same object_store S3 client (moto)",
        run: |cx| Box::pin(blob::b2(cx)),
    },
    Workload {
        id: "o1",
        title: "outbox: insert an entity and enqueue a message, one unit of work each",
        run: |cx| Box::pin(outbox::o1(cx)),
    },
    Workload {
        id: "o2",
        title: "outbox relay throughput: 20,000 committed messages to Redis Streams, NATS JetStream, RabbitMQ (1 and 4 relays) vs the broker client alone",
        run: |cx| Box::pin(relay::o2(cx)),
    },
    Workload {
        id: "o3",
        title: "outbox end-to-end latency: commit → Redis Streams consumer, relay woken by in-process signal / LISTEN/NOTIFY",
        run: |cx| Box::pin(relay::o3(cx)),
    },
    Workload {
        id: "migrations",
        title: "apply 1,000 migrations over 10 modules; status with 1,000 applied",
        run: |cx| Box::pin(migrations::run(cx)),
    },
];
