//! What can be scheduled: named task types, futures and closures.

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;

use futures_util::FutureExt;

use crate::BoxError;
use crate::mode::{self, Mode};
use crate::name::short_type_name;

/// A named background task type; its mode is fixed at compile time by [`Mode`](BackgroundTask::Mode).
///
/// Implement it with an `async fn run`; the future it returns must be `Send`.
/// `R` is what `run` returns: `Result<(), E>` with `E: Into<BoxError>` (the
/// default is `Result<(), BoxError>`), or `()` for a task that cannot fail.
///
/// ```
/// use axum_background::{mode, BackgroundTask, BoxError};
///
/// struct Welcome { email: String }
///
/// impl BackgroundTask for Welcome {
///     type Mode = mode::Async; // on the tokio runtime: never block here
///     async fn run(self) -> Result<(), BoxError> {
///         // send the email over HTTP ...
///         # let _ = self.email;
///         Ok(())
///     }
/// }
/// ```
///
/// A `mode::Sync` task runs on tokio's blocking pool: it may block, and it
/// may still `.await` (its future is driven there with `Handle::block_on`).
/// For a task that only blocks, [`BlockingTask`] is shorter.
pub trait BackgroundTask<R: TaskResult = Result<(), BoxError>>: Send + Sized + 'static {
    /// [`mode::Async`] (the runtime) or [`mode::Sync`] (the blocking pool).
    type Mode: Mode;

    /// The task's work.
    fn run(self) -> impl Future<Output = R> + Send;

    /// The name logs, spans and [`TaskInfo`](crate::TaskInfo) show; by default
    /// the type's name without its module path. A per-task `.name(..)` wins.
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name(std::any::type_name::<Self>()))
    }
}

/// A [`mode::Sync`] task written as a plain `fn run`: sugar for a
/// [`BackgroundTask`] that runs on the blocking pool.
///
/// ```
/// use axum_background::BlockingTask;
///
/// struct Cleanup;
///
/// impl BlockingTask<()> for Cleanup {
///     fn run(self) {
///         // std::fs work, a sync-only client, ...
///     }
/// }
/// ```
pub trait BlockingTask<R: TaskResult = Result<(), BoxError>>: Send + Sized + 'static {
    /// The task's blocking work.
    fn run(self) -> R;

    /// As [`BackgroundTask::name`].
    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(short_type_name(std::any::type_name::<Self>()))
    }
}

impl<T, R> BackgroundTask<R> for T
where
    T: BlockingTask<R>,
    R: TaskResult,
{
    type Mode = mode::Sync;

    async fn run(self) -> R {
        BlockingTask::run(self)
    }

    fn name(&self) -> Cow<'static, str> {
        BlockingTask::name(self)
    }
}

/// What a task may return: `()` or `Result<(), E>` with `E: Into<BoxError>`.
pub trait TaskResult: Send + 'static {
    /// Converts to the crate's common result.
    fn into_result(self) -> Result<(), BoxError>;
}

impl TaskResult for () {
    fn into_result(self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl<E> TaskResult for Result<(), E>
where
    E: Into<BoxError> + Send + 'static,
{
    fn into_result(self) -> Result<(), BoxError> {
        self.map_err(Into::into)
    }
}

/// Anything `schedule` accepts; `M` is a marker that keeps the forms apart.
///
/// | form | example | mode |
/// |---|---|---|
/// | a [`BackgroundTask`] or [`BlockingTask`] type | `Welcome { email }` | its [`Mode`](BackgroundTask::Mode) |
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

/// A task that can run more than once: what a retry needs.
///
/// | form | each attempt runs |
/// |---|---|
/// | a `Clone` [`BackgroundTask`] or [`BlockingTask`] type | a clone |
/// | a `Clone` future | a clone |
/// | a `Clone` sync closure `FnOnce() + Send + 'static` | a clone |
/// | a factory closure `Fn() -> T + Send + 'static`, where `T` is any task [`IntoBackgroundTask`] accepts | a freshly built task |
///
/// A closure that returns a future is always a factory, `Clone` or not: it is
/// called again for each attempt, so each attempt awaits a fresh future. This
/// is how an `async fn` call is retried: `move || send_invoice(id)` (a closure
/// that moves a captured value into the task it builds is only `FnOnce`:
/// clone it inside, `move || send_invoice(id.clone())`).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be retried: it can run only once",
    label = "a retried task must be able to run again",
    note = "retry needs a task that can run again: a `Clone` task type, future or sync closure (each attempt runs a clone), \
            or a factory closure `Fn() -> T` that builds a fresh task per attempt, e.g. `move || send_invoice(id)`",
    note = "derive or implement `Clone` for a task type; a factory must be `Fn`: clone what it moves into the task, \
            e.g. `move || send_invoice(id.clone())`"
)]
pub trait Rerunnable<M>: Send + Sized + 'static {
    /// The mode each attempt runs in.
    type Mode: Mode;

    /// The task's own name, for named task types.
    #[doc(hidden)]
    fn own_name(&self) -> Option<Cow<'static, str>>;

    /// The path of the task type, for a derived name.
    #[doc(hidden)]
    fn type_path() -> &'static str;

    /// The source of attempts.
    #[doc(hidden)]
    fn into_attempts(self) -> impl Attempts;
}

/// Yields the work of each attempt; `None` once no further attempt can be
/// made. Internal: public only because [`Rerunnable`] names it.
#[doc(hidden)]
pub trait Attempts: Send + 'static {
    /// The next attempt's work.
    fn next_attempt(
        &mut self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static>;

    /// The work of a task that runs once (by value: the work can outlive the
    /// source, which `next_attempt`'s borrow would not let it).
    fn into_single_attempt(
        self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static>;
}

/// A task that runs once: its work, made when it was scheduled.
pub(crate) struct Once<W>(Option<W>);

impl<W> Once<W> {
    pub(crate) fn new(work: W) -> Self {
        Once(Some(work))
    }
}

impl<W> Attempts for Once<W>
where
    W: Future<Output = Result<(), BoxError>> + Send + 'static,
{
    fn next_attempt(
        &mut self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static> {
        self.0.take()
    }

    fn into_single_attempt(
        self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static> {
        self.0
    }
}

/// A `Clone` task: each attempt runs a clone.
pub(crate) struct Cloned<T, M> {
    task: T,
    _marker: PhantomData<fn() -> M>,
}

impl<T, M> Cloned<T, M> {
    fn new(task: T) -> Self {
        Cloned {
            task,
            _marker: PhantomData,
        }
    }
}

impl<T: IntoBackgroundTask<M> + Clone, M: 'static> Attempts for Cloned<T, M> {
    fn next_attempt(
        &mut self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static> {
        Some(self.task.clone().into_work())
    }

    fn into_single_attempt(
        self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static> {
        Some(self.task.into_work())
    }
}

/// A factory: each attempt runs a freshly built task.
pub(crate) struct Factory<F, M> {
    make: F,
    _marker: PhantomData<fn() -> M>,
}

impl<F, T, M> Attempts for Factory<F, M>
where
    F: Fn() -> T + Send + 'static,
    T: IntoBackgroundTask<M>,
    M: 'static,
{
    fn next_attempt(
        &mut self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static> {
        Some((self.make)().into_work())
    }

    fn into_single_attempt(
        self,
    ) -> Option<impl Future<Output = Result<(), BoxError>> + Send + 'static> {
        Some((self.make)().into_work())
    }
}

#[doc(hidden)]
#[derive(Debug)]
pub enum CloneTask {}
#[doc(hidden)]
#[derive(Debug)]
pub enum FactoryTask {}

// One `Clone` impl per form, not one over every `IntoBackgroundTask`: a
// `Clone` closure that returns a future would then be both a clone and a
// factory (ambiguous). It is a factory only: called again per attempt.

impl<T, R> Rerunnable<(CloneTask, (NamedTask, R))> for T
where
    T: BackgroundTask<R> + Clone,
    R: TaskResult,
{
    type Mode = T::Mode;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        Some(BackgroundTask::name(self))
    }

    fn type_path() -> &'static str {
        <T as IntoBackgroundTask<(NamedTask, R)>>::type_path()
    }

    fn into_attempts(self) -> impl Attempts {
        Cloned::<T, (NamedTask, R)>::new(self)
    }
}

impl<F, R> Rerunnable<(CloneTask, (FutureTask, R))> for F
where
    F: Future<Output = R> + Clone + Send + 'static,
    R: TaskResult,
{
    type Mode = mode::Async;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        None
    }

    fn type_path() -> &'static str {
        <F as IntoBackgroundTask<(FutureTask, R)>>::type_path()
    }

    fn into_attempts(self) -> impl Attempts {
        Cloned::<F, (FutureTask, R)>::new(self)
    }
}

impl<F, R> Rerunnable<(CloneTask, (ClosureTask, R))> for F
where
    F: FnOnce() -> R + Clone + Send + 'static,
    R: TaskResult,
{
    type Mode = mode::Sync;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        None
    }

    fn type_path() -> &'static str {
        <F as IntoBackgroundTask<(ClosureTask, R)>>::type_path()
    }

    fn into_attempts(self) -> impl Attempts {
        Cloned::<F, (ClosureTask, R)>::new(self)
    }
}

impl<F, T, M> Rerunnable<(FactoryTask, M)> for F
where
    F: Fn() -> T + Send + 'static,
    T: IntoBackgroundTask<M>,
    M: 'static,
{
    type Mode = T::Mode;

    fn own_name(&self) -> Option<Cow<'static, str>> {
        None
    }

    fn type_path() -> &'static str {
        <T as IntoBackgroundTask<M>>::type_path()
    }

    fn into_attempts(self) -> impl Attempts {
        Factory {
            make: self,
            _marker: PhantomData,
        }
    }
}
