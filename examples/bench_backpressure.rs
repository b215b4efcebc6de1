//! The load test of `bench/backpressure.sh`: `max_in_flight(N)` with
//! `OverflowPolicy::Reject`, with and without `shed_when_saturated()`.
//!
//! Two roles, one binary:
//!
//! - `bench_backpressure serve` serves on `127.0.0.1:$PORT` (default 3000):
//!   - `GET /work`: the handler schedules one async task that sleeps
//!     `$TASK_MS` ms (default 5: a call to another service); behind
//!     `background.layer()`, or `background.layer().shed_when_saturated()`
//!     with `SHED=1`. The background has `max_in_flight($MAX_IN_FLIGHT)`
//!     (default 32) and the reject policy.
//!   - `GET /stats`: outside the layer (never shed). Waits until no task is
//!     in flight (up to 30 s), then answers `{"handler_runs", "scheduled",
//!     "completed", "rejected", ..., "cpu_us"}` (`cpu_us`: the process's CPU
//!     time so far).
//! - `bench_backpressure load URL` drives `GET URL` from `$CONNECTIONS`
//!   (default 64) keep-alive connections for `$LOAD_SECONDS` (default 5) s, as
//!   fast as answers come (`$RATE` unset or 0: closed loop) or paced at
//!   `$RATE` requests/s in all (each connection every `CONNECTIONS / RATE`
//!   s; a late answer does not move the next due time). Latency counts from
//!   the moment a request is sent (tokio's timer wakes up to 1 ms late, which
//!   a count from the due time would add); `late` counts the paced requests
//!   sent a whole period after their due time (the client fell behind, and
//!   the latency understates the wait). It prints one JSON line: requests,
//!   200s, 503s, other answers, errors, late, requests/s, and the p50 and p99
//!   latency (µs) of the 200s and of the 503s. Clients do not honour
//!   `Retry-After`: every 503 is counted, none retried.
//!
//! `PORT=3000 SHED=1 cargo run --release --example bench_backpressure serve`,
//! then `cargo run --release --example bench_backpressure load http://127.0.0.1:3000/work`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum_background::{Background, BoxError, OverflowPolicy, Tasks, shutdown_signal};
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some("serve") => serve(),
        Some("load") => {
            let url = args
                .next()
                .unwrap_or_else(|| "http://127.0.0.1:3000/work".to_owned());
            load(&url)
        }
        _ => Err("usage: bench_backpressure serve | load URL".into()),
    }
}

// ---------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------

#[derive(Clone)]
struct App {
    background: Background,
    handler_runs: Arc<AtomicU64>,
    task_time: Duration,
}

async fn work(State(app): State<App>, tasks: Tasks) -> &'static str {
    app.handler_runs.fetch_add(1, Ordering::Relaxed);
    let task_time = app.task_time;
    tasks.schedule(async move { tokio::time::sleep(task_time).await });
    "ok"
}

async fn stats(State(app): State<App>) -> impl IntoResponse {
    let _ = tokio::time::timeout(Duration::from_secs(30), app.background.wait_idle()).await;
    let stats = app.background.stats();
    let cpu = cpu_time::ProcessTime::now().as_duration();
    let body = format!(
        "{{\"handler_runs\": {}, \"scheduled\": {}, \"queued\": {}, \"running\": {}, \
         \"completed\": {}, \"rejected\": {}, \"other_outcomes\": {}, \"cpu_us\": {}}}",
        app.handler_runs.load(Ordering::Relaxed),
        stats.scheduled,
        stats.queued,
        stats.running,
        stats.completed,
        stats.rejected,
        stats.failed + stats.panicked + stats.timed_out + stats.cancelled,
        cpu.as_micros(),
    );
    ([(header::CONTENT_TYPE, "application/json")], body)
}

fn serve() -> Result<(), BoxError> {
    let port: u16 = env_or("PORT", 3000);
    let shed = env_or("SHED", 0u8) != 0;
    let max_in_flight: usize = env_or("MAX_IN_FLIGHT", 32);
    let task_time = Duration::from_millis(env_or("TASK_MS", 5));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let background = Background::builder()
            .max_in_flight(max_in_flight)
            .overflow(OverflowPolicy::Reject)
            .build();
        let app = App {
            background: background.clone(),
            handler_runs: Arc::default(),
            task_time,
        };
        let layer = if shed {
            background.layer().shed_when_saturated()
        } else {
            background.layer()
        };
        let router = Router::new()
            .route("/work", get(work))
            .layer(layer)
            .route("/stats", get(stats))
            .with_state(app);
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        eprintln!(
            "bench_backpressure serving on 127.0.0.1:{port}: max_in_flight({max_in_flight}), \
             reject, tasks of {task_time:?}, shed_when_saturated: {shed}"
        );
        axum::serve(listener, router)
            .with_graceful_shutdown(shutdown_signal())
            .await?;
        let report = background.shutdown(Duration::from_secs(5)).await;
        eprintln!(
            "shut down: {} cut short",
            report.cancelled.len() + report.overdue.len()
        );
        Ok(())
    })
}

// ---------------------------------------------------------------------------
// The load generator
// ---------------------------------------------------------------------------

/// What one connection saw.
#[derive(Default)]
struct Seen {
    ok: Vec<u32>,
    shed: Vec<u32>,
    other: u64,
    errors: u64,
    /// Paced requests sent a whole period after their due time.
    late: u64,
}

fn load(url: &str) -> Result<(), BoxError> {
    let connections: usize = env_or("CONNECTIONS", 64).max(1);
    let seconds: f64 = env_or("LOAD_SECONDS", 5.0);
    let rate: f64 = env_or("RATE", 0.0);
    let uri: http::Uri = url.parse()?;
    // One thread, as `wrk -t1`: the client takes one core of two.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (seen, elapsed) = runtime.block_on(async move {
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(connections)
            .build_http::<Empty<Bytes>>();
        let start = tokio::time::Instant::now();
        let end = start + Duration::from_secs_f64(seconds);
        let workers: Vec<_> = (0..connections)
            .map(|i| {
                let client = client.clone();
                let uri = uri.clone();
                // Paced: each connection sends every `connections / rate` s,
                // the connections spread over one period.
                let period =
                    (rate > 0.0).then(|| Duration::from_secs_f64(connections as f64 / rate));
                let first = period.map(|p| start + p.mul_f64(i as f64 / connections as f64));
                tokio::spawn(async move {
                    let mut seen = Seen::default();
                    let mut due = first;
                    loop {
                        if let Some(at) = due {
                            if at >= end {
                                break;
                            }
                            tokio::time::sleep_until(at).await;
                        }
                        let sent = tokio::time::Instant::now();
                        if sent >= end {
                            break;
                        }
                        if let (Some(at), Some(period)) = (due, period) {
                            // Behind its schedule by a whole period: answers come
                            // slower than the pace, and the latency measured from
                            // `sent` understates what a client waits.
                            if sent.duration_since(at) > period {
                                seen.late += 1;
                            }
                        }
                        let request = http::Request::get(uri.clone())
                            .body(Empty::<Bytes>::new())
                            .expect("a valid request");
                        match client.request(request).await {
                            Ok(response) => {
                                let status = response.status();
                                let read = response.into_body().collect().await;
                                let micros =
                                    u32::try_from(sent.elapsed().as_micros()).unwrap_or(u32::MAX);
                                match (read, status.as_u16()) {
                                    (Err(_), _) => seen.errors += 1,
                                    (Ok(_), 200) => seen.ok.push(micros),
                                    (Ok(_), 503) => seen.shed.push(micros),
                                    (Ok(_), _) => seen.other += 1,
                                }
                            }
                            Err(_) => seen.errors += 1,
                        }
                        if let (Some(at), Some(period)) = (&mut due, period) {
                            *at += period;
                        }
                    }
                    seen
                })
            })
            .collect();
        let mut all = Seen::default();
        for worker in workers {
            let seen = worker.await.unwrap_or_default();
            all.ok.extend(seen.ok);
            all.shed.extend(seen.shed);
            all.other += seen.other;
            all.errors += seen.errors;
            all.late += seen.late;
        }
        (all, start.elapsed())
    });
    let Seen {
        mut ok,
        mut shed,
        other,
        errors,
        late,
    } = seen;
    ok.sort_unstable();
    shed.sort_unstable();
    let requests = ok.len() as u64 + shed.len() as u64 + other + errors;
    let secs = elapsed.as_secs_f64();
    println!(
        "{{\"connections\": {connections}, \"rate\": {rate}, \"seconds\": {secs:.3}, \
         \"requests\": {requests}, \"ok\": {}, \"shed\": {}, \"other\": {other}, \
         \"errors\": {errors}, \"late\": {late}, \"rps\": {:.1}, \"ok_p50_us\": {}, \"ok_p99_us\": {}, \
         \"shed_p50_us\": {}, \"shed_p99_us\": {}}}",
        ok.len(),
        shed.len(),
        requests as f64 / secs,
        percentile(&ok, 0.50),
        percentile(&ok, 0.99),
        percentile(&shed, 0.50),
        percentile(&shed, 0.99),
    );
    Ok(())
}

/// The `q` quantile of sorted `values` (nearest rank), or `null`.
fn percentile(values: &[u32], q: f64) -> String {
    if values.is_empty() {
        return "null".to_owned();
    }
    let rank = ((values.len() as f64 * q).ceil() as usize).clamp(1, values.len());
    values[rank - 1].to_string()
}
