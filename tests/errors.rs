//! Error handling: every failure reaches its handler exactly once, with the
//! right `TaskInfo`, and nothing a task or a handler does takes anything down.

mod util;

use std::error::Error;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::routing::get;
use axum_background::handler::IntoErrorHandler;
use axum_background::mode::{self, ModeKind};
use axum_background::{
    Background, BackgroundTask, BlockingTask, ErrorHandler, Phase, RejectReason, TaskConfig,
    TaskError, TaskHandle, TaskInfo, Tasks,
};
use futures_util::FutureExt;
use http_body_util::BodyExt;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};
use tower::ServiceExt;

use util::{Captured, assert_settled, within};

// ---------------------------------------------------------------- helpers

/// The error the failing tasks of this file return.
#[derive(Debug)]
struct MyError {
    code: u16,
}

impl fmt::Display for MyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "upstream answered {}", self.code)
    }
}

impl Error for MyError {}

/// Every `(info, error)` pair a handler was called with.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Vec<(TaskInfo, TaskError)>>>);

impl Seen {
    fn record(&self, info: &TaskInfo, error: &TaskError) {
        self.0.lock().unwrap().push((info.clone(), error.clone()));
    }

    fn calls(&self) -> Vec<(TaskInfo, TaskError)> {
        self.0.lock().unwrap().clone()
    }

    /// A sync handler: `|info: &TaskInfo, error: &TaskError| ..`.
    fn sync_handler(&self) -> impl Fn(&TaskInfo, &TaskError) + Send + Sync + 'static {
        let seen = self.clone();
        move |info: &TaskInfo, error: &TaskError| seen.record(info, error)
    }

    /// An async handler: a closure returning an async block that awaits
    /// before recording, so a caller that does not await it is caught.
    fn async_handler(
        &self,
    ) -> impl Fn(TaskInfo, TaskError) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>>
    + Send
    + Sync
    + 'static {
        let seen = self.clone();
        move |info: TaskInfo, error: TaskError| {
            let seen = seen.clone();
            Box::pin(async move {
                tokio::task::yield_now().await;
                seen.record(&info, &error);
            })
        }
    }
}

/// An `ErrorHandler` plugin.
struct Pager {
    seen: Seen,
}

impl ErrorHandler for Pager {
    async fn handle(&self, info: &TaskInfo, error: &TaskError) {
        tokio::task::yield_now().await;
        self.seen.record(info, error);
    }
}

/// What the `async fn` handler saw: it captures nothing, so it records in a
/// static, and the tests that use it hold `ASYNC_FN_TURN` while they do.
static ASYNC_FN_SEEN: Mutex<Vec<(TaskInfo, TaskError)>> = Mutex::new(Vec::new());
static ASYNC_FN_TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn record_in_static(info: TaskInfo, error: TaskError) {
    tokio::task::yield_now().await;
    ASYNC_FN_SEEN.lock().unwrap().push((info, error));
}

/// An async task that fails; its derived name is `send_welcome_mail`.
async fn send_welcome_mail() -> Result<(), MyError> {
    tokio::task::yield_now().await;
    Err(MyError { code: 503 })
}

/// A sync task that fails; its derived name is `write_audit_line`.
fn write_audit_line() -> impl FnOnce() -> Result<(), MyError> + Send + 'static {
    || Err(MyError { code: 507 })
}

/// Panics with a `&'static str` payload; returns `()` so that it can end any
/// task or handler.
fn explode(message: &'static str) {
    std::panic::panic_any(message)
}

/// Panics with a `String` payload (what `panic!("{}", x)` gives).
fn explode_owned(message: String) {
    std::panic::panic_any(message)
}

/// A router whose `GET /job` runs `schedule` and sends the handles it returns
/// to the receiver.
fn job_router<F>(background: &Background, schedule: F) -> (Router, UnboundedReceiver<TaskHandle>)
where
    F: Fn(&Tasks) -> Vec<TaskHandle> + Clone + Send + Sync + 'static,
{
    let (tx, rx) = unbounded_channel();
    let app = Router::new()
        .route(
            "/job",
            get(move |tasks: Tasks| {
                for handle in schedule(&tasks) {
                    tx.send(handle).expect("test is listening");
                }
                async { StatusCode::ACCEPTED }
            }),
        )
        .route("/ok", get(|| async { "still fine" }))
        .layer(background.layer());
    (app, rx)
}

/// Sends `GET uri` through a clone of `app` and reads the whole body.
async fn get_request(app: &Router, uri: &str) -> (StatusCode, String) {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    let response = within("response", app.clone().oneshot(request))
        .await
        .unwrap();
    let status = response.status();
    let body = within("body", response.into_body().collect())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}

/// Asserts that exactly one failure was handled, by the task named `name`
/// scheduled from `GET /job`, and that it failed with `MyError { code }`.
fn assert_one_failure(calls: &[(TaskInfo, TaskError)], name: &str, mode: ModeKind, code: u16) {
    assert_eq!(calls.len(), 1, "handler calls: {calls:?}");
    let (info, error) = &calls[0];
    assert_eq!(info.name, name);
    assert_eq!(info.mode, mode);
    assert_eq!(info.phase, Phase::Immediate);
    assert_eq!(info.method, Some(Method::GET));
    assert_eq!(info.path.as_deref(), Some("/job"));
    assert!(info.started_at.is_some(), "a failed task had started");
    assert_eq!(info.attempts, 1);
    assert_failed_with(error, code);
}

fn assert_failed_with(error: &TaskError, code: u16) {
    let TaskError::Failed(source) = error else {
        panic!("expected TaskError::Failed, got {error:?}");
    };
    assert_eq!(source.to_string(), format!("upstream answered {code}"));
    let mine = source
        .downcast_ref::<MyError>()
        .expect("the task's own error type is kept");
    assert_eq!(mine.code, code);
}

fn assert_panicked_with(error: &TaskError, message: &str) {
    let TaskError::Panicked(got) = error else {
        panic!("expected TaskError::Panicked, got {error:?}");
    };
    assert_eq!(&**got, message);
}

// ------------------------------------------ task mode x handler form

/// Where a row's failing task reports: the handler forms `on_error` accepts,
/// and the default config's handler.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// `|info: &TaskInfo, error: &TaskError| ..`
    SyncClosure,
    /// A closure returning a future that awaits before it records.
    AsyncClosure,
    /// A plain `async fn` ([`record_in_static`]).
    AsyncFn,
    /// An [`ErrorHandler`] plugin ([`Pager`]).
    Plugin,
    /// No per-task handler: the default config's (a sync closure).
    Default,
}

/// Schedules one failing task from `GET /job`: `send_welcome_mail` (async,
/// fails with 503) or `write_audit_line` (sync, fails with 507), with its
/// handler in `form` and, if `name` is set, that name. A `Default` row
/// without a name schedules with no per-task config at all. Then checks that
/// the failure reached the handler exactly once, before the outcome was
/// published, with the task's `TaskInfo` (named `expected_name`).
async fn assert_failure_reaches_handler_once(
    mode: ModeKind,
    form: Form,
    name: Option<&'static str>,
    expected_name: &str,
) {
    // The `async fn` records in a static: the rows using it take turns.
    let _turn = match form {
        Form::AsyncFn => {
            let turn = ASYNC_FN_TURN.lock().await;
            ASYNC_FN_SEEN.lock().unwrap().clear();
            Some(turn)
        }
        _ => None,
    };
    let seen = Seen::default();
    let background = match form {
        Form::Default => Background::builder()
            .default_config(TaskConfig::builder().on_error(seen.sync_handler()).build())
            .build(),
        _ => Background::new(),
    };
    let recorder = seen.clone();
    let (app, mut handles) = job_router(&background, move |tasks| {
        if let (Form::Default, None) = (form, name) {
            // No per-task config at all.
            return vec![match mode {
                ModeKind::Async => tasks.schedule(send_welcome_mail()),
                _ => tasks.schedule(write_audit_line()),
            }];
        }
        let mut builder = tasks.task();
        if let Some(name) = name {
            builder = builder.name(name);
        }
        let recorder = recorder.clone();
        let one = match form {
            Form::SyncClosure => builder
                .on_error(move |info: &TaskInfo, error: &TaskError| recorder.record(info, error)),
            Form::AsyncClosure => builder.on_error(recorder.async_handler()),
            Form::AsyncFn => builder.on_error(record_in_static),
            Form::Plugin => builder.on_error(Pager { seen: recorder }),
            Form::Default => builder,
        }
        .build();
        vec![match mode {
            ModeKind::Async => one.schedule(send_welcome_mail()),
            _ => one.schedule(write_audit_line()),
        }]
    });
    let code = match mode {
        ModeKind::Async => 503,
        _ => 507,
    };
    let calls = || match form {
        Form::AsyncFn => ASYNC_FN_SEEN.lock().unwrap().clone(),
        _ => seen.calls(),
    };

    assert_eq!(get_request(&app, "/job").await.0, StatusCode::ACCEPTED);
    let handle = within("handle", handles.recv()).await.unwrap();
    // The outcome is published only once the handler has returned.
    let outcome = within("outcome", handle.outcome()).await;
    assert_failed_with(&outcome.unwrap_err(), code);
    assert_eq!(calls().len(), 1, "handler done before the outcome");
    within("idle", background.wait_idle()).await;

    assert_one_failure(&calls(), expected_name, mode, code);
}

/// One test per row: `test: task mode, handler form, per-task name => name the
/// handler sees;`.
macro_rules! failure_reaches_handler_once {
    ($($test:ident: $mode:ident, $form:ident, $name:expr => $expected_name:literal;)*) => {$(
        #[tokio::test]
        async fn $test() {
            assert_failure_reaches_handler_once(ModeKind::$mode, Form::$form, $name, $expected_name)
                .await;
        }
    )*};
}

failure_reaches_handler_once! {
    async_task_failure_reaches_sync_handler_once:     Async, SyncClosure,  None => "send_welcome_mail";
    async_task_failure_reaches_async_handler_once:    Async, AsyncClosure, None => "send_welcome_mail";
    async_task_failure_reaches_async_fn_handler_once: Async, AsyncFn,      None => "send_welcome_mail";
    async_task_failure_reaches_plugin_handler_once:   Async, Plugin,       Some("payment") => "payment";
    sync_task_failure_reaches_sync_handler_once:      Sync,  SyncClosure,  None => "write_audit_line";
    sync_task_failure_reaches_async_handler_once:     Sync,  AsyncClosure, None => "write_audit_line";
    sync_task_failure_reaches_async_fn_handler_once:  Sync,  AsyncFn,      None => "write_audit_line";
    sync_task_failure_reaches_plugin_handler_once:    Sync,  Plugin,       None => "write_audit_line";
}

// ----------------------------------------------- default vs per task

// The default config's handler applies when the task has none: with no
// per-task config at all, and with one that sets only the name.
failure_reaches_handler_once! {
    async_task_without_config_reaches_default_handler_once:  Async, Default, None => "send_welcome_mail";
    sync_task_with_only_a_name_reaches_default_handler_once: Sync,  Default, Some("renamed") => "renamed";
}

#[tokio::test]
async fn per_task_handler_overrides_the_default() {
    let default_seen = Seen::default();
    let task_seen = Seen::default();
    let background = Background::builder()
        .default_config(
            TaskConfig::builder()
                .on_error(default_seen.async_handler())
                .build(),
        )
        .build();
    let recorder = task_seen.clone();
    let (app, mut handles) = job_router(&background, move |tasks| {
        vec![
            tasks
                .task()
                .on_error(recorder.sync_handler())
                .build()
                .schedule(send_welcome_mail()),
        ]
    });

    assert_eq!(get_request(&app, "/job").await.0, StatusCode::ACCEPTED);
    let handle = within("handle", handles.recv()).await.unwrap();
    assert!(within("outcome", handle.outcome()).await.is_err());
    within("idle", background.wait_idle()).await;

    assert_one_failure(
        &task_seen.calls(),
        "send_welcome_mail",
        ModeKind::Async,
        503,
    );
    assert!(
        default_seen.calls().is_empty(),
        "default handler was called"
    );

    // The default is really installed: a task without its own handler uses it.
    let handle = background.schedule(send_welcome_mail());
    assert!(within("outcome", handle.outcome()).await.is_err());
    assert_eq!(default_seen.calls().len(), 1);
    assert_eq!(task_seen.calls().len(), 1);
}

// ------------------------------------------------------------ panics

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_tasks_reach_the_handler_and_the_server_keeps_serving() {
    let seen = Seen::default();
    let background = Background::builder()
        .default_config(TaskConfig::builder().on_error(seen.sync_handler()).build())
        .build();
    let completed = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&completed);
    let app = Router::new()
        .route(
            "/boom",
            get(|tasks: Tasks| async move {
                tasks.task().name("async-boom").build().schedule(async {
                    tokio::task::yield_now().await;
                    explode("kaboom in async task");
                });
                tasks
                    .task()
                    .name("sync-boom")
                    .build()
                    .schedule(|| explode_owned(format!("kaboom {} in sync task", 42)));
                "scheduled"
            }),
        )
        .route(
            "/ok",
            get(move |tasks: Tasks| {
                let counter = Arc::clone(&counter);
                async move {
                    tasks.schedule(async move {
                        counter.fetch_add(1, Ordering::SeqCst);
                    });
                    "fine"
                }
            }),
        )
        .layer(background.layer());
    let addr = util::serve(app).await;
    let client = reqwest::Client::new();

    let response = within(
        "GET /boom",
        client.get(format!("http://{addr}/boom")).send(),
    )
    .await
    .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(within("body", response.text()).await.unwrap(), "scheduled");
    within("idle", background.wait_idle()).await;

    let mut calls = seen.calls();
    calls.sort_by_key(|(info, _)| info.id);
    assert_eq!(calls.len(), 2, "{calls:?}");
    assert_eq!(calls[0].0.name, "async-boom");
    assert_eq!(calls[0].0.mode, ModeKind::Async);
    assert_panicked_with(&calls[0].1, "kaboom in async task");
    assert_eq!(calls[1].0.name, "sync-boom");
    assert_eq!(calls[1].0.mode, ModeKind::Sync);
    assert_panicked_with(&calls[1].1, "kaboom 42 in sync task");

    for _ in 0..2 {
        let response = within("GET /ok", client.get(format!("http://{addr}/ok")).send())
            .await
            .unwrap();
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(within("body", response.text()).await.unwrap(), "fine");
    }
    within("idle", background.wait_idle()).await;
    assert_eq!(completed.load(Ordering::SeqCst), 2);

    let stats = background.stats();
    assert_eq!((stats.panicked, stats.completed), (2, 2), "{stats:?}");
    assert_settled(stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panicking_error_handlers_break_nothing() {
    let background = Background::new();
    let (app, mut handles) = job_router(&background, |tasks| {
        vec![
            tasks
                .task()
                .on_error(|_: &TaskInfo, _: &TaskError| explode("sync handler broke"))
                .build()
                .schedule(send_welcome_mail()),
            tasks
                .task()
                .on_error(|_: TaskInfo, _: TaskError| async {
                    tokio::task::yield_now().await;
                    explode("async handler broke");
                })
                .build()
                .schedule(write_audit_line()),
            tasks
                .task()
                .on_error(Pager2)
                .build()
                .schedule(|| explode("task broke too")),
        ]
    });

    assert_eq!(get_request(&app, "/job").await.0, StatusCode::ACCEPTED);
    let mut outcomes = Vec::new();
    for _ in 0..3 {
        let handle = within("handle", handles.recv()).await.unwrap();
        outcomes.push(within("outcome", handle.outcome()).await);
    }
    assert_failed_with(outcomes[0].as_ref().unwrap_err(), 503);
    assert_failed_with(outcomes[1].as_ref().unwrap_err(), 507);
    assert_panicked_with(outcomes[2].as_ref().unwrap_err(), "task broke too");

    // Later requests, later tasks and later error handlers all still work.
    assert_eq!(
        get_request(&app, "/ok").await,
        (StatusCode::OK, "still fine".to_owned())
    );
    let later = Seen::default();
    let ok = background.schedule(async {});
    let failing = background
        .task()
        .on_error(later.sync_handler())
        .build()
        .schedule(send_welcome_mail());
    within("later task", ok.outcome())
        .await
        .expect("a later task completes");
    assert!(within("later failure", failing.outcome()).await.is_err());
    within("idle", background.wait_idle()).await;
    assert_eq!(later.calls().len(), 1, "a later handler still runs");

    let stats = background.stats();
    assert_eq!(
        (stats.failed, stats.panicked, stats.completed),
        (3, 1, 1),
        "{stats:?}"
    );
    assert_settled(stats);
}

/// A plugin handler that panics after awaiting.
struct Pager2;

impl ErrorHandler for Pager2 {
    async fn handle(&self, _: &TaskInfo, _: &TaskError) {
        tokio::task::yield_now().await;
        explode("plugin handler broke");
    }
}

#[tokio::test]
async fn panicking_error_handler_is_logged() {
    let log = Captured::default();
    let _guard = log.install(tracing::Level::WARN);
    let background = Background::new();

    let handle = background
        .task()
        .name("flaky-webhook")
        .on_error(|_: &TaskInfo, _: &TaskError| explode("pager is down"))
        .build()
        .schedule(send_welcome_mail());
    assert!(within("outcome", handle.outcome()).await.is_err());
    within("idle", background.wait_idle()).await;

    let lines = log.lines();
    assert!(
        lines.iter().any(|line| line.contains("ERROR")
            && line.contains("error handler panicked")
            && line.contains("flaky-webhook")
            && line.contains("pager is down")),
        "no ERROR line for the handler's panic in {lines:#?}"
    );
}

#[tokio::test]
async fn panicking_handlers_of_rejected_tasks_do_not_escape_schedule() {
    let background = Background::new();
    let report = within("shutdown", background.shutdown(Duration::from_secs(1))).await;
    assert!(report.is_empty());

    let sync = background
        .task()
        .on_error(|_: &TaskInfo, _: &TaskError| explode("sync handler broke"))
        .build()
        .schedule(async {});
    let not_run = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&not_run);
    let asynchronous = background
        .task()
        .on_error(|_: TaskInfo, _: TaskError| async { explode("async handler broke") })
        .build()
        .schedule(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });

    for handle in [&sync, &asynchronous] {
        let outcome = within("outcome", handle.outcome()).await;
        assert!(
            matches!(
                outcome,
                Err(TaskError::Rejected(RejectReason::ShuttingDown))
            ),
            "{outcome:?}"
        );
        assert!(!handle.is_started());
    }
    within("idle", background.wait_idle()).await;
    assert_eq!(not_run.load(Ordering::SeqCst), 0, "a rejected task ran");
    let stats = background.stats();
    assert_eq!(stats.rejected, 2, "{stats:?}");
    assert_settled(stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_of_tasks_with_a_timeout_reach_the_handler_once() {
    // With a timeout, a sync task's work runs on a blocking thread of its
    // own while the task waits on the runtime: a second path to the handler.
    let background = Background::new();
    let seen = Seen::default();
    let timed = background
        .task()
        .timeout(Duration::from_secs(10))
        .on_error(seen.sync_handler())
        .build();
    let handles = [
        timed.schedule(write_audit_line()),
        timed.schedule(|| explode("kaboom on a timed thread")),
        timed.schedule(Export { fail_with: Some(9) }),
        timed.schedule(async { explode("kaboom in a timed future") }),
        timed.schedule(send_welcome_mail()),
    ];
    for handle in &handles {
        assert!(within("outcome", handle.outcome()).await.is_err());
    }
    within("idle", background.wait_idle()).await;

    let mut calls = seen.calls();
    calls.sort_by_key(|(info, _)| info.id);
    assert_eq!(calls.len(), 5, "{calls:?}");
    let modes: Vec<ModeKind> = calls.iter().map(|(info, _)| info.mode).collect();
    assert_eq!(
        modes,
        [
            ModeKind::Sync,
            ModeKind::Sync,
            ModeKind::Sync,
            ModeKind::Async,
            ModeKind::Async
        ]
    );
    assert_eq!(calls[0].0.name, "write_audit_line");
    assert_failed_with(&calls[0].1, 507);
    assert_panicked_with(&calls[1].1, "kaboom on a timed thread");
    assert_eq!(calls[2].0.name, "Export");
    assert_failed_with(&calls[2].1, 9);
    assert_panicked_with(&calls[3].1, "kaboom in a timed future");
    assert_failed_with(&calls[4].1, 503);

    let stats = background.stats();
    assert_eq!((stats.failed, stats.panicked), (3, 2), "{stats:?}");
    assert_settled(stats);
}

// ------------------------------------------------- result types

struct Ping {
    runs: Arc<AtomicUsize>,
}

impl BackgroundTask<()> for Ping {
    type Mode = mode::Async;

    async fn run(self) {
        tokio::task::yield_now().await;
        self.runs.fetch_add(1, Ordering::SeqCst);
    }
}

struct Charge {
    fail_with: Option<u16>,
}

impl BackgroundTask<Result<(), MyError>> for Charge {
    type Mode = mode::Async;

    async fn run(self) -> Result<(), MyError> {
        tokio::task::yield_now().await;
        match self.fail_with {
            Some(code) => Err(MyError { code }),
            None => Ok(()),
        }
    }
}

struct Reindex {
    fail_with: Option<u16>,
}

impl BackgroundTask<Result<(), MyError>> for Reindex {
    type Mode = mode::Sync;

    async fn run(self) -> Result<(), MyError> {
        match self.fail_with {
            Some(code) => Err(MyError { code }),
            None => Ok(()),
        }
    }
}

struct Sweep {
    runs: Arc<AtomicUsize>,
}

impl BlockingTask<()> for Sweep {
    fn run(self) {
        self.runs.fetch_add(1, Ordering::SeqCst);
    }
}

struct Export {
    fail_with: Option<u16>,
}

impl BlockingTask<Result<(), MyError>> for Export {
    fn run(self) -> Result<(), MyError> {
        match self.fail_with {
            Some(code) => Err(MyError { code }),
            None => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unit_and_custom_error_results_give_their_outcomes() {
    let background = Background::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let count = |runs: &Arc<AtomicUsize>| {
        let runs = Arc::clone(runs);
        move || {
            runs.fetch_add(1, Ordering::SeqCst);
        }
    };

    // Tasks returning `()`: each must run, and end as `Ok(())`.
    let unit = [
        background.schedule(Ping {
            runs: Arc::clone(&runs),
        }),
        background.schedule(Sweep {
            runs: Arc::clone(&runs),
        }),
        background.schedule(count(&runs)),
        background.schedule({
            let bump = count(&runs);
            async move { bump() }
        }),
    ];
    for handle in &unit {
        assert_eq!(
            within("unit outcome", handle.outcome()).await.ok(),
            Some(())
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 4, "every unit task ran");

    // Tasks returning `Result<(), MyError>`: `Ok` and `Err` both come through.
    let ok = [
        background.schedule(Charge { fail_with: None }),
        background.schedule(Reindex { fail_with: None }),
        background.schedule(Export { fail_with: None }),
        background.schedule(|| Ok::<(), MyError>(())),
        background.schedule(async { Ok::<(), MyError>(()) }),
    ];
    for handle in &ok {
        within("ok outcome", handle.outcome())
            .await
            .expect("an Ok task completes");
    }
    let failed = [
        (background.schedule(Charge { fail_with: Some(1) }), 1),
        (background.schedule(Reindex { fail_with: Some(2) }), 2),
        (background.schedule(Export { fail_with: Some(3) }), 3),
        (background.schedule(|| Err::<(), _>(MyError { code: 4 })), 4),
        (
            background.schedule(async { Err::<(), _>(MyError { code: 5 }) }),
            5,
        ),
    ];
    for (handle, code) in &failed {
        let outcome = within("failed outcome", handle.outcome()).await;
        assert_failed_with(&outcome.unwrap_err(), *code);
    }
    assert_eq!(failed[0].0.info().name, "Charge");
    assert_eq!(failed[1].0.info().name, "Reindex");
    assert_eq!(failed[2].0.info().name, "Export");

    within("idle", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!((stats.completed, stats.failed), (9, 5), "{stats:?}");
    assert_settled(stats);
}

// ------------------------------------------------- no handler, stats

#[tokio::test]
async fn failure_without_handler_is_logged_and_counted() {
    let log = Captured::default();
    let _guard = log.install(tracing::Level::WARN);
    let background = Background::new();

    let handle = background.schedule(Charge {
        fail_with: Some(418),
    });
    let outcome = within("outcome", handle.outcome()).await;
    assert_failed_with(&outcome.unwrap_err(), 418);
    within("idle", background.wait_idle()).await;

    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.failed), (1, 1), "{stats:?}");
    assert_settled(stats);
    let lines = log.lines();
    assert!(
        lines.iter().any(|line| line.contains("ERROR")
            && line.contains("Charge")
            && line.contains("upstream answered 418")),
        "no ERROR line naming the task in {lines:#?}"
    );
}

#[tokio::test]
async fn a_failures_log_line_names_its_task_phase_and_request_path() {
    let log = Captured::default();
    let _guard = log.install(tracing::Level::WARN);
    let background = Background::new();
    let (app, mut handles) = job_router(&background, |tasks| {
        vec![
            tasks.schedule(Charge {
                fail_with: Some(503),
            }),
            tasks
                .after_response()
                .task()
                .name("held-forever")
                .build()
                .schedule(std::future::pending::<()>()),
        ]
    });
    assert_eq!(
        get_request(&app, "/job?user=7").await.0,
        StatusCode::ACCEPTED
    );
    let failed = within("handle", handles.recv()).await.unwrap();
    let held = within("handle", handles.recv()).await.unwrap();
    assert!(within("outcome", failed.outcome()).await.is_err());
    assert!(held.cancel().is_cancelled());
    within("idle", background.wait_idle()).await;

    let lines = log.lines();
    let line = |level: &str, name: &str, phase: Phase| {
        lines.iter().any(|line| {
            line.contains(level)
                && line.contains("background task did not complete")
                && line.contains(&format!("task.name={name}"))
                && line.contains(&format!("task.phase={phase}"))
                && line.contains("request.path=/job")
        })
    };
    assert!(
        line("ERROR", "Charge", Phase::Immediate),
        "no ERROR line for the failure in {lines:#?}"
    );
    assert!(
        line("WARN", "held-forever", Phase::AfterResponse),
        "no WARN line for the cancellation in {lines:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_add_up_after_wait_idle() {
    let background = Background::new();
    let (app, mut handles) = job_router(&background, |tasks| {
        vec![
            tasks.schedule(async {}),
            tasks.schedule(|| ()),
            tasks.after_route().schedule(send_welcome_mail()),
            tasks.after_response().schedule(write_audit_line()),
            tasks.schedule(|| explode("counted")),
        ]
    });
    for _ in 0..2 {
        assert_eq!(get_request(&app, "/job").await.0, StatusCode::ACCEPTED);
    }
    let never = background.schedule(std::future::pending::<()>());
    within("never starts", never.started()).await;

    // Ten request tasks have outcomes; one is still pending.
    for _ in 0..10 {
        let handle = within("handle", handles.recv()).await.unwrap();
        let _ = within("outcome", handle.outcome()).await;
    }
    let stats = background.stats();
    assert_eq!(
        (
            stats.scheduled,
            stats.completed,
            stats.failed,
            stats.panicked
        ),
        (11, 4, 4, 2),
        "{stats:?}"
    );
    assert_eq!(stats.running, 1, "{stats:?}");
    assert_eq!(
        stats.scheduled,
        stats.in_flight() + stats.ended(),
        "{stats:?}"
    );

    // Shutdown cancels the pending task; later schedules are rejected.
    let report = within("shutdown", background.shutdown(Duration::from_secs(1))).await;
    assert_eq!(report.cancelled.len(), 1, "{report:?}");
    let rejected = background.schedule(async {});
    assert!(within("rejected", rejected.outcome()).await.is_err());
    within("idle", background.wait_idle()).await;

    let stats = background.stats();
    assert_eq!(
        (
            stats.scheduled,
            stats.completed,
            stats.failed,
            stats.panicked,
            stats.cancelled,
            stats.rejected
        ),
        (12, 4, 4, 2, 1, 1),
        "{stats:?}"
    );
    assert_settled(stats);
}

// ------------------------------------------------- runtime shutdown

/// Schedules a never-ending task with `handler` on a runtime of its own,
/// then drops that runtime under it.
fn run_then_drop_runtime<H, M>(handler: H) -> (Background, TaskHandle)
where
    H: IntoErrorHandler<M>,
{
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();
    let handle = background
        .task()
        .name("outlived")
        .on_error(handler)
        .build()
        .schedule(std::future::pending::<()>());
    runtime.block_on(within("task starts", handle.started()));
    drop(runtime);
    (background, handle)
}

/// The task was ended as cancelled: outcome published, counted, out of flight.
fn assert_ended_as_cancelled(background: &Background, handle: &TaskHandle) {
    let outcome = handle.try_outcome();
    assert!(
        matches!(outcome, Some(Err(TaskError::Cancelled))),
        "outcome of a task whose runtime shut down: {outcome:?}, stats {:?}",
        background.stats()
    );
    assert!(
        background.wait_idle().now_or_never().is_some(),
        "wait_idle never resolves: {:?}",
        background.stats()
    );
    let stats = background.stats();
    assert_eq!(stats.cancelled, 1, "{stats:?}");
    assert_settled(stats);
}

#[test]
fn task_with_sync_handler_ends_when_its_runtime_shuts_down() {
    let seen = Seen::default();
    let (background, handle) = run_then_drop_runtime(seen.sync_handler());
    assert_ended_as_cancelled(&background, &handle);
    let calls = seen.calls();
    assert_eq!(calls.len(), 1, "{calls:?}");
    assert_eq!(calls[0].0.name, "outlived");
    assert!(calls[0].1.is_cancelled());
}

/// With an async handler, the report is spawned onto the runtime that is
/// shutting down, and tokio drops that future unrun: the task must end all
/// the same (it once stayed at `running: 1`, with no outcome, and
/// `wait_idle` never resolved). The handler itself cannot run there and
/// does not; that is not asserted.
#[test]
fn task_with_async_handler_ends_when_its_runtime_shuts_down() {
    let seen = Seen::default();
    let (background, handle) = run_then_drop_runtime(seen.async_handler());
    assert_ended_as_cancelled(&background, &handle);
}

/// A stateful plugin shared as `Arc<H>`: every task's failure reaches the one instance.
#[tokio::test]
async fn one_shared_plugin_serves_many_tasks() {
    struct Counter(AtomicUsize);

    impl ErrorHandler for Counter {
        async fn handle(&self, _info: &TaskInfo, _error: &TaskError) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    let counter = Arc::new(Counter(AtomicUsize::new(0)));
    let background = Background::new();
    for _ in 0..3 {
        background
            .task()
            .on_error(Arc::clone(&counter))
            .build()
            .schedule(async { Err::<(), _>("boom") });
    }
    within("the failing tasks", background.wait_idle()).await;
    assert_eq!(counter.0.load(Ordering::SeqCst), 3);
}
