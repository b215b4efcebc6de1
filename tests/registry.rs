//! The registry of in-flight tasks: `wait_idle`, `in_flight()`, `stats()` and
//! what a `TaskHandle` sees.

mod util;

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::{get, post};
use axum_background::mode::ModeKind;
use axum_background::{Background, Phase, TaskError, TaskHandle, TaskInfo, Tasks};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::{Notify, mpsc};
use tokio_test::{assert_pending, assert_ready, task};
use tower::ServiceExt;

use util::assert_settled;
use util::within;

/// A response body that sends what the test pushes, and ends when the test
/// drops the sender: lets a test hold a response "still being sent".
struct ChannelBody(mpsc::UnboundedReceiver<Bytes>);

impl http_body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0
            .poll_recv(cx)
            .map(|chunk| chunk.map(|bytes| Ok(Frame::data(bytes))))
    }
}

/// Handles a request handler hands back to its test.
type Handles = Arc<Mutex<Vec<TaskHandle>>>;

fn taken(handles: &Handles) -> Vec<TaskHandle> {
    std::mem::take(&mut *handles.lock().unwrap())
}

#[tokio::test]
async fn wait_idle_stays_pending_while_a_task_is_blocked_and_in_flight_lists_it() {
    let background = Background::new();
    let release = Arc::new(Notify::new());
    let handles: Handles = Arc::default();
    let app = Router::new()
        .route(
            "/jobs/{id}",
            post({
                let release = Arc::clone(&release);
                let handles = Arc::clone(&handles);
                move |tasks: Tasks| async move {
                    let handle = tasks
                        .task()
                        .name("export")
                        .shield(true)
                        .build()
                        .schedule(async move { release.notified().await });
                    handles.lock().unwrap().push(handle);
                    StatusCode::ACCEPTED
                }
            }),
        )
        .layer(background.layer());

    let response = within(
        "request",
        app.oneshot(Request::post("/jobs/7").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    drop(response);
    let [export] = taken(&handles).try_into().expect("one task scheduled");

    // A sync task outside any request, blocked on a channel the test holds.
    let (unblock, blocked) = std::sync::mpsc::channel::<()>();
    let sync = background
        .task()
        .name("sync-job")
        .build()
        .schedule(move || {
            let _ = blocked.recv();
        });

    within("export started", export.started()).await;
    within("sync-job started", sync.started()).await;

    let mut idle = task::spawn(background.wait_idle());
    assert_pending!(idle.poll());

    let in_flight = background.in_flight();
    assert_eq!(in_flight.len(), 2, "{in_flight:?}");
    let export_info = &in_flight[0];
    assert_eq!(export_info.id, export.id());
    assert_eq!(export_info.name, "export");
    assert_eq!(export_info.phase, Phase::Immediate);
    assert_eq!(export_info.mode, ModeKind::Async);
    assert!(export_info.shielded);
    assert_eq!(export_info.method, Some(Method::POST));
    assert_eq!(export_info.path.as_deref(), Some("/jobs/7"));
    assert!(export_info.started_at.is_some());

    let sync_info = &in_flight[1];
    assert_eq!(sync_info.id, sync.id());
    assert_eq!(sync_info.name, "sync-job");
    assert_eq!(sync_info.mode, ModeKind::Sync);
    assert!(!sync_info.shielded);
    assert_eq!(sync_info.method, None);
    assert_eq!(sync_info.path, None);

    release.notify_one();
    within("export outcome", export.outcome())
        .await
        .expect("export completes");
    // One task is still blocked: still not idle.
    assert_pending!(idle.poll());
    assert_eq!(background.in_flight().len(), 1);

    unblock.send(()).unwrap();
    within("wait_idle", &mut idle).await;
    assert!(background.in_flight().is_empty());
    assert!(export.is_finished() && sync.is_finished());
    let stats = background.stats();
    assert_eq!(stats.completed, 2, "{stats:?}");
    assert_settled(stats);
}

#[tokio::test]
async fn task_stays_in_flight_until_its_async_error_handler_returns() {
    let background = Background::new();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let calls = Arc::new(AtomicUsize::new(0));
    let handle = background
        .task()
        .name("fails")
        .on_error({
            let entered = Arc::clone(&entered);
            let release = Arc::clone(&release);
            let calls = Arc::clone(&calls);
            move |_info: TaskInfo, error: TaskError| {
                let entered = Arc::clone(&entered);
                let release = Arc::clone(&release);
                let calls = Arc::clone(&calls);
                async move {
                    assert!(error.is_failed(), "{error}");
                    calls.fetch_add(1, Ordering::SeqCst);
                    entered.notify_one();
                    release.notified().await;
                }
            }
        })
        .build()
        .schedule(async { Err::<(), _>("boom") });

    within("handler entered", entered.notified()).await;

    let mut idle = task::spawn(background.wait_idle());
    assert_pending!(idle.poll());
    let mut outcome = task::spawn(handle.outcome());
    assert_pending!(outcome.poll());
    assert!(!handle.is_finished());
    assert!(handle.try_outcome().is_none());
    let in_flight = background.in_flight();
    assert_eq!(in_flight.len(), 1, "{in_flight:?}");
    assert_eq!(in_flight[0].id, handle.id());
    let stats = background.stats();
    assert_eq!((stats.running, stats.failed), (1, 0), "{stats:?}");

    release.notify_one();
    within("wait_idle", &mut idle).await;
    let error = assert_ready!(outcome.poll()).expect_err("the task failed");
    assert!(error.is_failed());
    assert_eq!(error.to_string(), "task failed: boom");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    assert!(background.in_flight().is_empty());
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.failed), (1, 1), "{stats:?}");
    assert_settled(stats);
}

#[tokio::test]
async fn after_response_task_waiting_for_its_body_counts_as_queued() {
    let background = Background::new();
    let release = Arc::new(Notify::new());
    let handles: Handles = Arc::default();
    let (chunks, body) = mpsc::unbounded_channel();
    let body = Arc::new(Mutex::new(Some(ChannelBody(body))));
    let app = Router::new()
        .route(
            "/stream",
            get({
                let release = Arc::clone(&release);
                let handles = Arc::clone(&handles);
                move |tasks: Tasks| async move {
                    let running = tasks.schedule(async move { release.notified().await });
                    let queued = tasks.after_response().schedule(async {});
                    handles.lock().unwrap().extend([running, queued]);
                    Body::new(body.lock().unwrap().take().expect("one request"))
                }
            }),
        )
        .layer(background.layer());

    let response = within(
        "response head",
        app.oneshot(Request::get("/stream").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap();
    let [running, queued] = taken(&handles).try_into().expect("two tasks");
    within("immediate task started", running.started()).await;

    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.queued, stats.running),
        (2, 1, 1),
        "{stats:?}"
    );
    assert!(running.is_started());
    assert!(!queued.is_started());
    let mut queued_started = task::spawn(queued.started());
    assert_pending!(queued_started.poll());
    let in_flight = background.in_flight();
    assert_eq!(in_flight.len(), 2, "{in_flight:?}");
    assert_eq!(in_flight[1].phase, Phase::AfterResponse);
    assert_eq!(in_flight[1].started_at, None);

    chunks.send(Bytes::from_static(b"all of it")).unwrap();
    drop(chunks);
    let body = within("body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    assert_eq!(body, "all of it");
    within("after-response task started", &mut queued_started).await;

    release.notify_one();
    within("wait_idle", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.completed), (2, 2), "{stats:?}");
    assert_settled(stats);
}

#[tokio::test]
async fn registry_does_not_grow_with_finished_tasks() {
    const TASKS: u64 = 10_000;
    let background = Background::new();
    let ran = Arc::new(AtomicUsize::new(0));
    for i in 0..TASKS {
        let ran = Arc::clone(&ran);
        if i % 10 == 0 {
            background.schedule(move || {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        } else {
            background.schedule(async move {
                ran.fetch_add(1, Ordering::Relaxed);
            });
        }
    }
    within("wait_idle", background.wait_idle()).await;
    assert!(background.in_flight().is_empty());
    assert_eq!(ran.load(Ordering::Relaxed), TASKS as usize);
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.completed),
        (TASKS, TASKS),
        "{stats:?}"
    );
    assert_settled(stats);
}

#[tokio::test]
async fn handle_reports_start_and_outcome() {
    let background = Background::new();
    let handles: Handles = Arc::default();
    let (chunks, body) = mpsc::unbounded_channel();
    let body = Arc::new(Mutex::new(Some(ChannelBody(body))));
    let app = Router::new()
        .route(
            "/report",
            get({
                let handles = Arc::clone(&handles);
                move |tasks: Tasks| async move {
                    let ok = tasks.after_response().schedule(async {});
                    let failing = tasks
                        .after_response()
                        .schedule(|| Err::<(), _>("disk full"));
                    handles.lock().unwrap().extend([ok, failing]);
                    Body::new(body.lock().unwrap().take().expect("one request"))
                }
            }),
        )
        .layer(background.layer());

    let response = within(
        "response head",
        app.oneshot(Request::get("/report").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap();
    let [ok, failing] = taken(&handles).try_into().expect("two tasks");

    let mut started = task::spawn(ok.started());
    let mut outcome = task::spawn(ok.outcome());
    assert_pending!(started.poll());
    assert_pending!(outcome.poll());
    let info = ok.info();
    assert_eq!(info.started_at, None);
    assert_eq!(info.attempts, 0);
    assert_eq!(info.path.as_deref(), Some("/report"));

    drop(chunks);
    within("body end", response.into_body().collect())
        .await
        .unwrap();

    within("started", &mut started).await;
    assert!(ok.is_started());
    let info = ok.info();
    let started_at = info.started_at.expect("started_at set once started");
    assert!(started_at >= info.scheduled_at);
    assert_eq!(info.attempts, 1);
    within("outcome", &mut outcome)
        .await
        .expect("the task completes");
    assert!(ok.is_finished());
    assert!(matches!(ok.try_outcome(), Some(Ok(()))));

    let error = within("failing outcome", failing.outcome())
        .await
        .expect_err("the task failed");
    assert!(error.is_failed());
    assert_eq!(error.to_string(), "task failed: disk full");
    assert!(failing.info().started_at.is_some());
    assert_eq!(failing.info().mode, ModeKind::Sync);

    within("wait_idle", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!((stats.completed, stats.failed), (1, 1), "{stats:?}");
    assert_settled(stats);
}
