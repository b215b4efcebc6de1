//! The two execution modes, fixed at compile time by a task's type.
//!
//! This is the only module that hands work to tokio: [`Async`] spawns the
//! task's future on the runtime, [`Sync`] runs it to completion on a thread of
//! tokio's blocking pool. The choice is made by dispatching on the task's
//! associated `Mode` type, so there is no runtime branch on a mode value.

use std::fmt;
use std::future::Future;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tracing::{Instrument, Span};

use crate::limits::Permit;
use crate::runner::{Exec, Job};
use crate::task::Attempts;

mod sealed {
    pub trait Sealed {}
}

/// A task mode: [`Sync`] or [`Async`]. Sealed: the crate defines both.
pub trait Mode: sealed::Sealed + Send + 'static {
    /// The mode as a value, for [`TaskInfo`](crate::TaskInfo) and logs.
    const KIND: ModeKind;

    /// Starts a task the way this mode runs tasks.
    #[doc(hidden)]
    fn start<A: Attempts>(runtime: &Handle, job: Job<A>);
}

/// Runs on tokio's blocking pool: blocking calls are fine, and the task may
/// still `.await` (its future is driven with [`Handle::block_on`] there).
///
/// Named `mode::Sync` so that it does not shadow [`std::marker::Sync`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sync {}

/// Runs on the tokio runtime as a spawned task: never block in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Async {}

impl sealed::Sealed for Sync {}
impl sealed::Sealed for Async {}

impl Mode for Sync {
    const KIND: ModeKind = ModeKind::Sync;

    fn start<A: Attempts>(runtime: &Handle, mut job: Job<A>) {
        // Ask for a thread permit now, so that tasks get threads in schedule
        // order, but only with the in-flight slot in hand: a task never holds
        // a thread permit while it waits for a slot (the other order could
        // deadlock with a task holding a slot while it waits for a thread).
        if job.slot.as_ref().is_none_or(Permit::is_held) {
            job.blocking = job
                .membership
                .shared()
                .limits
                .blocking
                .as_ref()
                .map(Permit::request);
        }
        let span = job.take_span();
        if job.is_simple() {
            // One blocking thread does it all; it holds the thread permit.
            let permit = job.take_held_blocking_permit();
            let driver = runtime.clone();
            spawn_blocking(runtime, move || {
                let _permit = permit;
                let _entered = span.as_ref().map(Span::enter);
                driver.block_on(job.run_simple());
            });
        } else {
            // Waits (for a slot, a deadline, a backoff) happen on the runtime;
            // each attempt gets a blocking thread.
            let driver = runtime.clone();
            spawn(runtime, span, job.run(Exec::Blocking(driver)));
        }
    }
}

impl Mode for Async {
    const KIND: ModeKind = ModeKind::Async;

    fn start<A: Attempts>(runtime: &Handle, mut job: Job<A>) {
        let span = job.take_span();
        if job.is_simple_inline() {
            spawn(runtime, span, job.run_simple());
        } else {
            spawn(runtime, span, job.run(Exec::Inline));
        }
    }
}

/// Spawns `work` on the runtime, in `span` if there is one. Dropping the
/// join handle detaches it: the work reports its own outcome.
fn spawn<F>(runtime: &Handle, span: Option<Span>, work: F)
where
    F: Future<Output = ()> + Send + 'static,
{
    match span {
        Some(span) => drop(runtime.spawn(work.instrument(span))),
        None => drop(runtime.spawn(work)),
    }
}

/// Runs `work` on the blocking pool. Dropping the join handle detaches it:
/// the work reports its own outcome.
pub(crate) fn spawn_blocking<F, R>(runtime: &Handle, work: F) -> JoinHandle<R>
where
    F: FnOnce() -> R + Send + 'static,
    R: Send + 'static,
{
    runtime.spawn_blocking(work)
}

/// Which mode a task runs in, as a value: what [`TaskInfo::mode`](crate::TaskInfo) holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ModeKind {
    /// [`mode::Sync`](Sync): tokio's blocking pool.
    Sync,
    /// [`mode::Async`](Async): the tokio runtime.
    Async,
}

impl ModeKind {
    /// `"sync"` or `"async"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ModeKind::Sync => "sync",
            ModeKind::Async => "async",
        }
    }
}

impl fmt::Display for ModeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
