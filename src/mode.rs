//! The two execution modes, fixed at compile time by a task's type:
//! [`Async`] tasks run on the tokio runtime, [`Sync`] tasks on its blocking
//! pool. The runner (`run/mod.rs`) starts a task by its mode's
//! [`KIND`](Mode::KIND), a constant: each task type compiles to one path.

use std::fmt;

mod sealed {
    pub trait Sealed {}
}

/// A task mode: [`Sync`] or [`Async`]. Sealed: the crate defines both.
pub trait Mode: sealed::Sealed + Send + 'static {
    /// The mode as a value, for [`TaskInfo`](crate::TaskInfo) and logs.
    const KIND: ModeKind;
}

/// Runs on tokio's blocking pool: blocking calls are fine, and the task may
/// still `.await` (its future is driven with [`Handle::block_on`](tokio::runtime::Handle::block_on) there).
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
}

impl Mode for Async {
    const KIND: ModeKind = ModeKind::Async;
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
