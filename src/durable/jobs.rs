//! Stored jobs by id: their state, attempts and errors; cancel and retry;
//! and waiting until the queue is drained.

use std::time::{Duration, SystemTime};

use riverqueue::query::JobListParams;
use riverqueue::{JobRow, JobState as EngineState, SortDirection};

use super::worker::GIVEN_UP_KEY;
use super::{Durable, DurableError, DurableTasks, JobId};

/// Where a stored job stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum JobState {
    /// Ready to run: a worker takes it when one is free.
    Waiting,
    /// Waiting for its start time ([`DurableTasks::delay`], [`DurableTasks::at`]).
    Scheduled,
    /// A worker is running it.
    Running,
    /// Failed; waiting for its next attempt.
    Retrying,
    /// Ran to completion.
    Completed,
    /// Cancelled ([`DurableTasks::cancel`]): not run again.
    Cancelled,
    /// Given up: its attempts are spent, or its failure was not worth another
    /// ([`DurableTasks::retry`] runs it again).
    Discarded,
}

impl JobState {
    fn of(state: EngineState) -> Self {
        match state {
            EngineState::Scheduled => JobState::Scheduled,
            EngineState::Running => JobState::Running,
            EngineState::Retryable => JobState::Retrying,
            EngineState::Completed => JobState::Completed,
            EngineState::Cancelled => JobState::Cancelled,
            EngineState::Discarded => JobState::Discarded,
            // Available, pending, and any state a later engine adds.
            _ => JobState::Waiting,
        }
    }

    /// The engine's states this one stands for (waiting is two of them).
    fn engine_states(self) -> &'static [EngineState] {
        match self {
            JobState::Waiting => &[EngineState::Available, EngineState::Pending],
            JobState::Scheduled => &[EngineState::Scheduled],
            JobState::Running => &[EngineState::Running],
            JobState::Retrying => &[EngineState::Retryable],
            JobState::Completed => &[EngineState::Completed],
            JobState::Cancelled => &[EngineState::Cancelled],
            JobState::Discarded => &[EngineState::Discarded],
        }
    }

    /// Whether the job will not run again (unless retried by hand).
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Completed | JobState::Cancelled | JobState::Discarded
        )
    }
}

/// The error of one failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptError {
    /// Which attempt (1 for the first run).
    pub attempt: u32,
    /// When the attempt began.
    pub at: SystemTime,
    /// What it failed with (its source chain, `outer: inner`).
    pub error: String,
}

/// A stored job, as the store has it now.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct JobInfo {
    /// Its id.
    pub id: JobId,
    /// Its task type's [`DurableTask::NAME`](super::DurableTask::NAME).
    pub name: String,
    /// Where it stands.
    pub state: JobState,
    /// How many times it has been taken by a worker (a rescue after a crash
    /// counts; a cut-off by shutdown does not).
    pub attempts: u32,
    /// The errors of its failed attempts, oldest first.
    pub errors: Vec<AttemptError>,
    /// When it was written.
    pub created_at: SystemTime,
    /// When it may run (next).
    pub scheduled_at: SystemTime,
    /// When it finished, if it has.
    pub finalized_at: Option<SystemTime>,
}

impl JobInfo {
    fn of(row: JobRow) -> Self {
        let given_up: Option<String> = row.metadata.get(GIVEN_UP_KEY).ok().flatten();
        let mut errors: Vec<AttemptError> = row
            .errors
            .iter()
            .map(|e| AttemptError {
                attempt: u32::try_from(e.attempt).unwrap_or(0),
                at: e.at.into(),
                error: e.error.clone(),
            })
            .collect();
        // A job given up by its retry policy: the engine's fixed text for the
        // last attempt gives way to the task's own error.
        if let (Some(error), Some(last)) = (given_up, errors.last_mut()) {
            last.error = error;
        }
        JobInfo {
            id: JobId(row.id),
            name: row.kind,
            state: JobState::of(row.state),
            attempts: u32::try_from(row.attempt).unwrap_or(0),
            errors,
            created_at: row.created_at.into(),
            scheduled_at: row.scheduled_at.into(),
            finalized_at: row.finalized_at.map(Into::into),
        }
    }
}

impl DurableTasks {
    /// The job with this id, as the store has it now.
    ///
    /// # Errors
    ///
    /// [`DurableError::NotFound`] for an unknown id (or one removed: finished
    /// jobs are kept a day, discarded ones a week); [`DurableError::Store`].
    pub async fn job(&self, id: JobId) -> Result<JobInfo, DurableError> {
        let shared = self.tasks.shared();
        let (durable, _) = Durable::of(shared)?;
        let row = durable.client(shared)?.jobs().get(id.0).await?;
        Ok(JobInfo::of(row))
    }

    /// Cancels the job: one not yet running never runs; a running one's task
    /// is cancelled in whichever process runs it (its
    /// [`TaskContext`](crate::TaskContext) cancellation fires; an async task
    /// is dropped at its next `.await`) and the job ends
    /// [`JobState::Cancelled`], unless it completes first. A finished job is
    /// left as it is. Returns the job as the store has it after the request.
    ///
    /// # Errors
    ///
    /// As [`job`](Self::job).
    pub async fn cancel(&self, id: JobId) -> Result<JobInfo, DurableError> {
        let shared = self.tasks.shared();
        let (durable, _) = Durable::of(shared)?;
        let row = durable.client(shared)?.jobs().cancel(id.0).await?;
        Ok(JobInfo::of(row))
    }

    /// Runs a job that is not running again now: a discarded or cancelled
    /// one (with one more attempt if its attempts are spent), or a waiting
    /// one sooner.
    ///
    /// # Errors
    ///
    /// As [`job`](Self::job).
    pub async fn retry(&self, id: JobId) -> Result<JobInfo, DurableError> {
        let shared = self.tasks.shared();
        let (durable, _) = Durable::of(shared)?;
        let row = durable.client(shared)?.jobs().retry(id.0).await?;
        Ok(JobInfo::of(row))
    }

    /// The jobs of this store's queue in `state`, newest first (by id), at
    /// most `limit` of them (clamped to 1 through 10,000, the engine's range).
    ///
    /// The engine has no count: the admin router counts a state by listing
    /// it up to a cap, and says when the cap was reached. One indexed query,
    /// whose rows (arguments included) are read in full.
    ///
    /// # Errors
    ///
    /// [`DurableError::NotConfigured`] without a store;
    /// [`DurableError::Store`] if the query fails.
    #[cfg_attr(not(feature = "admin"), allow(dead_code))]
    pub(crate) async fn list(
        &self,
        state: JobState,
        limit: u32,
    ) -> Result<Vec<JobInfo>, DurableError> {
        let shared = self.tasks.shared();
        let (durable, store) = Durable::of(shared)?;
        let params = JobListParams::default()
            .queues([store.options.queue.clone()])
            .states(state.engine_states().iter().copied())
            .direction(SortDirection::Descending)
            .limit(limit.clamp(1, 10_000));
        let listed = durable.client(shared)?.jobs().list(params).await?;
        Ok(listed.jobs.into_iter().map(JobInfo::of).collect())
    }

    /// Resolves once the queue has no job ready to run, running or waiting
    /// to be retried, and no durable task runs in this process: what a test
    /// awaits after scheduling, before it asserts. Jobs scheduled for later
    /// ([`JobState::Scheduled`]) are not waited for.
    ///
    /// It looks at the store every 20 ms (one indexed query): wrap it in a
    /// timeout.
    ///
    /// # Errors
    ///
    /// [`DurableError::NotConfigured`], or [`DurableError::Store`] if a look
    /// fails.
    pub async fn wait_drained(&self) -> Result<(), DurableError> {
        let shared = self.tasks.shared();
        let (durable, store) = Durable::of(shared)?;
        let client = durable.client(shared)?;
        let busy = JobListParams::default()
            .queues([store.options.queue.clone()])
            .states([
                EngineState::Available,
                EngineState::Running,
                EngineState::Retryable,
            ])
            .limit(1);
        loop {
            let running_here = shared
                .registry
                .snapshot()
                .iter()
                .any(|info| durable.registry.contains_key(info.name.as_ref()));
            if !running_here && client.jobs().list(busy.clone()).await?.jobs.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}
