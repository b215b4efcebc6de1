//! [`Shared`]: what a `Background`, its clones, its scopes and its tasks
//! share, and the extension point through which plug-ins (periodic
//! schedules, durable tasks) hook into it without the core knowing them. Data: the flow (schedule,
//! run, end, cancel, shutdown) lives in the files named after it.

use std::any::Any;
use std::borrow::Cow;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::blocking::Detection;
use crate::cell::{CellPool, TaskCell};
use crate::failures::RecentFailures;
use crate::flow::Flow;
use crate::hook::ShutdownHooks;
use crate::limits::Limits;
use crate::metrics::Instruments;
use crate::options::TaskOptions;
use crate::registry::Registry;
use crate::unique::UniqueKeys;

/// Everything a `Background` and its clones share.
pub(crate) struct Shared {
    pub(crate) registry: Registry<TaskCell>,
    /// Cells of ended tasks, kept for the next ones.
    pub(crate) cells: CellPool,
    pub(crate) default_config: TaskOptions,
    /// `Some` once a runtime is known: at build time, or at the first
    /// `schedule` made inside one.
    runtime: OnceLock<Handle>,
    /// Set when shutdown begins; never cleared.
    closing: AtomicBool,
    pub(crate) hooks: ShutdownHooks,
    pub(crate) limits: Limits,
    /// Metric handles by task name and phase.
    pub(crate) instruments: Instruments,
    /// Plug-ins (durable tasks), told when a runtime is known and when
    /// shutdown begins, and given time to drain.
    pub(crate) extensions: Extensions,
    /// The keys of the unique tasks in flight.
    pub(crate) unique: UniqueKeys,
    /// The flows, by name or key.
    pub(crate) flows: HashMap<Cow<'static, str>, Arc<Flow>>,
    /// The last failures, for operators.
    pub(crate) failures: RecentFailures,
    /// `Some` when polls that hold their thread are detected.
    pub(crate) detection: Option<Detection>,
}

impl Shared {
    pub(crate) fn new(
        default_config: TaskOptions,
        hooks: ShutdownHooks,
        limits: Limits,
        extensions: Extensions,
        flows: HashMap<Cow<'static, str>, Arc<Flow>>,
        failures: RecentFailures,
        detection: Option<Detection>,
    ) -> Self {
        Shared {
            registry: Registry::default(),
            cells: CellPool::new(),
            default_config,
            runtime: OnceLock::new(),
            closing: AtomicBool::new(false),
            hooks,
            limits,
            instruments: Instruments::default(),
            extensions,
            unique: UniqueKeys::default(),
            flows,
            failures,
            detection,
        }
    }

    /// The runtime tasks run on: the one given at build time, else the one
    /// the first caller inside a runtime is on. The extensions hear of it
    /// once.
    pub(crate) fn runtime(self: &Arc<Self>) -> Option<&Handle> {
        if let Some(handle) = self.runtime.get() {
            return Some(handle);
        }
        self.set_runtime(Handle::try_current().ok()?)
    }

    pub(crate) fn set_runtime(self: &Arc<Self>, handle: Handle) -> Option<&Handle> {
        let mut first = false;
        let handle = self.runtime.get_or_init(|| {
            first = true;
            handle
        });
        if first {
            self.extensions.on_runtime(self, handle);
        }
        Some(handle)
    }

    /// Whether shutdown has begun.
    pub(crate) fn is_closing(&self) -> bool {
        // SeqCst, paired with `close`: see `schedule::admit`.
        self.closing.load(Ordering::SeqCst)
    }

    /// Marks shutdown begun: from here on, `schedule` rejects.
    pub(crate) fn close(&self) {
        // SeqCst: a task is either registered before this store (and seen by
        // shutdown's read of the registry) or sees `closing` in `admit`.
        self.closing.store(true, Ordering::SeqCst);
    }
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared")
            .field("in_flight", &self.registry.len())
            .field("closing", &self.is_closing())
            .field("default_config", &self.default_config)
            .finish_non_exhaustive()
    }
}

/// A plug-in of a `Background`.
pub(crate) trait Extension: Any + Send + Sync + fmt::Debug {
    /// A runtime is known (at build, or at the first `schedule` made inside
    /// one); called once.
    fn on_runtime(&self, shared: &Arc<Shared>, runtime: &Handle);

    /// Shutdown is beginning: take no new work. Awaited before new
    /// schedules are rejected, so that work already taken (a periodic tick,
    /// a job out of the store) is still admitted.
    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// The tasks in flight have settled (or `deadline` has passed): finish
    /// what is left (write last outcomes, give back unstarted work) before
    /// the shutdown hooks run.
    fn drain(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    /// Whether the drain wrote the task with this id to a store, to run on
    /// the next start.
    fn stored(&self, _id: crate::TaskId) -> bool {
        false
    }

    fn as_any(&self) -> &dyn Any;

    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The plug-ins of a `Background`, one per type.
#[derive(Debug, Default)]
pub(crate) struct Extensions(Vec<Box<dyn Extension>>);

impl Extensions {
    /// The plug-in of type `E`, if there is one.
    pub(crate) fn get<E: Extension>(&self) -> Option<&E> {
        self.0.iter().find_map(|e| e.as_any().downcast_ref())
    }

    /// The plug-in of type `E`, made with `Default` if there is none (while
    /// a `Background` is being built).
    pub(crate) fn get_or_default<E: Extension + Default>(&mut self) -> &mut E {
        let at = match self.0.iter().position(|e| e.as_any().is::<E>()) {
            Some(at) => at,
            None => {
                self.0.push(Box::new(E::default()));
                self.0.len() - 1
            }
        };
        match self.0[at].as_any_mut().downcast_mut() {
            Some(extension) => extension,
            // `at` holds an `E`: found by type, or just pushed.
            None => unreachable!("the extension at {at} is an E"),
        }
    }

    pub(crate) fn on_runtime(&self, shared: &Arc<Shared>, runtime: &Handle) {
        for extension in &self.0 {
            extension.on_runtime(shared, runtime);
        }
    }

    pub(crate) async fn close(&self) {
        for extension in &self.0 {
            extension.close().await;
        }
    }

    /// Whether there is no plug-in.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Whether a plug-in wrote the task with this id to a store at shutdown.
    pub(crate) fn stored(&self, id: crate::TaskId) -> bool {
        self.0.iter().any(|extension| extension.stored(id))
    }

    pub(crate) async fn drain(&self, deadline: Instant) {
        for extension in &self.0 {
            extension.drain(deadline).await;
        }
    }
}
