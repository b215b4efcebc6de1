//! Sync and async tasks side by side: `cargo run --example sync_async`.
//!
//! The Rust answer to fastapi-tasks' "Sync and Async Tasks" guide. There, a
//! task's kind is found at run time (`async def` or not); here it is part of
//! the task's type. A future runs on the tokio runtime; a closure (or a
//! `BlockingTask`) runs on tokio's blocking pool, so blocking calls such as
//! `std::thread::sleep`, `std::fs` or a sync-only client never stall the
//! runtime. No wrapper is needed to convert one into the other.
//!
//! The example serves on 127.0.0.1, sends itself requests and prints which
//! thread each task ran on. Lines starting with `[timing]` hold measured
//! times; every other line is the same on every run.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use axum_background::{Background, BoxError, TaskContext, Tasks};
use serde_json::{Value, json};

/// What the tasks report: one line per run, and the peak of concurrent sync tasks.
#[derive(Default)]
struct Log {
    /// When the current request was sent: task times are measured from it.
    t0: Mutex<Option<Instant>>,
    /// (task id, what ran where, started ms, ended ms), in the order tasks ended.
    runs: Mutex<Vec<(u64, String, u128, u128)>>,
    running: AtomicUsize,
    peak: AtomicUsize,
}

impl Log {
    /// Records the task this is called from; `began` is when its work began.
    fn record(&self, data: &str, began: Instant) {
        let task = TaskContext::current().expect("called inside a task").info();
        let thread = std::thread::current().name().unwrap_or("?").to_owned();
        let t0 = self.t0.lock().unwrap().expect("t0 set before each request");
        let what = format!(
            "{:<16} {:<5} {:<14} on thread {thread:?}: {data}",
            task.name,
            task.mode.as_str(),
            task.phase.as_str()
        );
        let (from, to) = (began - t0, t0.elapsed());
        let run = (task.id.as_u64(), what, from.as_millis(), to.as_millis());
        self.runs.lock().unwrap().push(run);
    }
}

// The two kinds of task from the guide. Each sleeps 200 ms to stand for work.

/// Async: awaits (here a timer; in real code HTTP or a database) on the runtime.
async fn async_task(log: Arc<Log>, data: &'static str) {
    let began = Instant::now();
    tokio::time::sleep(Duration::from_millis(200)).await; // never blocks a runtime thread
    log.record(data, began);
}

/// Sync: blocks its thread, which is a blocking-pool thread, never a runtime one.
fn sync_task(log: &Log, data: &'static str) {
    let began = Instant::now();
    std::thread::sleep(Duration::from_millis(200)); // blocking is fine here
    log.record(data, began);
}

/// "The Basics": one handler, one task of each kind.
async fn schedule_tasks(tasks: Tasks, State(log): State<Arc<Log>>) -> Json<Value> {
    tasks.schedule(async_task(Arc::clone(&log), "async data")); // a future: async mode
    // A closure: sync mode. It is named after the function it is written in
    // (`schedule_tasks`); `tasks.task().name(..)` or a `BlockingTask` type names it otherwise.
    tasks.schedule(move || sync_task(&log, "sync data"));
    Json(json!({"status": "scheduled"}))
}

/// "Mixing Sync and Async": both kinds, in every phase.
async fn mixed_tasks(tasks: Tasks, State(log): State<Arc<Log>>) -> Json<Value> {
    let (l1, l2) = (Arc::clone(&log), Arc::clone(&log));
    tasks.schedule(async_task(Arc::clone(&log), "async, now"));
    tasks.schedule(move || sync_task(&l1, "sync, now"));
    tasks
        .after_route()
        .schedule(async_task(log, "async, after the handler"));
    tasks
        .after_response()
        .schedule(move || sync_task(&l2, "sync, after the response"));
    Json(json!({"status": "ok"}))
}

/// "Thread Pool Overhead": 20 sync tasks, yet (with `max_blocking(4)`) never
/// more than 4 threads busy at once; the rest wait without taking a thread.
async fn batch(tasks: Tasks, State(log): State<Arc<Log>>) -> Json<Value> {
    for _ in 0..20 {
        let log = Arc::clone(&log);
        tasks.schedule(move || {
            let now = log.running.fetch_add(1, Ordering::SeqCst) + 1;
            log.peak.fetch_max(now, Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(20)); // stands for blocking work
            log.running.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Json(json!({"status": "queued"}))
}

fn main() -> Result<(), BoxError> {
    // One runtime thread ("main") serves, sends the requests and runs async
    // tasks; sync tasks run on the blocking pool, named "blocking-pool" here.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("blocking-pool")
        .build()?
        .block_on(run())
}

async fn run() -> Result<(), BoxError> {
    // Bound the blocking pool's use: the Python guide warns that 1000 sync
    // tasks mean 1000 threads; here the excess queues instead.
    let background = Background::builder().max_blocking(4).build();
    let log = Arc::new(Log::default());
    let app = Router::new()
        .route("/tasks", post(schedule_tasks))
        .route("/mixed", post(mixed_tasks))
        .route("/batch", post(batch))
        .with_state(Arc::clone(&log))
        .layer(background.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(axum::serve(listener, app).into_future());
    let client = reqwest::Client::new();
    println!(
        "(thread \"main\" is the runtime's; \"blocking-pool\" threads are tokio's blocking pool)"
    );

    for (title, path) in [
        ("The basics: an async and a sync task", "/tasks"),
        ("Mixing sync and async, in every phase", "/mixed"),
    ] {
        println!("== {title} ==");
        log.runs.lock().unwrap().clear();
        *log.t0.lock().unwrap() = Some(Instant::now());
        let response = client.post(format!("{base}{path}")).send().await?;
        let answered = log.t0.lock().unwrap().expect("set").elapsed();
        let (status, body) = (response.status(), response.text().await?);
        println!("client: POST {path} -> {status} {body}");
        // Resolves when every task has ended: what to await instead of sleeping.
        background.wait_idle().await;
        let mut runs = log.runs.lock().unwrap().clone();
        runs.sort_by_key(|run| run.0); // schedule order, whatever order they ended in
        for (id, what, _, _) in &runs {
            println!("  task {id}: {what}");
        }
        // Each task sleeps 200 ms: had any waited for another, or had the
        // response waited for them, these would not hold.
        let first_end = runs.iter().map(|run| run.3).min().unwrap_or(0);
        let last_start = runs.iter().map(|run| run.2).max().unwrap_or(0);
        let ok = last_start < first_end && answered.as_millis() < first_end;
        println!("  tasks overlapped, and the response did not wait for them: {ok}");
        println!("[timing] response after {} ms", answered.as_millis());
        for (id, _, from, to) in &runs {
            println!("[timing]   task {id} ran from {from} ms to {to} ms");
        }
    }

    println!("== Thread pool overhead: 20 sync tasks, max_blocking(4) ==");
    let completed_before = background.stats().completed;
    let response = client.post(format!("{base}/batch")).send().await?;
    println!(
        "client: POST /batch -> {} {}",
        response.status(),
        response.text().await?
    );
    background.wait_idle().await;
    let completed = background.stats().completed - completed_before;
    let peak = log.peak.load(Ordering::SeqCst);
    assert!(peak <= 4, "max_blocking(4) was exceeded: {peak} at once");
    println!("{completed} tasks completed, never more than 4 at once");
    println!("[timing] peak concurrency observed: {peak}");
    Ok(())
}
