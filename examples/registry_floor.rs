//! The floor under `benches/schedule_async.rs`: what a task costs, against
//! bare `tokio::spawn`, in any design that keeps each task in a `DashMap`
//! registry, as the crate does.
//!
//! ```text
//! cargo run --release --example registry_floor [rounds]
//! ```
//!
//! Each round runs a batch of 100,000 trivial tasks in each of six ways,
//! spawned from outside the runtime's workers as the bench does (a
//! multi-thread runtime with 2 workers), in an order that rotates from round
//! to round:
//!
//! - `bare`: `tokio::spawn` under a `TaskTracker` (the bench's baseline);
//! - `map`: the same, plus an entry per task in a `DashMap`, inserted when the
//!   task is spawned and removed by the task as it ends;
//! - `by-value`: the entry holds 120 bytes of task state by value (the size of
//!   the crate's task cell), which the task reads once through the map;
//! - `lookups`: the same, read three times, as a runner that keeps no
//!   reference to its task must (at its start, after its poll, at its end:
//!   a map guard cannot be held across the task's own poll, which may
//!   schedule into the same shard);
//! - `shared`: the entry holds that state in an `Arc` that the task holds too:
//!   a second allocation per task, made on the spawning thread and freed on
//!   the worker that ran the task, as the crate's cell is;
//! - `pooled`: the same, with the `Arc`s kept for reuse in a bounded
//!   lock-free queue of 1,024 (`crossbeam-queue`) instead of freed, when the
//!   task held the last reference;
//! - `crate`: `Background::schedule`, then `wait_idle`.
//!
//! It prints each way's median wall time per task over the rounds (15 by
//! default) and its ratio to `bare`'s median.
//!
//! ```text
//! cargo run --release --example registry_floor -- alone <way> <tasks>
//! ```
//!
//! runs one batch of `tasks` in one way, with no warm-up: under
//! `valgrind --tool=callgrind`, the counts of two runs at different sizes
//! give the instructions a task.

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum_background::Background;
use crossbeam_queue::ArrayQueue;
use dashmap::DashMap;
use rustc_hash::FxBuildHasher;
use tokio::runtime::Runtime;
use tokio_util::task::TaskTracker;

const TASKS: u64 = 100_000;
/// The most `Arc`s the `pooled` way keeps for reuse.
const POOL: usize = 1024;

/// The ways a batch is run, in the order printed.
#[derive(Clone, Copy, PartialEq)]
enum Way {
    Bare,
    Map,
    ByValue,
    Lookups,
    Shared,
    Pooled,
    Crate,
}

const WAYS: [Way; 7] = [
    Way::Bare,
    Way::Map,
    Way::ByValue,
    Way::Lookups,
    Way::Shared,
    Way::Pooled,
    Way::Crate,
];

impl Way {
    fn name(self) -> &'static str {
        match self {
            Way::Bare => "bare",
            Way::Map => "map",
            Way::ByValue => "by-value",
            Way::Lookups => "lookups",
            Way::Shared => "shared",
            Way::Pooled => "pooled",
            Way::Crate => "crate",
        }
    }
}

/// 120 bytes of task state.
type State = [u64; 15];

/// The registries of the ways that keep one.
struct Registries {
    ids: AtomicU64,
    map: DashMap<u64, (), FxBuildHasher>,
    by_value: DashMap<u64, State, FxBuildHasher>,
    shared: DashMap<u64, Arc<State>, FxBuildHasher>,
    /// `pooled`'s `Arc`s, each the only reference to its state.
    pool: ArrayQueue<Arc<State>>,
}

impl Registries {
    fn new() -> Self {
        Registries {
            ids: AtomicU64::new(0),
            map: DashMap::default(),
            by_value: DashMap::default(),
            shared: DashMap::default(),
            pool: ArrayQueue::new(POOL),
        }
    }

    /// An `Arc` holding `state`: a pooled one if there is one.
    fn pooled(&self, state: State) -> Arc<State> {
        if let Some(mut pooled) = self.pool.pop() {
            if let Some(slot) = Arc::get_mut(&mut pooled) {
                *slot = state;
                return pooled;
            }
        }
        Arc::new(state)
    }

    /// Keeps `state` for reuse if this was its last reference and the pool
    /// has room; frees it otherwise.
    fn recycle(&self, mut state: Arc<State>) {
        if Arc::get_mut(&mut state).is_some() {
            let _ = self.pool.push(state);
        }
    }
}

/// One batch of `way`, timed.
fn batch(
    runtime: &Runtime,
    tasks: u64,
    way: Way,
    registries: &Arc<Registries>,
    background: &Background,
) -> Duration {
    let start = Instant::now();
    runtime.block_on(async {
        if way == Way::Crate {
            for i in 0..tasks {
                drop(background.schedule(async move {
                    black_box(i);
                }));
            }
            background.wait_idle().await;
            return;
        }
        let tracker = TaskTracker::new();
        for i in 0..tasks {
            if way == Way::Bare {
                drop(tracker.spawn(async move {
                    black_box(i);
                }));
                continue;
            }
            let id = registries.ids.fetch_add(1, Ordering::Relaxed);
            let registries = Arc::clone(registries);
            let task = match way {
                Way::Map => {
                    registries.map.insert(id, ());
                    tracker.spawn(async move {
                        black_box(i);
                        registries.map.remove(&id);
                    })
                }
                Way::ByValue | Way::Lookups => {
                    let reads = if way == Way::Lookups { 3 } else { 1 };
                    registries.by_value.insert(id, [i; 15]);
                    tracker.spawn(async move {
                        for _ in 0..reads {
                            if let Some(state) = registries.by_value.get(&id) {
                                black_box(state[0]);
                            }
                        }
                        registries.by_value.remove(&id);
                    })
                }
                _ => {
                    let pooled = way == Way::Pooled;
                    let state = if pooled {
                        registries.pooled([i; 15])
                    } else {
                        Arc::new([i; 15])
                    };
                    registries.shared.insert(id, Arc::clone(&state));
                    tracker.spawn(async move {
                        black_box(&state);
                        registries.shared.remove(&id);
                        if pooled {
                            registries.recycle(state);
                        }
                    })
                }
            };
            drop(task);
        }
        tracker.close();
        tracker.wait().await;
    });
    start.elapsed()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build the tokio runtime");
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();
    let registries = Arc::new(Registries::new());

    if let [alone, way, tasks] = args.as_slice() {
        assert_eq!(
            alone, "alone",
            "usage: registry_floor [rounds | alone <way> <tasks>]"
        );
        let way = WAYS
            .into_iter()
            .find(|known| known.name() == way)
            .expect("a way: bare, map, by-value, lookups, shared, pooled or crate");
        let tasks = tasks.parse().expect("tasks: a number");
        batch(&runtime, tasks, way, &registries, &background);
        return;
    }
    let rounds: usize = args
        .first()
        .map(|arg| arg.parse().expect("rounds: a number"))
        .unwrap_or(15);

    // A warm-up batch of each, then the rounds.
    for way in WAYS {
        batch(&runtime, TASKS, way, &registries, &background);
    }
    let mut per_task: Vec<Vec<f64>> = vec![Vec::with_capacity(rounds); WAYS.len()];
    for round in 0..rounds {
        for k in 0..WAYS.len() {
            let way = (round + k) % WAYS.len();
            let took = batch(&runtime, TASKS, WAYS[way], &registries, &background);
            per_task[way].push(took.as_nanos() as f64 / TASKS as f64);
        }
    }

    let bare = median(per_task[0].clone());
    println!("{rounds} rounds of {TASKS} tasks, median wall time per task:");
    for (way, times) in WAYS.iter().zip(per_task) {
        let median = median(times);
        println!(
            "  {:<9} {median:>7.0} ns  {:.3}x",
            way.name(),
            median / bare
        );
    }
}
