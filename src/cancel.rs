//! Cancelling one task on request: [`Background::cancel`] and
//! [`TaskHandle::cancel`](crate::TaskHandle::cancel).

use std::sync::Arc;

use crate::background::Background;
use crate::end::{self, Ending, How};
use crate::registry::TaskCell;
use crate::{TaskError, TaskId};

/// What [`TaskHandle::cancel`](crate::TaskHandle::cancel) or
/// [`Background::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "says whether the task was cancelled or had already ended"]
pub enum CancelOutcome {
    /// The task was in flight and now ends as [`TaskError::Cancelled`].
    Cancelled,
    /// The task had already ended (or was ending): nothing changed.
    AlreadyEnded,
    /// No task with this id was ever scheduled by this `Background`.
    Unknown,
}

impl CancelOutcome {
    /// Whether this call cancelled the task.
    pub fn is_cancelled(self) -> bool {
        self == CancelOutcome::Cancelled
    }
}

/// Cancels one task: it ends now as [`TaskError::Cancelled`]. A queued task
/// never starts; a running async task is dropped at its next poll (then
/// reported); a running sync task's cancellation fires but its thread runs
/// on (its eventual result is ignored).
pub(crate) fn cancel(cell: &Arc<TaskCell>) -> CancelOutcome {
    match end::end(cell, Err(TaskError::Cancelled), How::Cancel) {
        Ending::Lost => CancelOutcome::AlreadyEnded,
        Ending::Ended | Ending::Report(_) => CancelOutcome::Cancelled,
    }
}

impl Background {
    /// Cancels the task with this id: it ends as [`TaskError::Cancelled`],
    /// exactly once (logged, passed to its error handler, counted).
    ///
    /// A queued task never starts; a running async task is dropped at its next
    /// `.await`; a running sync task cannot be interrupted: its
    /// [`TaskContext`](crate::TaskContext) cancellation fires and its thread
    /// runs on, its eventual result ignored. Shielding protects from shutdown,
    /// not from this explicit request.
    pub fn cancel(&self, id: TaskId) -> CancelOutcome {
        let registry = &self.shared.registry;
        match registry.get(id) {
            Some(cell) => cancel(&cell),
            None if registry.was_issued(id) => CancelOutcome::AlreadyEnded,
            None => CancelOutcome::Unknown,
        }
    }
}
