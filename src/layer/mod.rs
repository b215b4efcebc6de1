//! The tower layer: gives each request its [`Tasks`](crate::Tasks) and fires
//! the after-route and after-response phases.
//!
//! - [`ResponseFuture`] lends the request to the thread while it polls the
//!   inner service, where the first [`Tasks`](crate::Tasks) extraction makes
//!   the request's scope (see `current.rs`);
//! - [`ResponseFuture`] fires after-route when the inner future yields the
//!   response (and both phases if it is dropped before then);
//! - [`ResponseBody`] fires after-response once: at the end of the stream, on a
//!   body error, or when the body is dropped early.
//!
//! With [`BackgroundLayer::shed_when_saturated`], `call` first reads whether
//! every `max_in_flight` slot is taken; if so the request gets a 503 with
//! `Retry-After` and never reaches the inner service.

mod body;
mod current;
mod future;
mod service;

pub use body::ResponseBody;
pub(crate) use current::scope as request_scope;
pub use future::ResponseFuture;
pub use service::{BackgroundLayer, BackgroundService};

use std::sync::Arc;

use crate::Phase;
use crate::request::RequestScope;

/// Reaches a phase of the request at most once, and on drop reaches the end,
/// so no deferred task is ever left behind.
struct PhaseGuard {
    /// `Some` until the last phase this guard is responsible for is reached.
    scope: Option<Arc<RequestScope>>,
}

impl PhaseGuard {
    fn reach_end(&mut self) {
        if let Some(scope) = self.scope.take() {
            scope.reach(Phase::AfterResponse);
        }
    }
}

impl Drop for PhaseGuard {
    fn drop(&mut self) {
        // Starts the deferred tasks (a task a limit refuses is ended here, its
        // error handler's panic caught): nothing here panics.
        self.reach_end();
    }
}
