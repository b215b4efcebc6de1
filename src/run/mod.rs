//! Running a task: the only place that hands work to tokio.
//!
//! A task admitted by `schedule.rs` becomes a [`Job`], started here in its
//! mode: an async task is spawned on the runtime, a sync task on the
//! blocking pool. A task with nothing to wait for (no slot, thread permit,
//! deadline or retry) runs with the small runner of `simple.rs`; the others
//! with the general path of `attempts.rs`. Either ends the task through
//! `end.rs`.

mod attempts;
mod simple;

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{Instrument, Span};

use crate::end::RunnerGuard;
use crate::flow::Flow;
use crate::limits::{Admission, Permit, RetryPolicy};
use crate::mode::{Mode, ModeKind};
use crate::options::Start;
use crate::request::Turn;
use crate::task::Attempts;

/// Everything a task needs to run.
pub(crate) struct Job<A> {
    pub(crate) guard: RunnerGuard,
    pub(crate) attempts: A,
    /// `Some` for a task with a retry policy, a timeout or a delay. Boxed:
    /// most tasks have none, and a job is moved on its way to its runner.
    pub(crate) extras: Option<Box<Extras>>,
    /// How its limits treat it (asked again when a delayed task falls due).
    pub(crate) admission: Admission,
    /// `Some` under `max_in_flight`: the task's slot, held or queued for.
    pub(crate) slot: Option<Permit>,
    /// For a task started by a request: its turn in the request's start
    /// order, given up once it has started (see `request.rs`); empty for
    /// the others.
    pub(crate) turn: Turn,
    /// The task's `background_task` span, if it is enabled; the whole run is
    /// instrumented with it. (`None` rather than a disabled span: it is not
    /// worth carrying, nor dropping, in every task's job. Boxed: a job is
    /// moved several times on its way to its runner, and a span is five
    /// words that a service not tracing at DEBUG never fills.)
    pub(crate) span: Option<Box<Span>>,
}

/// What a task that waits or is bounded carries.
#[derive(Debug, Default)]
pub(crate) struct Extras {
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) timeout: Option<Duration>,
    /// `Some` for a delayed task: when it asked to start, counted from when
    /// its phase comes (see `due`).
    pub(crate) start: Option<Start>,
    /// `Some` for a delayed task once its phase has come: when it falls due.
    /// Its limits' permits are asked for then, not before.
    pub(crate) due: Option<Instant>,
    /// `Some` for a task of a flow: it waits for its flow, then asks its
    /// limits for their permits.
    pub(crate) flow: Option<Arc<Flow>>,
}

impl<A> std::fmt::Debug for Job<A> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Job")
            .field("task", &self.guard.cell.id)
            .field("extras", &self.extras)
            .finish_non_exhaustive()
    }
}

/// Where each attempt's work is polled.
pub(crate) enum Exec {
    /// Right here: on the runtime for an async task, or on the blocking
    /// thread this job already runs on for a simple sync task.
    Inline,
    /// On a blocking-pool thread per attempt, this job waiting on the runtime:
    /// a sync task with a limit, a timeout or retries. With `max_blocking`,
    /// the thread permit of its first attempt, held or queued for, if it was
    /// asked for when the task was started.
    Blocking(Handle, Option<Permit>),
}

/// Starts `job` the way its mode runs tasks.
pub(crate) fn start<Md: Mode, A: Attempts>(runtime: &Handle, mut job: Job<A>) {
    let span = job.take_span();
    match Md::KIND {
        ModeKind::Async => {
            if job.is_simple() {
                spawn(runtime, span, job.run_simple());
            } else {
                spawn(runtime, span, job.run(Exec::Inline));
            }
        }
        ModeKind::Sync => {
            // Ask for a thread permit now, so that tasks get threads in
            // schedule order, but only with the in-flight slot in hand: a task
            // never holds a thread permit while it waits for a slot (the other
            // order could deadlock with a task holding a slot while it waits
            // for a thread).
            let mut thread = None;
            if !job.defers_limits() && job.slot.as_ref().is_none_or(Permit::is_held) {
                let limits = &job.guard.shared.limits;
                thread = limits.blocking.as_ref().map(Permit::request);
            }
            if job.is_simple() && thread.as_ref().is_none_or(Permit::is_held) {
                // One blocking thread does it all; it holds the thread permit.
                // The runner is made here, not on the thread: the closure
                // tokio moves around (several times) is the small runner and
                // a word, not the job.
                let permit = match thread {
                    Some(Permit::Held(permit)) => Some(permit),
                    _ => None,
                };
                let held = (permit.is_some() || span.is_some()).then(|| Box::new((permit, span)));
                let run = job.run_simple();
                spawn_blocking(runtime, move || {
                    let _entered = held
                        .as_ref()
                        .and_then(|held| held.1.as_ref().map(Span::enter));
                    drive(run);
                });
            } else {
                // Waits (for a slot, a deadline, a backoff) happen on the
                // runtime; each attempt gets a blocking thread.
                let driver = runtime.clone();
                spawn(runtime, span, job.run(Exec::Blocking(driver, thread)));
            }
        }
    }
}

impl<A> Job<A> {
    /// Whether the task can run in one go: nothing to wait for on the runtime
    /// (a slot, a deadline, a backoff; a sync task's thread permit is
    /// `start`'s to check).
    fn is_simple(&self) -> bool {
        self.extras.is_none() && self.slot.as_ref().is_none_or(Permit::is_held)
    }

    pub(crate) fn retry(&self) -> Option<RetryPolicy> {
        self.extras.as_ref().and_then(|extras| extras.retry)
    }

    pub(crate) fn timeout(&self) -> Option<Duration> {
        self.extras.as_ref().and_then(|extras| extras.timeout)
    }

    pub(crate) fn due(&self) -> Option<Instant> {
        self.extras.as_ref().and_then(|extras| extras.due)
    }

    /// Whether the task asks its limits for permits only once it may start
    /// (a delayed task once due, a task of a flow once its flow lets it go),
    /// so that it holds no slot while it waits.
    pub(crate) fn defers_limits(&self) -> bool {
        self.due().is_some() || self.flow().is_some()
    }

    pub(crate) fn flow(&self) -> Option<&Arc<Flow>> {
        self.extras.as_ref().and_then(|extras| extras.flow.as_ref())
    }

    /// The task's span, if it is enabled, for its runner to enter.
    fn take_span(&mut self) -> Option<Span> {
        self.span.take().map(|span| *span)
    }
}

/// Runs a sync task's runner to its end on the blocking thread it was given.
///
/// It is polled once first, without a waker: a task that neither waits for
/// its turn nor awaits an error handler (nearly every one) is over after that
/// poll, and never pays for entering the runtime with `block_on`, nor for
/// carrying the runtime's handle. Otherwise `block_on` polls it again, on the
/// runtime whose blocking pool runs this thread, with a waker that
/// everything it waits on registers afresh.
fn drive(run: impl Future<Output = ()>) {
    let mut run = std::pin::pin!(run);
    let mut cx = Context::from_waker(Waker::noop());
    if run.as_mut().poll(&mut cx).is_pending() {
        match Handle::try_current() {
            Ok(runtime) => runtime.block_on(run),
            // A blocking-pool thread is always in its runtime's context; were
            // it not, dropping the runner ends the task as cancelled.
            Err(error) => {
                tracing::error!(%error, "a sync task's runner found no runtime to wait on")
            }
        }
    }
}

/// Spawns `work` on the runtime, in `span` if there is one. Dropping the
/// join handle detaches it: the work ends its task itself.
fn spawn<F>(runtime: &Handle, span: Option<Span>, work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match span {
        Some(span) => drop(runtime.spawn(work.instrument(span))),
        None => drop(runtime.spawn(work)),
    }
}

/// Runs `work` on the blocking pool.
fn spawn_blocking<F, R>(runtime: &Handle, work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    runtime.spawn_blocking(work)
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use super::Job;
    use crate::BoxError;
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
    /// header, 120 bytes make a 144-byte heap chunk (136 made 160).
    #[test]
    #[cfg(target_pointer_width = "64")]
    fn the_task_cell_stays_small() {
        let cell = std::mem::size_of::<crate::cell::TaskCell>();
        // The metric handles are one more pointer.
        let limit = if cfg!(feature = "metrics") { 128 } else { 120 };
        assert!(cell <= limit, "a task cell takes {cell} bytes");
    }

    /// A job is moved several times on its way to its runner (into a
    /// request's line, out of it, into the runner): besides the task's work
    /// it carries its guard, its slot and a few words, not what only some
    /// tasks use (a span, a delay, a thread permit).
    #[test]
    fn a_job_carries_little_besides_its_work() {
        let work = std::mem::size_of::<crate::task::Once<Large>>();
        let job = std::mem::size_of::<Job<crate::task::Once<Large>>>();
        assert!(
            job <= work + 72,
            "the job of a {work}-byte work takes {job} bytes"
        );
    }

    /// The small runner keeps the task's future once, with its stage, its
    /// guard (the task's `Background` and cell), its turn and its slot
    /// around it. (tokio lays tasks out in steps of 128 bytes: a word more
    /// can cost a parked task 128 bytes.)
    #[test]
    fn a_simple_task_keeps_its_future_once() {
        let work = std::mem::size_of::<Large>();
        let run = size_of_output(&Job::<Once<Large>>::run_simple);
        assert!(
            run <= work + 48,
            "the runner of a {work}-byte future takes {run} bytes"
        );
    }
}
