//! A guided tour of axum-background: `cargo run --example tour`.
//!
//! Starts a real axum server on 127.0.0.1, sends itself requests with reqwest
//! and prints, step by step, when each kind of background task runs. The
//! `Notify` gates below only keep the printed lines in the same order on every
//! run; a real application needs none of them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum_background::{
    Background, BackgroundTask, BlockingTask, BoxError, ShutdownEntry, TaskConfig, TaskError,
    TaskInfo, Tasks, mode,
};
use tokio::sync::{Notify, oneshot};

/// Prints one numbered line of the tour.
macro_rules! say {
    ($($arg:tt)*) => {
        println!("[{}] {}", STEP.fetch_add(1, Ordering::Relaxed), format_args!($($arg)*))
    };
}

/// The number of the next line: the gates make the order, hence the numbers, fixed.
static STEP: AtomicUsize = AtomicUsize::new(1);

/// A named async task: it runs on the tokio runtime, so it must never block.
struct Welcome {
    user: String,
}

impl BackgroundTask for Welcome {
    type Mode = mode::Async;

    async fn run(self) -> Result<(), BoxError> {
        let user = self.user;
        say!("Welcome (async task): mailing {user} while the handler still runs");
        Ok(())
    }
}

/// A named blocking task: it runs on tokio's blocking pool, where blocking is fine.
struct Thumbnail {
    file: String,
}

impl BlockingTask<()> for Thumbnail {
    fn run(self) {
        std::thread::sleep(Duration::from_millis(50)); // stands for blocking image work
        let (thread, file) = (std::thread::current(), self.file);
        let thread = thread.name().unwrap_or("unnamed");
        say!("Thumbnail (sync task): resized {file} on thread {thread:?}, not \"main\"");
    }
}

/// One-shot gates that keep the output in order (a real app needs none).
#[derive(Default)]
struct Gates {
    after_route_printed: Notify,
    head_seen: Notify,
    body_read: Notify,
}

/// The three phases in one request.
async fn signup(tasks: Tasks, State(gates): State<Arc<Gates>>, Path(user): Path<String>) -> Body {
    say!("handler: scheduling Welcome (immediate)");
    let welcome = tasks.schedule(Welcome { user: user.clone() });
    // Every `schedule` returns a handle; awaited here only to keep the output in order.
    let outcome = welcome.outcome().await;
    say!("handler: Welcome ended with {outcome:?}");

    let g = Arc::clone(&gates);
    tasks.after_route().schedule(async move {
        say!("after-route task: the handler has returned; this started before the head was sent");
        g.after_route_printed.notify_one();
    });
    let g = Arc::clone(&gates);
    tasks.after_response().schedule(async move {
        g.body_read.notified().await; // (ordering only) let the client print first
        say!("after-response task: started once the last body frame was sent");
    });
    say!("handler: scheduled an after-route and an after-response task; returning a streamed body");

    // The body's one chunk waits until the client has the head, so the end of
    // the body (and so the after-response phase) comes after that.
    let chunk = async move {
        gates.head_seen.notified().await;
        Ok::<_, std::convert::Infallible>(format!("welcome, {user}"))
    };
    Body::from_stream(futures_util::stream::once(chunk))
}

/// A sync task: on the blocking pool, never on a runtime thread.
async fn thumbnail(tasks: Tasks, Path(file): Path<String>) -> StatusCode {
    tasks.schedule(Thumbnail { file });
    StatusCode::ACCEPTED
}

/// A failing closure (sync mode) with its own name and error handler.
async fn import(tasks: Tasks) -> StatusCode {
    tasks
        .task()
        .name("import")
        .on_error(|info: &TaskInfo, error: &TaskError| {
            let (id, name, path) = (
                info.id,
                info.name.clone(),
                info.path.as_deref().unwrap_or(""),
            );
            say!("import's own on_error: task {id} {name:?} (from {path}): {error}");
        })
        .build()
        .schedule(|| -> Result<(), BoxError> { Err("row 3: no month 13".into()) });
    StatusCode::ACCEPTED
}

/// An hour-long async task, still running when the server shuts down.
async fn nightly_digest() {
    tokio::time::sleep(Duration::from_secs(3600)).await;
}

async fn digest(tasks: Tasks) -> StatusCode {
    tasks.schedule(nightly_digest()); // named after the async fn: "nightly_digest"
    StatusCode::ACCEPTED
}

/// The default config's error handler: for tasks without their own.
fn report_to_ops(info: &TaskInfo, error: &TaskError) {
    let (id, name) = (info.id, info.name.clone());
    say!("default on_error: task {id} {name:?}: {error}");
}

fn main() -> Result<(), BoxError> {
    // The crate logs every task failure with `tracing`; show those logs (stderr).
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    // One runtime thread ("main") makes it plain that sync tasks run elsewhere:
    // tokio's blocking pool, whose threads are named "blocking-pool" here.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("blocking-pool")
        .build()?
        .block_on(tour())
}

async fn tour() -> Result<(), BoxError> {
    let config = TaskConfig::builder().on_error(report_to_ops).build();
    let background = Background::builder().default_config(config).build();
    let gates = Arc::new(Gates::default());
    let app = Router::new()
        .route("/signup/{user}", post(signup))
        .route("/thumbnail/{file}", post(thumbnail))
        .route("/import", post(import))
        .route("/digest", post(digest))
        .with_state(Arc::clone(&gates))
        .layer(background.layer());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let signal = async { stopped.await.unwrap_or(()) };
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .into_future(),
    );
    say!("server: listening on 127.0.0.1 (a port chosen by the OS)");
    let client = reqwest::Client::new();
    let post = |path: &str| client.post(format!("{base}{path}")).send();

    // 1. Immediate, after-route and after-response, with a streamed body.
    say!("client: POST /signup/ada");
    let response = post("/signup/ada").await?;
    gates.after_route_printed.notified().await; // (ordering only)
    let status = response.status();
    say!("client: head arrived: {status}; the body is still streaming");
    gates.head_seen.notify_one();
    let body = response.text().await?;
    say!("client: body complete: {body:?}");
    gates.body_read.notify_one();
    // What tests use instead of sleeping: resolves when no task is in flight.
    background.wait_idle().await;

    // 2. A sync task on the blocking pool.
    say!("client: POST /thumbnail/ada.png");
    let status = post("/thumbnail/ada.png").await?.status();
    background.wait_idle().await;
    say!("client: got {status}; wait_idle() returned: every task has ended");

    // 3. A failing task is logged, then reaches its error handler.
    say!("client: POST /import");
    let status = post("/import").await?.status();
    background.wait_idle().await;
    say!("client: got {status}; the failure was handled, the server is fine");

    // 4. Shutdown: stop taking requests, then settle the tasks still in flight.
    say!("client: POST /digest (schedules an hour-long task)");
    let status = post("/digest").await?.status();
    say!("client: got {status}; stopping the server");
    let _ = stop.send(());
    server.await??;
    say!("main: server stopped; background.shutdown(1 s) cancels unshielded tasks");
    let report = background.shutdown(Duration::from_secs(1)).await;
    let names =
        |list: &[ShutdownEntry]| list.iter().map(|e| e.info.name.clone()).collect::<Vec<_>>();
    let (done, cancelled) = (names(&report.finished), names(&report.cancelled));
    let overdue = names(&report.overdue);
    say!("shutdown report: finished {done:?}, cancelled {cancelled:?}, overdue {overdue:?}");
    Ok(())
}
