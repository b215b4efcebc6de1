//! A task's options as data, and the one merge: what the default config
//! holds and what admission reads. Built through [`TaskConfig`](crate::TaskConfig).

use std::borrow::Cow;
use std::time::Duration;

use crate::Phase;
use crate::handler::SharedErrorHandler;
use crate::limits::RetryPolicy;

/// Every option of a task, each `None` until set. Internal: public only
/// because the [`TaskConfig`](crate::TaskConfig) builder's type names it.
#[doc(hidden)]
#[derive(Debug, Clone, Default)]
pub struct TaskOptions {
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) shield: Option<bool>,
    pub(crate) on_error: Option<SharedErrorHandler>,
    pub(crate) phase: Option<Phase>,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
}

impl TaskOptions {
    /// `self` with every unset field taken from `base`: what `base` then
    /// `self` applied in that order gives.
    pub(crate) fn merged_over(self, base: &TaskOptions) -> TaskOptions {
        TaskOptions {
            name: self.name.or_else(|| base.name.clone()),
            shield: self.shield.or(base.shield),
            on_error: self.on_error.or_else(|| base.on_error.clone()),
            phase: self.phase.or(base.phase),
            timeout: self.timeout.or(base.timeout),
            retry: self.retry.or(base.retry),
        }
    }
}
