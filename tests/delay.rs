//! Delayed tasks (`delay`, `at`): queued until they fall due, listed with
//! their due time, cancellable, holding no slot, and settled by shutdown.
//! Paused time throughout: the clock moves only when the test moves it.

mod util;

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::routing::get;
use axum_background::{Background, OverflowPolicy, TaskError, TaskHandle, Tasks};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tower::ServiceExt;
use util::{assert_settled, within};

const TEN_MINUTES: Duration = Duration::from_secs(600);

/// Awaits `future` for up to an hour of paused time (longer than any delay
/// here; a bug still fails at once, the clock jumping to the deadline).
async fn within_the_hour<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// Schedules a task that does nothing, `delay` from now, and lets it reach
/// its wait.
async fn delayed(background: &Background, delay: Duration, shield: bool) -> TaskHandle {
    let handle = background
        .task()
        .shield(shield)
        .delay(delay)
        .build()
        .schedule(async {});
    run_ready_tasks(background).await;
    handle
}

/// Lets every task that can run now run: on a current-thread runtime a
/// probe task scheduled now is polled after every task ready before it.
async fn run_ready_tasks(background: &Background) {
    let probe = background.schedule(async {});
    within("probe task", probe.outcome())
        .await
        .expect("probe task succeeds");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_task_is_queued_until_it_falls_due_then_runs() {
    let background = Background::new();
    let handle = background
        .task()
        .delay(TEN_MINUTES)
        .build()
        .schedule(async {});

    run_ready_tasks(&background).await;
    assert!(!handle.is_started());
    let info = handle.info();
    let due_in = info.due_at.expect("listed with its due time") - info.scheduled_at;
    assert!(
        due_in.abs_diff(TEN_MINUTES) < Duration::from_secs(1),
        "due {due_in:?} after scheduling"
    );
    let stats = background.stats();
    assert_eq!((stats.queued, stats.running), (1, 0), "{stats:?}");
    assert_eq!(background.in_flight().len(), 1);

    tokio::time::advance(TEN_MINUTES - Duration::from_secs(1)).await;
    run_ready_tasks(&background).await;
    assert!(!handle.is_started(), "started a second early");

    tokio::time::advance(Duration::from_secs(1)).await;
    within("the task to end", handle.outcome())
        .await
        .expect("it succeeds");
    assert!(handle.info().started_at.is_some());
    assert_settled(background.stats());
}

#[tokio::test(start_paused = true)]
async fn a_task_at_an_instant_starts_then() {
    let background = Background::new();
    let due = Instant::now() + Duration::from_secs(5);
    let handle = background.task().at(due).build().schedule(async {});
    run_ready_tasks(&background).await;
    assert!(!handle.is_started());
    within("the task to end", handle.outcome())
        .await
        .expect("it succeeds");
    assert!(Instant::now() >= due, "started before its instant");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_task_cancelled_by_id_never_starts() {
    let background = Background::new();
    let handle = delayed(&background, TEN_MINUTES, false).await;

    assert!(background.cancel(handle.id()).is_cancelled());
    let outcome = within("the task to end", handle.outcome()).await;
    assert!(matches!(outcome, Err(TaskError::Cancelled)), "{outcome:?}");
    assert!(!handle.is_started());
    within("idle", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_settled(stats);
}

#[tokio::test(start_paused = true)]
async fn shutdown_cancels_an_unshielded_delayed_task_without_starting_it() {
    let background = Background::new();
    let handle = delayed(&background, TEN_MINUTES, false).await;

    let report = background.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        util::infos(&report.cancelled)[0].id,
        handle.id(),
        "{report:?}"
    );
    assert!(!handle.is_started());
    assert!(matches!(
        handle.try_outcome(),
        Some(Err(TaskError::Cancelled))
    ));
}

#[tokio::test(start_paused = true)]
async fn shutdown_runs_a_shielded_delayed_task_that_falls_due_within_the_grace() {
    let background = Background::new();
    let handle = delayed(&background, Duration::from_secs(1), true).await;

    let report = background.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        util::infos(&report.finished)[0].id,
        handle.id(),
        "{report:?}"
    );
    assert!(report.finished[0].outcome.is_ok());
    assert!(handle.is_started());
}

#[tokio::test(start_paused = true)]
async fn shutdown_reports_a_shielded_delayed_task_due_after_the_grace_as_overdue() {
    let background = Background::new();
    let handle = delayed(&background, TEN_MINUTES, true).await;

    let report = background.shutdown(Duration::from_secs(5)).await;
    assert_eq!(
        util::infos(&report.overdue)[0].id,
        handle.id(),
        "{report:?}"
    );
    assert!(!handle.is_started(), "started although due after the grace");
    assert!(matches!(
        report.overdue[0].outcome,
        Err(TaskError::Cancelled)
    ));
}

#[tokio::test(start_paused = true)]
async fn a_delayed_task_holds_no_slot_while_it_waits() {
    let background = Background::builder()
        .max_in_flight(1)
        .overflow(OverflowPolicy::Reject)
        .build();
    let delayed = background
        .task()
        .delay(TEN_MINUTES)
        .build()
        .schedule(async {});
    let now = background.schedule(async {});
    within("the immediate task", now.outcome())
        .await
        .expect("it had the slot");
    assert!(!delayed.is_started());
    within_the_hour("the delayed task", delayed.outcome())
        .await
        .expect("it gets the slot when due");
}

/// A delayed task of a request lets the tasks after it start; its delay
/// counts from its phase (here: once the response has been sent).
#[tokio::test(start_paused = true)]
async fn a_delayed_request_task_counts_from_its_phase_and_holds_up_no_other() {
    let background = Background::new();
    let (out, mut handed) = mpsc::unbounded_channel::<Vec<TaskHandle>>();
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let out = out.clone();
                async move {
                    let delayed = tasks
                        .after_response()
                        .task()
                        .delay(TEN_MINUTES)
                        .build()
                        .schedule(async {});
                    let after = tasks.after_response().schedule(async {});
                    let _ = out.send(vec![delayed, after]);
                    "ok"
                }
            }),
        )
        .layer(background.layer());

    let response = app
        .oneshot(
            Request::builder()
                .uri("/")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let handles = handed.recv().await.expect("the handler ran");
    let (delayed, after) = (&handles[0], &handles[1]);
    assert!(delayed.info().due_at.is_none(), "due before its phase came");

    tokio::time::advance(Duration::from_secs(60)).await;
    let sent = Instant::now();
    within("body", response.into_body().collect())
        .await
        .expect("infallible");
    within("the task after it", after.outcome())
        .await
        .expect("it succeeds");
    assert!(!delayed.is_started());

    let info = delayed.info();
    let due_in = info.due_at.expect("due once sent") - info.scheduled_at;
    assert!(
        due_in >= TEN_MINUTES + Duration::from_secs(59),
        "due {due_in:?} after scheduling: the delay did not count from the phase"
    );
    within_the_hour("the delayed task", delayed.outcome())
        .await
        .expect("it succeeds");
    assert!(Instant::now() >= sent + TEN_MINUTES);
}

#[tokio::test(start_paused = true)]
async fn a_delayed_sync_task_runs_on_the_blocking_pool_when_due() {
    let background = Background::builder().max_blocking(1).build();
    let due = Instant::now() + TEN_MINUTES;
    let ran_on = std::sync::Arc::new(std::sync::Mutex::new(None));
    let record = std::sync::Arc::clone(&ran_on);
    let handle = background
        .task()
        .at(due)
        .build()
        .schedule(move || *record.lock().unwrap() = Some(std::thread::current().id()));
    run_ready_tasks(&background).await;
    assert!(!handle.is_started());
    within_the_hour("the sync task", handle.outcome())
        .await
        .expect("it succeeds");
    assert!(Instant::now() >= due);
    let ran_on = ran_on.lock().unwrap().expect("it ran");
    assert_ne!(
        ran_on,
        std::thread::current().id(),
        "not on a blocking thread"
    );
}
