//! One task's shared state: what the registry, its handle, its runner and
//! its cancellers share.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio_util::sync::CancellationToken;

use crate::handler::SharedErrorHandler;
use crate::info::RequestMeta;
use crate::inner::Shared;
use crate::metrics::TaskMetrics;
use crate::mode::ModeKind;
use crate::name::TaskName;
use crate::registry::{Counters, Entry};
use crate::{Phase, TaskError, TaskId, TaskInfo};

/// Registered, waiting for its phase, a slot or a worker.
const QUEUED: u8 = 0;
/// Its work has started.
const RUNNING: u8 = 1;
/// Its outcome is decided and being reported (logged, handed to its handler).
const FINISHING: u8 = 2;
/// Its outcome is published and it has left the registry.
const ENDED: u8 = 3;

/// What the registry, the task's handle and its runner share.
///
/// `state` only moves forward: `QUEUED -> RUNNING -> FINISHING -> ENDED`, or
/// `QUEUED -> FINISHING` for a task that never starts. The move to
/// `FINISHING` is a compare-and-swap: whoever wins it reports the outcome, so
/// each task is reported exactly once.
pub(crate) struct TaskCell {
    /// The `Background` the task belongs to (one reference per task: the
    /// registry, its membership and its handle reach it through here).
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: TaskId,
    name: TaskName,
    pub(crate) phase: Phase,
    pub(crate) mode: ModeKind,
    pub(crate) shielded: bool,
    pub(crate) scheduled_at: Instant,
    /// `Some` when the task was scheduled from a request.
    pub(crate) request: Option<Arc<RequestMeta>>,
    /// `Some` when the merged config names a handler.
    pub(crate) on_error: Option<SharedErrorHandler>,
    state: AtomicU8,
    /// When the task started, as nanoseconds after `scheduled_at` plus one;
    /// 0 until it starts. (An atomic, not a `OnceLock`: it is on every task's
    /// path.)
    started: AtomicU64,
    attempts: AtomicU32,
    cancel_requested: AtomicBool,
    /// Set when a canceller claimed a running async task's end but left the
    /// report to its runner, so that the future is dropped before the outcome
    /// is published. Taken once: by the runner, by its membership's drop, or
    /// by the canceller itself if the runner was already gone.
    delegated: AtomicBool,
    /// Set when the task's membership is dropped: no runner is left to take
    /// a delegated report.
    runner_gone: AtomicBool,
    /// The running future's waker, woken by `request_cancel`.
    waker: AtomicWaker,
    /// `Some` once the task has asked for a token (see `TaskContext`).
    token: OnceLock<CancellationToken>,
    /// Set once, by whoever moves the state to `FINISHING`.
    outcome: OnceLock<Result<(), TaskError>>,
    /// The task's metric handles.
    pub(crate) metrics: TaskMetrics,
    /// Wakes handle futures on start and on end; only rung once one is
    /// `watched` (most tasks are never awaited).
    notify: Notify,
    watched: AtomicBool,
}

pub(crate) struct NewTask {
    pub(crate) shared: Arc<Shared>,
    pub(crate) id: TaskId,
    pub(crate) name: TaskName,
    pub(crate) phase: Phase,
    pub(crate) mode: ModeKind,
    pub(crate) shielded: bool,
    pub(crate) request: Option<Arc<RequestMeta>>,
    pub(crate) on_error: Option<SharedErrorHandler>,
}

impl TaskCell {
    pub(crate) fn new(task: NewTask) -> Self {
        let metrics = task.shared.instruments.for_task(&task.name, task.phase);
        TaskCell {
            shared: task.shared,
            id: task.id,
            name: task.name,
            phase: task.phase,
            mode: task.mode,
            shielded: task.shielded,
            scheduled_at: Instant::now(),
            request: task.request,
            on_error: task.on_error,
            state: AtomicU8::new(QUEUED),
            started: AtomicU64::new(0),
            attempts: AtomicU32::new(0),
            cancel_requested: AtomicBool::new(false),
            delegated: AtomicBool::new(false),
            runner_gone: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            token: OnceLock::new(),
            outcome: OnceLock::new(),
            metrics,
            notify: Notify::new(),
            watched: AtomicBool::new(false),
        }
    }

    /// The task's name (derived from its type when it was given none).
    pub(crate) fn name(&self) -> Cow<'static, str> {
        self.name.get()
    }

    /// A snapshot for handlers, handles and reports.
    pub(crate) fn info(&self) -> TaskInfo {
        TaskInfo {
            id: self.id,
            name: self.name(),
            phase: self.phase,
            mode: self.mode,
            shielded: self.shielded,
            scheduled_at: self.scheduled_at,
            started_at: self.started_at(),
            method: self.request.as_ref().map(|r| r.method.clone()),
            path: self.request.as_ref().map(|r| r.path.clone()),
            attempts: self.attempts.load(Ordering::Relaxed),
        }
    }

    /// `QUEUED -> RUNNING`, counted before anyone is told; false if the task
    /// was ended before it started.
    pub(crate) fn try_start(&self, counters: &Counters) -> bool {
        // AcqRel: pairs with the CAS in `try_finish`, so that exactly one wins.
        let won = self
            .state
            .compare_exchange(QUEUED, RUNNING, Ordering::SeqCst, Ordering::SeqCst)
            .is_ok();
        if won {
            counters.started();
            let waited = self.scheduled_at.elapsed();
            let nanos = u64::try_from(waited.as_nanos()).unwrap_or(u64::MAX - 1);
            self.started.store(nanos + 1, Ordering::SeqCst);
            self.attempts.fetch_add(1, Ordering::Relaxed);
            self.metrics.started(waited);
            self.wake_watchers();
        }
        won
    }

    /// Claims the right to report the task's end, with its outcome. Returns
    /// whether the task had started, or `None` if someone else already
    /// claimed it.
    pub(crate) fn try_finish(&self, outcome: Result<(), TaskError>) -> Option<bool> {
        let mut current = self.state.load(Ordering::Acquire);
        loop {
            if current >= FINISHING {
                return None;
            }
            match self.state.compare_exchange(
                current,
                FINISHING,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => {
                    // Only the claimant sets it: `set` cannot fail here.
                    let _ = self.outcome.set(outcome);
                    return Some(current == RUNNING);
                }
                Err(actual) => current = actual,
            }
        }
    }

    /// `QUEUED -> FINISHING`: claims a task that has not started, so that it
    /// never will.
    pub(crate) fn try_finish_queued(&self, outcome: Result<(), TaskError>) -> bool {
        let claimed = self
            .state
            .compare_exchange(QUEUED, FINISHING, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if claimed {
            let _ = self.outcome.set(outcome);
        }
        claimed
    }

    /// Marks the task ended, once its outcome has been reported, and wakes
    /// every handle future.
    pub(crate) fn publish(&self) {
        // SeqCst: a reader that sees ENDED sees everything the report did, and
        // `wake_watchers` pairs with `notified` (see there).
        self.state.store(ENDED, Ordering::SeqCst);
        self.wake_watchers();
    }

    /// When the task started, if it has.
    pub(crate) fn started_at(&self) -> Option<Instant> {
        match self.started.load(Ordering::SeqCst) {
            0 => None,
            nanos => Some(self.scheduled_at + Duration::from_nanos(nanos - 1)),
        }
    }

    /// A future woken at the task's next start or end. Create it, then check
    /// the state, then await it: a change after the check is never missed.
    pub(crate) fn notified(&self) -> Notified<'_> {
        // SeqCst, paired with `wake_watchers`: either the waker sees this flag,
        // or the caller's check after it sees the change.
        self.watched.store(true, Ordering::SeqCst);
        self.notify.notified()
    }

    /// Wakes the futures from `notified`, if there are any. Called after a
    /// SeqCst write of what they check.
    fn wake_watchers(&self) {
        if self.watched.load(Ordering::SeqCst) {
            self.notify.notify_waiters();
        }
    }

    /// Counts one more run of a retried task.
    pub(crate) fn next_attempt(&self) {
        self.attempts.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn is_started(&self) -> bool {
        self.started.load(Ordering::SeqCst) != 0
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state.load(Ordering::SeqCst) == ENDED
    }

    /// The outcome, once the task has ended (its handler has returned).
    pub(crate) fn outcome(&self) -> Option<&Result<(), TaskError>> {
        if self.is_ended() {
            self.outcome.get()
        } else {
            None
        }
    }

    /// The outcome as soon as it is decided (its handler may still be running).
    pub(crate) fn decided_outcome(&self) -> Option<&Result<(), TaskError>> {
        self.outcome.get()
    }

    /// Asks the running future to stop at its next poll, and fires the
    /// task's token if it has one.
    pub(crate) fn request_cancel(&self) {
        self.cancel_requested.store(true, Ordering::SeqCst);
        // SeqCst fence, paired with the one in `cancellation_token`: either
        // this sees the token, or the token's creator sees the flag.
        fence(Ordering::SeqCst);
        if let Some(token) = self.token.get() {
            token.cancel();
        }
        self.waker.wake();
    }

    /// The task's token, created on first use; already cancelled if the task
    /// was asked to stop before.
    pub(crate) fn cancellation_token(&self) -> CancellationToken {
        let token = self.token.get_or_init(CancellationToken::new).clone();
        fence(Ordering::SeqCst);
        if self.cancel_requested.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }

    /// Leaves the report of a claimed end to the task's runner. Returns
    /// whether the caller must report after all: the runner was gone (its
    /// work ended at the same moment) and nobody else took the report.
    pub(crate) fn delegate_report(&self) -> bool {
        // SeqCst, paired with `runner_leaves`: either the runner's last take
        // sees this flag, or this load sees the runner gone (or both; the
        // swap in `take_delegated_report` lets one of them report).
        self.delegated.store(true, Ordering::SeqCst);
        self.runner_gone.load(Ordering::SeqCst) && self.take_delegated_report()
    }

    /// Whether this caller must report a claimed end (true at most once).
    pub(crate) fn take_delegated_report(&self) -> bool {
        self.delegated.swap(false, Ordering::SeqCst)
    }

    /// The runner is gone: returns whether it must still report a delegated
    /// end (see `delegate_report`).
    pub(crate) fn runner_leaves(&self) -> bool {
        self.runner_gone.store(true, Ordering::SeqCst);
        self.take_delegated_report()
    }

    pub(crate) fn is_cancel_requested(&self) -> bool {
        self.cancel_requested.load(Ordering::Acquire)
    }

    /// Ready once cancellation has been requested; registers the waker first
    /// so that a request made after the check still wakes this task.
    pub(crate) fn poll_cancelled(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_cancel_requested() {
            return Poll::Ready(());
        }
        self.waker.register(cx.waker());
        if self.is_cancel_requested() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Entry for TaskCell {
    fn id(&self) -> TaskId {
        self.id
    }

    fn info(&self) -> TaskInfo {
        TaskCell::info(self)
    }
}

impl std::fmt::Debug for TaskCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskCell")
            .field("id", &self.id)
            .field("name", &self.name())
            .field("state", &self.state.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}
