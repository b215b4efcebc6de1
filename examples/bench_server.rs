//! The load-test server of `bench/run.sh`: axum with axum-background.
//!
//! Serves on `127.0.0.1:$PORT` (default 3000):
//!
//! - `GET /noop`: `ok`, schedules nothing (the layer's cost alone);
//! - `GET /immediate`: one async task that increments a global counter;
//! - `GET /phases`: three async tasks, one per phase, each increments it;
//! - `GET /blocking`: one sync task (blocking pool) that increments it;
//! - `GET /stats`: `{"completed": N, ...}`, the counter and the crate's stats;
//! - `GET /burst`: for `bench/shutdown_burst.sh`: a 100 ms async task, a
//!   shielded 50 ms async task and a 50 ms sync after-response task, each
//!   incrementing the counter when it ends.
//!
//! On SIGTERM or Ctrl-C it stops taking requests, drains the open ones, calls
//! `background.shutdown(grace)` (`$GRACE_MS`, default 5000) and prints one
//! line, `SHUTDOWN {json}`, with the report's counts, the crate's stats and
//! the counter, read after the runtime has been dropped.
//!
//! `PORT=3000 cargo run --release --example bench_server`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum_background::{Background, BoxError, Stats, Tasks, shutdown_signal};

/// Tasks that ran to their end.
static COMPLETED: AtomicU64 = AtomicU64::new(0);

fn bump() {
    COMPLETED.fetch_add(1, Ordering::Relaxed);
}

async fn noop() -> &'static str {
    "ok"
}

async fn immediate(tasks: Tasks) -> &'static str {
    tasks.schedule(async { bump() });
    "ok"
}

async fn phases(tasks: Tasks) -> &'static str {
    tasks.schedule(async { bump() });
    tasks.after_route().schedule(async { bump() });
    tasks.after_response().schedule(async { bump() });
    "ok"
}

async fn blocking(tasks: Tasks) -> &'static str {
    tasks.schedule(bump);
    "ok"
}

async fn burst(tasks: Tasks) -> &'static str {
    tasks.schedule(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bump();
    });
    tasks.task().shield(true).build().schedule(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        bump();
    });
    tasks.after_response().schedule(|| {
        std::thread::sleep(Duration::from_millis(50));
        bump();
    });
    "ok"
}

fn stats_json(stats: &Stats) -> String {
    format!(
        "{{\"scheduled\":{},\"queued\":{},\"running\":{},\"completed\":{},\"failed\":{},\"panicked\":{},\"timed_out\":{},\"cancelled\":{},\"rejected\":{}}}",
        stats.scheduled,
        stats.queued,
        stats.running,
        stats.completed,
        stats.failed,
        stats.panicked,
        stats.timed_out,
        stats.cancelled,
        stats.rejected,
    )
}

async fn stats(State(background): State<Background>) -> impl IntoResponse {
    let body = format!(
        "{{\"completed\":{},\"background\":{}}}",
        COMPLETED.load(Ordering::Relaxed),
        stats_json(&background.stats())
    );
    ([(header::CONTENT_TYPE, "application/json")], body)
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), BoxError> {
    let port = u16::try_from(env_u64("PORT", 3000))?;
    let grace = Duration::from_millis(env_u64("GRACE_MS", 5000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    let summary = runtime.block_on(async move {
        let background = Background::new();
        let app = Router::new()
            .route("/noop", get(noop))
            .route("/immediate", get(immediate))
            .route("/phases", get(phases))
            .route("/blocking", get(blocking))
            .route("/burst", get(burst))
            .route("/stats", get(stats))
            .with_state(background.clone())
            .layer(background.layer());
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on http://127.0.0.1:{port}");
        axum::serve(listener, app)
            .with_graceful_shutdown(shutdown_signal())
            .await?;

        let in_flight = background.stats().in_flight();
        let started = Instant::now();
        let report = background.shutdown(grace).await;
        let took = started.elapsed();
        Ok::<_, BoxError>(format!(
            "\"in_flight_before_shutdown\":{in_flight},\"report\":{{\"completed\":{},\"cancelled\":{},\"overdue\":{}}},\"shutdown_ms\":{:.3},\"stats\":{}",
            report.finished.len(),
            report.cancelled.len(),
            report.overdue.len(),
            took.as_secs_f64() * 1e3,
            stats_json(&background.stats()),
        ))
    })?;
    // Whatever was still running is done or dropped now: the counter is final.
    drop(runtime);
    println!(
        "SHUTDOWN {{{summary},\"counter\":{}}}",
        COMPLETED.load(Ordering::Relaxed)
    );
    Ok(())
}
