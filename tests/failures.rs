//! The recent failures: the last tasks that failed, panicked, timed out or
//! were rejected, bounded, newest first; cancellations are not failures.

use std::time::Duration;

use axum::{Router, body::Body, http::Request, routing::post};
use axum_background::{Background, BoxError, RetryPolicy, TaskError, Tasks, testing};

mod util;
use util::within;

async fn within_the_hour<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

#[tokio::test(start_paused = true)]
async fn failures_are_kept_with_their_error_newest_first_and_cancellations_are_not() {
    let background = Background::builder().max_in_flight(1).build();
    let before = std::time::SystemTime::now();
    background
        .task()
        .name("charge")
        .retry(RetryPolicy::attempts(2).backoff(Duration::from_millis(10)))
        .build()
        .schedule(|| async { Err::<(), BoxError>("card declined".into()) });
    within_the_hour("the retries", background.wait_idle()).await;
    background
        .task()
        .name("resize")
        .build()
        .schedule(|| -> () { panic!("image too large") });
    within_the_hour("the panic", background.wait_idle()).await;
    background
        .task()
        .name("slow")
        .timeout(Duration::from_secs(1))
        .build()
        .schedule(std::future::pending::<()>());
    within_the_hour("the timeout", background.wait_idle()).await;
    let cancelled = background
        .task()
        .name("cancelled")
        .build()
        .schedule(std::future::pending::<()>());
    let _ = cancelled.cancel();
    within_the_hour("the cancellation", background.wait_idle()).await;

    let failures = background.recent_failures();
    let names: Vec<&str> = failures.iter().map(|f| f.info.name.as_ref()).collect();
    assert_eq!(
        names,
        ["slow", "resize", "charge"],
        "newest first, no cancellation"
    );
    assert!(matches!(failures[0].error, TaskError::TimedOut));
    assert!(
        matches!(&failures[1].error, TaskError::Panicked(message) if &**message == "image too large")
    );
    assert_eq!(failures[2].error.to_string(), "task failed: card declined");
    assert_eq!(failures[2].info.attempts, 2);
    assert!(failures.iter().all(|f| f.at >= before));
}

#[tokio::test]
async fn a_rejected_task_is_a_failure_with_its_request() {
    let background = Background::new();
    let app = Router::new()
        .route(
            "/orders",
            post(|tasks: Tasks| async move {
                tasks
                    .after_response()
                    .task()
                    .name("receipt")
                    .build()
                    .schedule(async {});
                "ok"
            }),
        )
        .layer(background.layer());
    // Shut down: the request's task is rejected.
    within("shutdown", background.shutdown(Duration::from_secs(1))).await;
    let request = Request::post("/orders").body(Body::empty()).unwrap();
    let response = within("send", testing::send(&app, request)).await.unwrap();
    assert_eq!(response.status(), 200);
    let failures = background.recent_failures();
    assert_eq!(failures.len(), 1, "{failures:?}");
    assert_eq!(failures[0].info.name, "receipt");
    assert_eq!(failures[0].info.path.as_deref(), Some("/orders"));
    assert!(matches!(failures[0].error, TaskError::Rejected(_)));
}

#[tokio::test]
async fn the_ring_keeps_the_last_n_and_zero_keeps_none() {
    let background = Background::builder().recent_failures(3).build();
    for n in 0..5 {
        background
            .task()
            .name(format!("job-{n}"))
            .build()
            .schedule(async { Err::<(), BoxError>("no".into()) });
    }
    within("idle", background.wait_idle()).await;
    let names: Vec<String> = background
        .recent_failures()
        .iter()
        .map(|f| f.info.name.to_string())
        .collect();
    assert_eq!(names, ["job-4", "job-3", "job-2"]);

    let background = Background::builder().recent_failures(0).build();
    background.schedule(async { Err::<(), BoxError>("no".into()) });
    within("idle", background.wait_idle()).await;
    assert!(background.recent_failures().is_empty());
    assert_eq!(background.stats().failed, 1);
}
