//! `in_flight_memory`: resident memory per in-flight task. 100k async tasks
//! parked on a `Notify`, scheduled through `Background::schedule`, against
//! the same futures under bare `tokio::spawn`. Goal: at most 200 extra bytes
//! per task.
//!
//! RSS comes from `/proc/self/statm` before scheduling and once every task is
//! parked. Each measurement runs in a fresh child process (this binary, with
//! `--variant crate|bare`), so that memory one variant freed cannot be reused
//! by the next; the parent runs the children interleaved (A B, B A, ...) and
//! prints the medians.
//!
//! `cargo bench --bench in_flight_memory`

mod common;

use std::pin::pin;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum_background::Background;
use tokio::sync::Notify;

const TASKS: u64 = 100_000;
/// The goal: at most this many bytes per task over bare `tokio::spawn`.
const GOAL_EXTRA_BYTES: f64 = 200.0;

/// Resident set size in bytes, from `/proc/self/statm` (resident pages).
fn rss_bytes(page_size: u64) -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|field| field.parse().ok())
        .expect("statm's resident field");
    pages * page_size
}

/// The kernel's page size, from the first mapping in `/proc/self/smaps`.
fn page_size() -> u64 {
    std::fs::read_to_string("/proc/self/smaps")
        .ok()
        .and_then(|smaps| {
            smaps.lines().find_map(|line| {
                let kib = line.strip_prefix("KernelPageSize:")?;
                kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok()
            })
        })
        .map_or(4096, |kib| kib * 1024)
}

/// Counts parked and finished tasks; the release they wait for.
struct Gate {
    parked: AtomicU64,
    finished: AtomicU64,
    release: Notify,
}

/// A task's body, the same under both variants: register with the gate's
/// `Notify`, say so, wait to be released.
async fn parked(gate: Arc<Gate>) {
    let mut notified = pin!(gate.release.notified());
    // Registered before counting, so the release cannot miss it.
    notified.as_mut().enable();
    gate.parked.fetch_add(1, Ordering::Release);
    notified.await;
    gate.finished.fetch_add(1, Ordering::Release);
}

async fn wait_for(counter: &AtomicU64, value: u64) {
    while counter.load(Ordering::Acquire) < value {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// The child: measure one variant, print `bytes_per_task=...`.
fn child(variant: &str) {
    let runtime = common::runtime();
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();
    let crate_variant = match variant {
        "crate" => true,
        "bare" => false,
        other => panic!("unknown variant {other:?}"),
    };
    let page_size = page_size();
    let (before, after) = runtime.block_on(async move {
        tokio::spawn(async move {
            let spawn = |gate: &Arc<Gate>| {
                let task = parked(Arc::clone(gate));
                if crate_variant {
                    drop(background.schedule(task));
                } else {
                    drop(tokio::spawn(task));
                }
            };
            // Warm up the runtime, the allocator and the registry alike.
            let warm = Arc::new(Gate {
                parked: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                release: Notify::new(),
            });
            for _ in 0..1_000 {
                spawn(&warm);
            }
            wait_for(&warm.parked, 1_000).await;
            warm.release.notify_waiters();
            wait_for(&warm.finished, 1_000).await;
            background.wait_idle().await;

            let gate = Arc::new(Gate {
                parked: AtomicU64::new(0),
                finished: AtomicU64::new(0),
                release: Notify::new(),
            });
            let before = rss_bytes(page_size);
            for _ in 0..TASKS {
                spawn(&gate);
            }
            wait_for(&gate.parked, TASKS).await;
            let after = rss_bytes(page_size);
            gate.release.notify_waiters();
            wait_for(&gate.finished, TASKS).await;
            background.wait_idle().await;
            (before, after)
        })
        .await
        .expect("the measuring task panicked")
    });
    let per_task = after.saturating_sub(before) as f64 / TASKS as f64;
    println!("rss_before={before} rss_after={after} bytes_per_task={per_task:.1}");
}

/// Runs one child and reads its bytes per task.
fn measure(variant: &str) -> f64 {
    let exe = std::env::current_exe().expect("this binary's path");
    let output = Command::new(exe)
        .args(["--variant", variant])
        .output()
        .expect("run the measuring child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the {variant} child failed: {stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
        .split_whitespace()
        .find_map(|field| field.strip_prefix("bytes_per_task="))
        .and_then(|value| value.parse().ok())
        .expect("bytes_per_task in the child's output")
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|arg| arg == "--variant") {
        child(args.get(at + 1).map_or("", String::as_str));
        return;
    }
    let options = common::Args::parse();
    if options.list {
        println!("in_flight_memory: bench");
        return;
    }

    common::wait_for_quiet(&options);
    let rounds = options.rounds(3);
    let mut crate_bytes = Vec::with_capacity(rounds);
    let mut bare_bytes = Vec::with_capacity(rounds);
    println!("in_flight_memory: {TASKS} tasks parked on a Notify, RSS delta per task");
    for round in 0..rounds {
        let order: [&str; 2] = if round % 2 == 0 {
            ["crate", "bare"]
        } else {
            ["bare", "crate"]
        };
        for variant in order {
            let bytes = measure(variant);
            println!("  round {} {variant:<5} {bytes:>8.1} bytes/task", round + 1);
            if variant == "crate" {
                crate_bytes.push(bytes);
            } else {
                bare_bytes.push(bytes);
            }
        }
    }
    let crate_median = common::median(&mut crate_bytes);
    let bare_median = common::median(&mut bare_bytes);
    let extra = crate_median - bare_median;
    println!();
    println!("==== in_flight_memory: crate / bare (tokio::spawn) ====");
    println!(
        "median RSS per parked task over {rounds} interleaved rounds: crate {crate_median:.1} B  bare {bare_median:.1} B  ratio {:.3}x  extra {extra:.1} B/task",
        crate_median / bare_median
    );
    println!(
        "goal <= {GOAL_EXTRA_BYTES} extra bytes per task: {}",
        if extra <= GOAL_EXTRA_BYTES {
            "MET"
        } else {
            "NOT MET"
        }
    );
    common::print_command("in_flight_memory");
}
