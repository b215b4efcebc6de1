//! The recent failures: the last few tasks that failed, panicked, timed out
//! or were rejected, kept in a bounded ring for operators (the admin page,
//! [`Background::recent_failures`](crate::Background::recent_failures)).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};
use std::time::SystemTime;

use crate::outcome::OutcomeKind;
use crate::{TaskError, TaskInfo};

/// A task that did not complete: as it was when it ended, and why.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RecentFailure {
    /// The task (its name, request, attempts...), as it was when it ended.
    pub info: TaskInfo,
    /// Why it did not complete.
    pub error: TaskError,
    /// When it ended (wall-clock time).
    pub at: SystemTime,
}

/// The last `capacity` failures, newest last. Written only when a task fails:
/// a task that completes pays nothing.
#[derive(Debug)]
pub(crate) struct RecentFailures {
    capacity: usize,
    ring: Mutex<VecDeque<RecentFailure>>,
}

/// How many failures a `Background` keeps unless told otherwise.
pub(crate) const DEFAULT_CAPACITY: usize = 100;

impl Default for RecentFailures {
    fn default() -> Self {
        RecentFailures::new(DEFAULT_CAPACITY)
    }
}

impl RecentFailures {
    pub(crate) fn new(capacity: usize) -> Self {
        RecentFailures {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(DEFAULT_CAPACITY))),
        }
    }

    /// Whether [`record`](Self::record) keeps a failure with `error`: not a
    /// cancellation, nor anything when the capacity is 0.
    pub(crate) fn keeps(&self, error: &TaskError) -> bool {
        self.capacity != 0 && OutcomeKind::of_error(error) != OutcomeKind::Cancelled
    }

    /// Keeps `error` if it is a failure (a cancellation is not).
    pub(crate) fn record(&self, info: &TaskInfo, error: &TaskError) {
        if !self.keeps(error) {
            return;
        }
        let failure = RecentFailure {
            info: info.clone(),
            error: error.clone(),
            at: SystemTime::now(),
        };
        // Nothing panics while the lock is held.
        let mut ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(failure);
    }

    /// The failures kept, newest first.
    pub(crate) fn list(&self) -> Vec<RecentFailure> {
        let ring = self.ring.lock().unwrap_or_else(PoisonError::into_inner);
        ring.iter().rev().cloned().collect()
    }
}
