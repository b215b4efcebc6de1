use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{HeaderValue, Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::current::Frame;
use super::{PhaseGuard, ResponseBody, ResponseFuture};
use crate::inner::Shared;

/// Applies [`BackgroundService`]; from [`Background::layer`](crate::Background::layer).
///
/// Opt-in: [`shed_when_saturated`](Self::shed_when_saturated) turns requests
/// away with a 503 while every `max_in_flight` slot is taken.
#[derive(Clone)]
pub struct BackgroundLayer {
    shared: Arc<Shared>,
    shed: Option<Shed>,
    retry_after: HeaderValue,
}

/// What a shedding service answers with while the background is saturated.
#[derive(Clone, Debug)]
struct Shed {
    retry_after: HeaderValue,
}

impl BackgroundLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        BackgroundLayer {
            shared,
            shed: None,
            retry_after: HeaderValue::from_static("1"),
        }
    }

    /// Answers `503 Service Unavailable`, with `Retry-After` and a short
    /// body, *before* running the handler while every
    /// [`max_in_flight`](crate::BackgroundBuilder::max_in_flight) slot is
    /// taken, instead of running a handler whose tasks would be rejected.
    ///
    /// Saturated means what [`OverflowPolicy::Reject`](crate::OverflowPolicy::Reject)
    /// means by a full limit: every slot is held by a running task. The check
    /// is one atomic load at the start of each request; a request that passes
    /// it is served exactly as without this option. It is a snapshot, not a
    /// reservation: a request let in just before the last slots fill may still
    /// see its tasks rejected (reported as usual), and its after-route and
    /// after-response tasks ask for their slots only when their phase comes.
    ///
    /// Under [`OverflowPolicy::Wait`](crate::OverflowPolicy::Wait) the same
    /// test applies: a request is shed while every slot is taken, so tasks
    /// queue only from requests that arrived before the slots filled, and the
    /// queue (and the time a task waits in it) stays bounded by the requests
    /// being served instead of growing with the load. Without `max_in_flight`
    /// the background is never saturated and nothing is shed (a warning says
    /// so when this is called).
    ///
    /// `Retry-After` is 1 second unless set with [`retry_after`](Self::retry_after).
    /// A shed request never reaches the layers inside this one, nor the
    /// handler; layers outside it (tracing, metrics) see the 503. To keep a
    /// route that schedules nothing (a health check) answering, give it
    /// `background.layer()` without this option, or no layer at all.
    ///
    /// ```
    /// use std::time::Duration;
    ///
    /// use axum::{Router, body::Body, http::{Request, StatusCode, header}, routing::post};
    /// use axum_background::{Background, OverflowPolicy, Tasks, testing};
    ///
    /// async fn upload(tasks: Tasks) -> StatusCode {
    ///     tasks.schedule(async { /* make the thumbnail */ });
    ///     StatusCode::ACCEPTED
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), axum_background::BoxError> {
    /// let background = Background::builder()
    ///     .max_in_flight(1)
    ///     .overflow(OverflowPolicy::Reject)
    ///     .build();
    /// let app = Router::new()
    ///     .route("/upload", post(upload))
    ///     .layer(background.layer().shed_when_saturated().retry_after(Duration::from_secs(2)));
    ///
    /// // A long task takes the one slot...
    /// let (release, wait) = tokio::sync::oneshot::channel::<()>();
    /// background.schedule(async move { let _ = wait.await; }).started().await;
    ///
    /// // ...so the upload is turned away before its handler runs.
    /// let response = testing::send(&app, Request::post("/upload").body(Body::empty())?).await?;
    /// assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    /// assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    ///
    /// // Once the slot is free, uploads are served again.
    /// let _ = release.send(());
    /// background.wait_idle().await;
    /// let response = testing::send(&app, Request::post("/upload").body(Body::empty())?).await?;
    /// assert_eq!(response.status(), StatusCode::ACCEPTED);
    /// # testing::idle_within(&background, Duration::from_secs(5)).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn shed_when_saturated(mut self) -> Self {
        if self.shared.limits.in_flight.is_none() {
            tracing::warn!(
                "shed_when_saturated() without max_in_flight(n): the background is never \
                 saturated, no request will be shed"
            );
        }
        self.shed = Some(Shed {
            retry_after: self.retry_after.clone(),
        });
        self
    }

    /// The `Retry-After` header of the 503s of [`shed_when_saturated`](Self::shed_when_saturated),
    /// rounded up to whole seconds (the header's unit); 1 second unless set.
    /// It changes nothing without `shed_when_saturated`, and nothing about
    /// tasks (their retries are [`RetryPolicy`](crate::RetryPolicy)'s).
    #[must_use]
    pub fn retry_after(mut self, after: Duration) -> Self {
        let seconds = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        self.retry_after = HeaderValue::from(seconds);
        if let Some(shed) = &mut self.shed {
            shed.retry_after = self.retry_after.clone();
        }
        self
    }
}

impl<S> Layer<S> for BackgroundLayer {
    type Service = BackgroundService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BackgroundService {
            inner,
            shared: Arc::clone(&self.shared),
            shed: self.shed.clone(),
        }
    }
}

impl fmt::Debug for BackgroundLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundLayer")
            .field("shed_when_saturated", &self.shed.is_some())
            .field("retry_after", &self.retry_after)
            .finish_non_exhaustive()
    }
}

/// Gives each request its background scope; see the [module docs](crate::layer).
pub struct BackgroundService<S> {
    inner: S,
    shared: Arc<Shared>,
    /// `Some` with [`BackgroundLayer::shed_when_saturated`].
    shed: Option<Shed>,
}

impl<S: Clone> Clone for BackgroundService<S> {
    fn clone(&self) -> Self {
        BackgroundService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
            shed: self.shed.clone(),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for BackgroundService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundService")
            .field("inner", &self.inner)
            .field("shed_when_saturated", &self.shed.is_some())
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BackgroundService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
    // The short body of a shed request's 503 (`Bytes`, what axum and hyper
    // bodies carry, is one).
    ResBody::Data: From<&'static str>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if let Some(shed) = &self.shed {
            if self.shared.limits.is_saturated() {
                tracing::debug!(
                    method = %request.method(),
                    path = request.uri().path(),
                    "every max_in_flight slot is taken: request shed with 503"
                );
                return ResponseFuture::shed(shed.retry_after.clone());
            }
        }
        let frame = Frame {
            shared: Arc::clone(&self.shared),
            guard: PhaseGuard { scope: None },
        };
        ResponseFuture::new(self.inner.call(request), frame)
    }
}
