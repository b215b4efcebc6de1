//! `scaling`: the cost per task of scheduling and completing a batch of
//! 20k trivial async tasks through `Background::schedule`, with N tasks
//! already parked in flight in the same `Background` (N = 1k, 10k, 100k,
//! 1M). The baseline is the same crate at N = 1k. Goal: flat within 10%
//! (every ratio at most 1.10x). Then `background.shutdown(grace)` with 1M
//! parked non-shielded tasks. Goal: under 1 s; the baseline, a tokio-util
//! `TaskTracker` whose tasks run under a `CancellationToken`, is timed in
//! the same run for the ratio.
//!
//! The parked tasks wait for a `CancellationToken` released at the end of
//! each visit, so `wait_idle` cannot tell when a batch is done: each trivial
//! task counts itself, the last one notifies, and the bench then waits until
//! the crate's `completed` counter has caught up.
//!
//! A visit of a size parks N tasks (not timed), runs one batch to warm up,
//! times 7 batches, then releases the parked tasks. 7 passes visit every
//! size, in an order rotated from one pass to the next, so that drift in the
//! machine's load hits every size alike. A size's figure is the median over
//! passes of its visits' medians; its ratio is the median over passes of
//! the ratio to N = 1k in the same pass. The same visits with bare
//! `tokio::spawn` (under a `TaskTracker`) tell the crate's growth from the
//! runtime's and the memory's. Criterion then measures the crate at each
//! size once, on a population parked once (secondary: no interleaving).
//!
//! Each of the 5 shutdown rounds schedules the 1M tasks and waits until every
//! one is parked (not timed), then times the shutdown alone, and fails unless
//! the report has every task cancelled.
//!
//! `cargo bench --bench scaling`

mod common;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use axum_background::{Background, Stats};
use criterion::{SamplingMode, Throughput};
use tokio::runtime::Runtime;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Tasks parked in flight while the batches run.
const SIZES: [u64; 4] = [1_000, 10_000, 100_000, 1_000_000];
/// The sizes under `--test`.
const TEST_SIZES: [u64; 2] = [1_000, 10_000];
/// Trivial tasks in one timed batch.
const BATCH: u64 = 20_000;
/// Timed batches in one visit of a size.
const BATCHES: usize = 7;
/// Passes over every size.
const PASSES: usize = 7;
/// The goal: every size at most this many times the cost at 1k.
const GOAL_RATIO: f64 = 1.10;

/// Parked tasks in the shutdown rounds.
const SHUTDOWN_TASKS: u64 = 1_000_000;
/// Parked tasks in the shutdown rounds under `--test`.
const TEST_SHUTDOWN_TASKS: u64 = 10_000;
/// Shutdown rounds (crate and baseline each).
const SHUTDOWN_ROUNDS: usize = 5;
/// The grace `shutdown` is given; no task should need it.
const GRACE: Duration = Duration::from_secs(5);
/// The absolute goal for the crate's shutdown of 1M parked tasks.
const GOAL_SHUTDOWN: Duration = Duration::from_secs(1);

/// Trivial tasks of the current batch that have run (one batch at a time).
static BATCH_DONE: AtomicU64 = AtomicU64::new(0);
/// Notified by the batch's last trivial task.
static BATCH_END: Notify = Notify::const_new();

/// A trivial task: counts itself; the batch's last one says so.
async fn trivial() {
    if BATCH_DONE.fetch_add(1, Ordering::AcqRel) + 1 == BATCH {
        BATCH_END.notify_one();
    }
}

/// What the parked tasks of one population share.
#[derive(Default)]
struct Gate {
    /// Tasks that have run up to their wait.
    parked: AtomicU64,
    /// Released at the end of a visit.
    release: CancellationToken,
}

/// A parked task: counts itself, then waits for the release.
async fn parked(gate: Arc<Gate>) {
    gate.parked.fetch_add(1, Ordering::Release);
    gate.release.cancelled().await;
}

/// A shutdown round's task: counts itself, then waits forever (until
/// cancelled).
async fn forever(gate: Arc<Gate>) {
    gate.parked.fetch_add(1, Ordering::Release);
    std::future::pending::<()>().await;
}

/// Waits until `n` tasks have counted themselves parked.
async fn all_parked(gate: &Gate, n: u64) {
    while gate.parked.load(Ordering::Acquire) < n {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Runs `future` in a task on a runtime worker (where a handler would
/// schedule from) and returns its output.
fn on_worker<F>(runtime: &Runtime, future: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    runtime.block_on(async move {
        tokio::spawn(future)
            .await
            .expect("the bench driver task panicked")
    })
}

/// Which side a population or a figure belongs to (also the index of its
/// figures in [`Passes`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// `Background::schedule`.
    Crate,
    /// Bare `tokio::spawn` under a `TaskTracker`.
    Bare,
}

/// N parked tasks in flight, and what runs the batches beside them.
struct Population {
    /// Where the parked tasks and the batches run.
    spawner: Spawner,
    /// What the parked tasks count themselves in and wait for.
    gate: Arc<Gate>,
    /// How many are parked.
    n: u64,
}

/// The crate's `Background` or the baseline's `TaskTracker`.
#[derive(Clone)]
enum Spawner {
    /// Schedules through `Background::schedule`.
    Crate(Background),
    /// Spawns with bare `tokio::spawn` under this tracker.
    Bare(TaskTracker),
}

impl Population {
    /// Schedules `n` parked tasks and waits until each has run up to its
    /// wait.
    async fn park(side: Side, n: u64) -> Population {
        let spawner = match side {
            Side::Crate => Spawner::Crate(Background::new()),
            Side::Bare => Spawner::Bare(TaskTracker::new()),
        };
        let gate = Arc::new(Gate::default());
        for _ in 0..n {
            let task = parked(Arc::clone(&gate));
            match &spawner {
                Spawner::Crate(background) => drop(background.schedule(task)),
                Spawner::Bare(tracker) => drop(tracker.spawn(task)),
            }
        }
        all_parked(&gate, n).await;
        Population { spawner, gate, n }
    }

    /// Releases the parked tasks and waits until every task has ended; for
    /// the crate, checks that each one completed (`batches` batches ran).
    async fn release(self, batches: Option<u64>) {
        self.gate.release.cancel();
        match self.spawner {
            Spawner::Crate(background) => {
                background.wait_idle().await;
                let stats: Stats = background.stats();
                assert_eq!(
                    stats.ended(),
                    stats.completed,
                    "every task of the crate should complete: {stats:?}"
                );
                if let Some(batches) = batches {
                    assert_eq!(
                        stats.completed,
                        self.n + batches * BATCH,
                        "tasks completed with {} parked",
                        self.n
                    );
                }
            }
            Spawner::Bare(tracker) => {
                tracker.close();
                tracker.wait().await;
            }
        }
    }
}

/// Schedules one batch of trivial tasks and waits until all have completed
/// (for the crate: until its `completed` counter says so); times the whole.
async fn batch(spawner: Spawner) -> common::Sample {
    BATCH_DONE.store(0, Ordering::Release);
    match spawner {
        Spawner::Crate(background) => {
            let done = background.stats().completed + BATCH;
            let meter = common::Meter::start();
            for _ in 0..BATCH {
                drop(background.schedule(trivial()));
            }
            BATCH_END.notified().await;
            // The last bodies have run; their bookkeeping may still be on
            // its way.
            while background.stats().completed < done {
                tokio::task::yield_now().await;
            }
            meter.stop()
        }
        Spawner::Bare(tracker) => {
            let meter = common::Meter::start();
            for _ in 0..BATCH {
                drop(tracker.spawn(trivial()));
            }
            BATCH_END.notified().await;
            meter.stop()
        }
    }
}

/// `batches` batches in a row, their samples summed.
async fn batches(spawner: Spawner, batches: u64) -> common::Sample {
    let mut total = common::Sample::default();
    for _ in 0..batches {
        total.add(batch(spawner.clone()).await);
    }
    total
}

/// One visit's figures per task: the medians over its timed batches.
#[derive(Debug, Clone, Copy)]
struct Visit {
    /// Wall time per task.
    wall_ns: f64,
    /// This process's CPU time per task.
    cpu_ns: f64,
    /// The visit's timed batches together, for the machine's load.
    total: common::Sample,
}

/// One visit of a size: park `n`, warm up, time `timed` batches, release.
async fn visit(side: Side, n: u64, timed: usize) -> Visit {
    let population = Population::park(side, n).await;
    batch(population.spawner.clone()).await;
    let mut samples = Vec::with_capacity(timed);
    for _ in 0..timed {
        samples.push(batch(population.spawner.clone()).await);
    }
    population.release(Some(timed as u64 + 1)).await;
    let per_task = |pick: fn(&common::Sample) -> Duration| {
        let mut values: Vec<f64> = samples
            .iter()
            .map(|sample| pick(sample).as_secs_f64() * 1e9 / BATCH as f64)
            .collect();
        common::median(&mut values)
    };
    let mut total = common::Sample::default();
    for sample in &samples {
        total.add(*sample);
    }
    Visit {
        wall_ns: per_task(|sample| sample.wall),
        cpu_ns: per_task(|sample| sample.cpu),
        total,
    }
}

/// Every visit of the passes, by side, size and pass.
struct Passes {
    /// The sizes visited, 1k first.
    sizes: Vec<u64>,
    /// Timed batches in each visit.
    timed: usize,
    /// `[side][size][pass]`, side 0 the crate and 1 the baseline.
    visits: [Vec<Vec<Visit>>; 2],
}

impl Passes {
    fn side(&self, side: Side) -> &[Vec<Visit>] {
        &self.visits[side as usize]
    }

    /// The median over passes of a size's figure.
    fn per_task(&self, side: Side, size: usize, pick: fn(&Visit) -> f64) -> f64 {
        let mut values: Vec<f64> = self.side(side)[size].iter().map(pick).collect();
        common::median(&mut values)
    }

    /// The median over passes of a size's figure over N = 1k's in the same
    /// pass.
    fn ratio(&self, side: Side, size: usize, pick: fn(&Visit) -> f64) -> f64 {
        let visits = self.side(side);
        let mut values: Vec<f64> = visits[size]
            .iter()
            .zip(&visits[0])
            .map(|(visit, base)| pick(visit) / pick(base))
            .collect();
        common::median(&mut values)
    }

    /// CPU used by the rest of the machine during the timed batches.
    fn other_load(&self) -> f64 {
        let mut total = common::Sample::default();
        for visit in self.visits.iter().flatten().flatten() {
            total.add(visit.total);
        }
        total.other_load()
    }
}

/// The passes: each visits every size in turn, crate and baseline, in an
/// order rotated from one pass to the next.
fn run_passes(runtime: &Runtime, sizes: &[u64], passes: usize, timed: usize) -> Passes {
    let mut result = Passes {
        sizes: sizes.to_vec(),
        timed,
        visits: [
            vec![Vec::with_capacity(passes); sizes.len()],
            vec![Vec::with_capacity(passes); sizes.len()],
        ],
    };
    for pass in 0..passes {
        let start = Instant::now();
        for step in 0..sizes.len() {
            let index = (pass + step) % sizes.len();
            let n = sizes[index];
            let order = if (pass + step) % 2 == 0 {
                [Side::Crate, Side::Bare]
            } else {
                [Side::Bare, Side::Crate]
            };
            for side in order {
                let visit = on_worker(runtime, visit(side, n, timed));
                result.visits[side as usize][index].push(visit);
            }
        }
        let line: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(index, n)| {
                let last = |side: Side| result.side(side)[index][pass].wall_ns;
                format!(
                    "{} {:.0}/{:.0} ns",
                    size_name(*n),
                    last(Side::Crate),
                    last(Side::Bare)
                )
            })
            .collect();
        println!(
            "pass {}/{passes} ({:.1?}), wall per task crate/bare: {}",
            pass + 1,
            start.elapsed(),
            line.join(", ")
        );
    }
    result
}

/// Criterion's view of the crate alone: one group, a function per size,
/// each measured on a population parked once (secondary to the passes).
fn run_criterion(runtime: &Runtime, sizes: &[u64]) -> common::Sample {
    let meter = common::Meter::start();
    let mut criterion = common::criterion(Duration::from_millis(1500));
    {
        let mut group = criterion.benchmark_group("scaling");
        group.throughput(Throughput::Elements(BATCH));
        group.sampling_mode(SamplingMode::Flat);
        group.warm_up_time(Duration::from_millis(500));
        for &n in sizes {
            let population = on_worker(runtime, Population::park(Side::Crate, n));
            let spawner = population.spawner.clone();
            group.bench_function(n.to_string(), |b| {
                b.iter_custom(|iters| on_worker(runtime, batches(spawner.clone(), iters)).wall);
            });
            on_worker(runtime, population.release(None));
        }
        group.finish();
    }
    criterion.final_summary();
    meter.stop()
}

/// One crate shutdown round: park `n` tasks (not timed), then time
/// `shutdown(grace)` alone; panics unless every task was cancelled.
async fn crate_shutdown(n: u64) -> common::Sample {
    let background = Background::new();
    let gate = Arc::new(Gate::default());
    for _ in 0..n {
        drop(background.schedule(forever(Arc::clone(&gate))));
    }
    all_parked(&gate, n).await;

    let meter = common::Meter::start();
    let report = background.shutdown(GRACE).await;
    let sample = meter.stop();

    assert!(
        report.cancelled.len() as u64 == n
            && report.finished.is_empty()
            && report.overdue.is_empty(),
        "shutdown of {n} parked tasks should cancel every one: {} cancelled, {} finished, {} overdue",
        report.cancelled.len(),
        report.finished.len(),
        report.overdue.len()
    );
    sample
}

/// One baseline shutdown round: park `n` tasks under a `TaskTracker`, each
/// under a `CancellationToken` (not timed), then time cancel, close, wait.
async fn bare_shutdown(n: u64) -> common::Sample {
    let tracker = TaskTracker::new();
    let token = CancellationToken::new();
    let gate = Arc::new(Gate::default());
    for _ in 0..n {
        let token = token.clone();
        let task = forever(Arc::clone(&gate));
        drop(tracker.spawn(async move { token.run_until_cancelled(task).await }));
    }
    all_parked(&gate, n).await;

    let meter = common::Meter::start();
    token.cancel();
    tracker.close();
    let waited = tokio::time::timeout(GRACE, tracker.wait()).await;
    let sample = meter.stop();

    assert!(waited.is_ok(), "the baseline outlived its grace");
    sample
}

/// `1000` as `1k`, `1000000` as `1M`.
fn size_name(n: u64) -> String {
    if n >= 1_000_000 && n % 1_000_000 == 0 {
        format!("{}M", n / 1_000_000)
    } else if n >= 1_000 && n % 1_000 == 0 {
        format!("{}k", n / 1_000)
    } else {
        n.to_string()
    }
}

/// Prints the scaling table: per size, the crate's medians per task and
/// their ratios to 1k, criterion's, and the baseline's ratio.
fn print_scaling(passes: &Passes, since: SystemTime, criterion_phase: common::Sample) {
    let wall = |visit: &Visit| visit.wall_ns;
    let cpu = |visit: &Visit| visit.cpu_ns;
    let rounds = passes.side(Side::Crate)[0].len();
    println!();
    println!(
        "==== scaling: schedule + complete {BATCH} trivial tasks with N parked in flight (baseline: the crate at N = 1k) ===="
    );
    println!(
        "{rounds} passes, sizes in rotated order; a visit's figure is the median of {} timed batches; medians over passes",
        passes.timed
    );
    println!(
        "{:>6}  {:>10} {:>7}  {:>10} {:>7}  {:>8}  {:>10} {:>7}",
        "N", "wall/task", "ratio", "CPU/task", "ratio", "verdict", "bare wall", "ratio"
    );
    for (index, &n) in passes.sizes.iter().enumerate() {
        let wall_ratio = passes.ratio(Side::Crate, index, wall);
        let cpu_ratio = passes.ratio(Side::Crate, index, cpu);
        let verdict = common::verdict(wall_ratio.max(cpu_ratio), GOAL_RATIO);
        println!(
            "{:>6}  {:>10} {:>6.3}x  {:>10} {:>6.3}x  {:>8}  {:>10} {:>6.3}x",
            size_name(n),
            common::ns(passes.per_task(Side::Crate, index, wall)),
            wall_ratio,
            common::ns(passes.per_task(Side::Crate, index, cpu)),
            cpu_ratio,
            verdict,
            common::ns(passes.per_task(Side::Bare, index, wall)),
            passes.ratio(Side::Bare, index, wall),
        );
    }
    println!(
        "goal: every ratio (wall and CPU) <= {GOAL_RATIO}x; bare = tokio::spawn + TaskTracker at the same N, for comparison"
    );
    let criterion: Vec<String> = passes
        .sizes
        .iter()
        .map(|n| {
            common::criterion_median("scaling", &n.to_string(), since).map_or_else(
                || format!("{} n/a", size_name(*n)),
                |batch| format!("{} {}", size_name(*n), common::ns(batch / BATCH as f64)),
            )
        })
        .collect();
    println!(
        "  criterion, one stretch per size (not interleaved, secondary), wall per task: {}",
        criterion.join(", ")
    );
    println!(
        "  rest of the machine: {:.0}% of its CPU during the passes, {:.0}% during criterion",
        passes.other_load() * 100.0,
        criterion_phase.other_load() * 100.0
    );
}

/// Prints the shutdown rounds: medians, their ratio, the absolute goal.
fn print_shutdown(paired: &common::Paired, tasks: u64) {
    let median_ms = |samples: &[common::Sample]| {
        let mut values: Vec<f64> = samples
            .iter()
            .map(|sample| sample.wall.as_secs_f64() * 1e3)
            .collect();
        common::median(&mut values)
    };
    let crate_ms = median_ms(&paired.crate_samples);
    let bare_ms = median_ms(&paired.bare_samples);
    let mut ratios: Vec<f64> = paired
        .crate_samples
        .iter()
        .zip(&paired.bare_samples)
        .map(|(c, b)| c.wall.as_secs_f64() / b.wall.as_secs_f64())
        .collect();
    let round_ratio = common::median(&mut ratios);
    println!();
    println!(
        "==== shutdown of {} parked non-shielded tasks (baseline: TaskTracker close + CancellationToken) ====",
        size_name(tasks)
    );
    println!(
        "{} interleaved rounds, medians: crate {crate_ms:.1} ms  bare {bare_ms:.1} ms  ratio {:.3}x  (median of per-round ratios {round_ratio:.3}x)",
        paired.crate_samples.len(),
        crate_ms / bare_ms
    );
    println!("  every task cancelled in every crate round (checked)");
    let verdict = if tasks != SHUTDOWN_TASKS {
        "n/a (the goal is for 1M tasks)"
    } else if crate_ms < GOAL_SHUTDOWN.as_secs_f64() * 1e3 {
        "MET"
    } else {
        "NOT MET"
    };
    println!("goal: crate shutdown of 1M under {GOAL_SHUTDOWN:?}: {verdict} ({crate_ms:.1} ms)");
}

fn main() {
    let args = common::Args::parse();
    let since = SystemTime::now();
    let sizes: &[u64] = if args.test { &TEST_SIZES } else { &SIZES };
    if args.list {
        for n in sizes {
            println!("scaling/{n}: benchmark");
        }
        return;
    }
    let runtime = common::runtime();
    let timed = if args.test { 1 } else { BATCHES };
    let shutdown_tasks = if args.test {
        TEST_SHUTDOWN_TASKS
    } else {
        SHUTDOWN_TASKS
    };

    common::wait_for_quiet(&args);
    let passes = run_passes(&runtime, sizes, args.rounds(PASSES), timed);
    let criterion_phase = run_criterion(&runtime, sizes);

    common::wait_for_quiet(&args);
    let paired = common::paired(
        args.rounds(SHUTDOWN_ROUNDS),
        1,
        || on_worker(&runtime, crate_shutdown(shutdown_tasks)),
        || on_worker(&runtime, bare_shutdown(shutdown_tasks)),
    );

    print_scaling(&passes, since, criterion_phase);
    print_shutdown(&paired, shutdown_tasks);
    common::print_command("scaling");
}
