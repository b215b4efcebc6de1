//! When a schedule ticks: a fixed interval, or the times of a cron
//! expression (feature `cron`), on a clock that paused time drives.

use std::fmt;
use std::time::Duration;

use tokio::time::Instant;

/// When a schedule ticks.
pub(crate) enum Cadence {
    Every(Duration),
    #[cfg(feature = "cron")]
    Cron {
        schedule: Box<cron::Schedule>,
        zone: chrono_tz::Tz,
    },
}

impl Cadence {
    /// The first tick after the schedule starts at `clock`'s origin.
    pub(super) fn first(&self, clock: &Clock) -> Instant {
        match self {
            Cadence::Every(period) => clock.origin + *period,
            #[cfg(feature = "cron")]
            Cadence::Cron { .. } => self.after(clock, clock.origin),
        }
    }

    /// The tick after the one at `tick`.
    #[cfg_attr(not(feature = "cron"), allow(unused_variables))]
    pub(super) fn after(&self, clock: &Clock, tick: Instant) -> Instant {
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
    pub(super) fn first_after(&self, clock: &Clock, tick: Instant, now: Instant) -> Instant {
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

impl Cadence {
    /// The first tick after wall-clock time `after`, for a schedule every
    /// process computes alike: a period's multiples since the Unix epoch, or
    /// the cron times. `None` when the schedule has no time left.
    #[cfg(feature = "_durable")]
    pub(crate) fn next_wall(&self, after: std::time::SystemTime) -> Option<std::time::SystemTime> {
        use std::time::UNIX_EPOCH;
        match self {
            Cadence::Every(period) => {
                let period = period.as_nanos().max(1);
                let since = after.duration_since(UNIX_EPOCH).ok()?.as_nanos();
                let next = (since / period + 1).checked_mul(period)?;
                let secs = u64::try_from(next / 1_000_000_000).ok()?;
                let nanos = u32::try_from(next % 1_000_000_000).ok()?;
                UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
            }
            #[cfg(feature = "cron")]
            Cadence::Cron { schedule, zone } => {
                let after: chrono::DateTime<chrono::Utc> = after.into();
                let next = schedule.after(&after.with_timezone(zone)).next()?;
                Some(std::time::SystemTime::from(
                    next.with_timezone(&chrono::Utc),
                ))
            }
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
pub(super) struct Clock {
    origin: Instant,
    #[cfg(feature = "cron")]
    wall_origin: chrono::DateTime<chrono::Utc>,
}

impl Clock {
    pub(super) fn now() -> Self {
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

/// A cron expression that could not be read; from [`Periodic::cron`](super::Periodic::cron).
#[cfg(feature = "cron")]
#[cfg_attr(docsrs, doc(cfg(feature = "cron")))]
#[derive(Debug)]
pub struct CronError {
    pub(super) expression: String,
    pub(super) error: cron::error::Error,
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
