//! The registry of in-flight tasks: what shutdown, `in_flight()`, `stats()`
//! and `wait_idle()` read.
//!
//! # Invariants
//!
//! - A task is in the map from `schedule` until its outcome has been reported
//!   (logged and handed to its error handler); then it leaves, so the map never
//!   grows with the number of tasks ever run.
//! - `in_flight` equals the number of entries in the map whenever no `insert`
//!   or `remove` is under way; it is the count `wait_idle` waits on.
//! - Each task is removed exactly once: only the winner of
//!   [`TaskCell::try_finish`] reports and removes it.
//! - The counters are updated before the task's `in_flight` decrement, which
//!   is `Release`; `wait_idle` reads `in_flight` with `Acquire`, so the
//!   counters are final when it resolves.

mod cell;
mod counters;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll, ready};

use dashmap::DashMap;
use pin_project_lite::pin_project;
use rustc_hash::FxBuildHasher;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

pub(crate) use cell::{NewTask, TaskCell};
pub(crate) use counters::Counters;
pub use counters::Stats;

use crate::{TaskId, TaskInfo};

/// In-flight tasks by id, with the counters.
#[derive(Debug, Default)]
pub(crate) struct Registry {
    /// Ids are sequential integers: a multiplicative hash spreads them well at
    /// a fraction of SipHash's cost (nothing here comes from outside).
    tasks: DashMap<TaskId, Arc<TaskCell>, FxBuildHasher>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    /// Notified when `in_flight` drops to zero.
    idle: Notify,
    pub(crate) counters: Counters,
}

impl Registry {
    pub(crate) fn next_id(&self) -> TaskId {
        // Relaxed: uniqueness needs only the atomicity of the add.
        TaskId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Adds a just-scheduled task (counted as queued).
    pub(crate) fn insert(&self, cell: &Arc<TaskCell>) {
        self.counters.scheduled();
        // Relaxed: the count is only read as "zero or not" after a Release decrement.
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.tasks.insert(cell.id, Arc::clone(cell));
        crate::metrics::scheduled(cell);
    }

    /// Ends a task whose outcome has been reported: counts it, publishes the
    /// outcome to its handle, and removes it.
    pub(crate) fn end(&self, cell: &TaskCell, was_started: bool) {
        if let Some(outcome) = cell.decided_outcome() {
            self.counters.ended(was_started, outcome);
        }
        crate::metrics::ended(cell, was_started, cell.decided_outcome());
        cell.publish();
        self.tasks.remove(&cell.id);
        // Release: publishes the counters and the removal to `wait_idle`.
        if self.in_flight.fetch_sub(1, Ordering::Release) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<TaskCell>> {
        self.tasks.get(&id).map(|entry| Arc::clone(entry.value()))
    }

    /// Whether `id` was handed out (ids count up from 1).
    pub(crate) fn was_issued(&self, id: TaskId) -> bool {
        id.0 >= 1 && id.0 <= self.next_id.load(Ordering::Relaxed)
    }

    /// The cells of every task in flight (shard guards are released before
    /// this returns).
    pub(crate) fn cells(&self) -> Vec<Arc<TaskCell>> {
        self.tasks
            .iter()
            .map(|entry| Arc::clone(entry.value()))
            .collect()
    }

    pub(crate) fn snapshot(&self) -> Vec<TaskInfo> {
        let mut infos: Vec<TaskInfo> = self
            .tasks
            .iter()
            .map(|entry| entry.value().info())
            .collect();
        infos.sort_by_key(|info| info.id);
        infos
    }

    pub(crate) fn len(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn wait_idle(&self) -> WaitIdleFuture<'_> {
        WaitIdleFuture {
            registry: self,
            notified: self.idle.notified(),
        }
    }
}

pin_project! {
    /// Resolves when no task is in flight. See [`Background::wait_idle`](crate::Background::wait_idle).
    #[must_use = "futures do nothing unless polled"]
    pub struct WaitIdleFuture<'a> {
        registry: &'a Registry,
        #[pin]
        notified: Notified<'a>,
    }
}

impl Future for WaitIdleFuture<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let mut this = self.project();
        loop {
            // The `Notified` was created before this check, so a drop to zero
            // after it is never missed.
            if this.registry.len() == 0 {
                return Poll::Ready(());
            }
            ready!(this.notified.as_mut().poll(cx));
            this.notified.set(this.registry.idle.notified());
        }
    }
}

impl std::fmt::Debug for WaitIdleFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitIdleFuture")
            .field("in_flight", &self.registry.len())
            .finish()
    }
}
