//! Back-pressure at the door: `background.layer().shed_when_saturated()`
//! answers 503 with `Retry-After`, before the handler runs, while every
//! `max_in_flight` slot is taken; requests that pass the check are served as
//! without it.
//!
//! Every test serves a real router on 127.0.0.1 and sends real requests. Tasks
//! are held on a `watch` channel and report their start on an `mpsc` one; every
//! wait has a deadline (`within`). The tests run on a current-thread runtime:
//! there a task's slot is given back before `wait_idle` resumes its caller.

mod util;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;
use axum_background::{
    Background, BackgroundTask, OverflowPolicy, RejectReason, Stats, TaskError, TaskHandle, Tasks,
};
use tokio::sync::{mpsc, watch};

use util::{assert_settled, within};

/// What the handlers share with the test.
#[derive(Clone)]
struct App {
    /// How many times the handler ran.
    handler_runs: Arc<AtomicUsize>,
    /// Each task sends here once it runs.
    started: mpsc::UnboundedSender<()>,
    /// Tasks wait until this reads `true`.
    release: watch::Receiver<bool>,
    /// The handles of the tasks the handler scheduled, in order.
    handles: Arc<Mutex<Vec<TaskHandle>>>,
}

/// The test's side of an [`App`].
struct Harness {
    app: App,
    started: mpsc::UnboundedReceiver<()>,
    release: watch::Sender<bool>,
}

impl Harness {
    fn new() -> Self {
        let (started_tx, started) = mpsc::unbounded_channel();
        let (release, release_rx) = watch::channel(false);
        Harness {
            app: App {
                handler_runs: Arc::default(),
                started: started_tx,
                release: release_rx,
                handles: Arc::default(),
            },
            started,
            release,
        }
    }

    fn handler_runs(&self) -> usize {
        self.app.handler_runs.load(Ordering::SeqCst)
    }

    /// Waits until `n` more tasks have started.
    async fn started(&mut self, n: usize) {
        for _ in 0..n {
            within("a held task to start", self.started.recv())
                .await
                .expect("the app holds a sender");
        }
    }

    /// Lets every held task (and every later one) finish.
    fn release(&self) {
        self.release.send_replace(true);
    }

    fn handle(&self, at: usize) -> TaskHandle {
        self.app.handles.lock().unwrap()[at].clone()
    }
}

/// Counts its run, then schedules one task that reports its start and waits
/// for the release.
async fn hold(State(app): State<App>, tasks: Tasks) -> &'static str {
    app.handler_runs.fetch_add(1, Ordering::SeqCst);
    let started = app.started.clone();
    let mut release = app.release.clone();
    let handle = tasks.schedule(async move {
        let _ = started.send(());
        let _ = release.wait_for(|released| *released).await;
    });
    app.handles.lock().unwrap().push(handle);
    "accepted"
}

/// A background of `limit` slots, with `overflow` when they are taken.
fn background(limit: usize, overflow: OverflowPolicy) -> Background {
    Background::builder()
        .max_in_flight(limit)
        .overflow(overflow)
        .build()
}

/// Serves `/hold` behind `layer`; its URL.
async fn serve(app: App, layer: axum_background::layer::BackgroundLayer) -> String {
    let router = Router::new()
        .route("/hold", get(hold))
        .with_state(app)
        .layer(layer);
    let addr = util::serve(router).await;
    format!("http://{addr}/hold")
}

/// Waits (with a deadline) until no task is in flight; the final counters.
async fn idle(background: &Background, what: &str) -> Stats {
    within(what, background.wait_idle()).await;
    background.stats()
}

async fn get_hold(client: &reqwest::Client, url: &str) -> reqwest::Response {
    within("a response", client.get(url).send())
        .await
        .expect("request sent")
}

#[tokio::test]
async fn saturated_answers_503_with_retry_after_and_skips_the_handler() {
    let mut h = Harness::new();
    let background = background(2, OverflowPolicy::Reject);
    let url = serve(h.app.clone(), background.layer().shed_when_saturated()).await;
    let client = reqwest::Client::new();

    // Two requests take both slots with tasks that wait.
    for _ in 0..2 {
        let response = get_hold(&client, &url).await;
        assert_eq!(response.status(), StatusCode::OK);
    }
    h.started(2).await;
    assert_eq!(h.handler_runs(), 2);

    // The third is turned away at the door.
    let response = get_hold(&client, &url).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "1");
    assert_eq!(
        response.headers()[header::CONTENT_TYPE],
        "text/plain; charset=utf-8"
    );
    let body = within("the 503's body", response.text())
        .await
        .expect("body read");
    assert_eq!(body, "service busy, retry later\n");

    // Its handler did not run, so it scheduled nothing: no task was lost.
    assert_eq!(h.handler_runs(), 2, "the handler ran for a shed request");
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.running, stats.rejected),
        (2, 2, 0),
        "{stats:?}"
    );

    h.release();
    let stats = idle(&background, "tasks to finish").await;
    assert_eq!(stats.completed, 2);
    assert_settled(stats);
}

#[tokio::test]
async fn a_request_is_served_while_a_slot_is_free() {
    let mut h = Harness::new();
    let background = background(2, OverflowPolicy::Reject);
    let url = serve(h.app.clone(), background.layer().shed_when_saturated()).await;
    let client = reqwest::Client::new();

    // One slot of two is taken.
    let response = get_hold(&client, &url).await;
    assert_eq!(response.status(), StatusCode::OK);
    h.started(1).await;

    // The next request is served as without the option: its handler runs and
    // its task starts.
    let response = get_hold(&client, &url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::RETRY_AFTER).is_none());
    assert_eq!(
        within("the body", response.text()).await.expect("body"),
        "accepted"
    );
    assert_eq!(h.handler_runs(), 2);
    h.started(1).await;
    assert!(h.handle(1).is_started());

    h.release();
    let stats = idle(&background, "tasks to finish").await;
    assert_eq!((stats.completed, stats.rejected), (2, 0));
    assert_settled(stats);
}

#[tokio::test]
async fn requests_are_accepted_again_once_tasks_finish() {
    let mut h = Harness::new();
    let background = background(1, OverflowPolicy::Reject);
    let url = serve(h.app.clone(), background.layer().shed_when_saturated()).await;
    let client = reqwest::Client::new();

    assert_eq!(get_hold(&client, &url).await.status(), StatusCode::OK);
    h.started(1).await;
    assert_eq!(
        get_hold(&client, &url).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(h.handler_runs(), 1);

    // The held task finishes: its slot is free again.
    h.release();
    within("the held task to finish", background.wait_idle()).await;

    let response = get_hold(&client, &url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(h.handler_runs(), 2);
    h.started(1).await;
    let stats = idle(&background, "tasks to finish").await;
    assert_eq!((stats.completed, stats.rejected), (2, 0));
    assert_settled(stats);
}

#[tokio::test]
async fn without_the_option_the_handler_runs_and_its_task_is_rejected() {
    let mut h = Harness::new();
    let background = background(1, OverflowPolicy::Reject);
    let url = serve(h.app.clone(), background.layer()).await;
    let client = reqwest::Client::new();

    assert_eq!(get_hold(&client, &url).await.status(), StatusCode::OK);
    h.started(1).await;

    // Today's behaviour: the request is served, its task is rejected.
    let response = get_hold(&client, &url).await;
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response.headers().get(header::RETRY_AFTER).is_none());
    assert_eq!(h.handler_runs(), 2);
    let outcome = within("the rejected task's outcome", h.handle(1).outcome()).await;
    assert!(
        matches!(
            outcome,
            Err(TaskError::Rejected(RejectReason::LimitReached { limit: 1 }))
        ),
        "{outcome:?}"
    );
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.running, stats.rejected),
        (2, 1, 1),
        "{stats:?}"
    );

    h.release();
    let stats = idle(&background, "tasks to finish").await;
    assert_eq!((stats.completed, stats.rejected), (1, 1));
    assert_settled(stats);
}

#[tokio::test]
async fn under_the_wait_policy_requests_are_shed_while_every_slot_is_taken() {
    let mut h = Harness::new();
    let background = background(1, OverflowPolicy::Wait);
    let url = serve(h.app.clone(), background.layer().shed_when_saturated()).await;
    let client = reqwest::Client::new();

    assert_eq!(get_hold(&client, &url).await.status(), StatusCode::OK);
    h.started(1).await;

    // Its task would only queue behind the running one: shed instead.
    let response = get_hold(&client, &url).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(h.handler_runs(), 1);
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.queued), (1, 0), "{stats:?}");

    h.release();
    within("the held task to finish", background.wait_idle()).await;
    assert_eq!(get_hold(&client, &url).await.status(), StatusCode::OK);
    h.started(1).await;
    let stats = idle(&background, "tasks to finish").await;
    assert_eq!((stats.completed, stats.rejected), (2, 0));
    assert_settled(stats);
}

#[tokio::test]
async fn retry_after_is_set_in_whole_seconds_rounded_up() {
    let mut h = Harness::new();
    let background = background(1, OverflowPolicy::Reject);
    // Set before or after the option, it applies.
    let late = background
        .layer()
        .shed_when_saturated()
        .retry_after(Duration::from_millis(1_500));
    let early = background
        .layer()
        .retry_after(Duration::from_secs(30))
        .shed_when_saturated();
    let late_url = serve(h.app.clone(), late).await;
    let early_url = serve(h.app.clone(), early).await;
    let client = reqwest::Client::new();

    assert_eq!(get_hold(&client, &late_url).await.status(), StatusCode::OK);
    h.started(1).await;
    let response = get_hold(&client, &late_url).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "2");
    let response = get_hold(&client, &early_url).await;
    assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(response.headers()[header::RETRY_AFTER], "30");
    assert_eq!(h.handler_runs(), 1);

    h.release();
    assert_settled(idle(&background, "tasks to finish").await);
}

#[tokio::test]
async fn without_max_in_flight_nothing_is_shed() {
    let mut h = Harness::new();
    let background = Background::new();
    let url = serve(h.app.clone(), background.layer().shed_when_saturated()).await;
    let client = reqwest::Client::new();

    for _ in 0..3 {
        assert_eq!(get_hold(&client, &url).await.status(), StatusCode::OK);
    }
    h.started(3).await;
    assert_eq!(h.handler_runs(), 3);

    h.release();
    let stats = idle(&background, "tasks to finish").await;
    assert_eq!(stats.completed, 3);
    assert_settled(stats);
}

/// Tasks that are not the request's (scheduled on the `Background`) count
/// toward saturation too, and a route given the layer without the option
/// (a health check) keeps answering.
#[tokio::test]
async fn any_task_in_a_slot_counts_and_a_route_without_the_option_still_answers() {
    struct Held(watch::Receiver<bool>, mpsc::UnboundedSender<()>);

    impl BackgroundTask<()> for Held {
        type Mode = axum_background::mode::Async;
        async fn run(mut self) {
            let _ = self.1.send(());
            let _ = self.0.wait_for(|released| *released).await;
        }
    }

    let mut h = Harness::new();
    let background = background(1, OverflowPolicy::Reject);
    let health_runs = Arc::new(AtomicUsize::new(0));
    let router = Router::new()
        .route("/hold", get(hold))
        .with_state(h.app.clone())
        .layer(background.layer().shed_when_saturated())
        .merge(
            Router::new()
                .route(
                    "/health",
                    get({
                        let runs = Arc::clone(&health_runs);
                        move || async move {
                            runs.fetch_add(1, Ordering::SeqCst);
                            "ok"
                        }
                    }),
                )
                .layer(background.layer()),
        );
    let addr = util::serve(router).await;
    let client = reqwest::Client::new();

    background.schedule(Held(h.app.release.clone(), h.app.started.clone()));
    h.started(1).await;

    let hold_url = format!("http://{addr}/hold");
    assert_eq!(
        get_hold(&client, &hold_url).await.status(),
        StatusCode::SERVICE_UNAVAILABLE
    );
    let health = get_hold(&client, &format!("http://{addr}/health")).await;
    assert_eq!(health.status(), StatusCode::OK);
    assert_eq!(
        (h.handler_runs(), health_runs.load(Ordering::SeqCst)),
        (0, 1)
    );

    h.release();
    assert_settled(idle(&background, "tasks to finish").await);
}
