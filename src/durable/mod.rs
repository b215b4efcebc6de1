//! Durable tasks: written to a store (SQLite or Postgres) and run by
//! [apalis](https://docs.rs/apalis) workers, so that they survive a crash and
//! can be shared between processes.
//!
//! ```no_run
//! use axum::{Router, routing::post};
//! use axum_background::durable::{DurableError, DurableStore, DurableTask};
//! use axum_background::{Background, BackgroundTask, BoxError, Tasks, mode};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendInvoice {
//!     order: u64,
//! }
//!
//! impl BackgroundTask for SendInvoice {
//!     type Mode = mode::Async;
//!     async fn run(self) -> Result<(), BoxError> {
//!         // Runs at least once: make it idempotent (the order id is the key).
//!         Ok(())
//!     }
//! }
//!
//! impl DurableTask for SendInvoice {
//!     const NAME: &'static str = "send_invoice"; // stored with each job: keep it stable
//! }
//!
//! async fn checkout(tasks: Tasks) -> Result<&'static str, DurableError> {
//!     // Written to the store before this returns.
//!     tasks.durable().schedule(SendInvoice { order: 42 }).await?;
//!     Ok("ordered")
//! }
//!
//! # async fn run() -> Result<(), BoxError> {
//! let store = DurableStore::sqlite("jobs.db").await?;
//! let background = Background::builder()
//!     .durable(store)
//!     .register::<SendInvoice>()
//!     .build();
//! let app: Router = Router::new()
//!     .route("/checkout", post(checkout))
//!     .layer(background.layer());
//! # Ok(()) }
//! ```
//!
//! # Delivery
//!
//! At least once. A job is taken out of the store by one worker at a time
//! (in batches: a worker may hold jobs it has not started yet) and marked
//! done when its task completes. A worker that dies holding jobs, running or
//! not, stops sending heartbeats; once `heartbeat interval × missed
//! heartbeats` have passed, the next heartbeat of a live worker (in this or
//! another process) puts them back.
//! A task may therefore run twice: make durable tasks idempotent.
//!
//! # Running
//!
//! A job runs as an ordinary task of this crate, named after
//! [`DurableTask::NAME`]: with the retry policy, timeout and error handler
//! registered for its type (over the default config), listed by
//! `in_flight()`, counted by `stats()`, and always shielded. Its outcome is
//! written back to the store:
//!
//! | outcome | in the store |
//! |---|---|
//! | completed | `Done` |
//! | failed, panicked or timed out after its retries, or cancelled on request | `Killed`: not run again; the error is kept as its last result |
//! | cut off by [`shutdown`](crate::Background::shutdown) past its grace period | `Failed`: run again by the next worker (up to [`DurableStore::max_deliveries`]) |
//!
//! # Shutdown
//!
//! [`Background::shutdown`](crate::Background::shutdown) stops the workers
//! taking jobs, lets the running ones finish (they are shielded), writes
//! their outcomes, and leaves every other job in the store for the next start.

mod store;
mod worker;

use std::any::TypeId;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::Serialize;
use serde::de::DeserializeOwned;

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::background::BackgroundBuilder;
use crate::config::TaskConfig;
use crate::extractor::Tasks;
use crate::handle::TaskHandle;
use crate::inner::Extension;
use crate::inner::Shared;
use crate::options::TaskOptions;
use crate::{BackgroundTask, BoxError, Phase};

pub use store::DurableStore;
pub(crate) use worker::Workers;

/// A task that can be written to a store and run later, in this process or
/// another: serialisable, and registered under a stable [`NAME`](Self::NAME).
///
/// Its `run` returns `Result<(), BoxError>` (the default of
/// [`BackgroundTask`]). Register the type on the builder of every process
/// that schedules or runs it:
/// `Background::builder().durable(store).register::<SendInvoice>()`.
pub trait DurableTask: BackgroundTask + Serialize + DeserializeOwned {
    /// The name stored with each job, by which a worker finds the type again.
    /// Change it and jobs already stored under the old name no longer run.
    const NAME: &'static str;
}

/// The id of a job in the store (a ULID), known as soon as it is scheduled.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct JobId(String);

impl JobId {
    fn generate() -> Self {
        JobId(ulid::Ulid::generate().to_string())
    }

    /// The id as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Why a durable task could not be scheduled or a store opened.
#[derive(Debug)]
#[non_exhaustive]
pub enum DurableError {
    /// The `Background` has no store.
    NotConfigured,
    /// No task type is registered under this name (or another type is).
    NotRegistered {
        /// The task's [`DurableTask::NAME`].
        name: &'static str,
    },
    /// The task could not be serialised.
    Encode(serde_json::Error),
    /// The store failed: opening it, or writing the job.
    Store(BoxError),
}

impl fmt::Display for DurableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DurableError::NotConfigured => f.write_str(
                "no durable store: build the Background with `.durable(DurableStore::sqlite(..).await?)`",
            ),
            DurableError::NotRegistered { name } => write!(
                f,
                "no durable task type is registered as \"{name}\": add `.register::<YourTask>()` \
                 to `Background::builder()` (once per type; names must be unique)"
            ),
            DurableError::Encode(error) => write!(f, "durable task could not be serialised: {error}"),
            DurableError::Store(error) => write!(f, "durable store error: {error}"),
        }
    }
}

impl std::error::Error for DurableError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            DurableError::Encode(error) => Some(error),
            DurableError::Store(error) => Some(&**error),
            _ => None,
        }
    }
}

/// A 500 whose body says what went wrong, so that handlers can use `?`.
impl axum::response::IntoResponse for DurableError {
    fn into_response(self) -> axum::response::Response {
        tracing::error!(error = %self, "durable task not scheduled");
        (http::StatusCode::INTERNAL_SERVER_ERROR, self.to_string()).into_response()
    }
}

/// A registered type: how a worker runs a job stored under its name.
pub(crate) struct Registration {
    type_id: TypeId,
    options: TaskOptions,
    run: fn(&Arc<Shared>, Arc<serde_json::Value>, &TaskOptions) -> TaskHandle,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The registered durable task types, by name.
pub(crate) type Registry = HashMap<&'static str, Registration>;

pub(crate) fn registration<T: DurableTask>(options: TaskOptions) -> Registration {
    Registration {
        type_id: TypeId::of::<T>(),
        options,
        run: worker::run_job::<T>,
    }
}

/// The durable side of a [`Background`](crate::Background), plugged in as
/// an extension: its store, the registered types, and the workers (if this
/// process runs any).
#[derive(Debug, Default)]
pub(crate) struct Durable {
    /// `Some` once the builder was given a store.
    pub(crate) store: Option<DurableStore>,
    pub(crate) registry: Registry,
    pub(crate) workers: Workers,
}

impl Durable {
    fn lookup<T: DurableTask>(&self) -> Result<&Registration, DurableError> {
        match self.registry.get(T::NAME) {
            Some(registration) if registration.type_id == TypeId::of::<T>() => Ok(registration),
            _ => Err(DurableError::NotRegistered { name: T::NAME }),
        }
    }
}

impl Extension for Durable {
    fn on_runtime(&self, shared: &Arc<Shared>, runtime: &Handle) {
        if let Some(store) = &self.store {
            self.workers.start(runtime, store, Arc::downgrade(shared));
        }
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.workers.stop();
        Box::pin(std::future::ready(()))
    }

    fn drain(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // The workers write their last outcomes and put back the jobs they
        // had taken but not started; a short flush is allowed past the grace.
        Box::pin(self.workers.join(deadline, Duration::from_secs(2)))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl BackgroundBuilder {
    /// Keeps durable tasks in `store` and, unless the store says
    /// [`without_workers`](DurableStore::without_workers), runs workers for
    /// them in this process. See [`crate::durable`].
    pub fn durable(mut self, store: DurableStore) -> Self {
        self.extensions.get_or_default::<Durable>().store = Some(store);
        self
    }

    /// Registers the durable task type `T` under [`T::NAME`](DurableTask::NAME),
    /// with the default config: workers can then rebuild it from the store.
    pub fn register<T: DurableTask>(self) -> Self {
        self.register_with::<T>(TaskConfig::default())
    }

    /// As [`register`](Self::register), with settings for every run of `T`
    /// (over the default config): its retry policy, timeout and error
    /// handler. Its name is always `T::NAME`, it always starts at once, and
    /// it is always shielded.
    ///
    /// Registering a second type under a name already taken keeps the first
    /// (and logs an error); scheduling the second then fails with
    /// [`DurableError::NotRegistered`].
    pub fn register_with<T: DurableTask>(mut self, config: TaskConfig) -> Self {
        let options = TaskOptions {
            name: None,
            phase: None,
            ..config.options
        };
        let registry = &mut self.extensions.get_or_default::<Durable>().registry;
        match registry.entry(T::NAME) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(registration::<T>(options));
            }
            std::collections::hash_map::Entry::Occupied(_) => tracing::error!(
                name = T::NAME,
                task = std::any::type_name::<T>(),
                "another durable task type is already registered under this name; not registered"
            ),
        }
        self
    }
}

/// Schedules durable tasks; from [`Tasks::durable`] or
/// [`Background::durable`](crate::Background::durable).
#[derive(Debug, Clone)]
pub struct DurableTasks {
    tasks: Tasks,
}

impl Tasks {
    /// Schedules tasks into the durable store, in this scheduler's phase.
    pub fn durable(&self) -> DurableTasks {
        DurableTasks {
            tasks: self.clone(),
        }
    }
}

impl DurableTasks {
    /// The same scheduler: the job is written once the handler has returned,
    /// before the response is sent.
    pub fn after_route(&self) -> DurableTasks {
        self.tasks.after_route().durable()
    }

    /// The same scheduler: the job is written once the response has been sent.
    pub fn after_response(&self) -> DurableTasks {
        self.tasks.after_response().durable()
    }

    /// Writes `task` to the store, to be run by a worker at least once.
    ///
    /// In [`Phase::Immediate`] (the default) the job is in the store when
    /// this returns `Ok`. In a later phase the task is checked and serialised
    /// now and written when the phase comes; if that write fails, the failure
    /// goes to the task type's error handler (never dropped silently).
    ///
    /// # Errors
    ///
    /// [`DurableError::NotConfigured`] without a store,
    /// [`DurableError::NotRegistered`] when `T` was not registered,
    /// [`DurableError::Encode`] when it cannot be serialised, and
    /// [`DurableError::Store`] when the store refused it (immediate phase).
    pub async fn schedule<T: DurableTask>(&self, task: T) -> Result<JobId, DurableError> {
        let shared = self.tasks.shared();
        let durable = shared
            .extensions
            .get::<Durable>()
            .ok_or(DurableError::NotConfigured)?;
        let store = durable.store.as_ref().ok_or(DurableError::NotConfigured)?;
        let registration = durable.lookup::<T>()?;
        let args = serde_json::to_value(&task).map_err(DurableError::Encode)?;
        let id = JobId::generate();
        let job = store::Job {
            task: T::NAME.to_owned(),
            args,
        };
        match self.tasks.phase().unwrap_or_default() {
            Phase::Immediate => {
                store.push(&id, job).await?;
            }
            _ => {
                let store = store.clone();
                let options = TaskOptions {
                    name: Some(format!("{}:enqueue", T::NAME).into()),
                    shield: Some(true),
                    ..registration.options.clone()
                };
                let job_id = id.clone();
                self.tasks
                    .schedule_once(async move { store.push(&job_id, job).await }, &options);
            }
        }
        Ok(id)
    }
}

impl crate::Background {
    /// Schedules durable tasks outside any request: the job is written now.
    pub fn durable(&self) -> DurableTasks {
        self.tasks().durable()
    }
}
