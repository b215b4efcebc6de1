//! [`Tasks`]: the per-request scheduler handlers extract.

use std::fmt;
use std::sync::Arc;

use axum::extract::{FromRequestParts, OptionalFromRequestParts};
use axum::response::{IntoResponse, Response};
use http::StatusCode;
use http::request::Parts;

use crate::Phase;
use crate::config::{Scheduler, TaskBuilder, TaskConfig};
use crate::handle::TaskHandle;
use crate::inner::Shared;
use crate::options::TaskOptions;
use crate::request::RequestScope;
use crate::task::{IntoBackgroundTask, Rerunnable};

/// The request's background-task scheduler: an axum extractor.
///
/// Needs [`Background::layer`](crate::Background::layer) on the router; without
/// it, extraction fails with [`MissingBackgroundLayer`] (a 500 naming the fix).
/// The layer finds the request's scope for the extractor while it polls the
/// services inside it, as axum runs handlers and middleware: a service
/// between the layer and the handler that runs the request on another task
/// (`tower::buffer`, say) goes outside the layer, so put the layer inside it.
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
    /// `Some` once chosen with `after_route()` or `after_response()`; else
    /// the default config's phase applies, or `Immediate`.
    phase: Option<Phase>,
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

impl Tasks {
    pub(crate) fn detached(shared: Arc<Shared>) -> Self {
        Tasks {
            target: Target::Detached(shared),
            phase: None,
        }
    }

    /// Schedules a task in this scheduler's phase ([`Phase::Immediate`] unless
    /// it came from [`after_route`](Tasks::after_route) or
    /// [`after_response`](Tasks::after_response), or the default config
    /// names another).
    ///
    /// Accepts what [`IntoBackgroundTask`] lists: a
    /// [`BackgroundTask`](crate::BackgroundTask) or
    /// [`BlockingTask`](crate::BlockingTask) type, any `Send + 'static`
    /// future or closure returning one (async mode), and any
    /// `FnOnce() + Send + 'static` closure (sync mode); each may return `()`
    /// or `Result<(), E>` with `E: Into<BoxError>`.
    ///
    /// An immediate task is admitted before this returns. Nothing here panics
    /// or blocks: a task that cannot be admitted (shutdown has begun) ends as
    /// [`TaskError::Rejected`](crate::TaskError::Rejected), reported like any
    /// failure.
    #[track_caller]
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        self.schedule_once(task, TaskOptions::NONE)
    }

    /// The same scheduler, for tasks that start when the handler has produced
    /// its response, before the response head is sent.
    #[must_use = "a scheduler does nothing until `schedule` is called"]
    pub fn after_route(&self) -> Tasks {
        self.in_phase(Phase::AfterRoute)
    }

    /// The same scheduler, for tasks that start once the response body has
    /// been sent (or dropped early, when the client goes away).
    #[must_use = "a scheduler does nothing until `schedule` is called"]
    pub fn after_response(&self) -> Tasks {
        self.in_phase(Phase::AfterResponse)
    }

    pub(crate) fn in_phase(&self, phase: Phase) -> Tasks {
        Tasks {
            phase: Some(phase),
            ..self.clone()
        }
    }

    /// The phase chosen for this scheduler, if any.
    #[cfg(feature = "_plugins")]
    pub(crate) fn phase(&self) -> Option<Phase> {
        self.phase
    }

    /// Configures one task: the [`TaskConfig`] builder, pre-filled with this
    /// scheduler. `tasks.task().name("payment").shield(true).build().schedule(charge(id))`.
    ///
    /// Settings given here override the default config field by field; the
    /// phase is this scheduler's unless `.phase(..)` says otherwise.
    pub fn task(&self) -> TaskBuilder {
        TaskConfig::builder().scheduler(Scheduler(self.clone()))
    }

    /// Schedules a task that runs once, with per-task settings.
    pub(crate) fn schedule_once<T, M>(&self, task: T, options: &TaskOptions) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        crate::schedule::once(self.shared(), task, self.scope(), self.phase, options)
    }

    /// Schedules a task that may run again, under `config`'s retry policy.
    pub(crate) fn schedule_rerunnable<T, M>(&self, task: T, options: &TaskOptions) -> TaskHandle
    where
        T: Rerunnable<M>,
    {
        crate::schedule::rerunnable(self.shared(), task, self.scope(), self.phase, options)
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
        let scope =
            crate::layer::request_scope(parts).ok_or(MissingBackgroundLayer { _priv: () })?;
        Ok(Tasks {
            target: Target::Request(scope),
            phase: None,
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
             on the router (add `background.layer()` to the router that serves this route, \
             inside any layer that runs requests on another task)",
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
