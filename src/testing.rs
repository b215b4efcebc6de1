//! Helpers for tests: send a request and read its whole response, then wait
//! for the tasks with a deadline that says what is still in flight.
//!
//! A test that keeps a response's body unread keeps its after-response tasks
//! from starting: they start once the body has been read to its end or
//! dropped. [`send`] reads the body for you; [`idle_within`] waits for the
//! tasks and, if they do not end in time, names each one still in flight and
//! what it waits for.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, body::Body, http::Request, routing::post};
//! use axum_background::{Background, Tasks, testing};
//!
//! async fn signup(tasks: Tasks) -> &'static str {
//!     tasks.after_response().schedule(async { /* metrics */ });
//!     "welcome"
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), axum_background::BoxError> {
//! let background = Background::new();
//! let app = Router::new().route("/signup", post(signup)).layer(background.layer());
//!
//! let response = testing::send(&app, Request::post("/signup").body(Body::empty())?).await?;
//! assert_eq!(response.body().as_ref(), b"welcome");
//!
//! let stats = testing::idle_within(&background, Duration::from_secs(5)).await?;
//! assert_eq!(stats.completed, 1);
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::future::poll_fn;
use std::time::Duration;

use axum::body::{Body, Bytes};
use http::{Request, Response};
use tower_service::Service;

use crate::{Background, BoxError, Phase, Stats, TaskInfo};

/// Sends `request` through `service` (a [`Router`](axum::Router) or any
/// service around one) and reads the whole response body, so that the
/// request's after-response tasks have started when it returns.
///
/// The response comes back with its body as [`Bytes`].
///
/// # Errors
///
/// The service's error, or the body's if reading it fails.
pub async fn send<S, B>(service: &S, request: Request<Body>) -> Result<Response<Bytes>, BoxError>
where
    S: Service<Request<Body>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let mut service = service.clone();
    poll_fn(|cx| service.poll_ready(cx))
        .await
        .map_err(Into::into)?;
    let response = service.call(request).await.map_err(Into::into)?;
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(Body::new(body), usize::MAX).await?;
    Ok(Response::from_parts(parts, bytes))
}

/// Waits until no task of `background` is in flight, as
/// [`Background::wait_idle`], for at most `timeout`; returns the counters,
/// final then.
///
/// # Errors
///
/// [`NotIdle`] if tasks are still in flight at the deadline: its message names
/// each and what it waits for. Under paused time (`start_paused = true`) the
/// deadline is auto-advanced to like any timer, after the tasks' own timers.
pub async fn idle_within(background: &Background, timeout: Duration) -> Result<Stats, NotIdle> {
    match tokio::time::timeout(timeout, background.wait_idle()).await {
        Ok(()) => Ok(background.stats()),
        Err(_) => {
            let mut in_flight = background.in_flight();
            in_flight.sort_by_key(|info| info.scheduled_at);
            Err(NotIdle { timeout, in_flight })
        }
    }
}

/// Tasks were still in flight when [`idle_within`]'s deadline passed.
#[derive(Debug)]
pub struct NotIdle {
    /// How long it waited.
    pub timeout: Duration,
    /// The tasks in flight at the deadline, oldest first.
    pub in_flight: Vec<TaskInfo>,
}

impl fmt::Display for NotIdle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.in_flight.len();
        let tasks = if count == 1 { "task" } else { "tasks" };
        write!(
            f,
            "{count} {tasks} still in flight after {:?}:",
            self.timeout
        )?;
        let mut held_by_a_body = false;
        for info in &self.in_flight {
            write!(f, "\n  - {} (id {}): ", info.name, info.id)?;
            if info.started_at.is_some() {
                write!(f, "running, attempt {}", info.attempts.max(1))?;
            } else if info.due_at.is_some() {
                write!(f, "delayed, not yet due")?;
            } else if info.phase == Phase::AfterResponse && info.method.is_some() {
                held_by_a_body = true;
                write!(
                    f,
                    "waiting for its response body to be read to its end or dropped"
                )?;
            } else if info.phase == Phase::AfterRoute && info.method.is_some() {
                write!(f, "waiting for its handler to return")?;
            } else {
                write!(f, "waiting for a slot or its turn")?;
            }
        }
        if held_by_a_body {
            write!(
                f,
                "\nA response whose body the test still holds keeps its after-response tasks \
                 from starting: read it to its end (`testing::send` does) or drop it."
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for NotIdle {}
