//! The forms `schedule` and `on_error` accept: each one runs (or is called)
//! with the right task info and error.
//!
//! The forms they refuse are `compile_fail` doctests in `src/handler.rs` (the
//! capturing async closures) and `src/extractor.rs` (retrying a task that can
//! run only once); they are not repeated here.

mod util;

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::ThreadId;
use std::time::Duration;

use axum_background::mode::{self, ModeKind};
use axum_background::{
    Background, BackgroundTask, BoxError, ErrorHandler, RetryPolicy, TaskError, TaskInfo,
};

use util::{assert_settled, within};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// `"{task name}: {error}"` for every call of a handler.
type Log = Arc<Mutex<Vec<String>>>;

fn record(log: &Mutex<Vec<String>>, info: &TaskInfo, error: &TaskError) {
    log.lock().unwrap().push(format!("{}: {error}", info.name));
}

fn entries(log: &Mutex<Vec<String>>) -> Vec<String> {
    log.lock().unwrap().clone()
}

/// A task that always fails; the tasks below are named after it.
async fn fetch_invoice() -> Result<(), BoxError> {
    tokio::task::yield_now().await;
    Err("upstream answered 503".into())
}

/// What a handler records for one failure of `fetch_invoice`.
const FETCH_INVOICE_FAILED: &str = "fetch_invoice: task failed: upstream answered 503";

/// Runs `fetch_invoice` with `handler` as its error handler and waits until
/// the handler has returned.
async fn fail_with_handler<H, M>(handler: H)
where
    H: axum_background::handler::IntoErrorHandler<M>,
{
    let background = Background::new();
    let handle = background
        .task()
        .on_error(handler)
        .build()
        .schedule(fetch_invoice());
    let outcome = within("the task", handle.outcome()).await;
    assert!(matches!(outcome, Err(TaskError::Failed(_))), "{outcome:?}");
    within("the handler", background.wait_idle()).await;
    assert_settled(background.stats());
}

/// Counts the runs of a task; fails until the `succeed_on`-th.
#[derive(Clone)]
struct Runs {
    count: Arc<AtomicU32>,
    succeed_on: u32,
}

impl Runs {
    fn new(succeed_on: u32) -> Self {
        Runs {
            count: Arc::default(),
            succeed_on,
        }
    }

    /// Records a run; its result.
    fn run(&self) -> Result<(), BoxError> {
        let run = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        if run >= self.succeed_on {
            Ok(())
        } else {
            Err(format!("run {run} failed").into())
        }
    }

    fn count(&self) -> u32 {
        self.count.load(Ordering::SeqCst)
    }
}

/// A retry policy whose waits take no time.
fn three_attempts() -> RetryPolicy {
    RetryPolicy::attempts(3).backoff(Duration::ZERO)
}

// ---------------------------------------------------------------------------
// schedule: a closure returning a future
// ---------------------------------------------------------------------------

/// Sends a report; records the thread it ran on.
async fn send_report(threads: Arc<Mutex<Vec<ThreadId>>>, id: u32) -> Result<(), BoxError> {
    tokio::task::yield_now().await;
    threads.lock().unwrap().push(std::thread::current().id());
    if id == 7 {
        Ok(())
    } else {
        Err(format!("no report {id}").into())
    }
}

#[tokio::test]
async fn closure_returning_a_future_runs_on_the_runtime_when_scheduled_plainly() {
    let background = Background::new();
    let threads: Arc<Mutex<Vec<ThreadId>>> = Arc::default();
    let id = 7;

    let handle = background.schedule({
        let threads = Arc::clone(&threads);
        move || send_report(threads, id)
    });

    assert_eq!(handle.info().mode, ModeKind::Async);
    assert_eq!(handle.info().name, "send_report");
    let outcome = within("the task", handle.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    // A current-thread runtime runs on the test's thread: the future was
    // awaited there, not on a blocking-pool thread.
    assert_eq!(
        *threads.lock().unwrap(),
        [std::thread::current().id()],
        "ran once, on the runtime"
    );
    within("idle", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.completed), (1, 1), "{stats:?}");
    assert_settled(stats);
}

#[tokio::test]
async fn closure_returning_a_future_is_called_when_its_task_starts_not_when_scheduled() {
    let background = Background::new();
    let called = Arc::new(AtomicU32::new(0));

    let handle = background.schedule({
        let called = Arc::clone(&called);
        move || {
            called.fetch_add(1, Ordering::SeqCst);
            async {}
        }
    });
    // On this current-thread runtime the task cannot have started before the
    // test awaits.
    assert!(!handle.is_started());
    assert_eq!(called.load(Ordering::SeqCst), 0, "called at schedule");

    within("the task", handle.outcome()).await.unwrap();
    assert_eq!(called.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn closure_returning_a_future_is_named_after_its_async_fn_or_else_its_function() {
    let background = Background::new();
    let threads: Arc<Mutex<Vec<ThreadId>>> = Arc::default();

    let of_async_fn = background.schedule(move || send_report(threads, 7));
    let of_block = background.schedule(|| async {});
    let of_boxed =
        background.schedule(|| -> Pin<Box<dyn Future<Output = ()> + Send>> { Box::pin(async {}) });
    let named = background
        .task()
        .name("nightly")
        .build()
        .schedule(|| async {});

    let fn_name = "closure_returning_a_future_is_named_after_its_async_fn_or_else_its_function";
    assert_eq!(of_async_fn.info().name, "send_report");
    assert_eq!(of_block.info().name, fn_name);
    assert_eq!(of_boxed.info().name, fn_name);
    assert_eq!(named.info().name, "nightly");
    within("idle", background.wait_idle()).await;
    assert_eq!(background.stats().completed, 4);
}

#[tokio::test(start_paused = true)]
async fn clone_closure_returning_a_future_is_called_again_for_each_attempt() {
    let background = Background::new();
    let runs = Runs::new(3);
    let calls = Arc::new(AtomicU32::new(0));
    let log: Log = Arc::default();

    // `Clone` (it captures only `Clone` values): still retried as a factory,
    // each attempt awaiting a fresh future.
    let task = {
        let (runs, calls) = (runs.clone(), Arc::clone(&calls));
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let runs = runs.clone();
            async move {
                tokio::task::yield_now().await;
                runs.run()
            }
        }
    };
    let handle = background
        .task()
        .retry(three_attempts())
        .on_error({
            let log = Arc::clone(&log);
            move |info: &TaskInfo, error: &TaskError| record(&log, info, error)
        })
        .build()
        .schedule(task.clone());

    let outcome = within("the retries", handle.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(runs.count(), 3);
    assert_eq!(calls.load(Ordering::SeqCst), 3, "one call per attempt");
    let info = handle.info();
    assert_eq!((info.attempts, info.mode), (3, ModeKind::Async));
    within("idle", background.wait_idle()).await;
    assert!(entries(&log).is_empty(), "{:?}", entries(&log));
}

#[tokio::test(start_paused = true)]
async fn closure_returning_a_future_with_retry_gives_up_after_its_attempts() {
    let background = Background::new();
    let runs = Runs::new(u32::MAX);
    let log: Log = Arc::default();

    let handle = background
        .task()
        .name("invoice")
        .retry(three_attempts())
        .on_error({
            let log = Arc::clone(&log);
            move |info: &TaskInfo, error: &TaskError| record(&log, info, error)
        })
        .build()
        .schedule({
            let runs = runs.clone();
            move || {
                let runs = runs.clone();
                async move { runs.run() }
            }
        });

    let outcome = within("the retries", handle.outcome()).await;
    assert!(
        matches!(&outcome, Err(TaskError::Failed(error)) if error.to_string() == "run 3 failed"),
        "{outcome:?}"
    );
    assert_eq!(runs.count(), 3);
    within("idle", background.wait_idle()).await;
    assert_eq!(entries(&log), ["invoice: task failed: run 3 failed"]);
    assert_eq!(handle.info().attempts, 3);
}

// ---------------------------------------------------------------------------
// Retrying the other forms: each attempt runs a clone
// ---------------------------------------------------------------------------

/// A named `Clone` task.
#[derive(Clone)]
struct Ledger {
    runs: Runs,
}

impl BackgroundTask for Ledger {
    type Mode = mode::Async;

    async fn run(self) -> Result<(), BoxError> {
        tokio::task::yield_now().await;
        self.runs.run()
    }
}

#[tokio::test(start_paused = true)]
async fn clone_named_task_is_retried_until_it_succeeds() {
    let background = Background::new();
    let runs = Runs::new(3);

    let handle = background
        .task()
        .retry(three_attempts())
        .build()
        .schedule(Ledger { runs: runs.clone() });

    let outcome = within("the retries", handle.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(runs.count(), 3);
    let info = handle.info();
    assert_eq!(info.attempts, 3);
    assert_eq!(info.name, "Ledger");
    assert_eq!(info.mode, ModeKind::Async);
}

/// A hand-written `Clone` future: one run per poll to completion.
#[derive(Clone)]
struct LedgerFuture {
    runs: Runs,
}

impl Future for LedgerFuture {
    type Output = Result<(), BoxError>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        Poll::Ready(self.runs.run())
    }
}

#[tokio::test(start_paused = true)]
async fn clone_future_is_retried_until_it_succeeds() {
    let background = Background::new();
    let runs = Runs::new(3);

    let handle = background
        .task()
        .retry(three_attempts())
        .build()
        .schedule(LedgerFuture { runs: runs.clone() });

    let outcome = within("the retries", handle.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(runs.count(), 3);
    assert_eq!(
        (handle.info().attempts, handle.info().mode),
        (3, ModeKind::Async)
    );
}

#[tokio::test(start_paused = true)]
async fn sync_clone_closure_is_retried_until_it_succeeds_on_the_blocking_pool() {
    let background = Background::new();
    let runs = Runs::new(3);
    let threads: Arc<Mutex<Vec<ThreadId>>> = Arc::default();

    let handle = background.task().retry(three_attempts()).build().schedule({
        let (runs, threads) = (runs.clone(), Arc::clone(&threads));
        move || {
            threads.lock().unwrap().push(std::thread::current().id());
            runs.run()
        }
    });

    let outcome = within("the retries", handle.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(runs.count(), 3);
    assert_eq!(
        (handle.info().attempts, handle.info().mode),
        (3, ModeKind::Sync)
    );
    let runtime = std::thread::current().id();
    let threads = threads.lock().unwrap().clone();
    assert_eq!(threads.len(), 3);
    assert!(
        threads.iter().all(|thread| *thread != runtime),
        "{threads:?}"
    );
}

// ---------------------------------------------------------------------------
// on_error: every accepted form is called once, with the task's info and error
// ---------------------------------------------------------------------------

#[tokio::test]
async fn sync_closure_handler_gets_the_failure() {
    let log: Log = Arc::default();
    fail_with_handler({
        let log = Arc::clone(&log);
        move |info: &TaskInfo, error: &TaskError| record(&log, info, error)
    })
    .await;
    assert_eq!(entries(&log), [FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn sync_closure_handler_that_always_panics_is_accepted_and_called() {
    // Its return type is `!` (edition 2024's never-type fallback), not `()`.
    let log: Log = Arc::default();
    fail_with_handler({
        let log = Arc::clone(&log);
        move |info: &TaskInfo, error: &TaskError| {
            record(&log, info, error);
            panic!("the handler itself is broken (expected by the test)")
        }
    })
    .await;
    assert_eq!(entries(&log), [FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn sync_fn_handler_gets_the_failure() {
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    fn handler(info: &TaskInfo, error: &TaskError) {
        record(&LOG, info, error);
    }
    fail_with_handler(handler).await;
    assert_eq!(entries(&LOG), [FETCH_INVOICE_FAILED]);
}

/// An `ErrorHandler` plugin: state in its fields, borrowing the failure.
struct Pager {
    log: Log,
}

impl ErrorHandler for Pager {
    async fn handle(&self, info: &TaskInfo, error: &TaskError) {
        tokio::task::yield_now().await;
        record(&self.log, info, error);
    }
}

#[tokio::test]
async fn plugin_handler_gets_the_failure() {
    let log: Log = Arc::default();
    fail_with_handler(Pager {
        log: Arc::clone(&log),
    })
    .await;
    assert_eq!(entries(&log), [FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn shared_plugin_handler_gets_the_failure() {
    let log: Log = Arc::default();
    let pager = Arc::new(Pager {
        log: Arc::clone(&log),
    });
    fail_with_handler(Arc::clone(&pager)).await;
    fail_with_handler(pager).await;
    assert_eq!(entries(&log), [FETCH_INVOICE_FAILED, FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn borrowing_async_fn_handler_gets_the_failure() {
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    // Python's `async def handler(task, error)`: borrows both, across an await.
    async fn handler(info: &TaskInfo, error: &TaskError) {
        let name = &info.name;
        tokio::task::yield_now().await;
        LOG.lock().unwrap().push(format!("{name}: {error}"));
    }
    fail_with_handler(handler).await;
    assert_eq!(entries(&LOG), [FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn owning_async_fn_handler_gets_the_failure() {
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    async fn handler(info: TaskInfo, error: TaskError) {
        tokio::task::yield_now().await;
        record(&LOG, &info, &error);
    }
    fail_with_handler(handler).await;
    assert_eq!(entries(&LOG), [FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn capturing_closure_returning_an_async_block_gets_the_failure() {
    // What the diagnostic for a capturing async closure suggests.
    let log: Log = Arc::default();
    let pager = Arc::clone(&log);
    fail_with_handler(move |info: TaskInfo, error: TaskError| {
        let pager = pager.clone();
        async move {
            tokio::task::yield_now().await;
            record(&pager, &info, &error);
        }
    })
    .await;
    assert_eq!(entries(&log), [FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn non_capturing_async_closures_get_the_failure() {
    static LOG: Mutex<Vec<String>> = Mutex::new(Vec::new());
    fail_with_handler(async |info: &TaskInfo, error: &TaskError| {
        tokio::task::yield_now().await;
        record(&LOG, info, error);
    })
    .await;
    fail_with_handler(async |info: TaskInfo, error: TaskError| {
        tokio::task::yield_now().await;
        record(&LOG, &info, &error);
    })
    .await;
    assert_eq!(entries(&LOG), [FETCH_INVOICE_FAILED, FETCH_INVOICE_FAILED]);
}

#[tokio::test]
async fn borrowing_async_fn_handler_gets_a_sync_task_failure_and_its_info() {
    static SEEN: Mutex<Vec<(TaskInfo, String)>> = Mutex::new(Vec::new());
    async fn handler(info: &TaskInfo, error: &TaskError) {
        tokio::task::yield_now().await;
        SEEN.lock().unwrap().push((info.clone(), error.to_string()));
    }
    let background = Background::new();
    let handle = background
        .task()
        .on_error(handler)
        .build()
        .schedule(|| -> Result<(), BoxError> { Err("disk full".into()) });
    within("the task", handle.outcome()).await.unwrap_err();
    within("the handler", background.wait_idle()).await;

    let seen = SEEN.lock().unwrap().clone();
    assert_eq!(seen.len(), 1, "{seen:?}");
    let (info, error) = &seen[0];
    assert_eq!(info.id, handle.id());
    assert_eq!(info.mode, ModeKind::Sync);
    assert_eq!(info.attempts, 1);
    assert_eq!(
        info.name,
        "borrowing_async_fn_handler_gets_a_sync_task_failure_and_its_info"
    );
    assert_eq!(error, "task failed: disk full");
}
