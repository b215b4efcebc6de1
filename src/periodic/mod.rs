//! Periodic tasks: a task run at a fixed interval, or on a cron schedule
//! (feature `cron`), registered on the builder
//! ([`BackgroundBuilder::periodic`](crate::BackgroundBuilder::periodic)).
//! Each run is an ordinary task of the `Background`; the schedule stops when
//! shutdown begins, before new schedules are rejected, so no tick is.
mod cadence;
mod schedules;

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::TaskConfig;
use crate::handle::TaskHandle;
use crate::inner::Shared;
use crate::name::derived_name;
use crate::options::TaskOptions;
use crate::task::IntoBackgroundTask;

pub(crate) use cadence::Cadence;
#[cfg(feature = "cron")]
pub use cadence::CronError;
pub(crate) use schedules::Schedules;

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
    pub(crate) name: Cow<'static, str>,
    pub(crate) cadence: Cadence,
    pub(crate) overlap: Overlap,
    missed: MissedTicks,
    jitter: Duration,
    options: TaskOptions,
    run: Arc<RunFn>,
    /// Whether the schedule writes its runs to the durable store.
    #[cfg(feature = "_durable")]
    pub(crate) durable: bool,
    /// `make`, for a durable schedule: the task it builds, as the store's
    /// registry looks it up.
    #[cfg(feature = "_durable")]
    pub(crate) made: crate::durable::Made,
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
        let make = Arc::new(make);
        Periodic {
            name: Cow::Borrowed(derived_name(T::type_path())),
            cadence,
            overlap: Overlap::default(),
            missed: MissedTicks::default(),
            jitter: Duration::ZERO,
            options: TaskOptions::default(),
            #[cfg(feature = "_durable")]
            durable: false,
            #[cfg(feature = "_durable")]
            made: crate::durable::Made::of(Arc::clone(&make)),
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

    /// Runs the schedule from the durable store (features `durable-sqlite`,
    /// `durable-postgres`): at each tick, one process among those sharing
    /// the store (the elected leader) writes one job of the task `make`
    /// builds, a registered [`DurableTask`](crate::durable::DurableTask)
    /// type, and any worker runs it, with its type's settings. Every process
    /// that registers the schedule shares it: a tick runs once, however many
    /// there are, and ticks go on while any of them lives.
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use axum_background::{Background, BackgroundTask, BoxError, mode};
    /// # use axum_background::durable::{DurableStore, DurableTask};
    /// # use axum_background::periodic::Periodic;
    /// # use serde::{Deserialize, Serialize};
    /// #[derive(Serialize, Deserialize)]
    /// struct PurgeSessions;
    ///
    /// impl BackgroundTask for PurgeSessions {
    ///     type Mode = mode::Async;
    ///     async fn run(self) -> Result<(), BoxError> { Ok(()) }
    /// }
    ///
    /// impl DurableTask for PurgeSessions {
    ///     const NAME: &'static str = "purge_sessions";
    /// }
    ///
    /// # async fn run() -> Result<(), BoxError> {
    /// let background = Background::builder()
    ///     .durable(DurableStore::sqlite("app.db").await?)
    ///     .register::<PurgeSessions>()
    ///     .periodic(Periodic::every(Duration::from_secs(300), || PurgeSessions).durable())
    ///     .build();
    /// # Ok(()) }
    /// ```
    ///
    /// Ticks are wall-clock times that every process computes alike: a
    /// period's ticks fall on its multiples since the Unix epoch (at least 1
    /// s), a cron schedule's at its times. A tick while the previous run is
    /// not finished is skipped unless [`Overlap::Allow`]; ticks missed while
    /// no process led (the leader died; its lease, 12 s, has to pass) are
    /// skipped. The jitter and [`config`](Self::config) do not apply (a run
    /// takes its type's settings), nor does [`MissedTicks::RunOnceLate`].
    /// If `make` builds a type that is not registered, every durable
    /// operation of the `Background` fails, saying so.
    #[cfg(feature = "_durable")]
    #[cfg_attr(
        docsrs,
        doc(cfg(any(feature = "durable-sqlite", feature = "durable-postgres")))
    )]
    pub fn durable(mut self) -> Self {
        self.durable = true;
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
    /// flight and how it ended. `None` for a durable schedule (its runs are
    /// in the store, run by any process).
    pub last_run: Option<TaskHandle>,
    /// Whether the schedule writes its runs to the durable store
    /// (`Periodic::durable`, with a durable feature).
    pub durable: bool,
}

impl PeriodicInfo {
    #[cfg(feature = "_durable")]
    pub(crate) fn durable(
        name: Cow<'static, str>,
        schedule: String,
        next_run: Option<std::time::Instant>,
    ) -> Self {
        PeriodicInfo {
            name,
            schedule,
            next_run,
            last_run: None,
            durable: true,
        }
    }
}
