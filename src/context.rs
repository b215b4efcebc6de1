//! [`TaskContext`]: what a running task can learn about itself.

use std::cell::Cell;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::thread::LocalKey;

use pin_project_lite::pin_project;
use tokio_util::sync::CancellationToken;

use crate::TaskInfo;
use crate::cell::TaskCell;
use crate::inner::Shared;

thread_local! {
    /// The task being polled (or run, for a sync task) on this thread. A
    /// plain thread-local set around each poll, rather than tokio's
    /// `task_local!`, whose future keeps a second reference and the key in
    /// every task's state: the runner already holds the task's cell.
    static CURRENT: Cell<Option<Arc<TaskCell>>> = const { Cell::new(None) };
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
            .try_with(|current| {
                let cell = current.take()?;
                current.set(Some(Arc::clone(&cell)));
                Some(TaskContext { cell })
            })
            .ok()
            .flatten()
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

/// Calls `f` with `cell`, a task of `shared`, as the current task on this
/// thread; the previous one is back when `f` returns or unwinds.
#[inline]
pub(crate) fn enter<R>(shared: &Shared, cell: &Arc<TaskCell>, f: impl FnOnce() -> R) -> R {
    /// Clears the thread's blocking stamp, on return and on unwind alike.
    struct Polled<'a>(&'a Shared);

    impl Drop for Polled<'_> {
        fn drop(&mut self) {
            crate::blocking::poll_ends(self.0);
        }
    }

    lend(&CURRENT, &mut Some(Arc::clone(cell)), || {
        crate::blocking::poll_begins(shared, cell);
        let _polled = Polled(shared);
        f()
    })
}

/// Calls `f` with `value` lent to the thread-local `key`, and takes it back
/// after (also if `f` unwinds); whatever `key` held is back then too. The
/// running task here, a request's layer in `layer/current.rs`.
///
/// A thread being torn down has no thread-local to lend to: `f` runs without
/// it, and nothing panics.
pub(crate) fn lend<T: 'static, R>(
    key: &'static LocalKey<Cell<Option<T>>>,
    value: &mut Option<T>,
    f: impl FnOnce() -> R,
) -> R {
    /// Takes the value back and puts the previous one in place.
    struct Restore<'a, T: 'static> {
        key: &'static LocalKey<Cell<Option<T>>>,
        value: &'a mut Option<T>,
        previous: Option<T>,
    }
    impl<T> Drop for Restore<'_, T> {
        fn drop(&mut self) {
            let previous = self.previous.take();
            if let Ok(ours) = self.key.try_with(|current| current.replace(previous)) {
                *self.value = ours;
            }
        }
    }
    let Ok(previous) = key.try_with(|current| current.replace(value.take())) else {
        return f();
    };
    let _restore = Restore {
        key,
        value,
        previous,
    };
    f()
}

pin_project! {
    /// `work`, polled and dropped with `cell` as the current task.
    pub(crate) struct Scoped<F> {
        shared: Arc<Shared>,
        cell: Arc<TaskCell>,
        #[pin]
        work: Option<F>,
    }

    impl<F> PinnedDrop for Scoped<F> {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            let mut work = this.work;
            enter(this.shared, this.cell, || work.set(None));
        }
    }
}

/// Runs `work` with `cell`, a task of `shared`, as the current task.
pub(crate) fn scope<F: Future>(shared: Arc<Shared>, cell: Arc<TaskCell>, work: F) -> Scoped<F> {
    Scoped {
        shared,
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
        enter(this.shared, this.cell, || {
            work.as_pin_mut()
                .map_or(Poll::Pending, |work| work.poll(cx))
        })
    }
}
