//! CPU-bound tasks without starving the server: `cargo run --example cpu_bound`.
//!
//! The guide's "CPU-Bound Operations". In Python a sync task still holds the
//! GIL, so the guide reaches for a process pool. Rust threads run in
//! parallel, so the answer is a thread pool that is not the runtime's:
//!
//! 1. `inline`: the work in an async task, the mistake. It never `.await`s,
//!    so it holds a runtime worker until done; on this 1-worker server no
//!    request is answered meanwhile.
//! 2. `blocking`: the same work as a sync task, on tokio's blocking pool.
//! 3. `rayon`: an async task hands the work to a rayon pool, which splits it
//!    over every core, and awaits the result (the `ProcessPoolExecutor` answer).
//!
//! While each runs, a client on another thread pings the server and measures
//! how long each answer takes. Lines starting with `[timing]` hold measured
//! times; every other line is the same on every run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum_background::{Background, BoxError, Tasks};
use rayon::prelude::*;
use tokio::sync::{Notify, oneshot};

/// Count the primes below this: about half a second of work in a debug build.
const LIMIT: u64 = 400_000;

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| n % d != 0)
}

/// The CPU-bound work, on one thread.
fn count_primes(below: u64) -> usize {
    (0..below).filter(|&n| is_prime(n)).count()
}

/// The server's shared state.
struct Lab {
    rayon: rayon::ThreadPool,
    /// Notified when the work begins, so the client pings while it runs.
    started: Notify,
    /// The last count, and how long it took.
    result: Mutex<Option<(usize, Duration)>>,
}

impl Lab {
    fn start(&self) -> Instant {
        self.started.notify_one();
        Instant::now()
    }

    fn finish(&self, count: usize, began: Instant) {
        *self.result.lock().unwrap() = Some((count, began.elapsed()));
    }

    /// Runs the work on the rayon pool, split over its threads, and awaits it
    /// without holding a runtime thread: `loop.run_in_executor(pool, ..)`.
    async fn count_on_rayon(&self, below: u64) -> Result<usize, BoxError> {
        let (send, receive) = oneshot::channel();
        self.rayon.spawn(move || {
            let count = (0..below).into_par_iter().filter(|&n| is_prime(n)).count();
            let _ = send.send(count);
        });
        Ok(receive.await?) // an error here means the work panicked
    }
}

async fn primes(tasks: Tasks, State(lab): State<Arc<Lab>>, Path(how): Path<String>) -> StatusCode {
    match how.as_str() {
        // Don't: an async task that never awaits blocks the runtime thread it runs on.
        "inline" => tasks.schedule(async move {
            let began = lab.start();
            lab.finish(count_primes(LIMIT), began);
        }),
        // A sync task: on the blocking pool, one thread.
        "blocking" => tasks.schedule(move || {
            let began = lab.start();
            lab.finish(count_primes(LIMIT), began);
        }),
        // An async task awaiting a rayon pool: every core, and no thread held while waiting.
        "rayon" => tasks.schedule(async move {
            let began = lab.start();
            let count = lab.count_on_rayon(LIMIT).await?;
            lab.finish(count, began);
            Ok::<_, BoxError>(())
        }),
        _ => return StatusCode::NOT_FOUND,
    };
    StatusCode::ACCEPTED
}

fn main() -> Result<(), BoxError> {
    // The server: a runtime with ONE worker thread, so that blocking it shows.
    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let background = Background::builder()
        .runtime(server.handle().clone())
        .build();
    let lab = Arc::new(Lab {
        rayon: rayon::ThreadPoolBuilder::new().build()?, // one thread per core
        started: Notify::new(),
        result: Mutex::new(None),
    });
    let app = Router::new()
        .route("/ping", get(|| async { "pong" }))
        .route("/primes/{how}", post(primes))
        .with_state(Arc::clone(&lab))
        .layer(background.layer());
    let listener = server.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let base = format!("http://{}", listener.local_addr()?);
    server.spawn(axum::serve(listener, app).into_future());

    // The client: its own runtime on this thread, like a separate process.
    let client = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    client.block_on(measure(&base, &background, &lab))
}

async fn measure(base: &str, background: &Background, lab: &Lab) -> Result<(), BoxError> {
    let client = reqwest::Client::new();
    let ping = || async {
        let sent = Instant::now();
        client
            .get(format!("{base}/ping"))
            .send()
            .await?
            .text()
            .await?;
        Ok::<_, BoxError>(sent.elapsed())
    };
    ping().await?; // opens the connection, so that the pings below measure only the server

    for (how, what) in [
        (
            "inline",
            "in an async task, on the runtime's only worker (don't)",
        ),
        ("blocking", "in a sync task, on the blocking pool"),
        ("rayon", "in an async task awaiting a rayon pool"),
    ] {
        println!("== {how}: counting primes {what} ==");
        let response = client.post(format!("{base}/primes/{how}")).send().await?;
        println!("client: POST /primes/{how} -> {}", response.status());
        lab.started.notified().await;

        // Ping every 10 ms until the work is done (at least once).
        let mut latencies = Vec::new();
        loop {
            latencies.push(ping().await?);
            if background.stats().in_flight() == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await; // pacing, not synchronisation
        }
        background.wait_idle().await;

        let (count, took) = lab
            .result
            .lock()
            .unwrap()
            .take()
            .expect("the work has finished");
        println!("primes below {LIMIT}: {count}");
        latencies.sort();
        let (median, worst) = (
            latencies[latencies.len() / 2],
            latencies[latencies.len() - 1],
        );
        let share = worst.as_secs_f64() / took.as_secs_f64() * 100.0;
        println!(
            "[timing] work took {} ms; {} ping(s) meanwhile: median {:.1} ms, worst {:.1} ms ({share:.0}% of the work's time)",
            took.as_millis(),
            latencies.len(),
            median.as_secs_f64() * 1e3,
            worst.as_secs_f64() * 1e3,
        );
    }
    println!(
        "A ping that waits as long as the work means the runtime was starved: keep CPU work off it."
    );
    Ok(())
}
