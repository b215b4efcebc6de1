//! When each phase starts: immediate, after-route, after-response, through
//! real routers (in process with `oneshot`, and over TCP where the network
//! matters).
//!
//! Several tests run on a current-thread runtime and use
//! [`run_spawned_so_far`] to tell "not started" from "not started *yet*":
//! that runtime runs spawned tasks first in, first out, so once a probe task
//! spawned now has run, every async task spawned before it has started.

mod util;

use std::convert::Infallible;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Path;
use axum::http::{Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Router};
use axum_background::mode::{self, ModeKind};
use axum_background::{Background, BackgroundTask, BoxError, Phase, TaskHandle, Tasks};
use http_body_util::BodyExt;
use tokio::sync::{mpsc, oneshot};
use tokio_test::assert_pending;
use tower::{Service, ServiceExt};
use util::{Events, within};

// ---------------------------------------------------------------- helpers

fn request(method: Method, uri: &str) -> Request<Body> {
    Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .expect("valid request")
}

/// Sends `method uri` through `app` and reads the whole response: its status
/// and its body as text.
async fn respond(app: Router, method: Method, uri: &str) -> (StatusCode, String) {
    let response = app.oneshot(request(method, uri)).await.expect("infallible");
    let status = response.status();
    let body = within("body", response.into_body().collect()).await;
    let body = body.expect("infallible").to_bytes().to_vec();
    (status, String::from_utf8(body).expect("utf-8"))
}

/// Lets every async task spawned so far start, on a current-thread runtime:
/// its scheduler is FIFO, so by the time a no-op task spawned now has run,
/// every task spawned before it has been polled (and so has started).
async fn run_spawned_so_far(background: &Background) {
    let probe = background.schedule(async {});
    within("probe task", probe.outcome())
        .await
        .expect("probe task succeeds");
}

/// A streaming body that yields what the test sends, and ends only when the
/// sender is dropped.
fn channel_body() -> (mpsc::UnboundedSender<&'static str>, Body) {
    let (chunks, rx) = mpsc::unbounded_channel::<&'static str>();
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        let chunk = rx.recv().await?;
        Some((
            Ok::<_, Infallible>(Bytes::from_static(chunk.as_bytes())),
            rx,
        ))
    });
    (chunks, Body::from_stream(stream))
}

/// An async task that records its start.
fn async_start(events: &Events, label: &'static str) -> impl Future<Output = ()> + Send + 'static {
    let events = events.clone();
    async move { events.push(label) }
}

/// A sync task (a closure: the blocking pool) that records its start.
fn sync_start(events: &Events, label: &'static str) -> impl FnOnce() + Send + 'static {
    let events = events.clone();
    move || events.push(label)
}

/// Awaits every handle's outcome and asserts each one succeeded.
async fn assert_all_ok(handles: &[TaskHandle]) {
    for handle in handles {
        let outcome = within("task outcome", handle.outcome()).await;
        assert!(
            outcome.is_ok(),
            "task {:?} ended with {outcome:?}",
            handle.info().name
        );
    }
}

// ------------------------------------------------- 1. when each phase starts

/// What the streaming handler hands the test.
struct Streaming {
    after_route: TaskHandle,
    after_response: TaskHandle,
    /// The handler returns its response once this fires.
    release: oneshot::Sender<()>,
    /// Feeds the response body; dropping it ends the body.
    chunks: mpsc::UnboundedSender<&'static str>,
}

#[tokio::test]
async fn after_route_starts_when_handler_returns_and_after_response_when_stream_ends() {
    let background = Background::new();
    let (out, mut handed) = mpsc::unbounded_channel::<Streaming>();
    let app = Router::new()
        .route(
            "/slow",
            get(move |tasks: Tasks| {
                let out = out.clone();
                async move {
                    let (release, released) = oneshot::channel();
                    let (chunks, body) = channel_body();
                    out.send(Streaming {
                        after_route: tasks.after_route().schedule(async {}),
                        after_response: tasks.after_response().schedule(async {}),
                        release,
                        chunks,
                    })
                    .expect("test listens");
                    released.await.expect("test releases the handler");
                    body
                }
            }),
        )
        .layer(background.layer());

    let call = tokio::spawn(app.oneshot(request(Method::GET, "/slow")));
    let Streaming {
        after_route,
        after_response,
        release,
        chunks,
    } = within("handler to run", handed.recv())
        .await
        .expect("handler ran");

    // The handler is still running: neither deferred phase may start.
    run_spawned_so_far(&background).await;
    assert!(
        !after_route.is_started(),
        "after-route started before the handler returned"
    );
    assert!(!after_response.is_started());

    release.send(()).expect("handler waits");
    let response = within("response", call)
        .await
        .expect("request task")
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::OK);

    // The response exists and not one byte of its body has been polled.
    within(
        "after-route to start before the body is polled",
        after_route.started(),
    )
    .await;
    run_spawned_so_far(&background).await;
    assert!(
        !after_response.is_started(),
        "after-response started before any body frame was polled"
    );

    let mut body = response.into_body();
    for chunk in ["first", "second"] {
        chunks.send(chunk).expect("body listens");
        let frame = within("a body frame", body.frame())
            .await
            .expect("a frame, not the end")
            .expect("infallible");
        assert_eq!(frame.into_data().expect("a data frame"), chunk);
        run_spawned_so_far(&background).await;
        assert!(
            !after_response.is_started(),
            "after-response started after chunk {chunk:?}, while the stream may still yield"
        );
    }

    drop(chunks);
    assert!(
        within("the end of the body", body.frame()).await.is_none(),
        "the body ends when its sender is dropped"
    );
    within(
        "after-response to start once the end is polled",
        after_response.started(),
    )
    .await;
    drop(body);
    assert_all_ok(&[after_route, after_response]).await;
}

/// What a handler answers, and so how its response body ends.
#[derive(Clone, Copy, Debug)]
enum Answer {
    /// A sized body (Content-Length): its last data frame leaves it at
    /// `is_end_stream`.
    Sized(&'static str),
    /// A stream that yields its data, then fails.
    FailsAfter(&'static str),
    /// `204 No Content`: no body at all.
    NoContent,
    /// A stream that never ends on its own (only a HEAD request ends it).
    Endless,
}

impl Answer {
    fn respond(self) -> Response {
        match self {
            Answer::Sized(data) => data.into_response(),
            Answer::FailsAfter(data) => Body::from_stream(futures_util::stream::iter([
                Ok(Bytes::from_static(data.as_bytes())),
                Err(std::io::Error::other("disk read failed")),
            ]))
            .into_response(),
            Answer::NoContent => StatusCode::NO_CONTENT.into_response(),
            Answer::Endless => {
                Body::from_stream(futures_util::stream::pending::<Result<Bytes, Infallible>>())
                    .into_response()
            }
        }
    }
}

/// Sends `method /` to a handler that schedules one after-response task and
/// answers `answer`, then reads the body frame by frame: the task must not
/// start while the body may still yield, and must start as soon as the body
/// has ended, while it is still alive and without another poll.
async fn assert_after_response_starts_when_the_body_ends(method: Method, answer: Answer) {
    let background = Background::new();
    let (out, mut handed) = mpsc::unbounded_channel::<TaskHandle>();
    let handler = move |tasks: Tasks| {
        out.send(tasks.after_response().schedule(async {}))
            .expect("test listens");
        async move { answer.respond() }
    };
    let app = Router::new()
        .route("/", get(handler.clone()).post(handler))
        .layer(background.layer());

    let response = app
        .oneshot(request(method.clone(), "/"))
        .await
        .expect("infallible");
    let expected = match answer {
        Answer::NoContent => StatusCode::NO_CONTENT,
        _ => StatusCode::OK,
    };
    assert_eq!(response.status(), expected);
    let after_response = handed.try_recv().expect("handler ran");
    let mut body = response.into_body();
    match answer {
        // Nothing to send: the body is never polled.
        _ if method == Method::HEAD => assert!(body.is_end_stream(), "HEAD has no body"),
        Answer::NoContent => assert!(body.is_end_stream(), "a 204 has no body"),
        Answer::Sized(data) | Answer::FailsAfter(data) => {
            run_spawned_so_far(&background).await;
            assert!(
                !after_response.is_started(),
                "after-response started before the body was polled"
            );
            let frame = within("a data frame", body.frame())
                .await
                .expect("a frame")
                .expect("data, not the error yet");
            assert_eq!(frame.into_data().expect("data"), data);
            if let Answer::Sized(_) = answer {
                // No further poll: hyper stops after the last frame of a
                // Content-Length body, so `is_end_stream` must be enough to
                // fire the phase.
                assert!(body.is_end_stream(), "a sized body knows it has ended");
            } else {
                run_spawned_so_far(&background).await;
                assert!(
                    !after_response.is_started(),
                    "started before the body ended"
                );
                let error = within("the failing frame", body.frame()).await;
                assert!(
                    matches!(error, Some(Err(_))),
                    "the body error comes through"
                );
                // The body is still alive: the error itself ends the response.
            }
        }
        Answer::Endless => unreachable!("only a HEAD request ends an endless body"),
    }
    within("after-response to start", after_response.started()).await;
    drop(body);
    assert_all_ok(&[after_response]).await;
}

/// One test per row: `test: request method, what the handler answers;`.
macro_rules! after_response_starts_when_the_body_ends {
    ($($test:ident: $method:ident, $answer:expr;)*) => {$(
        #[tokio::test]
        async fn $test() {
            assert_after_response_starts_when_the_body_ends(Method::$method, $answer).await;
        }
    )*};
}

after_response_starts_when_the_body_ends! {
    after_response_starts_on_the_last_data_frame_of_a_sized_body: GET, Answer::Sized("hello");
    after_response_starts_when_the_body_fails_mid_stream:         GET, Answer::FailsAfter("partial");
}

// ---------------------------------------- 2. client gone in the middle of the body

struct Download {
    after_response: TaskHandle,
    chunks: mpsc::UnboundedSender<&'static str>,
}

#[tokio::test]
async fn after_response_runs_when_client_disconnects_mid_body() {
    let background = Background::new();
    let (out, mut handed) = mpsc::unbounded_channel::<Download>();
    let (ran, mut ran_rx) = mpsc::unbounded_channel::<()>();
    let app = Router::new()
        .route(
            "/download",
            get(move |tasks: Tasks| {
                let (out, ran) = (out.clone(), ran.clone());
                async move {
                    let (chunks, body) = channel_body();
                    let after_response = tasks.after_response().schedule(async move {
                        ran.send(()).expect("test listens");
                    });
                    out.send(Download {
                        after_response,
                        chunks,
                    })
                    .expect("test listens");
                    body
                }
            }),
        )
        .layer(background.layer());
    let addr = util::serve(app).await;

    let client = reqwest::Client::new();
    let mut response = within(
        "response head",
        client.get(format!("http://{addr}/download")).send(),
    )
    .await
    .expect("request sent");
    assert_eq!(response.status(), StatusCode::OK);
    let Download {
        after_response,
        chunks,
    } = within("handler to run", handed.recv())
        .await
        .expect("handler ran");

    chunks.send("first chunk").expect("body listens");
    let chunk = within("first chunk", response.chunk())
        .await
        .expect("chunk read");
    assert_eq!(chunk.as_deref(), Some(&b"first chunk"[..]));
    run_spawned_so_far(&background).await;
    assert!(
        !after_response.is_started(),
        "after-response started while the body was still being sent"
    );

    // The client goes away mid-body; the body's sender stays alive, so only
    // the disconnect can end the response.
    drop(response);
    drop(client);
    within(
        "after-response task to run after the disconnect",
        ran_rx.recv(),
    )
    .await
    .expect("task ran");
    let outcome = within("after-response outcome", after_response.outcome()).await;
    assert!(outcome.is_ok(), "outcome: {outcome:?}");
    drop(chunks);
}

// ------------------------------------------------------------ 3. start order

/// Start order is spawn order, and spawn order is only observable as start
/// order when the runtime starts tasks first in, first out: a current-thread
/// runtime does for async tasks, and a blocking pool of one thread does for
/// sync tasks. (An async and a sync task run on different threads, so their
/// relative start order is not deterministic; each mode's own order is.)
#[test]
fn tasks_start_in_phase_order_then_in_schedule_order() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(1)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let background = Background::new();
        let events = Events::default();
        let log = events.clone();
        let app = Router::new()
            .route(
                "/order",
                get(move |tasks: Tasks| {
                    let e = log.clone();
                    async move {
                        // Phases interleaved on purpose: the order of the
                        // starts must come from the phases, not from the calls.
                        tasks
                            .after_response()
                            .schedule(async_start(&e, "async response 1"));
                        tasks.after_route().schedule(sync_start(&e, "sync route 1"));
                        tasks.schedule(async_start(&e, "async immediate 1"));
                        tasks
                            .after_response()
                            .schedule(sync_start(&e, "sync response 1"));
                        tasks
                            .after_route()
                            .schedule(async_start(&e, "async route 1"));
                        tasks.schedule(sync_start(&e, "sync immediate 1"));
                        tasks
                            .after_route()
                            .schedule(async_start(&e, "async route 2"));
                        tasks.schedule(async_start(&e, "async immediate 2"));
                        tasks
                            .after_response()
                            .schedule(async_start(&e, "async response 2"));
                        tasks.schedule(sync_start(&e, "sync immediate 2"));
                        tasks
                            .after_response()
                            .schedule(sync_start(&e, "sync response 2"));
                        tasks.after_route().schedule(sync_start(&e, "sync route 2"));
                        tasks
                            .task()
                            .phase(Phase::AfterRoute)
                            .build()
                            .schedule(async_start(&e, "async route 3"));
                        tasks.schedule(async_start(&e, "async immediate 3"));
                        "ok"
                    }
                }),
            )
            .layer(background.layer());

        assert_eq!(respond(app, Method::GET, "/order").await.1, "ok");
        within("every task to end", background.wait_idle()).await;

        let starts = events.snapshot();
        let of_mode = |prefix: &str| -> Vec<String> {
            starts
                .iter()
                .filter(|e| e.starts_with(prefix))
                .cloned()
                .collect()
        };
        assert_eq!(
            of_mode("async "),
            [
                "async immediate 1",
                "async immediate 2",
                "async immediate 3",
                "async route 1",
                "async route 2",
                "async route 3",
                "async response 1",
                "async response 2",
            ],
            "all starts: {starts:?}"
        );
        assert_eq!(
            of_mode("sync "),
            [
                "sync immediate 1",
                "sync immediate 2",
                "sync route 1",
                "sync route 2",
                "sync response 1",
                "sync response 2",
            ],
            "all starts: {starts:?}"
        );
        let stats = background.stats();
        assert_eq!(stats.completed, 14, "{stats:?}");
    });
}

// ------------------------------------------------------ 4. error responses

/// Schedules one sync and one async task in every phase.
fn schedule_in_every_phase(tasks: &Tasks, events: &Events) -> Vec<TaskHandle> {
    vec![
        tasks.schedule(async_start(events, "async immediate")),
        tasks.schedule(sync_start(events, "sync immediate")),
        tasks
            .after_route()
            .schedule(async_start(events, "async route")),
        tasks
            .after_route()
            .schedule(sync_start(events, "sync route")),
        tasks
            .after_response()
            .schedule(async_start(events, "async response")),
        tasks
            .after_response()
            .schedule(sync_start(events, "sync response")),
    ]
}

async fn assert_every_phase_ran(events: &Events, handles: &[TaskHandle]) {
    assert_eq!(handles.len(), 6);
    assert_all_ok(handles).await;
    for label in [
        "async immediate",
        "sync immediate",
        "async route",
        "sync route",
        "async response",
        "sync response",
    ] {
        events.position(label);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_response_still_runs_every_phase() {
    let background = Background::new();
    let events = Events::default();
    let (out, mut handed) = mpsc::unbounded_channel::<Vec<TaskHandle>>();
    let log = events.clone();
    let app = Router::new()
        .route(
            "/fail",
            post(move |tasks: Tasks| {
                let (out, log) = (out.clone(), log.clone());
                async move {
                    out.send(schedule_in_every_phase(&tasks, &log))
                        .expect("test listens");
                    Err::<&'static str, _>((StatusCode::INTERNAL_SERVER_ERROR, "boom"))
                }
            }),
        )
        .layer(background.layer());

    assert_eq!(
        respond(app, Method::POST, "/fail").await,
        (StatusCode::INTERNAL_SERVER_ERROR, "boom".to_owned())
    );

    let handles = handed.try_recv().expect("handler ran");
    assert_every_phase_ran(&events, &handles).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inner_service_error_still_runs_every_phase() {
    let background = Background::new();
    let events = Events::default();
    let (out, mut handed) = mpsc::unbounded_channel::<Vec<TaskHandle>>();
    let log = events.clone();
    let inner = tower::service_fn(move |req: Request<Body>| {
        let (out, log) = (out.clone(), log.clone());
        async move {
            let (mut parts, _body) = req.into_parts();
            let tasks =
                <Tasks as axum::extract::FromRequestParts<()>>::from_request_parts(&mut parts, &())
                    .await
                    .expect("the layer is there");
            out.send(schedule_in_every_phase(&tasks, &log))
                .expect("test listens");
            Err::<axum::response::Response, _>(std::io::Error::other("connection to upstream lost"))
        }
    });
    let mut service = tower::Layer::layer(&background.layer(), inner);

    let result = service
        .ready()
        .await
        .expect("ready")
        .call(request(Method::GET, "/"))
        .await;
    assert!(result.is_err(), "the inner error comes through");

    let handles = handed.try_recv().expect("service ran");
    assert_every_phase_ran(&events, &handles).await;
}

// ----------------------------------------- 5. handler future dropped early

#[tokio::test]
async fn dropped_handler_future_starts_deferred_tasks_in_order() {
    let background = Background::new();
    let events = Events::default();
    let (out, mut handed) = mpsc::unbounded_channel::<Vec<TaskHandle>>();
    let log = events.clone();
    let app = Router::new()
        .route(
            "/hang",
            get(move |tasks: Tasks| {
                let (out, e) = (out.clone(), log.clone());
                async move {
                    out.send(vec![
                        tasks.schedule(async_start(&e, "immediate")),
                        tasks
                            .after_response()
                            .schedule(async_start(&e, "response 1")),
                        tasks.after_route().schedule(async_start(&e, "route 1")),
                        tasks
                            .after_response()
                            .schedule(async_start(&e, "response 2")),
                        tasks.after_route().schedule(async_start(&e, "route 2")),
                    ])
                    .expect("test listens");
                    std::future::pending::<StatusCode>().await
                }
            }),
        )
        .layer(background.layer());

    let mut call = tokio_test::task::spawn(app.oneshot(request(Method::GET, "/hang")));
    assert_pending!(call.poll());
    let handles = handed.try_recv().expect("one poll reaches the handler");

    run_spawned_so_far(&background).await;
    assert!(handles[0].is_started(), "the immediate task started");
    for deferred in &handles[1..] {
        assert!(
            !deferred.is_started(),
            "{:?} started while the handler was pending",
            deferred.info().phase
        );
    }

    // The client went away (or an outer layer gave up): the handler's future
    // is dropped before it completes.
    drop(call);
    for handle in &handles {
        within("deferred task to start", handle.started()).await;
    }
    within("every task to end", background.wait_idle()).await;
    assert_eq!(
        events.snapshot(),
        [
            "immediate",
            "route 1",
            "route 2",
            "response 1",
            "response 2"
        ]
    );
    assert_all_ok(&handles).await;
}

#[tokio::test(start_paused = true)]
async fn outer_timeout_dropping_the_handler_starts_its_deferred_tasks() {
    let background = Background::new();
    let events = Events::default();
    let log = events.clone();
    let app = Router::new()
        .route(
            "/slow",
            get(move |tasks: Tasks| {
                let e = log.clone();
                async move {
                    tasks.after_response().schedule(async_start(&e, "response"));
                    tasks.after_route().schedule(sync_start(&e, "route"));
                    std::future::pending::<StatusCode>().await
                }
            }),
        )
        .layer(background.layer());

    // Paused time: the timeout fires as soon as the runtime is idle.
    let result = tokio::time::timeout(
        Duration::from_secs(30),
        app.oneshot(request(Method::GET, "/slow")),
    )
    .await;
    assert!(result.is_err(), "the handler never answers");

    within("deferred tasks to run", background.wait_idle()).await;
    let mut starts = events.snapshot();
    starts.sort();
    assert_eq!(starts, ["response", "route"]);
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.completed), (2, 2), "{stats:?}");
}

// ------------------------------------------------------- 6. missing layer

#[tokio::test]
async fn tasks_without_the_layer_is_a_500_naming_the_fix() {
    let app = Router::new().route(
        "/",
        get(|tasks: Tasks| async move {
            tasks.schedule(async {});
            "handler must not run"
        }),
    );

    let (status, text) = respond(app, Method::GET, "/").await;
    assert_eq!(
        status,
        StatusCode::INTERNAL_SERVER_ERROR,
        "a response, not a panic"
    );
    assert!(text.contains("background.layer()"), "body: {text:?}");
}

#[tokio::test]
async fn optional_tasks_without_the_layer_is_none() {
    let app = Router::new().route(
        "/",
        get(|tasks: Option<Tasks>| async move { if tasks.is_some() { "some" } else { "none" } }),
    );

    assert_eq!(
        respond(app, Method::GET, "/").await,
        (StatusCode::OK, "none".to_owned())
    );
}

#[tokio::test]
async fn a_middleware_inside_the_layer_schedules_for_the_same_request_as_its_handler() {
    use axum::middleware::{self, Next};

    let background = Background::new();
    let events = Events::default();
    let (in_middleware, in_handler) = (events.clone(), events.clone());
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| async move {
                let events = in_handler.clone();
                tasks
                    .after_response()
                    .schedule(async move { events.push("handler") });
                "ok"
            }),
        )
        .layer(middleware::from_fn(
            move |tasks: Tasks, request: Request<Body>, next: Next| {
                let events = in_middleware.clone();
                async move {
                    tasks
                        .after_response()
                        .schedule(async move { events.push("middleware") });
                    next.run(request).await
                }
            },
        ))
        .layer(background.layer());

    assert_eq!(
        respond(app, Method::GET, "/").await,
        (StatusCode::OK, "ok".to_owned())
    );
    within("tasks", background.wait_idle()).await;
    // Both were deferred to the one request's end, which both reached.
    let mut ran = events.snapshot();
    ran.sort_unstable();
    assert_eq!(ran, ["handler", "middleware"]);
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.completed), (2, 2), "{stats:?}");
}

#[tokio::test]
async fn the_innermost_layer_serves_the_tasks_of_its_routes() {
    let (outer, inner) = (Background::new(), Background::new());
    let api = Router::new()
        .route(
            "/users",
            post(|tasks: Tasks| async move {
                tasks.after_response().schedule(async {});
                StatusCode::CREATED
            }),
        )
        .layer(inner.layer());
    let app = Router::new()
        .route(
            "/",
            get(|tasks: Tasks| async move {
                tasks.schedule(async {});
                "home"
            }),
        )
        .nest("/api", api)
        .layer(outer.layer());

    assert_eq!(
        respond(app.clone(), Method::POST, "/api/users").await.0,
        StatusCode::CREATED
    );
    assert_eq!(respond(app, Method::GET, "/").await.0, StatusCode::OK);
    within("inner tasks", inner.wait_idle()).await;
    within("outer tasks", outer.wait_idle()).await;
    assert_eq!(inner.stats().completed, 1, "{:?}", inner.stats());
    assert_eq!(outer.stats().completed, 1, "{:?}", outer.stats());
}

// --------------------------------------------- 7. clones past their phase

#[tokio::test]
async fn tasks_clone_moved_into_a_task_starts_deferred_phases_at_once_after_the_response() {
    let background = Background::new();
    let (go, go_rx) = oneshot::channel::<()>();
    let go_rx = std::sync::Arc::new(std::sync::Mutex::new(Some(go_rx)));
    let (back, mut back_rx) = mpsc::unbounded_channel::<(TaskHandle, TaskHandle)>();
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let go_rx = go_rx.lock().unwrap().take().expect("one request");
                let back = back.clone();
                async move {
                    let keeper = tasks.clone();
                    tasks.schedule(async move {
                        go_rx.await.expect("test says go");
                        let route = keeper.after_route().schedule(async {});
                        let response = keeper.after_response().schedule(async {});
                        back.send((route, response)).expect("test listens");
                    });
                    "ok"
                }
            }),
        )
        .layer(background.layer());

    assert_eq!(respond(app, Method::GET, "/").await.1, "ok");

    // The request is over; the clone schedules from inside a task now.
    go.send(()).expect("task waits");
    let (route, response) = within("late schedules", back_rx.recv())
        .await
        .expect("task scheduled");
    within("late after-route to start", route.started()).await;
    within("late after-response to start", response.started()).await;
    assert_eq!(route.info().phase, Phase::AfterRoute);
    assert_eq!(response.info().phase, Phase::AfterResponse);
    assert_all_ok(&[route, response]).await;
}

#[tokio::test]
async fn tasks_clone_kept_past_the_handler_starts_after_route_at_once_and_after_response_at_body_end()
 {
    let background = Background::new();
    let (out, mut handed) =
        mpsc::unbounded_channel::<(Tasks, mpsc::UnboundedSender<&'static str>)>();
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let out = out.clone();
                async move {
                    let (chunks, body) = channel_body();
                    out.send((tasks.clone(), chunks)).expect("test listens");
                    body
                }
            }),
        )
        .layer(background.layer());

    let response = app
        .oneshot(request(Method::GET, "/"))
        .await
        .expect("infallible");
    let (kept, chunks) = handed.try_recv().expect("handler ran");

    // The handler has returned; the body is not sent yet.
    let route = kept.after_route().schedule(async {});
    within("after-route from a kept clone to start", route.started()).await;
    let after_response = kept.after_response().schedule(async {});
    run_spawned_so_far(&background).await;
    assert!(
        !after_response.is_started(),
        "after-response from a kept clone started before the body was sent"
    );

    drop(chunks);
    let body = within("body", response.into_body().collect()).await;
    assert!(body.expect("infallible").to_bytes().is_empty());
    within(
        "after-response from a kept clone to start at the body end",
        after_response.started(),
    )
    .await;

    // And now the response is done, every phase starts at once.
    let late = kept.after_response().schedule(async {});
    within("after-response after the end to start", late.started()).await;
    assert_all_ok(&[route, after_response, late]).await;
}

// ----------------------------------------------- 8. responses without a body

after_response_starts_when_the_body_ends! {
    no_content_response_starts_after_response_without_polling_the_body: POST, Answer::NoContent;
    head_response_starts_after_response_without_polling_the_body:       HEAD, Answer::Endless;
}

// --------------------------------------------------- 9. what TaskInfo says

async fn send_audit(id: u32) {
    assert_eq!(id, 7);
}

struct Welcome;

impl BackgroundTask for Welcome {
    type Mode = mode::Async;

    async fn run(self) -> Result<(), BoxError> {
        Ok(())
    }
}

async fn register(
    tasks: Tasks,
    Path(id): Path<u32>,
    Extension(out): Extension<mpsc::UnboundedSender<Vec<TaskHandle>>>,
) -> StatusCode {
    out.send(vec![
        tasks.schedule(send_audit(id)),
        tasks.after_route().schedule(move || assert_eq!(id, 7)),
        tasks
            .task()
            .name("x")
            .phase(Phase::AfterResponse)
            .build()
            .schedule(async {}),
        tasks.after_response().schedule(Welcome),
    ])
    .expect("test listens");
    StatusCode::CREATED
}

#[tokio::test]
async fn task_info_carries_request_method_path_phase_and_derived_name() {
    let background = Background::new();
    let (out, mut handed) = mpsc::unbounded_channel::<Vec<TaskHandle>>();
    let app = Router::new()
        .nest("/api", Router::new().route("/users/{id}", post(register)))
        .layer(Extension(out))
        .layer(background.layer());

    let response = app
        .oneshot(request(Method::POST, "/api/users/7?source=signup"))
        .await
        .expect("infallible");
    assert_eq!(response.status(), StatusCode::CREATED);
    let handles = handed.try_recv().expect("handler ran");
    drop(response);

    let expected = [
        ("send_audit", Phase::Immediate, ModeKind::Async),
        ("register", Phase::AfterRoute, ModeKind::Sync),
        ("x", Phase::AfterResponse, ModeKind::Async),
        ("Welcome", Phase::AfterResponse, ModeKind::Async),
    ];
    assert_eq!(handles.len(), expected.len());
    for (handle, (name, phase, mode)) in handles.iter().zip(expected) {
        let info = handle.info();
        assert_eq!(info.name, name);
        assert_eq!(info.phase, phase, "{name}");
        assert_eq!(info.mode, mode, "{name}");
        assert_eq!(info.method, Some(Method::POST), "{name}");
        assert_eq!(info.path.as_deref(), Some("/api/users/7"), "{name}");
        assert_eq!(info.id, handle.id());
    }
    assert_all_ok(&handles).await;
    // The request context survives to the end.
    let after = handles[1].info();
    assert_eq!(after.path.as_deref(), Some("/api/users/7"));
    assert!(after.started_at.is_some());
    assert_eq!(after.attempts, 1);
}

/// A short path is kept inline and a long one on the heap: either comes
/// back whole in `TaskInfo`, and each task's info has its own copy.
#[tokio::test]
async fn task_info_carries_short_and_long_paths_whole() {
    let background = Background::new();
    let (out, mut handed) = mpsc::unbounded_channel::<TaskHandle>();
    let app = Router::new()
        .route(
            "/{*rest}",
            get(move |tasks: Tasks| {
                let out = out.clone();
                async move {
                    let _ = out.send(tasks.schedule(async {}));
                }
            }),
        )
        .layer(background.layer());

    let long = format!("/reports/{}/summary", "0123456789".repeat(8));
    for path in ["/r", "/exactly/twenty-four/byt", long.as_str()] {
        let (status, _) = respond(app.clone(), Method::GET, path).await;
        assert_eq!(status, StatusCode::OK);
        let handle = handed.try_recv().expect("the handler ran");
        assert_eq!(handle.info().path.as_deref(), Some(path));
        within("the task to end", handle.outcome())
            .await
            .expect("completed");
    }
    within("idle", background.wait_idle()).await;
}

/// What a subscriber saw of spans, by name: which closed, and which
/// followed from which.
#[derive(Clone, Default)]
struct SpanLog {
    names: std::sync::Arc<std::sync::Mutex<std::collections::HashMap<u64, &'static str>>>,
    closed: Events,
    follows: Events,
}

impl<S> tracing_subscriber::Layer<S> for SpanLog
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    fn on_new_span(
        &self,
        attrs: &tracing::span::Attributes<'_>,
        id: &tracing::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let mut names = self.names.lock().expect("not poisoned");
        names.insert(id.into_u64(), attrs.metadata().name());
    }

    fn on_follows_from(
        &self,
        span: &tracing::Id,
        follows: &tracing::Id,
        _: tracing_subscriber::layer::Context<'_, S>,
    ) {
        let names = self.names.lock().expect("not poisoned");
        let name = |id: &tracing::Id| names.get(&id.into_u64()).copied().unwrap_or("?");
        self.follows
            .push(format!("{} follows {}", name(span), name(follows)));
    }

    fn on_close(&self, id: tracing::Id, _: tracing_subscriber::layer::Context<'_, S>) {
        let names = self.names.lock().expect("not poisoned");
        self.closed
            .push(names.get(&id.into_u64()).copied().unwrap_or("?"));
    }
}

/// The request's scope keeps the span its request was served in (its tasks
/// follow from it) no longer than the request: with task spans off (a
/// service logging at INFO), the request's span closes once the response
/// has been sent, while its task still runs.
#[tokio::test(flavor = "current_thread")]
async fn a_running_task_does_not_keep_its_request_span_open() {
    use tracing::Instrument;
    use tracing_subscriber::filter::LevelFilter;
    use tracing_subscriber::layer::SubscriberExt;

    let log = SpanLog::default();
    let subscriber = tracing_subscriber::registry()
        .with(log.clone())
        .with(LevelFilter::INFO);
    let _default = util::set_default(subscriber);

    let background = Background::new();
    let (release, held) = oneshot::channel::<()>();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Some(held)));
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let held = held.lock().expect("not poisoned").take();
                async move {
                    tasks.schedule(async move {
                        if let Some(held) = held {
                            let _ = held.await;
                        }
                    });
                    "ok"
                }
            }),
        )
        .layer(background.layer());
    respond(app, Method::GET, "/")
        .instrument(tracing::info_span!("request"))
        .await;

    assert_eq!(background.in_flight().len(), 1, "the task still runs");
    assert_eq!(log.closed.snapshot(), ["request"]);
    let _ = release.send(());
    within("the task to end", background.wait_idle()).await;
}

/// A task follows from the span its request was served in; one scheduled
/// through a `Tasks` kept past the response (the request's span is gone)
/// follows from the span it is scheduled in.
#[tokio::test(flavor = "current_thread")]
async fn a_task_follows_from_its_request_span_or_after_the_request_from_its_own() {
    use tracing::Instrument;
    use tracing_subscriber::layer::SubscriberExt;

    let log = SpanLog::default();
    let _default = util::set_default(tracing_subscriber::registry().with(log.clone()));

    let background = Background::new();
    let (kept, mut handed) = mpsc::unbounded_channel::<Tasks>();
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let kept = kept.clone();
                async move {
                    tasks.schedule(async {});
                    let _ = kept.send(tasks);
                    "ok"
                }
            }),
        )
        .layer(background.layer());
    respond(app, Method::GET, "/")
        .instrument(tracing::info_span!("request"))
        .await;
    let tasks = handed.recv().await.expect("the handler ran");
    async { tasks.schedule(async {}).started().await }
        .instrument(tracing::info_span!("later"))
        .await;
    within("the tasks to end", background.wait_idle()).await;

    assert_eq!(
        log.follows.snapshot(),
        [
            "background_task follows request",
            "background_task follows later"
        ]
    );
}
