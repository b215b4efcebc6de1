//! Shielded tasks at shutdown: `cargo run --example shielding`.
//!
//! A checkout schedules two tasks: the card payment, which must not be cut
//! off by a deploy, so it is shielded; and a refresh of recommendations,
//! which can be redone later, so it is not. The server is then stopped while
//! both are running: `Background::shutdown` cancels the refresh at once, lets
//! the payment finish within the grace period, and reports what became of
//! each. Lines starting with `[timing]` hold measured times.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use axum_background::{Background, BoxError, ShutdownEntry, TaskInfo, Tasks};
use serde_json::{Value, json};
use tokio::sync::oneshot;

/// How long shielded tasks may still run once shutdown begins.
const GRACE: Duration = Duration::from_secs(5);

/// What has been charged: proof that the payment ran to its end.
type Ledger = Arc<Mutex<Vec<String>>>;

/// Charges a card. The provider takes a second to answer: time enough for a
/// deploy to stop the server in the middle.
async fn charge(ledger: Ledger, order: u32, cents: u32) -> Result<(), BoxError> {
    tokio::time::sleep(Duration::from_secs(1)).await; // stands for the provider's latency
    let entry = format!("order {order}: charged {cents} cents");
    ledger.lock().unwrap().push(entry);
    Ok(())
}

/// Recomputes a user's recommendations: slow, and safe to lose.
async fn refresh_recommendations(order: u32) {
    tokio::time::sleep(Duration::from_secs(60)).await; // stands for the slow work
    println!("recommendations refreshed after order {order}"); // never printed: cancelled first
}

async fn checkout(
    tasks: Tasks,
    State(ledger): State<Ledger>,
    Path(order): Path<u32>,
) -> Json<Value> {
    tasks
        .task()
        .name("payment")
        .shield(true) // runs on through shutdown, up to the grace period
        .build()
        .schedule(charge(ledger, order, 1999));
    tasks
        .task()
        .name("recommendations") // not shielded (the default): cancelled at shutdown
        .build()
        .schedule(refresh_recommendations(order));
    Json(json!({"order": order, "status": "accepted"}))
}

/// `payment #1 (shielded), ...`
fn list<'a>(tasks: impl IntoIterator<Item = &'a TaskInfo>) -> String {
    let names: Vec<String> = tasks
        .into_iter()
        .map(|task| match task.shielded {
            true => format!("{} #{} (shielded)", task.name, task.id),
            false => format!("{} #{}", task.name, task.id),
        })
        .collect();
    format!("[{}]", names.join(", "))
}

/// The tasks of a list of the shutdown report.
fn entries(list: &[ShutdownEntry]) -> impl Iterator<Item = &TaskInfo> {
    list.iter().map(|entry| &entry.info)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let background = Background::new();
    let ledger = Ledger::default();
    let app = Router::new()
        .route("/checkout/{order}", post(checkout))
        .with_state(Arc::clone(&ledger))
        .layer(background.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(
        axum::serve(listener, app)
            .with_graceful_shutdown(async { stopped.await.unwrap_or(()) })
            .into_future(),
    );

    let response = reqwest::Client::new()
        .post(format!("{base}/checkout/42"))
        .send()
        .await?;
    let (status, body) = (response.status(), response.text().await?);
    println!("client: POST /checkout/42 -> {status} {body}");

    // A deploy stops the server (a real app waits for `axum_background::shutdown_signal()`).
    let _ = stop.send(());
    server.await??; // every open request has been answered
    println!("server: stopped taking requests");
    println!("background: in flight {}", list(&background.in_flight()));

    // Cancel what is not shielded, wait up to GRACE for the rest, report.
    let began = Instant::now();
    let report = background.shutdown(GRACE).await;
    let took = began.elapsed();
    println!("background: shutdown({} s grace) returned", GRACE.as_secs());
    println!("report: finished  {}", list(entries(&report.finished)));
    println!("report: cancelled {}", list(entries(&report.cancelled)));
    println!("report: overdue   {}", list(entries(&report.overdue)));
    for entry in ledger.lock().unwrap().iter() {
        println!("ledger: {entry}");
    }

    // Once shutdown has begun, nothing new starts: it is rejected, never lost silently.
    let late = background.schedule(async {});
    let outcome = late.outcome().await;
    println!("a task scheduled after shutdown: {}", outcome.unwrap_err());
    println!(
        "[timing] shutdown took {:.2} s: the payment's remaining time, not the grace period",
        took.as_secs_f64()
    );
    Ok(())
}
