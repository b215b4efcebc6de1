//! Durable periodic schedules: at each tick the leading process writes one
//! job, so that a tick runs once across every process sharing the store.

use std::any::{Any, TypeId};
use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use riverqueue::jiff::Timestamp;
use riverqueue::{InsertOpts, JobState as EngineState, PeriodicJob, PeriodicJobOpts, UniqueOpts};

use super::DurableTask;
use super::worker::Stored;
use crate::periodic::{Cadence, Overlap, Periodic, PeriodicInfo};

/// A schedule's `make`, type-erased: the task it builds, and that task's type
/// (checked against the registered durable types when the engine is built).
#[derive(Clone)]
pub(crate) struct Made {
    pub(super) type_id: TypeId,
    make: Arc<dyn Fn() -> Box<dyn Any + Send> + Send + Sync>,
}

impl Made {
    pub(crate) fn of<F, T>(make: Arc<F>) -> Self
    where
        F: Fn() -> T + Send + Sync + 'static,
        T: Send + 'static,
    {
        Made {
            type_id: TypeId::of::<T>(),
            make: Arc::new(move || Box::new(make()) as Box<dyn Any + Send>),
        }
    }
}

/// A durable schedule, as registered.
pub(crate) struct Schedule {
    pub(super) name: Cow<'static, str>,
    cadence: Arc<Cadence>,
    overlap: Overlap,
    pub(super) made: Made,
}

impl std::fmt::Debug for Schedule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Schedule")
            .field("name", &self.name)
            .field("cadence", &self.cadence)
            .field("overlap", &self.overlap)
            .finish_non_exhaustive()
    }
}

/// The shortest period a durable schedule runs at: the store tells ticks
/// apart by the second.
const SHORTEST: Duration = Duration::from_secs(1);

impl Schedule {
    pub(crate) fn new(periodic: Periodic) -> Self {
        let cadence = match periodic.cadence {
            Cadence::Every(period) if period < SHORTEST => {
                tracing::warn!(
                    name = %periodic.name,
                    ?period,
                    "a durable periodic task runs at most once a second; using 1 s"
                );
                Cadence::Every(SHORTEST)
            }
            cadence => cadence,
        };
        Schedule {
            name: periodic.name,
            cadence: Arc::new(cadence),
            overlap: periodic.overlap,
            made: periodic.made,
        }
    }

    /// As `Background::periodic_tasks` lists it.
    pub(crate) fn info(&self) -> PeriodicInfo {
        let now = SystemTime::now();
        let next_run = self
            .cadence
            .next_wall(now)
            .map(|next| std::time::Instant::now() + next.duration_since(now).unwrap_or_default());
        PeriodicInfo::durable(self.name.clone(), self.cadence.to_string(), next_run)
    }

    /// The engine's periodic job for a schedule whose task is `T`.
    pub(super) fn job<T: DurableTask>(&self, base: InsertOpts) -> PeriodicJob {
        // One key per schedule: while a run is not finished (overlap
        // skipped), or per tick (a tick is written once, whoever leads).
        let by = UniqueOpts::new().with_by_args(true);
        let period = match &*self.cadence {
            Cadence::Every(period) => *period,
            // Cron times are whole seconds apart at least.
            #[cfg(feature = "cron")]
            Cadence::Cron { .. } => SHORTEST,
        };
        let by = match self.overlap {
            Overlap::Allow => by.with_by_period(period),
            _ => by.with_by_state([
                EngineState::Available,
                EngineState::Pending,
                EngineState::Running,
                EngineState::Scheduled,
                EngineState::Retryable,
            ]),
        };
        let opts = base.with_unique(by);
        let key = format!("periodic:{}", self.name);
        let make = Arc::clone(&self.made.make);
        let name = self.name.clone();
        PeriodicJob::conditional_with_options(
            Wall(Arc::clone(&self.cadence)),
            move || {
                let task = make().downcast::<T>().ok()?;
                match Stored::new(&*task, Some(key.clone())) {
                    Ok(stored) => Some((stored, opts.clone())),
                    Err(error) => {
                        tracing::error!(%name, %error, "periodic tick not written");
                        None
                    }
                }
            },
            PeriodicJobOpts::new().with_id(self.name.to_string()),
        )
    }
}

/// A cadence on the wall clock, as the engine's periodic jobs read it.
struct Wall(Arc<Cadence>);

impl riverqueue::PeriodicSchedule for Wall {
    fn next(&self, current: Timestamp) -> Option<Timestamp> {
        let next = self.0.next_wall(SystemTime::from(current))?;
        Timestamp::try_from(next).ok()
    }
}
