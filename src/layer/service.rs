use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower_layer::Layer;
use tower_service::Service;

use super::{PhaseGuard, ResponseBody, ResponseFuture};
use crate::extractor::RequestTasks;
use crate::inner::Shared;
use crate::request::RequestScope;

/// Applies [`BackgroundService`]; from [`Background::layer`](crate::Background::layer).
#[derive(Clone)]
pub struct BackgroundLayer {
    shared: Arc<Shared>,
}

impl BackgroundLayer {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        BackgroundLayer { shared }
    }
}

impl<S> Layer<S> for BackgroundLayer {
    type Service = BackgroundService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        BackgroundService {
            inner,
            shared: Arc::clone(&self.shared),
        }
    }
}

impl fmt::Debug for BackgroundLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundLayer").finish_non_exhaustive()
    }
}

/// Gives each request its background scope; see the [module docs](crate::layer).
pub struct BackgroundService<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S: Clone> Clone for BackgroundService<S> {
    fn clone(&self) -> Self {
        BackgroundService {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S: fmt::Debug> fmt::Debug for BackgroundService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundService")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for BackgroundService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request<ReqBody>) -> Self::Future {
        let scope = Arc::new(RequestScope::new(Arc::clone(&self.shared)));
        request
            .extensions_mut()
            .insert(RequestTasks(Arc::clone(&scope)));
        ResponseFuture::new(self.inner.call(request), PhaseGuard { scope: Some(scope) })
    }
}
