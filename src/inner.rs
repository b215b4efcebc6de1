//! [`Shared`]: what a `Background`, its clones, its scopes and its tasks
//! share. Data at the bottom of the module graph: the flow (schedule, run,
//! end, cancel, shutdown) lives in the files named after it.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};

use tokio::runtime::Handle;

use crate::config::TaskConfig;
use crate::extension::Extensions;
use crate::hook::ShutdownHooks;
use crate::limits::Limits;
use crate::registry::Registry;

/// Everything a `Background` and its clones share.
pub(crate) struct Shared {
    pub(crate) registry: Registry,
    pub(crate) default_config: TaskConfig,
    /// `Some` once a runtime is known: at build time, or at the first
    /// `schedule` made inside one.
    runtime: OnceLock<Handle>,
    /// Set when shutdown begins; never cleared.
    closing: AtomicBool,
    pub(crate) hooks: ShutdownHooks,
    pub(crate) limits: Limits,
    /// Metric handles by task name and phase.
    #[cfg(feature = "metrics")]
    pub(crate) instruments: crate::metrics::Instruments,
    pub(crate) extensions: Extensions,
}

impl Shared {
    pub(crate) fn new(
        default_config: TaskConfig,
        hooks: ShutdownHooks,
        limits: Limits,
        extensions: Extensions,
    ) -> Self {
        Shared {
            registry: Registry::default(),
            default_config,
            runtime: OnceLock::new(),
            closing: AtomicBool::new(false),
            hooks,
            limits,
            #[cfg(feature = "metrics")]
            instruments: crate::metrics::Instruments::default(),
            extensions,
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
