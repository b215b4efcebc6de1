//! `request_phases`: one in-process request (`tower::ServiceExt::oneshot`)
//! whose handler schedules one async task in each phase (immediate,
//! after-route, after-response); the body is read to its end and the
//! request counts as done when all three tasks have run. The baseline is the
//! same router, without the layer, whose handler does three bare
//! `tokio::spawn`. Goal: at most 1.5x.
//!
//! Both handlers count their tasks down on the same per-request [`Done`],
//! passed in the request's extensions.
//!
//! `cargo bench --bench request_phases`

mod common;

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::body::Body;
use axum::extract::Extension;
use axum::http::Request;
use axum::routing::get;
use axum::{Router, body};
use axum_background::{Background, Tasks};
use http_body_util::BodyExt;
use tokio::sync::Notify;
use tower::ServiceExt;

/// Requests per paired sample.
const REQUESTS: u64 = 2_000;

/// Counts a request's three tasks down; wakes the request when all have run.
struct Done {
    remaining: AtomicUsize,
    notify: Notify,
}

impl Done {
    fn tick(&self) {
        // AcqRel: the last task sees the others' effects before it wakes the waiter.
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            // `notify_one` stores a permit if the request is not waiting yet.
            self.notify.notify_one();
        }
    }
}

async fn crate_handler(tasks: Tasks, Extension(done): Extension<Arc<Done>>) -> &'static str {
    let immediate = Arc::clone(&done);
    tasks.schedule(async move { immediate.tick() });
    let after_route = Arc::clone(&done);
    tasks
        .after_route()
        .schedule(async move { after_route.tick() });
    tasks.after_response().schedule(async move { done.tick() });
    "ok"
}

async fn bare_handler(Extension(done): Extension<Arc<Done>>) -> &'static str {
    let immediate = Arc::clone(&done);
    drop(tokio::spawn(async move { immediate.tick() }));
    let after_route = Arc::clone(&done);
    drop(tokio::spawn(async move { after_route.tick() }));
    drop(tokio::spawn(async move { done.tick() }));
    "ok"
}

/// One request: send it, read the body to its end, wait for its three tasks.
async fn one_request(router: Router) {
    let done = Arc::new(Done {
        remaining: AtomicUsize::new(3),
        notify: Notify::new(),
    });
    let mut request = Request::get("/phases")
        .body(Body::empty())
        .expect("a valid request");
    request.extensions_mut().insert(Arc::clone(&done));
    let response = router.oneshot(request).await.expect("infallible");
    let bytes: body::Bytes = response
        .into_body()
        .collect()
        .await
        .expect("the body")
        .to_bytes();
    black_box(bytes);
    done.notify.notified().await;
}

fn main() {
    let runtime = common::runtime();
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();
    let crate_router = Router::new()
        .route("/phases", get(crate_handler))
        .layer(background.layer());
    let bare_router = Router::new().route("/phases", get(bare_handler));
    let requests = |router: &Router| {
        let router = router.clone();
        move || one_request(router.clone())
    };
    common::compare(
        common::Comparison {
            bench: "request_phases",
            baseline: "same router, three bare tokio::spawn",
            iteration: "one request",
            unit: "request",
            goal: 1.5,
            throughput: None,
            iterations_per_sample: REQUESTS,
            units_per_sample: REQUESTS,
        },
        |n| common::run_units(&runtime, n, requests(&crate_router)),
        |n| common::run_units(&runtime, n, requests(&bare_router)),
    );
}
