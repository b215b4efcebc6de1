//! The one list of the ways a task ends: what counters, metrics, logs and
//! the shutdown report read. A new kind is a compile error wherever it must
//! be handled (no match here has a catch-all arm).

use crate::TaskError;

/// How a task ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum OutcomeKind {
    Completed,
    Failed,
    Panicked,
    TimedOut,
    Cancelled,
    Rejected,
}

/// Where a task that was in flight when shutdown began is listed, unless it
/// was still in flight at the deadline (then it is overdue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ShutdownList {
    /// It ran to an end, whatever the result.
    Finished,
    /// It was cancelled, or never started.
    Cancelled,
}

impl OutcomeKind {
    /// Every kind, in counter order.
    pub(crate) const ALL: [OutcomeKind; 6] = [
        OutcomeKind::Completed,
        OutcomeKind::Failed,
        OutcomeKind::Panicked,
        OutcomeKind::TimedOut,
        OutcomeKind::Cancelled,
        OutcomeKind::Rejected,
    ];

    pub(crate) fn of(outcome: &Result<(), TaskError>) -> Self {
        match outcome {
            Ok(()) => OutcomeKind::Completed,
            Err(error) => OutcomeKind::of_error(error),
        }
    }

    pub(crate) fn of_error(error: &TaskError) -> Self {
        match error {
            TaskError::Failed(_) => OutcomeKind::Failed,
            TaskError::Panicked(_) => OutcomeKind::Panicked,
            TaskError::TimedOut => OutcomeKind::TimedOut,
            TaskError::Cancelled => OutcomeKind::Cancelled,
            TaskError::Rejected(_) => OutcomeKind::Rejected,
        }
    }

    /// The label of logs, stats, metrics and JSON.
    pub(crate) fn label(self) -> &'static str {
        match self {
            OutcomeKind::Completed => "completed",
            OutcomeKind::Failed => "failed",
            OutcomeKind::Panicked => "panicked",
            OutcomeKind::TimedOut => "timed_out",
            OutcomeKind::Cancelled => "cancelled",
            OutcomeKind::Rejected => "rejected",
        }
    }

    /// The position of the kind in [`ALL`](Self::ALL): its counter's slot.
    pub(crate) fn index(self) -> usize {
        match self {
            OutcomeKind::Completed => 0,
            OutcomeKind::Failed => 1,
            OutcomeKind::Panicked => 2,
            OutcomeKind::TimedOut => 3,
            OutcomeKind::Cancelled => 4,
            OutcomeKind::Rejected => 5,
        }
    }

    /// Whether a task ending so is logged as an error (else as a warning:
    /// it was stopped, not broken). Success is not logged.
    pub(crate) fn is_error(self) -> bool {
        match self {
            OutcomeKind::Failed | OutcomeKind::Panicked | OutcomeKind::TimedOut => true,
            OutcomeKind::Completed | OutcomeKind::Cancelled | OutcomeKind::Rejected => false,
        }
    }

    pub(crate) fn shutdown_list(self) -> ShutdownList {
        match self {
            OutcomeKind::Completed
            | OutcomeKind::Failed
            | OutcomeKind::Panicked
            | OutcomeKind::TimedOut => ShutdownList::Finished,
            OutcomeKind::Cancelled | OutcomeKind::Rejected => ShutdownList::Cancelled,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::OutcomeKind;

    #[test]
    fn each_kind_has_its_own_slot_in_counter_order() {
        for (i, kind) in OutcomeKind::ALL.into_iter().enumerate() {
            assert_eq!(kind.index(), i, "{kind:?}");
        }
    }
}
