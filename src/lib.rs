//! Per-request background tasks for axum, with precise timing control.
//!
//! ```
//! use std::path::PathBuf;
//! use std::time::Duration;
//!
//! use axum::{Router, routing::post, http::StatusCode};
//! use axum_background::{mode, shutdown_signal, Background, BackgroundTask, BoxError, Tasks};
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
//! # let shutdown_signal = || async {}; // the doctest stops at once
//! # let serve = async move {
//! axum::serve(listener, app)
//!     .with_graceful_shutdown(shutdown_signal()) // Ctrl-C or SIGTERM
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
//! A task is scheduled from a handler through the [`Tasks`] extractor, or from
//! anywhere through [`Background`]. It starts at a chosen point of its request's
//! life, runs on the runtime or the blocking pool as its type says, and ends
//! exactly once: its outcome is logged, counted, passed to its error handler if
//! it failed, and visible through its [`TaskHandle`]. At shutdown, shielded tasks
//! may finish and the rest are cancelled; the report lists every one. Nothing
//! scheduled is dropped on the floor.
//!
//! The guide below is organised by what you want to do:
//!
//! - [Scheduling a task](#scheduling-a-task): the extractor, what can be scheduled,
//!   the handle, task options.
//! - [Choosing a phase](#choosing-a-phase): now, after the handler, after the response.
//! - [Choosing a mode](#choosing-a-mode): async on the runtime, sync on the blocking pool.
//! - [Handling errors](#handling-errors): error handlers, retries, timeouts, panics.
//! - [Limits](#limits): blocking threads, tasks in flight, flows, unique tasks.
//! - [Time](#time): delayed and periodic tasks.
//! - [Shutdown](#shutdown): shielding, the report, hooks.
//! - [Testing](#testing): waiting for tasks, the held-body trap, outcomes, paused time.
//! - [Operating](#operating): what is in flight, cancelling, the admin router,
//!   tracing, metrics.
//! - [Durable tasks](#durable-tasks): tasks that survive a crash.
//! - [Recipes](#recipes) and [Best practices](#best-practices).
//!
#![doc = include_str!("docs/guide.md")]
//!
//! # Feature flags
//!
//! | Name | Description | Default? |
//! |---|---|---|
//! | `metrics` | task counters, gauges and histograms through the `metrics` facade (see [Metrics](#metrics)) | no |
//! | `admin` | `Background::admin_router()` and the `admin` module: JSON endpoints and a live HTML page of the tasks in flight and the counters, with a cancel button per task | no |
//! | `cron` | `periodic::Periodic::cron`: periodic tasks on a cron schedule, in any time zone ([cron](https://docs.rs/cron), [chrono-tz](https://docs.rs/chrono-tz)) | no |
//! | `durable-sqlite` | the `durable` module with a SQLite store: `tasks.durable().schedule(..)` writes a task to a store (in the caller's transaction if asked), run at least once by workers, surviving a crash; on [River](https://riverqueue.com)'s Rust client, [riverqueue](https://docs.rs/riverqueue) (MPL-2.0). Needs Rust 1.95 or later | no |
//! | `durable-postgres` | the same with a Postgres store, shared by several processes (no SQLite compiled without `durable-sqlite`) | no |
//! | `durable` | both durable backends | no |
//! | `opentelemetry` | with a durable backend: a durable job carries the W3C trace context of the span that scheduled it, and its task runs in that trace, in whichever process (the `durable` module's "Tracing"; [tracing-opentelemetry](https://docs.rs/tracing-opentelemetry) 0.34) | no |
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "admin")]
#[cfg_attr(docsrs, doc(cfg(feature = "admin")))]
pub mod admin;
mod background;
mod blocking;
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
mod failures;
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
mod state;
pub mod task;
pub mod testing;
mod unique;

pub use background::{Background, BackgroundBuilder};
pub use cancel::CancelOutcome;
pub use config::TaskConfig;
pub use context::TaskContext;
pub use error::{RejectReason, TaskError};
pub use extractor::{MissingBackgroundLayer, Tasks};
pub use failures::RecentFailure;
pub use flow::FlowLimit;
pub use handle::TaskHandle;
pub use handler::ErrorHandler;
pub use info::{TaskId, TaskInfo};
pub use limits::{OverflowPolicy, RetryPolicy};
pub use phase::Phase;
pub use registry::Stats;
pub use shutdown::{ShutdownEntry, ShutdownHook, ShutdownReport, shutdown_signal};
pub use state::MissingState;
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
