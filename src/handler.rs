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
/// A plugin type is the way to give a handler state *and* let it borrow the
/// task's info and error. Closures and `async fn`s work too, through
/// [`IntoErrorHandler`] (which lists every accepted form): a sync
/// `Fn(&TaskInfo, &TaskError)`, an `async fn alert(info: &TaskInfo, error: &TaskError)`,
/// or an async `Fn(TaskInfo, TaskError) -> impl Future` that takes ownership.
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
/// | form | example | called with |
/// |---|---|---|
/// | an [`ErrorHandler`] plugin type | `Pager { channel }` | `(&TaskInfo, &TaskError)` |
/// | a sync closure or `fn`, `Fn(&TaskInfo, &TaskError)` | `\|info: &TaskInfo, error: &TaskError\| eprintln!("{error}")` | `(&TaskInfo, &TaskError)`, in place |
/// | an `async fn` that borrows | `async fn alert(info: &TaskInfo, error: &TaskError)` | `(&TaskInfo, &TaskError)` |
/// | an `async fn` or closure that takes ownership, `Fn(TaskInfo, TaskError) -> impl Future<Output = ()> + Send` | `async fn alert(info: TaskInfo, error: TaskError)` | clones of the info and error |
/// | an [`ErrorHandler`] already shared | a [`SharedErrorHandler`] | as it was made |
///
/// Each must be `Send + Sync + 'static`, and an async handler's future `Send`.
/// A borrowing handler gets the very `TaskInfo` and `TaskError` the crate
/// reports (nothing is cloned); an owning one gets clones. Non-capturing async
/// closures (`async |info: &TaskInfo, error: &TaskError| ..`,
/// `async |info: TaskInfo, error: TaskError| ..`) are accepted as the `async fn`
/// of the same shape.
///
/// ```
/// use axum_background::{TaskConfig, TaskError, TaskInfo};
///
/// async fn alert(info: &TaskInfo, error: &TaskError) {
///     let name = &info.name; // borrowed across an await: fine
///     tokio::task::yield_now().await;
///     eprintln!("task {name} failed: {error}");
/// }
///
/// let config = TaskConfig::builder().on_error(alert).build();
/// # let _ = config;
/// ```
///
/// # Forms that are refused
///
/// A *capturing* async closure (`async move |info, error| { .. captured .. }`)
/// is not accepted: its future borrows the closure's captures, so it is not
/// `Fn`, only `AsyncFn`, and an `AsyncFn`'s future cannot be named, hence not
/// required to be `Send`, on stable Rust. Write a closure that clones what it
/// captures into an `async move` block, taking ownership of the info and error:
///
/// ```
/// use axum_background::{TaskConfig, TaskError, TaskInfo};
///
/// let pager = String::from("#ops");
/// let config = TaskConfig::builder()
///     .on_error(move |info: TaskInfo, error: TaskError| {
///         let pager = pager.clone();
///         async move {
///             tokio::task::yield_now().await;
///             eprintln!("[{pager}] task {} failed: {error}", info.name);
///         }
///     })
///     .build();
/// # let _ = config;
/// ```
///
/// or an [`ErrorHandler`] plugin type (state in its fields, borrowing the info
/// and error). This is what the capturing async closure looks like, refused:
///
/// ```compile_fail
/// use axum_background::{TaskConfig, TaskError, TaskInfo};
///
/// let pager = String::from("#ops");
/// // error: `{async closure}` cannot be used as an error handler
/// let config = TaskConfig::builder()
///     .on_error(async move |info: TaskInfo, error: TaskError| {
///         eprintln!("[{pager}] task {} failed: {error}", info.name);
///     })
///     .build();
/// ```
///
/// and so is the borrowing one:
///
/// ```compile_fail
/// use axum_background::{TaskConfig, TaskError, TaskInfo};
///
/// let pager = String::from("#ops");
/// let config = TaskConfig::builder()
///     .on_error(async move |info: &TaskInfo, error: &TaskError| {
///         eprintln!("[{pager}] task {} failed: {error}", info.name);
///     })
///     .build();
/// ```
///
/// A plain closure returning an `async` block that uses its borrowed arguments
/// fails the borrow check ("lifetime may not live long enough": a closure's
/// return type cannot borrow from its arguments); write a borrowing `async fn`
/// (as `alert` above) or take ownership (as the `pager` closure above):
///
/// ```compile_fail
/// use axum_background::{TaskConfig, TaskError, TaskInfo};
///
/// // error: lifetime may not live long enough
/// let config = TaskConfig::builder()
///     .on_error(|info: &TaskInfo, error: &TaskError| async move {
///         eprintln!("task {} failed: {error}", info.name);
///     })
///     .build();
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as an error handler",
    label = "not an error handler",
    note = "on_error accepts: a type implementing `ErrorHandler`; \
            a `Fn(&TaskInfo, &TaskError)` (sync); \
            an `async fn(&TaskInfo, &TaskError)` that borrows; \
            a `Fn(TaskInfo, TaskError) -> impl Future<Output = ()> + Send` that takes ownership, such as an `async fn`",
    note = "an async handler's future must be `Send`: hold no `Rc` or `std::sync::MutexGuard` across an `.await`",
    note = "a capturing async closure (`async move |info, error| ..` using a captured value) is not accepted, \
            its future cannot be required to be `Send` on stable Rust: write a closure returning an `async move` block, \
            `move |info: TaskInfo, error: TaskError| {{ let pager = pager.clone(); async move {{ .. }} }}`, \
            or implement `ErrorHandler` for a type holding the state",
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

impl<F, R> IntoErrorHandler<SyncFnHandler> for F
where
    F: Fn(&TaskInfo, &TaskError) -> R + Send + Sync + 'static,
    R: SyncReturn,
{
    fn into_shared(self) -> SharedErrorHandler {
        let call = move |info: &TaskInfo, error: &TaskError| {
            self(info, error);
        };
        SharedErrorHandler::from_kind(Kind::Sync(Box::new(call)), std::any::type_name::<F>())
    }
}

/// What a sync handler returns: `()`, or `!` for one that always panics
/// (`|info: &TaskInfo, _: &TaskError| panic!(..)`).
///
/// Since a borrowing async handler has the same arguments, a closure is told
/// apart by its return type; a body that diverges leaves that type to the
/// never-type fallback, which is `!` in edition 2024. Internal: public only
/// because [`IntoErrorHandler`]'s impl names it.
#[doc(hidden)]
pub trait SyncReturn: 'static {}

impl SyncReturn for () {}

/// `!`, named on stable Rust: the return type of a `fn() -> !`.
type Never = <fn() -> ! as FnReturn>::Output;

trait FnReturn {
    type Output;
}

impl<T> FnReturn for fn() -> T {
    type Output = T;
}

impl SyncReturn for Never {}

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

// `do_not_recommend`: when a closure is refused here (a capturing async
// closure is not `Fn`), the error names `IntoErrorHandler` and its notes say
// what to write instead, rather than only "does not implement `Fn`".
#[diagnostic::do_not_recommend]
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

/// An async handler that borrows: `Fn(&'a TaskInfo, &'a TaskError)` whose
/// future lives no longer than `'a`, for every `'a`.
///
/// A bound `for<'a> Fn(&'a TaskInfo, &'a TaskError) -> Fut` cannot be written
/// with one `Fut` (the future's type depends on `'a`); this trait names it per
/// `'a` instead. Internal: public only because [`IntoErrorHandler`]'s impl
/// names it.
#[doc(hidden)]
pub trait BorrowingHandlerFn<'a>: Send + Sync + 'static {
    /// The future of one call.
    type Future: Future<Output = ()> + Send + 'a;

    /// Calls the handler.
    fn call(&self, info: &'a TaskInfo, error: &'a TaskError) -> Self::Future;
}

impl<'a, F, Fut> BorrowingHandlerFn<'a> for F
where
    F: Fn(&'a TaskInfo, &'a TaskError) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'a,
{
    type Future = Fut;

    fn call(&self, info: &'a TaskInfo, error: &'a TaskError) -> Fut {
        self(info, error)
    }
}

/// Adapts an `async fn(&TaskInfo, &TaskError)`: called with the crate's own
/// info and error, nothing cloned.
struct BorrowingAsyncFn<F>(F);

impl<F> DynErrorHandler for BorrowingAsyncFn<F>
where
    F: for<'a> BorrowingHandlerFn<'a>,
{
    fn handle_boxed<'a>(&'a self, info: &'a TaskInfo, error: &'a TaskError) -> BoxFuture<'a> {
        Box::pin(self.0.call(info, error))
    }
}

#[doc(hidden)]
#[derive(Debug)]
pub enum BorrowingAsyncFnHandler {}

// `do_not_recommend`: as for `AsyncFnHandler`.
#[diagnostic::do_not_recommend]
impl<F> IntoErrorHandler<BorrowingAsyncFnHandler> for F
where
    F: for<'a> BorrowingHandlerFn<'a>,
{
    fn into_shared(self) -> SharedErrorHandler {
        SharedErrorHandler::from_kind(
            Kind::Async(Box::new(BorrowingAsyncFn(self))),
            std::any::type_name::<F>(),
        )
    }
}

#[cfg(test)]
mod tests {
    use std::ptr;
    use std::sync::{Mutex, PoisonError};

    use futures_util::FutureExt;

    use super::*;

    #[test]
    fn shared_handler_is_one_pointer_wide() {
        assert_eq!(
            std::mem::size_of::<SharedErrorHandler>(),
            std::mem::size_of::<usize>()
        );
    }

    fn info() -> TaskInfo {
        TaskInfo {
            id: crate::TaskId::from_u64(1),
            name: "job".into(),
            phase: crate::Phase::Immediate,
            mode: crate::mode::ModeKind::Async,
            shielded: false,
            scheduled_at: std::time::Instant::now(),
            started_at: None,
            due_at: None,
            method: None,
            path: None,
            attempts: 0,
            blocked: None,
        }
    }

    #[test]
    fn sync_handler_completes_in_its_first_poll() {
        let handler = (|_: &TaskInfo, _: &TaskError| {}).into_shared();
        assert!(handler.is_sync());
        let (info, error) = (info(), TaskError::Cancelled);
        assert!(handler.call(&info, &error).now_or_never().is_some());
    }

    #[test]
    fn borrowing_handler_gets_the_callers_own_info_and_error() {
        static SEEN: Mutex<Vec<(usize, usize)>> = Mutex::new(Vec::new());
        async fn handler(info: &TaskInfo, error: &TaskError) {
            let at = (ptr::from_ref(info).addr(), ptr::from_ref(error).addr());
            SEEN.lock().unwrap_or_else(PoisonError::into_inner).push(at);
        }
        let handler = handler.into_shared();
        assert!(!handler.is_sync());
        let (info, error) = (info(), TaskError::Cancelled);
        assert!(handler.call(&info, &error).now_or_never().is_some());
        let seen = SEEN.lock().unwrap_or_else(PoisonError::into_inner).clone();
        assert_eq!(
            seen,
            [(ptr::from_ref(&info).addr(), ptr::from_ref(&error).addr())],
            "not a clone"
        );
    }
}
