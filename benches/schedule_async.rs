//! `schedule_async`: schedule and complete 100k trivial async tasks through
//! `Background::schedule` (no request), then `wait_idle`; the baseline spawns
//! the same futures with `tokio::spawn`, tracked by a tokio-util
//! `TaskTracker` (close, then wait). Goal: at most 1.3x.
//!
//! `cargo bench --bench schedule_async`

mod common;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use axum_background::Background;
use criterion::Throughput;
use tokio_util::task::TaskTracker;

const TASKS: u64 = 100_000;

/// One batch through the crate: schedule every task, then wait until none is
/// in flight.
async fn crate_batch(background: Background) {
    for i in 0..TASKS {
        drop(background.schedule(async move {
            black_box(i);
        }));
    }
    background.wait_idle().await;
}

/// The same batch with bare `tokio::spawn` under a `TaskTracker`.
async fn bare_batch() {
    let tracker = TaskTracker::new();
    for i in 0..TASKS {
        drop(tracker.spawn(async move {
            black_box(i);
        }));
    }
    tracker.close();
    tracker.wait().await;
}

fn main() {
    let args = common::Args::parse();
    let since = SystemTime::now();
    let runtime = common::runtime();
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();

    let crate_run = || {
        let background = background.clone();
        common::run_units(&runtime, 1, move || crate_batch(background.clone()))
    };
    let bare_run = || common::run_units(&runtime, 1, bare_batch);
    common::wait_for_quiet(&args);
    common::prewarm(&args, Duration::from_secs(1), crate_run, bare_run);

    let criterion_meter = common::Meter::start();
    let mut criterion = common::criterion(Duration::from_secs(3));
    {
        let mut group = criterion.benchmark_group("schedule_async");
        group.throughput(Throughput::Elements(TASKS));
        group.bench_function("crate", |b| {
            b.iter_custom(|iters| {
                let background = background.clone();
                common::run_units(&runtime, iters, move || crate_batch(background.clone())).wall
            });
        });
        group.bench_function("bare", |b| {
            b.iter_custom(|iters| common::run_units(&runtime, iters, bare_batch).wall);
        });
        group.finish();
    }
    criterion.final_summary();
    let criterion_phase = criterion_meter.stop();
    if args.list {
        return;
    }
    common::wait_for_quiet(&args);

    let paired = common::paired(args.rounds(15), TASKS, crate_run, bare_run);
    common::print_summary(
        &common::Summary {
            bench: "schedule_async",
            baseline: "tokio::spawn + TaskTracker",
            iteration: "a batch of 100000 tasks",
            unit: "task",
            goal: 1.3,
            since,
            criterion_phase,
        },
        &paired,
    );
}
