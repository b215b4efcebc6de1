//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): every hook here compiles to nothing without the feature.
//!
//! The metrics and their labels are listed in the crate docs ("Metrics").
//! Handles are registered once per task name and phase and kept by the
//! `Background`: a recorder's own lookup (hashing the labels, locking its
//! registry) would otherwise run six times per task.

use crate::TaskError;
use crate::registry::TaskCell;

#[cfg(feature = "metrics")]
pub(crate) use enabled::{Instruments, TaskInstruments};

#[cfg(feature = "metrics")]
mod enabled {
    use std::sync::Arc;

    use dashmap::DashMap;
    use metrics::{Counter, Gauge, Histogram, SharedString};
    use rustc_hash::FxBuildHasher;

    use crate::Phase;
    use crate::registry::TaskCell;
    use crate::task::TaskName;

    const SCHEDULED: &str = "background_tasks_scheduled_total";
    const ENDED: &str = "background_tasks_ended_total";
    const IN_FLIGHT: &str = "background_tasks_in_flight";
    const QUEUED: &str = "background_tasks_queued";
    const QUEUE_WAIT: &str = "background_task_queue_wait_seconds";
    const RUN: &str = "background_task_run_seconds";
    const OUTCOMES: [&str; 6] = [
        "completed",
        "failed",
        "panicked",
        "timed_out",
        "cancelled",
        "rejected",
    ];

    /// The handles of one task name in one phase.
    pub(crate) struct TaskInstruments {
        pub(super) scheduled: Counter,
        pub(super) queue_wait: Histogram,
        /// By outcome, in `OUTCOMES` order.
        pub(super) ended: [Counter; 6],
        pub(super) run: [Histogram; 6],
        pub(super) in_flight: Gauge,
        pub(super) queued: Gauge,
    }

    /// A `Background`'s metric handles, registered with the recorder
    /// installed when they are first needed.
    #[derive(Default)]
    pub(crate) struct Instruments {
        by_task: DashMap<(TaskName, Phase), Arc<TaskInstruments>, FxBuildHasher>,
    }

    impl Instruments {
        pub(crate) fn for_task(&self, cell: &TaskCell) -> Arc<TaskInstruments> {
            let key = (cell.name_key().clone(), cell.phase);
            if let Some(found) = self.by_task.get(&key) {
                return Arc::clone(found.value());
            }
            let (name, phase) = (SharedString::from(cell.name()), cell.phase.as_str());
            let made = Arc::new(TaskInstruments {
                scheduled: metrics::counter!(SCHEDULED, "name" => name.clone(), "phase" => phase),
                queue_wait: metrics::histogram!(QUEUE_WAIT, "name" => name.clone(), "phase" => phase),
                ended: OUTCOMES.map(|outcome| {
                    metrics::counter!(ENDED, "name" => name.clone(), "phase" => phase, "outcome" => outcome)
                }),
                run: OUTCOMES.map(|outcome| {
                    metrics::histogram!(RUN, "name" => name.clone(), "phase" => phase, "outcome" => outcome)
                }),
                in_flight: metrics::gauge!(IN_FLIGHT),
                queued: metrics::gauge!(QUEUED),
            });
            Arc::clone(self.by_task.entry(key).or_insert(made).value())
        }
    }

    impl std::fmt::Debug for Instruments {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Instruments")
                .field("task_kinds", &self.by_task.len())
                .finish()
        }
    }

    pub(super) fn outcome_index(outcome: &str) -> usize {
        OUTCOMES.iter().position(|o| *o == outcome).unwrap_or(4)
    }
}

/// A task was registered (queued).
#[inline]
pub(crate) fn scheduled(cell: &TaskCell) {
    #[cfg(feature = "metrics")]
    if let Some(instruments) = cell.instruments() {
        instruments.scheduled.increment(1);
        instruments.in_flight.increment(1.0);
        instruments.queued.increment(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = cell;
}

/// A task started running.
#[inline]
pub(crate) fn started(cell: &TaskCell) {
    #[cfg(feature = "metrics")]
    if let Some(instruments) = cell.instruments() {
        instruments.queued.decrement(1.0);
        instruments
            .queue_wait
            .record(cell.scheduled_at.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = cell;
}

/// A task ended with `outcome`; `was_started` says whether it ran.
#[inline]
pub(crate) fn ended(cell: &TaskCell, was_started: bool, outcome: Option<&Result<(), TaskError>>) {
    #[cfg(feature = "metrics")]
    if let Some(instruments) = cell.instruments() {
        let index = enabled::outcome_index(match outcome {
            Some(Ok(())) => "completed",
            Some(Err(error)) => error.kind(),
            None => "cancelled",
        });
        instruments.ended[index].increment(1);
        instruments.in_flight.decrement(1.0);
        if !was_started {
            instruments.queued.decrement(1.0);
        }
        if let Some(started_at) = cell.started_at() {
            instruments.run[index].record(started_at.elapsed().as_secs_f64());
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (cell, was_started, outcome);
}
