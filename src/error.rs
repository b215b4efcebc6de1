//! Why a task did not complete.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// Why a task did not complete: every outcome other than success.
///
/// Each scheduled task ends exactly once: completed, or one of these. The
/// error is `Clone` so that handles, handlers and reports can all hold it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum TaskError {
    /// The task returned an error.
    Failed(Arc<dyn Error + Send + Sync + 'static>),
    /// The task panicked; the panic message, or a placeholder when the payload
    /// was not a string.
    Panicked(Arc<str>),
    /// The task ran past its timeout and was cancelled.
    TimedOut,
    /// The task was cancelled before it completed: at shutdown, or on request.
    Cancelled,
    /// The task was never admitted.
    Rejected(RejectReason),
}

impl TaskError {
    /// The outcome's name: `"failed"`, `"panicked"`, `"timed_out"`,
    /// `"cancelled"` or `"rejected"`, as logs and stats label it.
    pub fn kind(&self) -> &'static str {
        crate::outcome::OutcomeKind::of_error(self).label()
    }

    /// Whether this is [`TaskError::Failed`].
    pub fn is_failed(&self) -> bool {
        matches!(self, TaskError::Failed(_))
    }

    /// Whether this is [`TaskError::Panicked`].
    pub fn is_panicked(&self) -> bool {
        matches!(self, TaskError::Panicked(_))
    }

    /// Whether this is [`TaskError::TimedOut`].
    pub fn is_timed_out(&self) -> bool {
        matches!(self, TaskError::TimedOut)
    }

    /// Whether this is [`TaskError::Cancelled`].
    pub fn is_cancelled(&self) -> bool {
        matches!(self, TaskError::Cancelled)
    }

    /// Whether this is [`TaskError::Rejected`].
    pub fn is_rejected(&self) -> bool {
        matches!(self, TaskError::Rejected(_))
    }
}

impl fmt::Display for TaskError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TaskError::Failed(error) => write!(f, "task failed: {error}"),
            TaskError::Panicked(message) => write!(f, "task panicked: {message}"),
            TaskError::TimedOut => f.write_str("task timed out"),
            TaskError::Cancelled => f.write_str("task was cancelled"),
            TaskError::Rejected(reason) => write!(f, "task was rejected: {reason}"),
        }
    }
}

impl Error for TaskError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        match self {
            TaskError::Failed(error) => Some(&**error),
            TaskError::Rejected(reason) => Some(reason),
            _ => None,
        }
    }
}

/// Why a task was not admitted.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RejectReason {
    /// [`Background::shutdown`](crate::Background::shutdown) had begun.
    ShuttingDown,
    /// No tokio runtime to run the task on.
    NoRuntime,
    /// [`max_in_flight`](crate::BackgroundBuilder::max_in_flight) tasks were
    /// running and the overflow policy is [`Reject`](crate::OverflowPolicy::Reject).
    LimitReached {
        /// The limit that was reached.
        limit: usize,
    },
}

impl fmt::Display for RejectReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RejectReason::ShuttingDown => f.write_str("the background runtime is shutting down"),
            RejectReason::LimitReached { limit } => write!(
                f,
                "max_in_flight limit of {limit} tasks reached (overflow policy: reject)"
            ),
            RejectReason::NoRuntime => f.write_str(
                "no tokio runtime: build `Background` inside a runtime or pass one with `.runtime(handle)`",
            ),
        }
    }
}

impl Error for RejectReason {}

/// Turns a panic payload into its message.
pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> Arc<str> {
    if let Some(message) = payload.downcast_ref::<&'static str>() {
        Arc::from(*message)
    } else if let Some(message) = payload.downcast_ref::<String>() {
        Arc::from(message.as_str())
    } else {
        Arc::from("Box<dyn Any>")
    }
}
