//! Cancelling one task on request: [`Background::cancel`](crate::Background::cancel) and
//! [`TaskHandle::cancel`](crate::TaskHandle::cancel).

use std::sync::Arc;

use crate::cell::TaskCell;
use crate::end::{self, Ending, How};
use crate::inner::Shared;
use crate::{TaskError, TaskId};

/// What [`TaskHandle::cancel`](crate::TaskHandle::cancel) or
/// [`Background::cancel`](crate::Background::cancel) did.
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
pub(crate) fn cancel(shared: &Arc<Shared>, cell: &Arc<TaskCell>) -> CancelOutcome {
    match end::end(shared, cell, Err(TaskError::Cancelled), How::Cancel) {
        Ending::Lost => CancelOutcome::AlreadyEnded,
        Ending::Ended | Ending::Report(_) => CancelOutcome::Cancelled,
    }
}

/// Cancels the task with this id, if it is in flight.
pub(crate) fn cancel_id(shared: &Arc<Shared>, id: TaskId) -> CancelOutcome {
    match shared.registry.get(id) {
        Some(cell) => cancel(shared, &cell),
        None if shared.registry.was_issued(id) => CancelOutcome::AlreadyEnded,
        None => CancelOutcome::Unknown,
    }
}
