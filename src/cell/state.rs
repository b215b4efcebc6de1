//! Who may end a task: the claim protocol of its end, kept apart from the
//! rest of the cell so that a `loom` model can check it.
//!
//! # Invariants
//!
//! - `state` only moves forward: `QUEUED → RUNNING → FINISHING → ENDED`, or
//!   `QUEUED → FINISHING → ENDED` for a task that never starts.
//! - `RUNNING` is entered only by the task's runner ([`TaskState::try_start`]),
//!   and only from `QUEUED`.
//! - `FINISHING` is entered by one compare-and-swap ([`TaskState::claim`]):
//!   exactly one claimant wins. The winner decides the outcome (its `decide`
//!   runs before anyone can see the claim succeed) and reports the task,
//!   exactly once, unless it leaves the report to the runner.
//! - A canceller that claims a running task whose work can be interrupted
//!   (an async task) leaves the report to the runner, so that the task's
//!   future is dropped before its end is published: it sets `DELEGATED` in
//!   `handoff`. The runner sets `GONE` there once its work is over or
//!   dropped. Both are read-modify-writes of one atomic, so one of the two
//!   comes second and sees the other's bit: that one reports (the runner if
//!   `DELEGATED` came first, the canceller if `GONE` did), and only it.
//! - `ENDED` is entered once the report is done ([`TaskState::publish`]).
//! - `SUCCEEDED` (`CANCELLED`) is set, with `FINISHING`, only by a claim
//!   whose outcome is a success (a cancellation), and never cleared; at most
//!   one of the two is ever set.

#[cfg(axum_background_loom)]
use loom::sync::atomic::{AtomicU8, Ordering};
#[cfg(not(axum_background_loom))]
use std::sync::atomic::{AtomicU8, Ordering};

/// Registered, waiting for its phase, its turn, a slot or a worker.
const QUEUED: u8 = 0;
/// Its work has started.
const RUNNING: u8 = 1;
/// Its end is claimed: its outcome is decided and being reported (logged,
/// handed to its handler).
const FINISHING: u8 = 2;
/// Its outcome is published and it has left the registry.
const ENDED: u8 = 3;
/// The bits of `state` that hold one of the four above.
const STAGE: u8 = 3;
/// Set with `FINISHING` by a claim whose outcome is a success: a success
/// needs nothing stored besides (the common case stays cheap).
const SUCCEEDED: u8 = 4;
/// Set with `FINISHING` by a claim whose outcome is a cancellation: nor does
/// a cancellation (a shutdown cancels every task in flight at once).
const CANCELLED: u8 = 8;

/// An outcome the state records by itself, with the claim.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Recorded {
    Success,
    Cancellation,
    /// Stored by the claim's `decide`, outside the state.
    Elsewhere,
}

/// `handoff`: a canceller left the report of its claim to the runner.
const DELEGATED: u8 = 1;
/// `handoff`: the runner's work is over or dropped.
const GONE: u8 = 2;

/// Who claims a task's end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claimant {
    /// Its runner, the work over and dropped; also takes an end left to it.
    Runner,
    /// Its runner's guard, dropped: the runner is gone. Takes an end left to
    /// the runner, or claims the task if nobody has.
    RunnerGone,
    /// Someone for whom no runner will report (a rejection, a task ended
    /// while it waited to start).
    Unstarted,
    /// A canceller. `interruptible`: the task's work is dropped at its next
    /// poll (an async task), so a running task's report is left to its runner.
    Cancel { interruptible: bool },
    /// A canceller that claims only a task that has not started.
    CancelQueued,
}

/// What [`TaskState::claim`] gave the claimant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Claim {
    /// The end was claimed by someone else: do nothing.
    Lost,
    /// Report the task (`was_started`: whether it had started).
    Report { was_started: bool },
    /// Claimed; the runner reports once the work is dropped.
    LeftToRunner,
}

/// The claim protocol's state; see the module's invariants.
#[derive(Debug)]
pub(crate) struct TaskState {
    state: AtomicU8,
    /// `DELEGATED` and `GONE`: who reports a claim left to the runner.
    handoff: AtomicU8,
}

impl TaskState {
    pub(crate) fn new() -> Self {
        TaskState {
            state: AtomicU8::new(QUEUED),
            handoff: AtomicU8::new(0),
        }
    }

    /// `QUEUED → RUNNING`; false if the task's end was claimed first.
    pub(crate) fn try_start(&self) -> bool {
        // AcqRel: one of this and `claim`'s swap wins (atomicity); Release
        // makes the start's bookkeeping visible to a claimant that reads
        // `RUNNING`.
        self.state
            .compare_exchange(QUEUED, RUNNING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Claims the task's end for `claimant`. The winner's `decide` runs
    /// right after the claim, before any report can be made (it sets the
    /// outcome).
    /// `recorded`: whether the claimant's outcome is one the state records
    /// (then `decide` has nothing to store).
    #[inline]
    pub(crate) fn claim(
        &self,
        claimant: Claimant,
        recorded: Recorded,
        decide: impl FnOnce(),
    ) -> Claim {
        // Acquire: see `publish`. An ended task has been reported (a claim
        // left to the runner is reported before `ENDED`): nothing is left to
        // take. (The runner's guard, dropped after every task, checks
        // `is_ended` itself before it claims.)
        let current = self.state.load(Ordering::Acquire);
        if current & STAGE == ENDED {
            return Claim::Lost;
        }
        let to = match recorded {
            Recorded::Success => FINISHING | SUCCEEDED,
            Recorded::Cancellation => FINISHING | CANCELLED,
            Recorded::Elsewhere => FINISHING,
        };
        let won = match claimant {
            Claimant::CancelQueued => self.advance(current, to, |state| state == QUEUED),
            _ => self.advance(current, to, |state| state < FINISHING),
        };
        let Some(was_started) = won else {
            // Lost the swap: a report left to the runner may still be ours.
            let taken = match claimant {
                Claimant::Runner | Claimant::RunnerGone => self.runner_leaves(),
                _ => false,
            };
            return match taken {
                true => Claim::Report { was_started: true },
                false => Claim::Lost,
            };
        };
        decide();
        if let (
            Claimant::Cancel {
                interruptible: true,
            },
            true,
        ) = (claimant, was_started)
        {
            // Left to the runner, unless it has already left: then taken back.
            return match self.delegate() {
                true => Claim::Report { was_started },
                false => Claim::LeftToRunner,
            };
        }
        Claim::Report { was_started }
    }

    /// Moves the state to `FINISHING` if `from` allows the current one;
    /// `Some(was_started)` if this call did it.
    #[inline]
    fn advance(&self, mut current: u8, to: u8, from: impl Fn(u8) -> bool) -> Option<bool> {
        loop {
            if !from(current) {
                return None;
            }
            // AcqRel: exactly one claimant wins (atomicity); Acquire sees the
            // runner's work before it, Release publishes the claim to the
            // runner's next load.
            match self
                .state
                .compare_exchange(current, to, Ordering::AcqRel, Ordering::Acquire)
            {
                Ok(_) => return Some(current == RUNNING),
                Err(actual) => current = actual,
            }
        }
    }

    /// Leaves a claimed end's report to the runner. Returns whether the
    /// caller must report after all: the runner had already left.
    fn delegate(&self) -> bool {
        // AcqRel: the two read-modify-writes of `handoff` are ordered, so
        // exactly one of `delegate` and the runner's first `runner_leaves`
        // sees the other's bit; Release publishes the decided outcome to the
        // runner's Acquire.
        let before = self.handoff.fetch_or(DELEGATED, Ordering::AcqRel);
        before & GONE != 0
    }

    /// The runner's work is over or dropped: returns whether it must report
    /// an end left to it (true at most once).
    fn runner_leaves(&self) -> bool {
        // AcqRel: see `delegate`.
        let before = self.handoff.fetch_or(GONE, Ordering::AcqRel);
        before & GONE == 0 && before & DELEGATED != 0
    }

    /// `FINISHING → ENDED`, once the report is done.
    pub(crate) fn publish(&self) {
        // SeqCst: a reader that sees ENDED sees everything the report did;
        // and the cell's `wake_watchers` pairs with its `notified` (a store
        // then a load on each side).
        self.state.fetch_or(ENDED, Ordering::SeqCst);
    }

    pub(crate) fn is_ended(&self) -> bool {
        // SeqCst: see `publish`.
        self.state.load(Ordering::SeqCst) & STAGE == ENDED
    }

    /// The outcome recorded with the claim; `Elsewhere` also before the end
    /// is claimed.
    pub(crate) fn recorded(&self) -> Recorded {
        // Acquire: the bits are set by the claim's Release.
        let state = self.state.load(Ordering::Acquire);
        if state & SUCCEEDED != 0 {
            Recorded::Success
        } else if state & CANCELLED != 0 {
            Recorded::Cancellation
        } else {
            Recorded::Elsewhere
        }
    }

    /// The raw state, for `Debug`.
    pub(crate) fn peek(&self) -> u8 {
        self.state.load(Ordering::Relaxed)
    }
}

/// Every interleaving of a task's runner (it starts, works, ends the task,
/// then its guard drops), a canceller and shutdown (first its queued-only
/// pass, then its cut-off at the deadline): the task's end is decided once
/// and reported once, never before it is decided. Run by `.ci/run` with
/// `RUSTFLAGS="--cfg axum_background_loom" cargo test --lib loom`.
#[cfg(all(test, axum_background_loom))]
mod loom_model {
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicUsize, Ordering};
    use loom::thread;

    use super::{Claim, Claimant, Recorded, TaskState};

    struct Task {
        state: TaskState,
        decided: AtomicUsize,
        reports: AtomicUsize,
        left_to_runner: AtomicUsize,
    }

    impl Task {
        fn end(&self, claimant: Claimant) -> Claim {
            // The runner's work succeeded; everyone else claims a cancellation.
            let recorded = match claimant {
                Claimant::Runner => Recorded::Success,
                _ => Recorded::Cancellation,
            };
            let claim = self.state.claim(claimant, recorded, || {
                self.decided.fetch_add(1, Ordering::SeqCst);
            });
            match claim {
                Claim::Report { .. } => {
                    assert_eq!(
                        self.decided.load(Ordering::SeqCst),
                        1,
                        "reported before its outcome was decided"
                    );
                    self.reports.fetch_add(1, Ordering::SeqCst);
                    self.state.publish();
                }
                Claim::LeftToRunner => {
                    self.left_to_runner.fetch_add(1, Ordering::SeqCst);
                }
                Claim::Lost => {}
            }
            claim
        }
    }

    fn model(interruptible: bool, runner_starts: bool) {
        let mut builder = loom::model::Builder::new();
        // Three preemptions per run cover every protocol bug seen in
        // practice (loom's own advice) and keep a CI run to seconds.
        builder.preemption_bound.get_or_insert(3);
        builder.check(move || {
            let task = Arc::new(Task {
                state: TaskState::new(),
                decided: AtomicUsize::new(0),
                reports: AtomicUsize::new(0),
                left_to_runner: AtomicUsize::new(0),
            });
            let runner = {
                let task = Arc::clone(&task);
                thread::spawn(move || {
                    let started = runner_starts && task.state.try_start();
                    let ran = started.then(|| task.end(Claimant::Runner));
                    (ran, task.end(Claimant::RunnerGone))
                })
            };
            let canceller = {
                let task = Arc::clone(&task);
                thread::spawn(move || task.end(Claimant::Cancel { interruptible }))
            };
            let queued = task.end(Claimant::CancelQueued);
            let overdue = task.end(Claimant::Cancel { interruptible });
            let runner = runner.join().expect("runner");
            let canceller = canceller.join().expect("canceller");
            let claims = (runner, canceller, queued, overdue);
            assert_eq!(
                task.decided.load(Ordering::SeqCst),
                1,
                "decided once: {claims:?}"
            );
            assert_eq!(
                task.reports.load(Ordering::SeqCst),
                1,
                "reported once: {claims:?}"
            );
            assert!(task.state.is_ended());
            // The outcome is the runner's success only if its own claim won.
            let runner_won = matches!(claims.0.0, Some(Claim::Report { .. }))
                && task.left_to_runner.load(Ordering::SeqCst) == 0;
            let expected = if runner_won {
                Recorded::Success
            } else {
                Recorded::Cancellation
            };
            assert_eq!(task.state.recorded(), expected, "{claims:?}");
        });
    }

    #[test]
    fn loom_async_task_ends_once_and_is_reported_once() {
        model(true, true);
    }

    #[test]
    fn loom_sync_task_ends_once_and_is_reported_once() {
        model(false, true);
    }

    #[test]
    fn loom_task_dropped_before_it_starts_ends_once() {
        model(true, false);
    }
}
