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
use std::time::{Duration, SystemTime};

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
    let args = common::Args::parse();
    let since = SystemTime::now();
    let runtime = common::runtime();
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();
    let crate_router = Router::new()
        .route("/phases", get(crate_handler))
        .layer(background.layer());
    let bare_router = Router::new().route("/phases", get(bare_handler));

    let crate_run = || {
        let router = crate_router.clone();
        common::run_units(&runtime, REQUESTS, move || one_request(router.clone()))
    };
    let bare_run = || {
        let router = bare_router.clone();
        common::run_units(&runtime, REQUESTS, move || one_request(router.clone()))
    };
    common::wait_for_quiet(&args);
    common::prewarm(&args, Duration::from_secs(1), crate_run, bare_run);

    let criterion_meter = common::Meter::start();
    let mut criterion = common::criterion(Duration::from_secs(3));
    {
        let mut group = criterion.benchmark_group("request_phases");
        group.bench_function("crate", |b| {
            b.iter_custom(|iters| {
                let router = crate_router.clone();
                common::run_units(&runtime, iters, move || one_request(router.clone())).wall
            });
        });
        group.bench_function("bare", |b| {
            b.iter_custom(|iters| {
                let router = bare_router.clone();
                common::run_units(&runtime, iters, move || one_request(router.clone())).wall
            });
        });
        group.finish();
    }
    criterion.final_summary();
    let criterion_phase = criterion_meter.stop();
    if args.list {
        return;
    }
    common::wait_for_quiet(&args);

    let paired = common::paired(args.rounds(15), REQUESTS, crate_run, bare_run);
    common::print_summary(
        &common::Summary {
            bench: "request_phases",
            baseline: "same router, three bare tokio::spawn",
            iteration: "one request",
            unit: "request",
            goal: 1.5,
            since,
            criterion_phase,
        },
        &paired,
    );
}
