//! When, relative to its request, a task starts.

use std::fmt;

/// When a task starts, relative to the request that scheduled it.
///
/// | phase | starts |
/// |---|---|
/// | [`Immediate`](Phase::Immediate) | before `schedule` returns, concurrently with the handler |
/// | [`AfterRoute`](Phase::AfterRoute) | when the handler has produced its response, before the head is sent |
/// | [`AfterResponse`](Phase::AfterResponse) | when the body's last frame has been polled, or the body is dropped early |
///
/// A task scheduled after its phase has passed (from a `Tasks` clone kept
/// beyond the handler, or outside any request) starts at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[non_exhaustive]
pub enum Phase {
    /// Start now, while the handler runs.
    #[default]
    Immediate,
    /// Start when the handler has returned its response.
    AfterRoute,
    /// Start when the response has been sent (or abandoned by the client).
    AfterResponse,
}

impl Phase {
    /// `"immediate"`, `"after_route"` or `"after_response"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Immediate => "immediate",
            Phase::AfterRoute => "after_route",
            Phase::AfterResponse => "after_response",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}
