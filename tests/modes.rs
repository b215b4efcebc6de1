//! Modes: `mode::Sync` tasks run on the blocking pool and never block the
//! runtime; `mode::Async` tasks run on the runtime; scheduling works from any
//! thread, and where no runtime is known it is rejected, not a panic.

mod util;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::{get, post};
use axum_background::mode::{self, ModeKind};
use axum_background::{
    Background, BackgroundTask, BlockingTask, BoxError, Phase, RejectReason, TaskConfig, TaskError,
    TaskHandle, TaskInfo, Tasks,
};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::runtime::Handle;
use tokio::sync::{mpsc, oneshot};
use tower::ServiceExt;

use util::within;

/// How long each blocking task of the non-blocking test blocks.
const BLOCK: Duration = Duration::from_millis(300);

/// Sends `method uri` through `app` and reads the whole body.
async fn request(app: Router, method: &str, uri: &str) -> (StatusCode, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::empty())
        .unwrap();
    let response = within("response", app.oneshot(request)).await.unwrap();
    let status = response.status();
    let body = within("body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// The id of the thread a spawned async task runs on: on a 1-worker runtime,
/// the one worker.
async fn worker_thread() -> ThreadId {
    tokio::spawn(async { thread::current().id() })
        .await
        .unwrap()
}

/// A `BlockingTask` that blocks its thread.
struct Crunch;

impl BlockingTask<()> for Crunch {
    fn run(self) {
        thread::sleep(BLOCK);
    }
}

/// A `mode::Sync` task whose `async fn run` blocks its thread.
struct Grind;

impl BackgroundTask<()> for Grind {
    type Mode = mode::Sync;

    async fn run(self) {
        thread::sleep(BLOCK);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sync_tasks_do_not_block_the_runtime() {
    let background = Background::new();
    let (tx, mut rx) = mpsc::unbounded_channel::<TaskHandle>();
    let app = Router::new()
        .route(
            "/work",
            post(move |tasks: Tasks| {
                tx.send(tasks.schedule(|| thread::sleep(BLOCK))).unwrap();
                tx.send(tasks.schedule(|| thread::sleep(BLOCK))).unwrap();
                tx.send(tasks.schedule(Crunch)).unwrap();
                tx.send(tasks.schedule(Grind)).unwrap();
                async { StatusCode::ACCEPTED }
            }),
        )
        .route("/ping", get(|| async { "pong" }))
        .layer(background.layer());

    // Serve both requests on the one worker (the test body itself runs on
    // the main thread, which would not prove anything).
    let work = tokio::spawn(request(app.clone(), "POST", "/work"));
    assert_eq!(
        within("POST /work", work).await.unwrap().0,
        StatusCode::ACCEPTED
    );
    let mut handles = Vec::new();
    for _ in 0..4 {
        handles.push(within("handle", rx.recv()).await.unwrap());
    }
    for handle in &handles {
        assert_eq!(handle.info().mode, ModeKind::Sync);
        within("sync task starts", handle.started()).await;
    }

    // All four are now blocking their threads; the worker still answers.
    // Timed from here, so that waiting for a busy worker counts.
    let start = Instant::now();
    let ping = tokio::spawn(request(app, "GET", "/ping"));
    let response = within("ping", ping).await.unwrap();
    let elapsed = start.elapsed();
    assert_eq!(response, (StatusCode::OK, "pong".to_owned()));
    assert!(
        elapsed < Duration::from_millis(100),
        "an async request took {elapsed:?} while sync tasks blocked"
    );

    within("sync tasks end", background.wait_idle()).await;
    for handle in &handles {
        handle
            .try_outcome()
            .unwrap()
            .expect("a sync task completes");
    }
    assert_eq!(background.stats().completed, 4);
}

/// What the mixed task saw of its threads.
#[derive(Debug)]
struct Seen {
    thread: ThreadId,
    thread_after_await: ThreadId,
    had_runtime: bool,
    value: u32,
}

/// A `mode::Sync` task that blocks on a std channel, then awaits a tokio
/// channel and a timer.
struct Mixed {
    gate: std::sync::mpsc::Receiver<()>,
    value: oneshot::Receiver<u32>,
    report: oneshot::Sender<Seen>,
}

impl BackgroundTask for Mixed {
    type Mode = mode::Sync;

    async fn run(self) -> Result<(), BoxError> {
        let thread = thread::current().id();
        let had_runtime = Handle::try_current().is_ok();
        self.gate.recv_timeout(Duration::from_secs(10))?; // blocks the thread
        let value = self.value.await?; // awaits
        tokio::time::sleep(Duration::from_millis(1)).await; // timers work too
        let seen = Seen {
            thread,
            thread_after_await: thread::current().id(),
            had_runtime,
            value,
        };
        self.report
            .send(seen)
            .map_err(|_| "test stopped listening")?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sync_task_may_block_and_await_on_a_blocking_pool_thread() {
    let worker = worker_thread().await;
    let background = Background::new();
    let (gate_tx, gate) = std::sync::mpsc::channel();
    let (value_tx, value) = oneshot::channel();
    let (report, seen) = oneshot::channel();

    let handle = background.schedule(Mixed {
        gate,
        value,
        report,
    });
    assert_eq!(handle.info().mode, ModeKind::Sync);
    assert_eq!(handle.info().name, "Mixed");
    within("mixed task starts", handle.started()).await;

    // The task now blocks its thread on the std channel; the one worker is
    // free all the same. (Waited for on this thread, not a worker, with a
    // std deadline: were the worker blocked, tokio's timers would be too.)
    let (tx, rx) = std::sync::mpsc::channel();
    tokio::spawn(async move { tx.send(thread::current().id()).unwrap() });
    let free = rx
        .recv_timeout(Duration::from_secs(10))
        .expect("the sync task blocked the runtime's only worker");
    assert_eq!(free, worker);
    gate_tx.send(()).unwrap();
    value_tx.send(7).unwrap();
    within("mixed task ends", handle.outcome())
        .await
        .expect("the mixed task completes");

    let seen = within("report", seen).await.unwrap();
    assert!(
        seen.had_runtime,
        "a sync task runs inside the runtime context"
    );
    assert_ne!(seen.thread, worker, "a sync task ran on the runtime worker");
    assert_eq!(
        seen.thread, seen.thread_after_await,
        "a sync task stays on its blocking thread across awaits"
    );
    assert_eq!(seen.value, 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn sync_task_with_a_timeout_or_a_thread_limit_still_runs_on_the_blocking_pool() {
    let worker = worker_thread().await;

    // A timeout, and a thread limit whose one thread is taken: both make the
    // task wait on the runtime and run its work on a blocking thread.
    let unlimited = Background::new();
    let limited = Background::builder().max_blocking(1).build();
    let (release_tx, release) = std::sync::mpsc::channel::<()>();
    let holder = limited.schedule(move || {
        let _ = release.recv_timeout(Duration::from_secs(10));
    });
    within("holder starts", holder.started()).await;
    let cases = [
        (
            "timeout",
            unlimited.task().timeout(Duration::from_secs(10)).build(),
            None,
        ),
        ("max_blocking", limited.task().build(), Some(release_tx)),
    ];

    for (what, scheduler, release) in cases {
        let (gate_tx, gate) = std::sync::mpsc::channel();
        let (value_tx, value) = oneshot::channel();
        let (report, seen) = oneshot::channel();
        let handle = scheduler.schedule(Mixed {
            gate,
            value,
            report,
        });
        assert_eq!(handle.info().mode, ModeKind::Sync, "{what}");
        if let Some(release) = release {
            assert!(!handle.is_started(), "started without a thread permit");
            release.send(()).unwrap();
        }
        within("mixed task starts", handle.started()).await;

        let (tx, rx) = std::sync::mpsc::channel();
        tokio::spawn(async move { tx.send(thread::current().id()).unwrap() });
        let free = rx
            .recv_timeout(Duration::from_secs(10))
            .unwrap_or_else(|_| panic!("{what}: the sync task blocked the only worker"));
        assert_eq!(free, worker);
        gate_tx.send(()).unwrap();
        value_tx.send(3).unwrap();
        within("mixed task ends", handle.outcome())
            .await
            .unwrap_or_else(|error| panic!("{what}: {error}"));

        let seen = within("report", seen).await.unwrap();
        assert!(seen.had_runtime, "{what}");
        assert_ne!(seen.thread, worker, "{what}: ran on the runtime worker");
        assert_eq!(seen.thread, seen.thread_after_await, "{what}");
        assert_eq!(seen.value, 3, "{what}");
    }
    within("holder ends", holder.outcome())
        .await
        .expect("the holder completes");
}

/// A `mode::Async` task that reports where it ran.
struct WhereAmI {
    report: oneshot::Sender<(ThreadId, bool)>,
}

impl BackgroundTask<()> for WhereAmI {
    type Mode = mode::Async;

    async fn run(self) {
        tokio::task::yield_now().await;
        let _ = self
            .report
            .send((thread::current().id(), Handle::try_current().is_ok()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn async_tasks_run_on_the_runtime_workers() {
    let worker = worker_thread().await;
    let background = Background::new();

    let (named_tx, named) = oneshot::channel();
    let named_handle = background.schedule(WhereAmI { report: named_tx });
    let (future_tx, future) = oneshot::channel();
    let future_handle = background.schedule(async move {
        tokio::task::yield_now().await;
        let _ = future_tx.send((thread::current().id(), Handle::try_current().is_ok()));
    });

    for (handle, seen) in [(named_handle, named), (future_handle, future)] {
        assert_eq!(handle.info().mode, ModeKind::Async);
        let (thread, had_runtime) = within("async task reports", seen).await.unwrap();
        assert_eq!(thread, worker, "an async task ran off the runtime worker");
        assert!(had_runtime);
        within("async task ends", handle.outcome())
            .await
            .expect("an async task completes");
    }
}

/// A `mode::Async` named task.
struct Notify;

impl BackgroundTask<()> for Notify {
    type Mode = mode::Async;

    async fn run(self) {}
}

/// A `mode::Sync` named task that does not block.
struct Tidy;

impl BackgroundTask<()> for Tidy {
    type Mode = mode::Sync;

    async fn run(self) {}
}

/// A `BlockingTask` that may fail.
struct Cleanup;

impl BlockingTask for Cleanup {
    fn run(self) -> Result<(), BoxError> {
        Ok(())
    }
}

async fn send_audit() {}

#[tokio::test]
async fn task_info_mode_matches_each_task_form() {
    let background = Background::new();
    let cases: Vec<(TaskHandle, ModeKind, &str)> = vec![
        (
            background.schedule(send_audit()),
            ModeKind::Async,
            "send_audit",
        ),
        (
            background.schedule(async {}),
            ModeKind::Async,
            "task_info_mode_matches_each_task_form",
        ),
        (
            background.schedule(|| ()),
            ModeKind::Sync,
            "task_info_mode_matches_each_task_form",
        ),
        (background.schedule(Notify), ModeKind::Async, "Notify"),
        (background.schedule(Tidy), ModeKind::Sync, "Tidy"),
        (background.schedule(Cleanup), ModeKind::Sync, "Cleanup"),
        (
            background.task().name("renamed").build().schedule(Cleanup),
            ModeKind::Sync,
            "renamed",
        ),
    ];
    for (handle, mode, name) in &cases {
        let info = handle.info();
        assert_eq!((info.mode, &*info.name), (*mode, *name), "{info:?}");
    }

    // The same through a request, in the deferred phases.
    let infos = Arc::new(Mutex::new(Vec::<TaskInfo>::new()));
    let record = Arc::clone(&infos);
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let mut infos = record.lock().unwrap();
                infos.push(tasks.after_route().schedule(Notify).info());
                infos.push(tasks.after_route().schedule(|| ()).info());
                infos.push(tasks.after_response().schedule(Cleanup).info());
                infos.push(tasks.after_response().schedule(send_audit()).info());
                async { "ok" }
            }),
        )
        .layer(background.layer());
    assert_eq!(request(app, "GET", "/").await.0, StatusCode::OK);
    let got: Vec<(Phase, ModeKind)> = infos
        .lock()
        .unwrap()
        .iter()
        .map(|info| (info.phase, info.mode))
        .collect();
    assert_eq!(
        got,
        [
            (Phase::AfterRoute, ModeKind::Async),
            (Phase::AfterRoute, ModeKind::Sync),
            (Phase::AfterResponse, ModeKind::Sync),
            (Phase::AfterResponse, ModeKind::Async),
        ]
    );

    within("idle", background.wait_idle()).await;
    for (handle, _, _) in &cases {
        handle.try_outcome().unwrap().expect("each form completes");
    }
    assert_eq!(background.stats().completed, 11);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduling_from_a_blocking_pool_thread_works() {
    let background = Background::new();

    // Through `Background::schedule`.
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
    let scheduler = background.clone();
    let handles = tokio::task::spawn_blocking(move || {
        let from_future = tx.clone();
        let from_closure = tx;
        [
            scheduler.schedule(async move {
                tokio::task::yield_now().await;
                from_future.send("future").unwrap();
            }),
            scheduler.schedule(move || from_closure.send("closure").unwrap()),
        ]
    })
    .await
    .unwrap();
    for handle in &handles {
        within("outcome", handle.outcome())
            .await
            .expect("a task scheduled from a blocking thread completes");
    }
    let mut got = vec![rx.recv().await.unwrap(), rx.recv().await.unwrap()];
    got.sort_unstable();
    assert_eq!(got, ["closure", "future"]);

    // Through a request's `Tasks`, moved onto a blocking thread.
    let (tx, mut rx) = mpsc::unbounded_channel::<&'static str>();
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let tx = tx.clone();
                async move {
                    tokio::task::spawn_blocking(move || {
                        let from_future = tx.clone();
                        tasks.schedule(async move { from_future.send("request future").unwrap() });
                        tasks.schedule(move || tx.send("request closure").unwrap());
                    })
                    .await
                    .unwrap();
                    "scheduled"
                }
            }),
        )
        .layer(background.layer());
    assert_eq!(request(app, "GET", "/").await.0, StatusCode::OK);
    let mut got = vec![
        within("request task", rx.recv()).await.unwrap(),
        within("request task", rx.recv()).await.unwrap(),
    ];
    got.sort_unstable();
    assert_eq!(got, ["request closure", "request future"]);
    within("idle", background.wait_idle()).await;
    assert_eq!(background.stats().completed, 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn scheduling_from_a_plain_thread_uses_the_captured_runtime() {
    let worker = worker_thread().await;
    let background = Background::new();
    let scheduler = background.clone();
    let (tx, rx) = oneshot::channel();
    let handles = thread::spawn(move || {
        assert!(Handle::try_current().is_err(), "a plain thread");
        [
            scheduler.schedule(async move {
                let _ = tx.send(thread::current().id());
            }),
            scheduler.schedule(|| ()),
        ]
    })
    .join()
    .unwrap();
    assert_eq!(within("async task runs", rx).await.unwrap(), worker);
    for handle in &handles {
        within("outcome", handle.outcome())
            .await
            .expect("a task scheduled from a plain thread completes");
    }
}

#[test]
fn background_built_outside_a_runtime_works_inside_one() {
    let background = Background::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let ran = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&ran);
        let (gate_tx, gate) = std::sync::mpsc::channel();
        let (value_tx, value) = oneshot::channel();
        let (report, seen) = oneshot::channel();
        let handles = [
            background.schedule(async {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }),
            background.schedule(move || flag.store(true, Ordering::SeqCst)),
            background.schedule(Mixed {
                gate,
                value,
                report,
            }),
        ];
        gate_tx.send(()).unwrap();
        value_tx.send(1).unwrap();
        for handle in &handles {
            within("outcome", handle.outcome())
                .await
                .expect("a task completes on the runtime found at schedule time");
        }
        assert!(ran.load(Ordering::SeqCst));
        assert_eq!(within("mixed report", seen).await.unwrap().value, 1);

        // The runtime is now known: a plain thread may schedule too.
        let scheduler = background.clone();
        let late = thread::spawn(move || scheduler.schedule(async {}))
            .join()
            .unwrap();
        within("outcome", late.outcome())
            .await
            .expect("a task scheduled from a plain thread completes");
        within("idle", background.wait_idle()).await;
        assert_eq!(background.stats().completed, 4);
    });
}

#[test]
fn scheduling_where_no_runtime_is_known_is_rejected() {
    let seen = Arc::new(Mutex::new(Vec::<(TaskInfo, TaskError)>::new()));
    let record = Arc::clone(&seen);
    let background = Background::builder()
        .default_config(
            TaskConfig::builder()
                .on_error(move |info: &TaskInfo, error: &TaskError| {
                    record.lock().unwrap().push((info.clone(), error.clone()));
                })
                .build(),
        )
        .build();
    let ran = Arc::new(AtomicBool::new(false));

    let scheduler = background.clone();
    let (by_future, by_closure) = (Arc::clone(&ran), Arc::clone(&ran));
    let handles = thread::spawn(move || {
        assert!(Handle::try_current().is_err(), "a plain thread");
        [
            scheduler.schedule(async move { by_future.store(true, Ordering::SeqCst) }),
            scheduler.schedule(move || by_closure.store(true, Ordering::SeqCst)),
            scheduler.schedule(Cleanup),
        ]
    })
    .join()
    .expect("scheduling without a runtime does not panic");

    for handle in &handles {
        let outcome = handle.try_outcome();
        assert!(
            matches!(
                outcome,
                Some(Err(TaskError::Rejected(RejectReason::NoRuntime)))
            ),
            "{outcome:?}"
        );
        assert!(!handle.is_started());
        assert!(handle.started().now_or_never().is_some());
    }
    assert!(!ran.load(Ordering::SeqCst), "a rejected task ran");
    assert!(background.wait_idle().now_or_never().is_some());

    let calls = seen.lock().unwrap().clone();
    let got: Vec<(ModeKind, bool)> = calls
        .iter()
        .map(|(info, error)| {
            let no_runtime = matches!(error, TaskError::Rejected(RejectReason::NoRuntime));
            (info.mode, no_runtime)
        })
        .collect();
    assert_eq!(
        got,
        [
            (ModeKind::Async, true),
            (ModeKind::Sync, true),
            (ModeKind::Sync, true)
        ],
        "each rejection reaches the handler once"
    );

    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.rejected, stats.queued, stats.running),
        (3, 3, 0, 0),
        "{stats:?}"
    );
}

#[test]
fn async_handler_of_a_task_rejected_without_a_runtime_still_runs() {
    let seen = Arc::new(Mutex::new(Vec::<TaskError>::new()));
    let record = Arc::clone(&seen);
    let background = Background::builder()
        .default_config(
            TaskConfig::builder()
                .on_error(move |_info: TaskInfo, error: TaskError| {
                    let record = Arc::clone(&record);
                    async move {
                        // Awaiting a timer needs a runtime: the handler gets one.
                        tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                        record.lock().unwrap().push(error);
                    }
                })
                .build(),
        )
        .build();
    let scheduler = background.clone();
    let handle = thread::spawn(move || scheduler.schedule(async {}))
        .join()
        .expect("scheduling without a runtime does not panic");

    assert!(matches!(
        handle.try_outcome(),
        Some(Err(TaskError::Rejected(RejectReason::NoRuntime)))
    ));
    let calls = seen.lock().unwrap().clone();
    assert_eq!(calls.len(), 1, "the async handler ran once: {calls:?}");
    assert!(matches!(
        calls[0],
        TaskError::Rejected(RejectReason::NoRuntime)
    ));
    assert_eq!(background.stats().rejected, 1);
}
