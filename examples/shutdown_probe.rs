//! The shutdown probe behind BENCHMARKS.md's shutdown figures: parks `N`
//! async tasks that wait forever, then times their shutdown alone, and prints
//! it. `crate` shuts a `Background` down (every task cancelled, checked);
//! `bare` cancels a `CancellationToken` that `N` tasks of a tokio-util
//! `TaskTracker` run under, closes the tracker and waits for it (the
//! baseline of `cargo bench --bench scaling`). A multi-thread runtime with 2
//! workers; the tasks are scheduled from a task on it.
//!
//! ```sh
//! cargo run --release --example shutdown_probe -- crate 1000000 [rounds]
//! cargo run --release --example shutdown_probe -- bare 1000000 [rounds]
//! ```
//!
//! For a profile of the shutdown alone, set `PERF_CTL` (and `PERF_ACK`) to
//! the fifos of `perf record --control fifo:ctl,ack -D -1 ...`: the probe
//! enables the recording around each shutdown and disables it after.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum_background::Background;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The grace period: no task should need it.
const GRACE: Duration = Duration::from_secs(30);

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let side = args.next().unwrap_or_else(|| "crate".into());
    let tasks: u64 = args.next().map_or(Ok(1_000_000), |n| n.parse())?;
    let rounds: u64 = args.next().map_or(Ok(1), |n| n.parse())?;
    if side != "crate" && side != "bare" {
        return Err(format!("unknown side {side:?}: crate or bare").into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    for _ in 0..rounds {
        let crate_side = side == "crate";
        let took = runtime.block_on(async move {
            tokio::spawn(async move {
                if crate_side {
                    crate_round(tasks).await
                } else {
                    bare_round(tasks).await
                }
            })
            .await
        })??;
        println!("{side} {tasks}: {:.1} ms", took.as_secs_f64() * 1e3);
    }
    Ok(())
}

type Round = Result<Duration, Box<dyn std::error::Error + Send + Sync>>;

async fn crate_round(tasks: u64) -> Round {
    let parked = Arc::new(AtomicU64::new(0));
    let background = Background::new();
    for _ in 0..tasks {
        drop(background.schedule(forever(Arc::clone(&parked))));
    }
    all_parked(&parked, tasks).await;
    perf("enable")?;
    let start = Instant::now();
    let report = background.shutdown(GRACE).await;
    let took = start.elapsed();
    perf("disable")?;
    if report.cancelled.len() as u64 != tasks || report.len() as u64 != tasks {
        return Err(format!(
            "not every task cancelled: {} of {tasks}",
            report.cancelled.len()
        )
        .into());
    }
    Ok(took)
}

async fn bare_round(tasks: u64) -> Round {
    let parked = Arc::new(AtomicU64::new(0));
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    for _ in 0..tasks {
        let token = token.clone();
        let task = forever(Arc::clone(&parked));
        drop(tracker.spawn(async move { token.run_until_cancelled(task).await }));
    }
    all_parked(&parked, tasks).await;
    perf("enable")?;
    let start = Instant::now();
    token.cancel();
    tracker.close();
    tracker.wait().await;
    let took = start.elapsed();
    perf("disable")?;
    Ok(took)
}

/// Counts itself parked, then waits forever (until cancelled).
async fn forever(parked: Arc<AtomicU64>) {
    parked.fetch_add(1, Ordering::Release);
    std::future::pending::<()>().await;
}

/// Waits until `tasks` tasks have counted themselves parked (not timed).
async fn all_parked(parked: &AtomicU64, tasks: u64) {
    while parked.load(Ordering::Acquire) < tasks {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Sends `command` to `perf record --control`, if `PERF_CTL` names its fifo,
/// and waits for its acknowledgement if `PERF_ACK` names that one.
fn perf(command: &str) -> std::io::Result<()> {
    let Ok(control) = std::env::var("PERF_CTL") else {
        return Ok(());
    };
    writeln!(
        std::fs::OpenOptions::new().write(true).open(control)?,
        "{command}"
    )?;
    if let Ok(ack) = std::env::var("PERF_ACK") {
        let mut reply = [0; 5];
        let _ = std::fs::File::open(ack)?.read(&mut reply)?;
    }
    Ok(())
}
