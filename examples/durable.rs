//! Durable tasks on SQLite (feature `durable-sqlite`), in a scripted demo
//! that exits on its own (`cargo run --features durable-sqlite --example durable`):
//!
//! 1. a web app whose `POST /orders` writes the order and its `SendInvoice`
//!    job in one transaction: both are kept, or neither (a sold-out item rolls
//!    back the order and its job). The job is unique per order: a retried
//!    request gets the job already stored. This process only schedules
//!    (`.without_workers()`), so its jobs wait in the store;
//! 2. a crash, before any worker ran the job;
//! 3. the restart: a process with workers on the same file runs the job (the
//!    task reaches the mailer as state); a graceful shutdown lets it finish.
//!
//! [`durable_worker`](durable_worker.rs) is the Postgres version, with the
//! web and the workers in separate processes.

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use axum_background::durable::{DurableError, DurableStore, DurableTask, JobId, JobInfo, JobState};
use axum_background::{Background, BackgroundTask, BoxError, TaskContext, Tasks, mode};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sqlx::SqlitePool;

/// Sends an order's invoice.
#[derive(Serialize, Deserialize)]
struct SendInvoice {
    order: i64,
    email: String,
}

impl BackgroundTask for SendInvoice {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        // A job is rebuilt from its stored fields alone; the rest of the app
        // (a mail client, a pool) comes from its `Background`'s state.
        let mailer: Mailer = TaskContext::state()?;
        // Delivery is at least once: a real mail API would be given the order
        // id as its idempotency key, so that a second run sends nothing twice.
        tokio::time::sleep(Duration::from_millis(300)).await; // the mail server
        let (order, to, from) = (self.order, &self.email, mailer.from);
        println!("  task: invoice for order {order} sent to {to}, from {from}");
        Ok(())
    }
}

impl DurableTask for SendInvoice {
    const NAME: &'static str = "send_invoice"; // stored with each job: keep it stable
}

/// The app's mail client, given to the tasks as state.
#[derive(Clone)]
struct Mailer {
    from: &'static str,
}

/// Every process that schedules or runs these jobs registers the same types.
fn background(store: DurableStore) -> Background {
    Background::builder()
        .durable(store)
        .register::<SendInvoice>()
        .state(Mailer {
            from: "shop@example.com",
        })
        .build()
}

/// The app's own tables, in the store's file: one transaction covers an
/// order and its job.
const SCHEMA: &str = "
    CREATE TABLE orders (id INTEGER PRIMARY KEY, email TEXT NOT NULL, item TEXT NOT NULL);
    CREATE TABLE stock (item TEXT PRIMARY KEY, available INTEGER NOT NULL);
    INSERT INTO stock VALUES ('book', 5), ('lamp', 0);";

#[derive(Deserialize)]
struct Order {
    id: i64, // chosen by the client: a retried request names the same order
    email: String,
    item: String,
}

async fn place_order(
    State(db): State<SqlitePool>,
    tasks: Tasks,
    Json(Order { id, email, item }): Json<Order>,
) -> Result<(StatusCode, Json<Value>), DurableError> {
    // On SQLite a transaction that writes begins IMMEDIATE (or it may fail
    // with "database is locked"). sqlx errors become
    // `DurableError::Store`: a 500, as the store's own.
    let mut tx = db.begin_with("BEGIN IMMEDIATE").await?;
    let insert = "INSERT INTO orders (id, email, item) VALUES (?, ?, ?) ON CONFLICT DO NOTHING";
    let new = sqlx::query(insert)
        .bind(id)
        .bind(&email)
        .bind(&item)
        .execute(&mut *tx)
        .await?
        .rows_affected()
        == 1;
    // The invoice job, in the same transaction; unique per order, so that a
    // retried request gets the job already stored instead of a second one.
    let invoice = SendInvoice { order: id, email };
    let job = tasks
        .durable()
        .unique(format!("invoice-{id}"))
        .tx(&mut tx)
        .schedule(invoice)
        .await?;
    let receipt = |status| json!({ "order": id, "status": status, "invoice_job": job.id.as_i64() });
    if new {
        let reserve = "UPDATE stock SET available = available - 1 WHERE item = ? AND available > 0";
        let reserved = sqlx::query(reserve).bind(&item).execute(&mut *tx).await;
        if reserved?.rows_affected() == 0 {
            // Neither the order nor its job is kept.
            tx.rollback().await?;
            return Ok((StatusCode::CONFLICT, Json(receipt("sold out"))));
        }
    }
    // Workers see the job from here on.
    tx.commit().await?;
    if job.duplicate {
        Ok((StatusCode::OK, Json(receipt("already placed"))))
    } else {
        Ok((StatusCode::CREATED, Json(receipt("placed"))))
    }
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    // Warnings and errors only: the story is on stdout.
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    // A fresh file for each run, removed at the end.
    let path =
        std::env::temp_dir().join(format!("axum-background-durable-{}.db", std::process::id()));
    println!("store: {}", path.display());

    println!("\n1. a web app: each order and its invoice job in one transaction");
    let store = DurableStore::sqlite(&path).await?; // creates the file and the job tables
    let db = store.sqlite_pool().cloned().ok_or("a SQLite store")?;
    sqlx::raw_sql(SCHEMA).execute(&db).await?;
    // This process only schedules: its jobs wait in the store for a worker.
    let web = background(store.without_workers());
    let app = Router::new()
        .route("/orders", post(place_order))
        .with_state(db.clone())
        .layer(web.layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/orders", listener.local_addr()?);
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let order = json!({ "id": 1001, "email": "ada@example.com", "item": "book" });
    let job = post_order(&url, &order).await?;
    post_order(&url, &order).await?; // the client did not hear back, and retries
    let lamp = json!({ "id": 1002, "email": "alan@example.com", "item": "lamp" });
    let rolled_back = post_order(&url, &lamp).await?;
    print_job("web", &web.durable().job(job).await?);
    match web.durable().job(rolled_back).await {
        Err(DurableError::NotFound(id)) => println!("web: job {id} is not in the store"),
        other => return Err(format!("job {rolled_back} was rolled back, yet: {other:?}").into()),
    }

    println!("\n2. a crash, before any worker ran the job");
    server.abort();
    drop(web); // down, with no shutdown
    println!("web: gone; job {job} waits in the file");

    println!("\n3. the restart: a process with workers, on the same file");
    let worker = background(DurableStore::sqlite(&path).await?);
    let taken = wait_taken(&worker, job).await?;
    print_job("worker", &taken);
    // A deploy stops it now. The workers take no new jobs; a running job is
    // shielded, so it finishes (within the grace period) and is marked done;
    // jobs not yet taken would stay in the store for the next start.
    let report = worker.shutdown(Duration::from_secs(5)).await;
    let (finished, overdue) = (report.finished.len(), report.overdue.len());
    println!("worker: shut down; {finished} task finished, {overdue} overdue");
    let done = worker.durable().job(job).await?;
    print_job("worker", &done);
    let orders: Vec<i64> = sqlx::query_scalar("SELECT id FROM orders")
        .fetch_all(&db)
        .await?;
    let attempts = done.attempts;
    println!("\norders kept: {orders:?}; one invoice job, run in {attempts} attempt");

    db.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let mut file = path.clone().into_os_string();
        file.push(suffix);
        let _ = std::fs::remove_file(file);
    }
    Ok(())
}

/// `POST /orders`; prints the exchange and returns the invoice job's id.
async fn post_order(url: &str, order: &Value) -> Result<JobId, BoxError> {
    let response = reqwest::Client::new().post(url).json(order).send().await?;
    let status = response.status();
    let receipt: Value = response.json().await?;
    println!("client: POST /orders {order} -> {status} {receipt}");
    let id = receipt["invoice_job"]
        .as_i64()
        .ok_or("a receipt names its job")?;
    Ok(JobId::from(id))
}

/// Looks the job up until a worker has taken it (up to 10 s).
async fn wait_taken(background: &Background, id: JobId) -> Result<JobInfo, BoxError> {
    let looking = async {
        loop {
            let job = background.durable().job(id).await?;
            if job.state != JobState::Waiting {
                return Ok::<_, DurableError>(job);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    let waited = tokio::time::timeout(Duration::from_secs(10), looking).await;
    Ok(waited.map_err(|_| format!("job {id} not taken in 10 s"))??)
}

fn print_job(who: &str, job: &JobInfo) {
    let (id, name, state, attempts) = (job.id, &job.name, job.state, job.attempts);
    println!("{who}: job {id} ({name}) is {state:?}, attempts {attempts}");
}
