//! Durable tasks (feature `durable`): jobs kept in a SQLite file, so that
//! they survive a crash or a restart.
//!
//! `cargo run --features durable --example durable` runs a scripted demo and
//! exits on its own:
//!
//! 1. an axum app whose `POST /orders` stores a `SendInvoice` job before it
//!    answers, and an `ExportToLedger` job once the response has been sent;
//!    the workers of the same process run both;
//! 2. a crash between scheduling and running: a process that only schedules
//!    (`.without_workers()`) stores a job and goes down before it runs;
//! 3. the restart: a process with workers on the same file runs that job,
//!    and a graceful shutdown lets it finish.
//!
//! [`durable_worker`](durable_worker.rs) is the Postgres version, with the
//! web and the workers in separate processes.

use std::sync::LazyLock;
use std::time::Duration;

use axum::routing::post;
use axum::{Json, Router};
use axum_background::durable::{DurableError, DurableStore, DurableTask};
use axum_background::{Background, BackgroundTask, BlockingTask, BoxError, TaskInfo, Tasks, mode};
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, watch};

/// Sends an order's invoice: async, on the runtime.
#[derive(Serialize, Deserialize)]
struct SendInvoice {
    order: u64,
    email: String,
}

impl BackgroundTask for SendInvoice {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        // Delivery is at least once: a real mailer would be given the order
        // id as its idempotency key, so that a second run sends nothing twice.
        INVOICES_STARTED.send_modify(|n| *n += 1);
        tokio::time::sleep(Duration::from_millis(300)).await; // the mail server
        let Self { order, email } = self;
        println!("  task: invoice for order {order} sent to {email}");
        INVOICES_SENT.send_modify(|n| *n += 1);
        Ok(())
    }
}

impl DurableTask for SendInvoice {
    const NAME: &'static str = "send_invoice"; // stored with each job: keep it stable
}

/// Adds an order to the ledger: sync, on the blocking pool.
#[derive(Serialize, Deserialize)]
struct ExportToLedger {
    order: u64,
}

impl BlockingTask for ExportToLedger {
    fn run(self) -> Result<(), BoxError> {
        // Idempotent as well: an upsert keyed on the order id.
        println!("  task: order {} added to the ledger", self.order);
        LEDGER_EXPORTS.send_modify(|n| *n += 1);
        Ok(())
    }
}

impl DurableTask for ExportToLedger {
    const NAME: &'static str = "export_to_ledger";
}

// How many times the tasks got this far: what the demo waits on, instead of
// sleeping. An application has no need of these.
static INVOICES_STARTED: LazyLock<watch::Sender<usize>> = LazyLock::new(|| watch::Sender::new(0));
static INVOICES_SENT: LazyLock<watch::Sender<usize>> = LazyLock::new(|| watch::Sender::new(0));
static LEDGER_EXPORTS: LazyLock<watch::Sender<usize>> = LazyLock::new(|| watch::Sender::new(0));

/// Waits (up to 10 s) until `counter` reaches `n`.
async fn reach(counter: &watch::Sender<usize>, n: usize) -> Result<(), BoxError> {
    let mut counts = counter.subscribe();
    let reached = counts.wait_for(|&count| count >= n);
    tokio::time::timeout(Duration::from_secs(10), reached)
        .await
        .map_err(|_| "the jobs did not run within 10 s")??;
    Ok(())
}

#[derive(Deserialize)]
struct Order {
    id: u64,
    email: String,
}

async fn create_order(tasks: Tasks, Json(order): Json<Order>) -> Result<String, DurableError> {
    let Order { id, email } = order;
    // Immediate: the job is in the store when `schedule` returns, before the
    // client hears "accepted". From here on no crash can lose the invoice.
    // A store error answers 500 (`DurableError` is a response).
    let invoice = SendInvoice { order: id, email };
    let job = tasks.durable().schedule(invoice).await?;
    // After the response: the write costs the client nothing, but a crash
    // before the response has been sent loses it.
    let export = ExportToLedger { order: id };
    tasks.durable().after_response().schedule(export).await?;
    Ok(format!("order {id} accepted, invoice job {job}"))
}

/// Every process that schedules or runs these jobs registers the same types.
fn background(store: DurableStore) -> Background {
    Background::builder()
        .durable(store)
        .register::<SendInvoice>()
        .register::<ExportToLedger>()
        .build()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Warnings and errors only: the story is on stdout.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    let path = std::env::temp_dir().join("axum-background-durable-example.db");
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file); // an earlier run's store, if any
    }
    println!("store: {}", path.display());

    println!("\n1. a web app, with workers in the same process");
    let web = background(DurableStore::sqlite(&path).await?);
    let app = Router::new()
        .route("/orders", post(create_order))
        .layer(web.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/orders", listener.local_addr()?);
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stopped = async { stopped.await.unwrap_or_default() };
        axum::serve(listener, app)
            .with_graceful_shutdown(stopped)
            .await
    });
    let client = reqwest::Client::new();
    for (id, email) in [(1, "ada@example.com"), (2, "alan@example.com")] {
        let order = serde_json::json!({ "id": id, "email": email });
        let response = client.post(&url).json(&order).send().await?;
        println!(
            "client: POST /orders -> {} {:?}",
            response.status(),
            response.text().await?
        );
    }
    reach(&INVOICES_SENT, 2).await?;
    reach(&LEDGER_EXPORTS, 2).await?;
    let _ = stop.send(());
    server.await??;
    web.wait_idle().await; // the jobs have ended: the counters are final
    // Jobs run as ordinary tasks, named after `DurableTask::NAME`: counted by
    // `stats()`, listed by `in_flight()`. The after-response writes count too.
    let completed = web.stats().completed;
    println!("web: {completed} tasks completed, 4 of them jobs");
    web.shutdown(Duration::from_secs(5)).await;
    drop(web);

    println!("\n2. a crash between scheduling and running");
    // This process only schedules: its jobs wait in the store for a worker.
    let scheduler = background(DurableStore::sqlite(&path).await?.without_workers());
    let email = "grace@example.com".to_owned();
    let invoice = SendInvoice { order: 3, email };
    let job = scheduler.durable().schedule(invoice).await?;
    println!("scheduler: invoice for order 3 stored as job {job}");
    drop(scheduler); // down, with no shutdown
    println!("scheduler: gone before any worker ran the job");

    println!("\n3. the restart: a process with workers, on the same file");
    let worker = background(DurableStore::sqlite(&path).await?);
    reach(&INVOICES_STARTED, 3).await?;
    println!(
        "worker: took the stored job; running {:?}",
        names(&worker.in_flight())
    );
    // A deploy stops it now. The workers take no new jobs; a running job is
    // shielded, so it finishes (within the grace period) and is marked done;
    // jobs not yet taken would stay in the store for the next start.
    let report = worker.shutdown(Duration::from_secs(5)).await;
    println!(
        "worker: shut down; finished {:?}, cancelled {:?}, overdue {:?}",
        names(report.finished.iter().map(|entry| &entry.info)),
        names(report.cancelled.iter().map(|entry| &entry.info)),
        names(report.overdue.iter().map(|entry| &entry.info))
    );
    println!(
        "\n{} invoices sent and {} orders added to the ledger: each job ran once",
        *INVOICES_SENT.borrow(),
        *LEDGER_EXPORTS.borrow()
    );
    Ok(())
}

/// `["send_invoice #7"]`: the tasks' names and ids.
fn names<'a>(tasks: impl IntoIterator<Item = &'a TaskInfo>) -> Vec<String> {
    tasks
        .into_iter()
        .map(|t| format!("{} #{}", t.name, t.id))
        .collect()
}
