//! What can be scheduled: the task types users write ([`BackgroundTask`],
//! [`BlockingTask`], [`TaskResult`]), every form `schedule` takes
//! ([`IntoBackgroundTask`]), and the forms a retry takes ([`Rerunnable`]).

mod into_task;
mod rerun;

use std::borrow::Cow;
use std::future::Future;

use crate::BoxError;
use crate::mode::{self, Mode};
use crate::name::short_type_name;

pub use into_task::IntoBackgroundTask;
#[doc(hidden)]
pub use into_task::{AsyncClosureTask, ClosureTask, FutureTask, NamedTask};
pub(crate) use rerun::Once;
pub use rerun::Rerunnable;
#[doc(hidden)]
pub use rerun::{Attempts, CloneTask, FactoryTask};

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
