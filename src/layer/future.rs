use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::{HeaderValue, Response, StatusCode, header};
use pin_project_lite::pin_project;

use super::current::{self, Frame};
use super::{PhaseGuard, ResponseBody};
use crate::Phase;

pin_project! {
    /// The response future of [`BackgroundService`](super::BackgroundService):
    /// fires after-route when the inner future yields the response.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        kind: Kind<F>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        /// The request goes to the inner service.
        Inner {
            #[pin]
            inner: F,
            // Lent to the thread while `inner` is polled (`None` only then).
            // Dropped before completion (client gone, outer timeout, panic
            // caught further out), its guard ends the request: its deferred
            // tasks start.
            frame: Option<Frame>,
        },
        /// The request was shed (`shed_when_saturated`): a 503, at once.
        Shed {
            retry_after: HeaderValue,
        },
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, frame: Frame) -> Self {
        ResponseFuture {
            kind: Kind::Inner {
                inner,
                frame: Some(frame),
            },
        }
    }

    pub(super) fn shed(retry_after: HeaderValue) -> Self {
        ResponseFuture {
            kind: Kind::Shed { retry_after },
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
    B::Data: From<&'static str>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (inner, frame) = match self.project().kind.project() {
            KindProj::Inner { inner, frame } => (inner, frame),
            KindProj::Shed { retry_after } => {
                return Poll::Ready(Ok(shed_response(retry_after.clone())));
            }
        };
        let result = ready!(current::lend(frame, || inner.poll(cx)));
        let scope = frame.as_mut().and_then(|frame| frame.guard.scope.take());
        Poll::Ready(match result {
            Ok(response) => {
                if let Some(scope) = &scope {
                    scope.reach(Phase::AfterRoute);
                }
                let mut guard = PhaseGuard { scope };
                if response.body().is_end_stream() {
                    // Nothing to send (HEAD, 204, empty): the response is done.
                    guard.reach_end();
                }
                Ok(response.map(|body| ResponseBody::new(body, guard)))
            }
            Err(error) => {
                // No response will be sent: the request has ended.
                drop(PhaseGuard { scope });
                Err(error)
            }
        })
    }
}

/// The body of a shed request's 503.
const SHED_MESSAGE: &str = "service busy, retry later\n";

/// A shed request's answer: 503, `Retry-After`, a short plain-text body.
fn shed_response<B>(retry_after: HeaderValue) -> Response<ResponseBody<B>>
where
    B::Data: From<&'static str>,
    B: http_body::Body,
{
    let mut response = Response::new(ResponseBody::shed(SHED_MESSAGE));
    *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    let headers = response.headers_mut();
    headers.insert(header::RETRY_AFTER, retry_after);
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { frame, .. } => f
                .debug_struct("ResponseFuture")
                .field("pending", &frame.as_ref().map(|frame| &frame.guard.scope))
                .finish_non_exhaustive(),
            Kind::Shed { retry_after } => f
                .debug_struct("ResponseFuture")
                .field("shed", &true)
                .field("retry_after", retry_after)
                .finish(),
        }
    }
}
