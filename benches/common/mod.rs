//! Shared by the benches: the runtime, the meters (wall, process CPU, the
//! rest of the machine), the paired interleaved rounds, criterion's medians,
//! and the closing ratio summary each bench prints.
//!
//! The protocol is `/work/shared/BENCH.md`'s: every figure is a ratio against
//! a baseline measured in the same run. Criterion measures each variant in
//! turn; the paired rounds then measure them interleaved (A B, B A, ...) and
//! also record process CPU time, which moves less than wall time when other
//! tenants load the machine.

#![allow(dead_code)] // each bench uses a part of this module

use std::future::Future;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use cpu_time::ProcessTime;
use criterion::Criterion;
use tokio::runtime::Runtime;

/// Runtime workers, as in BENCH.md (the machines have 2 cores).
pub(crate) const WORKERS: usize = 2;

/// The multi-thread runtime every bench runs on.
pub(crate) fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(WORKERS)
        .enable_all()
        .build()
        .expect("build the tokio runtime")
}

/// Criterion with the settings that keep a bench to seconds: 10 samples,
/// 1 s warm-up, 3 s measurement, no plots. Command-line flags still win.
pub(crate) fn criterion(measurement: Duration) -> Criterion {
    Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(measurement)
        .without_plots()
        .configure_from_args()
}

/// What the bench binary was asked to do, from its command line.
pub(crate) struct Args {
    /// `--list`: criterion lists the benches; nothing else runs.
    pub(crate) list: bool,
    /// `--test` (as `cargo bench -- --test`): one quick round of everything.
    pub(crate) test: bool,
}

impl Args {
    pub(crate) fn parse() -> Self {
        let args: Vec<String> = std::env::args().skip(1).collect();
        Args {
            list: args.iter().any(|a| a == "--list"),
            test: args.iter().any(|a| a == "--test"),
        }
    }

    /// `rounds` paired rounds, or one under `--test`.
    pub(crate) fn rounds(&self, rounds: usize) -> usize {
        if self.test { 1 } else { rounds }
    }
}

/// Waits (up to a minute) until the rest of the machine is quiet: at least
/// 85% of it idle over a second, as `bench/run.sh` does before each run.
/// Prints what it saw when it had to wait. Skipped under `--list` and `--test`.
pub(crate) fn wait_for_quiet(args: &Args) {
    if args.list || args.test {
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let before = MachineCpu::now();
        std::thread::sleep(Duration::from_secs(1));
        let after = MachineCpu::now();
        let total = after.total.saturating_sub(before.total).max(1) as f64;
        let idle = 1.0 - after.busy.saturating_sub(before.busy) as f64 / total;
        if idle >= 0.85 {
            return;
        }
        if Instant::now() >= deadline {
            println!(
                "machine still only {:.0}% idle after 60 s: measuring anyway",
                idle * 100.0
            );
            return;
        }
        println!(
            "machine only {:.0}% idle (other tenants): waiting",
            idle * 100.0
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// Machine-wide CPU time from the first line of `/proc/stat`, in ticks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct MachineCpu {
    /// Every state but idle and iowait.
    pub(crate) busy: u64,
    pub(crate) total: u64,
}

impl MachineCpu {
    pub(crate) fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        let fields: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .filter_map(|field| field.parse().ok())
            .collect();
        let total: u64 = fields.iter().take(8).sum();
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        MachineCpu {
            busy: total.saturating_sub(idle),
            total,
        }
    }
}

/// `/proc/stat` ticks per second (`getconf CLK_TCK`; 100 on Linux).
const TICKS_PER_SECOND: f64 = 100.0;

/// One measured stretch: wall time, this process's CPU time, and the
/// machine's CPU ticks over the same stretch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    pub(crate) wall: Duration,
    pub(crate) cpu: Duration,
    pub(crate) machine_busy: u64,
    pub(crate) machine_total: u64,
}

impl Sample {
    /// CPU used by the rest of the machine over this sample, as a share of
    /// the whole machine: machine busy time minus this process's CPU time.
    pub(crate) fn other_load(&self) -> f64 {
        if self.machine_total == 0 {
            return f64::NAN;
        }
        let others = self.machine_busy as f64 / TICKS_PER_SECOND - self.cpu.as_secs_f64();
        (others / (self.machine_total as f64 / TICKS_PER_SECOND)).clamp(0.0, 1.0)
    }

    pub(crate) fn add(&mut self, other: Sample) {
        self.wall += other.wall;
        self.cpu += other.cpu;
        self.machine_busy += other.machine_busy;
        self.machine_total += other.machine_total;
    }
}

/// Starts a [`Sample`].
pub(crate) struct Meter {
    machine: MachineCpu,
    cpu: ProcessTime,
    wall: Instant,
}

impl Meter {
    pub(crate) fn start() -> Self {
        let machine = MachineCpu::now();
        Meter {
            machine,
            cpu: ProcessTime::now(),
            wall: Instant::now(),
        }
    }

    pub(crate) fn stop(self) -> Sample {
        let wall = self.wall.elapsed();
        let cpu = self.cpu.elapsed();
        let machine = MachineCpu::now();
        Sample {
            wall,
            cpu,
            machine_busy: machine.busy.saturating_sub(self.machine.busy),
            machine_total: machine.total.saturating_sub(self.machine.total),
        }
    }
}

/// Runs `make()` to completion `units` times in a row, in a task spawned on
/// a runtime worker (as a request handler would schedule from), and measures
/// the whole stretch.
pub(crate) fn run_units<F, Fut>(runtime: &Runtime, units: u64, make: F) -> Sample
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    runtime.block_on(async move {
        tokio::spawn(async move {
            let meter = Meter::start();
            for _ in 0..units {
                make().await;
            }
            meter.stop()
        })
        .await
        .expect("the bench driver task panicked")
    })
}

/// Runs `make()` `units` times in a task on a runtime worker; each unit
/// measures its own timed part (set-up left out) and the parts are summed.
pub(crate) fn run_measured_units<F, Fut>(runtime: &Runtime, units: u64, make: F) -> Sample
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = Sample> + Send,
{
    runtime.block_on(async move {
        tokio::spawn(async move {
            let mut total = Sample::default();
            for _ in 0..units {
                total.add(make().await);
            }
            total
        })
        .await
        .expect("the bench driver task panicked")
    })
}

/// Runs both variants, alternately, for at least `at_least` before criterion
/// starts: the first variant criterion measures would otherwise be the one to
/// grow the heap, the blocking pool and the runtime's queues. Skipped under
/// `--list` and `--test`.
pub(crate) fn prewarm(
    args: &Args,
    at_least: Duration,
    mut crate_run: impl FnMut() -> Sample,
    mut bare_run: impl FnMut() -> Sample,
) {
    if args.list || args.test {
        return;
    }
    let start = Instant::now();
    while start.elapsed() < at_least {
        crate_run();
        bare_run();
    }
}

/// Interleaved rounds of the crate (A) and its baseline (B): A B, then B A,
/// and so on, so that drift in the machine's load hits both alike.
pub(crate) struct Paired {
    pub(crate) crate_samples: Vec<Sample>,
    pub(crate) bare_samples: Vec<Sample>,
    /// Units (tasks, requests, rounds) in each sample.
    pub(crate) units: u64,
}

pub(crate) fn paired(
    rounds: usize,
    units: u64,
    mut crate_run: impl FnMut() -> Sample,
    mut bare_run: impl FnMut() -> Sample,
) -> Paired {
    let mut paired = Paired {
        crate_samples: Vec::with_capacity(rounds),
        bare_samples: Vec::with_capacity(rounds),
        units,
    };
    for round in 0..rounds {
        if round % 2 == 0 {
            paired.crate_samples.push(crate_run());
            paired.bare_samples.push(bare_run());
        } else {
            paired.bare_samples.push(bare_run());
            paired.crate_samples.push(crate_run());
        }
    }
    paired
}

pub(crate) fn median(values: &mut [f64]) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

impl Paired {
    fn per_unit(&self, samples: &[Sample], pick: fn(&Sample) -> Duration) -> f64 {
        let mut values: Vec<f64> = samples
            .iter()
            .map(|s| pick(s).as_secs_f64() * 1e9 / self.units as f64)
            .collect();
        median(&mut values)
    }

    /// Median per-round ratio crate / bare of `pick`.
    fn round_ratio(&self, pick: fn(&Sample) -> Duration) -> f64 {
        let mut ratios: Vec<f64> = self
            .crate_samples
            .iter()
            .zip(&self.bare_samples)
            .map(|(c, b)| pick(c).as_secs_f64() / pick(b).as_secs_f64())
            .collect();
        median(&mut ratios)
    }

    /// CPU used by the rest of the machine during the rounds (see
    /// [`Sample::other_load`]).
    fn other_load(&self) -> f64 {
        let mut total = Sample::default();
        for sample in self.crate_samples.iter().chain(&self.bare_samples) {
            total.add(*sample);
        }
        total.other_load()
    }
}

/// Where criterion writes its estimates, resolved as criterion does.
fn criterion_home() -> Vec<PathBuf> {
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        candidates.push(PathBuf::from(home));
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        candidates.push(PathBuf::from(target).join("criterion"));
    }
    candidates.push(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/criterion"));
    candidates.push(PathBuf::from("target/criterion"));
    candidates
}

/// Criterion's median time per iteration (ns) of `group/function`, if this
/// run wrote one (an estimate older than `since` is someone else's).
pub(crate) fn criterion_median(group: &str, function: &str, since: SystemTime) -> Option<f64> {
    criterion_home().into_iter().find_map(|home| {
        let path = home.join(group).join(function).join("new/estimates.json");
        let fresh = std::fs::metadata(&path)
            .and_then(|meta| meta.modified())
            .is_ok_and(|modified| modified >= since);
        if !fresh {
            return None;
        }
        let json = std::fs::read_to_string(path).ok()?;
        // {"mean":{...},"median":{"confidence_interval":{...},"point_estimate":N,...},...}
        let median = &json[json.find("\"median\"")?..];
        let estimate = &median[median.find("\"point_estimate\":")? + "\"point_estimate\":".len()..];
        let end = estimate.find([',', '}'])?;
        estimate[..end].trim().parse().ok()
    })
}

/// What a bench's closing summary says.
pub(crate) struct Summary<'a> {
    /// The bench (and criterion group) name.
    pub(crate) bench: &'a str,
    /// What the baseline is.
    pub(crate) baseline: &'a str,
    /// One criterion iteration, in words ("a batch of 100000 tasks").
    pub(crate) iteration: &'a str,
    /// One paired unit, in words ("task", "request").
    pub(crate) unit: &'a str,
    /// The goal: crate / bare at most this.
    pub(crate) goal: f64,
    /// When the bench started (to tell this run's criterion estimates).
    pub(crate) since: SystemTime,
    /// The whole criterion stretch, for the machine's load during it.
    pub(crate) criterion_phase: Sample,
}

pub(crate) fn verdict(ratio: f64, goal: f64) -> &'static str {
    if ratio.is_nan() {
        "n/a"
    } else if ratio <= goal {
        "MET"
    } else {
        "NOT MET"
    }
}

/// Formats nanoseconds with a readable unit.
pub(crate) fn ns(value: f64) -> String {
    if value >= 1e9 {
        format!("{:.3} s", value / 1e9)
    } else if value >= 1e6 {
        format!("{:.2} ms", value / 1e6)
    } else if value >= 1e3 {
        format!("{:.2} µs", value / 1e3)
    } else {
        format!("{value:.1} ns")
    }
}

/// Prints the ratios crate / bare: criterion's medians, then the paired
/// rounds' wall and CPU medians, the rest of the machine's load, and the
/// command that produced them.
pub(crate) fn print_summary(summary: &Summary<'_>, paired: &Paired) {
    let Summary {
        bench,
        baseline,
        iteration,
        unit,
        goal,
        since,
        criterion_phase,
    } = *summary;
    println!();
    println!("==== {bench}: crate / bare ({baseline}) ====");
    let crate_median = criterion_median(bench, "crate", since);
    let bare_median = criterion_median(bench, "bare", since);
    let criterion_ratio = match (crate_median, bare_median) {
        (Some(c), Some(b)) => {
            let ratio = c / b;
            println!(
                "criterion median per iteration ({iteration}): crate {}  bare {}  ratio {ratio:.3}x",
                ns(c),
                ns(b)
            );
            ratio
        }
        _ => {
            println!("criterion medians: not found (filtered out, or --test)");
            f64::NAN
        }
    };
    println!(
        "  rest of the machine during criterion's measurements: {:.0}% of its CPU",
        criterion_phase.other_load() * 100.0
    );
    let wall = |s: &Sample| s.wall;
    let cpu = |s: &Sample| s.cpu;
    let rounds = paired.crate_samples.len();
    let (crate_wall, bare_wall) = (
        paired.per_unit(&paired.crate_samples, wall),
        paired.per_unit(&paired.bare_samples, wall),
    );
    let (crate_cpu, bare_cpu) = (
        paired.per_unit(&paired.crate_samples, cpu),
        paired.per_unit(&paired.bare_samples, cpu),
    );
    println!(
        "paired, {rounds} interleaved rounds of {} {unit}s, medians per {unit}:",
        paired.units
    );
    println!(
        "  wall         crate {:>10}  bare {:>10}  ratio {:.3}x  (median of per-round ratios {:.3}x)",
        ns(crate_wall),
        ns(bare_wall),
        crate_wall / bare_wall,
        paired.round_ratio(wall)
    );
    println!(
        "  process CPU  crate {:>10}  bare {:>10}  ratio {:.3}x  (median of per-round ratios {:.3}x)",
        ns(crate_cpu),
        ns(bare_cpu),
        crate_cpu / bare_cpu,
        paired.round_ratio(cpu)
    );
    println!(
        "  rest of the machine during the rounds: {:.0}% of its CPU",
        paired.other_load() * 100.0
    );
    println!(
        "goal <= {goal}x: criterion {} ({criterion_ratio:.3}x), paired wall {} ({:.3}x), paired CPU {} ({:.3}x)",
        verdict(criterion_ratio, goal),
        verdict(crate_wall / bare_wall, goal),
        crate_wall / bare_wall,
        verdict(crate_cpu / bare_cpu, goal),
        crate_cpu / bare_cpu,
    );
    print_command(bench);
}

/// The command that produced the figures.
pub(crate) fn print_command(bench: &str) {
    let extra: Vec<String> = std::env::args()
        .skip(1)
        .filter(|arg| arg != "--bench")
        .collect();
    if extra.is_empty() {
        println!("command: cargo bench --bench {bench}");
    } else {
        println!(
            "command: cargo bench --bench {bench} -- {}",
            extra.join(" ")
        );
    }
}

/// One crate-against-baseline comparison: what `compare` measures and prints.
pub(crate) struct Comparison<'a> {
    /// The bench (and criterion group) name.
    pub(crate) bench: &'a str,
    /// What the baseline is.
    pub(crate) baseline: &'a str,
    /// One criterion iteration, in words ("a batch of 100000 tasks").
    pub(crate) iteration: &'a str,
    /// One paired unit, in words ("task", "request").
    pub(crate) unit: &'a str,
    /// The goal: crate / bare at most this.
    pub(crate) goal: f64,
    /// Elements per criterion iteration, for criterion's throughput line.
    pub(crate) throughput: Option<u64>,
    /// Criterion iterations in one prewarm or paired sample.
    pub(crate) iterations_per_sample: u64,
    /// Units (tasks, requests) in one paired sample, for per-unit figures.
    pub(crate) units_per_sample: u64,
}

/// The whole protocol for a bench whose variants run `n` iterations on
/// demand: wait for a quiet machine, prewarm, criterion (each variant in
/// turn), then interleaved paired rounds, and the summary with the command.
pub(crate) fn compare(
    comparison: Comparison<'_>,
    crate_run: impl Fn(u64) -> Sample,
    bare_run: impl Fn(u64) -> Sample,
) {
    let args = Args::parse();
    let since = SystemTime::now();
    let per_sample = comparison.iterations_per_sample;
    wait_for_quiet(&args);
    prewarm(
        &args,
        Duration::from_secs(1),
        || crate_run(per_sample),
        || bare_run(per_sample),
    );

    let criterion_meter = Meter::start();
    let mut criterion = criterion(Duration::from_secs(3));
    {
        let mut group = criterion.benchmark_group(comparison.bench);
        if let Some(elements) = comparison.throughput {
            group.throughput(criterion::Throughput::Elements(elements));
        }
        group.bench_function("crate", |b| b.iter_custom(|iters| crate_run(iters).wall));
        group.bench_function("bare", |b| b.iter_custom(|iters| bare_run(iters).wall));
        group.finish();
    }
    criterion.final_summary();
    let criterion_phase = criterion_meter.stop();
    if args.list {
        return;
    }
    wait_for_quiet(&args);

    let paired = paired(
        args.rounds(15),
        comparison.units_per_sample,
        || crate_run(per_sample),
        || bare_run(per_sample),
    );
    print_summary(
        &Summary {
            bench: comparison.bench,
            baseline: comparison.baseline,
            iteration: comparison.iteration,
            unit: comparison.unit,
            goal: comparison.goal,
            since,
            criterion_phase,
        },
        &paired,
    );
}
