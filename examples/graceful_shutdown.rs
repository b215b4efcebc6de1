//! Graceful shutdown: serve → signal → drain requests → `background.shutdown(grace)` → report.
//!
//! `cargo run --example graceful_shutdown` runs a scripted demo and exits on
//! its own: it sends itself a few requests, then triggers the shutdown itself
//! (Ctrl-C and SIGTERM would do the same).
//!
//! `cargo run --example graceful_shutdown -- --serve` serves until Ctrl-C or
//! SIGTERM instead; try `curl -X POST http://127.0.0.1:PORT/checkout/7` and
//! press Ctrl-C within 300 ms to see the payment finish during shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum_background::{Background, BoxError, ShutdownEntry, TaskInfo, Tasks, shutdown_signal};
use tokio::sync::{Notify, oneshot};

/// How long shielded tasks may still run once shutdown begins.
const GRACE: Duration = Duration::from_secs(2);

/// Charges a card: must not be cut off by a deploy, so it is shielded.
async fn charge(order: u32) -> Result<(), BoxError> {
    tokio::time::sleep(Duration::from_millis(300)).await; // the payment provider's latency
    tracing::info!(order, "payment captured");
    Ok(())
}

/// Rebuilds a search index: safe to drop and redo later, so it is not shielded.
async fn reindex() {
    tokio::time::sleep(Duration::from_secs(60)).await;
}

/// Exports a report: shielded, but slower than the grace period allows.
async fn export() {
    tokio::time::sleep(Duration::from_secs(10)).await;
}

async fn checkout(
    tasks: Tasks,
    State(in_handler): State<Arc<Notify>>,
    Path(order): Path<u32>,
) -> String {
    tasks
        .task()
        .name("payment")
        .shield(true)
        .build()
        .schedule(charge(order));
    in_handler.notify_one(); // (demo only) says a checkout is in progress
    tokio::time::sleep(Duration::from_millis(50)).await; // saving the order
    format!("order {order} accepted")
}

async fn start_reindex(tasks: Tasks) -> StatusCode {
    tasks.schedule(reindex()); // unshielded: cancelled at shutdown
    StatusCode::ACCEPTED
}

async fn start_export(tasks: Tasks) -> StatusCode {
    tasks
        .task()
        .name("export")
        .shield(true)
        .build()
        .schedule(export());
    StatusCode::ACCEPTED
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // The crate logs shutdown progress and every task that does not complete.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .without_time()
        .with_target(false)
        .init();
    let serve_only = std::env::args().skip(1).any(|arg| arg == "--serve");

    let background = Background::new();
    let in_handler = Arc::new(Notify::new());
    let app = Router::new()
        .route("/checkout/{order}", post(checkout))
        .route("/reindex", post(start_reindex))
        .route("/export", post(start_export))
        .with_state(Arc::clone(&in_handler))
        .layer(background.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;

    // Shut down on Ctrl-C or SIGTERM, or when the demo below says so.
    let (trigger, triggered) = oneshot::channel::<()>();
    let signal = async move {
        tokio::select! {
            () = shutdown_signal() => {}
            // A dropped sender (`--serve`) disables this branch.
            Ok(()) = triggered => {}
        }
    };
    // 1. Serve. After the signal, axum stops accepting and drains open requests.
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(signal)
            .await
    });

    if serve_only {
        drop(trigger);
        println!(
            "listening on http://{addr} (port {}); Ctrl-C to stop",
            addr.port()
        );
        println!("try: curl -X POST http://{addr}/checkout/7");
    } else {
        demo(&format!("http://{addr}"), &in_handler, trigger).await?;
    }

    // 2. Drain: returns once every open request has been answered.
    server.await??;
    println!("server: stopped; every open request was answered");

    // 3. Settle the background tasks: cancel unshielded ones, give shielded
    //    ones up to GRACE, then report.
    let names = |tasks: &[TaskInfo]| {
        let names: Vec<String> = tasks
            .iter()
            .map(|t| format!("{} #{}", t.name, t.id))
            .collect();
        format!("{} [{}]", names.len(), names.join(", "))
    };
    println!("background: in flight {}", names(&background.in_flight()));
    println!("background: shutdown with {} s grace", GRACE.as_secs());
    let started = Instant::now();
    let report = background.shutdown(GRACE).await;
    println!(
        "background: shutdown took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let entries = |list: &[ShutdownEntry]| {
        let names: Vec<String> = list
            .iter()
            .map(|entry| match &entry.outcome {
                Ok(()) => format!("{} #{}", entry.info.name, entry.info.id),
                Err(error) => format!("{} #{} ({})", entry.info.name, entry.info.id, error.kind()),
            })
            .collect();
        format!("{} [{}]", names.len(), names.join(", "))
    };
    println!("report: finished  {}", entries(&report.finished));
    println!("report: cancelled {}", entries(&report.cancelled));
    println!("report: overdue   {}", entries(&report.overdue));
    Ok(())
}

/// Sends the requests a real deploy would find in progress, then triggers
/// the shutdown while one checkout is still being answered.
async fn demo(
    base: &str,
    in_handler: &Notify,
    trigger: oneshot::Sender<()>,
) -> Result<(), BoxError> {
    let client = reqwest::Client::new();
    for path in ["/reindex", "/export", "/checkout/1"] {
        let response = client.post(format!("{base}{path}")).send().await?;
        println!("client: POST {path} -> {}", response.status());
    }
    in_handler.notified().await; // consume the notification from /checkout/1

    // A checkout still in the handler when the signal arrives: it is drained.
    let pending = tokio::spawn(client.post(format!("{base}/checkout/2")).send());
    in_handler.notified().await;
    println!("client: POST /checkout/2 is in the handler; triggering shutdown");
    let _ = trigger.send(());
    let response = pending.await??;
    let status = response.status();
    println!(
        "client: POST /checkout/2 -> {status} {:?} (answered during the drain)",
        response.text().await?
    );
    Ok(())
}
