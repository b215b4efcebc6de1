//! [`IntoBackgroundTask`]: every form `schedule` takes.

use std::borrow::Cow;
use std::future::Future;

use futures_util::FutureExt;

use super::{BackgroundTask, TaskResult};
use crate::BoxError;
use crate::mode::{self, Mode};

/// Anything `schedule` accepts; `M` is a marker that keeps the forms apart.
///
/// | form | example | mode |
/// |---|---|---|
/// | a [`BackgroundTask`] or [`BlockingTask`](super::BlockingTask) type | `Welcome { email }` | its [`Mode`](BackgroundTask::Mode) |
/// | a `Future + Send + 'static` | `send_email(to)` | [`mode::Async`] |
/// | a closure `FnOnce() -> impl Future + Send`, `Send + 'static` | `move \|\| send_email(to)` | [`mode::Async`] |
/// | a closure `FnOnce() + Send + 'static` | `move \|\| write_log_line(id)` | [`mode::Sync`] |
///
/// Each may return (or its future may resolve to) `()` or `Result<(), E>`
/// with `E: Into<BoxError>`.
///
/// A closure that returns a future is called when the task starts (not when it
/// is scheduled), on the runtime, and its future is awaited there: it is the
/// same task as the future itself, built late. Unless the task is given a name,
/// it is named after the `async fn` whose future the closure returns, or else
/// after the function the closure was written in.
///
/// ```
/// use axum_background::{mode::ModeKind, Background};
///
/// async fn send_email(to: String) {
///     # let _ = to;
///     // an HTTP call ...
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let background = Background::new();
/// let to = String::from("ada@example.com");
/// let handle = background.schedule(move || send_email(to)); // runs on the runtime
/// assert_eq!(handle.info().mode, ModeKind::Async);
/// assert_eq!(handle.info().name, "send_email");
/// assert!(handle.outcome().await.is_ok());
/// # }
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be scheduled as a background task",
    label = "not a task, a future or a closure",
    note = "schedule accepts: a type implementing `BackgroundTask` or `BlockingTask`; \
            a `Future + Send + 'static` (async mode); \
            a closure returning a future, `FnOnce() -> impl Future + Send` such as `move || send_email(to)` (async mode); \
            an `FnOnce() + Send + 'static` closure (sync mode)",
    note = "each must return (or its future resolve to) `()` or `Result<(), E>` with `E: Into<BoxError>`"
)]
pub trait IntoBackgroundTask<M>: Send + Sized + 'static {
    /// The mode the task runs in.
    type Mode: Mode;

    /// The task's own name, for named task types.
    #[doc(hidden)]
    fn own_name(&self) -> Option<Cow<'static, str>>;

    /// The type's path, from which a name is derived when the task has no
    /// other: an `async fn`'s name, or the function a closure or `async` block
    /// was written in. (Derived only when read: it is not free.)
    #[doc(hidden)]
    fn type_path() -> &'static str {
        std::any::type_name::<Self>()
    }

    /// The task's work as a future of the crate's common result.
    #[doc(hidden)]
    fn into_work(self) -> impl Future<Output = Result<(), BoxError>> + Send + 'static;
}

#[doc(hidden)]
#[derive(Debug)]
pub enum NamedTask {}
#[doc(hidden)]
#[derive(Debug)]
pub enum FutureTask {}
#[doc(hidden)]
#[derive(Debug)]
pub enum ClosureTask {}
#[doc(hidden)]
#[derive(Debug)]
pub enum AsyncClosureTask {}

impl<T, R> IntoBackgroundTask<(NamedTask, R)> for T
where
    T: BackgroundTask<R>,
    R: TaskResult,
{
    type Mode = T::Mode;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        Some(BackgroundTask::name(self))
    }

    fn into_work(self) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        BackgroundTask::run(self).map(TaskResult::into_result)
    }
}

impl<F, R> IntoBackgroundTask<(FutureTask, R)> for F
where
    F: Future<Output = R> + Send + 'static,
    R: TaskResult,
{
    type Mode = mode::Async;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        None
    }

    fn into_work(self) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        self.map(TaskResult::into_result)
    }
}

impl<F, R> IntoBackgroundTask<(ClosureTask, R)> for F
where
    F: FnOnce() -> R + Send + 'static,
    R: TaskResult,
{
    type Mode = mode::Sync;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        None
    }

    async fn into_work(self) -> Result<(), BoxError> {
        self().into_result()
    }
}

impl<F, Fut, R> IntoBackgroundTask<(AsyncClosureTask, R)> for F
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: TaskResult,
{
    type Mode = mode::Async;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        None
    }

    /// The future's path when it is an `async fn`'s or an `async` block's
    /// (`move || send_email(to)` is named `send_email`, as the future
    /// `send_email(to)` and the retried factory are), else the closure's own
    /// (a boxed or hand-written future says nothing of where it came from).
    fn type_path() -> &'static str {
        closure_or_future_path(std::any::type_name::<F>(), std::any::type_name::<Fut>())
    }

    fn into_work(self) -> impl Future<Output = Result<(), BoxError>> + Send + 'static {
        // Called on the first poll, when the task starts (not at `schedule`);
        // the closure and its future take turns in the same memory.
        futures_util::future::lazy(move |_| self())
            .flatten()
            .map(TaskResult::into_result)
    }
}

/// See the async-closure form's `type_path`.
fn closure_or_future_path(closure: &'static str, future: &'static str) -> &'static str {
    if future.ends_with("::{{closure}}") {
        future
    } else {
        closure
    }
}
