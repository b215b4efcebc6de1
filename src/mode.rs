//! The two execution modes, fixed at compile time by a task's type.
//!
//! This is the only module that hands work to tokio: [`Async`] spawns the
//! task's future on the runtime, [`Sync`] runs it to completion on a thread of
//! tokio's blocking pool. The choice is made by dispatching on the task's
//! associated `Mode` type, so there is no runtime branch on a mode value.

use std::fmt;
use std::future::Future;

use tokio::runtime::Handle;

mod sealed {
    pub trait Sealed {}
}

/// A task mode: [`Sync`] or [`Async`]. Sealed: the crate defines both.
pub trait Mode: sealed::Sealed + Send + 'static {
    /// The mode as a value, for [`TaskInfo`](crate::TaskInfo) and logs.
    const KIND: ModeKind;

    /// Starts `work` the way this mode runs tasks.
    #[doc(hidden)]
    fn spawn<F>(runtime: &Handle, work: F)
    where
        F: Future<Output = ()> + Send + 'static;
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

    fn spawn<F>(runtime: &Handle, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let driver = runtime.clone();
        // The join handle is dropped: the work reports its own outcome.
        drop(runtime.spawn_blocking(move || driver.block_on(work)));
    }
}

impl Mode for Async {
    const KIND: ModeKind = ModeKind::Async;

    fn spawn<F>(runtime: &Handle, work: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        drop(runtime.spawn(work));
    }
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
        f.write_str(self.as_str())
    }
}
