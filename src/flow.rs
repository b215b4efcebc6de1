//! Flow control by name or key: at most N tasks of a flow running at once,
//! at most N starting per period. A task waiting for its flow is queued,
//! never failed.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The limits of one flow, registered with
/// [`BackgroundBuilder::flow`](crate::BackgroundBuilder::flow) under a task
/// name or a key. A task belongs to the flow named by its `flow(key)`
/// option, or else to the one named like it.
///
/// ```
/// use std::time::Duration;
/// use axum_background::{Background, FlowLimit};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let background = Background::builder()
///     // At most 2 thumbnails at once.
///     .flow("thumbnail", FlowLimit::new().concurrency(2))
///     // At most 10 calls to the mail API a second.
///     .flow("mail-api", FlowLimit::new().rate(10, Duration::from_secs(1)))
///     .build();
/// # drop(background);
/// # }
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[must_use]
pub struct FlowLimit {
    concurrency: Option<usize>,
    rate: Option<(usize, Duration)>,
}

impl FlowLimit {
    /// No limit yet: add [`concurrency`](Self::concurrency) and/or
    /// [`rate`](Self::rate).
    pub fn new() -> Self {
        FlowLimit::default()
    }

    /// At most `n` tasks of the flow running at once (`0` is taken as 1).
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = Some(n.clamp(1, Semaphore::MAX_PERMITS));
        self
    }

    /// At most `n` tasks of the flow starting in any `period` (`0` is taken
    /// as 1).
    pub fn rate(mut self, n: usize, period: Duration) -> Self {
        self.rate = Some((n.clamp(1, Semaphore::MAX_PERMITS), period));
        self
    }
}

/// A flow's live limits.
pub(crate) struct Flow {
    running: Option<Arc<Semaphore>>,
    starts: Option<(Arc<Semaphore>, Duration)>,
}

/// Held by a task of a flow until it ends: its place among the running.
pub(crate) struct FlowPermit {
    _running: Option<OwnedSemaphorePermit>,
}

impl Flow {
    pub(crate) fn new(limit: FlowLimit) -> Self {
        Flow {
            running: limit.concurrency.map(|n| Arc::new(Semaphore::new(n))),
            starts: limit
                .rate
                .map(|(n, period)| (Arc::new(Semaphore::new(n)), period)),
        }
    }

    /// Waits for the task's turn: a place among the running, then a start
    /// in the current period (whose token comes back a period later). The
    /// semaphores are first come, first served.
    pub(crate) async fn enter(&self) -> FlowPermit {
        let running = match &self.running {
            // Never closed: `acquire_owned` only yields a permit.
            Some(running) => Arc::clone(running).acquire_owned().await.ok(),
            None => None,
        };
        if let Some((starts, period)) = &self.starts {
            if let Ok(start) = Arc::clone(starts).acquire_owned().await {
                start.forget();
                let (starts, period) = (Arc::clone(starts), *period);
                tokio::spawn(async move {
                    tokio::time::sleep(period).await;
                    starts.add_permits(1);
                });
            }
        }
        FlowPermit { _running: running }
    }
}

impl fmt::Debug for Flow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Flow")
            .field(
                "running",
                &self.running.as_ref().map(|s| s.available_permits()),
            )
            .field(
                "starts",
                &self.starts.as_ref().map(|(s, _)| s.available_permits()),
            )
            .finish()
    }
}

impl fmt::Debug for FlowPermit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("FlowPermit").finish_non_exhaustive()
    }
}
