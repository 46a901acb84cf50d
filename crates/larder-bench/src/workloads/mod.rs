//! The registry of workloads (WORKLOADS.md). Each workload runs larder and raw sqlx on the
//! same fresh database, alternating which side goes first, `runs` times, and returns one
//! [`Metric`] per reported line. New workloads (event store, outbox) register here.

use futures_util::future::LocalBoxFuture;

use crate::backends::Target;
use crate::measure::Metric;

mod migrations;
mod w5;
mod w7;
mod w8;

/// Workload sizes.
#[derive(Debug, Clone)]
pub(crate) struct Sizes {
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
        id: "w5",
        title: "insert / get / update, one unit of work each",
        run: |cx| Box::pin(w5::run(cx)),
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
        id: "migrations",
        title: "apply 1,000 migrations over 10 modules; status with 1,000 applied",
        run: |cx| Box::pin(migrations::run(cx)),
    },
];
