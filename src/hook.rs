//! Shutdown hooks: [`ShutdownHook`] plugins and closures, run by
//! [`Background::shutdown`](crate::Background::shutdown) after the tasks
//! have settled.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use futures_util::FutureExt;

/// A plugin run by [`Background::shutdown`](crate::Background::shutdown) after the tasks have settled.
///
/// Closures work too: any `Fn() -> impl Future<Output = ()>` (such as an
/// `async fn flush_metrics()`) is a hook.
///
/// ```
/// use axum_background::{Background, ShutdownHook};
///
/// struct FlushLogs;
///
/// impl ShutdownHook for FlushLogs {
///     async fn on_shutdown(&self) { /* flush */ }
/// }
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let background = Background::builder()
///     .shutdown_hook(FlushLogs)
///     .shutdown_hook(|| async { println!("bye") })
///     .build();
/// # }
/// ```
pub trait ShutdownHook: Send + Sync + 'static {
    /// Runs once, during shutdown.
    fn on_shutdown(&self) -> impl Future<Output = ()> + Send;
}

type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

trait DynShutdownHook: Send + Sync + 'static {
    fn on_shutdown_boxed(&self) -> BoxFuture<'_>;
}

impl<H: ShutdownHook> DynShutdownHook for H {
    fn on_shutdown_boxed(&self) -> BoxFuture<'_> {
        Box::pin(self.on_shutdown())
    }
}

/// Anything `shutdown_hook` accepts: a [`ShutdownHook`], or a
/// `Fn() -> impl Future<Output = ()>`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be used as a shutdown hook",
    note = "shutdown_hook accepts a type implementing `ShutdownHook`, or a `Fn() -> impl Future<Output = ()> + Send` such as an `async fn`"
)]
pub trait IntoShutdownHook<M>: Send + Sync + 'static {
    #[doc(hidden)]
    fn into_hook(self) -> SharedShutdownHook;
}

#[doc(hidden)]
#[derive(Debug)]
pub enum PluginHook {}
#[doc(hidden)]
#[derive(Debug)]
pub enum FnHook {}

/// A type-erased shutdown hook.
#[doc(hidden)]
#[derive(Clone)]
pub struct SharedShutdownHook {
    hook: Arc<dyn DynShutdownHook>,
    type_name: &'static str,
}

impl fmt::Debug for SharedShutdownHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("SharedShutdownHook")
            .field(&self.type_name)
            .finish()
    }
}

impl<H: ShutdownHook> IntoShutdownHook<PluginHook> for H {
    fn into_hook(self) -> SharedShutdownHook {
        SharedShutdownHook {
            hook: Arc::new(self),
            type_name: std::any::type_name::<H>(),
        }
    }
}

struct FnShutdownHook<F>(F);

impl<F, Fut> ShutdownHook for FnShutdownHook<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn on_shutdown(&self) -> impl Future<Output = ()> + Send {
        (self.0)()
    }
}

impl<F, Fut> IntoShutdownHook<FnHook> for F
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send,
{
    fn into_hook(self) -> SharedShutdownHook {
        SharedShutdownHook {
            hook: Arc::new(FnShutdownHook(self)),
            type_name: std::any::type_name::<F>(),
        }
    }
}

/// The hooks a `Background` runs at shutdown, in registration order.
#[derive(Clone, Default)]
pub(crate) struct ShutdownHooks(Vec<SharedShutdownHook>);

impl ShutdownHooks {
    pub(crate) fn push<H: IntoShutdownHook<M>, M>(&mut self, hook: H) {
        self.0.push(hook.into_hook());
    }

    pub(crate) async fn run(&self) {
        for hook in &self.0 {
            let run = std::panic::AssertUnwindSafe(hook.hook.on_shutdown_boxed()).catch_unwind();
            if run.await.is_err() {
                tracing::error!(hook = hook.type_name, "shutdown hook panicked");
            }
        }
    }
}

impl fmt::Debug for ShutdownHooks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.0.iter().map(|hook| hook.type_name))
            .finish()
    }
}
