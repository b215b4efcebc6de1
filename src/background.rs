//! [`Background`]: the runtime that owns the registry, the default config and
//! the tokio handle.

use std::borrow::Cow;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::config::TaskBuilder;
use crate::config::TaskConfig;
use crate::error::RejectReason;
use crate::extractor::Tasks;
use crate::handle::TaskHandle;
use crate::layer::BackgroundLayer;
use crate::limits::{Limits, OverflowPolicy};
use crate::mode::Mode;
use crate::registry::{Membership, NewTask, Registry, Stats, TaskCell, WaitIdleFuture};
use crate::request::{Rejection, RequestScope};
use crate::runner::Job;
use crate::shutdown::ShutdownHooks;
use crate::task::{Attempts, IntoBackgroundTask, Once, Rerunnable, TaskName};
use crate::{Phase, TaskError, TaskInfo};

/// The background-task runtime of an application.
///
/// It owns the registry of in-flight tasks, the default [`TaskConfig`] and
/// the tokio runtime tasks run on; it makes the [`layer`](Background::layer)
/// that gives handlers their [`Tasks`], and it shuts down gracefully.
/// Cloning is cheap: clones share everything.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use axum::{Router, routing::post};
/// use axum_background::{Background, Tasks};
///
/// async fn register(tasks: Tasks) -> &'static str {
///     tasks.schedule(async { /* send the welcome email */ });
///     "welcome"
/// }
///
/// let background = Background::new();
/// let app: Router = Router::new()
///     .route("/register", post(register))
///     .layer(background.layer());
/// # drop(app);
/// # }
/// ```
#[derive(Clone)]
pub struct Background {
    pub(crate) shared: Arc<Shared>,
}

/// Everything a `Background` and its clones share.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) default_config: TaskConfig,
    /// `Some` once a runtime is known: at build time, or at the first
    /// `schedule` made inside one.
    runtime: OnceLock<Handle>,
    /// Set when shutdown begins; never cleared.
    pub(crate) closing: AtomicBool,
    pub(crate) hooks: ShutdownHooks,
    pub(crate) limits: Limits,
    /// Metric handles by task name and phase.
    #[cfg(feature = "metrics")]
    pub(crate) instruments: crate::metrics::Instruments,
    /// The durable store, its registered task types and this process's workers.
    #[cfg(feature = "durable")]
    pub(crate) durable: Option<crate::durable::Durable>,
}

/// Builds a [`Background`]; from [`Background::builder`].
#[must_use]
#[derive(Debug, Default)]
pub struct BackgroundBuilder {
    default_config: TaskConfig,
    runtime: Option<Handle>,
    hooks: ShutdownHooks,
    max_blocking: Option<usize>,
    max_in_flight: Option<usize>,
    overflow: OverflowPolicy,
    #[cfg(feature = "durable")]
    durable: Option<crate::durable::DurableStore>,
    #[cfg(feature = "durable")]
    durable_tasks: crate::durable::Registry,
}

impl BackgroundBuilder {
    /// The config every task starts from; per-task settings override it field
    /// by field.
    pub fn default_config(mut self, config: TaskConfig) -> Self {
        self.default_config = config;
        self
    }

    /// The runtime async tasks run on and whose blocking pool sync tasks use.
    /// By default, the runtime `build` is called in.
    pub fn runtime(mut self, handle: Handle) -> Self {
        self.runtime = Some(handle);
        self
    }

    /// Registers a hook that [`Background::shutdown`] runs after tasks settle.
    pub fn shutdown_hook<H, M>(mut self, hook: H) -> Self
    where
        H: crate::shutdown::IntoShutdownHook<M>,
    {
        self.hooks.push(hook);
        self
    }

    /// At most `n` sync tasks run at once; the rest wait, in schedule order,
    /// without taking a thread. (Without it, each sync task takes a thread of
    /// tokio's blocking pool, up to its own limit of 512 by default.)
    ///
    /// `0` would never run a sync task: it is taken as `1`, with a warning.
    pub fn max_blocking(mut self, n: usize) -> Self {
        self.max_blocking = Some(n);
        self
    }

    /// At most `n` tasks run at once (both modes); what happens to the rest
    /// is the [`overflow`](Self::overflow) policy: wait for a slot (the
    /// default) or be rejected.
    ///
    /// `0` would never run a task: it is taken as `1`, with a warning.
    pub fn max_in_flight(mut self, n: usize) -> Self {
        self.max_in_flight = Some(n);
        self
    }

    /// What happens to a task when [`max_in_flight`](Self::max_in_flight) tasks
    /// are running: [`OverflowPolicy::Wait`] (the default) or
    /// [`OverflowPolicy::Reject`].
    pub fn overflow(mut self, policy: OverflowPolicy) -> Self {
        self.overflow = policy;
        self
    }

    /// Keeps durable tasks in `store` and, unless the store says
    /// [`without_workers`](crate::durable::DurableStore::without_workers),
    /// runs workers for them in this process. See [`crate::durable`].
    #[cfg(feature = "durable")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable")))]
    pub fn durable(mut self, store: crate::durable::DurableStore) -> Self {
        self.durable = Some(store);
        self
    }

    /// Registers the durable task type `T` under [`T::NAME`](crate::durable::DurableTask::NAME),
    /// with the default config: workers can then rebuild it from the store.
    #[cfg(feature = "durable")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable")))]
    pub fn register<T: crate::durable::DurableTask>(self) -> Self {
        self.register_with::<T>(TaskConfig::default())
    }

    /// As [`register`](Self::register), with settings for every run of `T`
    /// (over the default config): its retry policy, timeout and error
    /// handler. Its name is always `T::NAME`, and it is always shielded.
    ///
    /// Registering a second type under a name already taken keeps the first
    /// (and logs an error); scheduling the second then fails with
    /// [`DurableError::NotRegistered`](crate::durable::DurableError::NotRegistered).
    #[cfg(feature = "durable")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable")))]
    pub fn register_with<T: crate::durable::DurableTask>(mut self, config: TaskConfig) -> Self {
        let config = TaskConfig {
            name: None,
            phase: None,
            ..config.merged_over(&self.default_config)
        };
        match self.durable_tasks.entry(T::NAME) {
            std::collections::hash_map::Entry::Vacant(slot) => {
                slot.insert(crate::durable::registration::<T>(config));
            }
            std::collections::hash_map::Entry::Occupied(_) => tracing::error!(
                name = T::NAME,
                task = std::any::type_name::<T>(),
                "another durable task type is already registered under this name; not registered"
            ),
        }
        self
    }

    /// Builds the `Background`.
    ///
    /// Called outside a tokio runtime without [`runtime`](Self::runtime), the
    /// runtime is taken from the first `schedule` made inside one; a task
    /// scheduled where none is known is rejected with
    /// [`RejectReason::NoRuntime`]. Nothing panics.
    pub fn build(self) -> Background {
        let runtime = OnceLock::new();
        if let Some(handle) = self.runtime.or_else(|| Handle::try_current().ok()) {
            let _ = runtime.set(handle);
        }
        let background = Background {
            shared: Arc::new_cyclic(|_weak| Shared {
                registry: Registry::default(),
                default_config: self.default_config,
                runtime,
                closing: AtomicBool::new(false),
                hooks: self.hooks,
                limits: Limits {
                    blocking: self
                        .max_blocking
                        .map(|n| Arc::new(Semaphore::new(at_least_one("max_blocking", n)))),
                    in_flight: self.max_in_flight.map(|n| {
                        let n = at_least_one("max_in_flight", n);
                        (Arc::new(Semaphore::new(n)), n)
                    }),
                    overflow: self.overflow,
                },
                #[cfg(feature = "metrics")]
                instruments: crate::metrics::Instruments::default(),
                #[cfg(feature = "durable")]
                durable: self.durable.map(|store| crate::durable::Durable {
                    store,
                    registry: self.durable_tasks,
                    workers: Default::default(),
                    shared: _weak.clone(),
                }),
            }),
        };
        #[cfg(feature = "durable")]
        if let Some(runtime) = background.shared.runtime.get() {
            background.shared.start_workers(runtime);
        }
        background
    }
}

/// A limit of zero would stall every task it covers: take it as one, and say so.
fn at_least_one(limit: &str, n: usize) -> usize {
    if n == 0 {
        tracing::warn!("{limit}(0) would never run a task; using {limit}(1)");
        1
    } else {
        n.min(Semaphore::MAX_PERMITS)
    }
}

impl Default for Background {
    fn default() -> Self {
        Background::new()
    }
}

impl Background {
    /// A `Background` with the default config, on the current runtime.
    pub fn new() -> Self {
        Background::builder().build()
    }

    /// Starts a [`BackgroundBuilder`].
    pub fn builder() -> BackgroundBuilder {
        BackgroundBuilder::default()
    }

    /// The tower layer that gives each request its [`Tasks`] and fires the
    /// after-route and after-response phases.
    pub fn layer(&self) -> BackgroundLayer {
        BackgroundLayer::new(Arc::clone(&self.shared))
    }

    /// Schedules a task outside any request; it starts at once.
    ///
    /// Accepts what [`Tasks::schedule`] accepts.
    #[track_caller]
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        self.tasks().schedule(task)
    }

    /// Configures one task outside any request: `background.task().name("x").build().schedule(t)`.
    /// The [`TaskConfig`] builder, as [`Tasks::task`]; every phase starts at once.
    pub fn task(&self) -> TaskBuilder {
        self.tasks().task()
    }

    /// A [`Tasks`] scheduler not tied to any request: every phase starts at once.
    pub(crate) fn tasks(&self) -> Tasks {
        Tasks::detached(Arc::clone(&self.shared))
    }

    /// A snapshot of every task in flight (queued or running), by id.
    pub fn in_flight(&self) -> Vec<TaskInfo> {
        self.shared.registry.snapshot()
    }

    /// The counters; see [`Stats`] for what holds between them.
    pub fn stats(&self) -> Stats {
        self.shared.registry.counters.snapshot()
    }

    /// Resolves when no task is in flight: every task scheduled so far has
    /// ended and its error handler has returned. The counters are final when
    /// it resolves.
    ///
    /// This is what tests should await instead of sleeping. A task scheduled
    /// while it waits is waited for too.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: dropping it changes nothing.
    pub fn wait_idle(&self) -> WaitIdleFuture<'_> {
        self.shared.registry.wait_idle()
    }

    /// Whether [`shutdown`](Background::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.closing.load(Ordering::Acquire)
    }
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("in_flight", &self.shared.registry.len())
            .field("shutting_down", &self.is_shutting_down())
            .field("default_config", &self.shared.default_config)
            .finish()
    }
}

impl Shared {
    pub(crate) fn runtime(&self) -> Option<&Handle> {
        if let Some(handle) = self.runtime.get() {
            return Some(handle);
        }
        let handle = Handle::try_current().ok()?;
        let handle = self.runtime.get_or_init(|| handle);
        #[cfg(feature = "durable")]
        self.start_workers(handle);
        Some(handle)
    }

    /// Starts the durable workers on `runtime` (once; a no-op without a store).
    #[cfg(feature = "durable")]
    fn start_workers(&self, runtime: &Handle) {
        if let Some(durable) = &self.durable {
            durable
                .workers
                .start(runtime, &durable.store, durable.shared.clone());
        }
    }

    /// Schedules a job taken from the durable store: like a rerunnable task,
    /// but admitted during shutdown (the job is already out of the store) and
    /// never rejected by a full `max_in_flight` (it waits).
    #[cfg(feature = "durable")]
    pub(crate) fn schedule_stored<T: crate::task::Rerunnable<M>, M>(
        self: &Arc<Self>,
        task: T,
        config: TaskConfig,
    ) -> TaskHandle {
        let source = rerunnable_source(task, true);
        self.admit::<T::Mode, _>(source, None, None, config)
    }

    /// Schedules a task that runs once.
    pub(crate) fn schedule<T, M>(
        self: &Arc<Self>,
        task: T,
        scope: Option<&Arc<RequestScope>>,
        phase: Option<Phase>,
        config: TaskConfig,
    ) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        let own_name = task.own_name();
        let source = TaskSource {
            own_name,
            type_path: T::type_path(),
            attempts: Once::new(task.into_work()),
            retrying: false,
            from_store: false,
        };
        self.admit::<T::Mode, _>(source, scope, phase, config)
    }

    /// Schedules a task that may run again, under the merged retry policy.
    pub(crate) fn schedule_rerunnable<T, M>(
        self: &Arc<Self>,
        task: T,
        scope: Option<&Arc<RequestScope>>,
        phase: Option<Phase>,
        config: TaskConfig,
    ) -> TaskHandle
    where
        T: Rerunnable<M>,
    {
        let source = rerunnable_source(task, false);
        self.admit::<T::Mode, _>(source, scope, phase, config)
    }

    /// The one path every task takes into the crate: register it, then start
    /// it now or when its phase comes, or reject it.
    ///
    /// `phase` is the scheduler's, if it chose one: a per-task phase wins
    /// over it, and it wins over the default config's.
    fn admit<Md: Mode, A: Attempts>(
        self: &Arc<Self>,
        source: TaskSource<A>,
        scope: Option<&Arc<RequestScope>>,
        phase: Option<Phase>,
        config: TaskConfig,
    ) -> TaskHandle {
        let default = &self.default_config;
        // Names rank: per task, the task type's own, the default config's, derived.
        let name = match config
            .name
            .clone()
            .or(source.own_name)
            .or_else(|| default.name.clone())
        {
            Some(name) => TaskName::Given(name),
            None => TaskName::Derived(source.type_path),
        };
        let phase = config.phase.or(phase).or(default.phase).unwrap_or_default();
        let config = config.merged_over(default);
        let cell = Arc::new(TaskCell::new(NewTask {
            shared: Arc::clone(self),
            id: self.registry.next_id(),
            name,
            phase,
            mode: Md::KIND,
            shielded: config.shield.unwrap_or(false),
            request: scope.and_then(|scope| scope.request_meta()),
            on_error: config.on_error,
        }));
        let handle = TaskHandle::new(Arc::clone(&cell));
        // Insert before checking `closing`: shutdown sets `closing` before it
        // reads the registry, so a task either is seen by shutdown or sees
        // `closing` here.
        self.registry.insert(&cell);
        let membership = Membership { cell };
        let from_store = source.from_store;
        let reject = if self.closing.load(Ordering::SeqCst) && !from_store {
            Some(RejectReason::ShuttingDown)
        } else if self.runtime().is_none() {
            Some(RejectReason::NoRuntime)
        } else {
            None
        };
        if let Some(reason) = reject {
            self.reject(&membership.cell, reason);
            return handle;
        }

        let span = task_span(&membership.cell, scope);
        let mut job = Job {
            membership,
            attempts: source.attempts,
            retry: config.retry.filter(|_| source.retrying),
            timeout: config.timeout,
            slot: None,
            blocking: None,
            ticket: None,
            span,
        };
        let start = move |ticket| {
            let shared = Arc::clone(job.membership.shared());
            match shared.limits.admit(from_store) {
                Ok(slot) => job.slot = slot,
                Err(reason) => {
                    // Claimed now; reported (user code) once no lock is held.
                    let cell = Arc::clone(&job.membership.cell);
                    let claimed = cell.try_finish(Err(TaskError::Rejected(reason)));
                    return match claimed {
                        Some(was_started) => Err(Rejection(Box::new(move || {
                            shared.report_dropped(&cell, was_started);
                        }))),
                        None => Ok(()),
                    };
                }
            }
            job.ticket = ticket;
            if let Some(runtime) = shared.runtime() {
                Md::start(runtime, job);
            }
            // No runtime cannot happen here (checked above); were it so,
            // dropping `job` would report the task as cancelled.
            Ok(())
        };
        match scope {
            Some(scope) => scope.at(phase, start),
            None => {
                if let Err(Rejection(report)) = start(None) {
                    report();
                }
            }
        }
        handle
    }

    /// Ends a task that was never admitted.
    fn reject(self: &Arc<Self>, cell: &Arc<TaskCell>, reason: RejectReason) {
        if let Some(was_started) = cell.try_finish(Err(TaskError::Rejected(reason))) {
            self.report_dropped(cell, was_started);
        }
    }
}

/// The task's `background_task` span (DEBUG), following from its request's.
///
/// Without any subscriber nothing can see it: it is not even built (with
/// `tracing`'s `log` feature, building it would format its fields for `log`).
fn task_span(cell: &TaskCell, scope: Option<&Arc<RequestScope>>) -> tracing::Span {
    if !tracing::dispatcher::has_been_set() {
        return tracing::Span::none();
    }
    let span = tracing::debug_span!(
        "background_task",
        id = %cell.id,
        name = %cell.name(),
        phase = %cell.phase,
        mode = %cell.mode,
    );
    if !span.is_disabled() {
        match scope {
            Some(scope) => span.follows_from(&scope.span),
            None => span.follows_from(tracing::Span::current()),
        };
    }
    span
}

/// A task on its way in: its names and its attempts.
struct TaskSource<A> {
    own_name: Option<Cow<'static, str>>,
    type_path: &'static str,
    attempts: A,
    /// Whether the route taken allows retries (the task can run again).
    retrying: bool,
    /// A job taken from the durable store (see `schedule_stored`).
    from_store: bool,
}

/// A task that may run again, under the merged retry policy.
fn rerunnable_source<T: Rerunnable<M>, M>(task: T, from_store: bool) -> TaskSource<impl Attempts> {
    TaskSource {
        own_name: task.own_name(),
        type_path: T::type_path(),
        attempts: task.into_attempts(),
        retrying: true,
        from_store,
    }
}
