//! The engine: a River client per `Background`, built from the registered
//! types, whose workers run each stored job as an ordinary (shielded) task
//! of this crate.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::Duration;

use riverqueue::worker::{Worker, WorkerTimeout};
use riverqueue::{
    Client, JobArgs, MaintenanceConfig, QueueConfig, RunHandle, WorkCancelled, WorkContext,
    WorkError, WorkOutcome,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::runtime::Handle;
use tokio::time::Instant;

use super::store::{Backend, DEFAULT_TIMEOUT, DurableStore};
use super::{Durable, DurableError, DurableTask};
use crate::error::TaskError;
use crate::handler::{ErrorHandler, IntoErrorHandler, SharedErrorHandler};
use crate::info::TaskInfo;
use crate::inner::Shared;
use crate::options::TaskOptions;
use crate::{BackgroundTask, BoxError, RetryPolicy};

/// The error River records when it takes a job back from a process that
/// died holding it.
const RESCUED: &str = "Stuck job rescued by JobRescuer";

/// How long past its task's timeout the engine lets a job run before it
/// takes the job for stuck: time to write the outcome.
const TIMEOUT_MARGIN: Duration = Duration::from_secs(5);

/// A job as stored: the task's fields, and the key that makes it unique, if
/// any (the engine's uniqueness looks at this field alone).
#[derive(Serialize, Deserialize)]
#[serde(bound = "")]
pub(crate) struct Stored<T> {
    pub(crate) task: Box<RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) unique: Option<String>,
    #[serde(skip)]
    _task: PhantomData<fn() -> T>,
}

impl<T: DurableTask> Stored<T> {
    pub(crate) fn new(task: &T, unique: Option<String>) -> Result<Self, DurableError> {
        let task = serde_json::value::to_raw_value(task).map_err(DurableError::Encode)?;
        Ok(Stored {
            task,
            unique,
            _task: PhantomData,
        })
    }
}

impl<T> Stored<T> {
    pub(crate) fn from_raw(task: Box<RawValue>) -> Self {
        Stored {
            task,
            unique: None,
            _task: PhantomData,
        }
    }
}

impl<T: DurableTask> JobArgs for Stored<T> {
    const KIND: &'static str = T::NAME;

    fn unique_fields() -> &'static [&'static [&'static str]] {
        &[&["unique"]]
    }
}

/// How a registered type's jobs are run: one per type, as the engine asks.
struct Runner<T> {
    shared: Weak<Shared>,
    retry: RetryPolicy,
    timeout: Duration,
    _task: PhantomData<fn() -> T>,
}

/// The retry policy of a durable type registered without one: a few runs,
/// spread out, as a job queue's users expect.
pub(crate) fn default_retry() -> RetryPolicy {
    RetryPolicy::attempts(5)
        .backoff(Duration::from_secs(1))
        .max_backoff(Duration::from_secs(300))
}

/// The failures a job has had before this attempt (rescues are not failures).
fn failures_before(job: &riverqueue::JobRow) -> u32 {
    let failures = job.errors.iter().filter(|e| e.error != RESCUED).count();
    u32::try_from(failures).unwrap_or(u32::MAX)
}

impl<T: DurableTask> Worker<Stored<T>> for Runner<T> {
    type Error = BoxError;

    fn next_retry(
        &self,
        job: &riverqueue::Job<Stored<T>>,
        _error: &WorkError,
        _now: riverqueue::jiff::Timestamp,
    ) -> Option<Duration> {
        // Called once this attempt's failure is recorded: it is failure
        // number `failures_before + 1`.
        Some(self.retry.delay(failures_before(&job.row) + 1))
    }

    fn timeout(&self, _job: &riverqueue::Job<Stored<T>>) -> WorkerTimeout {
        WorkerTimeout::After(self.timeout + TIMEOUT_MARGIN)
    }

    async fn work(
        &self,
        context: WorkContext,
        job: riverqueue::Job<Stored<T>>,
    ) -> Result<WorkOutcome, BoxError> {
        let Some(shared) = self.shared.upgrade() else {
            return Err(WorkCancelled.into());
        };
        let Some(durable) = shared.extensions.get::<Durable>() else {
            return Err(WorkCancelled.into());
        };
        let Some(registration) = durable.registry.get(T::NAME) else {
            return Err(WorkCancelled.into());
        };
        let row = &job.row;
        if row.errors.last().is_some_and(|e| e.error == RESCUED) {
            tracing::info!(
                job = row.id,
                task = T::NAME,
                attempt = row.attempt,
                "durable job rescued: the process that held it stopped; running it again"
            );
        }
        let run = failures_before(row) + 1;
        let options = TaskOptions {
            shield: Some(true),
            retry: None,
            timeout: Some(self.timeout),
            // The error handler hears of a job once it is given up.
            on_error: registration.options.on_error.clone().map(|handler| {
                GivenUp {
                    handler,
                    retry: self.retry,
                    run,
                    shared: Arc::downgrade(&shared),
                }
                .into_shared()
            }),
            ..registration.options.clone()
        };
        let stored = StoredTask::<T> {
            task: job.args.task,
            _task: PhantomData,
        };
        // The task's `background_task` span is made in the current one: in
        // the scheduler's trace when the job carries it.
        #[cfg(feature = "opentelemetry")]
        let span = super::trace::job_span(row, T::NAME);
        let handle = {
            #[cfg(feature = "opentelemetry")]
            let _entered = span.enter();
            crate::schedule::committed(&shared, stored, &options)
        };
        let cancelled = context.cancellation_token();
        let outcome = tokio::select! {
            outcome = handle.outcome() => outcome,
            () = cancelled.cancelled() => {
                // Cancelled in the store, past the engine's timeout, or the
                // engine stopping hard (only once our own shutdown has cut
                // the task off).
                if !shared.is_closing() {
                    let _ = handle.cancel();
                }
                handle.outcome().await
            }
        };
        match outcome {
            Ok(()) => Ok(WorkOutcome::Complete),
            Err(TaskError::Cancelled) if shared.is_closing() => {
                // Cut off by shutdown: wait for the engine's hard stop, which
                // puts the job back without spending an attempt.
                cancelled.cancelled().await;
                Err(WorkCancelled.into())
            }
            // Cancelled in the store: the engine records it so.
            Err(TaskError::Cancelled) => Err(TaskError::Cancelled.into()),
            Err(error) if self.retry.retries(run, &error) => Err(error.into()),
            // Given up: its runs are spent, or this failure is not worth
            // another (a panic, a timeout, an error `retry_if` turns down).
            // The engine's own word for it is recorded as the attempt's
            // error; ours goes beside it.
            Err(error) => {
                context
                    .metadata_set(GIVEN_UP_KEY, error.to_string())
                    .map_err(|e| -> BoxError { e.into() })?;
                Ok(WorkOutcome::Discard)
            }
        }
    }
}

/// Where a given-up job's last error is kept (the engine records a fixed
/// text as that attempt's error).
pub(crate) const GIVEN_UP_KEY: &str = "axum_background_error";

/// A durable type's error handler, called for the failure that gives a job
/// up, not for those that are retried or put back by shutdown.
struct GivenUp {
    handler: SharedErrorHandler,
    retry: RetryPolicy,
    run: u32,
    shared: Weak<Shared>,
}

impl ErrorHandler for GivenUp {
    async fn handle(&self, info: &TaskInfo, error: &TaskError) {
        let put_back = matches!(error, TaskError::Cancelled)
            && self
                .shared
                .upgrade()
                .is_some_and(|shared| shared.is_closing());
        if !put_back && !self.retry.retries(self.run, error) {
            self.handler.call(info, error).await;
        }
    }
}

/// A stored job of type `T`, decoded from its fields when it runs.
struct StoredTask<T> {
    task: Box<RawValue>,
    _task: PhantomData<fn() -> T>,
}

impl<T> Clone for StoredTask<T> {
    fn clone(&self) -> Self {
        StoredTask {
            task: self.task.clone(),
            _task: PhantomData,
        }
    }
}

impl<T: DurableTask> BackgroundTask for StoredTask<T> {
    type Mode = T::Mode;

    async fn run(self) -> Result<(), BoxError> {
        let task: T = serde_json::from_str(self.task.get())?;
        task.run().await
    }

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(T::NAME)
    }
}

/// Adds the worker of `T` to the engine's workers.
pub(crate) fn add_worker<T: DurableTask>(
    workers: &mut riverqueue::worker::Workers,
    shared: Weak<Shared>,
    options: &TaskOptions,
) -> Result<Duration, riverqueue::Error> {
    let timeout = options.timeout.unwrap_or(DEFAULT_TIMEOUT);
    workers.add(Runner::<T> {
        shared,
        retry: options.retry.unwrap_or_else(default_retry),
        timeout,
        _task: PhantomData,
    })?;
    Ok(timeout)
}

/// The engine of one `Background`: its client, built on first use (the
/// registered types are known by then), and its run while workers go.
#[derive(Debug, Default)]
pub(crate) struct Engine {
    client: OnceLock<Result<Client, String>>,
    run: Mutex<Option<RunHandle>>,
    stopped: std::sync::atomic::AtomicBool,
}

impl Engine {
    /// The client, built once from the store and the registered types.
    pub(crate) fn client(
        &self,
        durable: &Durable,
        shared: &Arc<Shared>,
    ) -> Result<&Client, DurableError> {
        let built = self.client.get_or_init(|| {
            build(durable, Arc::downgrade(shared)).map_err(|error| error.to_string())
        });
        built
            .as_ref()
            .map_err(|error| DurableError::Store(error.clone().into()))
    }

    /// Starts the workers on `runtime`, once.
    pub(crate) fn start(&self, durable: &Durable, shared: &Arc<Shared>, runtime: &Handle) {
        let Some(store) = &durable.store else { return };
        if !store.options.workers {
            return;
        }
        let client = match self.client(durable, shared) {
            Ok(client) => client.clone(),
            Err(error) => {
                tracing::error!(%error, "durable workers not started");
                return;
            }
        };
        let _entered = runtime.enter();
        let mut run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        if run.is_some() || self.stopped.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        match client.start() {
            Ok(handle) => *run = Some(handle),
            Err(error) => tracing::error!(%error, "durable workers not started"),
        }
    }

    /// Stops taking jobs: running ones go on.
    pub(crate) fn stop(&self) {
        // Relaxed: read under the `run` lock, which orders it.
        self.stopped
            .store(true, std::sync::atomic::Ordering::Relaxed);
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(run) = run.as_ref() {
            run.stopper().stop();
        }
    }

    /// The tasks have settled or the deadline passed: the engine stops hard
    /// (jobs cut off go back without spending an attempt) and writes its last
    /// outcomes, for at most `flush` past the deadline.
    pub(crate) async fn join(&self, deadline: Instant, flush: Duration) {
        let run = self.run.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(mut run) = run else { return };
        let limit = deadline.max(Instant::now()) + flush;
        match tokio::time::timeout_at(limit, run.stop_and_cancel()).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::error!(%error, "durable workers stopped with an error"),
            Err(_) => tracing::warn!("durable workers did not stop in time; leaving them"),
        }
    }
}

fn build(durable: &Durable, shared: Weak<Shared>) -> Result<Client, String> {
    let Some(store) = &durable.store else {
        return Err(DurableError::NotConfigured.to_string());
    };
    let o = &store.options;
    let mut workers = riverqueue::worker::Workers::new();
    let mut shortest = None::<Duration>;
    for registration in durable.registry.values() {
        let timeout =
            (registration.add_worker)(&mut workers, shared.clone(), &registration.options)
                .map_err(|error| error.to_string())?;
        shortest = Some(shortest.map_or(timeout, |t| t.min(timeout)));
    }
    // The rescuer looks at jobs running longer than this, then keeps those
    // whose own type's timeout has not passed: the shortest lets each job
    // be rescued as soon as its own timeout allows.
    let rescue_after = shortest.unwrap_or(DEFAULT_TIMEOUT) + TIMEOUT_MARGIN;
    let maintenance = MaintenanceConfig::default()
        .with_rescue_after(rescue_after)
        .with_rescuer_interval(o.rescue_check)
        .with_elect_interval(o.leader_lease);
    let mut builder = match &store.backend {
        #[cfg(feature = "durable-sqlite")]
        Backend::Sqlite(pool) => Client::builder(pool.clone()),
        #[cfg(feature = "durable-postgres")]
        Backend::Postgres(pool) => Client::builder(pool.clone()),
    };
    builder = builder
        .fetch_cooldown(o.fetch_cooldown)
        .job_timeout(rescue_after)
        .maintenance(maintenance);
    for job in durable.periodic_jobs(store)? {
        builder = builder.periodic_job(job);
    }
    if o.workers && !durable.registry.is_empty() {
        builder = builder
            .queue(
                o.queue.clone(),
                QueueConfig::new(o.concurrency)
                    .with_fetch_poll_interval(o.poll_interval.max(o.fetch_cooldown)),
            )
            .workers(workers);
    }
    builder.build().map_err(|error| error.to_string())
}

/// The engine's largest attempt count for a policy: its runs, and the
/// rescues allowed on top.
pub(crate) fn max_attempts(policy: Option<&RetryPolicy>, store: &DurableStore) -> i32 {
    let runs = policy.map_or_else(|| default_retry().max_attempts(), RetryPolicy::max_attempts);
    i32::try_from(runs.saturating_add(store.options.max_rescues)).unwrap_or(i32::MAX)
}
