//! Durable throughput: this crate's durable tasks against River's Rust client
//! (`riverqueue`, the engine they run on) used directly, with the same
//! settings, on SQLite and Postgres. One measurement per process: the
//! harness `bench/durable.sh` runs each configuration several times,
//! interleaved, and prints the medians.
//!
//! ```sh
//! bench_durable <side> <backend> <mode> [N]
//!   side     crate           DurableStore::from_*_pool(pool built here) + Background
//!            river           riverqueue::Client on a pool built here, the same settings
//!            river-wrapped   as river, with the crate's stored form of the job
//!                            (`{"task": {..}}`, decoded in the worker): a diagnostic
//!                            that tells the crate's code from its job format
//!            crate-defaults  DurableStore::sqlite(path) / DurableStore::postgres(url), untouched
//!   backend  sqlite          a fresh file in $BENCH_DURABLE_DIR (default: the temp dir)
//!            pg              a fresh database (CREATE DATABASE) on $AXUM_BACKGROUND_PG_URL
//!   mode     enqueue         N single inserts from 32 concurrent callers, no workers
//!            batch           N inserts in chunks of 1,000 from one caller, no workers
//!            e2e             16 workers running; N single inserts from 32 callers;
//!                            timed from the first insert to the last job's completion
//!   N        default 5000
//! ```
//!
//! The settings both sides share are the crate's defaults (`src/durable/store.rs`,
//! `worker.rs`): queue `axum-background`, 16 workers, fetch cooldown 2 ms, fetch
//! poll interval 1 s, job timeout and rescue after 5 min + 5 s, rescuer every 5 s,
//! leader election every 2 s, 10 attempts per job; SQLite: 8 connections, WAL,
//! `synchronous = FULL`, 10 s busy timeout; Postgres: 20 connections.
//!
//! A job counts its own completion (an atomic and a `Notify`, the same code on
//! both sides): nothing polls the database in the timed path.
//!
//! Prints one line, `RESULT {json}`: the rate (and, for `e2e`, the rate of the
//! inserts alone), the process's CPU time per job (user and system too) and
//! context switches per job, Postgres's CPU time per job (its processes, read
//! from `/proc`), how busy the machine was during the timed window, and, on
//! Postgres, the fresh database's transactions and rows returned per job
//! (`pg_stat_database`, read after the run).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum_background::durable::{DurableStore, DurableTask};
use axum_background::{Background, BackgroundTask, BoxError, mode};
use cpu_time::ProcessTime;
use riverqueue::{
    Client, InsertOpts, Job, JobArgs, MaintenanceConfig, QueueConfig, RunHandle, WorkContext,
    WorkOutcome, Workers,
};
use serde::{Deserialize, Serialize};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::Notify;
use tokio::task::JoinSet;

// The crate's defaults, which both sides use.
const QUEUE: &str = "axum-background";
const WORKERS: usize = 16;
const FETCH_COOLDOWN: Duration = Duration::from_millis(2);
const POLL_INTERVAL: Duration = Duration::from_secs(1);
/// The default task timeout (5 min) and the engine's margin (5 s).
const RESCUE_AFTER: Duration = Duration::from_secs(5 * 60 + 5);
const RESCUE_CHECK: Duration = Duration::from_secs(5);
const ELECT_INTERVAL: Duration = Duration::from_secs(2);
/// Five runs (the default retry policy) and five rescues.
const MAX_ATTEMPTS: i32 = 10;
const SQLITE_CONNECTIONS: u32 = 8;
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);
const PG_CONNECTIONS: u32 = 20;

// The workload.
const CALLERS: usize = 32;
const CHUNK: usize = 1_000;
/// Time for the workers to start (their first fetch, `LISTEN`) before the
/// timed window.
const SETTLE: Duration = Duration::from_millis(500);

/// A trivial job: the same type is a durable task of this crate and a job of
/// River's (the crate stores it as `{"task": {"n": ..}}`, River as `{"n": ..}`).
#[derive(Serialize, Deserialize)]
struct Trivial {
    n: u64,
}

impl BackgroundTask for Trivial {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        job_ran();
        Ok(())
    }
}

impl DurableTask for Trivial {
    const NAME: &'static str = "bench_trivial";
}

impl JobArgs for Trivial {
    const KIND: &'static str = "bench_trivial";
}

async fn river_work(_: WorkContext, _: Job<Trivial>) -> Result<WorkOutcome, BoxError> {
    job_ran();
    Ok(WorkOutcome::Complete)
}

/// The crate's stored form of a job (`src/durable/worker.rs`, `Stored<T>`),
/// for River used directly: the task's fields as raw JSON under `task`.
#[derive(Serialize, Deserialize)]
struct Wrapped {
    task: Box<serde_json::value::RawValue>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    unique: Option<String>,
}

impl Wrapped {
    fn new(n: u64) -> Result<Self, BoxError> {
        Ok(Wrapped {
            task: serde_json::value::to_raw_value(&Trivial { n })?,
            unique: None,
        })
    }
}

impl JobArgs for Wrapped {
    const KIND: &'static str = "bench_trivial";

    fn unique_fields() -> &'static [&'static [&'static str]] {
        &[&["unique"]]
    }
}

async fn river_work_wrapped(_: WorkContext, job: Job<Wrapped>) -> Result<WorkOutcome, BoxError> {
    let task: Trivial = serde_json::from_str(job.args.task.get())?;
    task.run().await?;
    Ok(WorkOutcome::Complete)
}

static RAN: AtomicUsize = AtomicUsize::new(0);
static TARGET: AtomicUsize = AtomicUsize::new(usize::MAX);
static ALL_RAN: Notify = Notify::const_new();

/// Counts a job's run; the last one wakes the timer.
fn job_ran() {
    if RAN.fetch_add(1, Ordering::Relaxed) + 1 == TARGET.load(Ordering::Relaxed) {
        ALL_RAN.notify_one();
    }
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum SideKind {
    Crate,
    River,
    RiverWrapped,
    CrateDefaults,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Enqueue,
    Batch,
    EndToEnd,
}

#[derive(Clone)]
enum Pool {
    Sqlite(SqlitePool),
    Postgres(PgPool),
}

impl Pool {
    async fn close(&self) {
        match self {
            Pool::Sqlite(pool) => pool.close().await,
            Pool::Postgres(pool) => pool.close().await,
        }
    }
}

/// What was made for this measurement, to remove afterwards.
enum Fresh {
    File(PathBuf),
    Database { admin_url: String, name: String },
}

impl Fresh {
    /// Postgres's own counts for the fresh database, once its connections
    /// have closed (`pg_stat_database`: transactions, rows returned); not
    /// River's tables. Setup is included (a few dozen transactions).
    async fn database_stats(&self) -> Option<(i64, i64)> {
        let Fresh::Database { admin_url, name } = self else {
            return None;
        };
        let admin = PgPool::connect(admin_url).await.ok()?;
        // Closed backends report their counts as they exit.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let stats: Option<(i64, i64)> = sqlx::query_as(
            "SELECT xact_commit + xact_rollback, tup_returned FROM pg_stat_database WHERE datname = $1",
        )
        .bind(name)
        .fetch_optional(&admin)
        .await
        .ok()
        .flatten();
        admin.close().await;
        stats
    }

    async fn remove(&self) {
        match self {
            Fresh::File(path) => {
                for suffix in ["", "-wal", "-shm"] {
                    let mut file = path.clone().into_os_string();
                    file.push(suffix);
                    let _ = std::fs::remove_file(file);
                }
            }
            Fresh::Database { admin_url, name } => {
                if let Ok(admin) = PgPool::connect(admin_url).await {
                    let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    let _ = sqlx::query(sqlx::AssertSqlSafe(drop)).execute(&admin).await;
                    admin.close().await;
                }
            }
        }
    }

    /// The URL or path of the fresh store.
    fn location(&self) -> String {
        match self {
            Fresh::File(path) => path.display().to_string(),
            Fresh::Database { admin_url, name } => {
                let (base, _) = admin_url
                    .rsplit_once('/')
                    .expect("a URL ending in /<database>");
                format!("{base}/{name}")
            }
        }
    }
}

async fn fresh(backend: &str, label: &str) -> Result<Fresh, BoxError> {
    let tag = format!(
        "{label}_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis()
    );
    match backend {
        "sqlite" => {
            let dir = std::env::var_os("BENCH_DURABLE_DIR")
                .map_or_else(std::env::temp_dir, PathBuf::from);
            Ok(Fresh::File(dir.join(format!("bench_durable_{tag}.db"))))
        }
        "pg" => {
            let admin_url = std::env::var("AXUM_BACKGROUND_PG_URL").map_err(|_| {
                "AXUM_BACKGROUND_PG_URL is not set (export AXUM_BACKGROUND_PG_URL=\"$(.ci/postgres.sh | tail -n1)\")"
            })?;
            let name = format!("bench_durable_{tag}").replace('-', "_");
            let admin = PgPool::connect(&admin_url).await?;
            let create = format!("CREATE DATABASE {name}");
            sqlx::query(sqlx::AssertSqlSafe(create))
                .execute(&admin)
                .await?;
            admin.close().await;
            Ok(Fresh::Database { admin_url, name })
        }
        other => Err(format!("unknown backend {other:?}: sqlite or pg").into()),
    }
}

/// The pool both sides use: the crate's own settings, built here.
async fn pool(fresh: &Fresh) -> Result<Pool, BoxError> {
    match fresh {
        Fresh::File(path) => {
            let options = SqliteConnectOptions::new()
                .filename(path)
                .create_if_missing(true)
                .journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(SQLITE_BUSY_TIMEOUT);
            let pool = SqlitePoolOptions::new()
                .max_connections(SQLITE_CONNECTIONS)
                .connect_with(options)
                .await?;
            Ok(Pool::Sqlite(pool))
        }
        Fresh::Database { .. } => {
            let pool = PgPoolOptions::new()
                .max_connections(PG_CONNECTIONS)
                .connect(&fresh.location())
                .await?;
            Ok(Pool::Postgres(pool))
        }
    }
}

/// One side, set up and (for `e2e`) working.
enum Side {
    Crate {
        background: Background,
        pool: Option<Pool>,
    },
    River {
        client: Client,
        run: Option<RunHandle>,
        pool: Pool,
        wrapped: bool,
    },
}

/// River's insert options, as the crate writes them for a task with the
/// default retry policy.
fn river_opts() -> InsertOpts {
    InsertOpts::default()
        .with_queue(QUEUE)
        .with_max_attempts(MAX_ATTEMPTS)
}

impl Side {
    async fn open(kind: SideKind, fresh: &Fresh, workers: bool) -> Result<Side, BoxError> {
        match kind {
            SideKind::Crate | SideKind::CrateDefaults => {
                let (store, pool) = if kind == SideKind::CrateDefaults {
                    let store = match fresh {
                        Fresh::File(path) => DurableStore::sqlite(path).await?,
                        Fresh::Database { .. } => DurableStore::postgres(&fresh.location()).await?,
                    };
                    (store, None)
                } else {
                    let pool = pool(fresh).await?;
                    let store = match &pool {
                        Pool::Sqlite(pool) => DurableStore::from_sqlite_pool(pool.clone()).await?,
                        Pool::Postgres(pool) => {
                            DurableStore::from_postgres_pool(pool.clone()).await?
                        }
                    };
                    (store, Some(pool))
                };
                let store = if workers {
                    store
                } else {
                    store.without_workers()
                };
                // Built inside the runtime: the workers (if any) start now.
                let background = Background::builder()
                    .durable(store)
                    .register::<Trivial>()
                    .build();
                Ok(Side::Crate { background, pool })
            }
            SideKind::River | SideKind::RiverWrapped => {
                let wrapped = kind == SideKind::RiverWrapped;
                let pool = pool(fresh).await?;
                let maintenance = MaintenanceConfig::default()
                    .with_rescue_after(RESCUE_AFTER)
                    .with_rescuer_interval(RESCUE_CHECK)
                    .with_elect_interval(ELECT_INTERVAL);
                let mut builder = match &pool {
                    Pool::Sqlite(pool) => {
                        riverqueue::migrate::SqliteMigrator::new(pool.clone())
                            .migrate_up()
                            .await?;
                        Client::builder(pool.clone())
                    }
                    Pool::Postgres(pool) => {
                        riverqueue::migrate::PostgresMigrator::new(pool.clone())
                            .migrate_up()
                            .await?;
                        Client::builder(pool.clone())
                    }
                };
                builder = builder
                    .fetch_cooldown(FETCH_COOLDOWN)
                    .job_timeout(RESCUE_AFTER)
                    .maintenance(maintenance);
                if workers {
                    let mut registered = Workers::new();
                    if wrapped {
                        registered.add_fn(river_work_wrapped)?;
                    } else {
                        registered.add_fn(river_work)?;
                    }
                    builder = builder
                        .queue(
                            QUEUE,
                            QueueConfig::new(WORKERS).with_fetch_poll_interval(POLL_INTERVAL),
                        )
                        .workers(registered);
                }
                let client = builder.build()?;
                let run = if workers { Some(client.start()?) } else { None };
                Ok(Side::River {
                    client,
                    run,
                    pool,
                    wrapped,
                })
            }
        }
    }

    async fn insert_one(&self, n: u64) -> Result<(), BoxError> {
        match self {
            Side::Crate { background, .. } => {
                background.durable().schedule(Trivial { n }).await?;
            }
            Side::River {
                client,
                wrapped: false,
                ..
            } => {
                client.insert(Trivial { n }).opts(river_opts()).await?;
            }
            Side::River {
                client,
                wrapped: true,
                ..
            } => {
                client.insert(Wrapped::new(n)?).opts(river_opts()).await?;
            }
        }
        Ok(())
    }

    async fn insert_chunk(&self, ns: std::ops::Range<u64>) -> Result<(), BoxError> {
        match self {
            Side::Crate { background, .. } => {
                background
                    .durable()
                    .schedule_many(ns.map(|n| Trivial { n }))
                    .await?;
            }
            Side::River {
                client,
                wrapped: false,
                ..
            } => {
                client
                    .insert_many(ns.map(|n| (Trivial { n }, river_opts())))
                    .await?;
            }
            Side::River {
                client,
                wrapped: true,
                ..
            } => {
                let jobs = ns
                    .map(|n| Ok((Wrapped::new(n)?, river_opts())))
                    .collect::<Result<Vec<_>, BoxError>>()?;
                client.insert_many(jobs).await?;
            }
        }
        Ok(())
    }

    async fn close(self) {
        match self {
            Side::Crate { background, pool } => {
                let report = background.shutdown(Duration::from_secs(5)).await;
                drop(report);
                if let Some(pool) = pool {
                    pool.close().await;
                }
            }
            Side::River {
                client, run, pool, ..
            } => {
                if let Some(mut run) = run {
                    let _ = tokio::time::timeout(Duration::from_secs(5), run.stop()).await;
                }
                drop(client);
                pool.close().await;
            }
        }
    }
}

/// `n` single inserts from `CALLERS` concurrent tasks.
async fn insert_singly(side: Arc<Side>, n: usize) -> Result<(), BoxError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut callers = JoinSet::new();
    for _ in 0..CALLERS {
        let (side, next) = (side.clone(), next.clone());
        callers.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, BoxError>(());
                }
                side.insert_one(i as u64).await?;
            }
        });
    }
    while let Some(result) = callers.join_next().await {
        result??;
    }
    Ok(())
}

async fn insert_batches(side: &Side, n: usize) -> Result<(), BoxError> {
    for start in (0..n).step_by(CHUNK) {
        side.insert_chunk(start as u64..(start + CHUNK).min(n) as u64)
            .await?;
    }
    Ok(())
}

/// CPU jiffies of the whole machine (busy, total) and of Postgres's processes.
#[derive(Clone, Copy, Default)]
struct Machine {
    busy: u64,
    total: u64,
    postgres: u64,
}

/// This process's user and system CPU time (jiffies, all its threads, from
/// `/proc/self/stat`) and its threads' context switches (voluntary and not,
/// summed over `/proc/self/task/*/status`: threads that ended are missed).
#[derive(Clone, Copy, Default)]
struct Process {
    user: u64,
    system: u64,
    switches: u64,
}

fn process() -> Process {
    let mut sample = Process::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/self/stat")
        && let Some((_, rest)) = stat.rsplit_once(") ")
    {
        let fields: Vec<&str> = rest.split_whitespace().collect();
        sample.user = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
        sample.system = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
    }
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            let Ok(status) = std::fs::read_to_string(task.path().join("status")) else {
                continue;
            };
            for line in status.lines() {
                if let Some(count) = line
                    .strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
                {
                    sample.switches += count.trim().parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    sample
}

fn machine() -> Machine {
    let mut sample = Machine::default();
    if let Ok(stat) = std::fs::read_to_string("/proc/stat")
        && let Some(cpu) = stat.lines().next()
    {
        let fields: Vec<u64> = cpu
            .split_whitespace()
            .skip(1)
            .filter_map(|f| f.parse().ok())
            .collect();
        // user nice system idle iowait irq softirq steal ...
        let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
        sample.total = fields.iter().take(8).sum();
        sample.busy = sample.total - idle;
    }
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let name = entry.file_name();
            if !name.to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                continue;
            }
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            let Some((comm, rest)) = stat.split_once(") ") else {
                continue;
            };
            if !comm.ends_with("(postgres") {
                continue;
            }
            // After the comm: state is field 3; utime and stime are 14 and 15.
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0);
            let stime: u64 = fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
            sample.postgres += utime + stime;
        }
    }
    sample
}

fn main() -> Result<(), BoxError> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: bench_durable <crate|river|river-wrapped|crate-defaults> <sqlite|pg> <enqueue|batch|e2e> [N]";
    if args.len() < 3 {
        return Err(usage.into());
    }
    let side = match args[0].as_str() {
        "crate" => SideKind::Crate,
        "river" => SideKind::River,
        "river-wrapped" => SideKind::RiverWrapped,
        "crate-defaults" => SideKind::CrateDefaults,
        _ => return Err(usage.into()),
    };
    let backend = args[1].clone();
    let mode = match args[2].as_str() {
        "enqueue" => Mode::Enqueue,
        "batch" => Mode::Batch,
        "e2e" => Mode::EndToEnd,
        _ => return Err(usage.into()),
    };
    let n: usize = match args.get(3) {
        Some(n) => n.parse()?,
        None => 5_000,
    };
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_writer(std::io::stderr)
        .init();
    // Two worker threads on this machine's two cores (tokio's default).
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(measure(side, &backend, mode, n))
}

async fn measure(kind: SideKind, backend: &str, mode: Mode, n: usize) -> Result<(), BoxError> {
    let label = format!("{kind:?}_{mode:?}").to_lowercase();
    let fresh = fresh(backend, &label).await?;
    let result = async {
        let workers = mode == Mode::EndToEnd;
        let side = Arc::new(Side::open(kind, &fresh, workers).await?);
        if workers {
            tokio::time::sleep(SETTLE).await;
        }
        TARGET.store(n, Ordering::Relaxed);
        let (machine0, process0) = (machine(), process());
        let (cpu0, t0) = (ProcessTime::now(), Instant::now());
        let mut inserted = None;
        match mode {
            Mode::Enqueue => insert_singly(side.clone(), n).await?,
            Mode::Batch => insert_batches(&side, n).await?,
            Mode::EndToEnd => {
                let inserting = tokio::spawn(insert_singly(side.clone(), n));
                let all_ran = ALL_RAN.notified();
                tokio::pin!(all_ran);
                all_ran.as_mut().enable();
                inserting.await??;
                inserted = Some(t0.elapsed());
                tokio::time::timeout(Duration::from_secs(120), all_ran)
                    .await
                    .map_err(|_| {
                        format!(
                            "only {} of {n} jobs ran in 120 s",
                            RAN.load(Ordering::Relaxed)
                        )
                    })?;
            }
        }
        let (secs, cpu) = (t0.elapsed(), cpu0.elapsed());
        let (machine1, process1) = (machine(), process());
        // Jobs run twice would show here (at least once); none are expected.
        let ran = RAN.load(Ordering::Relaxed);
        let side = Arc::into_inner(side).ok_or("callers still hold the side")?;
        side.close().await;
        let database = fresh.database_stats().await;
        let total = (machine1.total - machine0.total).max(1) as f64;
        let busy_pct = 100.0 * (machine1.busy - machine0.busy) as f64 / total;
        let postgres_pct = 100.0 * (machine1.postgres - machine0.postgres) as f64 / total;
        // `total` counts both cores: our CPU as a share of the machine.
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        let own_pct = 100.0 * cpu.as_secs_f64() / (secs.as_secs_f64() * cores);
        let jiffy = 1.0 / 100.0; // USER_HZ
        let result = serde_json::json!({
            "side": match kind {
                SideKind::Crate => "crate",
                SideKind::River => "river",
                SideKind::RiverWrapped => "river-wrapped",
                SideKind::CrateDefaults => "crate-defaults",
            },
            "backend": backend,
            "mode": match mode { Mode::Enqueue => "enqueue", Mode::Batch => "batch", Mode::EndToEnd => "e2e" },
            "n": n,
            "secs": secs.as_secs_f64(),
            "rate": n as f64 / secs.as_secs_f64(),
            "insert_rate": inserted.map(|d| n as f64 / d.as_secs_f64()),
            "ran": ran,
            "cpu_us_per_job": cpu.as_secs_f64() * 1e6 / n as f64,
            "user_us_per_job": (process1.user - process0.user) as f64 * jiffy * 1e6 / n as f64,
            "sys_us_per_job": (process1.system - process0.system) as f64 * jiffy * 1e6 / n as f64,
            "switches_per_job": process1.switches.saturating_sub(process0.switches) as f64 / n as f64,
            "pg_cpu_us_per_job": (machine1.postgres - machine0.postgres) as f64 * jiffy * 1e6 / n as f64,
            "machine_busy_pct": busy_pct,
            "own_pct": own_pct,
            "postgres_pct": postgres_pct,
            "others_pct": (busy_pct - own_pct - postgres_pct).max(0.0),
            "pg_xacts_per_job": database.map(|(xacts, _)| xacts as f64 / n as f64),
            "pg_rows_returned_per_job": database.map(|(_, rows)| rows as f64 / n as f64),
        });
        Ok::<_, BoxError>(result)
    }
    .await;
    // Removed before printing: a closed stdout cannot leave a database behind.
    fresh.remove().await;
    println!("RESULT {}", result?);
    Ok(())
}
