//! `schedule_sync`: schedule and complete 10k trivial sync closures through
//! `Background::schedule` (they run on tokio's blocking pool), then
//! `wait_idle`; the baseline runs the same closures with `spawn_blocking`,
//! tracked by a tokio-util `TaskTracker`. Goal: at most 1.2x.
//!
//! `cargo bench --bench schedule_sync`

mod common;

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use axum_background::Background;
use criterion::Throughput;
use tokio_util::task::TaskTracker;

const TASKS: u64 = 10_000;

/// One batch through the crate: schedule every closure, then wait until none
/// is in flight.
async fn crate_batch(background: Background) {
    for i in 0..TASKS {
        drop(background.schedule(move || {
            black_box(i);
        }));
    }
    background.wait_idle().await;
}

/// The same batch with bare `spawn_blocking` under a `TaskTracker`.
async fn bare_batch() {
    let tracker = TaskTracker::new();
    for i in 0..TASKS {
        drop(tracker.spawn_blocking(move || {
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
        let mut group = criterion.benchmark_group("schedule_sync");
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
            bench: "schedule_sync",
            baseline: "spawn_blocking + TaskTracker",
            iteration: "a batch of 10000 closures",
            unit: "task",
            goal: 1.2,
            since,
            criterion_phase,
        },
        &paired,
    );
}
