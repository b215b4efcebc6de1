//! Error handlers: where a task's failure goes after it is logged.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use crate::{TaskError, TaskInfo};

/// A plugin that receives every task failure routed to it.
///
/// Called exactly once per task that does not complete (error, panic,
/// timeout, cancellation, rejection), after the failure has been logged. A
/// handler that panics is logged and changes nothing else.
///
/// Closures work too, through [`IntoErrorHandler`]: a sync
/// `Fn(&TaskInfo, &TaskError)` or an async `Fn(TaskInfo, TaskError) -> impl Future`
/// (such as an `async fn alert(info: TaskInfo, error: TaskError)`).
///
/// ```
/// use axum_background::{ErrorHandler, TaskError, TaskInfo};
///
/// struct Pager { channel: String }
///
/// impl ErrorHandler for Pager {
///     async fn handle(&self, info: &TaskInfo, error: &TaskError) {
///         eprintln!("[{}] task {} failed: {error}", self.channel, info.name);
///     }
/// }
/// ```
pub trait ErrorHandler: Send + Sync + 'static {
    /// Handles one failure.
    fn handle(&self, info: &TaskInfo, error: &TaskError) -> impl Future<Output = ()> + Send;
}

/// A shared plugin is a plugin: one stateful handler can serve many tasks.
impl<H: ErrorHandler> ErrorHandler for Arc<H> {
    fn handle(&self, info: &TaskInfo, error: &TaskError) -> impl Future<Output = ()> + Send {
        (**self).handle(info, error)
    }
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// The object-safe form of [`ErrorHandler`].
trait DynErrorHandler: Send + Sync + 'static {
    fn handle_boxed<'a>(&'a self, info: &'a TaskInfo, error: &'a TaskError) -> BoxFuture<'a>;
}

impl<H: ErrorHandler> DynErrorHandler for H {
    fn handle_boxed<'a>(&'a self, info: &'a TaskInfo, error: &'a TaskError) -> BoxFuture<'a> {
        Box::pin(self.handle(info, error))
    }
}

type SyncFn = dyn Fn(&TaskInfo, &TaskError) + Send + Sync + 'static;

enum Kind {
    /// Sync handlers are called in place: no future, no allocation.
    Sync(Box<SyncFn>),
    Async(Box<dyn DynErrorHandler>),
}

struct Inner {
    kind: Kind,
    type_name: &'static str,
}

/// A type-erased, cheaply cloned error handler: what `on_error` stores.
///
/// One pointer wide: every task with a handler carries one.
#[derive(Clone)]
pub struct SharedErrorHandler {
    inner: Arc<Inner>,
}

impl SharedErrorHandler {
    fn from_kind(kind: Kind, type_name: &'static str) -> Self {
        SharedErrorHandler {
            inner: Arc::new(Inner { kind, type_name }),
        }
    }
}

impl SharedErrorHandler {
    /// Wraps any accepted handler form.
    pub fn new<H, M>(handler: H) -> Self
    where
        H: IntoErrorHandler<M>,
    {
        handler.into_shared()
    }

    /// Calls the handler and waits for it.
    pub(crate) async fn call(&self, info: &TaskInfo, error: &TaskError) {
        match &self.inner.kind {
            Kind::Sync(f) => f(info, error),
            Kind::Async(h) => h.handle_boxed(info, error).await,
        }
    }

    /// Whether the handler runs to completion without a runtime.
    pub(crate) fn is_sync(&self) -> bool {
        matches!(self.inner.kind, Kind::Sync(_))
    }
}

impl fmt::Debug for SharedErrorHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.inner.kind {
            Kind::Sync(_) => "sync",
            Kind::Async(_) => "async",
        };
        f.debug_struct("SharedErrorHandler")
            .field("handler", &self.inner.type_name)
            .field("kind", &kind)
            .finish()
    }
}

/// Anything `on_error` accepts; `M` is a marker that keeps the forms apart.
///
/// - an [`ErrorHandler`] plugin type;
/// - a sync closure or `fn` taking `(&TaskInfo, &TaskError)`;
/// - an async closure or `async fn` taking `(TaskInfo, TaskError)`;
/// - a [`SharedErrorHandler`] (kept as it is).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as an error handler",
    note = "on_error accepts: a type implementing `ErrorHandler`; \
            a `Fn(&TaskInfo, &TaskError)` (sync); \
            a `Fn(TaskInfo, TaskError) -> impl Future<Output = ()> + Send` such as an `async fn` (async)",
    note = "a closure may need its argument types written out: `|info: &TaskInfo, error: &TaskError| ..`"
)]
pub trait IntoErrorHandler<M>: Send + Sync + 'static {
    /// Erases the handler's type.
    fn into_shared(self) -> SharedErrorHandler;
}

#[doc(hidden)]
#[derive(Debug)]
pub enum PluginHandler {}
#[doc(hidden)]
#[derive(Debug)]
pub enum SyncFnHandler {}
#[doc(hidden)]
#[derive(Debug)]
pub enum AlreadyShared {}

impl IntoErrorHandler<AlreadyShared> for SharedErrorHandler {
    fn into_shared(self) -> SharedErrorHandler {
        self
    }
}
#[doc(hidden)]
#[derive(Debug)]
pub enum AsyncFnHandler {}

impl<H: ErrorHandler> IntoErrorHandler<PluginHandler> for H {
    fn into_shared(self) -> SharedErrorHandler {
        SharedErrorHandler::from_kind(Kind::Async(Box::new(self)), std::any::type_name::<H>())
    }
}

impl<F> IntoErrorHandler<SyncFnHandler> for F
where
    F: Fn(&TaskInfo, &TaskError) + Send + Sync + 'static,
{
    fn into_shared(self) -> SharedErrorHandler {
        SharedErrorHandler::from_kind(Kind::Sync(Box::new(self)), std::any::type_name::<F>())
    }
}

/// Adapts an `async fn(TaskInfo, TaskError)` to [`ErrorHandler`].
struct AsyncFn<F>(F);

impl<F, Fut> ErrorHandler for AsyncFn<F>
where
    F: Fn(TaskInfo, TaskError) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn handle(&self, info: &TaskInfo, error: &TaskError) -> impl Future<Output = ()> + Send {
        (self.0)(info.clone(), error.clone())
    }
}

impl<F, Fut> IntoErrorHandler<AsyncFnHandler> for F
where
    F: Fn(TaskInfo, TaskError) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    fn into_shared(self) -> SharedErrorHandler {
        SharedErrorHandler::from_kind(
            Kind::Async(Box::new(AsyncFn(self))),
            std::any::type_name::<F>(),
        )
    }
}
