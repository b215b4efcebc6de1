//! State shared with tasks: one value per type, kept by a `Background` and
//! reached by a running task through [`TaskContext::state`].

use std::any::{Any, TypeId};
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tokio::runtime::Handle;
use tokio::time::Instant;

use crate::background::BackgroundBuilder;
use crate::context::TaskContext;
use crate::inner::{Extension, Shared};

/// The values given to [`BackgroundBuilder::state`], by type.
#[derive(Default)]
pub(crate) struct States(HashMap<TypeId, Box<dyn Any + Send + Sync>>);

impl fmt::Debug for States {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("States")
            .field("types", &self.0.len())
            .finish()
    }
}

impl Extension for States {
    fn on_runtime(&self, _: &Arc<Shared>, _: &Handle) {}

    fn close(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }

    fn drain(&self, _: Instant) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(std::future::ready(()))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

impl BackgroundBuilder {
    /// Keeps `state` for this `Background`'s tasks: a running task gets a
    /// clone with [`TaskContext::state`]. One value per type (a second
    /// replaces the first); share what is costly to clone in an `Arc`.
    ///
    /// This is how a durable task, rebuilt from the store with only its
    /// fields, reaches a database pool or an HTTP client; and two
    /// `Background`s (of two tests, say) each give their own.
    pub fn state<S: Clone + Send + Sync + 'static>(mut self, state: S) -> Self {
        self.extensions
            .get_or_default::<States>()
            .0
            .insert(TypeId::of::<S>(), Box::new(state));
        self
    }
}

impl TaskContext {
    /// A clone of the state of type `S` that the running task's `Background`
    /// keeps ([`BackgroundBuilder::state`]).
    ///
    /// ```
    /// use axum_background::{Background, BackgroundTask, BoxError, TaskContext, mode};
    ///
    /// #[derive(Clone)]
    /// struct Mailer { from: &'static str }
    ///
    /// struct Welcome { to: String }
    ///
    /// impl BackgroundTask for Welcome {
    ///     type Mode = mode::Async;
    ///     async fn run(self) -> Result<(), BoxError> {
    ///         let mailer: Mailer = TaskContext::state()?;
    ///         println!("mail from {} to {}", mailer.from, self.to);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() {
    /// let background = Background::builder().state(Mailer { from: "shop@example.com" }).build();
    /// let handle = background.schedule(Welcome { to: "ada@example.com".into() });
    /// assert!(handle.outcome().await.is_ok());
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`MissingState`] outside a task, or when the `Background` keeps no
    /// value of this type: its message says which.
    pub fn state<S: Clone + Send + Sync + 'static>() -> Result<S, MissingState> {
        let missing = |inside_a_task| MissingState {
            type_name: std::any::type_name::<S>(),
            inside_a_task,
        };
        let context = TaskContext::current().ok_or_else(|| missing(false))?;
        // The running task's `Background` is alive (its runner holds it);
        // were it gone, it would keep no value either.
        let shared = context.cell.background().ok_or_else(|| missing(true))?;
        shared
            .extensions
            .get::<States>()
            .and_then(|states| states.0.get(&TypeId::of::<S>()))
            .and_then(|state| state.downcast_ref::<S>())
            .cloned()
            .ok_or_else(|| missing(true))
    }
}

/// No state of the asked type: from [`TaskContext::state`].
#[derive(Debug, Clone)]
pub struct MissingState {
    type_name: &'static str,
    inside_a_task: bool,
}

impl fmt::Display for MissingState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inside_a_task {
            write!(
                f,
                "no state of type `{}` on this task's Background: add `.state(value)` to \
                 `Background::builder()`",
                self.type_name
            )
        } else {
            write!(
                f,
                "no task is running here: `TaskContext::state::<{}>()` is for a task's own code",
                self.type_name
            )
        }
    }
}

impl std::error::Error for MissingState {}
