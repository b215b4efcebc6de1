//! What a handler, a log line or a snapshot sees of a task.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use compact_str::CompactString;
use http::Method;
use http::request::Parts;

use crate::Phase;
use crate::mode::ModeKind;

/// A task's identifier, unique within its [`Background`](crate::Background).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(pub(crate) u64);

impl TaskId {
    /// The id as a number (ids count up from 1 in schedule order).
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The id with this number (from a log line, a URL): for
    /// [`Background::cancel`](crate::Background::cancel).
    pub fn from_u64(id: u64) -> Self {
        TaskId(id)
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A snapshot of a task: who it is, where it came from, how far it got.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct TaskInfo {
    /// The task's id.
    pub id: TaskId,
    /// Its name: per-task `.name(..)`, else the task type's name, else the
    /// default config's name, else one derived from the future or closure.
    pub name: Cow<'static, str>,
    /// The phase it was scheduled in.
    pub phase: Phase,
    /// The mode it runs in.
    pub mode: ModeKind,
    /// Whether it is shielded from cancellation at shutdown.
    pub shielded: bool,
    /// When `schedule` was called.
    pub scheduled_at: Instant,
    /// When it started running; `None` while it waits for its phase or a slot.
    pub started_at: Option<Instant>,
    /// When a delayed task (`delay`, `at`) falls due; `None` for a task that
    /// starts when its phase comes, and until its phase has come.
    pub due_at: Option<Instant>,
    /// The method of the request it was scheduled from; `None` outside a request.
    pub method: Option<Method>,
    /// The path of the request it was scheduled from; `None` outside a request.
    pub path: Option<Arc<str>>,
    /// How many times it has been started (0 before its first run).
    pub attempts: u32,
    /// The longest one of its polls was seen holding its runtime worker
    /// thread, if it ever held it past the blocking threshold (an async task
    /// only; see [`BackgroundBuilder::detect_blocking`](crate::BackgroundBuilder::detect_blocking)).
    pub blocked: Option<std::time::Duration>,
}

/// What a task's [`TaskInfo`](crate::TaskInfo) records of its request.
///
/// The path is kept inline when it is short (up to 24 bytes, most routes'),
/// so a request that schedules makes no allocation for it; a `TaskInfo`,
/// read far less often than a request is served, copies it out.
#[derive(Debug)]
pub(crate) struct RequestMeta {
    pub(crate) method: Method,
    pub(crate) path: CompactString,
}

impl RequestMeta {
    pub(crate) fn from_parts(parts: &Parts) -> Self {
        // Under `Router::nest` the URI has lost its prefix; axum keeps the
        // original one in an extension.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| parts.uri.path(), |original| original.0.path());
        RequestMeta {
            method: parts.method.clone(),
            path: CompactString::new(path),
        }
    }
}
