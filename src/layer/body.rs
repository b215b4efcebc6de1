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
        kind: Kind<B>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<B> {
        /// The inner service's body.
        Inner {
            #[pin]
            inner: B,
            guard: PhaseGuard,
        },
        /// A shed request's message: one frame, then the end.
        Shed {
            message: Option<&'static str>,
        },
    }
}

impl<B> ResponseBody<B> {
    pub(super) fn new(inner: B, guard: PhaseGuard) -> Self {
        ResponseBody {
            kind: Kind::Inner { inner, guard },
        }
    }

    pub(super) fn shed(message: &'static str) -> Self {
        ResponseBody {
            kind: Kind::Shed {
                message: Some(message),
            },
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body,
    B::Data: From<&'static str>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let (mut inner, guard) = match self.project().kind.project() {
            KindProj::Inner { inner, guard } => (inner, guard),
            KindProj::Shed { message } => {
                return Poll::Ready(message.take().map(|m| Ok(Frame::data(m.into()))));
            }
        };
        let frame = ready!(inner.as_mut().poll_frame(cx));
        match &frame {
            // With an exact Content-Length hyper stops polling after the last
            // data frame: `is_end_stream` is what says it was the last.
            Some(Ok(_)) if !inner.is_end_stream() => {}
            _ => guard.reach_end(),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Inner { inner, .. } => inner.is_end_stream(),
            Kind::Shed { message } => message.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Inner { inner, .. } => inner.size_hint(),
            Kind::Shed { message } => SizeHint::with_exact(message.map_or(0, |m| m.len() as u64)),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::Inner { guard, .. } => f
                .debug_struct("ResponseBody")
                .field("pending", &guard.scope)
                .finish_non_exhaustive(),
            Kind::Shed { .. } => f
                .debug_struct("ResponseBody")
                .field("shed", &true)
                .finish_non_exhaustive(),
        }
    }
}
