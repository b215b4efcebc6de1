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
//! - Each task is removed exactly once: only the one who claimed its end
//!   (`end.rs`) removes it.
//! - The counters are updated before the task's `in_flight` decrement, which
//!   is `Release`; `wait_idle` reads `in_flight` with `Acquire`, so the
//!   counters are final when it resolves.

mod counters;
mod hash;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll, ready};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use pin_project_lite::pin_project;
use tokio::sync::Notify;
use tokio::sync::futures::Notified;

pub(crate) use counters::Counters;
pub use counters::Stats;

use crate::{TaskId, TaskInfo};

/// What the registry keeps of a task.
pub(crate) trait Entry {
    fn id(&self) -> TaskId;
    fn info(&self) -> TaskInfo;
}

/// In-flight tasks by id, with the counters.
#[derive(Debug)]
pub(crate) struct Registry<E> {
    /// Ids are sequential integers, hashed by runs of 16 (see `hash.rs`).
    tasks: DashMap<TaskId, Arc<E>, hash::Ids>,
    next_id: AtomicU64,
    in_flight: AtomicUsize,
    /// Notified when `in_flight` drops to zero.
    idle: Notify,
    /// Notified when a task a shutdown waits for has ended (see
    /// `TaskCell::ended_notified`).
    pub(crate) ended: Notify,
    pub(crate) counters: Counters,
}

/// What tasks' instants count from (set when the first registry is made,
/// before any task): a task keeps its times as nanoseconds after it, a word
/// instead of an `Instant`, and reads them without its registry.
static EPOCH: OnceLock<Instant> = OnceLock::new();

fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// `at` as nanoseconds after the epoch (0 for an earlier instant).
#[inline]
pub(crate) fn since_epoch(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch()).as_nanos()).unwrap_or(u64::MAX)
}

/// The instant `nanos` after the epoch.
pub(crate) fn at(nanos: u64) -> Instant {
    epoch() + Duration::from_nanos(nanos)
}

impl<E> Default for Registry<E> {
    fn default() -> Self {
        // The epoch comes before the registry's first task.
        let _ = epoch();
        Registry {
            tasks: DashMap::default(),
            next_id: AtomicU64::new(0),
            in_flight: AtomicUsize::new(0),
            idle: Notify::new(),
            ended: Notify::new(),
            counters: Counters::default(),
        }
    }
}

impl<E: Entry> Registry<E> {
    pub(crate) fn next_id(&self) -> TaskId {
        // Relaxed: uniqueness needs only the atomicity of the add.
        TaskId(self.next_id.fetch_add(1, Ordering::Relaxed) + 1)
    }

    /// Adds a just-scheduled task (counted as queued).
    #[inline]
    pub(crate) fn insert(&self, entry: &Arc<E>) {
        self.counters.scheduled();
        // Relaxed: the count is only read as "zero or not" after a Release decrement.
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.tasks.insert(entry.id(), Arc::clone(entry));
    }

    /// Removes a task that has ended and been counted
    /// ([`Counters::ended`]).
    #[inline]
    pub(crate) fn remove(&self, id: TaskId) {
        self.tasks.remove(&id);
        // Release: publishes the counters and the removal to `wait_idle`.
        if self.in_flight.fetch_sub(1, Ordering::Release) == 1 {
            self.idle.notify_waiters();
        }
    }

    pub(crate) fn get(&self, id: TaskId) -> Option<Arc<E>> {
        self.tasks.get(&id).map(|entry| Arc::clone(entry.value()))
    }

    /// Whether `id` was handed out (ids count up from 1).
    pub(crate) fn was_issued(&self, id: TaskId) -> bool {
        // Relaxed: an id the caller holds was handed out before it learned it.
        id.0 >= 1 && id.0 <= self.next_id.load(Ordering::Relaxed)
    }

    /// The cells of every task in flight, in schedule order (shard guards
    /// are released before this returns).
    pub(crate) fn entries(&self) -> Vec<Arc<E>> {
        let mut entries = Vec::with_capacity(self.len());
        // A `retain` that keeps every task: it walks each shard under its
        // write lock, where `iter` would clone and drop a guard for each
        // entry (two atomic operations a task, a million at a shutdown). A
        // task ending meanwhile waits for its shard either way; a lookup in
        // that shard waits too (a unique key's claim, the blocking detector).
        self.tasks.retain(|id, entry| {
            entries.push((*id, Arc::clone(entry)));
            true
        });
        in_id_order(entries)
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
}

/// `entries` in the order of the ids beside them (an order read through each
/// cell would miss the cache at every step: a million tasks at a shutdown).
///
/// Ids are issued one after another, so those in flight mostly span a range
/// not much wider than their count: each is then placed at its offset in
/// that range, in one pass, where a sort would compare each about twenty
/// times. Sparser ids (a few long-lived tasks among many ended ones) are
/// sorted.
fn in_id_order<E>(mut entries: Vec<(TaskId, Arc<E>)>) -> Vec<Arc<E>> {
    if entries.is_empty() {
        return Vec::new();
    }
    let (first, last) = entries
        .iter()
        .fold((u64::MAX, 0), |(first, last), (id, _)| {
            (first.min(id.0), last.max(id.0))
        });
    let span = usize::try_from(last - first).map_or(usize::MAX, |span| span.saturating_add(1));
    if span > entries.len().saturating_mul(2) {
        entries.sort_unstable_by_key(|(id, _)| *id);
        return entries.into_iter().map(|(_, entry)| entry).collect();
    }
    let mut slots: Vec<Option<Arc<E>>> = Vec::new();
    slots.resize_with(span, || None);
    for (id, entry) in entries {
        // In range: `first <= id <= last`, and `span` is `last - first + 1`.
        if let Some(slot) = usize::try_from(id.0 - first)
            .ok()
            .and_then(|offset| slots.get_mut(offset))
        {
            *slot = Some(entry);
        }
    }
    slots.into_iter().flatten().collect()
}

impl<E> Registry<E> {
    /// Calls `f` with each task in flight, in no particular order, copying
    /// nothing out: for readers that keep a few tasks of many (the admin
    /// router's page of tasks, its group counts).
    ///
    /// `f` runs while a shard of the map is read-locked (a task ending in
    /// that shard waits for it): it must be quick, must not block, and must
    /// not call back into the registry (a write to the same shard would
    /// deadlock). A task inserted or removed during the walk is seen once or
    /// not at all.
    #[cfg(feature = "admin")]
    pub(crate) fn for_each(&self, mut f: impl FnMut(&Arc<E>)) {
        for entry in self.tasks.iter() {
            f(entry.value());
        }
    }

    pub(crate) fn len(&self) -> usize {
        // Acquire: see `WaitIdleFuture::poll`.
        self.in_flight.load(Ordering::Acquire)
    }

    pub(crate) fn wait_idle(&self) -> WaitIdleFuture<'_> {
        WaitIdleFuture {
            in_flight: &self.in_flight,
            idle: &self.idle,
            notified: self.idle.notified(),
        }
    }
}

pin_project! {
    /// Resolves when no task is in flight. See [`Background::wait_idle`](crate::Background::wait_idle).
    #[must_use = "futures do nothing unless polled"]
    pub struct WaitIdleFuture<'a> {
        in_flight: &'a AtomicUsize,
        idle: &'a Notify,
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
            // Acquire, paired with the Release decrement in `remove`: the
            // counters are final once this reads zero.
            if this.in_flight.load(Ordering::Acquire) == 0 {
                return Poll::Ready(());
            }
            ready!(this.notified.as_mut().poll(cx));
            this.notified.set(this.idle.notified());
        }
    }
}

impl std::fmt::Debug for WaitIdleFuture<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WaitIdleFuture")
            // Relaxed: for display.
            .field("in_flight", &self.in_flight.load(Ordering::Relaxed))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `(id, value)` pairs for `ids`, the value being the id too.
    fn pairs(ids: &[u64]) -> Vec<(TaskId, Arc<u64>)> {
        ids.iter().map(|&id| (TaskId(id), Arc::new(id))).collect()
    }

    fn order(ids: &[u64]) -> Vec<u64> {
        in_id_order(pairs(ids))
            .iter()
            .map(|value| **value)
            .collect()
    }

    #[test]
    fn dense_ids_come_back_in_order_with_the_gaps_closed() {
        // In runs of 16, as the map iterates them, with ended tasks' gaps.
        let mut ids: Vec<u64> = (1000..1016).chain(968..984).chain(984..1000).collect();
        ids.retain(|id| id % 7 != 0);
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(order(&ids), sorted);
    }

    #[test]
    fn sparse_ids_come_back_in_order() {
        let ids = [u64::MAX - 1, 3, 1 << 40, 1, 77];
        assert_eq!(order(&ids), [1, 3, 77, 1 << 40, u64::MAX - 1]);
    }

    #[test]
    fn no_ids_and_one_id() {
        assert!(order(&[]).is_empty());
        assert_eq!(order(&[42]), [42]);
    }
}
