//! Running a task and reporting how it ended: the path every task takes from
//! "spawned" to "out of the registry".

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_util::FutureExt;
use futures_util::future::CatchUnwind;
use pin_project_lite::pin_project;

use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::OwnedSemaphorePermit;
use tracing::Span;

use crate::BoxError;
use crate::background::Shared;
use crate::error::panic_message;
use crate::limits::{Permit, RetryPolicy};
use crate::mode::ModeKind;
use crate::outcome::OutcomeKind;
use crate::registry::{Membership, TaskCell};
use crate::request::Ticket;
use crate::task::Attempts;
use crate::{TaskError, TaskInfo};

/// Everything a task needs to run, handed to its mode. Internal: public only
/// because the sealed [`Mode`](crate::mode::Mode) trait names it.
#[doc(hidden)]
pub struct Job<A> {
    pub(crate) membership: Membership,
    pub(crate) attempts: A,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) timeout: Option<Duration>,
    /// `Some` under `max_in_flight`: the task's slot, held or queued for.
    pub(crate) slot: Option<Permit>,
    /// `Some` for a sync task under `max_blocking`: its first attempt's
    /// thread permit, held or queued for.
    pub(crate) blocking: Option<Permit>,
    /// `Some` for a task started by a request: its place in the request's
    /// start order (see `request.rs`).
    pub(crate) ticket: Option<Ticket>,
    /// The task's `background_task` span; the whole run is instrumented with it.
    pub(crate) span: Span,
}

impl<A> std::fmt::Debug for Job<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("task", &self.membership.cell.id)
            .field("retry", &self.retry)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Where each attempt's work is polled.
pub(crate) enum Exec {
    /// Right here: on the runtime for an async task, or on the blocking
    /// thread this job already runs on for a simple sync task.
    Inline,
    /// On a blocking-pool thread per attempt, this job waiting on the runtime:
    /// a sync task with a limit, a timeout or retries.
    Blocking(Handle),
}

impl<A: Attempts> Job<A> {
    /// Whether a sync task can run in one go on one blocking thread: nothing to
    /// wait for on the runtime (a slot, a thread permit, a deadline, a backoff).
    pub(crate) fn is_simple(&self) -> bool {
        self.retry.is_none()
            && self.timeout.is_none()
            && self.slot.as_ref().is_none_or(Permit::is_held)
            && self.blocking.as_ref().is_none_or(Permit::is_held)
    }

    /// Whether an async task, or a sync task on its one blocking thread, can
    /// run with the small runner: a single attempt, no deadline, nothing to
    /// wait for.
    pub(crate) fn is_simple_inline(&self) -> bool {
        self.is_simple() && self.blocking.is_none()
    }

    /// Takes the thread permit the first attempt needs, if it is held.
    pub(crate) fn take_held_blocking_permit(&mut self) -> Option<Permit> {
        self.blocking.take_if(|permit| permit.is_held())
    }

    /// Runs the task: wait for its slot, start it (unless it was ended while
    /// queued), run attempts until one succeeds or the retry policy gives up,
    /// then report the outcome.
    pub(crate) async fn run(mut self, exec: Exec) {
        let cell = Arc::clone(&self.membership.cell);
        let shared = Arc::clone(self.membership.shared());
        // Its turn among its request's tasks comes first. A task that must
        // then wait for a limit's permit lets those behind it go on: a limit
        // orders the tasks it holds back among themselves (first come, first
        // served), and must not hold up tasks it does not cover.
        let mut ticket = self.ticket.take();
        if let Some(ticket) = &ticket {
            std::future::poll_fn(|cx| ticket.poll_turn(cx)).await;
        }
        let blocking = matches!(exec, Exec::Blocking(_));
        let slot_held = self.slot.as_ref().is_none_or(Permit::is_held);
        if blocking && slot_held && self.blocking.is_none() {
            // A thread permit only with the slot in hand (see `Sync::start`).
            self.blocking = shared.limits.blocking.as_ref().map(Permit::request);
        }
        let thread_held = match &self.blocking {
            Some(permit) => permit.is_held(),
            None => !blocking || shared.limits.blocking.is_none(),
        };
        if !(slot_held && thread_held) {
            drop(ticket.take());
        }
        // Held until the task has been reported.
        let mut _slot = None;
        if let Some(slot) = self.slot.take() {
            match until_cancelled(&cell, slot.acquire()).await {
                Some(Some(permit)) => _slot = Some(permit),
                _ => return self.end_unstarted(),
            }
        }
        // A sync task's first thread permit, after its slot (see `Sync::start`).
        let mut thread_permit = None;
        if blocking {
            let permit = self
                .blocking
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
                    let attempt = run_inline(&cell, work, self.timeout);
                    PassAfterFirstPoll::new(ticket.take(), attempt).await
                }
                Exec::Blocking(runtime) => {
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
                    run_blocking(runtime, &cell, work, self.timeout, permit, ticket.take()).await
                }
            };
            match (result, self.retry) {
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
                    cell.next_attempt();
                }
                (result, _) => break result,
            }
        };
        finish(&cell, outcome).await;
    }

    /// [`run`](Self::run) for the common case ([`is_simple_inline`](Self::is_simple_inline)):
    /// one attempt, polled in place, the task's own future stored once.
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
            membership: self.membership,
            ticket: self.ticket,
            _slot: slot,
        }
    }
}

/// A boxed report: an error handler to await (the rare path, kept off every
/// task's future).
type Report = Pin<Box<dyn Future<Output = ()> + Send>>;

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
    /// wait for: start it, poll its work (dropped if the task is cancelled
    /// first), report the outcome. Written out by hand, and small: an `async
    /// fn` chain kept the task's own future up to four times over in its
    /// state (each argument moved into the next call keeps its place), and
    /// tokio's task-local scope a second reference to the cell.
    pub(crate) struct SimpleRun<W> {
        #[pin]
        stage: Stage<W>,
        membership: Membership,
        // `Some` until passed: before a sync task's work is called, after an
        // async task's first poll.
        ticket: Option<Ticket>,
        // Held until the task has been reported.
        _slot: Option<OwnedSemaphorePermit>,
    }

    impl<W> PinnedDrop for SimpleRun<W> {
        fn drop(this: Pin<&mut Self>) {
            // Dropped by its runtime before the end: the work goes first,
            // with its task current, then the membership reports the task.
            let this = this.project();
            let mut stage = this.stage;
            if !matches!(stage.as_mut().project(), StageProj::Done) {
                crate::context::enter(&this.membership.cell, || stage.set(Stage::Done));
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
        let cell = &this.membership.cell;
        if let StageProj::Reporting { report } = stage.as_mut().project() {
            ready!(report.as_mut().poll(cx));
            stage.set(Stage::Done);
            return Poll::Ready(());
        }
        // Only this runner starts the task, so "not started" means "not yet".
        if !cell.is_started() {
            if let Some(ticket) = this.ticket.as_ref() {
                ready!(ticket.poll_turn(cx));
            }
            if !cell.try_start(&cell.shared.registry.counters) {
                // Ended while queued (cancelled at shutdown): already reported.
                crate::context::enter(cell, || stage.set(Stage::Done));
                return Poll::Ready(());
            }
            // A sync task starts when its work is called: now.
            if cell.mode == ModeKind::Sync {
                if let Some(ticket) = this.ticket.take() {
                    ticket.pass();
                }
            }
        }
        // A running sync task cannot be interrupted: its cancellation is a
        // signal it observes through `TaskContext`, not a drop at an `.await`.
        let cancelled = cell.mode == ModeKind::Async && cell.poll_cancelled(cx).is_ready();
        // The work is polled, and dropped once it is over (before its outcome
        // is published), with its task current.
        let ticket = this.ticket;
        let outcome = ready!(crate::context::enter(cell, || {
            let outcome = match stage.as_mut().project() {
                StageProj::Work { .. } if cancelled => Err(TaskError::Cancelled),
                StageProj::Work { work } => {
                    let polled = work.poll(cx);
                    // An async task has started once its first poll returns.
                    if let Some(ticket) = ticket.take() {
                        ticket.pass();
                    }
                    classify(Some(ready!(polled)))
                }
                // No attempt could be made, or polled again after the end.
                StageProj::Reporting { .. } | StageProj::Done => Err(TaskError::Cancelled),
            };
            stage.set(Stage::Done);
            Poll::Ready(outcome)
        }));
        match finish_now(cell, outcome) {
            None => Poll::Ready(()),
            Some(mut report) => {
                if report.as_mut().poll(cx).is_ready() {
                    return Poll::Ready(());
                }
                stage.set(Stage::Reporting { report });
                Poll::Pending
            }
        }
    }
}

/// Ends a task whose work is over with `outcome`, unless someone else
/// claimed its end; reports a failure.
async fn finish(cell: &Arc<TaskCell>, outcome: Result<(), TaskError>) {
    if let Some(report) = finish_now(cell, outcome) {
        report.await;
    }
}

/// [`finish`] without awaiting: a success ends the task here; a failure's
/// report, which may await an error handler, is returned to be awaited.
fn finish_now(cell: &Arc<TaskCell>, outcome: Result<(), TaskError>) -> Option<Report> {
    let was_started = match cell.try_finish(outcome) {
        Some(was_started) => was_started,
        // Cancelled on request while running: its work is dropped by now.
        None if cell.take_delegated_report() => true,
        None => return None,
    };
    if cell.decided_outcome().is_some_and(Result::is_ok) {
        cell.shared.registry.end(cell, was_started);
        return None;
    }
    let cell = Arc::clone(cell);
    Some(Box::pin(async move {
        cell.shared.report(&cell, was_started).await;
    }))
}

/// One attempt polled in place, without a deadline (built, not an `async fn`,
/// so that the work is not kept twice in the caller's state).
fn attempt<'a, W>(
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
        work: crate::context::scope(Arc::clone(cell), AssertUnwindSafe(work).catch_unwind()),
    }
    .map(classify)
}

fn classify(
    result: Option<Result<Result<(), BoxError>, Box<dyn std::any::Any + Send>>>,
) -> Result<(), TaskError> {
    match result {
        Some(Ok(result)) => result.map_err(|error| TaskError::Failed(Arc::from(error))),
        Some(Err(payload)) => Err(TaskError::Panicked(panic_message(&*payload))),
        None => Err(TaskError::Cancelled),
    }
}

impl<A> Job<A> {
    /// The task's span, if it is enabled (a disabled span is not worth
    /// carrying in every task's future).
    pub(crate) fn take_span(&mut self) -> Option<Span> {
        let span = std::mem::replace(&mut self.span, Span::none());
        (!span.is_disabled()).then_some(span)
    }

    /// Ends a task cancelled while it waited for a slot, if nobody else has.
    fn end_unstarted(self) {
        let cell = &self.membership.cell;
        if cell.try_finish(Err(TaskError::Cancelled)).is_some() {
            cell.shared.report_dropped(cell, false);
        }
    }
}

/// One attempt, polled here, with an optional deadline: an async task's
/// future is dropped if the task is cancelled or its timeout passes.
async fn run_inline<W>(
    cell: &Arc<TaskCell>,
    work: W,
    timeout: Option<Duration>,
) -> Result<(), TaskError>
where
    W: Future<Output = Result<(), BoxError>> + Send,
{
    match timeout {
        Some(timeout) => tokio::time::timeout(timeout, attempt(cell, work))
            .await
            .unwrap_or(Err(TaskError::TimedOut)),
        None => attempt(cell, work).await,
    }
}

/// One attempt of a sync task on its own blocking-pool thread, awaited here.
/// Past the timeout the attempt is reported timed out and its cancellation
/// fires; the thread cannot be interrupted and runs on, holding its permit.
async fn run_blocking<W>(
    runtime: &Handle,
    cell: &Arc<TaskCell>,
    work: W,
    timeout: Option<Duration>,
    permit: Option<OwnedSemaphorePermit>,
    ticket: Option<Ticket>,
) -> Result<(), TaskError>
where
    W: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    let context = Arc::clone(cell);
    let driver = runtime.clone();
    let thread = crate::mode::spawn_blocking(runtime, move || {
        let _permit = permit;
        // The task starts when its work is called: now.
        if let Some(ticket) = ticket {
            ticket.pass();
        }
        driver.block_on(crate::context::scope(context, work))
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
    /// `inner`, passing the task's ticket once its first poll returns (an
    /// async task has started by then).
    struct PassAfterFirstPoll<F> {
        ticket: Option<Ticket>,
        #[pin]
        inner: F,
    }
}

impl<F> PassAfterFirstPoll<F> {
    fn new(ticket: Option<Ticket>, inner: F) -> Self {
        PassAfterFirstPoll { ticket, inner }
    }
}

impl<F: Future> Future for PassAfterFirstPoll<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let polled = this.inner.poll(cx);
        if let Some(ticket) = this.ticket.take() {
            ticket.pass();
        }
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
    /// `schedule` call). A sync handler is called in place. An async one runs
    /// on the task's runtime; where no runtime was ever known, on a
    /// single-threaded runtime made for the call.
    pub(crate) fn report_dropped(self: &Arc<Self>, cell: &Arc<TaskCell>, was_started: bool) {
        let async_handler = cell
            .on_error
            .as_ref()
            .is_some_and(|handler| !handler.is_sync());
        if !matches!(cell.decided_outcome(), Some(Err(_))) || !async_handler {
            // Nothing to await (a sync handler completes in its first poll):
            // report in place.
            let _ = self.report(cell, was_started).now_or_never();
            return;
        }
        let report = ReportOnce {
            shared: Arc::clone(self),
            cell: Arc::clone(cell),
            was_started,
        };
        if let Some(runtime) = self.runtime() {
            // If the runtime drops this unrun (it is shutting down), `ReportOnce`
            // still ends the task.
            drop(runtime.spawn(report.run()));
            return;
        }
        match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(report.run()),
            Err(error) => tracing::error!(
                task.id = %cell.id,
                task.name = %cell.name(),
                %error,
                "async error handler not called: cannot start a runtime to run it on"
            ),
        }
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
        self.shared.report(&self.cell, self.was_started).await;
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
            self.shared.registry.end(&self.cell, self.was_started);
        }
    }
}

fn log_failure(info: &TaskInfo, error: &TaskError) {
    let path = info.path.as_deref().unwrap_or("");
    match OutcomeKind::of_error(error).is_error() {
        false => tracing::warn!(
            task.id = %info.id,
            task.name = %info.name,
            task.phase = %info.phase,
            request.path = %path,
            error = %error,
            "background task did not complete"
        ),
        true => tracing::error!(
            task.id = %info.id,
            task.name = %info.name,
            task.phase = %info.phase,
            request.path = %path,
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use crate::BoxError;
    use crate::runner::Job;
    use crate::task::Once;

    /// A task future of a known, large size (never built: only measured).
    #[allow(dead_code)]
    struct Large([u8; 256]);

    impl Future for Large {
        type Output = Result<(), BoxError>;

        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            Poll::Ready(Ok(()))
        }
    }

    /// The size of what `make` returns, without calling it.
    fn size_of_output<F: FnOnce(A) -> R, A, R>(_: &F) -> usize {
        std::mem::size_of::<R>()
    }

    /// Every task in flight keeps a cell: with its `Arc` counts and malloc's
    /// header, 200 bytes make a 224-byte heap chunk.
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_task_cell_stays_small() {
        let cell = std::mem::size_of::<crate::registry::TaskCell>();
        // The metric handles are one more pointer.
        let limit = if cfg!(feature = "metrics") { 208 } else { 200 };
        assert!(cell <= limit, "a task cell takes {cell} bytes");
    }

    #[test]
    fn a_simple_task_keeps_its_future_once() {
        let work = std::mem::size_of::<Large>();
        let run = size_of_output(&Job::<Once<Large>>::run_simple);
        // An `async fn` chain held this future four times over (1,408 bytes);
        // around it now: the stage, the membership and a slot (32 bytes).
        assert!(
            run <= work + 48,
            "the runner of a {work}-byte future takes {run} bytes"
        );
    }
}
