//! Periodic tasks: a task run at a fixed interval, registered on the builder
//! ([`BackgroundBuilder::periodic`](crate::BackgroundBuilder::periodic)).
//! Each run is an ordinary task of the `Background`; the schedule stops when
//! shutdown begins, before new schedules are rejected, so no tick is.

use std::borrow::Cow;
use std::fmt;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::config::TaskConfig;
use crate::handle::TaskHandle;
use crate::inner::Shared;
use crate::name::derived_name;
use crate::options::TaskOptions;
use crate::task::IntoBackgroundTask;

/// A task run every `period`, from one period after the `Background` has a
/// runtime until its shutdown begins.
///
/// ```
/// use std::time::Duration;
/// use axum_background::{Background, periodic::Periodic};
///
/// async fn purge_expired_sessions() { /* DELETE ... */ }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let background = Background::builder()
///     .periodic(Periodic::every(Duration::from_secs(300), purge_expired_sessions).name("purge"))
///     .build();
/// assert_eq!(background.periodic_tasks()[0].name, "purge");
/// # }
/// ```
///
/// Each run is an ordinary task: named, logged, passed to its error handler,
/// counted, listed in flight, and shut down like any other (its
/// [`config`](Self::config) sets its shield, timeout and error handler). A run
/// that fails does not stop the schedule.
#[must_use = "a periodic task does nothing until it is registered with `BackgroundBuilder::periodic`"]
pub struct Periodic {
    name: Cow<'static, str>,
    period: Duration,
    overlap: Overlap,
    missed: MissedTicks,
    jitter: Duration,
    options: TaskOptions,
    run: Arc<RunFn>,
}

/// Schedules one run: the task `make` builds, with the run's options.
type RunFn = dyn Fn(&Arc<Shared>, &TaskOptions) -> TaskHandle + Send + Sync;

/// What a tick does while the previous run is still in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Overlap {
    /// Skip the tick (the default): at most one run at a time.
    #[default]
    Skip,
    /// Start another run alongside.
    Allow,
}

/// What the schedule does when ticks were missed (a run was skipped for
/// overlap, or the schedule woke late).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum MissedTicks {
    /// Skip them (the default): the next run is at the next tick still ahead.
    #[default]
    Skip,
    /// Run once at once for all of them, then go on one period apart from then.
    RunOnceLate,
}

impl Periodic {
    /// Runs the task `make` builds every `period`: a closure, `async fn`,
    /// or anything returning a task `schedule` takes. A `period` of zero
    /// would run without pause: it is taken as 1 ms, with a warning.
    pub fn every<F, T, M>(period: Duration, make: F) -> Self
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: IntoBackgroundTask<M>,
    {
        let period = if period.is_zero() {
            tracing::warn!("Periodic::every(0) would never pause; using 1 ms");
            Duration::from_millis(1)
        } else {
            period
        };
        Periodic {
            name: Cow::Borrowed(derived_name(T::type_path())),
            period,
            overlap: Overlap::default(),
            missed: MissedTicks::default(),
            jitter: Duration::ZERO,
            options: TaskOptions::default(),
            run: Arc::new(move |shared, options| {
                crate::schedule::once(shared, make(), None, None, options)
            }),
        }
    }

    /// The name of the schedule and of each of its runs (by default, the
    /// name of the `async fn` or the function `make` was written in).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// What a tick does while the previous run is in flight; see [`Overlap`].
    pub fn overlap(mut self, overlap: Overlap) -> Self {
        self.overlap = overlap;
        self
    }

    /// What the schedule does with missed ticks; see [`MissedTicks`].
    pub fn missed_ticks(mut self, missed: MissedTicks) -> Self {
        self.missed = missed;
        self
    }

    /// Delays each run by a random time below `jitter`, so that many
    /// processes on one schedule do not run at the same instant.
    pub fn jitter(mut self, jitter: Duration) -> Self {
        self.jitter = jitter;
        self
    }

    /// Each run's options: its shield, timeout and error handler (over the
    /// default config). Its name is the schedule's; a `phase`, `delay` or
    /// `retry` set here does not apply (a run starts at its tick, and a
    /// failed run waits for the next one).
    pub fn config(mut self, config: TaskConfig) -> Self {
        self.options = TaskOptions {
            phase: None,
            start: None,
            retry: None,
            unique: None,
            ..config.options
        };
        self
    }
}

impl fmt::Debug for Periodic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Periodic")
            .field("name", &self.name)
            .field("period", &self.period)
            .field("overlap", &self.overlap)
            .field("missed", &self.missed)
            .field("jitter", &self.jitter)
            .finish_non_exhaustive()
    }
}

/// A registered schedule, as [`Background::periodic_tasks`](crate::Background::periodic_tasks)
/// lists it.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeriodicInfo {
    /// The schedule's name (and its runs').
    pub name: Cow<'static, str>,
    /// The time between two ticks.
    pub period: Duration,
    /// When the next run is due; `None` before the `Background` has a
    /// runtime, and once the schedule has stopped.
    pub next_run: Option<std::time::Instant>,
    /// The last run, if there has been one: its handle says whether it is in
    /// flight and how it ended.
    pub last_run: Option<TaskHandle>,
}

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
    pub(crate) fn new(periodic: Vec<Periodic>) -> Self {
        Schedules {
            entries: periodic
                .into_iter()
                .map(|periodic| {
                    Arc::new(Entry {
                        periodic,
                        next: Mutex::new(None),
                        last: Mutex::new(None),
                    })
                })
                .collect(),
            stop: CancellationToken::new(),
            drivers: Mutex::new(Vec::new()),
        }
    }

    /// Starts a driver per schedule on `runtime` (called once).
    pub(crate) fn start(&self, shared: &Arc<Shared>, runtime: &Handle) {
        if self.entries.is_empty() || self.stop.is_cancelled() {
            return;
        }
        // Anchored now, not when each driver is first polled.
        let first = Instant::now();
        let mut drivers = lock(&self.drivers);
        for entry in &self.entries {
            let next = first + entry.periodic.period;
            *lock(&entry.next) = Some(next);
            let driver = drive(
                Arc::downgrade(shared),
                Arc::clone(entry),
                next,
                self.stop.clone(),
            );
            drivers.push(runtime.spawn(driver));
        }
    }

    /// Stops every driver and waits until none can schedule again.
    pub(crate) async fn stop(&self) {
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
                period: entry.periodic.period,
                next_run: lock(&entry.next).map(Instant::into_std),
                last_run: lock(&entry.last).clone(),
            })
            .collect()
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
    mut next: Instant,
    stop: CancellationToken,
) {
    let periodic = &entry.periodic;
    let period = periodic.period;
    loop {
        let at = next + jitter(periodic.jitter);
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
        next += period;
        let now = Instant::now();
        if next <= now {
            next = match periodic.missed {
                // The first tick of the grid still ahead.
                MissedTicks::Skip => {
                    let behind = (now - next).as_nanos() / period.as_nanos() + 1;
                    let behind = u32::try_from(behind).unwrap_or(u32::MAX);
                    next + period.saturating_mul(behind)
                }
                MissedTicks::RunOnceLate => now,
            };
        }
    }
    *lock(&entry.next) = None;
}

/// A random time below `jitter` (zero without it).
fn jitter(jitter: Duration) -> Duration {
    let nanos = u64::try_from(jitter.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    // Each `RandomState` is freshly keyed: enough randomness for a spread,
    // with no RNG dependency.
    Duration::from_nanos(RandomState::new().hash_one(nanos) % nanos)
}
