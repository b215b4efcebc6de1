//! The workers: apalis workers that take jobs out of the store and run each
//! as an ordinary (shielded) task of this crate.

use std::borrow::Cow;
use std::marker::PhantomData;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use apalis::prelude::{BackendExt, WorkerBuilder, WorkerBuilderExt};
use apalis_core::error::{AbortError, BoxDynError};
use tokio::runtime::Handle;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::store::{Backend, Job};
use super::{DurableStore, DurableTask};
use crate::error::TaskError;
use crate::handle::TaskHandle;
use crate::inner::Shared;
use crate::options::TaskOptions;
use crate::{BackgroundTask, BoxError};

/// This process's workers: started once a runtime is known, stopped by
/// shutdown (or when the last `Background` clone is dropped).
#[derive(Debug, Default)]
pub(crate) struct Workers {
    stop: CancellationToken,
    running: Mutex<Option<JoinHandle<()>>>,
}

impl Drop for Workers {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Workers {
    /// Starts the workers on `runtime`, once.
    pub(crate) fn start(&self, runtime: &Handle, store: &DurableStore, shared: Weak<Shared>) {
        if !store.options.workers || self.stop.is_cancelled() {
            return;
        }
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        if running.is_some() {
            return;
        }
        let store = store.clone();
        let stop = self.stop.clone();
        *running = Some(runtime.spawn(supervise(store, shared, stop)));
    }

    /// Stops taking jobs: running ones go on.
    pub(crate) fn stop(&self) {
        self.stop.cancel();
    }

    /// Waits until the workers have written their last outcomes, up to
    /// `deadline` and then `flush` more; past that they are dropped (their
    /// unfinished jobs go back to the queue when their heartbeat lapses).
    pub(crate) async fn join(&self, deadline: Instant, flush: Duration) {
        let handle = self
            .running
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        let Some(mut handle) = handle else { return };
        let limit = deadline.max(Instant::now()) + flush;
        if tokio::time::timeout_at(limit, &mut handle).await.is_err() {
            tracing::warn!("durable workers did not stop in time; dropping them");
            handle.abort();
        }
    }
}

/// Runs a worker until `stop`; restarts it (with a new name) after an error.
async fn supervise(store: DurableStore, shared: Weak<Shared>, stop: CancellationToken) {
    let mut backoff = Duration::from_millis(500);
    while !stop.is_cancelled() {
        let name = worker_name(&store);
        tracing::debug!(worker = %name, "durable worker starting");
        match run_worker(&store, &name, shared.clone(), stop.clone()).await {
            Ok(()) => break,
            Err(error) => {
                tracing::error!(worker = %name, %error, ?backoff, "durable worker failed; restarting");
                tokio::select! {
                    () = stop.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

async fn run_worker(
    store: &DurableStore,
    name: &str,
    shared: Weak<Shared>,
    stop: CancellationToken,
) -> Result<(), BoxError> {
    let options = &store.options;
    let handler = move |job: Job| execute(shared.clone(), job);
    let signal = async move {
        stop.cancelled().await;
        Ok::<(), apalis_core::error::WorkerError>(())
    };
    match store.backend() {
        #[cfg(feature = "durable-sqlite")]
        Backend::Sqlite(pool) => {
            let storage = store
                .sqlite_storage(pool)
                .poll_with_interval(options.poll_interval);
            WorkerBuilder::new(name)
                .backend(storage)
                .concurrency(options.concurrency)
                .build(handler)
                .run_until(signal)
                .await?;
        }
        #[cfg(feature = "durable-postgres")]
        Backend::Postgres(pool) => {
            let storage = store
                .postgres_storage(pool)
                .poll_with_interval(options.poll_interval);
            WorkerBuilder::new(name)
                .backend(storage)
                .concurrency(options.concurrency)
                .build(handler)
                .run_until(signal)
                .await?;
        }
    }
    Ok(())
}

/// `{prefix}-{pid}-{ulid}`: unique per start, so that a restarted process
/// never takes over (and keeps locked) the jobs of the one that died.
fn worker_name(store: &DurableStore) -> String {
    let prefix = store
        .options
        .worker_name
        .as_deref()
        .unwrap_or(&store.options.queue);
    format!("{prefix}-{}-{}", std::process::id(), ulid::Ulid::generate())
}

/// Runs one job and says what the store should record.
async fn execute(shared: Weak<Shared>, job: Job) -> Result<(), BoxDynError> {
    let Some(shared) = shared.upgrade() else {
        return Err(requeue("the Background was dropped"));
    };
    let Some(durable) = shared.extensions.get::<super::Durable>() else {
        return Err(requeue("no durable store"));
    };
    let Some(registration) = durable.registry.get(job.task.as_str()) else {
        tracing::error!(
            task = %job.task,
            "durable job for a task type this process has not registered; \
             add `.register::<T>()` for it (left for another worker)"
        );
        return Err(requeue(format!("no task registered as \"{}\"", job.task)));
    };
    let handle = (registration.run)(&shared, Arc::new(job.args), &registration.options);
    match handle.outcome().await {
        Ok(()) => Ok(()),
        // Cut off by shutdown: leave it for the next worker.
        Err(TaskError::Cancelled) if shared.is_closing() => Err(requeue("cut off by shutdown")),
        // Failed after its retries (already reported), or cancelled on request.
        Err(error) => Err(Box::new(AbortError::new(error))),
    }
}

/// An error apalis records as `Failed`: the job is taken again.
fn requeue(reason: impl Into<String>) -> BoxDynError {
    reason.into().into()
}

/// Schedules a stored job of type `T` as a shielded task of this crate.
pub(crate) fn run_job<T: DurableTask>(
    shared: &Arc<Shared>,
    args: Arc<serde_json::Value>,
    options: &TaskOptions,
) -> TaskHandle {
    let options = TaskOptions {
        shield: Some(true),
        ..options.clone()
    };
    crate::schedule::committed(
        shared,
        Stored::<T> {
            args,
            _task: PhantomData,
        },
        &options,
    )
}

/// A stored job of type `T`: decoded from its fields at each attempt, so that
/// it can be retried without `T: Clone`.
struct Stored<T> {
    args: Arc<serde_json::Value>,
    _task: PhantomData<fn() -> T>,
}

impl<T> Clone for Stored<T> {
    fn clone(&self) -> Self {
        Stored {
            args: Arc::clone(&self.args),
            _task: PhantomData,
        }
    }
}

impl<T: DurableTask> BackgroundTask for Stored<T> {
    type Mode = T::Mode;

    async fn run(self) -> Result<(), BoxError> {
        let task: T = serde_json::from_value(serde_json::Value::clone(&self.args))?;
        task.run().await
    }

    fn name(&self) -> Cow<'static, str> {
        Cow::Borrowed(T::NAME)
    }
}
