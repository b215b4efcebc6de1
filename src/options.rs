//! A task's options as data, and the one merge: what the default config
//! holds and what admission reads. Built through [`TaskConfig`](crate::TaskConfig).

use std::borrow::Cow;
use std::time::Duration;

use tokio::time::Instant;

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
    pub(crate) start: Option<Start>,
    /// `Some` when the task names its flow (else its name does).
    pub(crate) flow: Option<Cow<'static, str>>,
    /// `Some` for a unique task: its key.
    pub(crate) unique: Option<Cow<'static, str>>,
}

/// When a delayed task falls due.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Start {
    /// This long after its phase comes.
    After(Duration),
    /// At this instant (or when its phase comes, if that is later).
    At(Instant),
}

impl Start {
    /// The instant the task falls due, its phase having come `now`.
    pub(crate) fn due(self, now: Instant) -> Instant {
        match self {
            Start::After(delay) => now + delay,
            Start::At(at) => at.max(now),
        }
    }
}

static NONE: TaskOptions = TaskOptions {
    name: None,
    shield: None,
    on_error: None,
    phase: None,
    timeout: None,
    retry: None,
    start: None,
    flow: None,
    unique: None,
};

/// A task's options resolved against the default config: what admission
/// reads.
pub(crate) struct Resolved {
    pub(crate) name: Option<Cow<'static, str>>,
    pub(crate) shield: bool,
    pub(crate) on_error: Option<SharedErrorHandler>,
    pub(crate) phase: Phase,
    pub(crate) timeout: Option<Duration>,
    pub(crate) retry: Option<RetryPolicy>,
    pub(crate) start: Option<Start>,
}

impl TaskOptions {
    /// No option set: every one inherits (what a plain `schedule` passes).
    pub(crate) const NONE: &TaskOptions = &NONE;

    /// The one merge: an option set for the task wins over the default
    /// config's. The name ranks: the task's, then `own` (a task type's own
    /// name), then the default config's. The phase: the task's, then the
    /// scheduler's (`after_route()`, ..), then the default config's, then
    /// [`Phase::Immediate`].
    #[inline(always)]
    pub(crate) fn resolve(
        &self,
        default: &TaskOptions,
        own: Option<Cow<'static, str>>,
        scheduler_phase: Option<Phase>,
    ) -> Resolved {
        if std::ptr::eq(self, &NONE) {
            // Nothing set for the task (a plain `schedule`): the defaults.
            return Resolved {
                name: own.or_else(|| default.name.clone()),
                shield: default.shield.unwrap_or(false),
                on_error: default.on_error.clone(),
                phase: scheduler_phase.or(default.phase).unwrap_or_default(),
                timeout: default.timeout,
                retry: default.retry,
                start: default.start,
            };
        }
        Resolved {
            name: self.name.clone().or(own).or_else(|| default.name.clone()),
            shield: self.shield.or(default.shield).unwrap_or(false),
            on_error: self
                .on_error
                .as_ref()
                .or(default.on_error.as_ref())
                .cloned(),
            phase: self
                .phase
                .or(scheduler_phase)
                .or(default.phase)
                .unwrap_or_default(),
            timeout: self.timeout.or(default.timeout),
            retry: self.retry.or(default.retry),
            start: self.start.or(default.start),
        }
    }
}
