//! [`Background`]: the runtime that owns the registry, the default config and
//! the tokio handle.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tracing::Instrument;

use crate::config::TaskConfig;
use crate::error::RejectReason;
use crate::extractor::{TaskBuilder, Tasks};
use crate::handle::TaskHandle;
use crate::layer::BackgroundLayer;
use crate::mode::Mode;
use crate::registry::{Membership, NewTask, Registry, Stats, TaskCell, WaitIdle};
use crate::request::RequestScope;
use crate::runner;
use crate::shutdown::ShutdownHooks;
use crate::task::IntoBackgroundTask;
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
}

/// Builds a [`Background`]; from [`Background::builder`].
#[must_use]
#[derive(Debug, Default)]
pub struct BackgroundBuilder {
    default_config: TaskConfig,
    runtime: Option<Handle>,
    hooks: ShutdownHooks,
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
        Background {
            shared: Arc::new(Shared {
                registry: Registry::default(),
                default_config: self.default_config,
                runtime,
                closing: AtomicBool::new(false),
                hooks: self.hooks,
            }),
        }
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
    pub fn schedule<T, M>(&self, task: T) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        self.shared.schedule(task, None, Phase::Immediate, None)
    }

    /// Configures one task outside any request: `background.task().name("x").build().schedule(t)`.
    pub fn task(&self) -> TaskBuilder {
        self.tasks().task()
    }

    /// A [`Tasks`] scheduler not tied to any request: every phase starts at once.
    pub fn tasks(&self) -> Tasks {
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
    pub fn wait_idle(&self) -> WaitIdle<'_> {
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
        Some(self.runtime.get_or_init(|| handle))
    }

    /// The one path every task takes into the crate.
    pub(crate) fn schedule<T, M>(
        self: &Arc<Self>,
        task: T,
        scope: Option<&Arc<RequestScope>>,
        phase: Phase,
        config: Option<TaskConfig>,
    ) -> TaskHandle
    where
        T: IntoBackgroundTask<M>,
    {
        let config = config.unwrap_or_default();
        let default = &self.default_config;
        // Names rank: per task, the task type's own, the default config's, derived.
        let name = config
            .name
            .or_else(|| task.own_name())
            .or_else(|| default.name.clone())
            .unwrap_or_else(|| T::derived_name().into());
        let cell = Arc::new(TaskCell::new(NewTask {
            id: self.registry.next_id(),
            name,
            phase,
            mode: <T::Mode as Mode>::KIND,
            shielded: config.shield.or(default.shield).unwrap_or(false),
            request: scope.and_then(|scope| scope.request_meta()),
            on_error: config.on_error.or_else(|| default.on_error.clone()),
        }));
        let handle = TaskHandle::new(Arc::clone(&cell));
        // Insert before checking `closing`: shutdown sets `closing` before it
        // reads the registry, so a task either is seen by shutdown or sees
        // `closing` here.
        self.registry.insert(&cell);
        let membership = Membership {
            shared: Arc::clone(self),
            cell,
        };
        let reject = if self.closing.load(Ordering::SeqCst) {
            Some(RejectReason::ShuttingDown)
        } else if self.runtime().is_none() {
            Some(RejectReason::NoRuntime)
        } else {
            None
        };
        if let Some(reason) = reject {
            if let Some(was_started) = membership.cell.try_finish(Err(TaskError::Rejected(reason)))
            {
                self.report_dropped(&membership.cell, was_started);
            }
            return handle;
        }

        let span = tracing::debug_span!(
            "background_task",
            id = %membership.cell.id,
            name = %membership.cell.name,
            phase = %phase,
            mode = %<T::Mode as Mode>::KIND,
        );
        if !span.is_disabled() {
            match scope {
                Some(scope) => span.follows_from(&scope.span),
                None => span.follows_from(tracing::Span::current()),
            };
        }
        let work = task.into_work();
        let start = move || {
            let shared = Arc::clone(&membership.shared);
            if let Some(runtime) = shared.runtime() {
                T::Mode::spawn(runtime, runner::run(membership, work).instrument(span));
            }
            // No runtime cannot happen here (checked above); were it so,
            // dropping `membership` would report the task as cancelled.
        };
        match scope {
            Some(scope) if phase != Phase::Immediate => scope.at(phase, Box::new(start)),
            _ => start(),
        }
        handle
    }
}
