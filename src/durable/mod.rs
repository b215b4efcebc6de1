//! Durable tasks: written to a store (SQLite or Postgres) and run by workers
//! of [River](https://riverqueue.com) (its Rust client, `riverqueue`), so
//! that they survive a crash, can be written in the caller's own database
//! transaction, and can be shared between processes.
//!
//! ```no_run
//! use axum::{Router, extract::State, routing::post};
//! use axum_background::durable::{DurableError, DurableStore, DurableTask};
//! use axum_background::{Background, BackgroundTask, BoxError, Tasks, mode};
//! use serde::{Deserialize, Serialize};
//! use sqlx::SqlitePool;
//!
//! #[derive(Serialize, Deserialize)]
//! struct SendInvoice {
//!     order: i64,
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
//! async fn checkout(State(db): State<SqlitePool>, tasks: Tasks) -> Result<&'static str, DurableError> {
//!     // The order and its invoice job commit together, or not at all.
//!     let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
//!     let order: i64 = sqlx::query_scalar("INSERT INTO orders (total) VALUES (42) RETURNING id")
//!         .fetch_one(&mut *tx)
//!         .await?;
//!     tasks.durable().tx(&mut tx).schedule(SendInvoice { order }).await?;
//!     tx.commit().await?;
//!     Ok("ordered")
//! }
//!
//! # async fn run() -> Result<(), BoxError> {
//! let store = DurableStore::sqlite("app.db").await?;
//! let db = store.sqlite_pool().cloned().expect("a SQLite store");
//! let background = Background::builder()
//!     .durable(store)
//!     .register::<SendInvoice>()
//!     .build();
//! let app: Router = Router::new()
//!     .route("/checkout", post(checkout))
//!     .with_state(db)
//!     .layer(background.layer());
//! # Ok(()) }
//! ```
//!
//! # Delivery
//!
//! At least once. A job is taken out of the store by one worker at a time
//! and marked done when its task completes. A job held by a process that
//! died is taken back by the process that leads (one is elected among those
//! sharing the store) once its task's timeout (5 minutes unless its type
//! sets one) and a 5 s margin have passed, checked every 5 s
//! ([`DurableStore::rescue`]); if the process that died was the leader, its
//! lease (12 s) passes first. It then runs again, logged at INFO as rescued.
//! A task may therefore run twice: make durable tasks idempotent.
//!
//! # Running
//!
//! A job runs as an ordinary task of this crate, named after
//! [`DurableTask::NAME`]: with the timeout and error handler registered for
//! its type (over the default config), listed by `in_flight()`, counted by
//! `stats()`, and always shielded. Each run is one attempt in the store; a
//! failed attempt is retried by the type's [`RetryPolicy`](crate::RetryPolicy) (five runs, from
//! 1 s apart, unless set), kept in the store in between (state
//! [`JobState::Retrying`]) so that a crash loses no retry. The error handler
//! hears of a job once, when it is given up:
//!
//! | outcome | in the store |
//! |---|---|
//! | completed | [`JobState::Completed`] |
//! | failed, and the policy retries it | [`JobState::Retrying`], then run again |
//! | failed for the last time, panicked or timed out | [`JobState::Discarded`]: not run again, its error kept ([`JobInfo::errors`]) |
//! | cancelled ([`DurableTasks::cancel`], from any process) | [`JobState::Cancelled`] |
//! | cut off by [`shutdown`](crate::Background::shutdown) past its grace period | put back, its attempt not spent: run by the next worker |
//!
//! # Tracing
//!
//! With the `opentelemetry` feature, a job carries the trace context of the
//! span it is scheduled in (W3C `traceparent` and `tracestate`, in the job's
//! metadata under `axum_background_trace`), taken when `schedule` is called:
//! in a later phase too, in a transaction, and for each job of
//! `schedule_many`. The worker runs its task in an INFO `durable_job` span
//! (fields `job` and `task`) whose OpenTelemetry parent is that context, so
//! that the task's `background_task` span and everything below it are in the
//! scheduler's trace, in whichever process runs it. Both processes need
//! [tracing-opentelemetry](https://docs.rs/tracing-opentelemetry)'s layer
//! (0.34, over `opentelemetry` 0.33). A job scheduled outside any such span
//! carries nothing and runs as it would without the feature, in a trace of
//! its own; so do the jobs of durable periodic schedules and the tasks
//! stored at shutdown.
//!
//! # Shutdown
//!
//! [`Background::shutdown`](crate::Background::shutdown) stops the workers
//! taking jobs, lets the running ones finish (they are shielded), writes
//! their outcomes, puts back those it had to cut off, and leaves every other
//! job in the store for the next start. A worker never holds a job it has
//! not started.

mod jobs;
mod kept;
mod periodic;
mod store;
#[cfg(feature = "opentelemetry")]
mod trace;
mod tx;
mod worker;

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime};

use riverqueue::{InsertOpts, JobState as EngineState, UniqueOpts};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::background::BackgroundBuilder;
use crate::config::TaskConfig;
use crate::extractor::Tasks;
use crate::inner::{Extension, Shared};
use crate::options::TaskOptions;
use crate::{BackgroundTask, BoxError, Phase};

pub use jobs::{AttemptError, JobInfo, JobState};
pub(crate) use kept::Kept;
pub(crate) use periodic::Made;
pub use store::DurableStore;
pub use tx::{InTransaction, Transaction};
use worker::{Engine, Stored};

/// A task that can be written to a store and run later, in this process or
/// another: serialisable, and registered under a stable [`NAME`](Self::NAME).
///
/// Its `run` returns `Result<(), BoxError>` (the default of
/// [`BackgroundTask`]). Register the type on the builder of every process
/// that schedules or runs it:
/// `Background::builder().durable(store).register::<SendInvoice>()`.
pub trait DurableTask: BackgroundTask + Serialize + DeserializeOwned {
    /// The name stored with each job, by which a worker finds the type again:
    /// 2 to 127 letters, digits and `_-[]<>/.:+`, starting with a letter,
    /// digit or `_`. Change it and jobs already stored under the old name no
    /// longer run.
    const NAME: &'static str;
}

/// The id of a job in the store, given by the store when the job is written
/// (serialised as the number).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(i64);

impl JobId {
    /// The id as stored.
    pub fn as_i64(self) -> i64 {
        self.0
    }
}

impl From<i64> for JobId {
    fn from(id: i64) -> Self {
        JobId(id)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

/// A job written to the store, or found there by its unique key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct Enqueued {
    /// The job's id: the new job's, or for a duplicate the existing one's.
    pub id: JobId,
    /// Whether a job with the same unique key was already in the store (it
    /// was not written again).
    pub duplicate: bool,
}

/// Why a durable task could not be scheduled, a job looked up, or a store
/// opened.
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
    /// No job has this id (never written, or removed once finished: finished
    /// jobs are kept a day, discarded ones a week).
    NotFound(JobId),
    /// The task could not be serialised.
    Encode(serde_json::Error),
    /// The store failed: opening it, reading or writing a job.
    Store(BoxError),
}

impl DurableError {
    /// Wraps an error of the store or of the caller's database work (a
    /// transaction's), so that a handler can use `?` on both.
    pub fn store(error: impl Into<BoxError>) -> Self {
        DurableError::Store(error.into())
    }
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
            DurableError::NotFound(id) => write!(f, "no durable job has the id {id}"),
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

/// The caller's own database work (a transaction around a schedule, say)
/// fails as [`DurableError::Store`], so that a handler can use `?` on it.
impl From<sqlx::Error> for DurableError {
    fn from(error: sqlx::Error) -> Self {
        DurableError::Store(Box::new(error))
    }
}

impl From<riverqueue::Error> for DurableError {
    fn from(error: riverqueue::Error) -> Self {
        match error {
            riverqueue::Error::NotFound(riverqueue::Record::Job(id)) => {
                DurableError::NotFound(JobId(id))
            }
            riverqueue::Error::Json(error) => DurableError::Encode(error),
            error => DurableError::Store(Box::new(error)),
        }
    }
}

/// A 500 whose body says what went wrong (a 404 for an unknown job), so that
/// handlers can use `?`.
impl axum::response::IntoResponse for DurableError {
    fn into_response(self) -> axum::response::Response {
        let status = match self {
            DurableError::NotFound(_) => http::StatusCode::NOT_FOUND,
            _ => {
                tracing::error!(error = %self, "durable task or job request failed");
                http::StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        (status, self.to_string()).into_response()
    }
}

type AddWorker = fn(
    &mut riverqueue::worker::Workers,
    Weak<Shared>,
    &TaskOptions,
) -> Result<Duration, riverqueue::Error>;

/// A registered type: its settings, how the engine runs its jobs, and how a
/// periodic schedule writes them.
pub(crate) struct Registration {
    name: &'static str,
    type_id: TypeId,
    options: TaskOptions,
    add_worker: AddWorker,
    periodic_job: fn(&periodic::Schedule, InsertOpts) -> riverqueue::PeriodicJob,
    /// Whether an in-process task of this type cut off by shutdown is
    /// written to the store ([`BackgroundBuilder::persist_on_shutdown`]).
    persist: bool,
    encode: Encode,
    insert_raw: InsertRaw,
}

/// A task of the registered type (as `Any`), in its stored form.
type Encode = fn(&dyn Any) -> Option<Result<Box<serde_json::value::RawValue>, serde_json::Error>>;

/// Writes a task already in its stored form; the job's id.
type InsertRaw =
    for<'a> fn(
        &'a riverqueue::Client,
        Box<serde_json::value::RawValue>,
        InsertOpts,
    ) -> Pin<Box<dyn Future<Output = Result<i64, riverqueue::Error>> + Send + 'a>>;

fn encode<T: DurableTask>(
    task: &dyn Any,
) -> Option<Result<Box<serde_json::value::RawValue>, serde_json::Error>> {
    task.downcast_ref::<T>()
        .map(serde_json::value::to_raw_value)
}

fn insert_raw<T: DurableTask>(
    client: &riverqueue::Client,
    task: Box<serde_json::value::RawValue>,
    opts: InsertOpts,
) -> Pin<Box<dyn Future<Output = Result<i64, riverqueue::Error>> + Send + '_>> {
    Box::pin(async move {
        let stored = Stored::<T>::from_raw(task);
        Ok(client.insert(stored).opts(opts).await?.job.id())
    })
}

fn periodic_job<T: DurableTask>(
    schedule: &periodic::Schedule,
    base: InsertOpts,
) -> riverqueue::PeriodicJob {
    schedule.job::<T>(base)
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

/// The durable side of a [`Background`](crate::Background), plugged in as
/// an extension: its store, the registered types, and the engine.
#[derive(Debug, Default)]
pub(crate) struct Durable {
    /// `Some` once the builder was given a store.
    pub(crate) store: Option<DurableStore>,
    pub(crate) registry: HashMap<&'static str, Registration>,
    /// The durable periodic schedules ([`Periodic::durable`](crate::periodic::Periodic::durable)).
    pub(crate) schedules: Vec<periodic::Schedule>,
    /// Whether any type persists on shutdown (a task of another type pays a
    /// branch).
    persisting: bool,
    kept: kept::KeptTasks,
    /// The `Background`'s shared state, once it has a runtime (shutdown
    /// stores the kept tasks through it).
    shared: std::sync::OnceLock<Weak<Shared>>,
    engine: Engine,
}

impl Durable {
    fn lookup<T: DurableTask>(&self) -> Result<&Registration, DurableError> {
        match self.registry.get(T::NAME) {
            Some(registration) if registration.type_id == TypeId::of::<T>() => Ok(registration),
            _ => Err(DurableError::NotRegistered { name: T::NAME }),
        }
    }

    fn of(shared: &Shared) -> Result<(&Durable, &DurableStore), DurableError> {
        let durable = shared
            .extensions
            .get::<Durable>()
            .ok_or(DurableError::NotConfigured)?;
        let store = durable.store.as_ref().ok_or(DurableError::NotConfigured)?;
        Ok((durable, store))
    }

    fn client(&self, shared: &Arc<Shared>) -> Result<&riverqueue::Client, DurableError> {
        self.engine.client(self, shared)
    }

    /// The insert options every job of `registration`'s type is written with.
    fn insert_opts(&self, registration: &Registration, store: &DurableStore) -> InsertOpts {
        InsertOpts::default()
            .with_queue(store.options.queue.clone())
            .with_max_attempts(worker::max_attempts(
                registration.options.retry.as_ref(),
                store,
            ))
    }

    /// The periodic jobs of the durable schedules.
    ///
    /// # Errors
    ///
    /// A schedule whose task's type is not registered: its message says which.
    fn periodic_jobs(&self, store: &DurableStore) -> Result<Vec<riverqueue::PeriodicJob>, String> {
        self.schedules
            .iter()
            .map(|schedule| {
                let registration = self
                    .registry
                    .values()
                    .find(|r| r.type_id == schedule.made.type_id)
                    .ok_or_else(|| {
                        format!(
                            "the durable periodic task \"{}\" makes a task whose type is not \
                             registered: add `.register::<YourTask>()` to `Background::builder()`",
                            schedule.name
                        )
                    })?;
                let base = self.insert_opts(registration, store);
                Ok((registration.periodic_job)(schedule, base))
            })
            .collect()
    }

    /// The durable schedules, as `Background::periodic_tasks` lists them.
    pub(crate) fn periodic_tasks(
        &self,
    ) -> impl Iterator<Item = crate::periodic::PeriodicInfo> + '_ {
        self.schedules.iter().map(periodic::Schedule::info)
    }
}

impl BackgroundBuilder {
    /// Keeps in-process tasks of the durable type `T` against shutdown (and
    /// registers `T` if it is not yet): a task scheduled in process
    /// (`tasks.schedule(SendInvoice { .. })`) that shutdown cuts off
    /// (cancelled, never started, or still running at the deadline) is
    /// written to the store instead of being lost, and runs on the next
    /// start; its [`ShutdownEntry::stored`](crate::ShutdownEntry::stored)
    /// says so. It may have run in part: make it idempotent.
    ///
    /// Such a task is serialised when it is scheduled (its type's other
    /// tasks pay nothing).
    pub fn persist_on_shutdown<T: DurableTask>(mut self) -> Self {
        let registered = self
            .extensions
            .get_or_default::<Durable>()
            .registry
            .get(T::NAME)
            .is_some_and(|r| r.type_id == TypeId::of::<T>());
        if !registered {
            self = self.register::<T>();
        }
        let durable = self.extensions.get_or_default::<Durable>();
        if let Some(registration) = durable.registry.get_mut(T::NAME)
            && registration.type_id == TypeId::of::<T>()
        {
            registration.persist = true;
            durable.persisting = true;
        }
        self
    }

    /// Registers a durable periodic schedule (from `periodic`).
    pub(crate) fn durable_periodic(mut self, periodic: crate::periodic::Periodic) -> Self {
        self.extensions
            .get_or_default::<Durable>()
            .schedules
            .push(periodic::Schedule::new(periodic));
        self
    }
}

impl Extension for Durable {
    fn on_runtime(&self, shared: &Arc<Shared>, runtime: &Handle) {
        let _ = self.shared.set(Arc::downgrade(shared));
        self.engine.start(self, shared, runtime);
    }

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        self.engine.stop();
        Box::pin(std::future::ready(()))
    }

    fn drain(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        // The engine stops hard (putting back what shutdown cut off) and
        // writes its last outcomes; a short flush is allowed past the grace.
        Box::pin(async move {
            // The tasks cut off are written while the workers take nothing:
            // they run on the next start (here or elsewhere).
            if let Some(shared) = self.shared.get().and_then(Weak::upgrade) {
                self.kept.store(self, &shared).await;
            }
            self.engine.join(deadline, Duration::from_secs(2)).await;
        })
    }

    fn stored(&self, id: crate::TaskId) -> bool {
        self.kept.is_stored(id)
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
    /// (over the default config): its retry policy (five runs from 1 s
    /// apart unless set, also taken from the default config), timeout (5
    /// minutes unless set: a job held by a process that died runs again
    /// once it has passed) and error handler. Its name is always `T::NAME`,
    /// it always starts at once, and it is always shielded.
    ///
    /// Registering a second type under a name already taken keeps the first
    /// (and logs an error); scheduling the second then fails with
    /// [`DurableError::NotRegistered`].
    pub fn register_with<T: DurableTask>(mut self, config: TaskConfig) -> Self {
        let defaults = &self.default_config.options;
        let options = TaskOptions {
            name: None,
            phase: None,
            retry: config.options.retry.or(defaults.retry),
            timeout: config.options.timeout.or(defaults.timeout),
            ..config.options
        };
        let registry = &mut self.extensions.get_or_default::<Durable>().registry;
        match registry.entry(T::NAME) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(Registration {
                    name: T::NAME,
                    type_id: TypeId::of::<T>(),
                    options,
                    add_worker: worker::add_worker::<T>,
                    periodic_job: periodic_job::<T>,
                    persist: false,
                    encode: encode::<T>,
                    insert_raw: insert_raw::<T>,
                });
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

/// When a job may start.
#[derive(Debug, Clone, Copy)]
enum Start {
    After(Duration),
    At(SystemTime),
}

/// What makes a job unique.
#[derive(Debug, Clone)]
enum Unique {
    Key(String),
    Args,
}

/// Schedules durable tasks and looks up, cancels and retries stored jobs;
/// from [`Tasks::durable`] or [`Background::durable`](crate::Background::durable).
///
/// The options (`delay`, `at`, `unique`) apply to every job it schedules.
#[derive(Debug, Clone)]
pub struct DurableTasks {
    tasks: Tasks,
    start: Option<Start>,
    unique: Option<Unique>,
    unique_period: Option<Duration>,
}

impl Tasks {
    /// Schedules tasks into the durable store, in this scheduler's phase.
    pub fn durable(&self) -> DurableTasks {
        DurableTasks {
            tasks: self.clone(),
            start: None,
            unique: None,
            unique_period: None,
        }
    }
}

impl DurableTasks {
    /// The same scheduler: the job is written once the handler has returned,
    /// before the response is sent.
    pub fn after_route(self) -> DurableTasks {
        DurableTasks {
            tasks: self.tasks.after_route(),
            ..self
        }
    }

    /// The same scheduler: the job is written once the response has been sent.
    pub fn after_response(self) -> DurableTasks {
        DurableTasks {
            tasks: self.tasks.after_response(),
            ..self
        }
    }

    /// The job may start `delay` after it is written (it is
    /// [`JobState::Scheduled`] until then). Its start is checked every few
    /// seconds by the leading process: expect it up to 5 s late.
    pub fn delay(self, delay: Duration) -> DurableTasks {
        DurableTasks {
            start: Some(Start::After(delay)),
            ..self
        }
    }

    /// The job may start at `time` (wall-clock time: the job may run in
    /// another process, on another machine). A time in the past means now.
    pub fn at(self, time: SystemTime) -> DurableTasks {
        DurableTasks {
            start: Some(Start::At(time)),
            ..self
        }
    }

    /// The job is unique by `key` among the jobs of its type that are not
    /// finished (waiting, scheduled, running or retrying): scheduling a
    /// duplicate writes nothing and returns the existing job's id, with
    /// [`Enqueued::duplicate`] set. Inside a transaction it never aborts it.
    pub fn unique(self, key: impl Into<String>) -> DurableTasks {
        DurableTasks {
            unique: Some(Unique::Key(key.into())),
            ..self
        }
    }

    /// As [`unique`](Self::unique), keyed by the task's fields: two tasks of
    /// the same type with equal fields are duplicates.
    pub fn unique_by_args(self) -> DurableTasks {
        DurableTasks {
            unique: Some(Unique::Args),
            ..self
        }
    }

    /// Makes the unique key hold within a period, finished jobs included:
    /// time is cut into periods of this length (from the Unix epoch, by the
    /// job's start time), and one job per key runs in each. Needs
    /// [`unique`](Self::unique) or [`unique_by_args`](Self::unique_by_args);
    /// at least 1 s.
    pub fn unique_period(self, period: Duration) -> DurableTasks {
        DurableTasks {
            unique_period: Some(period.max(Duration::from_secs(1))),
            ..self
        }
    }

    /// Schedules in the caller's transaction (sqlx, on the store's
    /// database): the job is written with the transaction's other rows,
    /// seen by workers once it commits, and gone if it rolls back. The
    /// phase does not apply: the job is written now, in the transaction.
    ///
    /// On SQLite, begin the transaction with `BEGIN IMMEDIATE`
    /// (`pool.begin_with("BEGIN IMMEDIATE")`): a transaction that reads
    /// before it writes can otherwise fail with `database is locked`.
    pub fn tx<X: Transaction>(self, tx: &mut X) -> InTransaction<'_, X> {
        InTransaction::new(self, tx)
    }

    /// Writes `task` to the store, to be run by a worker at least once.
    ///
    /// In [`Phase::Immediate`] (the default) the job is in the store when
    /// this returns `Ok`. In a later phase the task is checked and serialised
    /// now and written when the phase comes (its id is not known before); if
    /// that write fails, the failure goes to the task type's error handler
    /// (never dropped silently), and this returns `Ok(None)`.
    ///
    /// # Errors
    ///
    /// [`DurableError::NotConfigured`] without a store,
    /// [`DurableError::NotRegistered`] when `T` was not registered,
    /// [`DurableError::Encode`] when it cannot be serialised, and
    /// [`DurableError::Store`] when the store refused it (immediate phase).
    pub async fn schedule<T: DurableTask>(
        &self,
        task: T,
    ) -> Result<Option<Enqueued>, DurableError> {
        let shared = self.tasks.shared();
        let (durable, store) = Durable::of(shared)?;
        let registration = durable.lookup::<T>()?;
        let (args, opts) = self.stored(&task, durable, registration, store)?;
        let client = durable.client(shared)?.clone();
        match self.tasks.phase().unwrap_or_default() {
            Phase::Immediate => Ok(Some(enqueued(client.insert(args).opts(opts).await?))),
            _ => {
                let options = TaskOptions {
                    name: Some(format!("{}:enqueue", T::NAME).into()),
                    shield: Some(true),
                    retry: None,
                    ..registration.options.clone()
                };
                let write = async move {
                    client
                        .insert(args)
                        .opts(opts)
                        .await
                        .map(drop)
                        .map_err(DurableError::from)
                };
                self.tasks.schedule_once(write, &options);
                Ok(None)
            }
        }
    }

    /// Writes several tasks of one type in one statement, all or none;
    /// returned in order. The phase does not apply: they are written now.
    ///
    /// # Errors
    ///
    /// As [`schedule`](Self::schedule).
    pub async fn schedule_many<T: DurableTask>(
        &self,
        tasks: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Enqueued>, DurableError> {
        let shared = self.tasks.shared();
        let (durable, store) = Durable::of(shared)?;
        let registration = durable.lookup::<T>()?;
        let jobs = tasks
            .into_iter()
            .map(|task| self.stored(&task, durable, registration, store))
            .collect::<Result<Vec<_>, _>>()?;
        let client = durable.client(shared)?;
        let results = client.insert_many(jobs).await?;
        Ok(results.into_iter().map(enqueued).collect())
    }

    /// The stored form of `task` and its insert options.
    /// `registration` is `T`'s, looked up once per call of the caller.
    fn stored<T: DurableTask>(
        &self,
        task: &T,
        durable: &Durable,
        registration: &Registration,
        store: &DurableStore,
    ) -> Result<(Stored<T>, InsertOpts), DurableError> {
        let key = match &self.unique {
            None => None,
            Some(Unique::Key(key)) => Some(key.clone()),
            Some(Unique::Args) => Some(serde_json::to_string(task).map_err(DurableError::Encode)?),
        };
        let unique = key.is_some();
        let args = Stored::new(task, key)?;
        let mut opts = durable.insert_opts(registration, store);
        // In the caller's span, now: in a later phase too (this runs in the
        // handler).
        #[cfg(feature = "opentelemetry")]
        {
            opts = trace::inject(opts);
        }
        if let Some(start) = self.start {
            let at = match start {
                Start::After(delay) => SystemTime::now() + delay,
                Start::At(time) => time,
            };
            let at = riverqueue::jiff::Timestamp::try_from(at).map_err(DurableError::store)?;
            opts = opts.with_scheduled_at(at);
        }
        if unique {
            let mut by = UniqueOpts::new().with_by_args(true);
            by = match self.unique_period {
                Some(period) => by.with_by_period(period),
                None => by.with_by_state([
                    EngineState::Available,
                    EngineState::Pending,
                    EngineState::Running,
                    EngineState::Scheduled,
                    EngineState::Retryable,
                ]),
            };
            opts = opts.with_unique(by);
        }
        Ok((args, opts))
    }
}

fn enqueued<A>(result: riverqueue::InsertResult<A>) -> Enqueued {
    Enqueued {
        id: JobId(result.job.id()),
        duplicate: result.unique_skipped_as_duplicate,
    }
}

impl crate::Background {
    /// Schedules durable tasks outside any request (the job is written
    /// now), and looks up, cancels and retries stored jobs.
    pub fn durable(&self) -> DurableTasks {
        self.tasks().durable()
    }
}
