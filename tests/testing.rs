//! The test helpers: `testing::send` reads the whole body so after-response
//! tasks start; `testing::idle_within` names what is still in flight.

use std::time::Duration;

use axum::{Router, body::Body, http::Request, routing::get};
use axum_background::{Background, Tasks, testing};
use tower::ServiceExt;

mod util;
use util::within;

async fn report(tasks: Tasks) -> &'static str {
    tasks
        .after_response()
        .task()
        .name("metrics")
        .build()
        .schedule(async {});
    "done"
}

fn app(background: &Background) -> Router {
    Router::new()
        .route("/report", get(report))
        .layer(background.layer())
}

fn get_report() -> Request<Body> {
    Request::get("/report")
        .body(Body::empty())
        .expect("request")
}

#[tokio::test]
async fn send_reads_the_body_so_after_response_tasks_run() {
    let background = Background::new();
    let app = app(&background);

    let response = within("send", testing::send(&app, get_report()))
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert_eq!(response.body().as_ref(), b"done");

    let stats = testing::idle_within(&background, Duration::from_secs(10))
        .await
        .expect("idle");
    assert_eq!(stats.completed, 1);
    util::assert_settled(stats);
}

#[tokio::test(start_paused = true)]
async fn a_held_body_keeps_the_task_waiting_and_the_error_says_so() {
    let background = Background::new();
    let response = app(&background).oneshot(get_report()).await.expect("call");

    // The body is still held: the after-response task cannot start.
    let error = testing::idle_within(&background, Duration::from_secs(5))
        .await
        .expect_err("a held body keeps its task from starting");
    assert_eq!(error.in_flight.len(), 1);
    assert_eq!(error.in_flight[0].name, "metrics");
    let message = error.to_string();
    assert!(
        message.contains("1 task still in flight after 5s"),
        "{message}"
    );
    assert!(
        message.contains("metrics (id ") && message.contains("waiting for its response body"),
        "{message}"
    );
    assert!(message.contains("testing::send"), "{message}");

    // Reading the body to its end releases it.
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    assert_eq!(body.as_ref(), b"done");
    let stats = testing::idle_within(&background, Duration::from_secs(5))
        .await
        .expect("idle once the body is read");
    assert_eq!(stats.completed, 1);
}

#[tokio::test(start_paused = true)]
async fn the_error_tells_running_delayed_and_held_back_tasks_apart() {
    let background = Background::builder().max_in_flight(1).build();
    let (release, hold) = tokio::sync::oneshot::channel::<()>();
    let running = background
        .task()
        .name("running")
        .build()
        .schedule(async move {
            let _ = hold.await;
        });
    within("the first task starts", running.started()).await;
    background
        .task()
        .name("later")
        .delay(Duration::from_secs(3600))
        .build()
        .schedule(async {});
    background
        .task()
        .name("held back")
        .build()
        .schedule(async {});

    let error = testing::idle_within(&background, Duration::from_secs(1))
        .await
        .expect_err("three tasks are in flight");
    let message = error.to_string();
    assert!(
        message.starts_with("3 tasks still in flight after 1s:"),
        "{message}"
    );
    assert!(
        message.contains("running (id ") && message.contains("running, attempt 1"),
        "{message}"
    );
    assert!(
        message.contains("later (id ") && message.contains("delayed, not yet due"),
        "{message}"
    );
    assert!(
        message.contains("held back (id ") && message.contains("waiting for a slot"),
        "{message}"
    );
    assert!(
        !message.contains("testing::send"),
        "no body is held: {message}"
    );

    release.send(()).expect("the task waits");
    assert_eq!(
        background.cancel(error.in_flight[1].id),
        axum_background::CancelOutcome::Cancelled
    );
    within("idle", background.wait_idle()).await;
}
