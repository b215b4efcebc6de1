//! Cancelling one task on request: `TaskHandle::cancel` and `Background::cancel`.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum_background::{
    Background, CancelOutcome, TaskConfig, TaskContext, TaskError, TaskId, TaskInfo,
};
use tokio::sync::{Notify, oneshot};
use util::within;

/// A background whose default handler counts the cancellations it sees.
fn counting_background() -> (Background, Arc<AtomicUsize>) {
    let cancelled = Arc::new(AtomicUsize::new(0));
    let count = Arc::clone(&cancelled);
    let background = Background::builder()
        .default_config(
            TaskConfig::builder()
                .on_error(move |_: &TaskInfo, error: &TaskError| {
                    if error.is_cancelled() {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                })
                .build(),
        )
        .build();
    (background, cancelled)
}

/// Sets its flag when dropped: proves a future was dropped, not left pending.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn cancelling_a_running_async_task_drops_its_future_once() {
    let (background, handler_calls) = counting_background();
    let (dropped, finished) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let started = Arc::new(Notify::new());
    let (flag, done, go) = (
        DropFlag(Arc::clone(&dropped)),
        Arc::clone(&finished),
        Arc::clone(&started),
    );
    let handle = background.schedule(async move {
        let _flag = flag;
        go.notify_one();
        std::future::pending::<()>().await;
        done.store(true, Ordering::SeqCst);
    });
    within("the task to start", started.notified()).await;

    assert_eq!(handle.cancel(), CancelOutcome::Cancelled);
    assert!(matches!(
        within("the outcome", handle.outcome()).await,
        Err(TaskError::Cancelled)
    ));
    within("idle", background.wait_idle()).await;
    assert!(dropped.load(Ordering::SeqCst), "the future was dropped");
    assert!(!finished.load(Ordering::SeqCst), "its work never completed");
    assert_eq!(handler_calls.load(Ordering::SeqCst), 1);
    let stats = background.stats();
    assert_eq!((stats.cancelled, stats.running, stats.queued), (1, 0, 0));
    assert!(background.in_flight().is_empty());

    assert_eq!(
        handle.cancel(),
        CancelOutcome::AlreadyEnded,
        "a second cancel is a no-op"
    );
    assert_eq!(handler_calls.load(Ordering::SeqCst), 1);
    assert_eq!(background.stats().cancelled, 1);
}

#[tokio::test]
async fn cancelling_a_queued_task_means_it_never_starts() {
    // One slot, taken by a blocker: the next task waits, queued.
    let background = Background::builder().max_in_flight(1).build();
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let blocker = background.schedule(async move { gate.notified().await });
    within("the blocker to start", blocker.started()).await;
    let ran = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ran);
    let queued = background.schedule(async move { flag.store(true, Ordering::SeqCst) });
    assert!(!queued.is_started());

    assert_eq!(background.cancel(queued.id()), CancelOutcome::Cancelled);
    assert!(matches!(
        within("the outcome", queued.outcome()).await,
        Err(TaskError::Cancelled)
    ));
    release.notify_one();
    within("idle", background.wait_idle()).await;
    assert!(
        !ran.load(Ordering::SeqCst),
        "a cancelled queued task never runs"
    );
    assert!(!queued.is_started());
    let stats = background.stats();
    assert_eq!((stats.completed, stats.cancelled), (1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelling_a_running_sync_task_fires_its_token_and_ends_it_now() {
    let (background, handler_calls) = counting_background();
    let (started_tx, started_rx) = oneshot::channel();
    let (saw_tx, saw_rx) = oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let handle = background.schedule(move || {
        let token = TaskContext::current()
            .expect("inside a task")
            .cancellation_token();
        let _ = started_tx.send(());
        // The thread cannot be interrupted; it sees its token fire.
        while !token.is_cancelled() {
            std::thread::yield_now();
        }
        let _ = saw_tx.send(());
        let _ = release_rx.recv();
    });
    within("the task to start", started_rx).await.unwrap();

    assert_eq!(handle.cancel(), CancelOutcome::Cancelled);
    within("the task to see its token", saw_rx).await.unwrap();
    // Ended now, while its thread still runs.
    assert!(matches!(
        within("the outcome", handle.outcome()).await,
        Err(TaskError::Cancelled)
    ));
    within("idle", background.wait_idle()).await;
    assert_eq!(handler_calls.load(Ordering::SeqCst), 1);

    // When the thread finishes, nothing is counted or reported again.
    release_tx.send(()).unwrap();
    assert_eq!(background.stats().cancelled, 1);
    assert_eq!(background.stats().completed, 0);
}

#[tokio::test]
async fn cancelling_an_ended_or_unknown_task_says_so() {
    let background = Background::new();
    let handle = background.schedule(async {});
    within("the outcome", handle.outcome()).await.unwrap();

    assert_eq!(handle.cancel(), CancelOutcome::AlreadyEnded);
    assert_eq!(background.cancel(handle.id()), CancelOutcome::AlreadyEnded);
    let never = TaskId::from_u64(handle.id().as_u64() + 1000);
    assert_eq!(background.cancel(never), CancelOutcome::Unknown);
    assert!(!background.cancel(never).is_cancelled());
    assert_eq!(background.stats().completed, 1);
    assert_eq!(background.stats().cancelled, 0);
}

/// Cancels racing the end of the work, many times over: each task ends once,
/// as completed or as cancelled (its handler told), and none is left in
/// flight. (A cancel that claims a task just as its work returns leaves the
/// report to a runner that may already be gone; then the canceller reports.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_racing_the_end_of_the_work_end_each_task_once() {
    const TASKS: u64 = 2_000;
    let (background, handler_saw) = counting_background();
    let mut cancelled = 0;
    for _ in 0..TASKS {
        let handle = background.schedule(tokio::task::yield_now());
        // Once a worker has picked it up, race its end.
        within("the task to start", async {
            while !handle.is_started() {
                tokio::task::yield_now().await;
            }
        })
        .await;
        if handle.cancel().is_cancelled() {
            cancelled += 1;
        }
    }
    within("every task to end", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!(stats.completed + stats.cancelled, TASKS, "{stats:?}");
    assert_eq!(stats.cancelled, cancelled, "{stats:?}");
    assert_eq!(handler_saw.load(Ordering::SeqCst) as u64, cancelled);
}

/// Says which task is current when it is dropped.
struct DropWitness(Option<oneshot::Sender<Option<TaskId>>>);

impl Drop for DropWitness {
    fn drop(&mut self) {
        if let Some(tell) = self.0.take() {
            let _ = tell.send(TaskContext::current().map(|context| context.info().id));
        }
    }
}

#[tokio::test]
async fn a_task_is_current_while_it_runs_and_while_its_future_is_dropped() {
    let background = Background::new();
    let (running_tell, running_as) = oneshot::channel();
    let (dropped_tell, dropped_as) = oneshot::channel();
    let handle = background.schedule(async move {
        let _witness = DropWitness(Some(dropped_tell));
        let _ = running_tell.send(TaskContext::current().map(|context| context.info().id));
        std::future::pending::<()>().await;
    });
    let running_as = within("the task to run", running_as).await.unwrap();
    assert_eq!(running_as, Some(handle.id()));
    assert!(TaskContext::current().is_none(), "the test is not a task");

    assert!(handle.cancel().is_cancelled());
    let dropped_as = within("its future to be dropped", dropped_as)
        .await
        .unwrap();
    assert_eq!(dropped_as, Some(handle.id()));
    assert!(
        TaskContext::current().is_none(),
        "the test is still not a task"
    );
}
