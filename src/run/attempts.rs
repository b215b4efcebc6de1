//! The general runner: a task that waits (for its turn, a slot, a thread, a
//! backoff) or is bounded (a timeout), run attempt by attempt until one
//! succeeds or its retry policy gives up.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::FutureExt;
use pin_project_lite::pin_project;
use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;

use super::{Exec, Job};
use crate::cell::TaskCell;
use crate::end::{self, Ending, How};
use crate::error::panic_message;
use crate::inner::Shared;
use crate::limits::Permit;
use crate::mode::ModeKind;
use crate::request::Turn;
use crate::task::Attempts;
use crate::{BoxError, TaskError};

impl<A: Attempts> Job<A> {
    /// Runs the task: wait for its slot, start it (unless it was ended while
    /// queued), run attempts until one succeeds or the retry policy gives up,
    /// then report the outcome.
    pub(crate) async fn run(mut self, mut exec: Exec) {
        let cell = Arc::clone(&self.guard.cell);
        let shared = Arc::clone(&self.guard.shared);
        // Its turn among its request's tasks comes first. A task that must
        // then wait for a limit's permit lets those behind it go on: a limit
        // orders the tasks it holds back among themselves (first come, first
        // served), and must not hold up tasks it does not cover.
        let mut turn = self.turn.take();
        // A delayed task, or a task of a flow, lets those behind it go on,
        // waits (cancellable) for its time and its flow, and only then asks
        // its limits for a slot.
        let deferred = self.defers_limits();
        if deferred {
            drop(turn.take());
        }
        if let Some(due) = self.due() {
            if until_cancelled(&cell, tokio::time::sleep_until(due))
                .await
                .is_none()
            {
                return self.end_unstarted();
            }
        }
        // Held until the task has been reported.
        let mut _flow = None;
        if let Some(flow) = self.flow().cloned() {
            match until_cancelled(&cell, flow.enter()).await {
                Some(permit) => _flow = Some(permit),
                None => return self.end_unstarted(),
            }
        }
        if deferred {
            match shared.limits.admit(self.admission) {
                Ok(slot) => self.slot = slot,
                Err(reason) => {
                    end::rejected(&shared, &cell, reason);
                    return;
                }
            }
        }
        let (blocking, mut thread) = match &mut exec {
            Exec::Blocking(_, thread) => (true, thread.take()),
            Exec::Inline => (false, None),
        };
        let slot_held = self.slot.as_ref().is_none_or(Permit::is_held);
        if blocking && slot_held && thread.is_none() {
            // A thread permit only with the slot in hand (see `run::start`).
            thread = shared.limits.blocking.as_ref().map(Permit::request);
        }
        let thread_held = match &thread {
            Some(permit) => permit.is_held(),
            None => !blocking || shared.limits.blocking.is_none(),
        };
        if !(slot_held && thread_held) {
            drop(turn.take());
        }
        // Held while the task runs: given back before it ends (see below).
        let mut slot_permit = None;
        if let Some(slot) = self.slot.take() {
            match until_cancelled(&cell, slot.acquire()).await {
                Some(Some(permit)) => slot_permit = Some(permit),
                _ => return self.end_unstarted(),
            }
        }
        // A sync task's first thread permit, after its slot (see `run::start`).
        let mut thread_permit = None;
        if blocking {
            let permit = thread
                .take()
                .or_else(|| shared.limits.blocking.as_ref().map(Permit::request));
            if let Some(permit) = permit {
                match until_cancelled(&cell, permit.acquire()).await {
                    Some(Some(permit)) => thread_permit = Some(permit),
                    _ => return self.end_unstarted(),
                }
            }
        }
        if !cell.try_start(&shared.registry.counters) {
            // Ended while queued (cancelled at shutdown): already reported.
            return;
        }

        let mut attempt = 1;
        let outcome = loop {
            let Some(work) = self.attempts.next_attempt() else {
                break Err(TaskError::Cancelled);
            };
            let result = match &exec {
                Exec::Inline => {
                    let attempt = run_inline(&shared, &cell, work, self.timeout());
                    PassAfterFirstPoll::new(turn.take(), attempt).await
                }
                Exec::Blocking(runtime, _) => {
                    let permit = match (thread_permit.take(), &shared.limits.blocking) {
                        (Some(permit), _) => Some(permit),
                        (None, Some(semaphore)) => {
                            match until_cancelled(&cell, Permit::request(semaphore).acquire()).await
                            {
                                Some(permit) => permit,
                                None => break Err(TaskError::Cancelled),
                            }
                        }
                        (None, None) => None,
                    };
                    let timeout = self.timeout();
                    run_blocking(runtime, &shared, &cell, work, timeout, permit, turn.take()).await
                }
            };
            match (result, self.retry()) {
                (Err(error), Some(policy)) if policy.retries(attempt, &error) => {
                    let delay = policy.delay(attempt);
                    tracing::warn!(
                        task.id = %cell.id,
                        task.name = %cell.name(),
                        attempt,
                        ?delay,
                        %error,
                        "background task attempt failed; retrying"
                    );
                    if until_cancelled(&cell, tokio::time::sleep(delay))
                        .await
                        .is_none()
                    {
                        break Err(TaskError::Cancelled);
                    }
                    attempt += 1;
                    cell.set_attempts(attempt);
                }
                (result, _) => break result,
            }
        };
        // The slot goes back before the task ends: once `wait_idle` or its
        // handle says it has ended, a task scheduled next finds the slot free.
        drop(slot_permit);
        if let Ending::Report(report) = self.guard.end(outcome, How::Runner) {
            report.await;
        }
    }

    /// Ends a task cancelled while it waited for a slot, if nobody else has.
    fn end_unstarted(self) {
        let _ = self.guard.end(Err(TaskError::Cancelled), How::Unstarted);
    }
}

/// One attempt polled in place, without a deadline (built, not an `async fn`,
/// so that the work is not kept twice in the caller's state).
fn attempt<'a, W>(
    shared: &'a Arc<Shared>,
    cell: &'a Arc<TaskCell>,
    work: W,
) -> impl Future<Output = Result<(), TaskError>> + Send + 'a
where
    W: Future<Output = Result<(), BoxError>> + Send + 'a,
{
    Cancellable {
        cell,
        // A running sync task cannot be interrupted: its cancellation is a
        // signal it observes through `TaskContext`, not a drop at an `.await`.
        interruptible: cell.mode == ModeKind::Async,
        work: crate::context::scope(
            Arc::clone(shared),
            Arc::clone(cell),
            AssertUnwindSafe(work).catch_unwind(),
        ),
    }
    .map(classify)
}

pub(super) fn classify(
    result: Option<Result<Result<(), BoxError>, Box<dyn std::any::Any + Send>>>,
) -> Result<(), TaskError> {
    match result {
        Some(Ok(result)) => result.map_err(|error| TaskError::Failed(Arc::from(error))),
        Some(Err(payload)) => Err(TaskError::Panicked(panic_message(&*payload))),
        None => Err(TaskError::Cancelled),
    }
}

/// One attempt, polled here, with an optional deadline: an async task's
/// future is dropped if the task is cancelled or its timeout passes.
async fn run_inline<W>(
    shared: &Arc<Shared>,
    cell: &Arc<TaskCell>,
    work: W,
    timeout: Option<Duration>,
) -> Result<(), TaskError>
where
    W: Future<Output = Result<(), BoxError>> + Send,
{
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, attempt(shared, cell, work))
            .await
            .unwrap_or(Err(TaskError::TimedOut)),
        None => attempt(shared, cell, work).await,
    }
}

/// One attempt of a sync task on its own blocking-pool thread, awaited here.
/// Past the timeout the attempt is reported timed out and its cancellation
/// fires; the thread cannot be interrupted and runs on, holding its permit.
async fn run_blocking<W>(
    runtime: &Handle,
    shared: &Arc<Shared>,
    cell: &Arc<TaskCell>,
    work: W,
    timeout: Option<Duration>,
    permit: Option<OwnedSemaphorePermit>,
    turn: Turn,
) -> Result<(), TaskError>
where
    W: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let (background, context) = (Arc::clone(shared), Arc::clone(cell));
    let driver = runtime.clone();
    let thread = super::spawn_blocking(runtime, move || {
        let _permit = permit;
        // The task starts when its work is called: now.
        turn.pass();
        driver.block_on(crate::context::scope(background, context, work))
    });
    let joined = match timeout {
        Some(timeout) => match tokio::time::timeout(timeout, thread).await {
            Ok(joined) => joined,
            Err(_elapsed) => {
                cell.request_cancel();
                return Err(TaskError::TimedOut);
            }
        },
        None => thread.await,
    };
    match joined {
        Ok(result) => result.map_err(|error| TaskError::Failed(Arc::from(error))),
        Err(error) if error.is_panic() => {
            Err(TaskError::Panicked(panic_message(&*error.into_panic())))
        }
        // The runtime is shutting down under the task.
        Err(_) => Err(TaskError::Cancelled),
    }
}

pin_project! {
    /// `inner`, giving up the task's turn once its first poll returns (an
    /// async task has started by then).
    struct PassAfterFirstPoll<F> {
        turn: Turn,
        #[pin]
        inner: F,
    }
}

impl<F> PassAfterFirstPoll<F> {
    fn new(turn: Turn, inner: F) -> Self {
        PassAfterFirstPoll { turn, inner }
    }
}

impl<F: Future> Future for PassAfterFirstPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.inner.poll(cx);
        this.turn.take().pass();
        polled
    }
}

/// `future`'s output, or `None` if the task is asked to stop first (used
/// where no user code runs: waiting for a slot, a backoff).
async fn until_cancelled<F: Future>(cell: &TaskCell, future: F) -> Option<F::Output> {
    Cancellable {
        cell,
        interruptible: true,
        work: future,
    }
    .await
}

pin_project! {
    /// `work`, unless it is interruptible and the task's cancellation is
    /// requested first: then the work is dropped and the result is `None`.
    struct Cancellable<'a, W> {
        cell: &'a TaskCell,
        interruptible: bool,
        #[pin]
        work: W,
    }
}

impl<W: Future> Future for Cancellable<'_, W> {
    type Output = Option<W::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if *this.interruptible && this.cell.poll_cancelled(cx).is_ready() {
            return Poll::Ready(None);
        }
        this.work.poll(cx).map(Some)
    }
}
