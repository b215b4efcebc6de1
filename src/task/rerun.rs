//! [`Rerunnable`]: the forms a retried task takes, and the source of each
//! attempt's work.

use std::borrow::Cow;
use std::future::Future;
use std::marker::PhantomData;

use super::into_task::{ClosureTask, FutureTask, NamedTask};
use super::{BackgroundTask, IntoBackgroundTask, TaskResult};
use crate::BoxError;
use crate::mode::{self, Mode};

/// A task that can run more than once: what a retry needs.
///
/// | form | each attempt runs |
/// |---|---|
/// | a `Clone` [`BackgroundTask`] or [`BlockingTask`](super::BlockingTask) type | a clone |
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
