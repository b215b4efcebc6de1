//! Task configuration and its field-by-field merge.

use std::borrow::Cow;
use std::time::Duration;

use typed_builder::TypedBuilder;

use crate::handler::{IntoErrorHandler, SharedErrorHandler};
use crate::limits::RetryPolicy;

/// How tasks run: set once as the default (`Background::builder().default_config(..)`)
/// and per task (`tasks.task()...`).
///
/// Every field is optional. Per-task values override the default config field
/// by field: a field set later wins, an unset field inherits.
///
/// ```
/// use axum_background::{TaskConfig, TaskError, TaskInfo};
///
/// let config = TaskConfig::builder()
///     .name("mailer")
///     .on_error(|info: &TaskInfo, error: &TaskError| eprintln!("{}: {error}", info.name))
///     .build();
/// assert_eq!(config.name(), Some("mailer"));
/// ```
#[derive(Debug, Clone, Default, TypedBuilder)]
#[builder(field_defaults(default))]
#[non_exhaustive]
pub struct TaskConfig {
    /// The task's name in logs, spans and [`TaskInfo`](crate::TaskInfo).
    ///
    /// In the default config it names ad-hoc futures and closures only: a
    /// named task type keeps its own name unless the task sets one.
    #[builder(setter(strip_option, into))]
    pub(crate) name: Option<Cow<'static, str>>,

    /// Whether the task is shielded: at shutdown it may finish (up to the
    /// grace period) while unshielded tasks are cancelled. Default `false`.
    #[builder(setter(strip_option))]
    pub(crate) shield: Option<bool>,

    /// Where the task's failure goes after it is logged: an
    /// [`ErrorHandler`](crate::ErrorHandler), a sync closure or an async fn.
    #[builder(setter(
        doc = "Sets the error handler: an `ErrorHandler`, a sync `Fn(&TaskInfo, &TaskError)` or an async `Fn(TaskInfo, TaskError)`.",
        fn transform<H, M>(handler: H) -> Option<SharedErrorHandler>
        where
            H: IntoErrorHandler<M>,
        {
            Some(handler.into_shared())
        }
    ))]
    pub(crate) on_error: Option<SharedErrorHandler>,

    /// How long each run of the task may take. An async task past it is
    /// dropped; a sync task past it is reported timed out and its
    /// cancellation fires, but its thread cannot be interrupted and runs on.
    /// Either way the task ends as [`TaskError::TimedOut`](crate::TaskError::TimedOut).
    #[builder(setter(strip_option))]
    pub(crate) timeout: Option<Duration>,

    /// How a failed task is run again. Applies to tasks scheduled through a
    /// retrying route (`tasks.task().retry(..)` or `.retryable()`), which take
    /// only tasks that can run again ([`Rerunnable`](crate::Rerunnable)).
    #[builder(setter(strip_option))]
    pub(crate) retry: Option<RetryPolicy>,
}

impl TaskConfig {
    /// The name, if set.
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// The shield flag, if set.
    pub fn shield(&self) -> Option<bool> {
        self.shield
    }

    /// The error handler, if set.
    pub fn on_error(&self) -> Option<&SharedErrorHandler> {
        self.on_error.as_ref()
    }

    /// The timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.timeout
    }

    /// The retry policy, if set.
    pub fn retry(&self) -> Option<RetryPolicy> {
        self.retry
    }

    /// `self` with every unset field taken from `base`: what `base` then
    /// `self` applied in that order gives.
    #[must_use]
    pub fn merged_over(self, base: &TaskConfig) -> TaskConfig {
        TaskConfig {
            name: self.name.or_else(|| base.name.clone()),
            shield: self.shield.or(base.shield),
            on_error: self.on_error.or_else(|| base.on_error.clone()),
            timeout: self.timeout.or(base.timeout),
            retry: self.retry.or(base.retry),
        }
    }
}
