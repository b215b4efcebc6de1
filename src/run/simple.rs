//! The small runner: a task that runs once, with nothing to wait for but
//! its turn, polled in place.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use pin_project_lite::pin_project;
use tokio::sync::OwnedSemaphorePermit;

use super::Job;
use super::attempts::classify;
use crate::end::{Ending, How, Report, RunnerGuard};
use crate::limits::Permit;
use crate::mode::ModeKind;
use crate::request::Turn;
use crate::task::Attempts;
use crate::{BoxError, TaskError};

impl<A: Attempts> Job<A> {
    /// The runner of a task with nothing to wait for: one attempt, polled in
    /// place, the task's own future stored once.
    pub(crate) fn run_simple(
        self,
    ) -> SimpleRun<impl Future<Output = Result<(), BoxError>> + Send + 'static> {
        let slot = match self.slot {
            Some(Permit::Held(permit)) => Some(permit),
            _ => None,
        };
        let stage = match self.attempts.into_single_attempt() {
            Some(work) => Stage::Work {
                work: AssertUnwindSafe(work).catch_unwind(),
            },
            None => Stage::Done,
        };
        SimpleRun {
            stage,
            guard: self.guard,
            turn: self.turn,
            slot,
        }
    }
}

pin_project! {
    /// Where a [`SimpleRun`] is: its work, then (after a failure) its report.
    #[project = StageProj]
    enum Stage<W> {
        Work {
            #[pin]
            work: CatchUnwind<AssertUnwindSafe<W>>,
        },
        Reporting {
            report: Report,
        },
        Done,
    }
}

pin_project! {
    /// The future of a task that runs once, without a deadline or a slot to
    /// wait for: start it in its turn, poll its work (dropped if the task is
    /// cancelled first), end it. Written out by hand so that the task's own
    /// future is kept once, with a few words around it (see the size test in
    /// `run/mod.rs`).
    pub(crate) struct SimpleRun<W> {
        #[pin]
        stage: Stage<W>,
        guard: RunnerGuard,
        // Held until given up: before a sync task's work is called, after an
        // async task's first poll. (Not an `Option`: a turn can be empty,
        // and the word saved keeps the runner in tokio's 128-byte steps.)
        turn: Turn,
        // Held while the task runs; given back just before it ends.
        slot: Option<OwnedSemaphorePermit>,
    }

    impl<W> PinnedDrop for SimpleRun<W> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped by its runtime before the end: the work goes first,
            // with its task current, then the guard ends the task.
            let this = this.project();
            let mut stage = this.stage;
            if !matches!(stage.as_mut().project(), StageProj::Done) {
                let guard = this.guard;
                crate::context::enter(&guard.shared, &guard.cell, || stage.set(Stage::Done));
            }
        }
    }
}

impl<W> Future for SimpleRun<W>
where
    W: Future<Output = Result<(), BoxError>>,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        let mut stage = this.stage;
        let guard = &*this.guard;
        let (shared, cell) = (&guard.shared, &guard.cell);
        if let StageProj::Reporting { report } = stage.as_mut().project() {
            ready!(report.as_mut().poll(cx));
            stage.set(Stage::Done);
            return Poll::Ready(());
        }
        // Only this runner starts the task, so "not started" means "not yet".
        if !cell.is_started() {
            if !cell.try_start(&shared.registry.counters) {
                // Ended while queued (cancelled at shutdown): already reported.
                crate::context::enter(shared, cell, || stage.set(Stage::Done));
                return Poll::Ready(());
            }
            // A sync task starts when its work is called: now.
            if cell.mode == ModeKind::Sync {
                this.turn.take().pass();
            }
        }
        // A running sync task cannot be interrupted: its cancellation is a
        // signal it observes through `TaskContext`, not a drop at an `.await`.
        let interruptible = cell.mode == ModeKind::Async;
        let cancelled = interruptible && cell.is_cancel_requested();
        // The work is polled, and dropped once it is over (before its outcome
        // is published), with its task current.
        let turn = this.turn;
        let polled = crate::context::enter(shared, cell, || {
            let outcome = match stage.as_mut().project() {
                StageProj::Work { .. } if cancelled => Err(TaskError::Cancelled),
                StageProj::Work { work } => {
                    let polled = work.poll(cx);
                    // An async task has started once its first poll returns.
                    turn.take().pass();
                    classify(Some(ready!(polled)))
                }
                // No attempt could be made, or polled again after the end.
                StageProj::Reporting { .. } | StageProj::Done => Err(TaskError::Cancelled),
            };
            stage.set(Stage::Done);
            Poll::Ready(outcome)
        });
        let Poll::Ready(outcome) = polled else {
            // The waker a cancellation wakes is registered only now: a task
            // over in its first poll never needs one. A request made since the
            // check above is seen here: polled again at once, the work is
            // dropped.
            if interruptible && cell.poll_cancelled(cx).is_ready() {
                cx.waker().wake_by_ref();
            }
            return Poll::Pending;
        };
        // The slot goes back before the task ends: once `wait_idle` or its
        // handle says it has ended, a task scheduled next finds the slot free.
        drop(this.slot.take());
        match guard.end(outcome, How::Runner) {
            Ending::Lost | Ending::Ended => Poll::Ready(()),
            Ending::Report(mut report) => {
                if report.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                stage.set(Stage::Reporting { report });
                Poll::Pending
            }
        }
    }
}
