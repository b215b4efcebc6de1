//! Limits: the blocking-pool bound, the in-flight bound, retry policies.

use std::future::Future;
use std::hash::{BuildHasher, RandomState};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};

use crate::outcome::OutcomeKind;
use crate::{RejectReason, TaskError};

/// What happens to a task when [`max_in_flight`](crate::BackgroundBuilder::max_in_flight)
/// tasks are already running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// The task waits for a slot, in schedule order; `schedule` still returns
    /// at once. The default.
    #[default]
    Wait,
    /// The task ends at once as [`TaskError::Rejected`] with
    /// [`RejectReason::LimitReached`], reported to its error handler.
    Reject,
}

/// How often, and how patiently, a failed task is run again.
///
/// `RetryPolicy::attempts(n)` runs a task at most `n` times in all. After a
/// failed attempt the next waits an exponential backoff: `base`, `2 × base`,
/// `4 × base`, ... capped at [`max_backoff`](RetryPolicy::max_backoff), with
/// jitter (each wait is drawn between half and all of its nominal value).
///
/// Retried: attempts that return an error, and panics if
/// [`retry_panics`](RetryPolicy::retry_panics) is set. Never retried: a
/// timeout, and cancellation (at shutdown or on request). The error handler is
/// called once, with the last error; [`TaskInfo::attempts`](crate::TaskInfo::attempts)
/// says how many runs there were.
///
/// Retrying needs a task that can run again: a `Clone` task, or a factory
/// closure that builds a fresh task per attempt (see [`Rerunnable`](crate::task::Rerunnable)).
///
/// ```
/// use std::time::Duration;
/// use axum_background::RetryPolicy;
///
/// let policy = RetryPolicy::attempts(4).backoff(Duration::from_millis(100));
/// assert_eq!(policy.max_attempts(), 4);
/// assert_eq!(policy.nominal_delay(1), Duration::from_millis(100));
/// assert_eq!(policy.nominal_delay(3), Duration::from_millis(400));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    attempts: u32,
    backoff: Duration,
    max_backoff: Duration,
    jitter: bool,
    panics: bool,
    /// `Some` when only some failures are worth another run.
    retry_if: Option<fn(&TaskError) -> bool>,
}

impl RetryPolicy {
    /// At most `n` runs in all (`0` is taken as `1`: run once, never retry).
    /// Backoff starts at 100 ms and is capped at 30 s unless set.
    pub fn attempts(n: u32) -> Self {
        RetryPolicy {
            attempts: n.max(1),
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(30),
            jitter: true,
            panics: false,
            retry_if: None,
        }
    }

    /// The wait before the second run; each later wait doubles.
    #[must_use]
    pub fn backoff(mut self, base: Duration) -> Self {
        self.backoff = base;
        self
    }

    /// The longest wait between two runs.
    #[must_use]
    pub fn max_backoff(mut self, max: Duration) -> Self {
        self.max_backoff = max;
        self
    }

    /// Whether waits are jittered (default `true`): spread between half and all
    /// of their nominal value, so that tasks failing together do not retry
    /// together.
    #[must_use]
    pub fn jitter(mut self, jitter: bool) -> Self {
        self.jitter = jitter;
        self
    }

    /// Whether a panicking attempt is retried too (default `false`).
    #[must_use]
    pub fn retry_panics(mut self, retry: bool) -> Self {
        self.panics = retry;
        self
    }

    /// Retries only failures for which `predicate` returns `true` (panics
    /// still need [`retry_panics`](Self::retry_panics)); others end the task
    /// at once. For errors that another run cannot fix (a 422, bad input).
    ///
    /// ```
    /// use axum_background::{RetryPolicy, TaskError};
    ///
    /// fn transient(error: &TaskError) -> bool {
    ///     !error.to_string().contains("invalid")
    /// }
    /// let policy = RetryPolicy::attempts(5).retry_if(transient);
    /// # let _ = policy;
    /// ```
    #[must_use]
    pub fn retry_if(mut self, predicate: fn(&TaskError) -> bool) -> Self {
        self.retry_if = Some(predicate);
        self
    }

    /// The most runs this policy allows.
    pub fn max_attempts(&self) -> u32 {
        self.attempts
    }

    /// The nominal wait after the `attempt`-th run failed (1-based), before
    /// jitter: `base × 2^(attempt - 1)`, capped.
    pub fn nominal_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.backoff
            .checked_mul(factor)
            .unwrap_or(self.max_backoff)
            .min(self.max_backoff)
    }

    /// The wait after the `attempt`-th run failed, jitter applied.
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let nominal = self.nominal_delay(attempt);
        if !self.jitter || nominal.is_zero() {
            return nominal;
        }
        let half = nominal / 2;
        half + random_below(half)
    }

    /// Whether an attempt that ended with `error` as the `attempt`-th run is
    /// followed by another.
    pub(crate) fn retries(&self, attempt: u32, error: &TaskError) -> bool {
        attempt < self.attempts
            && match OutcomeKind::of_error(error) {
                OutcomeKind::Failed => true,
                OutcomeKind::Panicked => self.panics,
                OutcomeKind::Completed
                | OutcomeKind::TimedOut
                | OutcomeKind::Cancelled
                | OutcomeKind::Rejected => false,
            }
            && self.retry_if.is_none_or(|retry| retry(error))
    }
}

/// A random time below `bound` (zero for a zero bound): the spread of retry
/// backoffs and periodic jitter. Each `RandomState` is freshly keyed: a cheap
/// source of randomness that needs no RNG dependency.
pub(crate) fn random_below(bound: Duration) -> Duration {
    let nanos = u64::try_from(bound.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(RandomState::new().hash_one(nanos) % nanos)
}

/// A permit from a limit's semaphore: held, or queued for (in schedule order).
pub(crate) enum Permit {
    Held(OwnedSemaphorePermit),
    Queued(Pin<Box<dyn Future<Output = Result<OwnedSemaphorePermit, AcquireError>> + Send>>),
}

impl Permit {
    /// Takes a permit if one is free, else joins the queue now, so that tasks
    /// get their slots in the order they asked.
    pub(crate) fn request(semaphore: &Arc<Semaphore>) -> Permit {
        if let Ok(permit) = Arc::clone(semaphore).try_acquire_owned() {
            return Permit::Held(permit);
        }
        let mut acquire = Box::pin(Arc::clone(semaphore).acquire_owned());
        // Polling once enqueues the waiter; the runner polls it again with its
        // own waker.
        match acquire
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            Poll::Ready(Ok(permit)) => Permit::Held(permit),
            _ => Permit::Queued(acquire),
        }
    }

    pub(crate) fn is_held(&self) -> bool {
        matches!(self, Permit::Held(_))
    }

    /// Waits for the permit. The semaphores are never closed, so this only
    /// ever yields a permit.
    pub(crate) async fn acquire(self) -> Option<OwnedSemaphorePermit> {
        match self {
            Permit::Held(permit) => Some(permit),
            Permit::Queued(acquire) => acquire.await.ok(),
        }
    }
}

/// How a task is admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Rejected once shutdown has begun, or by a full `max_in_flight` with
    /// the reject policy.
    Standard,
    /// Work already committed to (taken out of a durable store): admitted
    /// during shutdown, and waits for a slot whatever the overflow policy.
    #[cfg_attr(not(feature = "_plugins"), allow(dead_code))]
    Committed,
}

/// The limits a `Background` was built with.
#[derive(Debug, Default, Clone)]
pub(crate) struct Limits {
    /// `Some` with `max_blocking(n)`: permits for running sync tasks.
    pub(crate) blocking: Option<Arc<Semaphore>>,
    /// `Some` with `max_in_flight(n)`: permits for started tasks, and `n`.
    pub(crate) in_flight: Option<(Arc<Semaphore>, usize)>,
    pub(crate) overflow: OverflowPolicy,
}

impl Limits {
    /// Whether a task may wait for a slot that a running task holds
    /// (`max_in_flight`, `max_blocking`).
    pub(crate) fn queues(&self) -> bool {
        self.in_flight.is_some() || self.blocking.is_some()
    }

    /// Whether every `max_in_flight` slot is taken, whatever the overflow
    /// policy: a task scheduled now would be rejected or would queue. One
    /// atomic load; `false` without `max_in_flight`.
    pub(crate) fn is_saturated(&self) -> bool {
        self.in_flight
            .as_ref()
            .is_some_and(|(slots, _)| slots.available_permits() == 0)
    }

    /// The in-flight permit for a task about to start; `Err` when the limit
    /// is reached and the policy is to reject.
    ///
    /// A [`Admission::Committed`] task waits whatever the policy.
    pub(crate) fn admit(&self, admission: Admission) -> Result<Option<Permit>, RejectReason> {
        let Some((semaphore, limit)) = &self.in_flight else {
            return Ok(None);
        };
        match (self.overflow, admission) {
            (OverflowPolicy::Reject, Admission::Standard) => Arc::clone(semaphore)
                .try_acquire_owned()
                .map(|permit| Some(Permit::Held(permit)))
                .map_err(|_| RejectReason::LimitReached { limit: *limit }),
            _ => Ok(Some(Permit::request(semaphore))),
        }
    }
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Permit::Held(_) => "Permit::Held",
            Permit::Queued(_) => "Permit::Queued",
        })
    }
}
