//! Cells kept for reuse: a task's cell goes back to its `Background` when
//! its task has ended and its runner held the last reference, and the next
//! task scheduled takes it instead of allocating.
//!
//! A task is often scheduled on one thread and run on another (a request's
//! task stolen by the other worker; any task scheduled from outside the
//! runtime). Freed there, its cell would cost the allocator a free across
//! threads, the slow path of glibc's malloc (`examples/registry_floor.rs`
//! measures it). A bounded lock-free queue (crossbeam-queue's `ArrayQueue`)
//! hands cells back to whichever thread schedules next.
//!
//! # Invariants
//!
//! - A cell in the pool belongs to no task: it went in through
//!   [`CellPool::recycle`], after its task ended, with `Arc::get_mut`
//!   proving its runner held the only reference, and vacated (it holds no
//!   request, handler, error, token or waker, and only a weak reference to
//!   its `Background`, which owns the pool: no cycle keeps either alive).
//! - A cell comes out only through [`CellPool::cell`], which reuses it only
//!   if `Arc::get_mut` succeeds again (the runner's own reference may not be
//!   dropped yet); otherwise it is dropped and a new cell is made.
//! - The pool keeps at most [`CellPool::CAPACITY`] cells: a cell that finds
//!   it full is freed.

use std::sync::Arc;

use crossbeam_queue::ArrayQueue;

use super::{NewTask, TaskCell};
use crate::TaskId;
use crate::inner::Shared;

/// A `Background`'s cells kept for reuse.
pub(crate) struct CellPool {
    cells: ArrayQueue<Arc<TaskCell>>,
}

impl CellPool {
    /// The most cells kept (about 200 kB of them at most).
    pub(crate) const CAPACITY: usize = 1024;

    pub(crate) fn new() -> Self {
        CellPool {
            cells: ArrayQueue::new(Self::CAPACITY),
        }
    }

    /// A cell for `task`, a task of `shared` (which owns this pool): a
    /// kept one if there is one nobody holds any more, else a new one.
    #[inline]
    pub(crate) fn cell(&self, shared: &Arc<Shared>, task: NewTask, id: TaskId) -> Arc<TaskCell> {
        if let Some(mut cell) = self.cells.pop() {
            if let Some(vacant) = Arc::get_mut(&mut cell) {
                vacant.reuse(task, id, shared);
                return cell;
            }
        }
        Arc::new(TaskCell::new(task, id, shared, Arc::downgrade(shared)))
    }

    /// Keeps `cell`, whose task has ended, for reuse if `cell` is its only
    /// reference and the pool has room. The caller drops its reference
    /// right after.
    #[inline]
    pub(crate) fn recycle(&self, cell: &mut Arc<TaskCell>) {
        if let Some(ended) = Arc::get_mut(cell) {
            ended.vacate();
            let _ = self.cells.push(Arc::clone(cell));
        }
    }
}

impl std::fmt::Debug for CellPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CellPool")
            .field("kept", &self.cells.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use crate::{Background, TaskError, TaskInfo};

    /// Up to a second for `future`: a bug fails fast instead of hanging.
    async fn within<F: std::future::Future>(what: &str, future: F) -> F::Output {
        tokio::time::timeout(Duration::from_secs(1), future)
            .await
            .unwrap_or_else(|_| panic!("{what} took over a second"))
    }

    fn kept(background: &Background) -> usize {
        background.shared.cells.cells.len()
    }

    /// On one thread, a task's runner has dropped its guard by the time
    /// `wait_idle` wakes its waiter (the runtime drops a finished future
    /// before it polls another task).
    #[tokio::test]
    async fn an_ended_tasks_cell_serves_the_next_task_as_new() {
        let background = Background::new();
        let failing = background.task().name("first").build();
        drop(failing.schedule(async { Err::<(), _>("no") }));
        within("the first task", background.wait_idle()).await;
        assert_eq!(kept(&background), 1, "the ended task's cell is kept");

        let handle = background.task().name("second").build().schedule(async {});
        assert_eq!(kept(&background), 0, "the second task took it");
        let info = handle.info();
        assert_eq!(info.name, "second");
        assert_eq!(info.id.as_u64(), 2);
        assert_eq!(info.attempts, 0);
        assert!(info.started_at.is_none());
        assert!(
            handle.try_outcome().is_none(),
            "the first task's failure is gone"
        );
        assert!(within("the second task", handle.outcome()).await.is_ok());
    }

    /// A cell still held (here by a handle) when its task ends is not kept:
    /// it is freed with its last reference.
    #[tokio::test]
    async fn a_cell_held_past_its_task_is_not_kept() {
        let background = Background::new();
        let handle = background.schedule(async {});
        assert!(within("the task", handle.outcome()).await.is_ok());
        within("idle", background.wait_idle()).await;
        assert_eq!(kept(&background), 0);
        drop(handle);
        assert_eq!(kept(&background), 0);
    }

    /// A kept cell holds nothing of its task: not its error handler (nor
    /// what the handler holds), not its `Background`, which goes with its
    /// last user.
    #[tokio::test]
    async fn a_kept_cell_keeps_neither_its_handler_nor_its_background() {
        let background = Background::new();
        let held = Arc::new(());
        let handler_holds = Arc::clone(&held);
        let config = background
            .task()
            .on_error(move |_: &TaskInfo, _: &TaskError| {
                let _ = &handler_holds;
            })
            .build();
        drop(config.schedule(async {}));
        drop(config);
        within("the task", background.wait_idle()).await;
        assert_eq!(kept(&background), 1);
        assert_eq!(Arc::strong_count(&held), 1, "the handler was dropped");

        let shared = Arc::downgrade(&background.shared);
        drop(background);
        assert!(shared.upgrade().is_none(), "the Background was freed");
    }
}
