//! Durable tasks on real stores: SQLite always, Postgres when
//! `AXUM_BACKGROUND_PG_URL` is set (`.ci/run` starts one and sets it).
//!
//! Some tests run this test binary again as a child process (the
//! `child_process` entry point, ignored when run directly), so that a process
//! holding durable jobs can be killed for real.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use axum_background::durable::{DurableError, DurableStore, DurableTask};
use axum_background::handler::{IntoErrorHandler, SharedErrorHandler};
use axum_background::{
    Background, BackgroundTask, BoxError, RetryPolicy, TaskConfig, TaskError, TaskInfo, Tasks, mode,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tower::ServiceExt;

use util::{assert_settled, within};

/// What durable tasks did in this process, by test key.
static RUNS: LazyLock<Mutex<HashMap<String, Vec<u64>>>> = LazyLock::new(Default::default);
static RAN: LazyLock<Notify> = LazyLock::new(Notify::new);

fn record(key: &str, n: u64) {
    RUNS.lock()
        .unwrap()
        .entry(key.to_owned())
        .or_default()
        .push(n);
    RAN.notify_waiters();
}

fn runs(key: &str) -> Vec<u64> {
    RUNS.lock().unwrap().get(key).cloned().unwrap_or_default()
}

/// Waits (up to 30 s) until `key` has `count` runs recorded.
async fn wait_runs(key: &str, count: usize) -> Vec<u64> {
    let wait = async {
        loop {
            let notified = RAN.notified();
            let seen = runs(key);
            if seen.len() >= count {
                return seen;
            }
            notified.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("{key}: {count} runs not seen in 30 s: {:?}", runs(key)))
}

/// Records its number under its key: in this process's `RUNS`, or, in a
/// child process, appended to the file `DURABLE_OUT` names.
#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    n: u64,
}

impl BackgroundTask for Record {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        match std::env::var_os("DURABLE_OUT") {
            Some(path) => {
                let mut file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)?;
                // One write per line (O_APPEND): lines from concurrent tasks do not interleave.
                file.write_all(format!("{}\n", self.n).as_bytes())?;
            }
            None => record(&self.key, self.n),
        }
        Ok(())
    }
}

/// In a child process: says it is running, then never ends (the process is
/// killed). Elsewhere: records, like `Record`.
#[derive(Serialize, Deserialize)]
struct Stall {
    key: String,
}

impl BackgroundTask for Stall {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        if std::env::var_os("DURABLE_CHILD").is_some() {
            println!("RUNNING");
            std::io::stdout().flush()?;
            std::future::pending::<()>().await;
        }
        record(&self.key, 1);
        Ok(())
    }
}

impl DurableTask for Stall {
    const NAME: &'static str = "stall";
}

impl DurableTask for Record {
    const NAME: &'static str = "record";
}

/// Fails every time, counting its runs.
#[derive(Serialize, Deserialize)]
struct AlwaysFails {
    key: String,
}

impl BackgroundTask for AlwaysFails {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        record(&self.key, 0);
        Err("the mail server said no".into())
    }
}

impl DurableTask for AlwaysFails {
    const NAME: &'static str = "always_fails";
}

/// A sync (blocking-pool) durable task.
#[derive(Serialize, Deserialize)]
struct BlockingRecord {
    key: String,
    n: u64,
}

impl axum_background::BlockingTask for BlockingRecord {
    fn run(self) -> Result<(), BoxError> {
        record(&self.key, self.n);
        Ok(())
    }
}

impl DurableTask for BlockingRecord {
    const NAME: &'static str = "blocking_record";
}

/// Records its start, then waits for a permit of its key's gate.
#[derive(Serialize, Deserialize)]
struct Gated {
    key: String,
    n: u64,
}

static GATES: LazyLock<Mutex<HashMap<String, Arc<tokio::sync::Semaphore>>>> =
    LazyLock::new(Default::default);

fn gate(key: &str) -> Arc<tokio::sync::Semaphore> {
    let mut gates = GATES.lock().unwrap();
    Arc::clone(
        gates
            .entry(key.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(0))),
    )
}

impl BackgroundTask for Gated {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        record(&self.key, self.n);
        gate(&self.key).acquire().await?.forget();
        Ok(())
    }
}

impl DurableTask for Gated {
    const NAME: &'static str = "gated";
}

/// A fresh SQLite file in the target directory.
fn sqlite_path(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durable");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{test}.db"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    path
}

/// `POST /` to `app`; the response comes back with its body unread.
async fn post_root(app: Router) -> axum::response::Response {
    let request = http::Request::post("/")
        .body(axum::body::Body::empty())
        .unwrap();
    app.oneshot(request).await.unwrap()
}

/// What error handlers were given, in order: (task name, error).
type Reported = Arc<Mutex<Vec<(String, String)>>>;

/// A config whose error handler records into the list it comes with.
fn reporting() -> (SharedErrorHandler, Reported) {
    let reported = Reported::default();
    let handler = {
        let reported = Arc::clone(&reported);
        move |info: &TaskInfo, error: &TaskError| {
            reported
                .lock()
                .unwrap()
                .push((info.name.to_string(), error.to_string()));
        }
    };
    (handler.into_shared(), reported)
}

#[tokio::test]
async fn a_scheduled_task_runs_in_this_process_and_is_done_in_the_store() {
    let store = StoreSpec::sqlite("runs");
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .register::<BlockingRecord>()
        .build();
    let key = "runs";
    let id = background
        .durable()
        .schedule(Record {
            key: key.into(),
            n: 1,
        })
        .await
        .expect("written to the store");
    assert_eq!(id.as_str().len(), 26, "a ULID: {id}");
    background
        .durable()
        .schedule(BlockingRecord {
            key: key.into(),
            n: 2,
        })
        .await
        .unwrap();
    let mut seen = wait_runs(key, 2).await;
    seen.sort();
    assert_eq!(seen, [1, 2]);

    let report = within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    assert!(&report.overdue.is_empty(), "{report:?}");
    assert_settled(background.stats());
    assert_eq!(background.stats().completed, 2);
    assert_eq!(
        store.statuses().await,
        BTreeMap::from([("Done".to_owned(), 2)])
    );
}

#[tokio::test]
async fn the_phase_says_when_the_job_is_written() {
    let store = StoreSpec::sqlite("phases");
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .build();
    let handler_done = Arc::new(AtomicUsize::new(0));
    let app = Router::new()
        .route(
            "/",
            post({
                let handler_done = Arc::clone(&handler_done);
                move |tasks: Tasks| async move {
                    tasks
                        .durable()
                        .after_response()
                        .schedule(Record {
                            key: "phases".into(),
                            n: 7,
                        })
                        .await?;
                    handler_done.store(1, Ordering::SeqCst);
                    Ok::<_, DurableError>("ok")
                }
            }),
        )
        .layer(background.layer());
    let response = post_root(app).await;
    assert_eq!(response.status(), 200);
    // The body has not been read: the after-response phase has not come, and
    // the job is not in the store yet.
    assert_eq!(handler_done.load(Ordering::SeqCst), 1);
    assert_eq!(store.statuses().await, BTreeMap::new());
    drop(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    );
    assert_eq!(wait_runs("phases", 1).await, [7]);
}

#[tokio::test]
async fn a_failing_task_is_retried_then_reported_and_not_run_again() {
    let store = StoreSpec::sqlite("fails");
    let (reports, reported) = reporting();
    let config = TaskConfig::builder()
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(1)))
        .on_error(reports)
        .build();
    let background = Background::builder()
        .durable(store.open().await)
        .register_with::<AlwaysFails>(config)
        .build();
    background
        .durable()
        .schedule(AlwaysFails {
            key: "fails".into(),
        })
        .await
        .unwrap();
    wait_runs("fails", 3).await;
    within("the job's end", background.wait_idle()).await;
    let reported = reported.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].0, "always_fails");
    assert!(
        reported[0].1.contains("the mail server said no"),
        "{reported:?}"
    );

    // Given up, in the store too: no worker takes it again.
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    assert_eq!(
        store.statuses().await,
        BTreeMap::from([("Killed".to_owned(), 1)])
    );
    assert_eq!(runs("fails").len(), 3);
}

#[tokio::test]
async fn scheduling_needs_a_store_and_a_registered_type() {
    let background = Background::new();
    let error = background
        .durable()
        .schedule(Record {
            key: "none".into(),
            n: 0,
        })
        .await
        .unwrap_err();
    assert!(matches!(error, DurableError::NotConfigured), "{error}");
    assert!(error.to_string().contains(".durable(DurableStore::sqlite"));

    let background = Background::builder()
        .durable(StoreSpec::sqlite("unregistered").open().await)
        .build();
    let error = background
        .durable()
        .schedule(Record {
            key: "none".into(),
            n: 0,
        })
        .await
        .unwrap_err();
    assert!(
        matches!(error, DurableError::NotRegistered { name: "record" }),
        "{error}"
    );
    assert!(error.to_string().contains(".register::<YourTask>()"));
}

// ---------------------------------------------------------------------------
// Processes: killed and restarted; two workers sharing a Postgres queue.

/// Where a test's jobs live: `sqlite:<path>` or `postgres:<url>`, and a queue.
#[derive(Clone)]
struct StoreSpec {
    spec: String,
    queue: String,
}

impl StoreSpec {
    fn sqlite(test: &str) -> Self {
        StoreSpec {
            spec: format!("sqlite:{}", sqlite_path(test).display()),
            queue: test.to_owned(),
        }
    }

    /// `None` (with the reason printed) when no Postgres is configured; under
    /// CI a missing Postgres fails the test instead.
    fn postgres(test: &str) -> Option<Self> {
        match std::env::var("AXUM_BACKGROUND_PG_URL") {
            Ok(url) => Some(StoreSpec {
                spec: format!("postgres:{url}"),
                // A queue per run: earlier runs' jobs stay out of the way.
                queue: format!("{test}-{}-{}", std::process::id(), unique()),
            }),
            Err(_) if std::env::var_os("CI").is_some() => {
                panic!("CI is set but AXUM_BACKGROUND_PG_URL is not: run .ci/postgres.sh")
            }
            Err(_) => {
                eprintln!(
                    "skipped: AXUM_BACKGROUND_PG_URL is not set \
                     (export AXUM_BACKGROUND_PG_URL=\"$(.ci/postgres.sh | tail -n1)\")"
                );
                None
            }
        }
    }

    async fn open(&self) -> DurableStore {
        let store = match self.spec.split_once(':') {
            Some(("sqlite", path)) => DurableStore::sqlite(path).await,
            Some(("postgres", url)) => DurableStore::postgres(url).await,
            _ => panic!("bad store spec {}", self.spec),
        };
        store
            .expect("open the store")
            .queue(&self.queue)
            .poll_interval(Duration::from_millis(20))
            .heartbeat(Duration::from_secs(1), 1)
    }

    /// Jobs in this queue, by status.
    async fn statuses(&self) -> BTreeMap<String, i64> {
        match self.spec.split_once(':') {
            Some(("sqlite", path)) => {
                let pool = sqlx::SqlitePool::connect(&format!("sqlite://{path}"))
                    .await
                    .unwrap();
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT status, COUNT(*) FROM Jobs WHERE job_type = ? GROUP BY status",
                )
                .bind(&self.queue)
                .fetch_all(&pool)
                .await
                .unwrap();
                rows.into_iter().collect()
            }
            Some(("postgres", url)) => {
                let pool = sqlx::PgPool::connect(url).await.unwrap();
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT status, COUNT(*) FROM apalis.jobs WHERE job_type = $1 GROUP BY status",
                )
                .bind(&self.queue)
                .fetch_all(&pool)
                .await
                .unwrap();
                rows.into_iter().collect()
            }
            _ => unreachable!(),
        }
    }
}

fn unique() -> u64 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    u64::from(nanos) * 1000 + NEXT.fetch_add(1, Ordering::Relaxed) as u64
}

/// This test binary, run again as a child process in `role`.
struct ChildProcess {
    child: Child,
    lines: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ChildProcess {
    fn spawn(role: &str, store: &StoreSpec, out: Option<&Path>) -> Self {
        let mut command = Command::new(std::env::current_exe().unwrap());
        command
            .args(["child_process", "--exact", "--ignored", "--nocapture"])
            .env("DURABLE_CHILD", role)
            .env("DURABLE_STORE", &store.spec)
            .env("DURABLE_QUEUE", &store.queue)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        if let Some(out) = out {
            command.env("DURABLE_OUT", out);
        }
        let mut child = command.spawn().expect("spawn the child process");
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ChildProcess { child, lines }
    }

    /// Waits (up to 30 s) for a line of the child's output starting with `prefix`.
    async fn line(&mut self, prefix: &str) -> String {
        let wait = async {
            while let Some(line) = self.lines.recv().await {
                if line.starts_with(prefix) {
                    return line;
                }
            }
            panic!("the child process ended before printing {prefix:?}");
        };
        tokio::time::timeout(Duration::from_secs(30), wait)
            .await
            .unwrap_or_else(|_| panic!("no {prefix:?} from the child process in 30 s"))
    }

    /// SIGKILL: nothing in the child gets to run.
    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Asks the child to shut down gracefully (a line on its stdin).
    fn stop(&mut self) {
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"stop\n").unwrap();
        stdin.flush().unwrap();
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child process's side: what `role` says, on the store the parent named.
#[test]
#[ignore = "run by the other tests of this file as a child process"]
fn child_process() {
    let Ok(role) = std::env::var("DURABLE_CHILD") else {
        return;
    };
    let store = StoreSpec {
        spec: std::env::var("DURABLE_STORE").unwrap(),
        queue: std::env::var("DURABLE_QUEUE").unwrap(),
    };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        match role.as_str() {
            // A web process: writes a job, then dies before any worker ran it.
            "schedule" => {
                let background = Background::builder()
                    .durable(store.open().await.without_workers())
                    .register::<Record>()
                    .build();
                let id = background
                    .durable()
                    .schedule(Record {
                        key: store.queue.clone(),
                        n: 1,
                    })
                    .await
                    .unwrap();
                println!("SCHEDULED {id}");
                std::future::pending::<()>().await;
            }
            // A worker that takes a job and dies while running it.
            "stall" => {
                let background = Background::builder()
                    .durable(store.open().await)
                    .register::<Stall>()
                    .build();
                background
                    .durable()
                    .schedule(Stall {
                        key: store.queue.clone(),
                    })
                    .await
                    .unwrap();
                std::future::pending::<()>().await;
            }
            // A worker process: runs jobs until asked to stop on stdin.
            "work" => {
                let background = Background::builder()
                    .durable(store.open().await.concurrency(4))
                    .register::<Record>()
                    .build();
                println!("WORKING");
                let mut line = String::new();
                let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
                tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut line)
                    .await
                    .unwrap();
                let report = background.shutdown(Duration::from_secs(10)).await;
                println!(
                    "STOPPED completed={} overdue={}",
                    report.finished.len(),
                    report.overdue.len()
                );
            }
            other => panic!("unknown child role {other}"),
        }
    });
}

/// A job written by a process that was killed before any worker ran it is
/// run by the next process to start.
async fn killed_before_it_ran(store: StoreSpec) {
    let mut web = ChildProcess::spawn("schedule", &store, None);
    web.line("SCHEDULED").await;
    web.kill();
    assert_eq!(
        store.statuses().await,
        BTreeMap::from([("Pending".to_owned(), 1)])
    );
    restart_runs_the_job(&store).await;
}

/// The next process, with workers on `store`: runs its one job, and the store
/// says it is done.
async fn restart_runs_the_job(store: &StoreSpec) {
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .register::<Stall>()
        .build();
    assert_eq!(wait_runs(&store.queue, 1).await, [1]);
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    assert_eq!(
        store.statuses().await,
        BTreeMap::from([("Done".to_owned(), 1)])
    );
}

#[tokio::test]
async fn sqlite_a_job_outlives_a_process_killed_before_it_ran() {
    killed_before_it_ran(StoreSpec::sqlite("killed_before")).await;
}

#[tokio::test]
async fn postgres_a_job_outlives_a_process_killed_before_it_ran() {
    if let Some(store) = StoreSpec::postgres("killed_before") {
        killed_before_it_ran(store).await;
    }
}

/// A job whose worker process was killed while running it is run again by
/// another worker once the dead one's heartbeat has lapsed.
async fn killed_while_running(store: StoreSpec) {
    let mut worker = ChildProcess::spawn("stall", &store, None);
    worker.line("RUNNING").await;
    worker.kill();
    // Taken by the dead worker: `Queued` (locked) or `Running`, depending on
    // whether its lock event was written before it died.
    let statuses = store.statuses().await;
    assert!(
        statuses == BTreeMap::from([("Running".to_owned(), 1)])
            || statuses == BTreeMap::from([("Queued".to_owned(), 1)]),
        "{statuses:?}"
    );
    restart_runs_the_job(&store).await;
}

#[tokio::test]
async fn sqlite_a_job_outlives_a_worker_killed_while_running_it() {
    killed_while_running(StoreSpec::sqlite("killed_while")).await;
}

#[tokio::test]
async fn postgres_a_job_outlives_a_worker_killed_while_running_it() {
    if let Some(store) = StoreSpec::postgres("killed_while") {
        killed_while_running(store).await;
    }
}

#[tokio::test]
async fn postgres_two_worker_processes_share_a_thousand_jobs_each_run_once() {
    let Some(store) = StoreSpec::postgres("share") else {
        return;
    };
    const JOBS: u64 = 1000;
    // This process only schedules.
    let web = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Record>()
        .build();
    for n in 0..JOBS {
        web.durable()
            .schedule(Record {
                key: store.queue.clone(),
                n,
            })
            .await
            .unwrap();
    }

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durable");
    std::fs::create_dir_all(&dir).unwrap();
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("{}-worker{i}.txt", store.queue)))
        .collect();
    let mut workers: Vec<ChildProcess> = outs
        .iter()
        .map(|out| ChildProcess::spawn("work", &store, Some(out)))
        .collect();
    for worker in &mut workers {
        worker.line("WORKING").await;
    }

    // Wait for the store to say every job is done.
    let done = async {
        let mut poll = tokio::time::interval(Duration::from_millis(50));
        loop {
            poll.tick().await;
            let statuses = store.statuses().await;
            if statuses.get("Done") == Some(&(JOBS as i64)) {
                return statuses;
            }
        }
    };
    let statuses = tokio::time::timeout(Duration::from_secs(120), done)
        .await
        .unwrap_or_else(|_| panic!("not all done in 120 s"));
    assert_eq!(statuses.len(), 1, "{statuses:?}");

    // A clean stop of both workers.
    for worker in &mut workers {
        worker.stop();
        let stopped = worker.line("STOPPED").await;
        assert!(stopped.ends_with("overdue=0"), "{stopped}");
    }

    let per_worker: Vec<Vec<u64>> = outs
        .iter()
        .map(|out| {
            std::fs::read_to_string(out)
                .unwrap_or_default()
                .lines()
                .map(|line| line.parse().unwrap())
                .collect()
        })
        .collect();
    for (i, ran) in per_worker.iter().enumerate() {
        assert!(!ran.is_empty(), "worker {i} ran no job: {per_worker:?}");
    }
    let mut all: Vec<u64> = per_worker.concat();
    all.sort_unstable();
    assert_eq!(all.len() as u64, JOBS, "a job ran twice or was lost");
    assert_eq!(all, (0..JOBS).collect::<Vec<_>>());
    eprintln!(
        "jobs run per worker: {:?}",
        per_worker.iter().map(Vec::len).collect::<Vec<_>>()
    );
}

#[tokio::test]
async fn shutdown_lets_the_running_job_finish_and_leaves_the_rest_in_the_store() {
    let store = StoreSpec::sqlite("shutdown_finish");
    let key = store.queue.clone();
    let background = Background::builder()
        .durable(store.open().await.concurrency(1))
        .register::<Gated>()
        .build();
    for n in 0..5 {
        background
            .durable()
            .schedule(Gated {
                key: key.clone(),
                n,
            })
            .await
            .unwrap();
    }
    assert_eq!(wait_runs(&key, 1).await, [0]);

    let shutdown = tokio::spawn({
        let background = background.clone();
        async move { background.shutdown(Duration::from_secs(10)).await }
    });
    within("shutdown to begin", async {
        while !background.is_shutting_down() {
            tokio::task::yield_now().await;
        }
    })
    .await;
    gate(&key).add_permits(1);
    let report = within("shutdown", shutdown).await.unwrap();

    assert_eq!(report.finished.len(), 1, "{report:?}");
    assert_eq!(&report.finished[0].info.name, "gated");
    assert!(&report.overdue.is_empty(), "{report:?}");
    assert_eq!(runs(&key), [0], "no other job was started");
    assert_eq!(
        store.statuses().await,
        BTreeMap::from([("Done".to_owned(), 1), ("Pending".to_owned(), 4)])
    );
}

#[tokio::test]
async fn a_job_cut_off_by_the_grace_period_runs_again_on_the_next_start() {
    let store = StoreSpec::sqlite("shutdown_overdue");
    let key = store.queue.clone();
    let first = Background::builder()
        .durable(store.open().await)
        .register::<Gated>()
        .build();
    first
        .durable()
        .schedule(Gated {
            key: key.clone(),
            n: 1,
        })
        .await
        .unwrap();
    wait_runs(&key, 1).await;
    let report = within("shutdown", first.shutdown(Duration::from_millis(200))).await;
    assert_eq!(report.overdue.len(), 1, "{report:?}");
    assert_eq!(
        store.statuses().await,
        BTreeMap::from([("Failed".to_owned(), 1)]),
        "cut off, and left to be run again"
    );

    let second = Background::builder()
        .durable(store.open().await)
        .register::<Gated>()
        .build();
    gate(&key).add_permits(1);
    assert_eq!(wait_runs(&key, 2).await, [1, 1]);
    within("the job's end", second.wait_idle()).await;
    within("shutdown", second.shutdown(Duration::from_secs(5))).await;
    assert_eq!(
        store.statuses().await,
        BTreeMap::from([("Done".to_owned(), 1)])
    );
}

#[tokio::test]
async fn a_job_the_store_refuses_is_an_error_or_goes_to_the_error_handler() {
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        sqlite_path("refused").display()
    ))
    .await
    .unwrap();
    let store = DurableStore::from_sqlite_pool(pool.clone())
        .await
        .unwrap()
        .without_workers();
    let (reports, reported) = reporting();
    let config = TaskConfig::builder().on_error(reports).build();
    let background = Background::builder()
        .durable(store)
        .register_with::<Record>(config)
        .build();
    pool.close().await;

    // Now: the caller gets the error.
    let error = background
        .durable()
        .schedule(Record {
            key: "refused".into(),
            n: 1,
        })
        .await
        .unwrap_err();
    assert!(matches!(error, DurableError::Store(_)), "{error}");

    // In a later phase: the write fails then, and is reported.
    let app = Router::new()
        .route(
            "/",
            post(|tasks: Tasks| async move {
                tasks
                    .durable()
                    .after_response()
                    .schedule(Record {
                        key: "refused".into(),
                        n: 2,
                    })
                    .await
                    .map(|id| id.to_string())
            }),
        )
        .layer(background.layer());
    let response = post_root(app).await;
    assert_eq!(response.status(), 200);
    drop(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    );
    within("the enqueue to end", background.wait_idle()).await;
    let reported = reported.lock().unwrap().clone();
    assert_eq!(reported.len(), 1, "{reported:?}");
    assert_eq!(reported[0].0, "record:enqueue");
    assert!(
        reported[0].1.contains("durable store error"),
        "{reported:?}"
    );
    assert_eq!(background.stats().failed, 1);
}
