//! `schedule_async`: schedule and complete 100k trivial async tasks through
//! `Background::schedule` (no request), then `wait_idle`; the baseline spawns
//! the same futures with `tokio::spawn`, tracked by a tokio-util
//! `TaskTracker` (close, then wait). Goal: at most 1.3x.
//!
//! `cargo bench --bench schedule_async`

mod common;

use std::hint::black_box;

use axum_background::Background;
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
    let runtime = common::runtime();
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();
    let batches = |background: &Background| {
        let background = background.clone();
        move || crate_batch(background.clone())
    };
    common::compare(
        common::Comparison {
            bench: "schedule_async",
            baseline: "tokio::spawn + TaskTracker",
            iteration: "a batch of 100000 tasks",
            unit: "task",
            goal: 1.3,
            throughput: Some(TASKS),
            iterations_per_sample: 1,
            units_per_sample: TASKS,
        },
        |n| common::run_units(&runtime, n, batches(&background)),
        |n| common::run_units(&runtime, n, bare_batch),
    );
}
