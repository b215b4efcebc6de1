use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::PhaseGuard;

pin_project! {
    /// The response body of [`BackgroundService`](super::BackgroundService):
    /// fires after-response exactly once, when the last frame has been polled,
    /// on a body error, or when the body is dropped early (client gone).
    pub struct ResponseBody<B> {
        #[pin]
        inner: B,
        guard: PhaseGuard,
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn new(inner: B, guard: PhaseGuard) -> Self {
        ResponseBody { inner, guard }
    }
}

impl<B: Body> Body for ResponseBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let frame = ready!(this.inner.as_mut().poll_frame(cx));
        match &frame {
            // With an exact Content-Length hyper stops polling after the last
            // data frame: `is_end_stream` is what says it was the last.
            Some(Ok(_)) if !this.inner.is_end_stream() => {}
            _ => this.guard.reach_end(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody")
            .field("pending", &self.guard.scope)
            .finish_non_exhaustive()
    }
}
