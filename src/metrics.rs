//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): every hook here compiles to nothing without the feature.
//!
//! The metrics and their labels are listed in the crate docs ("Metrics").

use crate::TaskError;
use crate::registry::TaskCell;

/// Names of the metrics, for recorders and dashboards.
#[cfg(feature = "metrics")]
pub(crate) mod names {
    pub(crate) const SCHEDULED: &str = "background_tasks_scheduled_total";
    pub(crate) const ENDED: &str = "background_tasks_ended_total";
    pub(crate) const IN_FLIGHT: &str = "background_tasks_in_flight";
    pub(crate) const QUEUED: &str = "background_tasks_queued";
    pub(crate) const QUEUE_WAIT: &str = "background_task_queue_wait_seconds";
    pub(crate) const RUN: &str = "background_task_run_seconds";
}

/// A task was registered (queued).
#[inline]
pub(crate) fn scheduled(cell: &TaskCell) {
    #[cfg(feature = "metrics")]
    {
        let labels = [
            ("name", cell.name().into_owned()),
            ("phase", cell.phase.as_str().to_owned()),
        ];
        metrics::counter!(names::SCHEDULED, &labels).increment(1);
        metrics::gauge!(names::IN_FLIGHT).increment(1.0);
        metrics::gauge!(names::QUEUED).increment(1.0);
    }
    #[cfg(not(feature = "metrics"))]
    let _ = cell;
}

/// A task started running.
#[inline]
pub(crate) fn started(cell: &TaskCell) {
    #[cfg(feature = "metrics")]
    {
        let labels = [
            ("name", cell.name().into_owned()),
            ("phase", cell.phase.as_str().to_owned()),
        ];
        metrics::gauge!(names::QUEUED).decrement(1.0);
        metrics::histogram!(names::QUEUE_WAIT, &labels)
            .record(cell.scheduled_at.elapsed().as_secs_f64());
    }
    #[cfg(not(feature = "metrics"))]
    let _ = cell;
}

/// A task ended with `outcome`; `was_started` says whether it ran.
#[inline]
pub(crate) fn ended(cell: &TaskCell, was_started: bool, outcome: Option<&Result<(), TaskError>>) {
    #[cfg(feature = "metrics")]
    {
        let outcome = match outcome {
            Some(Ok(())) => "completed",
            Some(Err(error)) => error.kind(),
            None => "cancelled",
        };
        let labels = [
            ("name", cell.name().into_owned()),
            ("phase", cell.phase.as_str().to_owned()),
            ("outcome", outcome.to_owned()),
        ];
        metrics::counter!(names::ENDED, &labels).increment(1);
        metrics::gauge!(names::IN_FLIGHT).decrement(1.0);
        if !was_started {
            metrics::gauge!(names::QUEUED).decrement(1.0);
        }
        if let Some(started_at) = cell.started_at() {
            metrics::histogram!(names::RUN, &labels).record(started_at.elapsed().as_secs_f64());
        }
    }
    #[cfg(not(feature = "metrics"))]
    let _ = (cell, was_started, outcome);
}
