//! Durable tasks on Postgres, with the web and the workers in separate
//! processes (feature `durable-postgres`).
//!
//! The database is `AXUM_BACKGROUND_PG_URL`, or else `DATABASE_URL`
//! (`postgres://user:password@host:port/database`; `.ci/postgres.sh` starts
//! a throwaway one and prints its URL). The job tables (`river_job` and its
//! companions) are created on first use, in the connection's search path,
//! beside this example's own `example_orders`. Then, each in its own
//! terminal:
//!
//! ```sh
//! cargo run --features durable-postgres --example durable_worker -- web     # HTTP on $PORT (3000): only schedules
//! cargo run --features durable-postgres --example durable_worker -- worker  # runs jobs until Ctrl-C; start several
//! curl -X POST localhost:3000/orders -H 'content-type: application/json' -d '{"email": "ada@example.com"}'
//! ```
//!
//! `POST /orders` writes the order row and its invoice job in one
//! transaction: both are kept, or neither. Each invoice is sent by one of the
//! workers, whichever takes it first. Stop a worker while it sends one: that
//! invoice is sent before it exits. Kill one instead (`kill -9`): the
//! processes elect a leader, which puts the jobs the dead one held back on
//! the queue once their timeout (30 s for invoices here, 5 minutes unless
//! set) and a 5 s margin have passed, checked every 5 s (plus 12 s if the
//! dead process was the leader); another worker then runs them.
//!
//! `-- demo [N]` tries it all in one process: it commits N orders (default
//! 20) and their invoice jobs in one transaction, on a queue of its own, runs
//! workers until the queue is drained, checks that every job completed, and
//! exits.

use std::io::IsTerminal;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use axum_background::durable::{DurableError, DurableStore, DurableTask, JobState};
use axum_background::{
    Background, BackgroundTask, BlockingTask, BoxError, RetryPolicy, ShutdownEntry, ShutdownReport,
    TaskConfig, TaskError, TaskInfo, Tasks, mode, shutdown_signal,
};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tracing::Level;
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

/// Sends an order's invoice: async, on the runtime.
#[derive(Serialize, Deserialize)]
struct SendInvoice {
    order: i64,
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
        Ok(())
    }
}

impl DurableTask for SendInvoice {
    const NAME: &'static str = "send_invoice"; // stored with each job: keep it stable
}

/// Adds an order to the ledger: sync, on the blocking pool.
#[derive(Serialize, Deserialize)]
struct ExportToLedger {
    order: i64,
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

/// Every process on the database registers every type, with the same
/// settings: a worker rebuilds each job from its stored name and runs it with
/// these, and the leader (any of them) needs each type's timeout to put back
/// the jobs of a process that died.
fn background(store: DurableStore) -> Background {
    let invoices = TaskConfig::builder()
        .timeout(Duration::from_secs(30))
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

/// The example's own table, in the store's database: an order and its jobs
/// can then be written in one transaction. (Not `orders`, which the database
/// may already have.)
async fn create_orders_table(db: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS example_orders \
         (id bigserial PRIMARY KEY, email text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(db)
    .await
    .map(drop)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Worker starts and stops, rescues, and the shutdown's progress; sqlx's
    // notices ("relation already exists") only from warnings up.
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
             e.g. AXUM_BACKGROUND_PG_URL=postgres://postgres@127.0.0.1:5432/postgres \
             (`.ci/postgres.sh` starts a throwaway one and prints its URL)"
        );
        std::process::exit(2);
    };
    // Connects, and creates the job tables on first use. (The URL is not
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
    email: String,
}

async fn create_order(
    State(db): State<PgPool>,
    tasks: Tasks,
    Json(Order { email }): Json<Order>,
) -> Result<String, DurableError> {
    // The order and its invoice job commit together, or not at all (a 500
    // then: `DurableError::store` makes sqlx's errors answer as the store's).
    let mut tx = db.begin().await?;
    let order: i64 =
        sqlx::query_scalar("INSERT INTO example_orders (email) VALUES ($1) RETURNING id")
            .bind(&email)
            .fetch_one(&mut *tx)
            .await?;
    let invoice = SendInvoice { order, email };
    let job = tasks.durable().tx(&mut tx).schedule(invoice).await?;
    tx.commit().await?;
    // Written once the response has been sent, outside the transaction: it
    // costs the client nothing, but a crash before then loses it.
    let export = ExportToLedger { order };
    tasks.durable().after_response().schedule(export).await?;
    Ok(format!("order {order} accepted, invoice job {}\n", job.id))
}

/// Serves HTTP and only schedules: the `worker` processes run the jobs.
async fn web(store: DurableStore) -> Result<(), BoxError> {
    let db = store.postgres_pool().cloned().ok_or("a Postgres store")?;
    create_orders_table(&db).await?;
    let background = background(store.without_workers());
    let app = Router::new()
        .route("/orders", post(create_order))
        .with_state(db)
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
    // Start as many of these processes as you like: they share the queue.
    let background = background(store);
    println!(
        "worker {}: running jobs; Ctrl-C or SIGTERM to stop",
        std::process::id()
    );
    shutdown_signal().await;
    println!("worker: stopping; jobs already taken may finish (30 s)");
    // Jobs not taken yet stay in the store for the other workers; jobs cut
    // off at the deadline go back without spending an attempt.
    let report = background.shutdown(Duration::from_secs(30)).await;
    print_report("worker", &report);
    Ok(())
}

/// Commits `count` orders and their invoice jobs, runs workers until the
/// queue is drained, checks that every job completed, exits.
async fn demo(store: DurableStore, count: u64) -> Result<(), BoxError> {
    let db = store.postgres_pool().cloned().ok_or("a Postgres store")?;
    create_orders_table(&db).await?;
    // A queue of its own, so that running `worker` processes leave these
    // jobs to this one.
    let background = background(store.queue("axum-background-demo"));
    let started = Instant::now();
    let mut tx = db.begin().await?;
    let mut invoices = Vec::new();
    for n in 1..=count {
        let email = format!("customer{n}@example.com");
        let order: i64 =
            sqlx::query_scalar("INSERT INTO example_orders (email) VALUES ($1) RETURNING id")
                .bind(&email)
                .fetch_one(&mut *tx)
                .await?;
        invoices.push(SendInvoice { order, email });
    }
    let jobs = background
        .durable()
        .tx(&mut tx)
        .schedule_many(invoices)
        .await?;
    tx.commit().await?;
    println!(
        "demo: {count} orders and their invoice jobs committed in {:.0?}",
        started.elapsed()
    );
    // Jobs an interrupted run left on this queue are run, and waited for, too.
    tokio::time::timeout(Duration::from_secs(60), background.durable().wait_drained())
        .await
        .map_err(|_| "demo: the queue was not drained within 60 s")??;
    let mut completed = 0;
    for job in &jobs {
        if background.durable().job(job.id).await?.state == JobState::Completed {
            completed += 1;
        }
    }
    println!(
        "demo: queue drained in {:.0?}; {completed} of {count} invoice jobs completed",
        started.elapsed()
    );
    let report = background.shutdown(Duration::from_secs(30)).await;
    print_report("demo", &report);
    if completed != jobs.len() {
        return Err("demo: not every invoice job completed".into());
    }
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
