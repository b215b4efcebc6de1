//! The end of a task: the only way out. Every completion, failure, panic,
//! timeout, cancellation, shutdown cut-off, rejection and dropped runner
//! ends through [`end`], which claims the task's end once (see the claim
//! protocol's invariants in `cell/state.rs`), logs a failure, hands it to the
//! task's error handler and takes the task out of the registry.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;

use crate::cell::{Claim, Claimant, TaskCell};
use crate::error::{RejectReason, panic_message};
use crate::inner::Shared;
use crate::mode::ModeKind;
use crate::outcome::OutcomeKind;
use crate::{TaskError, TaskInfo};

/// Who ends a task, and so how its end is claimed and reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum How {
    /// Its runner, the work over and dropped. A failure's report (which may
    /// await an error handler) comes back to be awaited there. Also reports
    /// an end a canceller claimed and left to the runner.
    Runner,
    /// Its runner's guard, dropped without reporting (the runtime dropped the
    /// work): ends it as cancelled, or reports an end a canceller left to
    /// the runner.
    RunnerGone,
    /// Where no runner will report: a task rejected, or ended while it
    /// waited to start.
    Unstarted,
    /// On request (`cancel`, shutdown): the task's cancellation fires. A
    /// running async task's runner drops its future, then reports; anything
    /// else is reported here.
    Cancel,
    /// As [`Cancel`](How::Cancel), only if the task has not started.
    CancelQueued,
}

/// What [`end`] did.
#[must_use]
pub(crate) enum Ending {
    /// Someone else had claimed the end: nothing was done.
    Lost,
    /// Ended here (reported, or being reported off this path).
    Ended,
    /// Ended here; its report awaits an error handler: await it.
    Report(Report),
}

/// A boxed report: an error handler to await (the rare path, kept off every
/// task's future).
pub(crate) type Report = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Ends a task its admission refused (it never started): reported as
/// rejected for `reason`.
pub(crate) fn rejected(shared: &Arc<Shared>, cell: &Arc<TaskCell>, reason: RejectReason) {
    let _ = end(
        shared,
        cell,
        Err(TaskError::Rejected(reason)),
        How::Unstarted,
    );
}

/// Ends `cell`, a task of `shared`, with `outcome`, unless its end was
/// claimed already.
#[inline]
pub(crate) fn end(
    shared: &Arc<Shared>,
    cell: &Arc<TaskCell>,
    outcome: Result<(), TaskError>,
    how: How,
) -> Ending {
    let claimant = match how {
        How::Runner => Claimant::Runner,
        How::RunnerGone => Claimant::RunnerGone,
        How::Unstarted => Claimant::Unstarted,
        How::Cancel => Claimant::Cancel {
            interruptible: cell.mode == ModeKind::Async,
        },
        How::CancelQueued => Claimant::CancelQueued,
    };
    let claim = cell.claim(claimant, outcome);
    // Claim first, then signal: the runner, woken by the signal, must find
    // the end taken.
    if matches!(how, How::Cancel | How::CancelQueued) && claim != Claim::Lost {
        cell.request_cancel();
    }
    let was_started = match claim {
        Claim::Lost => return Ending::Lost,
        // Its runner reports once the future is dropped.
        Claim::LeftToRunner => return Ending::Ended,
        Claim::Report { was_started } => was_started,
    };
    if cell.decided_outcome().is_some_and(Result::is_ok) {
        take_out(shared, cell, was_started);
        return Ending::Ended;
    }
    // A failure: with no error handler or a sync one, its report is over in
    // its first poll; only an async handler is awaited.
    if cell
        .on_error
        .as_ref()
        .is_none_or(|handler| handler.is_sync())
    {
        let _ = report(shared, cell, was_started).now_or_never();
        return Ending::Ended;
    }
    // An async error handler: its runner awaits it; anyone else hands it
    // to a runtime.
    if how == How::Runner {
        return Ending::Report(awaited_report(shared, cell, was_started));
    }
    report_detached(shared, cell, was_started);
    Ending::Ended
}

/// [`report`] of a failure with an async error handler, for its runner to
/// await.
#[cold]
fn awaited_report(shared: &Arc<Shared>, cell: &Arc<TaskCell>, was_started: bool) -> Report {
    let (shared, cell) = (Arc::clone(shared), Arc::clone(cell));
    Box::pin(async move { report(&shared, &cell, was_started).await })
}

/// Logs a task's decided outcome, hands a failure to its error handler,
/// then takes the task out of the registry. The caller has claimed its end.
async fn report(shared: &Shared, cell: &TaskCell, was_started: bool) {
    if let Some(Err(error)) = cell.decided_outcome() {
        log_failure(cell, error);
        // A snapshot only for those who keep or read it: a task cancelled at
        // a shutdown, with no handler, needs none.
        let handler = cell.on_error.as_ref();
        if handler.is_some() || shared.failures.keeps(error) {
            let info = cell.info();
            shared.failures.record(&info, error);
            if let Some(handler) = handler {
                let call = AssertUnwindSafe(handler.call(&info, error)).catch_unwind();
                if let Err(payload) = call.await {
                    log_handler_panic(&info, &panic_message(&*payload));
                }
            }
        }
    }
    take_out(shared, cell, was_started);
}

/// Takes a reported task out: counts it, publishes its outcome to its
/// handle, and removes it from the registry (the counters come first, so
/// they are final when `wait_idle` sees the registry empty).
#[inline(always)]
fn take_out(shared: &Shared, cell: &TaskCell, was_started: bool) {
    let registry = &shared.registry;
    let outcome = cell.decided_outcome();
    if let Some(outcome) = outcome {
        registry.counters.ended(was_started, outcome);
    }
    cell.metrics
        .ended(was_started, outcome, || cell.started_at());
    cell.publish(registry);
    registry.remove(cell.id);
    if cell.unique {
        shared.unique.release(cell.id);
    }
}

/// [`report`] of a failure with an async error handler, from a place that
/// cannot await (a `Drop`, a `schedule`, a canceller): on the task's
/// runtime; where no runtime was ever known, on a single-threaded runtime
/// made for the call.
fn report_detached(shared: &Arc<Shared>, cell: &Arc<TaskCell>, was_started: bool) {
    let once = ReportOnce {
        shared: Arc::clone(shared),
        cell: Arc::clone(cell),
        was_started,
    };
    if let Some(runtime) = shared.runtime() {
        // If the runtime drops this unrun (it is shutting down), `ReportOnce`
        // still ends the task.
        drop(runtime.spawn(once.run()));
        return;
    }
    match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(once.run()),
        Err(error) => tracing::error!(
            task.id = %cell.id,
            task.name = %cell.name(),
            %error,
            "async error handler not called: cannot start a runtime to run it on"
        ),
    }
}

/// A report handed to a runtime: ends the task even if the runtime drops it
/// before the handler returns.
struct ReportOnce {
    shared: Arc<Shared>,
    cell: Arc<TaskCell>,
    was_started: bool,
}

impl ReportOnce {
    async fn run(self) {
        report(&self.shared, &self.cell, self.was_started).await;
    }
}

impl Drop for ReportOnce {
    fn drop(&mut self) {
        if !self.cell.is_ended() {
            tracing::error!(
                task.id = %self.cell.id,
                task.name = %self.cell.name(),
                "async error handler did not finish: its runtime shut down"
            );
            take_out(&self.shared, &self.cell, self.was_started);
        }
    }
}

/// A task's guard, moved into the work that runs it.
///
/// Normally the runner ends the task and the guard drops quietly. If the
/// work is dropped without ending it (the runtime shut down under it), the
/// drop ends the task as cancelled, so no task is ever lost from the
/// counters, the registry or its handle.
pub(crate) struct RunnerGuard {
    /// The task's `Background`: the runner's own reference.
    pub(crate) shared: Arc<Shared>,
    pub(crate) cell: Arc<TaskCell>,
}

impl RunnerGuard {
    /// Ends the task with `outcome`, unless its end was claimed already.
    #[inline]
    pub(crate) fn end(&self, outcome: Result<(), TaskError>, how: How) -> Ending {
        end(&self.shared, &self.cell, outcome, how)
    }
}

impl Drop for RunnerGuard {
    fn drop(&mut self) {
        // Nearly every guard is dropped after its runner ended the task: an
        // ended task's end is claimed and reported, nothing is left to take
        // but its cell, kept for reuse if this was its last reference.
        if self.cell.is_ended() {
            self.shared.cells.recycle(&mut self.cell);
            return;
        }
        let _ = self.end(Err(TaskError::Cancelled), How::RunnerGone);
    }
}

impl std::fmt::Debug for RunnerGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RunnerGuard").field(&self.cell.id).finish()
    }
}

/// Logs a failure, reading its task's fields only if the event is enabled.
fn log_failure(cell: &TaskCell, error: &TaskError) {
    let path = || cell.request.as_ref().map_or("", |r| r.meta.path.as_str());
    if OutcomeKind::of_error(error).is_error() {
        tracing::error!(
            task.id = %cell.id,
            task.name = %cell.name(),
            task.phase = %cell.phase,
            request.path = %path(),
            error = %error,
            "background task did not complete"
        );
    } else {
        tracing::warn!(
            task.id = %cell.id,
            task.name = %cell.name(),
            task.phase = %cell.phase,
            request.path = %path(),
            error = %error,
            "background task did not complete"
        );
    }
}

fn log_handler_panic(info: &TaskInfo, message: &str) {
    tracing::error!(
        task.id = %info.id,
        task.name = %info.name,
        panic = message,
        "error handler panicked"
    );
}
