//! [`Background`]: the runtime that owns the registry, the default config and
//! the tokio handle.

use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::sync::Semaphore;

use crate::blocking::{DEFAULT_THRESHOLD, Detection};
use crate::cancel::{self, CancelOutcome};
use crate::config::{TaskBuilder, TaskConfig};
use crate::extractor::Tasks;
use crate::failures::{DEFAULT_CAPACITY as DEFAULT_FAILURES, RecentFailure, RecentFailures};
use crate::flow::{Flow, FlowLimit};
use crate::handle::TaskHandle;
use crate::hook::{IntoShutdownHook, ShutdownHooks};
use crate::inner::{Extensions, Shared};
use crate::layer::BackgroundLayer;
use crate::limits::{Limits, OverflowPolicy};
use crate::options::TaskOptions;
use crate::periodic::{Periodic, PeriodicInfo, Schedules};
use crate::registry::{Stats, WaitIdleFuture};
use crate::task::IntoBackgroundTask;
use crate::{TaskId, TaskInfo};

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

/// Builds a [`Background`]; from [`Background::builder`].
#[must_use]
#[derive(Debug, Default)]
pub struct BackgroundBuilder {
    pub(crate) default_config: TaskConfig,
    runtime: Option<Handle>,
    hooks: ShutdownHooks,
    max_blocking: Option<usize>,
    max_in_flight: Option<usize>,
    overflow: OverflowPolicy,
    /// Plug-ins, set up by their own builder methods (`periodic`, `durable`).
    pub(crate) extensions: Extensions,
    flows: HashMap<Cow<'static, str>, FlowLimit>,
    recent_failures: Option<usize>,
    /// `None` until set: the default threshold.
    blocking_threshold: Option<Option<Duration>>,
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
        H: IntoShutdownHook<M>,
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

    /// Limits the tasks of the flow `key`: those named `key`, and those
    /// given `flow(key)`. A task waiting for its flow is queued (counted and
    /// listed as such), never failed. Registering `key` again replaces its
    /// limit.
    pub fn flow(mut self, key: impl Into<Cow<'static, str>>, limit: FlowLimit) -> Self {
        self.flows.insert(key.into(), limit);
        self
    }

    /// Registers a periodic task: run every period from one period after the
    /// `Background` has a runtime until its shutdown begins. See [`Periodic`].
    pub fn periodic(mut self, periodic: Periodic) -> Self {
        #[cfg(feature = "_durable")]
        if periodic.durable {
            return self.durable_periodic(periodic);
        }
        self.extensions.get_or_default::<Schedules>().add(periodic);
        self
    }

    /// How many recent failures to keep for operators (default 100; 0 keeps
    /// none): the last tasks that failed, panicked, timed out or were
    /// rejected, with their error, listed by
    /// [`Background::recent_failures`] and the admin page. Memory is bounded
    /// by `n` (a task's info and its error each); a task that completes pays
    /// nothing.
    pub fn recent_failures(mut self, n: usize) -> Self {
        self.recent_failures = Some(n);
        self
    }

    /// Detects async tasks whose poll holds their runtime worker thread
    /// longer than `threshold` (on by default, at 100 ms; `None` turns it
    /// off): such a task is logged once at WARN with its name and the time
    /// held, counted (`background_tasks_blocking_total` with the `metrics`
    /// feature), and marked ([`TaskInfo::blocked`](crate::TaskInfo::blocked),
    /// the admin page). Blocking in an async task stalls every other task
    /// and request on that worker: move such work to a sync task.
    ///
    /// A poll only stamps a coarse tick (a few instructions); a watchdog
    /// thread, one per process, reads the stamps every quarter threshold.
    /// The first threshold in a process sets that tick.
    pub fn detect_blocking(mut self, threshold: Option<Duration>) -> Self {
        self.blocking_threshold = Some(threshold.map(|t| t.max(Duration::from_millis(4))));
        self
    }

    /// Builds the `Background`.
    ///
    /// Called outside a tokio runtime without [`runtime`](Self::runtime), the
    /// runtime is taken from the first `schedule` made inside one; a task
    /// scheduled where none is known is rejected with
    /// [`RejectReason::NoRuntime`](crate::RejectReason::NoRuntime). Nothing panics.
    pub fn build(self) -> Background {
        let limits = Limits {
            blocking: self
                .max_blocking
                .map(|n| Arc::new(Semaphore::new(at_least_one("max_blocking", n)))),
            in_flight: self.max_in_flight.map(|n| {
                let n = at_least_one("max_in_flight", n);
                (Arc::new(Semaphore::new(n)), n)
            }),
            overflow: self.overflow,
        };
        let detection = match self.blocking_threshold {
            None => Some(DEFAULT_THRESHOLD),
            Some(threshold) => threshold,
        }
        .map(Detection::register);
        let shared = Arc::new(Shared::new(
            self.default_config.options,
            self.hooks,
            limits,
            self.extensions,
            self.flows
                .into_iter()
                .map(|(key, limit)| (key, Arc::new(Flow::new(limit))))
                .collect(),
            RecentFailures::new(self.recent_failures.unwrap_or(DEFAULT_FAILURES)),
            detection,
        ));
        if let Some(detection) = detection {
            detection.attach(&shared);
        }
        if let Some(handle) = self.runtime.or_else(|| Handle::try_current().ok()) {
            shared.set_runtime(handle);
        }
        Background { shared }
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
        crate::schedule::once(&self.shared, task, None, None, TaskOptions::NONE)
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

    /// Cancels the task with this id: it ends as [`TaskError::Cancelled`](crate::TaskError::Cancelled),
    /// exactly once (logged, passed to its error handler, counted).
    ///
    /// A queued task never starts; a running async task is dropped at its next
    /// `.await`; a running sync task cannot be interrupted: its
    /// [`TaskContext`](crate::TaskContext) cancellation fires and its thread
    /// runs on, its eventual result ignored. Shielding protects from shutdown,
    /// not from this explicit request.
    pub fn cancel(&self, id: TaskId) -> CancelOutcome {
        cancel::cancel_id(&self.shared, id)
    }

    /// The registered periodic tasks, each with its next run and its last.
    pub fn periodic_tasks(&self) -> Vec<PeriodicInfo> {
        #[cfg_attr(not(feature = "_durable"), allow(unused_mut))]
        let mut list = self
            .shared
            .extensions
            .get::<Schedules>()
            .map(Schedules::list)
            .unwrap_or_default();
        #[cfg(feature = "_durable")]
        if let Some(durable) = self.shared.extensions.get::<crate::durable::Durable>() {
            list.extend(durable.periodic_tasks());
        }
        list
    }

    /// The last tasks that failed, panicked, timed out or were rejected,
    /// newest first (as many as [`BackgroundBuilder::recent_failures`] keeps;
    /// cancellations are not failures).
    pub fn recent_failures(&self) -> Vec<RecentFailure> {
        self.shared.failures.list()
    }

    /// Whether [`shutdown`](Background::shutdown) has begun.
    pub fn is_shutting_down(&self) -> bool {
        self.shared.is_closing()
    }
}

impl fmt::Debug for Background {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Background")
            .field("in_flight", &self.shared.registry.len())
            .field("shutting_down", &self.is_shutting_down())
            .field("default_config", &self.shared.default_config)
            .field("extensions", &self.shared.extensions)
            .finish()
    }
}
