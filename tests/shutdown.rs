//! `Background::shutdown(grace)`: the order of its steps, the grace deadline,
//! sync tasks, late schedules, queued tasks and the report.

mod util;

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum_background::{
    Background, BackgroundTask, BoxError, Phase, RejectReason, ShutdownHook, TaskContext,
    TaskError, TaskHandle, TaskId, TaskInfo, Tasks, mode,
};
use bytes::Bytes;
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_test::{assert_pending, task};
use tower::ServiceExt;

use util::assert_settled;
use util::{Events, within};

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

/// Every error-handler call, in order: which task, and why.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(TaskId, &'static str)>>>);

impl Calls {
    /// A sync error handler recording into `self`.
    fn handler(&self) -> impl Fn(&TaskInfo, &TaskError) + Send + Sync + 'static {
        let calls = self.clone();
        move |info: &TaskInfo, error: &TaskError| {
            calls.0.lock().unwrap().push((info.id, error.kind()));
        }
    }

    fn snapshot(&self) -> Vec<(TaskId, &'static str)> {
        self.0.lock().unwrap().clone()
    }
}

/// Handles a request handler hands back to its test.
type Handles = Arc<Mutex<Vec<TaskHandle>>>;

fn taken(handles: &Handles) -> Vec<TaskHandle> {
    std::mem::take(&mut *handles.lock().unwrap())
}

fn ids(infos: &[TaskInfo]) -> Vec<TaskId> {
    infos.iter().map(|info| info.id).collect()
}

fn boom() {
    panic!("boom (expected by the test)");
}

#[tokio::test]
async fn shielded_task_finishes_while_unshielded_async_task_is_cancelled() {
    let background = Background::new();
    let calls = Calls::default();
    let never = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let unshielded_done = Arc::new(AtomicBool::new(false));
    let shielded_done = Arc::new(AtomicBool::new(false));

    let unshielded = background
        .task()
        .name("unshielded")
        .on_error(calls.handler())
        .build()
        .schedule({
            let never = Arc::clone(&never);
            let done = Arc::clone(&unshielded_done);
            async move {
                never.notified().await;
                done.store(true, Ordering::SeqCst);
            }
        });
    let shielded = background
        .task()
        .name("shielded")
        .shield(true)
        .on_error(calls.handler())
        .build()
        .schedule({
            let gate = Arc::clone(&gate);
            let done = Arc::clone(&shielded_done);
            async move {
                gate.notified().await;
                done.store(true, Ordering::SeqCst);
            }
        });
    within("unshielded started", unshielded.started()).await;
    within("shielded started", shielded.started()).await;

    let mut shutdown = task::spawn(background.shutdown(Duration::from_secs(10)));
    assert_pending!(shutdown.poll());
    let outcome = within("unshielded outcome", unshielded.outcome()).await;
    assert!(matches!(outcome, Err(TaskError::Cancelled)), "{outcome:?}");
    // The shielded task is still running: shutdown waits for it.
    assert!(!shielded.is_finished());
    assert_pending!(shutdown.poll());

    gate.notify_one();
    let report = within("shutdown", &mut shutdown).await;

    assert_eq!(ids(&util::infos(&report.finished)), [shielded.id()]);
    assert_eq!(ids(&util::infos(&report.cancelled)), [unshielded.id()]);
    assert!(report.overdue.is_empty(), "{report:?}");
    assert!(matches!(shielded.try_outcome(), Some(Ok(()))));
    assert!(shielded_done.load(Ordering::SeqCst));
    assert!(!unshielded_done.load(Ordering::SeqCst));
    assert_eq!(calls.snapshot(), [(unshielded.id(), "cancelled")]);
    assert!(background.in_flight().is_empty());
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.completed, stats.cancelled),
        (2, 1, 1),
        "{stats:?}"
    );
    assert_settled(stats);
}

/// Records when it is dropped (its task cancelled), and whether a schedule
/// made at that moment was rejected.
struct OnCancel {
    background: Background,
    events: Events,
    cancelled: Arc<Notify>,
}

impl Drop for OnCancel {
    fn drop(&mut self) {
        let late = self.background.schedule(async {});
        let verdict = match late.try_outcome() {
            Some(Err(TaskError::Rejected(RejectReason::ShuttingDown))) => "rejected",
            _ => "accepted",
        };
        self.events
            .push(format!("unshielded cancelled; new schedule {verdict}"));
        self.cancelled.notify_one();
    }
}

struct RecordHook(Events);

impl ShutdownHook for RecordHook {
    async fn on_shutdown(&self) {
        self.0.push("hook: plugin");
    }
}

#[tokio::test]
async fn shutdown_rejects_then_cancels_then_waits_then_runs_hooks_then_reports() {
    let events = Events::default();
    let background = Background::builder()
        .shutdown_hook(RecordHook(events.clone()))
        .shutdown_hook({
            let events = events.clone();
            move || {
                let events = events.clone();
                async move { events.push("hook: closure") }
            }
        })
        .build();
    let never = Arc::new(Notify::new());
    let cancelled = Arc::new(Notify::new());

    let unshielded = background.schedule({
        let guard = OnCancel {
            background: background.clone(),
            events: events.clone(),
            cancelled: Arc::clone(&cancelled),
        };
        let never = Arc::clone(&never);
        async move {
            let _guard = guard;
            never.notified().await;
        }
    });
    // The shielded task finishes only once the unshielded one is cancelled:
    // during shutdown, and after it.
    let shielded = background.task().shield(true).build().schedule({
        let events = events.clone();
        let cancelled = Arc::clone(&cancelled);
        async move {
            cancelled.notified().await;
            events.push("shielded finished");
        }
    });
    within("unshielded started", unshielded.started()).await;
    within("shielded started", shielded.started()).await;
    assert!(events.snapshot().is_empty());

    let report = within("shutdown", background.shutdown(Duration::from_secs(10))).await;
    events.push("report returned");

    assert_eq!(
        events.snapshot(),
        [
            "unshielded cancelled; new schedule rejected",
            "shielded finished",
            "hook: plugin",
            "hook: closure",
            "report returned",
        ]
    );
    assert_eq!(ids(&util::infos(&report.finished)), [shielded.id()]);
    assert_eq!(ids(&util::infos(&report.cancelled)), [unshielded.id()]);
    assert!(report.overdue.is_empty(), "{report:?}");
    let stats = background.stats();
    assert_eq!(
        (
            stats.scheduled,
            stats.completed,
            stats.cancelled,
            stats.rejected
        ),
        (3, 1, 1, 1),
        "{stats:?}"
    );
    assert_settled(stats);
}

#[tokio::test(start_paused = true)]
async fn shielded_task_outliving_grace_is_overdue_and_shutdown_returns_at_grace() {
    let grace = Duration::from_secs(5);
    let background = Background::new();
    let calls = Calls::default();
    let never = Arc::new(Notify::new());
    let slow_done = Arc::new(AtomicBool::new(false));

    let shielded = background
        .task()
        .shield(true)
        .on_error(calls.handler())
        .build();
    // Needs 1 s of its grace, and gets it.
    let quick = shielded.schedule(tokio::time::sleep(Duration::from_secs(1)));
    // Would need for ever.
    let slow = shielded.schedule({
        let never = Arc::clone(&never);
        let done = Arc::clone(&slow_done);
        async move {
            never.notified().await;
            done.store(true, Ordering::SeqCst);
        }
    });
    tokio::time::timeout(Duration::from_secs(1), slow.started())
        .await
        .expect("slow task started");

    let start = tokio::time::Instant::now();
    let report = tokio::time::timeout(Duration::from_secs(60), background.shutdown(grace))
        .await
        .expect("shutdown returns");
    let elapsed = start.elapsed();

    assert!(
        elapsed >= grace,
        "returned after {elapsed:?}, before the grace"
    );
    assert!(
        elapsed <= grace + Duration::from_millis(50),
        "returned after {elapsed:?}, long after the grace"
    );
    assert_eq!(ids(&util::infos(&report.finished)), [quick.id()]);
    assert_eq!(ids(&util::infos(&report.overdue)), [slow.id()]);
    assert!(report.cancelled.is_empty(), "{report:?}");
    assert!(matches!(quick.try_outcome(), Some(Ok(()))));
    let outcome = slow.try_outcome();
    assert!(
        matches!(outcome, Some(Err(TaskError::Cancelled))),
        "{outcome:?}"
    );
    assert!(!slow_done.load(Ordering::SeqCst));
    assert_eq!(calls.snapshot(), [(slow.id(), "cancelled")]);
    assert!(background.in_flight().is_empty());
    let stats = background.stats();
    assert_eq!((stats.completed, stats.cancelled), (1, 1), "{stats:?}");
    assert_settled(stats);
}

/// DESIGN "Shutdown" 5: `overdue` means still running at the deadline, with
/// outcome `Cancelled`; a task whose work ended (here: failed) during shutdown
/// is `completed`, whatever its result, even if its error handler is slow.
#[tokio::test(start_paused = true)]
async fn task_that_ended_before_the_deadline_is_not_overdue_for_a_slow_handler() {
    let background = Background::new();
    let entered = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    let gate = Arc::new(Notify::new());
    let handle = background
        .task()
        .shield(true)
        .on_error({
            let entered = Arc::clone(&entered);
            let release = Arc::clone(&release);
            move |_info: TaskInfo, _error: TaskError| {
                let entered = Arc::clone(&entered);
                let release = Arc::clone(&release);
                async move {
                    entered.notify_one();
                    release.notified().await;
                }
            }
        })
        .build()
        .schedule({
            let gate = Arc::clone(&gate);
            async move {
                gate.notified().await;
                Err::<(), _>("failed during shutdown")
            }
        });
    tokio::time::timeout(Duration::from_secs(1), handle.started())
        .await
        .expect("task started");

    let mut shutdown = task::spawn(background.shutdown(Duration::from_secs(5)));
    assert_pending!(shutdown.poll());
    gate.notify_one();
    tokio::time::timeout(Duration::from_secs(1), entered.notified())
        .await
        .expect("handler entered");
    let report = tokio::time::timeout(Duration::from_secs(60), &mut shutdown)
        .await
        .expect("shutdown returns");
    release.notify_one();
    let outcome = tokio::time::timeout(Duration::from_secs(1), handle.outcome())
        .await
        .expect("outcome");

    assert!(matches!(outcome, Err(TaskError::Failed(_))), "{outcome:?}");
    assert!(
        report.overdue.is_empty(),
        "listed overdue, yet its outcome is {outcome:?}, not Cancelled: {report:?}"
    );
    assert_eq!(ids(&util::infos(&report.finished)), [handle.id()]);
}

#[tokio::test]
async fn running_unshielded_sync_task_sees_cancellation_and_is_waited_for() {
    let background = Background::new();
    let (started_tx, started_rx) = oneshot::channel();
    let saw_cancel = Arc::new(AtomicBool::new(false));
    let handle = background.task().name("import").build().schedule({
        let saw_cancel = Arc::clone(&saw_cancel);
        move || {
            let context = TaskContext::current().expect("inside a task");
            let token = context.cancellation_token();
            started_tx.send(()).unwrap();
            // Works until asked to stop (bounded, should cancellation never come).
            let give_up = std::time::Instant::now() + Duration::from_secs(5);
            while !token.is_cancelled() && std::time::Instant::now() < give_up {
                std::thread::yield_now();
            }
            saw_cancel.store(
                token.is_cancelled() && context.is_cancelled(),
                Ordering::SeqCst,
            );
        }
    });
    within("sync task running", started_rx).await.unwrap();

    let report = within("shutdown", background.shutdown(Duration::from_secs(30))).await;

    assert!(
        saw_cancel.load(Ordering::SeqCst),
        "cancellation never fired"
    );
    assert!(
        handle.is_finished(),
        "shutdown returned before the sync task ended"
    );
    assert!(matches!(handle.try_outcome(), Some(Ok(()))));
    assert_eq!(ids(&util::infos(&report.finished)), [handle.id()]);
    assert!(
        report.cancelled.is_empty() && report.overdue.is_empty(),
        "{report:?}"
    );
    assert_settled(background.stats());
}

/// A sync task doing mixed work: it blocks, then awaits its token to learn it
/// should wrap up.
struct MixedImport {
    started: oneshot::Sender<()>,
    wrapped_up: Arc<AtomicBool>,
}

impl BackgroundTask for MixedImport {
    type Mode = mode::Sync;

    async fn run(self) -> Result<(), BoxError> {
        let token = TaskContext::current()
            .expect("inside a task")
            .cancellation_token();
        let cancelled = token.cancelled();
        tokio::pin!(cancelled);
        let mut started = Some(self.started);
        // Signals "started" from a poll that then yields, so the task is
        // parked on its token (not mid-poll) when shutdown begins.
        std::future::poll_fn(|cx| {
            let cancelled = cancelled.as_mut().poll(cx);
            if cancelled.is_pending() {
                if let Some(started) = started.take() {
                    started.send(()).unwrap();
                }
            }
            cancelled
        })
        .await;
        self.wrapped_up.store(true, Ordering::SeqCst);
        Ok(())
    }
}

/// DESIGN "Shutdown": a running non-shielded sync task cannot be interrupted;
/// its token fires and shutdown waits for it like a shielded one.
#[tokio::test]
async fn running_unshielded_sync_task_awaiting_its_token_is_not_interrupted() {
    let background = Background::new();
    let (started, started_rx) = oneshot::channel();
    let wrapped_up = Arc::new(AtomicBool::new(false));
    let handle = background.schedule(MixedImport {
        started,
        wrapped_up: Arc::clone(&wrapped_up),
    });
    within("sync task running", started_rx).await.unwrap();

    let report = within("shutdown", background.shutdown(Duration::from_secs(10))).await;

    assert!(
        wrapped_up.load(Ordering::SeqCst),
        "the sync task was dropped at its await instead of being let finish; outcome {:?}",
        handle.try_outcome()
    );
    assert!(matches!(handle.try_outcome(), Some(Ok(()))));
    assert_eq!(ids(&util::infos(&report.finished)), [handle.id()]);
}

#[tokio::test]
async fn sync_task_ignoring_cancellation_past_grace_is_overdue() {
    let grace = Duration::from_millis(200);
    let background = Background::new();
    let calls = Calls::default();
    let (started_tx, started_rx) = oneshot::channel();
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (ended_tx, ended_rx) = oneshot::channel();
    let handle = background
        .task()
        .name("stubborn")
        .on_error(calls.handler())
        .build()
        .schedule(move || {
            started_tx.send(()).unwrap();
            // Ignores cancellation; ends when the test says so (or is gone).
            let _ = released.recv();
            let _ = ended_tx.send(());
        });
    within("sync task running", started_rx).await.unwrap();

    let start = tokio::time::Instant::now();
    let report = within("shutdown", background.shutdown(grace)).await;
    assert!(start.elapsed() >= grace);

    assert_eq!(ids(&util::infos(&report.overdue)), [handle.id()]);
    assert!(
        report.finished.is_empty() && report.cancelled.is_empty(),
        "{report:?}"
    );
    let outcome = handle.try_outcome();
    assert!(
        matches!(outcome, Some(Err(TaskError::Cancelled))),
        "{outcome:?}"
    );
    assert_eq!(calls.snapshot(), [(handle.id(), "cancelled")]);
    assert!(background.in_flight().is_empty());
    let stats = background.stats();
    assert_eq!((stats.cancelled, stats.completed), (1, 0), "{stats:?}");
    assert_settled(stats);

    // Its thread ran on; when it ends, nothing is counted or reported twice.
    release.send(()).unwrap();
    within("sync task thread ended", ended_rx).await.unwrap();
    within("wait_idle", background.wait_idle()).await;
    assert_eq!(background.stats(), stats);
    assert_eq!(calls.snapshot(), [(handle.id(), "cancelled")]);
    assert!(matches!(
        handle.try_outcome(),
        Some(Err(TaskError::Cancelled))
    ));
}

#[tokio::test]
async fn schedules_after_shutdown_began_are_rejected() {
    let background = Background::new();
    let calls = Calls::default();
    let ran = Arc::new(AtomicBool::new(false));
    let handles: Handles = Arc::default();
    let app = Router::new()
        .route(
            "/late",
            get({
                let calls = calls.clone();
                let ran = Arc::clone(&ran);
                let handles = Arc::clone(&handles);
                move |tasks: Tasks| async move {
                    // An async error handler, for the rejection path that spawns it.
                    let configured = tasks
                        .task()
                        .on_error(move |info: TaskInfo, error: TaskError| {
                            let calls = calls.clone();
                            async move { calls.0.lock().unwrap().push((info.id, error.kind())) }
                        })
                        .build();
                    let now = configured.schedule({
                        let ran = Arc::clone(&ran);
                        async move { ran.store(true, Ordering::SeqCst) }
                    });
                    let later = tasks.after_response().schedule({
                        let ran = Arc::clone(&ran);
                        move || ran.store(true, Ordering::SeqCst)
                    });
                    handles.lock().unwrap().extend([now, later]);
                    "still serving"
                }
            }),
        )
        .layer(background.layer());

    // A shielded task keeps shutdown in progress while the test schedules.
    let gate = Arc::new(Notify::new());
    let keeper = background.task().shield(true).build().schedule({
        let gate = Arc::clone(&gate);
        async move { gate.notified().await }
    });
    within("keeper started", keeper.started()).await;
    let mut shutdown = task::spawn(background.shutdown(Duration::from_secs(10)));
    assert_pending!(shutdown.poll());
    assert!(background.is_shutting_down());

    let direct = background
        .task()
        .name("direct")
        .on_error(calls.handler())
        .build()
        .schedule({
            let ran = Arc::clone(&ran);
            async move { ran.store(true, Ordering::SeqCst) }
        });
    let direct_sync = background.schedule({
        let ran = Arc::clone(&ran);
        move || ran.store(true, Ordering::SeqCst)
    });
    let response = within(
        "request during shutdown",
        app.oneshot(Request::get("/late").body(Body::empty()).unwrap()),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    within("body", response.into_body().collect())
        .await
        .unwrap();
    let [from_request, after_response] = taken(&handles).try_into().expect("two tasks");

    for handle in [&direct, &direct_sync, &from_request, &after_response] {
        let outcome = within("rejected outcome", handle.outcome()).await;
        assert!(
            matches!(
                outcome,
                Err(TaskError::Rejected(RejectReason::ShuttingDown))
            ),
            "{outcome:?}"
        );
        within("started resolves without a start", handle.started()).await;
        assert!(!handle.is_started());
    }
    let mut handled = calls.snapshot();
    handled.sort();
    assert_eq!(
        handled,
        [(direct.id(), "rejected"), (from_request.id(), "rejected")]
    );

    gate.notify_one();
    let report = within("shutdown", &mut shutdown).await;
    // Only what was in flight when shutdown began is reported.
    assert_eq!(ids(&util::infos(&report.finished)), [keeper.id()]);
    assert!(
        report.cancelled.is_empty() && report.overdue.is_empty(),
        "{report:?}"
    );
    assert!(!ran.load(Ordering::SeqCst));
    within("wait_idle", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.completed, stats.rejected),
        (5, 1, 4),
        "{stats:?}"
    );
    assert_settled(stats);

    // Still rejected after shutdown has returned.
    let after = background.schedule(async {});
    assert!(matches!(
        within("outcome", after.outcome()).await,
        Err(TaskError::Rejected(RejectReason::ShuttingDown))
    ));
}

#[tokio::test]
async fn queued_unshielded_after_response_tasks_are_cancelled_without_starting() {
    let background = Background::new();
    let calls = Calls::default();
    let ran = Arc::new(AtomicBool::new(false));
    let handles: Handles = Arc::default();
    let (chunks, body) = mpsc::unbounded_channel();
    let body = Arc::new(Mutex::new(Some(ChannelBody(body))));
    let app = Router::new()
        .route(
            "/stream",
            get({
                let calls = calls.clone();
                let ran = Arc::clone(&ran);
                let handles = Arc::clone(&handles);
                move |tasks: Tasks| async move {
                    let configured = tasks
                        .task()
                        .phase(Phase::AfterResponse)
                        .on_error(calls.handler())
                        .build();
                    let future = configured.schedule({
                        let ran = Arc::clone(&ran);
                        async move { ran.store(true, Ordering::SeqCst) }
                    });
                    let closure = configured.schedule({
                        let ran = Arc::clone(&ran);
                        move || ran.store(true, Ordering::SeqCst)
                    });
                    handles.lock().unwrap().extend([future, closure]);
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
    let [future, closure] = taken(&handles).try_into().expect("two tasks");
    assert!(!future.is_started() && !closure.is_started());
    assert_eq!(background.stats().queued, 2);

    let report = within("shutdown", background.shutdown(Duration::from_secs(10))).await;

    assert_eq!(
        ids(&util::infos(&report.cancelled)),
        [future.id(), closure.id()]
    );
    assert!(
        report.finished.is_empty() && report.overdue.is_empty(),
        "{report:?}"
    );
    for handle in [&future, &closure] {
        assert!(matches!(
            handle.try_outcome(),
            Some(Err(TaskError::Cancelled))
        ));
        within("started resolves without a start", handle.started()).await;
        assert!(!handle.is_started());
        assert_eq!(handle.info().started_at, None);
    }
    assert_eq!(
        calls.snapshot(),
        [(future.id(), "cancelled"), (closure.id(), "cancelled")]
    );

    // The body ends after shutdown: the cancelled tasks still do not start.
    chunks.send(Bytes::from_static(b"late")).unwrap();
    drop(chunks);
    within("body", response.into_body().collect())
        .await
        .unwrap();
    within("wait_idle", background.wait_idle()).await;
    assert!(!future.is_started() && !closure.is_started());
    assert!(!ran.load(Ordering::SeqCst));
    assert_eq!(calls.snapshot().len(), 2);
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.cancelled), (2, 2), "{stats:?}");
    assert_settled(stats);
}

#[tokio::test]
async fn shielded_after_response_task_runs_once_the_draining_body_finishes() {
    let background = Background::new();
    let handles: Handles = Arc::default();
    let ran = Arc::new(AtomicBool::new(false));
    let (chunks, body) = mpsc::unbounded_channel();
    let body = Arc::new(Mutex::new(Some(ChannelBody(body))));
    let app = Router::new()
        .route(
            "/download",
            get({
                let handles = Arc::clone(&handles);
                let ran = Arc::clone(&ran);
                move |tasks: Tasks| async move {
                    let shielded = tasks
                        .after_response()
                        .task()
                        .name("audit")
                        .shield(true)
                        .build()
                        .schedule(async move { ran.store(true, Ordering::SeqCst) });
                    let unshielded = tasks.after_response().schedule(async {});
                    handles.lock().unwrap().extend([shielded, unshielded]);
                    Body::new(body.lock().unwrap().take().expect("one request"))
                }
            }),
        )
        .layer(background.layer());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_server, stop) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
    });

    let client = reqwest::Client::new();
    let mut response = within(
        "response head",
        client.get(format!("http://{addr}/download")).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    chunks.send(Bytes::from_static(b"part 1;")).unwrap();
    let first = within("first chunk", response.chunk()).await.unwrap();
    assert_eq!(first.as_deref(), Some(&b"part 1;"[..]));
    let [shielded, unshielded] = taken(&handles).try_into().expect("two tasks");

    // The server drains the connection; meanwhile background shutdown begins.
    stop_server.send(()).unwrap();
    let mut shutdown = task::spawn(background.shutdown(Duration::from_secs(10)));
    assert_pending!(shutdown.poll());
    assert!(!shielded.is_started());
    assert!(matches!(
        within("unshielded outcome", unshielded.outcome()).await,
        Err(TaskError::Cancelled)
    ));
    assert!(!shielded.is_started() && !shielded.is_finished());

    // The body finishes: the shielded task starts and shutdown sees it end.
    chunks.send(Bytes::from_static(b"part 2")).unwrap();
    drop(chunks);
    let mut rest = Vec::new();
    while let Some(chunk) = within("chunk", response.chunk()).await.unwrap() {
        rest.extend_from_slice(&chunk);
    }
    assert_eq!(rest, b"part 2");
    drop(client);
    within("server drained", server).await.unwrap().unwrap();

    let report = within("shutdown", &mut shutdown).await;
    assert_eq!(ids(&util::infos(&report.finished)), [shielded.id()]);
    assert_eq!(ids(&util::infos(&report.cancelled)), [unshielded.id()]);
    assert!(report.overdue.is_empty(), "{report:?}");
    assert!(ran.load(Ordering::SeqCst));
    assert!(matches!(shielded.try_outcome(), Some(Ok(()))));
    assert_settled(background.stats());
}

/// What a stress-test task does.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    AsyncOk,
    SyncOk,
    AsyncErr,
    SyncErr,
    AsyncPanic,
    SyncPanic,
    /// Awaits a `Notify` never released: cancelled at shutdown.
    Slow,
    ShieldedAsyncOk,
    ShieldedSyncOk,
    /// Shielded and awaiting a `Notify` never released: overdue at the deadline.
    ShieldedSlow,
}

impl Kind {
    fn of(i: usize) -> Kind {
        // Few panics: each prints to stderr.
        if i % 1000 == 500 {
            return if i % 2000 == 500 {
                Kind::AsyncPanic
            } else {
                Kind::SyncPanic
            };
        }
        match i % 8 {
            0 => Kind::AsyncOk,
            1 => Kind::SyncOk,
            2 => Kind::AsyncErr,
            3 => Kind::SyncErr,
            4 => Kind::Slow,
            5 => Kind::ShieldedAsyncOk,
            6 => Kind::ShieldedSyncOk,
            _ => Kind::ShieldedSlow,
        }
    }

    fn is_slow(self) -> bool {
        matches!(self, Kind::Slow | Kind::ShieldedSlow)
    }
}

#[derive(Clone)]
struct Stress {
    plain: axum_background::config::ConfiguredTasks,
    shielded: axum_background::config::ConfiguredTasks,
    never: Arc<Notify>,
}

impl Stress {
    fn schedule(&self, i: usize) -> (Kind, TaskHandle) {
        let kind = Kind::of(i);
        let never = Arc::clone(&self.never);
        let handle = match kind {
            Kind::AsyncOk => self.plain.schedule(async {}),
            Kind::SyncOk => self.plain.schedule(|| {}),
            Kind::AsyncErr => self.plain.schedule(async { Err::<(), _>("nope") }),
            Kind::SyncErr => self.plain.schedule(|| Err::<(), _>("nope")),
            Kind::AsyncPanic => self.plain.schedule(async { boom() }),
            Kind::SyncPanic => self.plain.schedule(boom),
            Kind::Slow => self.plain.schedule(async move { never.notified().await }),
            Kind::ShieldedAsyncOk => self.shielded.schedule(async {}),
            Kind::ShieldedSyncOk => self.shielded.schedule(|| {}),
            Kind::ShieldedSlow => self
                .shielded
                .schedule(async move { never.notified().await }),
        };
        (kind, handle)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_every_task_is_accounted_for_exactly_once() {
    const BEFORE: usize = 9_000;
    const DURING: usize = 10_000;
    const AFTER: usize = 1_000;
    let background = Background::new();
    let calls: Arc<Mutex<HashMap<TaskId, u32>>> = Arc::default();
    let handler = {
        let calls = Arc::clone(&calls);
        move |info: &TaskInfo, _error: &TaskError| {
            *calls.lock().unwrap().entry(info.id).or_default() += 1;
        }
    };
    let stress = Stress {
        plain: background.task().on_error(handler.clone()).build(),
        shielded: background.task().shield(true).on_error(handler).build(),
        never: Arc::new(Notify::new()),
    };

    let mut tasks: Vec<(Kind, TaskHandle)> = (0..BEFORE).map(|i| stress.schedule(i)).collect();
    // More tasks are scheduled from other threads while shutdown begins.
    let (midway_tx, midway) = oneshot::channel();
    let concurrent = tokio::spawn({
        let stress = stress.clone();
        async move {
            let mut midway_tx = Some(midway_tx);
            let mut tasks = Vec::with_capacity(DURING);
            for i in BEFORE..BEFORE + DURING {
                tasks.push(stress.schedule(i));
                if i == BEFORE + 500 {
                    midway_tx.take().unwrap().send(()).unwrap();
                }
            }
            tasks
        }
    });
    within("midway", midway).await.unwrap();
    let before_shutdown: HashSet<TaskId> = ids(&background.in_flight()).into_iter().collect();
    let mut shutdown = task::spawn(background.shutdown(Duration::from_millis(300)));
    assert_pending!(shutdown.poll());
    let late: Vec<(Kind, TaskHandle)> = (BEFORE + DURING..BEFORE + DURING + AFTER)
        .map(|i| stress.schedule(i))
        .collect();
    let report = within("shutdown", &mut shutdown).await;
    let during = within("concurrent scheduling", concurrent).await.unwrap();
    within("wait_idle", background.wait_idle()).await;

    for (_, handle) in &late {
        assert!(matches!(
            handle.try_outcome(),
            Some(Err(TaskError::Rejected(RejectReason::ShuttingDown)))
        ));
    }
    let during_ids: HashSet<TaskId> = during.iter().map(|(_, handle)| handle.id()).collect();
    tasks.extend(during);
    tasks.extend(late);
    assert_eq!(tasks.len(), BEFORE + DURING + AFTER);

    // Each task ended exactly once, and its handler ran once iff it failed.
    let calls = calls.lock().unwrap().clone();
    let mut outcomes: HashMap<TaskId, (Kind, Result<(), TaskError>)> = HashMap::new();
    for (kind, handle) in &tasks {
        let outcome = handle
            .try_outcome()
            .unwrap_or_else(|| panic!("{kind:?} task {} has no outcome", handle.id()));
        let expected_calls = u32::from(outcome.is_err());
        assert_eq!(
            calls.get(&handle.id()).copied().unwrap_or(0),
            expected_calls,
            "{kind:?} task {} ended {outcome:?}",
            handle.id()
        );
        assert!(outcomes.insert(handle.id(), (*kind, outcome)).is_none());
    }
    assert_eq!(
        calls.len(),
        outcomes.values().filter(|(_, o)| o.is_err()).count()
    );

    let stats = background.stats();
    assert_eq!(stats.scheduled, tasks.len() as u64, "{stats:?}");
    assert_settled(stats);
    let count = |pred: fn(&Result<(), TaskError>) -> bool| {
        outcomes
            .values()
            .filter(|(_, outcome)| pred(outcome))
            .count() as u64
    };
    assert_eq!(stats.completed, count(|o| o.is_ok()), "{stats:?}");
    assert_eq!(
        stats.failed,
        count(|o| matches!(o, Err(TaskError::Failed(_))))
    );
    assert_eq!(
        stats.panicked,
        count(|o| matches!(o, Err(TaskError::Panicked(_))))
    );
    assert_eq!(
        stats.cancelled,
        count(|o| matches!(o, Err(TaskError::Cancelled)))
    );
    assert_eq!(
        stats.rejected,
        count(|o| matches!(o, Err(TaskError::Rejected(_))))
    );
    assert!(stats.rejected >= AFTER as u64, "{stats:?}");
    assert!(background.in_flight().is_empty());

    // The report: each task in flight when shutdown began, in exactly one list.
    let mut listed: HashMap<TaskId, &'static str> = HashMap::new();
    for (list, entries) in [
        ("finished", &report.finished),
        ("cancelled", &report.cancelled),
        ("overdue", &report.overdue),
    ] {
        for entry in entries {
            let id = entry.info.id;
            assert!(listed.insert(id, list).is_none(), "task {id} listed twice");
            let (_, outcome) = &outcomes[&id];
            assert_eq!(
                entry.outcome.as_ref().map_err(TaskError::kind),
                outcome.as_ref().map_err(TaskError::kind),
                "task {id}: the report's outcome is the handle's"
            );
        }
    }
    assert_eq!(listed.len(), report.len());
    for (id, list) in &listed {
        assert!(
            before_shutdown.contains(id) || during_ids.contains(id),
            "task {id} ({list}) was not in flight when shutdown began"
        );
        let (kind, outcome) = &outcomes[id];
        let consistent = match *list {
            "finished" => matches!(
                outcome,
                Ok(()) | Err(TaskError::Failed(_) | TaskError::Panicked(_))
            ),
            "cancelled" => matches!(outcome, Err(TaskError::Cancelled | TaskError::Rejected(_))),
            _ => matches!(outcome, Err(TaskError::Cancelled)),
        };
        assert!(consistent, "{kind:?} task {id} in {list} ended {outcome:?}");
    }
    for (id, (kind, outcome)) in &outcomes {
        let rejected = matches!(outcome, Err(TaskError::Rejected(_)));
        match listed.get(id) {
            // Not in flight when shutdown began: ended on its own before, or rejected.
            None => assert!(
                rejected || (!kind.is_slow() && !matches!(outcome, Err(TaskError::Cancelled))),
                "{kind:?} task {id} ended {outcome:?} but is not in the report"
            ),
            Some(list) if kind.is_slow() && !rejected => {
                let expected = if *kind == Kind::Slow {
                    "cancelled"
                } else {
                    "overdue"
                };
                assert_eq!(*list, expected, "{kind:?} task {id}");
            }
            Some(list)
                if matches!(kind, Kind::ShieldedAsyncOk | Kind::ShieldedSyncOk) && !rejected =>
            {
                // Shielded: never cancelled early (overdue only if a loaded
                // machine did not run it within the grace).
                assert_ne!(*list, "cancelled", "{kind:?} task {id}");
            }
            Some(_) => {}
        }
    }
    let overdue = listed.values().filter(|list| **list == "overdue").count();
    assert!(overdue > 0, "some shielded slow tasks were in flight");
}

/// Two shutdowns at once (the second waits task by task): both wait for the
/// shielded task and both report it completed.
#[tokio::test]
async fn two_shutdowns_at_once_both_wait_for_a_shielded_task() {
    let background = Background::new();
    let gate = Arc::new(Notify::new());
    let shielded = background.task().shield(true).build().schedule({
        let gate = Arc::clone(&gate);
        async move { gate.notified().await }
    });
    within("shielded started", shielded.started()).await;

    let mut first = task::spawn(background.shutdown(Duration::from_secs(10)));
    let mut second = task::spawn(background.shutdown(Duration::from_secs(10)));
    assert_pending!(first.poll());
    assert_pending!(second.poll());

    gate.notify_one();
    let first = within("the first shutdown", &mut first).await;
    let second = within("the second shutdown", &mut second).await;
    for report in [&first, &second] {
        assert_eq!(
            ids(&util::infos(&report.finished)),
            [shielded.id()],
            "{report:?}"
        );
        assert!(
            report.cancelled.is_empty() && report.overdue.is_empty(),
            "{report:?}"
        );
    }
}

/// DESIGN "Shutdown" 3: when `shutdown` returns, the future of an async task
/// that outlived the grace period has been dropped (so that code closing a
/// pool after `shutdown` cannot race with it), on a multi-thread runtime
/// whose workers compete for the CPU.
#[test]
fn overdue_async_task_future_is_dropped_when_shutdown_returns() {
    let _load = util::CpuLoad::start(2);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async {
        for round in 0..100 {
            let background = Background::new();
            let dropped = Arc::new(AtomicBool::new(false));
            let flag = util::DropFlag(Arc::clone(&dropped));
            let (started, is_started) = oneshot::channel();
            let handle = background.task().shield(true).build().schedule(async move {
                let _flag = flag;
                let _ = started.send(());
                std::future::pending::<()>().await
            });
            within("the task starts", is_started)
                .await
                .expect("the task sends");
            let report = within("shutdown", background.shutdown(Duration::from_millis(1))).await;
            assert!(
                dropped.load(Ordering::SeqCst),
                "round {round}: shutdown returned with the overdue task's future alive"
            );
            assert_eq!(
                ids(&util::infos(&report.overdue)),
                [handle.id()],
                "round {round}"
            );
            assert!(matches!(
                handle.try_outcome(),
                Some(Err(TaskError::Cancelled))
            ));
        }
    });
}
