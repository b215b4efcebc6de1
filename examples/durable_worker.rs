//! Durable tasks on Postgres, with the web and the workers in separate
//! processes (feature `durable`).
//!
//! The database is `AXUM_BACKGROUND_PG_URL`, or else `DATABASE_URL`
//! (`postgres://user:password@host:port/database`); the tables are created
//! on first use, in the `apalis` schema. Then, each in its own terminal:
//!
//! ```sh
//! cargo run --features durable --example durable_worker -- web     # HTTP on $PORT (3000): only schedules
//! cargo run --features durable --example durable_worker -- worker  # runs jobs until Ctrl-C; start several
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' \
//!      -d '{"id": 1, "email": "ada@example.com"}'
//! ```
//!
//! Each invoice is sent by one of the workers, whichever takes it first.
//! Stop a worker while it sends one: that invoice is sent before it exits.
//! Kill one instead (`kill -9`): another worker takes the jobs it held once
//! its heartbeat has lapsed, 10 s × 3 missed beats by default.
//!
//! `-- demo [N]` tries it all in one process: it stores N invoices (default
//! 20) on a queue of its own, runs workers until every one has been sent,
//! and exits.

use std::collections::HashSet;
use std::io::IsTerminal;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use axum::routing::post;
use axum::{Json, Router};
use axum_background::durable::{DurableError, DurableStore, DurableTask};
use axum_background::{
    Background, BackgroundTask, BlockingTask, BoxError, RetryPolicy, ShutdownEntry, ShutdownReport,
    TaskConfig, TaskError, TaskInfo, Tasks, mode, shutdown_signal,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

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
        tokio::time::sleep(Duration::from_millis(200)).await; // the mail server
        let (pid, order, email) = (std::process::id(), self.order, &self.email);
        println!("[pid {pid}] invoice for order {order} sent to {email}");
        SENT.send_modify(|sent| {
            sent.insert(self.order);
        });
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
        let (pid, order) = (std::process::id(), self.order);
        println!("[pid {pid}] order {order} added to the ledger");
        Ok(())
    }
}

impl DurableTask for ExportToLedger {
    const NAME: &'static str = "export_to_ledger";
}

/// The orders whose invoice this process has sent: what `demo` waits on.
static SENT: LazyLock<watch::Sender<HashSet<u64>>> =
    LazyLock::new(|| watch::Sender::new(HashSet::new()));

/// Every role registers the same types, with the same settings: a worker
/// rebuilds each job from its stored name and runs it with these.
fn background(store: DurableStore) -> Background {
    let invoices = TaskConfig::builder()
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_secs(1)))
        .on_error(|info: &TaskInfo, error: &TaskError| {
            eprintln!(
                "[pid {}] {} gave up: {error}",
                std::process::id(),
                info.name
            );
        })
        .build();
    Background::builder()
        .durable(store)
        .register_with::<SendInvoice>(invoices)
        .register::<ExportToLedger>()
        .build()
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Worker starts and stops, and the shutdown's progress; sqlx's notices
    // ("schema already exists") only from warnings up.
    let filter = Targets::new()
        .with_default(Level::INFO)
        .with_target("sqlx", Level::WARN);
    let logs = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal());
    tracing_subscriber::registry()
        .with(logs)
        .with(filter)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let role = match args[..] {
        ["web"] => Role::Web,
        ["worker"] => Role::Worker,
        ["demo"] => Role::Demo(20),
        ["demo", n] => Role::Demo(n.parse().unwrap_or_else(|_| usage())),
        _ => usage(),
    };
    let Some(url) = ["AXUM_BACKGROUND_PG_URL", "DATABASE_URL"]
        .into_iter()
        .find_map(|name| std::env::var(name).ok().filter(|url| !url.is_empty()))
    else {
        eprintln!(
            "durable_worker needs a Postgres database: set AXUM_BACKGROUND_PG_URL (or DATABASE_URL), \
             e.g. AXUM_BACKGROUND_PG_URL=postgres://postgres@127.0.0.1:5432/postgres"
        );
        std::process::exit(2);
    };
    // Connects, and creates the tables on first use. (The URL is not
    // repeated in the error: it may hold a password.)
    let store = DurableStore::postgres(&url)
        .await
        .map_err(|error| format!("cannot open the Postgres store: {error}"))?;
    match role {
        Role::Web => web(store).await,
        Role::Worker => worker(store).await,
        Role::Demo(count) => demo(store, count).await,
    }
}

enum Role {
    Web,
    Worker,
    Demo(u64),
}

fn usage() -> ! {
    eprintln!("usage: durable_worker web | worker | demo [N]");
    std::process::exit(2);
}

#[derive(Deserialize)]
struct Order {
    id: u64,
    email: String,
}

async fn create_order(tasks: Tasks, Json(order): Json<Order>) -> Result<String, DurableError> {
    let Order { id, email } = order;
    // In the store before the client hears "accepted" (a 500 if that failed).
    let invoice = SendInvoice { order: id, email };
    let job = tasks.durable().schedule(invoice).await?;
    // Written once the response has been sent.
    let export = ExportToLedger { order: id };
    tasks.durable().after_response().schedule(export).await?;
    Ok(format!("order {id} accepted, invoice job {job}\n"))
}

/// Serves HTTP and only schedules: the `worker` processes run the jobs.
async fn web(store: DurableStore) -> Result<(), BoxError> {
    let background = background(store.without_workers());
    let app = Router::new()
        .route("/orders", post(create_order))
        .layer(background.layer());
    let port: u16 = match std::env::var("PORT") {
        Ok(port) => port
            .parse()
            .map_err(|_| format!("PORT={port:?} is not a port"))?,
        Err(_) => 3000,
    };
    // Loopback only, for the demo; a container would bind 0.0.0.0.
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    println!(
        "web: listening on http://{}; Ctrl-C to stop",
        listener.local_addr()?
    );
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    // Jobs written after their response may still be on their way to the store.
    let report = background.shutdown(Duration::from_secs(30)).await;
    print_report("web", &report);
    Ok(())
}

/// Runs jobs until Ctrl-C or SIGTERM, then lets the running ones finish.
async fn worker(store: DurableStore) -> Result<(), BoxError> {
    // Each worker's name gets this process's id and a random suffix: start
    // as many of these processes as you like.
    let background = background(store.worker_name("invoices"));
    println!(
        "worker {}: running jobs; Ctrl-C or SIGTERM to stop",
        std::process::id()
    );
    shutdown_signal().await;
    println!("worker: stopping; jobs already taken may finish (30 s)");
    // Jobs not taken yet stay in the store for the other workers.
    let report = background.shutdown(Duration::from_secs(30)).await;
    print_report("worker", &report);
    Ok(())
}

/// Stores `count` invoices, runs workers until all have been sent, exits.
async fn demo(store: DurableStore, count: u64) -> Result<(), BoxError> {
    // A queue of its own, so that running `worker` processes leave these
    // jobs to this one.
    let background = background(store.queue("axum-background-demo"));
    // Numbered after this process, so that it waits for its own orders (jobs
    // an interrupted run left on the queue are run too, and not waited for).
    let first = u64::from(std::process::id()) * 1000;
    let orders: Vec<u64> = (first..first + count).collect();
    let started = Instant::now();
    for &order in &orders {
        let email = format!("customer{}@example.com", order - first + 1);
        background
            .durable()
            .schedule(SendInvoice { order, email })
            .await?;
    }
    println!("demo: {count} invoices stored in {:.0?}", started.elapsed());
    let mut sent = SENT.subscribe();
    let all_sent = sent.wait_for(|sent| orders.iter().all(|order| sent.contains(order)));
    tokio::time::timeout(Duration::from_secs(60), all_sent)
        .await
        .map_err(|_| "demo: not every invoice was sent within 60 s")??;
    println!("demo: all {count} sent in {:.0?}", started.elapsed());
    let report = background.shutdown(Duration::from_secs(30)).await;
    print_report("demo", &report);
    Ok(())
}

fn print_report(role: &str, report: &ShutdownReport) {
    if report.is_empty() {
        println!("{role}: shut down; nothing was in flight");
        return;
    }
    let names = |list: &[ShutdownEntry]| {
        list.iter()
            .map(|entry| entry.info.name.to_string())
            .collect::<Vec<_>>()
    };
    println!(
        "{role}: shut down; finished {:?}, cancelled {:?}, overdue {:?}",
        names(&report.finished),
        names(&report.cancelled),
        names(&report.overdue)
    );
}
