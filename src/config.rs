//! A task's options: [`TaskConfig`], its one builder, the field-by-field
//! merge, and what a per-task builder yields ([`ConfiguredTasks`]).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::time::Duration;

use typed_builder::TypedBuilder;

use crate::Phase;
use crate::extractor::Tasks;
use crate::handle::TaskHandle;
use crate::handler::{IntoErrorHandler, SharedErrorHandler};
use crate::limits::RetryPolicy;
use crate::options::Start;
#[doc(hidden)]
pub use crate::options::TaskOptions;
use crate::task::{IntoBackgroundTask, Rerunnable};

/// A task's options: its name, shield, error handler, phase, timeout and
/// retry policy.
///
/// One builder sets them everywhere: `TaskConfig::builder()` for the default
/// config (`Background::builder().default_config(..)`), and
/// [`tasks.task()`](crate::Tasks::task), the same builder pre-filled with its
/// scheduler, for one task. Every option is optional; per-task values
/// override the default config's field by field (a field set later wins, an
/// unset field inherits).
///
/// | option | what it does | unset |
/// |---|---|---|
/// | `name` | the task's name in logs, spans and [`TaskInfo`](crate::TaskInfo) | the task type's name; for a future or closure, the default config's, else derived from its type |
/// | `shield` | at shutdown the task may finish (up to the grace period) while unshielded ones are cancelled | `false` |
/// | `on_error` | where the task's failure goes after it is logged (see [`IntoErrorHandler`]) | the default config's, else none |
/// | `phase` | when the task starts (see [`Phase`]) | the scheduler's ([`after_route()`](crate::Tasks::after_route), ..), else the default config's, else [`Phase::Immediate`] |
/// | `timeout` | how long each run may take; past it the task ends as [`TaskError::TimedOut`](crate::TaskError::TimedOut) (an async task is dropped; a sync task's cancellation fires, its thread runs on) | none |
/// | `retry` | how a failed task is run again (see [`RetryPolicy`]) | runs once |
/// | `flow` | the flow the task belongs to (see [`FlowLimit`](crate::FlowLimit)) | the flow named like the task, if any |
/// | `unique` | a key: while a task with the same key is in flight, `schedule` returns its handle ([`TaskHandle::is_duplicate`](crate::TaskHandle::is_duplicate)) instead of starting another | every task starts |
/// | `delay` / `at` | starts the task later: a delay after its phase comes, or an instant; until then it is queued (listed with its due time in [`TaskInfo::due_at`](crate::TaskInfo::due_at), cancellable, holding no slot) | starts when its phase comes |
///
/// `retry` is the one option that changes what can be scheduled: a per-task
/// builder with a retry policy schedules only tasks that can run again (a
/// `Clone` task, or a factory closure), checked at compile time. In the
/// default config, `retry` is the policy of the durable task types
/// registered without their own; an in-process task is retried only with its
/// own `.retry(..)`.
///
/// ```
/// use std::time::Duration;
/// use axum_background::{Phase, RetryPolicy, TaskConfig, TaskError, TaskInfo, Tasks};
///
/// // The default config of a `Background`.
/// let config = TaskConfig::builder()
///     .timeout(Duration::from_secs(30))
///     .on_error(|info: &TaskInfo, error: &TaskError| eprintln!("{}: {error}", info.name))
///     .build();
/// assert_eq!(config.timeout(), Some(Duration::from_secs(30)));
///
/// async fn charge(tasks: Tasks) {
///     // One task: the same builder, pre-filled with its scheduler.
///     tasks
///         .task()
///         .name("charge")
///         .shield(true)
///         .phase(Phase::AfterResponse)
///         .retry(RetryPolicy::attempts(3))
///         .build()
///         .schedule(move || async { Ok::<(), std::io::Error>(()) });
/// }
/// ```
#[must_use = "a config does nothing until it is given to a `Background` or a task"]
#[derive(Clone, Default, TypedBuilder)]
#[builder(
    doc,
    builder_method(doc = "Starts a [`TaskConfig`]; every option is optional. \
                          Finish with `.build()`."),
    builder_type(doc = "The builder of a [`TaskConfig`], from [`TaskConfig::builder`], \
                        or pre-filled with its scheduler from [`Tasks::task`]: \
                        then `.build()` yields a [`ConfiguredTasks`] that schedules. \
                        See [`TaskConfig`] for the options."),
    build_method(vis = "", name = __build)
)]
#[non_exhaustive]
pub struct TaskConfig {
    #[builder(via_mutators(init = TaskOptions::default()), mutators(
        /// The task's name in logs, spans and [`TaskInfo`](crate::TaskInfo).
        #[allow(unreachable_pub)] // the builder method made from it is public
        pub fn name(&mut self, name: impl Into<Cow<'static, str>>) {
            self.options.name = Some(name.into());
        }

        /// Whether the task may finish during shutdown (up to the grace
        /// period) while unshielded tasks are cancelled.
        #[allow(unreachable_pub)]
        pub fn shield(&mut self, shield: bool) {
            self.options.shield = Some(shield);
        }

        /// Where the task's failure goes after it is logged: any form
        /// [`IntoErrorHandler`] accepts.
        #[allow(unreachable_pub)]
        pub fn on_error<H, M>(&mut self, handler: H)
        where
            H: IntoErrorHandler<M>,
        {
            self.options.on_error = Some(handler.into_shared());
        }

        /// When the task starts; see [`Phase`].
        #[allow(unreachable_pub)]
        pub fn phase(&mut self, phase: Phase) {
            self.options.phase = Some(phase);
        }

        /// How long each run of the task may take.
        #[allow(unreachable_pub)]
        pub fn timeout(&mut self, timeout: Duration) {
            self.options.timeout = Some(timeout);
        }

        /// Starts the task `delay` after its phase comes (`tasks.task()
        /// .delay(Duration::from_secs(600))`: in ten minutes). Until then it
        /// is queued: in flight, listed with its due time, cancellable, and
        /// holding no slot of a limit.
        #[allow(unreachable_pub)]
        pub fn delay(&mut self, delay: Duration) {
            self.options.start = Some(Start::After(delay));
        }

        /// Puts the task in the flow registered under `key` (see
        /// [`FlowLimit`](crate::FlowLimit)); without it, a task is in the flow
        /// named like it, if there is one.
        #[allow(unreachable_pub)]
        pub fn flow(&mut self, key: impl Into<Cow<'static, str>>) {
            self.options.flow = Some(key.into());
        }

        /// Makes the task unique by `key`: while a task with the same key is
        /// in flight (from `schedule` until its error handler has returned),
        /// `schedule` returns that task's handle, with
        /// [`is_duplicate`](crate::TaskHandle::is_duplicate) set, and drops
        /// the task it was given unrun. `tasks.task().unique(format!("invoice:{id}"))`.
        #[allow(unreachable_pub)]
        pub fn unique(&mut self, key: impl Into<Cow<'static, str>>) {
            self.options.unique = Some(key.into());
        }

        /// Starts the task at `instant` (a [`tokio::time::Instant`], or a
        /// [`std::time::Instant`]), or when its phase comes if that is later.
        /// Until then, as [`delay`](Self::delay).
        #[allow(unreachable_pub)]
        pub fn at(&mut self, instant: impl Into<tokio::time::Instant>) {
            self.options.start = Some(Start::At(instant.into()));
        }
    ))]
    pub(crate) options: TaskOptions,

    /// How a failed task is run again. On a per-task builder, `schedule`
    /// then takes only a task that can run again ([`Rerunnable`]). (Kept
    /// apart from the other options so that the builder's type says whether
    /// it is set; moved into the options by `build`.)
    #[builder(default, setter(strip_option))]
    retry: Option<RetryPolicy>,

    /// The scheduler a per-task builder schedules with: set by
    /// [`Tasks::task`]; `None` in every built `TaskConfig`.
    #[builder(default, setter(strip_option))]
    scheduler: Option<Scheduler>,
}

/// The scheduler behind [`Tasks::task`]'s builder. Internal: public only
/// because the builder's setter names it; it cannot be built outside the
/// crate.
#[doc(hidden)]
#[derive(Clone, Debug)]
pub struct Scheduler(pub(crate) Tasks);

/// The builder in a given state: the plain options set through their
/// mutators (always "set"), `Retry` and `Sched` each `()` (unset) or
/// `(Option<_>,)` (set).
type Builder<Retry, Sched> = TaskConfigBuilder<((TaskOptions,), Retry, Sched)>;

/// A builder field that has been set.
type Set<T> = (Option<T>,);

/// The builder [`Tasks::task`] returns: pre-filled with its scheduler.
pub type TaskBuilder = Builder<(), Set<Scheduler>>;

impl Builder<(), ()> {
    /// Finishes the config.
    pub fn build(self) -> TaskConfig {
        self.__build().settled()
    }
}

impl Builder<Set<RetryPolicy>, ()> {
    /// Finishes the config.
    pub fn build(self) -> TaskConfig {
        self.__build().settled()
    }
}

impl Builder<(), Set<Scheduler>> {
    /// Finishes the settings of one task; schedule with
    /// [`ConfiguredTasks::schedule`].
    pub fn build(self) -> ConfiguredTasks<OneRun> {
        ConfiguredTasks::new(self.__build())
    }
}

impl Builder<Set<RetryPolicy>, Set<Scheduler>> {
    /// Finishes the settings of one retried task; schedule with
    /// [`ConfiguredTasks::schedule`], which takes only a task that can run
    /// again.
    pub fn build(self) -> ConfiguredTasks<Retrying> {
        ConfiguredTasks::new(self.__build())
    }
}

impl TaskConfig {
    /// The retry policy moved into the options, where it is read.
    fn settled(mut self) -> TaskConfig {
        if let Some(retry) = self.retry.take() {
            self.options.retry = Some(retry);
        }
        self
    }

    /// The name, if set.
    pub fn name(&self) -> Option<&str> {
        self.options.name.as_deref()
    }

    /// The shield flag, if set.
    pub fn shield(&self) -> Option<bool> {
        self.options.shield
    }

    /// The error handler, if set.
    pub fn on_error(&self) -> Option<&SharedErrorHandler> {
        self.options.on_error.as_ref()
    }

    /// The phase, if set.
    pub fn phase(&self) -> Option<Phase> {
        self.options.phase
    }

    /// The timeout, if set.
    pub fn timeout(&self) -> Option<Duration> {
        self.options.timeout
    }

    /// The retry policy, if set.
    pub fn retry(&self) -> Option<RetryPolicy> {
        self.options.retry
    }

    /// The delay after its phase, if set with `delay`.
    pub fn delay(&self) -> Option<Duration> {
        match self.options.start {
            Some(Start::After(delay)) => Some(delay),
            _ => None,
        }
    }

    /// The instant it starts at, if set with `at`.
    pub fn at(&self) -> Option<tokio::time::Instant> {
        match self.options.start {
            Some(Start::At(at)) => Some(at),
            _ => None,
        }
    }
}

impl fmt::Debug for TaskConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let options = &self.options;
        f.debug_struct("TaskConfig")
            .field("name", &options.name)
            .field("shield", &options.shield)
            .field("on_error", &options.on_error)
            .field("phase", &options.phase)
            .field("timeout", &options.timeout)
            .field("retry", &options.retry)
            .field("start", &options.start)
            .field("unique", &options.unique)
            .finish()
    }
}

/// A scheduler with one task's settings; from `tasks.task()...build()`.
///
/// It may schedule several tasks: each gets the same settings. `R` records
/// whether the tasks are retried: [`OneRun`], or [`Retrying`] (set by
/// `.retry(..)`), which takes only tasks that can run again.
#[derive(Clone)]
#[must_use = "a configured scheduler does nothing until `schedule` is called"]
pub struct ConfiguredTasks<R = OneRun> {
    tasks: Tasks,
    options: TaskOptions,
    _route: PhantomData<fn() -> R>,
}

/// A [`ConfiguredTasks`] route: the task runs once.
#[derive(Debug, Clone, Copy)]
pub enum OneRun {}

/// A [`ConfiguredTasks`] route: the task is retried, so it must be able to
/// run again ([`Rerunnable`]).
#[derive(Debug, Clone, Copy)]
pub enum Retrying {}

impl<R> ConfiguredTasks<R> {
    fn new(mut config: TaskConfig) -> Self {
        // Set on every builder that yields a `ConfiguredTasks` (its type says so).
        let tasks = match config.scheduler.take() {
            Some(Scheduler(tasks)) => tasks,
            None => unreachable!("a per-task builder always holds its scheduler"),
        };
        ConfiguredTasks {
            tasks,
            options: config.settled().options,
            _route: PhantomData,
        }
    }
}

impl ConfiguredTasks<OneRun> {
    /// Schedules `task` with these settings; as [`Tasks::schedule`].
    #[track_caller]
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        self.tasks.schedule_once(task, &self.options)
    }
}

impl ConfiguredTasks<Retrying> {
    /// Schedules `task` with these settings, retried on failure. `task` must
    /// be able to run again: a `Clone` task (each run gets a clone) or a
    /// factory closure such as `move || send_invoice(id)` (each run gets a
    /// fresh task).
    ///
    /// ```compile_fail
    /// # use axum_background::{RetryPolicy, Tasks};
    /// struct NotClone;
    /// impl axum_background::BlockingTask<()> for NotClone { fn run(self) {} }
    /// fn f(tasks: Tasks) {
    ///     // error: `NotClone` cannot be retried: it can run only once
    ///     tasks.task().retry(RetryPolicy::attempts(3)).build().schedule(NotClone);
    /// }
    /// ```
    #[track_caller]
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: Rerunnable<M>,
    {
        self.tasks.schedule_rerunnable(task, &self.options)
    }
}

impl<R> fmt::Debug for ConfiguredTasks<R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConfiguredTasks")
            .field("tasks", &self.tasks)
            .field("options", &self.options)
            .field(
                "retrying",
                &std::any::type_name::<R>().ends_with("Retrying"),
            )
            .finish()
    }
}
