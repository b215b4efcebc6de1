//! The drivers of a `Background`'s periodic schedules: one tokio task each,
//! started with the runtime, stopped as shutdown begins.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::cadence::Clock;
use super::{MissedTicks, Overlap, Periodic, PeriodicInfo};
use crate::handle::TaskHandle;
use crate::inner::{Extension, Shared};
use crate::limits::random_below;
use crate::options::TaskOptions;

/// The schedules of a `Background` and their drivers.
#[derive(Debug, Default)]
pub(crate) struct Schedules {
    entries: Vec<Arc<Entry>>,
    stop: CancellationToken,
    drivers: Mutex<Vec<JoinHandle<()>>>,
}

/// One schedule and what its driver reports of it.
struct Entry {
    periodic: Periodic,
    /// `Some` while the driver waits for a tick.
    next: Mutex<Option<Instant>>,
    last: Mutex<Option<TaskHandle>>,
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("periodic", &self.periodic)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while these locks are held.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Schedules {
    /// Registers a schedule (while the `Background` is being built).
    pub(crate) fn add(&mut self, periodic: Periodic) {
        self.entries.push(Arc::new(Entry {
            periodic,
            next: Mutex::new(None),
            last: Mutex::new(None),
        }));
    }

    /// Starts a driver per schedule on `runtime` (called once).
    fn start(&self, shared: &Arc<Shared>, runtime: &Handle) {
        if self.entries.is_empty() || self.stop.is_cancelled() {
            return;
        }
        // Anchored now, not when each driver is first polled.
        let clock = Clock::now();
        let mut drivers = lock(&self.drivers);
        for entry in &self.entries {
            let next = entry.periodic.cadence.first(&clock);
            *lock(&entry.next) = Some(next);
            let driver = drive(
                Arc::downgrade(shared),
                Arc::clone(entry),
                clock.clone(),
                next,
                self.stop.clone(),
            );
            drivers.push(runtime.spawn(driver));
        }
    }

    /// Stops every driver and waits until none can schedule again.
    async fn stop(&self) {
        self.stop.cancel();
        let drivers = std::mem::take(&mut *lock(&self.drivers));
        for driver in drivers {
            // A driver ends at its next await; it never panics (its runs are
            // tasks of their own).
            let _ = driver.await;
        }
    }

    pub(crate) fn list(&self) -> Vec<PeriodicInfo> {
        self.entries
            .iter()
            .map(|entry| PeriodicInfo {
                name: entry.periodic.name.clone(),
                schedule: entry.periodic.cadence.to_string(),
                next_run: lock(&entry.next).map(Instant::into_std),
                last_run: lock(&entry.last).clone(),
                durable: false,
            })
            .collect()
    }
}

/// The schedules plug into their `Background`: started with its runtime,
/// stopped as its shutdown begins, before it rejects anything.
impl Extension for Schedules {
    fn on_runtime(&self, shared: &Arc<Shared>, runtime: &Handle) {
        self.start(shared, runtime);
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.stop())
    }

    fn drain(
        &self,
        _deadline: tokio::time::Instant,
    ) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl Drop for Schedules {
    fn drop(&mut self) {
        // The `Background` is gone: its drivers end at their next wake.
        self.stop.cancel();
    }
}

/// Runs one schedule until `stop`.
async fn drive(
    shared: Weak<Shared>,
    entry: Arc<Entry>,
    clock: Clock,
    mut next: Instant,
    stop: CancellationToken,
) {
    let periodic = &entry.periodic;
    loop {
        let at = next + random_below(periodic.jitter);
        *lock(&entry.next) = Some(at);
        tokio::select! {
            () = stop.cancelled() => break,
            () = tokio::time::sleep_until(at) => {}
        }
        let Some(shared) = shared.upgrade() else {
            break;
        };
        let running = lock(&entry.last)
            .as_ref()
            .is_some_and(|last| !last.is_finished());
        if running && periodic.overlap == Overlap::Skip {
            tracing::debug!(
                schedule = %periodic.name,
                "periodic run skipped: the previous one is still in flight"
            );
        } else {
            let options = TaskOptions {
                name: Some(periodic.name.clone()),
                ..periodic.options.clone()
            };
            let handle = (periodic.run)(&shared, &options);
            *lock(&entry.last) = Some(handle);
        }
        drop(shared);
        let now = Instant::now();
        next = periodic.cadence.after(&clock, next);
        if next <= now {
            next = match periodic.missed {
                MissedTicks::Skip => periodic.cadence.first_after(&clock, next, now),
                MissedTicks::RunOnceLate => now,
            };
        }
    }
    *lock(&entry.next) = None;
}
