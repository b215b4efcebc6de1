use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;

use super::{PhaseGuard, ResponseBody};
use crate::Phase;

pin_project! {
    /// The response future of [`BackgroundService`](super::BackgroundService):
    /// fires after-route when the inner future yields the response.
    #[must_use = "futures do nothing unless polled"]
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        // Dropped before completion (client gone, outer timeout, panic caught
        // further out): the request has ended, its deferred tasks start.
        guard: PhaseGuard,
    }
}

impl<F> ResponseFuture<F> {
    pub(super) fn new(inner: F, guard: PhaseGuard) -> Self {
        ResponseFuture { inner, guard }
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let scope = this.guard.scope.take();
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

impl<F> fmt::Debug for ResponseFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("pending", &self.guard.scope)
            .finish_non_exhaustive()
    }
}
