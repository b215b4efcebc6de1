//! [`TaskContext`]: what a running task can learn about itself.

use std::fmt;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::TaskInfo;
use crate::registry::TaskCell;

tokio::task_local! {
    static CURRENT: Arc<TaskCell>;
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
    cell: Arc<TaskCell>,
}

impl TaskContext {
    /// The task running here (in its future or, for a sync task, on its
    /// thread), or `None` outside a task.
    pub fn current() -> Option<TaskContext> {
        CURRENT
            .try_with(|cell| TaskContext {
                cell: Arc::clone(cell),
            })
            .ok()
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

/// Runs `work` with `cell` as the current task.
pub(crate) fn scope<F: std::future::Future>(
    cell: Arc<TaskCell>,
    work: F,
) -> tokio::task::futures::TaskLocalFuture<Arc<TaskCell>, F> {
    CURRENT.scope(cell, work)
}
