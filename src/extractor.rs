//! [`Tasks`]: the per-request scheduler handlers extract.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::Phase;
use crate::background::Shared;
use crate::config::TaskConfig;
use crate::handle::TaskHandle;
use crate::handler::IntoErrorHandler;
use crate::limits::RetryPolicy;
use crate::request::RequestScope;
use crate::task::{IntoBackgroundTask, Rerunnable};

/// The request's background-task scheduler: an axum extractor.
///
/// Needs [`Background::layer`](crate::Background::layer) on the router; without
/// it, extraction fails with [`MissingBackgroundLayer`] (a 500 naming the fix).
///
/// ```
/// use axum::http::StatusCode;
/// use axum_background::{Phase, Tasks};
///
/// async fn register(tasks: Tasks) -> StatusCode {
///     tasks.schedule(async { /* now, alongside the handler */ });
///     tasks.after_route().schedule(|| { /* when the handler has returned */ });
///     tasks.after_response().schedule(async { /* once the body is sent */ });
///     tasks.task().name("payment").shield(true).build().schedule(async { /* ... */ });
///     StatusCode::CREATED
/// }
/// ```
///
/// Cloning is cheap; a clone kept past its phase (moved into a task, say)
/// starts what it schedules at once.
#[derive(Clone)]
pub struct Tasks {
    target: Target,
    phase: Phase,
}

/// Where a `Tasks` schedules: one reference, cloned with every `Tasks`.
#[derive(Clone)]
enum Target {
    /// A request's scheduler (the scope holds its `Background`).
    Request(Arc<RequestScope>),
    /// [`Background::tasks`](crate::Background::tasks): no request.
    Detached(Arc<Shared>),
}

impl Tasks {
    pub(crate) fn shared(&self) -> &Arc<Shared> {
        match &self.target {
            Target::Request(scope) => &scope.shared,
            Target::Detached(shared) => shared,
        }
    }

    fn scope(&self) -> Option<&Arc<RequestScope>> {
        match &self.target {
            Target::Request(scope) => Some(scope),
            Target::Detached(_) => None,
        }
    }
}

/// The request extension the layer inserts and the extractor reads.
#[derive(Clone)]
pub(crate) struct RequestTasks(pub(crate) Arc<RequestScope>);

impl Tasks {
    pub(crate) fn detached(shared: Arc<Shared>) -> Self {
        Tasks {
            target: Target::Detached(shared),
            phase: Phase::Immediate,
        }
    }

    /// Schedules a task in this scheduler's phase ([`Phase::Immediate`] unless
    /// it came from [`after_route`](Tasks::after_route) or
    /// [`after_response`](Tasks::after_response)).
    ///
    /// Accepts a [`BackgroundTask`](crate::BackgroundTask) or
    /// [`BlockingTask`](crate::BlockingTask) type, any `Send + 'static` future
    /// (async mode) and any `FnOnce() + Send + 'static` closure (sync mode);
    /// each may return `()` or `Result<(), E>` with `E: Into<BoxError>`.
    ///
    /// An immediate task is admitted before this returns. Nothing here panics
    /// or blocks: a task that cannot be admitted (shutdown has begun) ends as
    /// [`TaskError::Rejected`](crate::TaskError::Rejected), reported like any
    /// failure.
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        self.shared().schedule(task, self.scope(), self.phase, None)
    }

    /// The same scheduler, for tasks that start when the handler has produced
    /// its response, before the response head is sent.
    pub fn after_route(&self) -> Tasks {
        self.in_phase(Phase::AfterRoute)
    }

    /// The same scheduler, for tasks that start once the response body has
    /// been sent (or dropped early, when the client goes away).
    pub fn after_response(&self) -> Tasks {
        self.in_phase(Phase::AfterResponse)
    }

    /// The same scheduler, for tasks that start now.
    pub fn immediate(&self) -> Tasks {
        self.in_phase(Phase::Immediate)
    }

    /// The same scheduler in `phase`.
    pub fn in_phase(&self, phase: Phase) -> Tasks {
        Tasks {
            phase,
            ..self.clone()
        }
    }

    /// The phase this scheduler schedules in.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Configures one task: `tasks.task().name("payment").shield(true).build().schedule(charge(id))`.
    ///
    /// Settings given here override the default config field by field; the
    /// phase starts as this scheduler's.
    pub fn task(&self) -> TaskBuilder {
        TaskBuilder {
            tasks: self.clone(),
            config: TaskConfig::default(),
            _route: PhantomData,
        }
    }
}

impl fmt::Debug for Tasks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tasks")
            .field("phase", &self.phase)
            .field("request", &self.scope())
            .finish()
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Tasks {
    type Rejection = MissingBackgroundLayer;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let RequestTasks(scope) = parts
            .extensions
            .get::<RequestTasks>()
            .cloned()
            .ok_or(MissingBackgroundLayer { _priv: () })?;
        scope.meta(parts);
        Ok(Tasks {
            target: Target::Request(scope),
            phase: Phase::Immediate,
        })
    }
}

impl<S: Send + Sync> OptionalFromRequestParts<S> for Tasks {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &S,
    ) -> Result<Option<Self>, Self::Rejection> {
        Ok(
            <Tasks as FromRequestParts<S>>::from_request_parts(parts, state)
                .await
                .ok(),
        )
    }
}

/// Settings for one task; from [`Tasks::task`]. Finish with [`build`](TaskBuilder::build).
///
/// `R` records whether the task may be retried: [`OneRun`] until
/// [`retry`](TaskBuilder::retry) or [`retryable`](TaskBuilder::retryable)
/// makes it [`Retrying`], which takes only tasks that can run again.
#[must_use]
#[derive(Debug, Clone)]
pub struct TaskBuilder<R = OneRun> {
    tasks: Tasks,
    config: TaskConfig,
    _route: PhantomData<fn() -> R>,
}

/// A [`TaskBuilder`] route: the task runs once.
#[derive(Debug, Clone, Copy)]
pub enum OneRun {}

/// A [`TaskBuilder`] route: the task is retried, so it must be able to run
/// again ([`Rerunnable`]).
#[derive(Debug, Clone, Copy)]
pub enum Retrying {}

impl<R> TaskBuilder<R> {
    /// The task's name in logs, spans and [`TaskInfo`](crate::TaskInfo).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.config.name = Some(name.into());
        self
    }

    /// Whether the task may finish during shutdown (up to the grace period)
    /// while unshielded tasks are cancelled.
    pub fn shield(mut self, shield: bool) -> Self {
        self.config.shield = Some(shield);
        self
    }

    /// Where the task's failure goes: an [`ErrorHandler`](crate::ErrorHandler),
    /// a sync `Fn(&TaskInfo, &TaskError)` or an async `Fn(TaskInfo, TaskError)`.
    pub fn on_error<H, M>(mut self, handler: H) -> Self
    where
        H: IntoErrorHandler<M>,
    {
        self.config.on_error = Some(handler.into_shared());
        self
    }

    /// When the task starts.
    pub fn phase(mut self, phase: Phase) -> Self {
        self.tasks.phase = phase;
        self
    }

    /// How long each run may take; see [`TaskConfig`] for what happens past it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = Some(timeout);
        self
    }

    /// Applies every field set in `config` (fields it leaves unset keep their
    /// value here).
    pub fn config(mut self, config: TaskConfig) -> Self {
        self.config = config.merged_over(&self.config);
        self
    }

    /// Retries the task under `policy`. From here on `schedule` takes only a
    /// task that can run again: a `Clone` task, or a factory closure.
    pub fn retry(mut self, policy: RetryPolicy) -> TaskBuilder<Retrying> {
        self.config.retry = Some(policy);
        self.retryable()
    }

    /// Retries the task under the default config's retry policy (if it has
    /// one). From here on `schedule` takes only a task that can run again.
    pub fn retryable(self) -> TaskBuilder<Retrying> {
        TaskBuilder {
            tasks: self.tasks,
            config: self.config,
            _route: PhantomData,
        }
    }

    /// Finishes the settings; schedule with [`ConfiguredTasks::schedule`].
    pub fn build(self) -> ConfiguredTasks<R> {
        ConfiguredTasks {
            tasks: self.tasks,
            config: self.config,
            _route: PhantomData,
        }
    }
}

/// A scheduler with per-task settings; from [`TaskBuilder::build`].
///
/// It may schedule several tasks: each gets the same settings.
#[derive(Debug, Clone)]
pub struct ConfiguredTasks<R = OneRun> {
    tasks: Tasks,
    config: TaskConfig,
    _route: PhantomData<fn() -> R>,
}

impl ConfiguredTasks<OneRun> {
    /// Schedules `task` with these settings; as [`Tasks::schedule`].
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        let tasks = &self.tasks;
        tasks
            .shared()
            .schedule(task, tasks.scope(), tasks.phase, Some(self.config.clone()))
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
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: Rerunnable<M>,
    {
        let tasks = &self.tasks;
        tasks
            .shared()
            .schedule_rerunnable(task, tasks.scope(), tasks.phase, self.config.clone())
    }
}

/// Rejection of [`Tasks`] on a router without the background layer: a 500
/// whose body says to add `background.layer()`.
#[derive(Debug)]
#[non_exhaustive]
pub struct MissingBackgroundLayer {
    _priv: (),
}

impl MissingBackgroundLayer {
    /// The response status: 500.
    pub fn status(&self) -> StatusCode {
        StatusCode::INTERNAL_SERVER_ERROR
    }

    /// The response body.
    pub fn body_text(&self) -> String {
        self.to_string()
    }
}

impl fmt::Display for MissingBackgroundLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(
            "missing background layer: the `Tasks` extractor needs `.layer(background.layer())` \
             on the router (add `background.layer()` to the router that serves this route)",
        )
    }
}

impl std::error::Error for MissingBackgroundLayer {}

impl IntoResponse for MissingBackgroundLayer {
    fn into_response(self) -> Response {
        tracing::error!("{self}");
        (self.status(), self.body_text()).into_response()
    }
}
