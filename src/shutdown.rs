//! Graceful shutdown: [`Background::shutdown`], [`ShutdownReport`], and the
//! [`ShutdownHook`]s it runs.

#[doc(hidden)]
pub use crate::hook::{FnHook, PluginHook, SharedShutdownHook};
pub use crate::hook::{IntoShutdownHook, ShutdownHook};

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::background::Background;
use crate::cancel;
use crate::cell::TaskCell;
use crate::end::{self, Ending, How};
use crate::inner::Shared;
use crate::outcome::{OutcomeKind, ShutdownList};
use crate::registry::Registry;
use crate::{TaskError, TaskInfo};

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
    /// Whether it was written to the durable store to run on the next start
    /// (a task of a type registered with `persist_on_shutdown`, cut off).
    pub stored: bool,
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

    /// Lists `cell`, a task that has ended (or whose outcome is decided), by
    /// its outcome, or as overdue.
    fn list(&mut self, cell: &TaskCell, overdue: bool) {
        let outcome = cell
            .decided_outcome()
            .cloned()
            .unwrap_or(Err(TaskError::Cancelled));
        let list = if overdue {
            &mut self.overdue
        } else {
            match OutcomeKind::of(&outcome).shutdown_list() {
                ShutdownList::Finished => &mut self.finished,
                ShutdownList::Cancelled => &mut self.cancelled,
            }
        };
        list.push(ShutdownEntry {
            info: cell.info(),
            outcome,
            stored: false,
        });
    }

    /// Every entry, list by list.
    fn entries_mut(&mut self) -> impl Iterator<Item = &mut ShutdownEntry> {
        self.finished
            .iter_mut()
            .chain(&mut self.cancelled)
            .chain(&mut self.overdue)
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
        // Plug-ins take no new work first (periodic schedules stop, so none
        // of their ticks is rejected; durable workers stop taking jobs, those
        // they hold run on, shielded); then new schedules are rejected.
        shared.extensions.close().await;
        shared.close();
        let deadline = Instant::now() + grace;
        let registry = &shared.registry;
        let cells = registry.entries();
        tracing::info!(
            in_flight = cells.len(),
            ?grace,
            "background shutdown started"
        );

        let to_cancel = cancel_unshielded(shared, &cells);

        // Room for what most shutdowns see: unshielded tasks cancelled,
        // shielded ones finished.
        let mut report = ShutdownReport {
            finished: Vec::with_capacity(cells.len() - to_cancel),
            cancelled: Vec::with_capacity(to_cancel),
            overdue: Vec::new(),
        };
        // Wait for every task to end, up to the deadline, and list each as it
        // ends (while its cell is still in the cache). Past the deadline, a
        // task still running or waiting is cancelled as `cancel` does it, and
        // is overdue; one whose outcome is decided but whose handler is still
        // running is not. One timer for them all. The cells are let go only
        // at the end: freed while runners still end tasks, they would contend
        // with them for the allocator (a third slower, at a million tasks).
        let mut listed = 0;
        let _ = tokio::time::timeout_at(deadline, async {
            for cell in &cells {
                cell_ended(registry, cell).await;
                report.list(cell, false);
                listed += 1;
            }
        })
        .await;
        for cell in &cells[listed..] {
            let overdue = !cell.is_ended() && cancel::cancel(shared, cell).is_cancelled();
            if overdue {
                tracing::warn!(
                    task.id = %cell.id,
                    task.name = %cell.name(),
                    "task outlived the shutdown grace period"
                );
                // An async task's runner drops its future, then reports it:
                // once it has ended, its future is gone.
                ended_past_deadline(registry, cell).await;
            }
            report.list(cell, overdue);
        }

        // Plug-ins finish what is left (durable workers write their last
        // outcomes and put back the jobs they had not started).
        shared.extensions.drain(deadline).await;
        if !shared.extensions.is_empty() {
            for entry in report.entries_mut() {
                entry.stored = shared.extensions.stored(entry.info.id);
            }
        }

        shared.hooks.run().await;

        tracing::info!(
            finished = report.finished.len(),
            cancelled = report.cancelled.len(),
            overdue = report.overdue.len(),
            "background shutdown finished"
        );
        report
    }
}

/// Ends the unshielded tasks among `cells` that are queued, and asks the
/// running ones to stop (their runners end them); returns how many.
///
/// Where a running task holds a slot another waits for (a limit, a flow),
/// every queued one first: cancelling a running task must not start an
/// unshielded one waiting for its slot. Elsewhere in one visit of each task.
fn cancel_unshielded(shared: &Arc<Shared>, cells: &[Arc<TaskCell>]) -> usize {
    let unshielded = || cells.iter().filter(|cell| !cell.shielded);
    let end_queued = |cell| end::end(shared, cell, Err(TaskError::Cancelled), How::CancelQueued);
    let mut count = 0;
    if shared.limits.queues() || !shared.flows.is_empty() {
        for cell in unshielded() {
            let _ = end_queued(cell);
            count += 1;
        }
        for cell in unshielded() {
            cell.request_cancel();
        }
    } else {
        for cell in unshielded() {
            if let Ending::Lost = end_queued(cell) {
                cell.request_cancel();
            }
            count += 1;
        }
    }
    count
}

/// [`cell_ended`] for a task cancelled past the deadline: its runner drops
/// its future at the next poll. A poll that does not return (an async task
/// blocking its thread) holds shutdown up: say so, and keep waiting.
async fn ended_past_deadline(registry: &Registry<TaskCell>, cell: &TaskCell) {
    const PATIENCE: Duration = Duration::from_secs(1);
    if tokio::time::timeout(PATIENCE, cell_ended(registry, cell))
        .await
        .is_err()
    {
        tracing::error!(
            task.id = %cell.id,
            task.name = %cell.name(),
            "an overdue task's future has not been dropped after {PATIENCE:?}: \
             it blocks its thread; shutdown waits for it"
        );
        cell_ended(registry, cell).await;
    }
}

/// Resolves when `cell`, a task of `registry`, has ended (its handler, if
/// any, has returned).
async fn cell_ended(registry: &Registry<TaskCell>, cell: &TaskCell) {
    // Most have, by the time shutdown looks: those need no `Notify`.
    if cell.is_ended() {
        return;
    }
    // Most of the others are about to, their runners queued behind shutdown
    // on its worker: let them run first, rather than be woken for each.
    tokio::task::yield_now().await;
    if cell.is_ended() {
        return;
    }
    loop {
        let ended = cell.ended_notified(registry);
        if cell.is_ended() {
            return;
        }
        ended.await;
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
