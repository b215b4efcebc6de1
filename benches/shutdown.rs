//! `shutdown`: `background.shutdown(grace)` with 100k parked non-shielded
//! async tasks (cancelled) and 1k shielded ones that finish once shutdown
//! begins; the baseline is a tokio-util `TaskTracker` whose non-shielded
//! tasks run under a `CancellationToken`: cancel, close, wait. Goal: at most
//! 1.1x, and under 100 ms absolute.
//!
//! Only the shutdown is timed: each iteration first schedules the tasks and
//! waits until every one is parked (not timed), then releases the shielded
//! ones and shuts down (timed).
//!
//! `cargo bench --bench shutdown`

mod common;

use std::pin::pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use axum_background::Background;
use criterion::SamplingMode;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

const CANCELLED: u64 = 100_000;
const SHIELDED: u64 = 1_000;
const GRACE: Duration = Duration::from_secs(5);
/// The absolute goal for the crate's shutdown.
const GOAL_ABSOLUTE: Duration = Duration::from_millis(100);

/// What the tasks of one iteration share.
#[derive(Default)]
struct Gate {
    parked: AtomicU64,
    /// Shielded tasks that ran to their end.
    finished: AtomicU64,
    release: Notify,
}

/// A non-shielded task: parks forever, until cancelled.
async fn forever(gate: Arc<Gate>) {
    gate.parked.fetch_add(1, Ordering::Release);
    std::future::pending::<()>().await;
}

/// A shielded task: parks until the release, then finishes.
async fn until_released(gate: Arc<Gate>) {
    let mut released = pin!(gate.release.notified());
    // Registered before counting, so the release cannot miss it.
    released.as_mut().enable();
    gate.parked.fetch_add(1, Ordering::Release);
    released.await;
    gate.finished.fetch_add(1, Ordering::Release);
}

async fn all_parked(gate: &Gate) {
    while gate.parked.load(Ordering::Acquire) < CANCELLED + SHIELDED {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// One crate iteration; times the release and `shutdown(grace)`.
async fn crate_round() -> common::Sample {
    let background = Background::new();
    let gate = Arc::new(Gate::default());
    for _ in 0..CANCELLED {
        drop(background.schedule(forever(Arc::clone(&gate))));
    }
    let shielded = background.task().shield(true).build();
    for _ in 0..SHIELDED {
        drop(shielded.schedule(until_released(Arc::clone(&gate))));
    }
    all_parked(&gate).await;

    let meter = common::Meter::start();
    gate.release.notify_waiters();
    let report = background.shutdown(GRACE).await;
    let sample = meter.stop();

    // A shielded task may end between the release and the start of the
    // shutdown: it is then not in the report, but it has finished.
    assert_eq!(report.cancelled.len() as u64, CANCELLED, "cancelled");
    assert!(report.overdue.is_empty(), "overdue");
    assert_eq!(
        gate.finished.load(Ordering::Acquire),
        SHIELDED,
        "shielded finished"
    );
    sample
}

/// One baseline iteration; times the release, cancel, close and wait.
async fn bare_round() -> common::Sample {
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let gate = Arc::new(Gate::default());
    for _ in 0..CANCELLED {
        let token = token.clone();
        let task = forever(Arc::clone(&gate));
        drop(tracker.spawn(async move { token.run_until_cancelled(task).await }));
    }
    for _ in 0..SHIELDED {
        drop(tracker.spawn(until_released(Arc::clone(&gate))));
    }
    all_parked(&gate).await;

    let meter = common::Meter::start();
    gate.release.notify_waiters();
    token.cancel();
    tracker.close();
    let waited = tokio::time::timeout(GRACE, tracker.wait()).await;
    let sample = meter.stop();

    assert!(waited.is_ok(), "the baseline outlived its grace");
    assert_eq!(
        gate.finished.load(Ordering::Acquire),
        SHIELDED,
        "shielded finished"
    );
    sample
}

fn main() {
    let args = common::Args::parse();
    let since = SystemTime::now();
    let runtime = common::runtime();

    let crate_run = || common::run_measured_units(&runtime, 1, crate_round);
    let bare_run = || common::run_measured_units(&runtime, 1, bare_round);
    common::wait_for_quiet(&args);
    common::prewarm(&args, Duration::from_millis(300), crate_run, bare_run);

    let criterion_meter = common::Meter::start();
    let mut criterion = common::criterion(Duration::from_millis(1500));
    {
        let mut group = criterion.benchmark_group("shutdown");
        // Each iteration has a long untimed set-up: keep the count low.
        group.sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(300));
        group.bench_function("crate", |b| {
            b.iter_custom(|iters| common::run_measured_units(&runtime, iters, crate_round).wall);
        });
        group.bench_function("bare", |b| {
            b.iter_custom(|iters| common::run_measured_units(&runtime, iters, bare_round).wall);
        });
        group.finish();
    }
    criterion.final_summary();
    let criterion_phase = criterion_meter.stop();
    if args.list {
        return;
    }
    common::wait_for_quiet(&args);

    let paired = common::paired(args.rounds(7), 1, crate_run, bare_run);
    common::print_summary(
        &common::Summary {
            bench: "shutdown",
            baseline: "TaskTracker close + CancellationToken",
            iteration: "one shutdown of 100000 + 1000 tasks",
            unit: "shutdown",
            goal: 1.1,
            since,
            criterion_phase,
        },
        &paired,
    );
    let mut crate_walls: Vec<f64> = paired
        .crate_samples
        .iter()
        .map(|sample| sample.wall.as_secs_f64())
        .collect();
    let crate_wall = Duration::from_secs_f64(common::median(&mut crate_walls));
    println!(
        "goal: crate shutdown under {GOAL_ABSOLUTE:?} absolute: {} (paired median {crate_wall:.1?})",
        if crate_wall < GOAL_ABSOLUTE {
            "MET"
        } else {
            "NOT MET"
        }
    );
}
