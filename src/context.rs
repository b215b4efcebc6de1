//! [`TaskContext`]: what a running task can learn about itself.

use std::cell::RefCell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio_util::sync::CancellationToken;

use crate::TaskInfo;
use crate::cell::TaskCell;

thread_local! {
    /// The task being polled (or run, for a sync task) on this thread. A
    /// plain thread-local set around each poll, rather than tokio's
    /// `task_local!`, whose future keeps a second reference and the key in
    /// every task's state: the runner already holds the task's cell.
    static CURRENT: RefCell<Option<Arc<TaskCell>>> = const { RefCell::new(None) };
}

/// The running task, seen from inside: its info and its cancellation.
///
/// A running sync task cannot be interrupted; at shutdown (or when its
/// timeout passes) its cancellation fires and it should wrap up. An async
/// task is dropped at its next `.await` instead, but may still watch for
/// cancellation (a shielded task past the grace period, say).
///
/// ```
/// use axum_background::{BlockingTask, TaskContext};
///
/// struct Import { rows: Vec<String> }
///
/// impl BlockingTask<()> for Import {
///     fn run(self) {
///         let context = TaskContext::current().expect("inside a task");
///         for row in self.rows {
///             if context.is_cancelled() {
///                 break; // shutting down: stop at a clean point
///             }
///             // import the row ...
///             # let _ = row;
///         }
///     }
/// }
/// ```
#[derive(Clone)]
pub struct TaskContext {
    pub(crate) cell: Arc<TaskCell>,
}

impl TaskContext {
    /// The task running here (in its future or, for a sync task, on its
    /// thread), or `None` outside a task.
    pub fn current() -> Option<TaskContext> {
        CURRENT
            .try_with(|current| current.borrow().clone())
            .ok()
            .flatten()
            .map(|cell| TaskContext { cell })
    }

    /// A snapshot of the task.
    pub fn info(&self) -> TaskInfo {
        self.cell.info()
    }

    /// Whether the task has been asked to stop.
    pub fn is_cancelled(&self) -> bool {
        self.cell.is_cancel_requested()
    }

    /// A token cancelled when the task is asked to stop: await
    /// `token.cancelled()`, or pass it to code that takes one.
    pub fn cancellation_token(&self) -> CancellationToken {
        self.cell.cancellation_token()
    }
}

impl fmt::Debug for TaskContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskContext")
            .field("id", &self.cell.id)
            .field("name", &self.cell.name())
            .field("cancelled", &self.is_cancelled())
            .finish()
    }
}

/// Calls `f` with `cell` as the current task on this thread; the previous
/// one is back when `f` returns or unwinds.
#[inline]
pub(crate) fn enter<R>(cell: &Arc<TaskCell>, f: impl FnOnce() -> R) -> R {
    /// Puts the previous task back, on return and on unwind alike.
    struct Restore(Option<Arc<TaskCell>>);

    impl Drop for Restore {
        fn drop(&mut self) {
            let previous = self.0.take();
            // A thread being torn down has no current task to restore. The
            // task's reference is dropped after the cell is released.
            let ours = CURRENT.try_with(|current| current.replace(previous));
            drop(ours);
        }
    }

    /// Clears the thread's blocking stamp, on return and on unwind alike.
    struct Polled<'a>(&'a TaskCell);

    impl Drop for Polled<'_> {
        fn drop(&mut self) {
            crate::blocking::poll_ends(self.0);
        }
    }

    let previous = CURRENT.try_with(|current| current.replace(Some(Arc::clone(cell))));
    let _restore = previous.ok().map(Restore);
    crate::blocking::poll_begins(cell);
    let _polled = Polled(cell);
    f()
}

pin_project! {
    /// `work`, polled and dropped with `cell` as the current task.
    pub(crate) struct Scoped<F> {
        cell: Arc<TaskCell>,
        #[pin]
        work: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut work = this.work;
            enter(this.cell, || work.set(None));
        }
    }
}

/// Runs `work` with `cell` as the current task.
pub(crate) fn scope<F: Future>(cell: Arc<TaskCell>, work: F) -> Scoped<F> {
    Scoped {
        cell,
        work: Some(work),
    }
}

impl<F: Future> Future for Scoped<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let work = this.work;
        // `work` is `None` only inside `drop`.
        enter(this.cell, || {
            work.as_pin_mut()
                .map_or(Poll::Pending, |work| work.poll(cx))
        })
    }
}
