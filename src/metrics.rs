//! Metrics through the [`metrics`](https://docs.rs/metrics) facade (feature
//! `metrics`): every hook here compiles to nothing without the feature.
//!
//! The metrics and their labels are listed in the crate docs ("Metrics").
//! Handles are registered once per task name and phase and kept by the
//! `Background`: a recorder's own lookup (hashing the labels, locking its
//! registry) would otherwise run six times per task. Each thread also keeps
//! the few handle sets it used last, so that a task's lookup is usually a
//! pointer comparison rather than a hash and a shard lock.

#[cfg(feature = "metrics")]
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::Phase;
use crate::TaskError;
use crate::name::TaskName;

#[cfg(feature = "metrics")]
mod enabled {
    use std::cell::RefCell;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use dashmap::DashMap;
    use metrics::{Counter, Gauge, Histogram, SharedString};
    use rustc_hash::FxBuildHasher;

    use crate::Phase;
    use crate::name::TaskName;
    use crate::outcome::OutcomeKind;

    const SCHEDULED: &str = "background_tasks_scheduled_total";
    const ENDED: &str = "background_tasks_ended_total";
    const IN_FLIGHT: &str = "background_tasks_in_flight";
    const QUEUED: &str = "background_tasks_queued";
    const QUEUE_WAIT: &str = "background_task_queue_wait_seconds";
    const RUN: &str = "background_task_run_seconds";
    const BLOCKING: &str = "background_tasks_blocking_total";
    const OUTCOMES: usize = OutcomeKind::ALL.len();

    /// The handles of one task name in one phase.
    pub(crate) struct TaskInstruments {
        pub(super) scheduled: Counter,
        pub(super) queue_wait: Histogram,
        /// By outcome, in [`OutcomeKind::index`] order.
        pub(super) ended: [Counter; OUTCOMES],
        pub(super) run: [Histogram; OUTCOMES],
        pub(super) in_flight: Gauge,
        pub(super) queued: Gauge,
        pub(super) blocking: Counter,
    }

    /// A `Background`'s metric handles, registered with the recorder
    /// installed when they are first needed.
    pub(crate) struct Instruments {
        /// Tells this `Background`'s entries in the per-thread caches from
        /// those of another (an address could be reused after a drop).
        id: u64,
        by_task: DashMap<(TaskName, Phase), Arc<TaskInstruments>, FxBuildHasher>,
    }

    /// How many handle sets each thread keeps: enough for the few task kinds
    /// an application's hot endpoints schedule in turn.
    const CACHED: usize = 4;

    /// One handle set a thread used recently.
    struct Cached {
        owner: u64,
        name: TaskName,
        phase: Phase,
        instruments: Arc<TaskInstruments>,
    }

    thread_local! {
        /// The handle sets this thread used last, replaced in turn.
        static RECENT: RefCell<(usize, [Option<Cached>; CACHED])> =
            const { RefCell::new((0, [const { None }; CACHED])) };
    }

    impl Default for Instruments {
        fn default() -> Self {
            static NEXT: AtomicU64 = AtomicU64::new(0);
            Instruments {
                // Relaxed: uniqueness needs only the atomicity of the add.
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                by_task: DashMap::default(),
            }
        }
    }

    impl Instruments {
        /// The handles of a task called `name` in `phase`: from this thread's
        /// cache, else from the `Background`'s map, else registered now.
        pub(crate) fn for_task(&self, name: &TaskName, phase: Phase) -> Arc<TaskInstruments> {
            let cached = RECENT
                .try_with(|recent| {
                    let recent = recent.borrow();
                    recent.1.iter().flatten().find_map(|entry| {
                        (entry.owner == self.id && entry.phase == phase && entry.name.same(name))
                            .then(|| Arc::clone(&entry.instruments))
                    })
                })
                .ok()
                .flatten();
            if let Some(instruments) = cached {
                return instruments;
            }
            let instruments = self.lookup(name, phase);
            // A thread being torn down keeps no cache; nothing is lost.
            let _ = RECENT.try_with(|recent| {
                let mut recent = recent.borrow_mut();
                let slot = recent.0;
                recent.0 = (slot + 1) % CACHED;
                recent.1[slot] = Some(Cached {
                    owner: self.id,
                    name: name.clone(),
                    phase,
                    instruments: Arc::clone(&instruments),
                });
            });
            instruments
        }

        fn lookup(&self, name: &TaskName, phase: Phase) -> Arc<TaskInstruments> {
            let key = (name.clone(), phase);
            if let Some(found) = self.by_task.get(&key) {
                return Arc::clone(found.value());
            }
            let (name, phase) = (SharedString::from(name.get()), phase.as_str());
            let made = Arc::new(TaskInstruments {
                scheduled: metrics::counter!(SCHEDULED, "name" => name.clone(), "phase" => phase),
                queue_wait: metrics::histogram!(QUEUE_WAIT, "name" => name.clone(), "phase" => phase),
                ended: OutcomeKind::ALL.map(|outcome| {
                    metrics::counter!(ENDED, "name" => name.clone(), "phase" => phase, "outcome" => outcome.label())
                }),
                run: OutcomeKind::ALL.map(|outcome| {
                    metrics::histogram!(RUN, "name" => name.clone(), "phase" => phase, "outcome" => outcome.label())
                }),
                in_flight: metrics::gauge!(IN_FLIGHT),
                queued: metrics::gauge!(QUEUED),
                blocking: metrics::counter!(BLOCKING, "name" => name.clone(), "phase" => phase),
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

    /// The slot of `outcome` (no ending outcome means the task was cancelled).
    pub(super) fn outcome_index(outcome: Option<&Result<(), crate::TaskError>>) -> usize {
        outcome
            .map_or(OutcomeKind::Cancelled, OutcomeKind::of)
            .index()
    }

    #[cfg(test)]
    pub(super) fn outcome_label(outcome: Option<&Result<(), crate::TaskError>>) -> &'static str {
        OutcomeKind::ALL[outcome_index(outcome)].label()
    }
}

/// A `Background`'s metric handles, registered with the recorder installed
/// when they are first needed (nothing without the feature).
#[derive(Debug, Default)]
pub(crate) struct Instruments {
    #[cfg(feature = "metrics")]
    enabled: enabled::Instruments,
}

impl Instruments {
    /// The handles of a task called `name` in `phase`.
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn for_task(&self, name: &TaskName, phase: Phase) -> TaskMetrics {
        TaskMetrics {
            #[cfg(feature = "metrics")]
            instruments: self.enabled.for_task(name, phase),
        }
    }
}

/// One task's metric handles (nothing without the feature): what the task
/// reports as it is scheduled, starts and ends.
pub(crate) struct TaskMetrics {
    #[cfg(feature = "metrics")]
    instruments: Arc<enabled::TaskInstruments>,
}

impl TaskMetrics {
    /// The task was registered (queued).
    #[inline]
    pub(crate) fn scheduled(&self) {
        #[cfg(feature = "metrics")]
        {
            let instruments = &self.instruments;
            instruments.scheduled.increment(1);
            instruments.in_flight.increment(1.0);
            instruments.queued.increment(1.0);
        }
    }

    /// The task started running, `waited` after it was scheduled.
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn started(&self, waited: Duration) {
        #[cfg(feature = "metrics")]
        {
            let instruments = &self.instruments;
            instruments.queued.decrement(1.0);
            instruments.queue_wait.record(waited.as_secs_f64());
        }
    }

    /// The task was seen blocking its runtime worker thread (once per task).
    #[inline]
    pub(crate) fn blocked(&self) {
        #[cfg(feature = "metrics")]
        self.instruments.blocking.increment(1);
    }

    /// The task ended with `outcome`; `was_started` says whether it ran,
    /// `started_at` since when (read only with the feature).
    #[inline]
    #[cfg_attr(not(feature = "metrics"), allow(unused_variables))]
    pub(crate) fn ended(
        &self,
        was_started: bool,
        outcome: Option<&Result<(), TaskError>>,
        started_at: impl FnOnce() -> Option<Instant>,
    ) {
        #[cfg(feature = "metrics")]
        {
            let instruments = &self.instruments;
            let index = enabled::outcome_index(outcome);
            instruments.ended[index].increment(1);
            instruments.in_flight.decrement(1.0);
            if !was_started {
                instruments.queued.decrement(1.0);
            }
            if let Some(started_at) = started_at() {
                instruments.run[index].record(started_at.elapsed().as_secs_f64());
            }
        }
    }
}

#[cfg(all(test, feature = "metrics"))]
mod tests {
    use std::sync::Arc;

    use crate::{RejectReason, TaskError};

    #[test]
    fn each_outcome_is_counted_under_its_own_label() {
        let errors = [
            TaskError::Failed(Arc::new(std::fmt::Error)),
            TaskError::Panicked(Arc::from("boom")),
            TaskError::TimedOut,
            TaskError::Cancelled,
            TaskError::Rejected(RejectReason::ShuttingDown),
        ];
        assert_eq!(super::enabled::outcome_label(Some(&Ok(()))), "completed");
        assert_eq!(super::enabled::outcome_label(None), "cancelled");
        for error in errors {
            let outcome = Err(error);
            let error = outcome.as_ref().unwrap_err();
            assert_eq!(super::enabled::outcome_label(Some(&outcome)), error.kind());
        }
    }
}
