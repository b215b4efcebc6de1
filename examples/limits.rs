//! Limits that hold under load: `cargo run --example limits`.
//!
//! Four short scenes, each with its own `Background`, and the program exits
//! on its own:
//!
//! 1. `max_blocking(4)`: 40 blocking tasks share 4 threads; the rest wait
//!    their turn, in schedule order, without taking a thread.
//! 2. `max_in_flight(2)` with `OverflowPolicy::Reject`: an axum route answers
//!    503 when the export it would start is rejected (back-pressure).
//! 3. `timeout`: an async task past its deadline is dropped; a sync task past
//!    its deadline is reported timed out and sees its cancellation token fire.
//! 4. `retry`: a flaky upload is retried with exponential backoff and jitter
//!    until it succeeds; a task that always fails reaches its error handler
//!    once, after its last attempt.
//!
//! The crate also logs each task that does not complete with `tracing`; this
//! example installs no subscriber, so that its output is the narrative alone.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum_background::{
    Background, BoxError, OverflowPolicy, RetryPolicy, TaskContext, TaskError, TaskInfo, Tasks,
};
use tokio::sync::{oneshot, watch};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    blocking_pool_bound().await;
    in_flight_bound().await?;
    timeouts().await;
    retries().await;
    Ok(())
}

// 1. max_blocking ----------------------------------------------------------

/// Counts the sync tasks running at once, and the most that ever did.
#[derive(Default)]
struct Concurrency {
    now: AtomicUsize,
    high_water: AtomicUsize,
}

async fn blocking_pool_bound() {
    println!("1. max_blocking(4): 40 blocking tasks, at most 4 threads at a time");
    let background = Background::builder().max_blocking(4).build();
    let concurrency = Arc::new(Concurrency::default());
    for i in 0..40 {
        let concurrency = Arc::clone(&concurrency);
        background
            .task()
            .name(format!("resize-{i}"))
            .build()
            .schedule(move || {
                let running = concurrency.now.fetch_add(1, Ordering::SeqCst) + 1;
                concurrency.high_water.fetch_max(running, Ordering::SeqCst);
                std::thread::sleep(Duration::from_millis(20)); // stands for image work
                concurrency.now.fetch_sub(1, Ordering::SeqCst);
            });
    }
    let in_flight = background.stats().in_flight();
    println!(
        "   schedule returned at once for all {in_flight}: they are in flight (queued or running)"
    );
    // Resolves when every task has ended: no sleeping, no guessing.
    background.wait_idle().await;
    let stats = background.stats();
    let high_water = concurrency.high_water.load(Ordering::SeqCst);
    println!(
        "   all {} completed; high-water mark: {high_water} running at once",
        stats.completed
    );
    println!();
}

// 2. max_in_flight + Reject ---------------------------------------------------

/// Exports a report; the demo holds every export until `go` turns true, so
/// that both slots are taken while more requests come in.
async fn export(n: u32, mut go: watch::Receiver<bool>) {
    let _ = go.wait_for(|go| *go).await;
    let _ = n; // ... write export number `n` ...
}

/// Starts an export, or answers 503 when `max_in_flight` exports are running:
/// a rejected task has already ended when `schedule` returns.
async fn start_export(
    tasks: Tasks,
    Path(n): Path<u32>,
    State(go): State<watch::Receiver<bool>>,
) -> (StatusCode, String) {
    let handle = tasks
        .task()
        .name(format!("export-{n}"))
        .build()
        .schedule(export(n, go));
    match handle.try_outcome() {
        Some(Err(TaskError::Rejected(reason))) => {
            (StatusCode::SERVICE_UNAVAILABLE, format!("busy: {reason}"))
        }
        _ => (StatusCode::ACCEPTED, format!("export {n} started")),
    }
}

async fn in_flight_bound() -> Result<(), BoxError> {
    println!("2. max_in_flight(2) + OverflowPolicy::Reject: the route answers 503 when full");
    let background = Background::builder()
        .max_in_flight(2)
        .overflow(OverflowPolicy::Reject)
        .build();
    let (go, go_rx) = watch::channel(false);
    let app = Router::new()
        .route("/export/{n}", post(start_export))
        .with_state(go_rx)
        .layer(background.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async { stopped.await.unwrap_or(()) })
            .into_future(),
    );
    let client = reqwest::Client::new();
    let post = |n: u32| client.post(format!("{base}/export/{n}")).send();

    for n in 1..=4 {
        let response = post(n).await?;
        let status = response.status();
        println!(
            "   POST /export/{n} -> {status}: {}",
            response.text().await?
        );
    }
    let _ = go.send(true); // the two running exports finish
    background.wait_idle().await;
    let response = post(5).await?;
    let status = response.status();
    println!(
        "   (both finished) POST /export/5 -> {status}: {}",
        response.text().await?
    );
    background.wait_idle().await;
    let stats = background.stats();
    println!(
        "   stats: scheduled {}, completed {}, rejected {}",
        stats.scheduled, stats.completed, stats.rejected
    );

    let _ = stop.send(());
    server.await??;
    println!();
    Ok(())
}

// 3. timeout ------------------------------------------------------------------

/// Prints when dropped: shows that a timed-out async task's future is dropped.
struct Cleanup(&'static str);

impl Drop for Cleanup {
    fn drop(&mut self) {
        println!(
            "   {}: future dropped at the deadline, so its cleanup ran",
            self.0
        );
    }
}

/// Calls a slow API: far slower than its timeout allows.
async fn call_slow_api() {
    let _cleanup = Cleanup("slow-api");
    tokio::time::sleep(Duration::from_secs(30)).await;
    println!("   slow-api: never printed: cancelled at the deadline");
}

/// Imports rows on a blocking thread, stopping at a clean point once its
/// cancellation token fires; says on `stopped` that it did.
fn import_rows(stopped: oneshot::Sender<()>) {
    let context = TaskContext::current().expect("inside a task");
    for _row in 0..500 {
        if context.is_cancelled() {
            let _ = stopped.send(());
            return;
        }
        std::thread::sleep(Duration::from_millis(10)); // stands for one row's work
    }
}

async fn timeouts() {
    println!("3. timeout(100 ms): past its deadline a task ends as TimedOut");
    let background = Background::new();
    let deadline = background
        .task()
        .timeout(Duration::from_millis(100))
        .build();

    let slow_api = deadline.schedule(call_slow_api());
    let outcome = slow_api.outcome().await;
    println!("   slow-api (async): {}", describe(&outcome));

    let (stopped, was_stopped) = oneshot::channel();
    let import = deadline.schedule(move || import_rows(stopped));
    let outcome = import.outcome().await;
    println!(
        "   import (sync): {}; a thread cannot be interrupted, so it runs on",
        describe(&outcome)
    );
    if was_stopped.await.is_ok() {
        println!(
            "   import (sync): its thread saw the cancellation token fire and stopped cleanly"
        );
    }
    background.wait_idle().await;
    println!("   stats: timed out {}", background.stats().timed_out);
    println!();
}

// 4. retry --------------------------------------------------------------------

/// Uploads a file; the connection drops on the first two tries.
async fn flaky_upload(tries: Arc<AtomicU32>) -> Result<(), BoxError> {
    let attempt = tries.fetch_add(1, Ordering::SeqCst) + 1;
    if attempt < 3 {
        println!("   upload attempt {attempt}: connection reset");
        return Err("connection reset".into());
    }
    println!("   upload attempt {attempt}: uploaded");
    Ok(())
}

/// Notifies a webhook that is down for good.
async fn notify_webhook(tries: Arc<AtomicU32>) -> Result<(), BoxError> {
    let attempt = tries.fetch_add(1, Ordering::SeqCst) + 1;
    println!("   webhook attempt {attempt}: 503 from the webhook");
    Err(format!("webhook answered 503 (attempt {attempt})").into())
}

fn gave_up(info: &TaskInfo, error: &TaskError) {
    println!(
        "   on_error: {} gave up after {} attempts: {error}",
        info.name, info.attempts
    );
}

async fn retries() {
    let policy = RetryPolicy::attempts(5).backoff(Duration::from_millis(50));
    println!("4. retry(RetryPolicy::attempts(5).backoff(50 ms)): at most 5 runs in all");
    println!(
        "   waits between runs: {:?}, {:?}, {:?}, {:?} nominal, each jittered to between half and all of it",
        policy.nominal_delay(1),
        policy.nominal_delay(2),
        policy.nominal_delay(3),
        policy.nominal_delay(4),
    );
    let background = Background::new();
    let retried = background.task().retry(policy).on_error(gave_up).build();

    // A factory closure: each attempt calls the async fn afresh.
    let tries = Arc::new(AtomicU32::new(0));
    let upload = retried.schedule(move || flaky_upload(Arc::clone(&tries)));
    let outcome = upload.outcome().await;
    println!(
        "   upload: {} after {} attempts; success stops the retries",
        describe(&outcome),
        upload.info().attempts
    );

    let tries = Arc::new(AtomicU32::new(0));
    let webhook = background
        .task()
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(20)))
        .on_error(gave_up)
        .build()
        .schedule(move || notify_webhook(Arc::clone(&tries)));
    let outcome = webhook.outcome().await;
    println!("   webhook: {}", describe(&outcome));
    background.wait_idle().await;
    let stats = background.stats();
    println!(
        "   stats: completed {}, failed {}",
        stats.completed, stats.failed
    );
}

fn describe(outcome: &Result<(), TaskError>) -> String {
    match outcome {
        Ok(()) => "completed".to_owned(),
        Err(error) => format!("{} ({error})", error.kind()),
    }
}
