//! `schedule_sync`: schedule and complete 10k trivial sync closures through
//! `Background::schedule` (they run on tokio's blocking pool), then
//! `wait_idle`; the baseline runs the same closures with `spawn_blocking`,
//! tracked by a tokio-util `TaskTracker`. Goal: at most 1.05x.
//!
//! `cargo bench --bench schedule_sync`

mod common;

use std::hint::black_box;

use axum_background::Background;
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
            bench: "schedule_sync",
            baseline: "spawn_blocking + TaskTracker",
            iteration: "a batch of 10000 closures",
            unit: "task",
            goal: 1.05,
            throughput: Some(TASKS),
            iterations_per_sample: 1,
            units_per_sample: TASKS,
        },
        |n| common::run_units(&runtime, n, batches(&background)),
        |n| common::run_units(&runtime, n, bare_batch),
    );
}
