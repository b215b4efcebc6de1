//! The request whose layer future is being polled on this thread: how
//! [`Tasks`](crate::Tasks) finds its request without a request extension.
//!
//! The layer's future lends its [`Frame`] to the thread for each poll of the
//! inner service (where axum runs extractors and handlers) and takes it back
//! after, so a request that extracts no `Tasks` makes no scope and puts
//! nothing in its extensions (an insertion there boxes the value and can
//! grow the map: more than the rest of the layer costs a request).
//!
//! A plain thread-local, lent with the same `context::lend` that keeps the
//! running task, rather than tokio's `task_local!`: its scope future would wrap the inner future in one
//! more layer holding the key beside the frame, and the scope made on first
//! use would need a `RefCell` in the frame; lending is a swap in and a swap
//! out.

use std::cell::Cell;
use std::sync::Arc;

use http::request::Parts;

use super::PhaseGuard;
use crate::inner::Shared;
use crate::request::RequestScope;

thread_local! {
    /// `Some` while a layer's future polls its inner service on this thread.
    static CURRENT: Cell<Option<Frame>> = const { Cell::new(None) };
}

/// What a request's layer future lends to the thread while it polls.
pub(super) struct Frame {
    pub(super) shared: Arc<Shared>,
    /// Its scope, once the first `Tasks` extraction has made it; reaches
    /// the request's end when dropped.
    pub(super) guard: PhaseGuard,
}

/// Calls `poll` with `frame` lent to the thread, and takes it back after
/// (also if `poll` panics). A layer inside another lends its own frame and
/// gives the outer one back when it is done.
pub(super) fn lend<R>(frame: &mut Option<Frame>, poll: impl FnOnce() -> R) -> R {
    crate::context::lend(&CURRENT, frame, poll)
}

/// The scope of the request whose layer is polling on this thread, made now
/// if this is its first `Tasks`; `None` outside any layer's poll.
pub(crate) fn scope(parts: &Parts) -> Option<Arc<RequestScope>> {
    CURRENT
        .try_with(|current| {
            let mut frame = current.take()?;
            let shared = &frame.shared;
            let scope = Arc::clone(
                frame
                    .guard
                    .scope
                    .get_or_insert_with(|| Arc::new(RequestScope::new(Arc::clone(shared), parts))),
            );
            current.set(Some(frame));
            Some(scope)
        })
        .ok()
        .flatten()
}
