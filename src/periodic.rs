//! Periodic tasks: a task run at a fixed interval, or on a cron schedule
//! (feature `cron`), registered on the builder
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

/// A task run every `period` (from one period after the `Background` has a
/// runtime), or at each time of a cron schedule (feature `cron`), until
/// shutdown begins.
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
    cadence: Cadence,
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
        Periodic::new(Cadence::Every(period), make)
    }

    fn new<F, T, M>(cadence: Cadence, make: F) -> Self
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: IntoBackgroundTask<M>,
    {
        Periodic {
            name: Cow::Borrowed(derived_name(T::type_path())),
            cadence,
            overlap: Overlap::default(),
            missed: MissedTicks::default(),
            jitter: Duration::ZERO,
            options: TaskOptions::default(),
            run: Arc::new(move |shared, options| {
                crate::schedule::once(shared, make(), None, None, options)
            }),
        }
    }

    /// Runs the task `make` builds at each time of the cron `expression`
    /// (seconds, minutes, hours, day of month, month, day of week, and an
    /// optional year), in UTC unless [`time_zone`](Self::time_zone) says
    /// otherwise.
    ///
    /// ```
    /// use axum_background::periodic::Periodic;
    ///
    /// async fn send_digest() {}
    ///
    /// let nightly = Periodic::cron("0 30 2 * * *", send_digest)? // 02:30 every day
    ///     .time_zone(chrono_tz::Europe::Paris);
    /// # drop(nightly);
    /// assert!(Periodic::cron("every tuesday", send_digest).is_err());
    /// # Ok::<(), axum_background::periodic::CronError>(())
    /// ```
    ///
    /// # Errors
    ///
    /// [`CronError`] when `expression` is not a cron expression.
    #[cfg(feature = "cron")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cron")))]
    pub fn cron<F, T, M>(expression: &str, make: F) -> Result<Self, CronError>
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: IntoBackgroundTask<M>,
    {
        let schedule = expression
            .parse::<cron::Schedule>()
            .map_err(|error| CronError {
                expression: expression.to_owned(),
                error,
            })?;
        let cadence = Cadence::Cron {
            schedule: Box::new(schedule),
            zone: chrono_tz::Tz::UTC,
        };
        Ok(Periodic::new(cadence, make))
    }

    /// The time zone a cron schedule is read in (UTC by default); no effect
    /// on a fixed interval.
    #[cfg(feature = "cron")]
    #[cfg_attr(docsrs, doc(cfg(feature = "cron")))]
    pub fn time_zone(mut self, zone: chrono_tz::Tz) -> Self {
        if let Cadence::Cron { zone: own, .. } = &mut self.cadence {
            *own = zone;
        }
        self
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
            .field("cadence", &self.cadence)
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
    /// `every 300s`, or `cron 0 30 2 * * * (Europe/Paris)`.
    pub schedule: String,
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
                schedule: entry.periodic.cadence.to_string(),
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
    clock: Clock,
    mut next: Instant,
    stop: CancellationToken,
) {
    let periodic = &entry.periodic;
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

/// When a schedule ticks.
enum Cadence {
    Every(Duration),
    #[cfg(feature = "cron")]
    Cron {
        schedule: Box<cron::Schedule>,
        zone: chrono_tz::Tz,
    },
}

impl Cadence {
    /// The first tick after the schedule starts at `clock`'s origin.
    fn first(&self, clock: &Clock) -> Instant {
        match self {
            Cadence::Every(period) => clock.origin + *period,
            #[cfg(feature = "cron")]
            Cadence::Cron { .. } => self.after(clock, clock.origin),
        }
    }

    /// The tick after the one at `tick`.
    #[cfg_attr(not(feature = "cron"), allow(unused_variables))]
    fn after(&self, clock: &Clock, tick: Instant) -> Instant {
        match self {
            Cadence::Every(period) => tick + *period,
            #[cfg(feature = "cron")]
            Cadence::Cron { schedule, zone } => {
                let wall = clock.wall(tick).with_timezone(zone);
                match schedule.after(&wall).next() {
                    Some(next) => clock.instant(next.with_timezone(&chrono::Utc)),
                    // No time left in the schedule (a year gone by): no tick
                    // for a century.
                    None => tick + Duration::from_secs(100 * 365 * 24 * 3600),
                }
            }
        }
    }

    /// The first tick after `now`, following `tick`.
    #[cfg_attr(not(feature = "cron"), allow(unused_variables))]
    fn first_after(&self, clock: &Clock, tick: Instant, now: Instant) -> Instant {
        match self {
            Cadence::Every(period) => {
                // On the grid of `tick`, one period apart.
                let behind = (now - tick).as_nanos() / period.as_nanos() + 1;
                tick + period.saturating_mul(u32::try_from(behind).unwrap_or(u32::MAX))
            }
            #[cfg(feature = "cron")]
            Cadence::Cron { .. } => self.after(clock, now),
        }
    }
}

impl fmt::Display for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cadence::Every(period) => write!(f, "every {period:?}"),
            #[cfg(feature = "cron")]
            Cadence::Cron { schedule, zone } => write!(f, "cron {schedule} ({zone})"),
        }
    }
}

impl fmt::Debug for Cadence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The schedule's clock: tokio's (so that paused time drives it in tests),
/// tied to the wall clock at the start for cron times.
#[derive(Debug, Clone)]
struct Clock {
    origin: Instant,
    #[cfg(feature = "cron")]
    wall_origin: chrono::DateTime<chrono::Utc>,
}

impl Clock {
    fn now() -> Self {
        Clock {
            origin: Instant::now(),
            #[cfg(feature = "cron")]
            wall_origin: chrono::Utc::now(),
        }
    }

    /// The wall-clock time of `instant`.
    #[cfg(feature = "cron")]
    fn wall(&self, instant: Instant) -> chrono::DateTime<chrono::Utc> {
        let since = instant.saturating_duration_since(self.origin);
        let since = chrono::TimeDelta::from_std(since).unwrap_or(chrono::TimeDelta::MAX);
        self.wall_origin
            .checked_add_signed(since)
            .unwrap_or(chrono::DateTime::<chrono::Utc>::MAX_UTC)
    }

    /// The instant of wall-clock time `wall` (the origin if it is before).
    #[cfg(feature = "cron")]
    fn instant(&self, wall: chrono::DateTime<chrono::Utc>) -> Instant {
        let ahead = (wall - self.wall_origin).to_std().unwrap_or(Duration::ZERO);
        self.origin + ahead
    }
}

/// A cron expression that could not be read; from [`Periodic::cron`].
#[cfg(feature = "cron")]
#[cfg_attr(docsrs, doc(cfg(feature = "cron")))]
#[derive(Debug)]
pub struct CronError {
    expression: String,
    error: cron::error::Error,
}

#[cfg(feature = "cron")]
impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "not a cron expression: {:?} ({}); write six or seven fields, seconds minutes \
             hours day-of-month month day-of-week [year], e.g. \"0 30 2 * * *\" for 02:30 every day",
            self.expression, self.error
        )
    }
}

#[cfg(feature = "cron")]
impl std::error::Error for CronError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}
