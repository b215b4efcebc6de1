//! Per-request state: the tasks waiting for their phase.

use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use http::Method;
use http::request::Parts;
use tracing::Span;

use crate::Phase;
use crate::background::Shared;

/// A task waiting for its phase; running it hands the task to its mode.
pub(crate) type Deferred = Box<dyn FnOnce() + Send>;

/// What a task's [`TaskInfo`](crate::TaskInfo) records of its request.
#[derive(Debug)]
pub(crate) struct RequestMeta {
    pub(crate) method: Method,
    pub(crate) path: Arc<str>,
}

impl RequestMeta {
    fn from_parts(parts: &Parts) -> Self {
        // Under `Router::nest` the URI has lost its prefix; axum keeps the
        // original one in an extension.
        let path = parts
            .extensions
            .get::<axum::extract::OriginalUri>()
            .map_or_else(|| parts.uri.path(), |original| original.0.path());
        RequestMeta {
            method: parts.method.clone(),
            path: Arc::from(path),
        }
    }
}

/// One request's background state, shared by the layer's future and body and
/// by every `Tasks` extracted from the request.
pub(crate) struct RequestScope {
    pub(crate) shared: Arc<Shared>,
    /// The span the request was served in; tasks follow from it.
    pub(crate) span: Span,
    /// Set by the first `Tasks` extraction (so requests that schedule nothing
    /// do not pay for it).
    meta: OnceLock<Arc<RequestMeta>>,
    pending: Mutex<Pending>,
}

#[derive(Default)]
struct Pending {
    /// The latest phase reached: tasks of this phase or earlier start at once.
    reached: Phase,
    after_route: Vec<Deferred>,
    after_response: Vec<Deferred>,
}

impl RequestScope {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        RequestScope {
            shared,
            span: Span::current(),
            meta: OnceLock::new(),
            pending: Mutex::new(Pending::default()),
        }
    }

    pub(crate) fn meta(&self, parts: &Parts) -> Arc<RequestMeta> {
        Arc::clone(
            self.meta
                .get_or_init(|| Arc::new(RequestMeta::from_parts(parts))),
        )
    }

    pub(crate) fn request_meta(&self) -> Option<Arc<RequestMeta>> {
        self.meta.get().cloned()
    }

    /// Runs `task` now if `phase` has been reached, else keeps it for then.
    ///
    /// Deferred tasks are started with the lock held, here and in `reach`:
    /// starting one only hands it to tokio (no user code runs), and holding the
    /// lock keeps a clone scheduling on another thread from overtaking tasks of
    /// the same phase scheduled before it.
    pub(crate) fn at(&self, phase: Phase, task: Deferred) {
        let mut pending = self.lock();
        if phase <= pending.reached {
            task();
            return;
        }
        match phase {
            Phase::AfterRoute => pending.after_route.push(task),
            _ => pending.after_response.push(task),
        }
    }

    /// Marks `phase` reached and starts every task waiting for it or for an
    /// earlier phase, in phase order and then schedule order.
    pub(crate) fn reach(&self, phase: Phase) {
        let mut pending = self.lock();
        if phase <= pending.reached {
            return;
        }
        pending.reached = phase;
        for task in std::mem::take(&mut pending.after_route) {
            task();
        }
        if phase >= Phase::AfterResponse {
            for task in std::mem::take(&mut pending.after_response) {
                task();
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        // Nothing panics while the lock is held; a poisoned lock still holds
        // consistent data.
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for RequestScope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let pending = self.lock();
        f.debug_struct("RequestScope")
            .field("reached", &pending.reached)
            .field("after_route", &pending.after_route.len())
            .field("after_response", &pending.after_response.len())
            .finish()
    }
}
