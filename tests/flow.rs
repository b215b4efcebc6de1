//! Flow control: at most N tasks of a flow running, at most N starting per
//! period; the rest wait, queued, never failed. Paused time.

mod util;

use std::sync::Arc;
use std::time::Duration;

use axum_background::{Background, FlowLimit, TaskError, TaskHandle};
use std::sync::Mutex;

use tokio::sync::{Notify, Semaphore};
use tokio::time::Instant;
use util::assert_settled;

/// Awaits `future` for up to an hour of paused time.
async fn within_the_hour<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// Lets every task that can run now run (a probe scheduled now is polled
/// after every task ready before it, on a current-thread runtime).
async fn run_ready_tasks(background: &Background) {
    let probe = background.schedule(async {});
    within_the_hour("probe", probe.outcome())
        .await
        .expect("probe succeeds");
}

fn started(handles: &[TaskHandle]) -> usize {
    handles.iter().filter(|h| h.is_started()).count()
}

#[tokio::test(start_paused = true)]
async fn at_most_n_tasks_of_a_flow_run_at_once_and_the_rest_wait_queued() {
    let background = Background::builder()
        .flow("thumbnail", FlowLimit::new().concurrency(2))
        .build();
    // Each task waits for a permit the test hands out (a semaphore keeps
    // them for tasks not yet waiting).
    let release = Arc::new(Semaphore::new(0));
    let thumbnail = background.task().name("thumbnail").build();
    let handles: Vec<_> = (0..5)
        .map(|_| {
            let release = Arc::clone(&release);
            thumbnail.schedule(async move {
                release.acquire().await.expect("open").forget();
            })
        })
        .collect();
    run_ready_tasks(&background).await;
    assert_eq!(started(&handles), 2);
    let stats = background.stats();
    assert_eq!((stats.running, stats.queued), (2, 3), "{stats:?}");

    // Tasks of other names are not held back.
    let other = background.schedule(async {});
    within_the_hour("another task", other.outcome())
        .await
        .expect("it runs");

    // Each task that ends lets one more start.
    release.add_permits(1);
    run_ready_tasks(&background).await;
    assert_eq!(started(&handles), 3);
    release.add_permits(4);
    within_the_hour("idle", background.wait_idle()).await;
    assert!(
        handles
            .iter()
            .all(|h| matches!(h.try_outcome(), Some(Ok(()))))
    );
    assert_settled(background.stats());
}

#[tokio::test(start_paused = true)]
async fn at_most_n_tasks_of_a_flow_start_per_period() {
    let background = Background::builder()
        .flow(
            "mail-api",
            FlowLimit::new().rate(2, Duration::from_secs(10)),
        )
        .build();
    let origin = Instant::now();
    let starts = Arc::new(Mutex::new(Vec::new()));
    let mail = background.task().flow("mail-api").build();
    for _ in 0..5 {
        let starts = Arc::clone(&starts);
        mail.schedule(async move { starts.lock().unwrap().push(Instant::now()) });
    }
    within_the_hour("idle", background.wait_idle()).await;
    let mut offsets: Vec<u64> = starts
        .lock()
        .unwrap()
        .iter()
        .map(|at| (*at - origin).as_secs())
        .collect();
    offsets.sort_unstable();
    assert_eq!(offsets, [0, 0, 10, 10, 20], "started at");
}

#[tokio::test(start_paused = true)]
async fn a_task_cancelled_while_it_waits_for_its_flow_never_starts() {
    let background = Background::builder()
        .flow("report", FlowLimit::new().concurrency(1))
        .build();
    let release = Arc::new(Notify::new());
    let report = background.task().name("report").build();
    let first = {
        let release = Arc::clone(&release);
        report.schedule(async move { release.notified().await })
    };
    let second = report.schedule(async {});
    run_ready_tasks(&background).await;
    assert!(first.is_started() && !second.is_started());

    assert!(second.cancel().is_cancelled());
    let outcome = within_the_hour("the cancelled task", second.outcome()).await;
    assert!(matches!(outcome, Err(TaskError::Cancelled)), "{outcome:?}");
    assert!(!second.is_started());
    release.notify_one();
    within_the_hour("idle", background.wait_idle()).await;
    assert_settled(background.stats());
}
