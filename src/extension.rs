//! The extension point through which plug-ins (durable tasks) hook into a
//! `Background` without the core knowing them: told when a runtime is known,
//! when shutdown begins, and given time to drain before the shutdown hooks.

use std::any::Any;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::inner::Shared;

/// A plug-in of a `Background`.
pub(crate) trait Extension: Any + Send + Sync + fmt::Debug {
    /// A runtime is known (at build, or at the first `schedule` made inside
    /// one); called once.
    fn on_runtime(&self, shared: &Arc<Shared>, runtime: &Handle);

    /// Shutdown has begun: take no new work.
    fn on_close(&self);

    /// The tasks in flight have settled (or `deadline` has passed): finish
    /// what is left (write last outcomes, give back unstarted work) before
    /// the shutdown hooks run.
    fn drain(&self, deadline: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>>;

    fn as_any(&self) -> &dyn Any;

    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The plug-ins of a `Background`, one per type.
#[derive(Debug, Default)]
pub(crate) struct Extensions(Vec<Box<dyn Extension>>);

impl Extensions {
    /// The plug-in of type `E`, if there is one.
    #[cfg_attr(not(feature = "durable"), allow(dead_code))]
    pub(crate) fn get<E: Extension>(&self) -> Option<&E> {
        self.0.iter().find_map(|e| e.as_any().downcast_ref())
    }

    /// The plug-in of type `E`, made with `Default` if there is none (while
    /// a `Background` is being built).
    #[cfg_attr(not(feature = "durable"), allow(dead_code))]
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

    pub(crate) fn on_close(&self) {
        for extension in &self.0 {
            extension.on_close();
        }
    }

    pub(crate) async fn drain(&self, deadline: Instant) {
        for extension in &self.0 {
            extension.drain(deadline).await;
        }
    }
}
