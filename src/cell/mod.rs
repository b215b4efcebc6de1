//! One task's shared state: what the registry, its handle, its runner and
//! its cancellers share.
//!
//! # Invariants
//!
//! - Who may start and end the task is the protocol of `state.rs` (with its
//!   own invariants and a `loom` model): the task starts at most once, its
//!   end is claimed once, and the claimant alone decides the outcome (a
//!   success or a cancellation in the state itself, any other error in the
//!   `rare` part's `outcome`) before reporting, and publishes it.
//! - The `rare` part is made on first use and never taken away: by a
//!   failure's claim, a token's creation or a handle future. Makers that race
//!   all get the one that was set first (the others' are dropped unused).
//! - `started` is 0 until the task starts, then set once (by the runner,
//!   after winning the start).
//! - A cancellation request is a flag, then a wake: `cancel_requested` is
//!   set before the runner's waker is woken and before the token (if one was
//!   ever made) is cancelled; a token made after the request is cancelled at
//!   birth (the two `SeqCst` fences pair, so one side always sees the other).
//! - Handle futures are woken at a start and at the end only once one is
//!   `watched` (the flag is set before they check the state, the state is
//!   written before the waker checks the flag: `SeqCst` on both sides). The
//!   `rare` part that holds their `Notify` is made before the flag is set.
//!   A shutdown waiting for the task's end is woken the same way, through
//!   the registry's `ended` (its own flag in `watched`).

mod pool;
mod state;

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, AtomicU64, Ordering, fence};
use std::sync::{Arc, OnceLock, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;
use once_cell::race::OnceBox;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;
use tokio_util::sync::CancellationToken;

use crate::handler::SharedErrorHandler;
use crate::inner::Shared;
use crate::metrics::TaskMetrics;
use crate::mode::ModeKind;
use crate::name::TaskName;
use crate::registry::{self, Counters, Entry, Registry};
use crate::request::RequestScope;
use crate::{Phase, TaskError, TaskId, TaskInfo};

pub(crate) use pool::CellPool;
pub(crate) use state::{Claim, Claimant};
use state::{Recorded, TaskState};

/// In `watched`: a handle future waits on the task; its start and end ring
/// `rare`'s `notify`.
const HANDLES: u8 = 1;
/// In `watched`: a shutdown waits for the task's end, which rings the
/// registry's `ended`.
const SHUTDOWN: u8 = 2;

/// In `started`: the task has not started, and the rest of the word says
/// when it falls due.
const DUE: u64 = 1 << 63;

/// A `started` word for `after` nanoseconds past `scheduled`: plus one
/// (never 0, never reaching `DUE`).
fn since(after: u64) -> u64 {
    after.min(DUE - 2) + 1
}

/// What the registry, the task's handle and its runner share.
pub(crate) struct TaskCell {
    /// The `Background` the task belongs to, for a handle that cancels it.
    /// Weak: the cell may outlive its task in its `Background`'s pool of
    /// cells (see `pool.rs`), and the runner holds the `Background` itself.
    background: Weak<Shared>,
    pub(crate) id: TaskId,
    name: TaskName,
    pub(crate) phase: Phase,
    pub(crate) mode: ModeKind,
    pub(crate) shielded: bool,
    /// Whether the task holds a unique key (freed when it ends).
    pub(crate) unique: bool,
    /// When the task was scheduled, as nanoseconds after the registry's
    /// epoch (half the size of an `Instant`: every task keeps one).
    scheduled: u64,
    /// `Some` when the task was scheduled from a request: its scope, for
    /// the request's method and path (one allocation a request, not one
    /// more for them).
    pub(crate) request: Option<Arc<RequestScope>>,
    /// `Some` when the merged config names a handler.
    pub(crate) on_error: Option<SharedErrorHandler>,
    state: TaskState,
    /// When the task started, as nanoseconds after `scheduled_at` plus one.
    /// Until it starts: 0, or for a delayed task `DUE` with when it falls
    /// due (the same way). (An atomic, not a `OnceLock`: it is on every
    /// task's path; one word for both: a task that is not delayed pays
    /// nothing for the other.)
    started: AtomicU64,
    /// Runs made: written by the task's runner alone (at its start, then at
    /// each retry), with a store, not an atomic add.
    attempts: AtomicU32,
    /// The longest a poll was seen holding its thread, in milliseconds (0:
    /// never); see `blocking`.
    blocked_ms: AtomicU32,
    cancel_requested: AtomicBool,
    /// `HANDLES` and `SHUTDOWN`, each set for good once its kind of waiter
    /// comes.
    watched: AtomicU8,
    /// The running future's waker, woken by `request_cancel`.
    waker: AtomicWaker,
    /// What few tasks need, made on first use: most tasks succeed (or are
    /// cancelled), ask for no token and are never awaited, and so never pay
    /// for it, in time or in memory.
    rare: OnceBox<Rare>,
    /// The task's metric handles.
    pub(crate) metrics: TaskMetrics,
}

/// The part of a task's cell that few tasks use.
#[derive(Default)]
struct Rare {
    /// A failure's outcome (a success or a cancellation is recorded in the
    /// state): set once, by whoever moves the state to `FINISHING`.
    outcome: OnceLock<Result<(), TaskError>>,
    /// `Some` once the task has asked for a token (see `TaskContext`).
    token: OnceLock<CancellationToken>,
    /// Wakes handle futures on start and on end (see `watched`).
    notify: Notify,
}

pub(crate) struct NewTask {
    pub(crate) name: TaskName,
    pub(crate) phase: Phase,
    pub(crate) mode: ModeKind,
    pub(crate) shielded: bool,
    pub(crate) unique: bool,
    pub(crate) request: Option<Arc<RequestScope>>,
    pub(crate) on_error: Option<SharedErrorHandler>,
}

impl TaskCell {
    /// A task's cell in `shared`, reaching it through `background` (a weak
    /// reference to `shared`).
    pub(crate) fn new(
        task: NewTask,
        id: TaskId,
        shared: &Shared,
        background: Weak<Shared>,
    ) -> Self {
        let metrics = shared.instruments.for_task(&task.name, task.phase);
        let scheduled = registry::since_epoch(Instant::now());
        TaskCell {
            background,
            id,
            name: task.name,
            phase: task.phase,
            mode: task.mode,
            shielded: task.shielded,
            unique: task.unique,
            scheduled,
            request: task.request,
            on_error: task.on_error,
            state: TaskState::new(),
            started: AtomicU64::new(0),
            attempts: AtomicU32::new(0),
            blocked_ms: AtomicU32::new(0),
            cancel_requested: AtomicBool::new(false),
            watched: AtomicU8::new(0),
            waker: AtomicWaker::new(),
            rare: OnceBox::new(),
            metrics,
        }
    }

    /// Makes this cell, whose task has ended and which nobody else holds,
    /// the cell of `task`, keeping its reference to its `Background`.
    fn reuse(&mut self, task: NewTask, id: TaskId, shared: &Shared) {
        let background = std::mem::replace(&mut self.background, Weak::new());
        *self = TaskCell::new(task, id, shared, background);
    }

    /// Drops what this cell, whose task has ended and which nobody else
    /// holds, keeps of its task and of others: its request (which holds the
    /// request's span and its `Background`), its error handler, an owned
    /// name, the rare part (an error, a token) and a waker (which holds the
    /// runtime's task). What is left is plain data, the metric handles of
    /// its name and a weak reference to its `Background`.
    fn vacate(&mut self) {
        self.request = None;
        self.on_error = None;
        self.name = TaskName::Derived("");
        self.rare = OnceBox::new();
        self.waker = AtomicWaker::new();
    }

    /// The rare part, made now if it was not yet.
    fn rare(&self) -> &Rare {
        self.rare.get_or_init(Box::default)
    }

    /// The `Background` the task belongs to, unless it is gone.
    pub(crate) fn background(&self) -> Option<Arc<Shared>> {
        self.background.upgrade()
    }

    /// When the task was scheduled.
    pub(crate) fn scheduled_at(&self) -> Instant {
        registry::at(self.scheduled)
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
            scheduled_at: self.scheduled_at(),
            started_at: self.started_at(),
            due_at: self.due_at(),
            method: self.request.as_ref().map(|r| r.meta.method.clone()),
            path: self
                .request
                .as_ref()
                .map(|r| Arc::from(r.meta.path.as_str())),
            // Relaxed: a count for display; nothing is published through it.
            attempts: self.attempts.load(Ordering::Relaxed),
            // Relaxed: for display, as `attempts`.
            blocked: match self.blocked_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(std::time::Duration::from_millis(u64::from(ms))),
            },
        }
    }

    /// A poll has held its thread for `held`: kept if the longest yet; true
    /// the first time.
    pub(crate) fn mark_blocked(&self, held: std::time::Duration) -> bool {
        let ms = u32::try_from(held.as_millis()).unwrap_or(u32::MAX).max(1);
        // Relaxed: only the watchdog thread writes it, and readers display it.
        self.blocked_ms.fetch_max(ms, Ordering::Relaxed) == 0
    }

    /// `QUEUED -> RUNNING`, counted before anyone is told; false if the task
    /// was ended before it started.
    pub(crate) fn try_start(&self, counters: &Counters) -> bool {
        let won = self.state.try_start();
        if won {
            counters.started();
            let now = registry::since_epoch(Instant::now());
            let waited = now.saturating_sub(self.scheduled);
            // SeqCst: `is_started` and `wake_watchers` (see the invariants).
            self.started.store(since(waited), Ordering::SeqCst);
            // Relaxed: see `info`. Its first run: a fresh cell counts none.
            self.attempts.store(1, Ordering::Relaxed);
            self.metrics.started(Duration::from_nanos(waited));
            let _ = self.wake_watchers();
        }
        won
    }

    /// Claims the task's end for `claimant`; the winner's `outcome` is set
    /// before the claim can be reported. See `state.rs`.
    #[inline]
    pub(crate) fn claim(&self, claimant: Claimant, outcome: Result<(), TaskError>) -> Claim {
        let recorded = match &outcome {
            Ok(()) => Recorded::Success,
            Err(TaskError::Cancelled) => Recorded::Cancellation,
            Err(_) => Recorded::Elsewhere,
        };
        self.state.claim(claimant, recorded, || {
            // Only the winner of the claim gets here, once.
            if recorded == Recorded::Elsewhere {
                let _ = self.rare().outcome.set(outcome);
            }
        })
    }

    /// Marks the task ended, once its outcome has been reported, and wakes
    /// every handle future and a shutdown waiting for it (on its `registry`).
    pub(crate) fn publish(&self, registry: &Registry<TaskCell>) {
        self.state.publish();
        if self.wake_watchers() & SHUTDOWN != 0 {
            registry.ended.notify_waiters();
        }
    }

    /// Records when a delayed task falls due (once, when its phase comes,
    /// before its runner is spawned).
    pub(crate) fn set_due(&self, due: tokio::time::Instant) {
        let after = registry::since_epoch(due.into_std()).saturating_sub(self.scheduled);
        // SeqCst: as every store of `started` (see `is_started`).
        self.started.store(DUE | since(after), Ordering::SeqCst);
    }

    /// When a delayed task falls due, until it starts.
    pub(crate) fn due_at(&self) -> Option<Instant> {
        // SeqCst: see `is_started`.
        match self.started.load(Ordering::SeqCst) {
            word if word & DUE != 0 => Some(self.at(word & !DUE)),
            _ => None,
        }
    }

    /// When the task started, if it has.
    pub(crate) fn started_at(&self) -> Option<Instant> {
        // SeqCst: see `is_started`.
        match self.started.load(Ordering::SeqCst) {
            word if word == 0 || word & DUE != 0 => None,
            word => Some(self.at(word)),
        }
    }

    /// The instant a `started` word (without `DUE`) stands for.
    fn at(&self, word: u64) -> Instant {
        registry::at(self.scheduled.saturating_add(word - 1))
    }

    /// A future woken at the task's next start or end. Create it, then check
    /// the state, then await it: a change after the check is never missed.
    pub(crate) fn notified(&self) -> Notified<'_> {
        // SeqCst, paired with `wake_watchers`: either the waker sees this flag,
        // or the caller's check after it sees the change.
        // The rare part is made first: a waker that sees the flag finds it.
        let rare = self.rare();
        self.watched.fetch_or(HANDLES, Ordering::SeqCst);
        rare.notify.notified()
    }

    /// A future woken once the task has ended, for a shutdown: as
    /// [`notified`](Self::notified), but through its registry's `ended`, so
    /// that waiting for a task's end makes nothing (shutdown waits for every
    /// task in flight).
    pub(crate) fn ended_notified<'a>(&self, registry: &'a Registry<TaskCell>) -> Notified<'a> {
        let notified = registry.ended.notified();
        // SeqCst, paired with `publish`: see `notified`. (The `Notified` is
        // made first: it hears every `notify_waiters` from then on.)
        self.watched.fetch_or(SHUTDOWN, Ordering::SeqCst);
        notified
    }

    /// Wakes the futures from `notified`, if there are any, and returns who
    /// watches. Called after a SeqCst write of what they check.
    fn wake_watchers(&self) -> u8 {
        let watched = self.watched.load(Ordering::SeqCst);
        if watched & HANDLES != 0 {
            // Made before `HANDLES` was set (see `notified`).
            if let Some(rare) = self.rare.get() {
                rare.notify.notify_waiters();
            }
        }
        watched
    }

    /// Records that a retried task is making its `attempt`th run.
    pub(crate) fn set_attempts(&self, attempt: u32) {
        // Relaxed: see `info`.
        self.attempts.store(attempt, Ordering::Relaxed);
    }

    pub(crate) fn is_started(&self) -> bool {
        // SeqCst, paired with `notified`'s store of `watched` (a handle
        // future creates its `Notified`, then checks this).
        let word = self.started.load(Ordering::SeqCst);
        word != 0 && word & DUE == 0
    }

    pub(crate) fn is_ended(&self) -> bool {
        self.state.is_ended()
    }

    /// The outcome, once the task has ended (its handler has returned).
    pub(crate) fn outcome(&self) -> Option<&Result<(), TaskError>> {
        if self.is_ended() {
            self.decided_outcome()
        } else {
            None
        }
    }

    /// The outcome as soon as it is decided (its handler may still be running).
    pub(crate) fn decided_outcome(&self) -> Option<&Result<(), TaskError>> {
        /// What every successful task's outcome reads.
        static SUCCESS: Result<(), TaskError> = Ok(());
        /// What every cancelled task's outcome reads.
        static CANCELLED: Result<(), TaskError> = Err(TaskError::Cancelled);
        match self.state.recorded() {
            Recorded::Success => Some(&SUCCESS),
            Recorded::Cancellation => Some(&CANCELLED),
            Recorded::Elsewhere => self.rare.get()?.outcome.get(),
        }
    }

    /// Asks the running future to stop at its next poll, and fires the
    /// task's token if it has one.
    pub(crate) fn request_cancel(&self) {
        // SeqCst: ordered with the token's creation by the fences below, and
        // read with Acquire by the runner before it registers its waker.
        self.cancel_requested.store(true, Ordering::SeqCst);
        // SeqCst fence, paired with the one in `cancellation_token`: either
        // this sees the token, or the token's creator sees the flag.
        fence(Ordering::SeqCst);
        if let Some(token) = self.rare.get().and_then(|rare| rare.token.get()) {
            token.cancel();
        }
        self.waker.wake();
    }

    /// The task's token, created on first use; already cancelled if the task
    /// was asked to stop before.
    pub(crate) fn cancellation_token(&self) -> CancellationToken {
        let token = self
            .rare()
            .token
            .get_or_init(CancellationToken::new)
            .clone();
        // SeqCst fence: see `request_cancel`.
        fence(Ordering::SeqCst);
        if self.cancel_requested.load(Ordering::SeqCst) {
            token.cancel();
        }
        token
    }

    pub(crate) fn is_cancel_requested(&self) -> bool {
        // Acquire, paired with `request_cancel`'s store: the runner that sees
        // the request sees the claim made before it.
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
            .field("state", &self.state.peek())
            .finish_non_exhaustive()
    }
}
