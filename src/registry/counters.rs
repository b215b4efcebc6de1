//! Outcome counters and the [`Stats`] snapshot.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::TaskError;
use crate::outcome::OutcomeKind;

/// Counters of everything a [`Background`](crate::Background) has scheduled.
///
/// Whenever nothing is changing (after [`wait_idle`](crate::Background::wait_idle),
/// after `shutdown`):
///
/// `scheduled == queued + running + completed + failed + panicked + timed_out + cancelled + rejected`
///
/// A snapshot taken under load is off by at most the tasks changing state
/// while it is read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "a snapshot of the counters does nothing by itself"]
pub struct Stats {
    /// Every `schedule` call, rejected ones included (but for a unique
    /// task's duplicate, which is not a task: it returns the holder's handle).
    pub scheduled: u64,
    /// Waiting to start: for their phase, or for a slot.
    pub queued: u64,
    /// Started and not yet ended (their error handler included).
    pub running: u64,
    /// Ended with success.
    pub completed: u64,
    /// Ended by returning an error.
    pub failed: u64,
    /// Ended by panicking.
    pub panicked: u64,
    /// Ended by running past their timeout.
    pub timed_out: u64,
    /// Ended by cancellation.
    pub cancelled: u64,
    /// Never admitted.
    pub rejected: u64,
}

impl Stats {
    /// Tasks in flight: `queued + running`.
    pub fn in_flight(&self) -> u64 {
        self.queued + self.running
    }

    /// Tasks that have ended, whatever the outcome.
    pub fn ended(&self) -> u64 {
        self.completed
            + self.failed
            + self.panicked
            + self.timed_out
            + self.cancelled
            + self.rejected
    }
}

/// The live counters behind [`Stats`].
///
/// Each counts events and only goes up, so a task touches three of them
/// (scheduled, started, ended) and nothing is counted twice; `queued` and
/// `running` are what lies between, worked out when read.
///
/// Every counter is a statistic, not a synchronisation point: `Relaxed`
/// suffices, and `Registry::end` publishes them with the `Release` decrement
/// of the in-flight count that `wait_idle` reads with `Acquire`.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    scheduled: AtomicU64,
    started: AtomicU64,
    /// Ended tasks, by [`OutcomeKind::index`].
    ended: [AtomicU64; OutcomeKind::ALL.len()],
    /// Of those, the ones that never started (rejected, or ended while
    /// queued): few, so a task that starts pays nothing for this.
    ended_unstarted: AtomicU64,
}

impl Counters {
    pub(crate) fn scheduled(&self) {
        self.scheduled.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn started(&self) {
        self.started.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn ended(&self, was_started: bool, outcome: &Result<(), TaskError>) {
        if !was_started {
            self.ended_unstarted.fetch_add(1, Ordering::Relaxed);
        }
        self.ended[OutcomeKind::of(outcome).index()].fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn snapshot(&self) -> Stats {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let ended = |kind: OutcomeKind| read(&self.ended[kind.index()]);
        // A task is counted scheduled, then started, then ended: read in the
        // other order, an end seen comes with its start and its schedule, and
        // the differences below stay whole. (Saturated all the same: the
        // loads are `Relaxed`, and a snapshot under load is approximate.)
        let ends = Stats {
            completed: ended(OutcomeKind::Completed),
            failed: ended(OutcomeKind::Failed),
            panicked: ended(OutcomeKind::Panicked),
            timed_out: ended(OutcomeKind::TimedOut),
            cancelled: ended(OutcomeKind::Cancelled),
            rejected: ended(OutcomeKind::Rejected),
            ..Stats::default()
        };
        let unstarted = read(&self.ended_unstarted);
        let started = read(&self.started);
        let scheduled = read(&self.scheduled);
        Stats {
            scheduled,
            queued: scheduled.saturating_sub(started).saturating_sub(unstarted),
            running: started.saturating_sub(ends.ended().saturating_sub(unstarted)),
            ..ends
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `queued` and `running` are what lies between the events counted:
    /// a task that ended without starting leaves neither.
    #[test]
    fn queued_and_running_are_worked_out_from_the_events() {
        let counters = Counters::default();
        for _ in 0..5 {
            counters.scheduled();
        }
        counters.started();
        counters.started();
        counters.started();
        counters.ended(true, &Ok(()));
        counters.ended(false, &Err(TaskError::Cancelled));
        let stats = counters.snapshot();
        assert_eq!(
            (stats.scheduled, stats.queued, stats.running),
            (5, 1, 2),
            "{stats:?}"
        );
        assert_eq!((stats.completed, stats.cancelled), (1, 1), "{stats:?}");
        assert_eq!(stats.scheduled, stats.in_flight() + stats.ended());
    }
}
