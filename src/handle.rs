//! [`TaskHandle`]: what every `schedule` returns.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use pin_project_lite::pin_project;
use tokio::sync::futures::Notified;

use crate::cancel::CancelOutcome;
use crate::cell::TaskCell;
use crate::{TaskError, TaskId, TaskInfo};

/// A scheduled task, seen from outside: its id, its state, its outcome.
///
/// Dropping the handle changes nothing: tasks are fire-and-forget, and the
/// handle only watches. It is cheap to clone.
#[derive(Clone)]
pub struct TaskHandle {
    cell: Arc<TaskCell>,
    /// Set on the handle `schedule` returned for a unique task whose key was
    /// held: the handle is the holder's.
    duplicate: bool,
}

impl TaskHandle {
    pub(crate) fn new(cell: Arc<TaskCell>) -> Self {
        TaskHandle {
            cell,
            duplicate: false,
        }
    }

    /// Cancels the task; see [`Background::cancel`](crate::Background::cancel).
    pub fn cancel(&self) -> CancelOutcome {
        // Its `Background` is gone only once nothing can run the task: it
        // has ended.
        match self.cell.background() {
            Some(shared) => crate::cancel::cancel(&shared, &self.cell),
            None => crate::cancel::CancelOutcome::AlreadyEnded,
        }
    }

    /// The handle of the task that holds a unique key, returned to a
    /// `schedule` of the same key (see `TaskConfig`'s `unique`).
    pub(crate) fn duplicate(cell: Arc<TaskCell>) -> Self {
        TaskHandle {
            cell,
            duplicate: true,
        }
    }

    /// Whether `schedule` found a task with the same unique key in flight and
    /// returned that task's handle instead of scheduling another (the task
    /// given to it was dropped unrun), as its clones do. `false` for every
    /// other handle.
    pub fn is_duplicate(&self) -> bool {
        self.duplicate
    }

    /// The task's id.
    pub fn id(&self) -> TaskId {
        self.cell.id
    }

    /// A snapshot of the task.
    pub fn info(&self) -> TaskInfo {
        self.cell.info()
    }

    /// Whether the task has started running.
    pub fn is_started(&self) -> bool {
        self.cell.is_started()
    }

    /// Whether the task has ended (its error handler, if any, has returned).
    pub fn is_finished(&self) -> bool {
        self.cell.is_ended()
    }

    /// The outcome, if the task has ended.
    pub fn try_outcome(&self) -> Option<Result<(), TaskError>> {
        self.cell.outcome().cloned()
    }

    /// Resolves when the task starts, or when it ends without starting
    /// (cancelled or rejected before its turn).
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it changes nothing.
    pub fn started(&self) -> StartedFuture<'_> {
        StartedFuture {
            cell: &self.cell,
            notified: self.cell.notified(),
        }
    }

    /// Resolves to the task's outcome once it has ended and its error
    /// handler, if any, has returned.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it changes nothing, and it can be awaited again.
    pub fn outcome(&self) -> OutcomeFuture<'_> {
        OutcomeFuture {
            cell: &self.cell,
            notified: self.cell.notified(),
        }
    }
}

impl fmt::Debug for TaskHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskHandle")
            .field("id", &self.cell.id)
            .field("name", &self.cell.name())
            .field("started", &self.is_started())
            .field("duplicate", &self.duplicate)
            .field("outcome", &self.cell.outcome())
            .finish()
    }
}

pin_project! {
    /// Resolves when the task starts or ends; from [`TaskHandle::started`].
    #[must_use = "futures do nothing unless polled"]
    pub struct StartedFuture<'a> {
        cell: &'a TaskCell,
        #[pin]
        notified: Notified<'a>,
    }
}

impl Future for StartedFuture<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            // `notified` predates this check: a start after it wakes us.
            if this.cell.is_started() || this.cell.is_ended() {
                return Poll::Ready(());
            }
            ready!(this.notified.as_mut().poll(cx));
            this.notified.set(this.cell.notified());
        }
    }
}

pin_project! {
    /// Resolves to the task's outcome; from [`TaskHandle::outcome`].
    #[must_use = "futures do nothing unless polled"]
    pub struct OutcomeFuture<'a> {
        cell: &'a TaskCell,
        #[pin]
        notified: Notified<'a>,
    }
}

impl Future for OutcomeFuture<'_> {
    type Output = Result<(), TaskError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(outcome) = this.cell.outcome() {
                return Poll::Ready(outcome.clone());
            }
            ready!(this.notified.as_mut().poll(cx));
            this.notified.set(this.cell.notified());
        }
    }
}

impl fmt::Debug for StartedFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StartedFuture")
            .field("task", &self.cell.id)
            .finish()
    }
}

impl fmt::Debug for OutcomeFuture<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OutcomeFuture")
            .field("task", &self.cell.id)
            .finish()
    }
}
