//! Per-request background tasks for axum, with precise timing control.
//!
//! ```
//! use std::path::PathBuf;
//! use std::time::Duration;
//!
//! use axum::{Router, routing::post, http::StatusCode};
//! use axum_background::{mode, Background, BackgroundTask, BoxError, Tasks};
//!
//! struct Welcome { email: String }
//!
//! impl BackgroundTask for Welcome {
//!     type Mode = mode::Async; // runs on the tokio runtime: never block here
//!     async fn run(self) -> Result<(), BoxError> {
//!         println!("welcome mail to {}", self.email); // an HTTP call
//!         Ok(())
//!     }
//! }
//!
//! struct Thumbnail { path: PathBuf }
//!
//! impl BackgroundTask for Thumbnail {
//!     type Mode = mode::Sync; // runs on the blocking pool: blocking calls are fine here
//!     async fn run(self) -> Result<(), BoxError> {
//!         println!("thumbnail of {}", self.path.display()); // image crate work
//!         Ok(())
//!     }
//! }
//!
//! async fn send_receipt(order: u64) {
//!     println!("receipt for order {order}");
//! }
//!
//! async fn register(tasks: Tasks) -> StatusCode {
//!     let order = 7;
//!     tasks.schedule(Welcome { email: "ada@example.com".into() });         // now
//!     tasks.schedule(|| println!("audit line"));                           // a closure: sync
//!     tasks.after_route().schedule(Thumbnail { path: "ada.png".into() }); // when the handler has returned
//!     tasks.after_response().schedule(async { println!("metrics") });     // once the body is sent
//!     tasks.task().name("receipt").shield(true).build()                   // may finish during shutdown
//!         .schedule(move || send_receipt(order));                         // a closure returning a future: async
//!     StatusCode::CREATED
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let background = Background::new();
//! let app = Router::new()
//!     .route("/register", post(register))
//!     .layer(background.layer());
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # let serve = async move {
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(async { /* ctrl-c */ })
//!     .await?;
//! # Ok::<(), BoxError>(()) };
//! # serve.await?;
//! let report = background.shutdown(Duration::from_secs(30)).await;
//! println!(
//!     "{} completed, {} cut short",
//!     report.completed().count(),
//!     report.cancelled.len() + report.overdue.len(),
//! );
//! # Ok(())
//! # }
//! ```
//!
//! # When each phase fires
//!
//! | phase | scheduled with | starts |
//! |---|---|---|
//! | [`Phase::Immediate`] | `tasks.schedule(t)` | before `schedule` returns, alongside the handler |
//! | [`Phase::AfterRoute`] | `tasks.after_route().schedule(t)` | when the handler has produced its response, before the head is sent |
//! | [`Phase::AfterResponse`] | `tasks.after_response().schedule(t)` | when the body's last frame has been polled, or the body is dropped (client gone) |
//!
//! `tasks.after_route()` and `tasks.after_response()` are the short spelling
//! of `tasks.task().phase(..).build()` (see [Task options](#task-options)).
//!
//! Every immediate task of a request starts before its after-route tasks, and
//! those before its after-response tasks; within a phase, in schedule order;
//! on any runtime, in both modes. An async task has started once its first
//! poll has returned, a sync task once its thread calls it: the next task of
//! the request waits for that. A task that must wait for a limit's slot
//! ([`max_blocking`](BackgroundBuilder::max_blocking),
//! [`max_in_flight`](BackgroundBuilder::max_in_flight)) lets the tasks behind
//! it start; the limit starts the tasks it holds back first come, first
//! served. Tasks scheduled once the response has been sent start at once.
//! A handler that returns an error response still has its tasks run; if the
//! handler's future is dropped (client gone, outer timeout), its pending tasks
//! start then. Nothing scheduled is dropped on the floor.
//!
//! # Sync and async
//!
//! A task's mode is part of its type, fixed at compile time:
//!
//! | what is scheduled | mode | runs on |
//! |---|---|---|
//! | a [`BackgroundTask`] with `type Mode = mode::Async` | [`mode::Async`] | the tokio runtime: never block in it |
//! | a future, or a closure returning one (`move \|\| send_email(to)`) | [`mode::Async`] | the tokio runtime |
//! | a [`BackgroundTask`] with `type Mode = mode::Sync` | [`mode::Sync`] | tokio's blocking pool: it may block, and still `.await` |
//! | a [`BlockingTask`] (a plain `fn run`: shorthand for a `mode::Sync` task) | [`mode::Sync`] | tokio's blocking pool |
//! | any other closure, `FnOnce() + Send + 'static` | [`mode::Sync`] | tokio's blocking pool |
//!
//! # Task options
//!
//! One builder sets a task's options: [`TaskConfig::builder()`](TaskConfig::builder)
//! for the default config (`Background::builder().default_config(..)`), and
//! [`tasks.task()`](Tasks::task), the same builder pre-filled with its
//! scheduler, for one task: `name`, `shield`, `on_error`, `phase`, `timeout`,
//! `retry`, then `.build()` and `.schedule(t)`. Per-task values override the
//! default config's field by field.
//!
//! ```
//! use std::time::Duration;
//! use axum_background::{Phase, RetryPolicy, Tasks};
//!
//! async fn charge(order: u64) -> Result<(), std::io::Error> {
//!     # let _ = order;
//!     Ok(())
//! }
//!
//! async fn checkout(tasks: Tasks) {
//!     let order = 42;
//!     tasks
//!         .task()
//!         .name("charge")
//!         .shield(true)
//!         .phase(Phase::AfterResponse)
//!         .timeout(Duration::from_secs(10))
//!         .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(100)))
//!         .build()
//!         .schedule(move || charge(order)); // a factory: each attempt calls it again
//! }
//! # let _: axum::routing::MethodRouter = axum::routing::post(checkout);
//! ```
//!
//! # Errors
//!
//! Every outcome other than success is logged with `tracing` and passed,
//! exactly once, to the task's error handler, or else the default config's.
//! `on_error` takes a sync closure `|info: &TaskInfo, error: &TaskError| ..`,
//! an `async fn` that borrows (`async fn h(info: &TaskInfo, error: &TaskError)`)
//! or owns (`async fn h(info: TaskInfo, error: TaskError)`), and an
//! [`ErrorHandler`] plugin type; see [`IntoErrorHandler`](handler::IntoErrorHandler).
//! A panic in a task or a handler never reaches the server.
//!
//! # Comparison with `TaskTracker`
//!
//! tokio-util's [`TaskTracker`](https://docs.rs/tokio-util/latest/tokio_util/task/task_tracker/struct.TaskTracker.html)
//! waits for the tasks it spawned; this crate adds what a web service needs around
//! that: tasks that start at a point of the request's life, a mode fixed by type,
//! names, error handlers, per-task cancellation with shielding, a deadline, and a
//! report of what became of each task. When none of that is needed, a `TaskTracker`
//! in the router's state is the smaller tool.
//!
#![doc = include_str!("docs/guide.md")]
//!
//! # Metrics
//!
//! With the `metrics` feature, tasks are measured through the
//! [`metrics`](https://docs.rs/metrics) facade; install any recorder (the
//! `metrics` example uses `metrics-exporter-prometheus`) to export them:
//!
//! | metric | kind | labels |
//! |---|---|---|
//! | `background_tasks_scheduled_total` | counter | `name`, `phase` |
//! | `background_tasks_ended_total` | counter | `name`, `phase`, `outcome` |
//! | `background_tasks_in_flight` | gauge | |
//! | `background_tasks_queued` | gauge | |
//! | `background_task_queue_wait_seconds` | histogram | `name`, `phase` |
//! | `background_task_run_seconds` | histogram | `name`, `phase`, `outcome` |
//!
//! `outcome` is `completed`, `failed`, `panicked`, `timed_out`, `cancelled` or
//! `rejected`. Task names become label values: keep them few (name tasks by
//! kind, not by user or id).
//!
//! # Feature flags
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `metrics` | task counters, gauges and histograms through the `metrics` facade (see [Metrics](#metrics)) | no |
//! | `admin` | `Background::admin_router()` and the `admin` module: JSON endpoints and a live HTML page of the tasks in flight and the counters, with a cancel button per task | no |
//! | `cron` | `periodic::Periodic::cron`: periodic tasks on a cron schedule, in any time zone ([cron](https://docs.rs/cron), [chrono-tz](https://docs.rs/chrono-tz)) | no |
//! | `durable-sqlite` | the `durable` module with a SQLite store: `tasks.durable().schedule(..)` writes a task to a store on [apalis](https://docs.rs/apalis), run at least once by workers, surviving a crash. Needs Rust 1.94 or later (sqlx 0.9) | no |
//! | `durable-postgres` | the same with a Postgres store, shared by several processes (no SQLite compiled without `durable-sqlite`) | no |
//! | `durable` | both durable backends | no |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod background;
mod cancel;
mod cell;
pub mod config;
mod context;
#[cfg(feature = "_durable")]
#[cfg_attr(
    docsrs,
    doc(cfg(any(feature = "durable-sqlite", feature = "durable-postgres")))
)]
pub mod durable;
mod end;
mod error;
mod extractor;
mod flow;
mod handle;
pub mod handler;
mod hook;
mod info;
mod inner;
pub mod layer;
mod limits;
mod metrics;
pub mod mode;
mod name;
mod options;
mod outcome;
pub mod periodic;
mod phase;
mod registry;
mod request;
mod run;
mod schedule;
pub mod shutdown;
pub mod task;
pub mod testing;
mod unique;

pub use background::{Background, BackgroundBuilder};
pub use cancel::CancelOutcome;
pub use config::TaskConfig;
pub use context::TaskContext;
pub use error::{RejectReason, TaskError};
pub use extractor::{MissingBackgroundLayer, Tasks};
pub use flow::FlowLimit;
pub use handle::TaskHandle;
pub use handler::ErrorHandler;
pub use info::{TaskId, TaskInfo};
pub use limits::{OverflowPolicy, RetryPolicy};
pub use phase::Phase;
pub use registry::Stats;
pub use shutdown::{ShutdownEntry, ShutdownHook, ShutdownReport, shutdown_signal};
pub use task::{BackgroundTask, BlockingTask};

/// The futures of this crate, named for what they wait on.
pub mod future {
    pub use crate::handle::{OutcomeFuture, StartedFuture};
    pub use crate::registry::WaitIdleFuture;
}

// The handles a service shares across threads and tasks.
const _: () = {
    const fn shared_across_threads<T: Send + Sync + 'static>() {}
    shared_across_threads::<Background>();
    shared_across_threads::<Tasks>();
    shared_across_threads::<TaskHandle>();
    shared_across_threads::<TaskConfig>();
};

/// The error type tasks may return: any error that is `Send + Sync`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
