//! Error handlers, sync and async: `cargo run --example errors`.
//!
//! The guide's "Error Handling: Sync vs Async": an error handler may be sync
//! or async whatever the task's mode, so all four pairs work. Beyond that:
//! the default handler every task without its own falls back to (set with
//! `Background::builder().default_config(..)`), an `ErrorHandler` plugin
//! type, a panicking task, a timeout, and a handler that itself panics. None
//! of them takes the server down: its last request is answered as usual.
//!
//! Each failure is also logged with `tracing` (on stderr, with the panic
//! messages); stdout shows only the handler calls and is the same every run.

use std::num::ParseIntError;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum_background::handler::{IntoErrorHandler, SharedErrorHandler};
use axum_background::{
    Background, BlockingTask, BoxError, ErrorHandler, TaskConfig, TaskError, TaskInfo, Tasks,
};

/// An async task that fails.
async fn charge_card(order: u32) -> Result<(), BoxError> {
    tokio::time::sleep(Duration::from_millis(5)).await; // the payment provider's latency
    Err(format!("card declined for order {order}").into())
}

/// A sync task that fails: a type with a plain `fn run`, on the blocking pool.
struct ImportCsv {
    row: &'static str,
}

impl BlockingTask<Result<(), ParseIntError>> for ImportCsv {
    fn run(self) -> Result<(), ParseIntError> {
        let total: u32 = self
            .row
            .split(',')
            .map(str::parse::<u32>)
            .sum::<Result<_, _>>()?;
        println!("imported a row totalling {total}");
        Ok(())
    }
}

/// An async task that panics.
async fn settle_balance() {
    let balance = -5;
    assert!(balance >= 0, "negative balance: {balance}");
}

/// An async task slower than its timeout.
async fn nightly_report() {
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// What a handler knows: the task, where it came from, and why it failed.
fn describe(info: &TaskInfo, error: &TaskError) -> String {
    let (name, mode) = (info.name.clone(), info.mode);
    let path = info.path.as_deref().unwrap_or("-");
    format!(
        "{name} ({mode} task, from {path}): {} / {error}",
        error.kind()
    )
}

/// A sync handler: called in place, right after the failure is logged.
fn log_sync(info: &TaskInfo, error: &TaskError) {
    println!("  sync handler:    {}", describe(info, error));
}

/// An async handler: may await (an alerting API, a database write).
async fn alert_async(info: TaskInfo, error: TaskError) {
    tokio::task::yield_now().await; // stands for an async call
    println!("  async handler:   {}", describe(&info, &error));
}

/// The default config's handler: for every task that has none of its own.
fn report_to_ops(info: &TaskInfo, error: &TaskError) {
    println!("  default handler: {}", describe(info, error));
}

/// A plugin: a type with state, shared by every task that uses it.
struct Pager {
    channel: &'static str,
    pages: AtomicUsize,
}

impl ErrorHandler for Pager {
    async fn handle(&self, info: &TaskInfo, error: &TaskError) {
        let page = self.pages.fetch_add(1, Ordering::Relaxed) + 1;
        let channel = self.channel;
        println!(
            "  Pager plugin:    page #{page} to {channel}: {}",
            describe(info, error)
        );
    }
}

/// One case per path: which task fails, and which handler hears of it.
async fn fail(
    tasks: Tasks,
    State(pager): State<SharedErrorHandler>,
    Path(case): Path<String>,
) -> StatusCode {
    let task = tasks.task(); // per-task settings; they override the default config
    match case.as_str() {
        "async-task-async-handler" => task.on_error(alert_async).build().schedule(charge_card(1)),
        "async-task-sync-handler" => task.on_error(log_sync).build().schedule(charge_card(2)),
        "sync-task-async-handler" => task
            .on_error(alert_async)
            .build()
            .schedule(ImportCsv { row: "1,2,x" }),
        "sync-task-sync-handler" => task
            .on_error(log_sync)
            .build()
            .schedule(ImportCsv { row: "4,-5" }),
        "no-handler-of-its-own" => tasks.schedule(charge_card(5)),
        "plugin-handler" => task.on_error(pager).build().schedule(ImportCsv { row: "" }),
        "task-panics" => tasks.schedule(settle_balance()),
        "task-times-out" => {
            let task = task.timeout(Duration::from_millis(50)).on_error(pager);
            task.build().schedule(nightly_report())
        }
        "handler-panics" => {
            let broken = |info: &TaskInfo, _: &TaskError| {
                println!("  broken handler:  called for {}, now panicking", info.name);
                panic!("the handler itself is broken")
            };
            task.on_error(broken).build().schedule(charge_card(9))
        }
        _ => return StatusCode::NOT_FOUND,
    };
    StatusCode::ACCEPTED
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    // The default config: its handler is used by tasks that set none.
    let defaults = TaskConfig::builder().on_error(report_to_ops).build();
    let background = Background::builder().default_config(defaults).build();
    let pager = Pager {
        channel: "#payments-oncall",
        pages: AtomicUsize::new(0),
    }
    .into_shared();
    let app = Router::new()
        .route("/fail/{case}", post(fail))
        .route("/health", get(|| async { "ok" }))
        .with_state(pager)
        .layer(background.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(axum::serve(listener, app).into_future());
    let client = reqwest::Client::new();

    let cases = [
        "async-task-async-handler",
        "async-task-sync-handler",
        "sync-task-async-handler",
        "sync-task-sync-handler",
        "no-handler-of-its-own",
        "plugin-handler",
        "task-panics",
        "task-times-out",
        "handler-panics",
    ];
    for case in cases {
        println!("client: POST /fail/{case}");
        let response = client.post(format!("{base}/fail/{case}")).send().await?;
        response.error_for_status()?; // 202: the handler answered without waiting
        background.wait_idle().await; // the task has failed and its handler has returned
    }

    let status = client.get(format!("{base}/health")).send().await?.status();
    println!(
        "client: GET /health -> {status} (a broken task or handler never takes the server down)"
    );
    let stats = background.stats();
    println!(
        "stats: scheduled {}, failed {}, panicked {}, timed out {}",
        stats.scheduled, stats.failed, stats.panicked, stats.timed_out
    );
    Ok(())
}
