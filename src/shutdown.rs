//! Graceful shutdown: [`Background::shutdown`], [`ShutdownReport`] and [`ShutdownHook`].

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::FutureExt;
use tokio::time::Instant;

use crate::background::{Background, Shared};
use crate::mode::ModeKind;
use crate::outcome::{OutcomeKind, ShutdownList};
use crate::registry::TaskCell;
use crate::{TaskError, TaskId, TaskInfo};

/// What [`Background::shutdown`] did with every task in flight when it began.
///
/// Each such task is in exactly one list, with its outcome. Names mean what
/// [`Stats`](crate::Stats)' names mean: [`completed`](Self::completed) is
/// success.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ShutdownReport {
    /// Ran to an end during shutdown, whatever the result (completed, failed,
    /// panicked, timed out; see each entry's outcome): shielded tasks that
    /// made it, and tasks that ended on their own before being cancelled.
    pub finished: Vec<ShutdownEntry>,
    /// Cancelled, or never started, before the deadline.
    pub cancelled: Vec<ShutdownEntry>,
    /// Still running (or waiting to start) at the deadline: cancelled then,
    /// their outcome is [`TaskError::Cancelled`]. A sync task among them
    /// cannot be interrupted: its thread runs on.
    pub overdue: Vec<ShutdownEntry>,
}

/// One task of a [`ShutdownReport`]: what it was, and how it ended.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ShutdownEntry {
    /// The task, as it was when it ended.
    pub info: TaskInfo,
    /// How it ended.
    pub outcome: Result<(), TaskError>,
}

impl ShutdownReport {
    /// The [`finished`](Self::finished) tasks that completed successfully.
    pub fn completed(&self) -> impl Iterator<Item = &ShutdownEntry> {
        self.finished.iter().filter(|entry| entry.outcome.is_ok())
    }

    /// How many tasks the report covers.
    pub fn len(&self) -> usize {
        self.finished.len() + self.cancelled.len() + self.overdue.len()
    }

    /// Whether no task was in flight when shutdown began.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A plugin run by [`Background::shutdown`] after the tasks have settled.
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

    async fn run(&self) {
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

impl Background {
    /// Shuts down gracefully, after the server has stopped taking requests
    /// (`axum::serve(..).with_graceful_shutdown(..)` has returned), and says
    /// what became of every task in flight.
    ///
    /// In order:
    /// 1. new schedules are rejected ([`TaskError::Rejected`], reported like
    ///    any failure; nothing panics);
    /// 2. unshielded tasks are cancelled: async ones are dropped at their next
    ///    poll, queued ones never start; a running sync task cannot be
    ///    interrupted, so its cancellation is only signalled and it is waited
    ///    for like a shielded one;
    /// 3. the rest run to their end, up to `grace`; those still in flight then
    ///    are cancelled and listed as [`overdue`](ShutdownReport::overdue). An
    ///    overdue async task's future is dropped before `shutdown` goes on
    ///    (were it blocking its thread, `shutdown` would wait for it, and log
    ///    an error after a second); a sync task's thread runs on;
    /// 4. the registered [`ShutdownHook`]s run;
    /// 5. the [`ShutdownReport`] lists each task that was in flight when
    ///    shutdown began in exactly one of its lists.
    ///
    /// With durable tasks (feature `durable`), this process's workers stop
    /// taking jobs at step 1; the jobs they run are shielded tasks like any
    /// other; before step 4 the workers write their last outcomes (allowed
    /// up to 2 s past `grace`) and put back the jobs they had taken but not
    /// started. Jobs not run stay in the store.
    ///
    /// When it returns, every task in the report has ended and, but for a
    /// sync task's thread that cannot be interrupted, its work is dropped.
    ///
    /// Calling it again returns a report of what was still in flight then.
    ///
    /// # Cancel safety
    ///
    /// Not cancel safe: dropping it part-way leaves new schedules rejected and
    /// the cancelled tasks cancelled, but skips the deadline and the hooks.
    pub async fn shutdown(&self, grace: Duration) -> ShutdownReport {
        let shared = &self.shared;
        // SeqCst: pairs with the load in `Shared::schedule` (see there).
        shared.closing.store(true, Ordering::SeqCst);
        // Durable workers stop taking jobs; those they hold run on, shielded.
        #[cfg(feature = "durable")]
        if let Some(durable) = &shared.durable {
            durable.workers.stop();
        }
        let deadline = Instant::now() + grace;
        let mut cells = shared.registry.cells();
        cells.sort_by_key(|cell| cell.id);
        tracing::info!(
            in_flight = cells.len(),
            ?grace,
            "background shutdown started"
        );

        // Queued ones first, so that a slot freed by cancelling a running
        // task cannot start an unshielded one that was waiting for it.
        let unshielded = || cells.iter().filter(|cell| !cell.shielded);
        for cell in unshielded() {
            if cell.try_finish_queued(Err(TaskError::Cancelled)) {
                cell.request_cancel();
                shared.report_dropped(cell, false);
            }
        }
        for cell in unshielded() {
            cell.request_cancel();
        }

        // Wait for every task to end, up to the deadline. Past it, a task
        // still running or waiting is cancelled as `cancel` does it, and is
        // overdue; one whose outcome is decided but whose handler is still
        // running is not.
        let mut overdue = HashSet::new();
        for cell in &cells {
            if tokio::time::timeout_at(deadline, cell_ended(cell))
                .await
                .is_ok()
            {
                continue;
            }
            if shared.cancel_now(cell).is_cancelled() {
                tracing::warn!(
                    task.id = %cell.id,
                    task.name = %cell.name(),
                    "task outlived the shutdown grace period"
                );
                overdue.insert(cell.id);
                // An async task's runner drops its future, then reports it:
                // once it has ended, its future is gone.
                ended_past_deadline(cell).await;
            }
        }

        // The workers write their last outcomes and put back the jobs they
        // had taken but not started; a short flush is allowed past `grace`.
        #[cfg(feature = "durable")]
        if let Some(durable) = &shared.durable {
            durable
                .workers
                .join(deadline, std::time::Duration::from_secs(2))
                .await;
        }

        shared.hooks.run().await;

        let mut report = ShutdownReport::default();
        for cell in cells {
            let outcome = cell
                .decided_outcome()
                .cloned()
                .unwrap_or(Err(TaskError::Cancelled));
            let list = if overdue.contains(&cell.id) {
                &mut report.overdue
            } else {
                match OutcomeKind::of(&outcome).shutdown_list() {
                    ShutdownList::Finished => &mut report.finished,
                    ShutdownList::Cancelled => &mut report.cancelled,
                }
            };
            list.push(ShutdownEntry {
                info: cell.info(),
                outcome,
            });
        }
        tracing::info!(
            finished = report.finished.len(),
            cancelled = report.cancelled.len(),
            overdue = report.overdue.len(),
            "background shutdown finished"
        );
        report
    }
}

impl Shared {
    /// Cancels one task on request: it ends now as [`TaskError::Cancelled`].
    /// A queued task never starts; a running async task is dropped at its next
    /// poll; a running sync task's cancellation fires but its thread runs on
    /// (its eventual result is ignored).
    pub(crate) fn cancel_now(self: &Arc<Self>, cell: &Arc<TaskCell>) -> CancelOutcome {
        // Claim first, then signal: the task's runner must find the outcome taken.
        match cell.try_finish(Err(TaskError::Cancelled)) {
            Some(true) if cell.mode == ModeKind::Async => {
                // Its runner reports once the future is dropped, unless its
                // work ended as this claim was made and the runner is gone.
                let report_here = cell.delegate_report();
                cell.request_cancel();
                if report_here {
                    self.report_dropped(cell, true);
                }
                CancelOutcome::Cancelled
            }
            Some(was_started) => {
                cell.request_cancel();
                self.report_dropped(cell, was_started);
                CancelOutcome::Cancelled
            }
            None => CancelOutcome::AlreadyEnded,
        }
    }
}

/// What [`TaskHandle::cancel`](crate::TaskHandle::cancel) or
/// [`Background::cancel`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
#[must_use = "says whether the task was cancelled or had already ended"]
pub enum CancelOutcome {
    /// The task was in flight and now ends as [`TaskError::Cancelled`].
    Cancelled,
    /// The task had already ended (or was ending): nothing changed.
    AlreadyEnded,
    /// No task with this id was ever scheduled by this `Background`.
    Unknown,
}

impl CancelOutcome {
    /// Whether this call cancelled the task.
    pub fn is_cancelled(self) -> bool {
        self == CancelOutcome::Cancelled
    }
}

impl Background {
    /// Cancels the task with this id: it ends as [`TaskError::Cancelled`],
    /// exactly once (logged, passed to its error handler, counted).
    ///
    /// A queued task never starts; a running async task is dropped at its next
    /// `.await`; a running sync task cannot be interrupted: its
    /// [`TaskContext`](crate::TaskContext) cancellation fires and its thread
    /// runs on, its eventual result ignored. Shielding protects from shutdown,
    /// not from this explicit request.
    pub fn cancel(&self, id: TaskId) -> CancelOutcome {
        match self.shared.registry.get(id) {
            Some(cell) => self.shared.cancel_now(&cell),
            None if self.shared.registry.was_issued(id) => CancelOutcome::AlreadyEnded,
            None => CancelOutcome::Unknown,
        }
    }
}

/// [`cell_ended`] for a task cancelled past the deadline: its runner drops
/// its future at the next poll. A poll that does not return (an async task
/// blocking its thread) holds shutdown up: say so, and keep waiting.
async fn ended_past_deadline(cell: &TaskCell) {
    const PATIENCE: Duration = Duration::from_secs(1);
    if tokio::time::timeout(PATIENCE, cell_ended(cell))
        .await
        .is_err()
    {
        tracing::error!(
            task.id = %cell.id,
            task.name = %cell.name(),
            "an overdue task's future has not been dropped after {PATIENCE:?}: \
             it blocks its thread; shutdown waits for it"
        );
        cell_ended(cell).await;
    }
}

/// Resolves when `cell` has ended (its handler, if any, has returned).
async fn cell_ended(cell: &TaskCell) {
    loop {
        let notified = cell.notified();
        if cell.is_ended() {
            return;
        }
        notified.await;
    }
}

/// Resolves on Ctrl-C or, on Unix, SIGTERM: the signal to pass to
/// `axum::serve(..).with_graceful_shutdown(..)`.
///
/// If a signal handler cannot be installed, that is logged and the signal is
/// never awaited (the other still is).
///
/// ```no_run
/// # async fn run(listener: tokio::net::TcpListener, app: axum::Router, background: axum_background::Background) -> std::io::Result<()> {
/// axum::serve(listener, app)
///     .with_graceful_shutdown(axum_background::shutdown_signal())
///     .await?;
/// let report = background.shutdown(std::time::Duration::from_secs(30)).await;
/// # Ok(()) }
/// ```
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("Ctrl-C received: shutting down"),
        () = terminate => tracing::info!("SIGTERM received: shutting down"),
    }
}
