//! Running a task and reporting how it ended: the path every task takes from
//! "spawned" to "out of the registry".

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::FutureExt;
use pin_project_lite::pin_project;

use crate::BoxError;
use crate::background::Shared;
use crate::error::panic_message;
use crate::mode::ModeKind;
use crate::registry::{Membership, TaskCell};
use crate::{TaskError, TaskInfo};

/// Runs one task: start it (unless it was ended while queued), drive its work
/// until it finishes (or, for an async task, is cancelled), then report the
/// outcome.
pub(crate) async fn run<W>(membership: Membership, work: W)
where
    W: Future<Output = Result<(), BoxError>> + Send,
{
    let cell = &membership.cell;
    if !cell.try_start() {
        // Ended while queued (cancelled at shutdown): already reported.
        return;
    }
    membership.shared.registry.counters.started();
    let work = crate::context::scope(Arc::clone(cell), AssertUnwindSafe(work).catch_unwind());
    let outcome = match (Cancellable {
        cell,
        // A running sync task cannot be interrupted: its cancellation is a
        // signal it observes through `TaskContext`, not a drop at an `.await`.
        interruptible: cell.mode == ModeKind::Async,
        work,
    })
    .await
    {
        Some(Ok(Ok(()))) => Ok(()),
        Some(Ok(Err(error))) => Err(TaskError::Failed(Arc::from(error))),
        Some(Err(payload)) => Err(TaskError::Panicked(panic_message(&*payload))),
        None => Err(TaskError::Cancelled),
    };
    if let Some(was_started) = cell.try_finish(outcome) {
        membership.shared.report(cell, was_started).await;
    }
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

impl Shared {
    /// Logs a task's decided outcome, hands a failure to its error handler,
    /// then ends the task. The caller must have won `try_finish`.
    pub(crate) async fn report(&self, cell: &TaskCell, was_started: bool) {
        if let Some(Err(error)) = cell.decided_outcome() {
            let info = cell.info();
            log_failure(&info, error);
            if let Some(handler) = &cell.on_error {
                let call = AssertUnwindSafe(handler.call(&info, error)).catch_unwind();
                if let Err(payload) = call.await {
                    log_handler_panic(&info, &panic_message(&*payload));
                }
            }
        }
        self.registry.end(cell, was_started);
    }

    /// [`report`](Self::report) from a place that cannot await (a `Drop`, or a
    /// `schedule` call). A sync handler is called in place; an async one runs
    /// on the runtime when there is one, and is skipped (with an error logged)
    /// when there is not.
    pub(crate) fn report_dropped(self: &Arc<Self>, cell: &Arc<TaskCell>, was_started: bool) {
        let Some(Err(error)) = cell.decided_outcome() else {
            self.registry.end(cell, was_started);
            return;
        };
        match (&cell.on_error, self.runtime()) {
            (Some(handler), Some(runtime)) if !handler.is_sync() => {
                let shared = Arc::clone(self);
                let cell = Arc::clone(cell);
                drop(runtime.spawn(async move { shared.report(&cell, was_started).await }));
            }
            (handler, _) => {
                let info = cell.info();
                log_failure(&info, error);
                match handler {
                    Some(handler) if handler.is_sync() => {
                        let call = std::panic::catch_unwind(AssertUnwindSafe(|| {
                            futures_util::FutureExt::now_or_never(handler.call(&info, error))
                        }));
                        if let Err(payload) = call {
                            log_handler_panic(&info, &panic_message(&*payload));
                        }
                    }
                    Some(_) => tracing::error!(
                        task.id = %info.id,
                        task.name = %info.name,
                        "async error handler not called: no tokio runtime to run it on"
                    ),
                    None => {}
                }
                self.registry.end(cell, was_started);
            }
        }
    }
}

fn log_failure(info: &TaskInfo, error: &TaskError) {
    let path = info.path.as_deref().unwrap_or("");
    match error {
        TaskError::Cancelled | TaskError::Rejected(_) => tracing::warn!(
            task.id = %info.id,
            task.name = %info.name,
            task.phase = %info.phase,
            request.path = path,
            error = %error,
            "background task did not complete"
        ),
        _ => tracing::error!(
            task.id = %info.id,
            task.name = %info.name,
            task.phase = %info.phase,
            request.path = path,
            error = %error,
            "background task did not complete"
        ),
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
