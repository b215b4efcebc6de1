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
use axum_background::durable::{
    DurableError, DurableStore, DurableTask, Enqueued, JobId, JobState,
};
use axum_background::handler::{IntoErrorHandler, SharedErrorHandler};
use axum_background::periodic::Periodic;
use axum_background::{
    Background, BackgroundTask, BoxError, RetryPolicy, TaskConfig, TaskContext, TaskError,
    TaskInfo, Tasks, mode,
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
            /// Says when the task's future is dropped (its cancellation).
            struct SayDropped;
            impl Drop for SayDropped {
                fn drop(&mut self) {
                    println!("DROPPED");
                    let _ = std::io::stdout().flush();
                }
            }
            let _dropped = SayDropped;
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

/// A periodic run: records the wall-clock time it ran (ms since the epoch).
#[derive(Serialize, Deserialize)]
struct Tick {
    key: String,
}

impl BackgroundTask for Tick {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?;
        let ms = u64::try_from(now.as_millis())?;
        Record {
            key: self.key,
            n: ms,
        }
        .run()
        .await
    }
}

impl DurableTask for Tick {
    const NAME: &'static str = "tick";
}

fn every_second(key: String) -> Periodic {
    Periodic::every(Duration::from_secs(1), move || Tick { key: key.clone() })
        .name("tick")
        .durable()
}

/// Reads the state the task's `Background` keeps (`.state(Tag(..))`).
#[derive(Serialize, Deserialize)]
struct ReadsState {
    key: String,
}

#[derive(Clone)]
struct Tag(u64);

impl BackgroundTask for ReadsState {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        let Tag(tag) = TaskContext::state()?;
        record(&self.key, tag);
        Ok(())
    }
}

impl DurableTask for ReadsState {
    const NAME: &'static str = "reads_state";
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

/// The id of a job written now (the immediate phase).
async fn schedule<T: DurableTask>(background: &Background, task: T) -> JobId {
    let enqueued = background
        .durable()
        .schedule(task)
        .await
        .expect("written to the store")
        .expect("written now: the immediate phase");
    assert!(!enqueued.duplicate);
    enqueued.id
}

/// The jobs' states, counted.
async fn states(background: &Background, ids: &[JobId]) -> BTreeMap<String, usize> {
    let mut states = BTreeMap::new();
    for &id in ids {
        let job = background.durable().job(id).await.expect("look the job up");
        *states.entry(format!("{:?}", job.state)).or_default() += 1;
    }
    states
}

fn count(pairs: &[(&str, usize)]) -> BTreeMap<String, usize> {
    pairs.iter().map(|&(k, n)| (k.to_owned(), n)).collect()
}

/// Waits (up to 60 s) until the job is in `state`.
async fn wait_state(background: &Background, id: JobId, state: JobState) {
    let wait = async {
        loop {
            if background.durable().job(id).await.unwrap().state == state {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("job {id} not {state:?} in 60 s"));
}

#[tokio::test]
async fn a_scheduled_task_runs_in_this_process_and_is_completed_in_the_store() {
    let store = StoreSpec::sqlite("runs");
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .register::<BlockingRecord>()
        .build();
    let key = "runs";
    let ids = [
        schedule(
            &background,
            Record {
                key: key.into(),
                n: 1,
            },
        )
        .await,
        schedule(
            &background,
            BlockingRecord {
                key: key.into(),
                n: 2,
            },
        )
        .await,
    ];
    assert_ne!(ids[0], ids[1]);
    within("drained", background.durable().wait_drained())
        .await
        .unwrap();
    let mut seen = runs(key);
    seen.sort();
    assert_eq!(seen, [1, 2]);

    let report = within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    assert!(&report.overdue.is_empty(), "{report:?}");
    assert_settled(background.stats());
    assert_eq!(background.stats().completed, 2);
    assert_eq!(states(&background, &ids).await, count(&[("Completed", 2)]));
}

#[tokio::test]
async fn the_phase_says_when_the_job_is_written() {
    let store = StoreSpec::sqlite("phases");
    let background = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Record>()
        .build();
    let written = Arc::new(Mutex::new(None));
    let app = Router::new()
        .route(
            "/",
            post({
                let written = Arc::clone(&written);
                move |tasks: Tasks| async move {
                    let enqueued = tasks
                        .durable()
                        .after_response()
                        .schedule(Record {
                            key: "phases".into(),
                            n: 7,
                        })
                        .await?;
                    *written.lock().unwrap() = Some(enqueued);
                    Ok::<_, DurableError>("ok")
                }
            }),
        )
        .layer(background.layer());
    let response = post_root(app).await;
    assert_eq!(response.status(), 200);
    // Written later: no id yet, and the enqueue task waits for the body.
    assert_eq!(*written.lock().unwrap(), Some(None));
    let pending = background.in_flight();
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].name, "record:enqueue");
    assert!(pending[0].started_at.is_none());
    drop(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    );
    within("the enqueue", background.wait_idle()).await;
    assert_eq!(background.stats().completed, 1);
    // The job is in the store now: a worker elsewhere would take it.
    let waiting = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .build();
    within("drained", waiting.durable().wait_drained())
        .await
        .unwrap();
    assert_eq!(runs("phases"), [7]);
}

#[tokio::test]
async fn a_failing_task_is_retried_then_reported_once_and_discarded_with_its_errors() {
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
    let id = schedule(
        &background,
        AlwaysFails {
            key: "fails".into(),
        },
    )
    .await;
    wait_state(&background, id, JobState::Discarded).await;
    within("the last run's end", background.wait_idle()).await;
    let reported = reported.lock().unwrap().clone();
    assert_eq!(
        reported.len(),
        1,
        "the handler hears of the job once: {reported:?}"
    );
    assert_eq!(reported[0].0, "always_fails");
    assert!(
        reported[0].1.contains("the mail server said no"),
        "{reported:?}"
    );

    let job = background.durable().job(id).await.unwrap();
    assert_eq!(job.name, "always_fails");
    assert_eq!(job.attempts, 3);
    assert_eq!(job.errors.len(), 3, "{job:?}");
    for (n, error) in job.errors.iter().enumerate() {
        assert_eq!(error.attempt as usize, n + 1);
        assert!(error.error.contains("the mail server said no"), "{job:?}");
    }
    assert!(job.finalized_at.is_some());
    assert_eq!(runs("fails").len(), 3);

    // Retried by hand: one more run.
    let retried = background.durable().retry(id).await.unwrap();
    assert_eq!(retried.state, JobState::Waiting);
    wait_state(&background, id, JobState::Discarded).await;
    assert_eq!(runs("fails").len(), 4);
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
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
    let error = background
        .durable()
        .job(JobId::from(424_242))
        .await
        .unwrap_err();
    assert!(
        matches!(error, DurableError::NotFound(id) if id.as_i64() == 424_242),
        "{error}"
    );
}

// ---------------------------------------------------------------------------
// In the caller's transaction; unique; delayed; cancel; state.

async fn a_job_written_in_a_transaction_is_seen_on_commit_and_gone_on_rollback(store: StoreSpec) {
    let background = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Record>()
        .build();
    let durable = store.open().await;
    let key = format!("{}-tx", store.queue);
    let record = |n| Record {
        key: key.clone(),
        n,
    };
    let (committed, rolled_back) = match (durable.sqlite_pool(), durable.postgres_pool()) {
        (Some(pool), _) => {
            sqlx::query(
                "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, total INTEGER)",
            )
            .execute(pool)
            .await
            .unwrap();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            sqlx::query("INSERT INTO orders (total) VALUES (42)")
                .execute(&mut *tx)
                .await
                .unwrap();
            let committed = background
                .durable()
                .tx(&mut tx)
                .schedule(record(1))
                .await
                .unwrap();
            tx.commit().await.unwrap();
            let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
            let rolled_back = background
                .durable()
                .tx(&mut tx)
                .schedule(record(2))
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            (committed, rolled_back)
        }
        (None, Some(pool)) => {
            let mut tx = pool.begin().await.unwrap();
            let committed = background
                .durable()
                .tx(&mut tx)
                .schedule(record(1))
                .await
                .unwrap();
            // Not seen outside the transaction before it commits.
            let outside = background.durable().job(committed.id).await.unwrap_err();
            assert!(matches!(outside, DurableError::NotFound(_)), "{outside}");
            tx.commit().await.unwrap();
            let mut tx = pool.begin().await.unwrap();
            let rolled_back = background
                .durable()
                .tx(&mut tx)
                .schedule(record(2))
                .await
                .unwrap();
            tx.rollback().await.unwrap();
            (committed, rolled_back)
        }
        (None, None) => unreachable!(),
    };
    assert_eq!(
        background.durable().job(committed.id).await.unwrap().state,
        JobState::Waiting
    );
    let gone = background.durable().job(rolled_back.id).await.unwrap_err();
    assert!(matches!(gone, DurableError::NotFound(_)), "{gone}");

    let worker = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .build();
    within("drained", worker.durable().wait_drained())
        .await
        .unwrap();
    assert_eq!(
        runs(&key),
        [1],
        "the committed job ran, the rolled-back one did not"
    );
}

#[tokio::test]
async fn sqlite_a_job_written_in_a_transaction_is_seen_on_commit_and_gone_on_rollback() {
    a_job_written_in_a_transaction_is_seen_on_commit_and_gone_on_rollback(StoreSpec::sqlite("tx"))
        .await;
}

#[tokio::test]
async fn postgres_a_job_written_in_a_transaction_is_seen_on_commit_and_gone_on_rollback() {
    if let Some(store) = StoreSpec::postgres("tx").await {
        a_job_written_in_a_transaction_is_seen_on_commit_and_gone_on_rollback(store).await;
    }
}

async fn a_duplicate_returns_the_existing_job_and_never_aborts_a_transaction(store: StoreSpec) {
    let background = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Record>()
        .build();
    let key = format!("{}-unique", store.queue);
    let record = |n| Record {
        key: key.clone(),
        n,
    };
    let first = background
        .durable()
        .unique("invoice-42")
        .schedule(record(1))
        .await
        .unwrap()
        .unwrap();
    let again = background
        .durable()
        .unique("invoice-42")
        .schedule(record(2))
        .await
        .unwrap()
        .unwrap();
    assert!(!first.duplicate);
    assert_eq!(
        again,
        Enqueued {
            id: first.id,
            duplicate: true
        }
    );
    let other = background
        .durable()
        .unique("invoice-43")
        .schedule(record(3))
        .await
        .unwrap()
        .unwrap();
    assert!(!other.duplicate);
    let by_args = background
        .durable()
        .unique_by_args()
        .schedule(record(4))
        .await
        .unwrap()
        .unwrap();
    let same_args = background
        .durable()
        .unique_by_args()
        .schedule(record(4))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        same_args,
        Enqueued {
            id: by_args.id,
            duplicate: true
        }
    );

    // Inside a transaction: the duplicate is reported and the transaction
    // goes on to commit its other writes.
    let durable = store.open().await;
    if let Some(pool) = durable.postgres_pool() {
        let mut tx = pool.begin().await.unwrap();
        let in_tx = background
            .durable()
            .unique("invoice-42")
            .tx(&mut tx)
            .schedule(record(5))
            .await
            .unwrap();
        assert_eq!(
            in_tx,
            Enqueued {
                id: first.id,
                duplicate: true
            }
        );
        let new = background
            .durable()
            .tx(&mut tx)
            .schedule(record(6))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            background.durable().job(new.id).await.unwrap().state,
            JobState::Waiting
        );
    }
    if let Some(pool) = durable.sqlite_pool() {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let in_tx = background
            .durable()
            .unique("invoice-42")
            .tx(&mut tx)
            .schedule(record(5))
            .await
            .unwrap();
        assert_eq!(
            in_tx,
            Enqueued {
                id: first.id,
                duplicate: true
            }
        );
        let new = background
            .durable()
            .tx(&mut tx)
            .schedule(record(6))
            .await
            .unwrap();
        tx.commit().await.unwrap();
        assert_eq!(
            background.durable().job(new.id).await.unwrap().state,
            JobState::Waiting
        );
    }

    // Once finished, the key is free again.
    let worker = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .build();
    within("drained", worker.durable().wait_drained())
        .await
        .unwrap();
    let after = background
        .durable()
        .unique("invoice-42")
        .schedule(record(7))
        .await
        .unwrap()
        .unwrap();
    assert!(!after.duplicate);
    assert_ne!(after.id, first.id);
    within("drained", worker.durable().wait_drained())
        .await
        .unwrap();
    let mut ran = runs(&key);
    ran.sort_unstable();
    assert_eq!(ran, [1, 3, 4, 6, 7]);
}

#[tokio::test]
async fn sqlite_a_duplicate_returns_the_existing_job_and_never_aborts_a_transaction() {
    a_duplicate_returns_the_existing_job_and_never_aborts_a_transaction(StoreSpec::sqlite(
        "unique",
    ))
    .await;
}

#[tokio::test]
async fn postgres_a_duplicate_returns_the_existing_job_and_never_aborts_a_transaction() {
    if let Some(store) = StoreSpec::postgres("unique").await {
        a_duplicate_returns_the_existing_job_and_never_aborts_a_transaction(store).await;
    }
}

#[tokio::test]
async fn a_delayed_job_is_scheduled_until_its_time_and_a_cancelled_one_never_runs() {
    let store = StoreSpec::sqlite("delayed");
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .build();
    let key = "delayed";
    let written = std::time::SystemTime::now();
    let soon = background
        .durable()
        .delay(Duration::from_secs(1))
        .schedule(Record {
            key: key.into(),
            n: 1,
        })
        .await
        .unwrap()
        .unwrap();
    let later = background
        .durable()
        .at(written + Duration::from_secs(3600))
        .schedule(Record {
            key: key.into(),
            n: 2,
        })
        .await
        .unwrap()
        .unwrap();
    let job = background.durable().job(soon.id).await.unwrap();
    assert_eq!(job.state, JobState::Scheduled);
    assert!(
        job.scheduled_at >= written + Duration::from_millis(999),
        "{job:?}"
    );

    let cancelled = background.durable().cancel(later.id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);

    wait_state(&background, soon.id, JobState::Completed).await;
    assert!(written.elapsed().unwrap() >= Duration::from_secs(1));
    assert_eq!(runs(key), [1]);
    assert_eq!(
        background.durable().job(later.id).await.unwrap().state,
        JobState::Cancelled
    );
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
}

#[tokio::test]
async fn cancelling_a_running_job_cancels_its_task() {
    let store = StoreSpec::sqlite("cancel_running");
    let key = store.queue.clone();
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Gated>()
        .build();
    let id = schedule(
        &background,
        Gated {
            key: key.clone(),
            n: 1,
        },
    )
    .await;
    wait_runs(&key, 1).await;
    // A second Background on the same store, as another process would.
    let other = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Gated>()
        .build();
    let asked = other.durable().cancel(id).await.unwrap();
    assert_eq!(
        asked.state,
        JobState::Running,
        "still running until its task ends"
    );
    wait_state(&other, id, JobState::Cancelled).await;
    within("the task's end", background.wait_idle()).await;
    assert_eq!(background.stats().cancelled, 1);
    let job = other.durable().job(id).await.unwrap();
    assert!(job.finalized_at.is_some());
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
}

#[tokio::test]
async fn each_background_gives_its_own_state_to_its_durable_tasks() {
    let mut ran = Vec::new();
    for tag in [1, 2] {
        let store = StoreSpec::sqlite(&format!("state{tag}"));
        let background = Background::builder()
            .durable(store.open().await)
            .register::<ReadsState>()
            .state(Tag(tag))
            .build();
        schedule(
            &background,
            ReadsState {
                key: "state".into(),
            },
        )
        .await;
        within("drained", background.durable().wait_drained())
            .await
            .unwrap();
        ran.push(runs("state"));
    }
    assert_eq!(ran, [vec![1], vec![1, 2]]);

    // Without the state: the task fails, saying what is missing.
    let background = Background::builder()
        .durable(StoreSpec::sqlite("state_missing").open().await)
        .register_with::<ReadsState>(
            TaskConfig::builder()
                .retry(RetryPolicy::attempts(1))
                .build(),
        )
        .build();
    let id = schedule(
        &background,
        ReadsState {
            key: "state".into(),
        },
    )
    .await;
    wait_state(&background, id, JobState::Discarded).await;
    let job = background.durable().job(id).await.unwrap();
    assert!(job.errors[0].error.contains("no state of type"), "{job:?}");
    assert!(job.errors[0].error.contains("Tag"), "{job:?}");
}

#[tokio::test]
async fn sqlite_under_load_sixty_four_concurrent_schedules_never_fail() {
    let store = StoreSpec::sqlite("load");
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .build();
    let key = "load";
    for round in 0..10u64 {
        let schedules = (0..64u64).map(|i| {
            let background = background.clone();
            tokio::spawn(async move {
                background
                    .durable()
                    .schedule(Record {
                        key: key.into(),
                        n: round * 64 + i,
                    })
                    .await
            })
        });
        for scheduled in futures_util::future::join_all(schedules).await {
            scheduled.unwrap().expect("no schedule fails under load");
        }
    }
    within("drained", background.durable().wait_drained())
        .await
        .unwrap();
    let mut ran = runs(key);
    ran.sort_unstable();
    assert_eq!(ran, (0..640).collect::<Vec<_>>(), "each ran once");
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
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
            spec: format!("sqlite:{}", util::fresh_sqlite("durable", test).display()),
            queue: test.replace('_', "-"),
        }
    }

    /// A database of its own on the configured Postgres (processes sharing a
    /// database elect one leader, which must know every task type), or
    /// `None` (with the reason printed) when no Postgres is configured; under
    /// CI a missing Postgres fails the test instead.
    async fn postgres(test: &str) -> Option<Self> {
        match std::env::var("AXUM_BACKGROUND_PG_URL") {
            Ok(url) => {
                let name = format!("ab_{test}_{}_{}", std::process::id(), unique());
                let admin = sqlx::PgPool::connect(&url)
                    .await
                    .expect("connect to Postgres");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .expect("create the test's database");
                admin.close().await;
                let (base, _) = url.rsplit_once('/').expect("a URL ending in /<database>");
                Some(StoreSpec {
                    spec: format!("postgres:{base}/{name}"),
                    // Not the SQLite twin's: under `cargo test` both record in
                    // this process, by queue.
                    queue: format!("{}-pg", test.replace('_', "-")),
                })
            }
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
            .rescue(Duration::from_millis(200), Duration::from_millis(200))
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

/// Held by each test that runs child processes: under `cargo test` the tests
/// of this binary run at once, and several leader elections and crash
/// rescues at a time on 2 cores stretch past their waits.
static PROCESSES: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

    /// The job id a line `PREFIX <id>` names.
    async fn job_id(&mut self, prefix: &str) -> JobId {
        let line = self.line(prefix).await;
        let id: i64 = line[prefix.len()..].trim().parse().expect("a job id");
        JobId::from(id)
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

/// The timeout of `Stall` jobs: a job held by a process that died runs again
/// once it (and the margin) has passed.
fn stall_config() -> TaskConfig {
    TaskConfig::builder()
        .timeout(Duration::from_secs(1))
        .build()
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
                let id = schedule(
                    &background,
                    Record {
                        key: store.queue.clone(),
                        n: 1,
                    },
                )
                .await;
                println!("SCHEDULED {id}");
                std::future::pending::<()>().await;
            }
            // A worker that takes a job and dies while running it ("stall",
            // a 1 s timeout), or holds it until cancelled ("hold").
            "stall" | "hold" => {
                let config = if role == "stall" {
                    stall_config()
                } else {
                    TaskConfig::default()
                };
                let background = Background::builder()
                    .durable(store.open().await)
                    .register_with::<Stall>(config)
                    .build();
                let id = schedule(
                    &background,
                    Stall {
                        key: store.queue.clone(),
                    },
                )
                .await;
                println!("SCHEDULED {id}");
                std::future::pending::<()>().await;
            }
            // A process with a durable periodic schedule (and workers): runs
            // until asked to stop on stdin, or killed.
            "periodic" => {
                // A short timeout: a tick held by a leader killed mid-run is
                // rescued within seconds. (With the default, 5 minutes, every
                // later tick would be skipped as overlapping it until then.)
                let background = Background::builder()
                    .durable(store.open().await)
                    .register_with::<Tick>(
                        TaskConfig::builder()
                            .timeout(Duration::from_secs(1))
                            .build(),
                    )
                    .periodic(every_second(store.queue.clone()))
                    .build();
                println!("WORKING");
                let mut line = String::new();
                let mut stdin = tokio::io::BufReader::new(tokio::io::stdin());
                tokio::io::AsyncBufReadExt::read_line(&mut stdin, &mut line)
                    .await
                    .unwrap();
                background.shutdown(Duration::from_secs(10)).await;
                println!("STOPPED");
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
    let _one_at_a_time = PROCESSES.lock().await;
    let mut web = ChildProcess::spawn("schedule", &store, None);
    let id = web.job_id("SCHEDULED").await;
    web.kill();
    // Looked at before any worker starts (the next process's workers may
    // take it at once): it was never run.
    let looking = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Record>()
        .build();
    assert_eq!(
        looking.durable().job(id).await.unwrap().state,
        JobState::Waiting
    );
    looking.shutdown(Duration::from_secs(5)).await;
    let next = restarted(&store).await;
    next_runs_the_job(next, &store, id).await;
}

/// The next process, with workers on `store`.
async fn restarted(store: &StoreSpec) -> Background {
    Background::builder()
        .durable(store.open().await)
        .register::<Record>()
        .register_with::<Stall>(stall_config())
        .build()
}

/// The next process runs the job once, and the store says it is completed.
async fn next_runs_the_job(next: Background, store: &StoreSpec, id: JobId) {
    assert_eq!(wait_runs(&store.queue, 1).await, [1]);
    wait_state(&next, id, JobState::Completed).await;
    within("shutdown", next.shutdown(Duration::from_secs(5))).await;
    assert_eq!(runs(&store.queue), [1]);
}

#[tokio::test]
async fn sqlite_a_job_outlives_a_process_killed_before_it_ran() {
    killed_before_it_ran(StoreSpec::sqlite("killed_before")).await;
}

#[tokio::test]
async fn postgres_a_job_outlives_a_process_killed_before_it_ran() {
    if let Some(store) = StoreSpec::postgres("killed_before").await {
        killed_before_it_ran(store).await;
    }
}

/// A job whose worker process was killed while running it is run again by
/// another worker once its timeout and the margin have passed (and the dead
/// process's lease as leader).
async fn killed_while_running(store: StoreSpec) {
    let _one_at_a_time = PROCESSES.lock().await;
    let mut worker = ChildProcess::spawn("stall", &store, None);
    let id = worker.job_id("SCHEDULED").await;
    worker.line("RUNNING").await;
    worker.kill();
    let killed_at = std::time::Instant::now();
    let log = util::Captured::default();
    let _guard = log.install(tracing::Level::INFO);
    let next = restarted(&store).await;
    let job = next.durable().job(id).await.unwrap();
    assert_eq!(job.state, JobState::Running, "{job:?}");
    next_runs_the_job(next, &store, id).await;
    // Said at INFO, with the job's id.
    let rescued: Vec<String> = log
        .lines()
        .into_iter()
        .filter(|line| line.contains("durable job rescued"))
        .collect();
    assert_eq!(rescued.len(), 1, "{:?}", log.lines());
    assert!(rescued[0].contains(" INFO "), "{rescued:?}");
    assert!(rescued[0].contains(&format!("job={id}")), "{rescued:?}");
    // Timeout 1 s + margin 5 s + a check every 0.2 s, after the dead
    // leader's lease (0.2 s + 10 s).
    let waited = killed_at.elapsed();
    assert!(waited < Duration::from_secs(25), "rescued after {waited:?}");
}

#[tokio::test]
async fn sqlite_a_job_outlives_a_worker_killed_while_running_it() {
    killed_while_running(StoreSpec::sqlite("killed_while")).await;
}

#[tokio::test]
async fn postgres_a_job_outlives_a_worker_killed_while_running_it() {
    if let Some(store) = StoreSpec::postgres("killed_while").await {
        killed_while_running(store).await;
    }
}

#[tokio::test]
async fn postgres_two_worker_processes_share_a_thousand_jobs_each_run_once() {
    let Some(store) = StoreSpec::postgres("share").await else {
        return;
    };
    const JOBS: u64 = 1000;
    // This process only schedules.
    let web = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Record>()
        .build();
    let jobs = (0..JOBS).map(|n| Record {
        key: store.queue.clone(),
        n,
    });
    let enqueued = web.durable().schedule_many(jobs).await.unwrap();
    assert_eq!(enqueued.len() as u64, JOBS);

    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durable");
    std::fs::create_dir_all(&dir).unwrap();
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("{}-{}-worker{i}.txt", store.queue, unique())))
        .collect();
    let mut workers: Vec<ChildProcess> = outs
        .iter()
        .map(|out| ChildProcess::spawn("work", &store, Some(out)))
        .collect();
    for worker in &mut workers {
        worker.line("WORKING").await;
    }
    tokio::time::timeout(Duration::from_secs(120), web.durable().wait_drained())
        .await
        .expect("drained in 120 s")
        .unwrap();

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
    let twice: Vec<&u64> = all
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| &w[0])
        .collect();
    let lost: Vec<u64> = (0..JOBS)
        .filter(|n| all.binary_search(n).is_err())
        .collect();
    assert!(
        twice.is_empty() && lost.is_empty(),
        "ran twice: {} jobs ({:?}..); lost: {} ({:?}..)",
        twice.len(),
        &twice[..twice.len().min(5)],
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    let ids: Vec<JobId> = enqueued.iter().map(|e| e.id).collect();
    assert_eq!(states(&web, &ids[..10]).await, count(&[("Completed", 10)]));
}

#[tokio::test]
async fn shutdown_lets_the_running_job_finish_and_leaves_the_rest_in_the_store() {
    let store = StoreSpec::sqlite("shutdown_finish");
    let key = store.queue.clone();
    let background = Background::builder()
        .durable(store.open().await.concurrency(1))
        .register::<Gated>()
        .build();
    let mut ids = Vec::new();
    for n in 0..5 {
        ids.push(
            schedule(
                &background,
                Gated {
                    key: key.clone(),
                    n,
                },
            )
            .await,
        );
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
        states(&background, &ids).await,
        count(&[("Completed", 1), ("Waiting", 4)])
    );
}

#[tokio::test]
async fn a_job_cut_off_by_the_grace_period_goes_back_unspent_and_runs_on_the_next_start() {
    let store = StoreSpec::sqlite("shutdown_overdue");
    let key = store.queue.clone();
    let first = Background::builder()
        .durable(store.open().await)
        .register::<Gated>()
        .build();
    let id = schedule(
        &first,
        Gated {
            key: key.clone(),
            n: 1,
        },
    )
    .await;
    wait_runs(&key, 1).await;
    let report = within("shutdown", first.shutdown(Duration::from_millis(200))).await;
    assert_eq!(report.overdue.len(), 1, "{report:?}");
    let job = first.durable().job(id).await.unwrap();
    assert_eq!(job.state, JobState::Waiting, "put back: {job:?}");
    assert_eq!(job.attempts, 0, "its attempt not spent: {job:?}");
    assert!(job.errors.is_empty(), "{job:?}");

    let second = Background::builder()
        .durable(store.open().await)
        .register::<Gated>()
        .build();
    gate(&key).add_permits(1);
    assert_eq!(wait_runs(&key, 2).await, [1, 1]);
    wait_state(&second, id, JobState::Completed).await;
    within("shutdown", second.shutdown(Duration::from_secs(5))).await;
}

#[tokio::test]
async fn a_job_the_store_refuses_is_an_error_or_goes_to_the_error_handler() {
    let pool = sqlx::SqlitePool::connect(&format!(
        "sqlite://{}?mode=rwc",
        util::fresh_sqlite("durable", "refused").display()
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
                    .map(|enqueued| format!("{enqueued:?}"))
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

// ---------------------------------------------------------------------------
// Durable periodic schedules.

#[tokio::test]
async fn a_durable_schedule_writes_a_job_per_tick_listed_with_its_next_run() {
    let store = StoreSpec::sqlite("periodic");
    let key = store.queue.clone();
    let background = Background::builder()
        .durable(store.open().await)
        .register::<Tick>()
        .periodic(every_second(key.clone()))
        .build();
    let listed = background.periodic_tasks();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "tick");
    assert!(listed[0].durable);
    assert_eq!(listed[0].schedule, "every 1s");
    let next = listed[0].next_run.expect("its next run");
    assert!(
        next <= std::time::Instant::now() + Duration::from_secs(1),
        "{next:?}"
    );

    let ran = wait_runs(&key, 2).await;
    let apart = ran[1] - ran[0];
    assert!(
        (500..=2500).contains(&apart),
        "runs {apart} ms apart: {ran:?}"
    );
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
    assert_settled(background.stats());
}

#[tokio::test]
async fn a_durable_schedule_of_an_unregistered_type_fails_every_durable_call_saying_so() {
    let background = Background::builder()
        .durable(StoreSpec::sqlite("periodic_unregistered").open().await)
        .register::<Record>()
        .periodic(every_second("unregistered".into()))
        .build();
    let error = background
        .durable()
        .schedule(Record {
            key: "unregistered".into(),
            n: 1,
        })
        .await
        .unwrap_err();
    let message = error.to_string();
    assert!(
        message.contains("\"tick\" makes a task whose type is not registered"),
        "{message}"
    );
}

/// Runs recorded in `outs` (ms since the epoch), sorted.
fn recorded(outs: &[PathBuf]) -> Vec<u64> {
    let mut all: Vec<u64> = outs
        .iter()
        .flat_map(|out| {
            std::fs::read_to_string(out)
                .unwrap_or_default()
                .lines()
                .map(|line| line.parse::<u64>().unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    all.sort_unstable();
    all
}

/// Waits (up to 60 s) until `out` holds at least `count` runs.
async fn wait_recorded(out: &Path, count: usize) {
    let wait = async {
        while recorded(&[out.to_path_buf()]).len() < count {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(120), wait)
        .await
        .unwrap_or_else(|_| panic!("{} runs not recorded in {out:?} in 120 s", count));
}

fn ms_now() -> u64 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(now.as_millis()).unwrap()
}

/// At most one run per tick: a schedule written by two processes at once
/// would run about twice as often.
fn assert_once_per_tick(runs: &[u64], from_ms: u64, to_ms: u64) {
    let ticks = (to_ms / 1000) - (from_ms / 1000) + 1;
    assert!(
        (runs.len() as u64) <= ticks,
        "{} runs in {ticks} ticks: {runs:?}",
        runs.len()
    );
    let seconds: std::collections::BTreeSet<u64> = runs.iter().map(|ms| ms / 1000).collect();
    assert!(
        seconds.len() + 1 >= runs.len(),
        "runs bunched in the same second: {runs:?}"
    );
}

async fn two_processes_run_each_tick_once(store: StoreSpec) {
    let _one_at_a_time = PROCESSES.lock().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durable");
    std::fs::create_dir_all(&dir).unwrap();
    let outs: Vec<PathBuf> = (0..2)
        .map(|i| dir.join(format!("{}-{}-periodic{i}.txt", store.queue, unique())))
        .collect();
    let from = ms_now();
    let mut processes: Vec<ChildProcess> = outs
        .iter()
        .map(|out| ChildProcess::spawn("periodic", &store, Some(out)))
        .collect();
    for process in &mut processes {
        process.line("WORKING").await;
    }
    // Five ticks' worth of runs between them.
    let wait = async {
        while recorded(&outs).len() < 5 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .expect("five runs in 60 s");
    for process in &mut processes {
        process.stop();
        process.line("STOPPED").await;
    }
    let to = ms_now();
    assert_once_per_tick(&recorded(&outs), from, to);
}

#[tokio::test]
async fn sqlite_two_processes_on_one_schedule_run_each_tick_once() {
    two_processes_run_each_tick_once(StoreSpec::sqlite("periodic_two")).await;
}

#[tokio::test]
async fn postgres_two_processes_on_one_schedule_run_each_tick_once() {
    if let Some(store) = StoreSpec::postgres("periodic_two").await {
        two_processes_run_each_tick_once(store).await;
    }
}

/// The leader killed: once its lease has passed, the other process leads and
/// the ticks go on, none run twice.
async fn ticks_resume_after_the_leader_is_killed(store: StoreSpec) {
    let _one_at_a_time = PROCESSES.lock().await;
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("durable");
    std::fs::create_dir_all(&dir).unwrap();
    let outs: Vec<PathBuf> = ["leader", "follower"]
        .iter()
        .map(|role| dir.join(format!("{}-{}-{role}.txt", store.queue, unique())))
        .collect();
    let from = ms_now();
    let mut leader = ChildProcess::spawn("periodic", &store, Some(&outs[0]));
    leader.line("WORKING").await;
    // Alone, it leads: its schedule runs.
    wait_recorded(&outs[0], 2).await;
    let mut follower = ChildProcess::spawn("periodic", &store, Some(&outs[1]));
    follower.line("WORKING").await;
    leader.kill();
    let killed = ms_now();
    let before = recorded(&outs[1..]).len();
    wait_recorded(&outs[1], before + 2).await;
    follower.stop();
    follower.line("STOPPED").await;
    let runs = recorded(&outs);
    assert!(
        runs.iter().filter(|&&ms| ms > killed).count() >= 2,
        "ticks resumed after the kill: {runs:?}"
    );
    assert_once_per_tick(&runs, from, ms_now());
}

#[tokio::test]
async fn sqlite_ticks_resume_after_the_leader_is_killed() {
    ticks_resume_after_the_leader_is_killed(StoreSpec::sqlite("periodic_leader")).await;
}

#[tokio::test]
async fn postgres_ticks_resume_after_the_leader_is_killed() {
    if let Some(store) = StoreSpec::postgres("periodic_leader").await {
        ticks_resume_after_the_leader_is_killed(store).await;
    }
}

// ---------------------------------------------------------------------------
// A Postgres restart mid-run.

/// A Postgres server of the test's own (the shared one must not restart
/// under the other tests), started from the same installation.
struct PgServer {
    bin: PathBuf,
    data: PathBuf,
    port: u16,
}

impl PgServer {
    fn command(&self, tool: &str) -> Command {
        let root = std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|out| out.stdout.starts_with(b"0\n"));
        let mut command = if root {
            let mut runuser = Command::new("runuser");
            runuser
                .args(["-u", "postgres", "--"])
                .arg(self.bin.join(tool));
            runuser
        } else {
            Command::new(self.bin.join(tool))
        };
        command.stdout(Stdio::null()).stderr(Stdio::null());
        command
    }

    fn start() -> Self {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("Postgres installed under /usr/lib/postgresql")
            .filter_map(|entry| entry.ok().map(|e| e.path().join("bin")))
            .max()
            .expect("a Postgres version");
        let data = std::env::temp_dir().join(format!("axum-background-pg-restart-{}", unique()));
        std::fs::create_dir_all(&data).unwrap();
        let _ = Command::new("chown").arg("postgres:").arg(&data).status();
        let port = 56_000 + u16::try_from(std::process::id() % 1000).unwrap();
        let server = PgServer { bin, data, port };
        let status = server
            .command("initdb")
            .args(["-A", "trust", "-U", "postgres", "-D"])
            .arg(&server.data)
            .status()
            .unwrap();
        assert!(status.success(), "initdb");
        server.pg_ctl("start");
        server
    }

    fn pg_ctl(&self, action: &str) {
        let options = format!("-h 127.0.0.1 -p {} -k {}", self.port, self.data.display());
        let status = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "fast", "-o", &options, action])
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {action}");
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .arg("-D")
            .arg(&self.data)
            .args(["-w", "-m", "immediate", "stop"])
            .status();
        let _ = std::fs::remove_dir_all(&self.data);
    }
}

#[tokio::test]
async fn postgres_a_restart_mid_run_loses_no_job() {
    if StoreSpec::postgres("restart").await.is_none() {
        return;
    }
    const JOBS: u64 = 2_000;
    let server = PgServer::start();
    let store = StoreSpec {
        spec: format!("postgres:{}", server.url()),
        queue: "restart".into(),
    };
    let key = format!("restart-{}", unique());
    // A short timeout: a job whose outcome the restart kept from the store
    // is taken back soon.
    let background = Background::builder()
        .durable(store.open().await)
        .register_with::<Record>(
            TaskConfig::builder()
                .timeout(Duration::from_secs(1))
                .build(),
        )
        .build();
    let jobs = (0..JOBS).map(|n| Record {
        key: key.clone(),
        n,
    });
    background.durable().schedule_many(jobs).await.unwrap();
    let before = wait_runs(&key, 200).await.len();
    server.pg_ctl("restart");
    let restarted = runs(&key).len();
    eprintln!("restarted after {before}..{restarted} runs");

    let drained = async {
        loop {
            match background.durable().wait_drained().await {
                Ok(()) => return,
                // The server is coming back: look again.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), drained)
        .await
        .expect("drained in 120 s after the restart");
    let mut ran = runs(&key);
    ran.sort_unstable();
    let lost: Vec<u64> = (0..JOBS)
        .filter(|n| ran.binary_search(n).is_err())
        .collect();
    assert!(
        lost.is_empty(),
        "{} jobs lost: {:?}..",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
    ran.dedup();
    let rerun = runs(&key).len() - ran.len();
    eprintln!("{JOBS} jobs, 0 lost, {rerun} run again after the restart");
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
}

// ---------------------------------------------------------------------------
// In-process tasks of durable types, kept against shutdown.

#[tokio::test]
async fn tasks_cut_off_by_shutdown_are_stored_and_run_on_the_next_start() {
    let store = StoreSpec::sqlite("persist");
    let key = store.queue.clone();
    let first = Background::builder()
        .durable(store.open().await)
        .persist_on_shutdown::<Gated>()
        .persist_on_shutdown::<Record>()
        .register::<BlockingRecord>()
        .build();
    // Running at shutdown (unshielded: cancelled at once).
    let running = first.schedule(Gated {
        key: key.clone(),
        n: 1,
    });
    within("it starts", running.started()).await;
    wait_runs(&key, 1).await;
    // Shielded, still running at the deadline: overdue.
    let overdue_key = format!("{key}-overdue");
    first.task().shield(true).build().schedule(Gated {
        key: overdue_key.clone(),
        n: 5,
    });
    wait_runs(&overdue_key, 1).await;
    // Never started: due in an hour.
    first
        .task()
        .delay(Duration::from_secs(3600))
        .build()
        .schedule(Record {
            key: key.clone(),
            n: 2,
        });
    // Ended before shutdown: not stored.
    let done = first.schedule(Record {
        key: key.clone(),
        n: 3,
    });
    within("it ends", done.outcome()).await.unwrap();
    // A durable type that does not persist: cut off and lost, as any task.
    first
        .task()
        .delay(Duration::from_secs(3600))
        .build()
        .schedule(BlockingRecord {
            key: key.clone(),
            n: 4,
        });

    let report = within("shutdown", first.shutdown(Duration::from_millis(200))).await;
    let stored: Vec<(String, bool)> = report
        .cancelled
        .iter()
        .map(|entry| (entry.info.name.to_string(), entry.stored))
        .collect();
    assert_eq!(stored.len(), 3, "{report:?}");
    assert!(stored.contains(&("Gated".into(), true)), "{stored:?}");
    assert!(stored.contains(&("Record".into(), true)), "{stored:?}");
    assert!(
        stored.contains(&("BlockingRecord".into(), false)),
        "{stored:?}"
    );
    assert!(report.finished.iter().all(|entry| !entry.stored));
    assert_eq!(report.overdue.len(), 1, "{report:?}");
    assert!(report.overdue[0].stored, "{report:?}");

    let next = Background::builder()
        .durable(store.open().await)
        .register::<Gated>()
        .register::<Record>()
        .register::<BlockingRecord>()
        .build();
    gate(&key).add_permits(1);
    gate(&overdue_key).add_permits(1);
    within("drained", next.durable().wait_drained())
        .await
        .unwrap();
    assert_eq!(runs(&overdue_key), [5, 5], "the overdue one ran again");
    let mut ran = runs(&key);
    ran.sort_unstable();
    assert_eq!(
        ran,
        [1, 1, 2, 3],
        "the cut-off ones ran again, the lost one did not"
    );
    within("shutdown", next.shutdown(Duration::from_secs(5))).await;
}

#[tokio::test]
async fn a_failed_job_waiting_for_its_next_attempt_is_retrying_with_its_error() {
    let store = StoreSpec::sqlite("retrying");
    let config = TaskConfig::builder()
        .retry(
            RetryPolicy::attempts(3)
                .backoff(Duration::from_secs(600))
                .max_backoff(Duration::from_secs(3600))
                .jitter(false),
        )
        .build();
    let background = Background::builder()
        .durable(store.open().await)
        .register_with::<AlwaysFails>(config)
        .build();
    let id = schedule(
        &background,
        AlwaysFails {
            key: "retrying".into(),
        },
    )
    .await;
    wait_state(&background, id, JobState::Retrying).await;
    let job = background.durable().job(id).await.unwrap();
    assert_eq!(job.attempts, 1);
    assert_eq!(job.errors.len(), 1);
    assert!(
        job.errors[0].error.contains("the mail server said no"),
        "{job:?}"
    );
    let wait = job.scheduled_at.duration_since(job.errors[0].at).unwrap();
    assert!(
        wait >= Duration::from_secs(590),
        "the policy's backoff: {wait:?}"
    );
    assert!(!job.state.is_finished());
    let cancelled = background.durable().cancel(id).await.unwrap();
    assert_eq!(cancelled.state, JobState::Cancelled);
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
}

/// A job running in another process is cancelled from this one: its task
/// there is dropped, and the store says cancelled.
async fn cancelled_from_another_process(store: StoreSpec) {
    let _one_at_a_time = PROCESSES.lock().await;
    let mut worker = ChildProcess::spawn("hold", &store, None);
    let id = worker.job_id("SCHEDULED").await;
    worker.line("RUNNING").await;
    let here = Background::builder()
        .durable(store.open().await.without_workers())
        .register::<Stall>()
        .build();
    let asked = here.durable().cancel(id).await.unwrap();
    assert_eq!(asked.state, JobState::Running);
    worker.line("DROPPED").await;
    wait_state(&here, id, JobState::Cancelled).await;
}

#[tokio::test]
async fn sqlite_a_running_job_is_cancelled_from_another_process() {
    cancelled_from_another_process(StoreSpec::sqlite("cancel_process")).await;
}

#[tokio::test]
async fn postgres_a_running_job_is_cancelled_from_another_process() {
    if let Some(store) = StoreSpec::postgres("cancel_process").await {
        cancelled_from_another_process(store).await;
    }
}
