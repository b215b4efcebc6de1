//! Durable tasks on real stores: SQLite always, Postgres when
//! `AXUM_BACKGROUND_PG_URL` is set (`.ci/run` starts one and sets it).
//!
//! Some tests run this test binary again as a child process (the
//! `child_process` entry point, ignored when run directly), so that a process
//! holding durable jobs can be killed for real.

mod util;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use axum_background::durable::{DurableError, DurableStore, DurableTask};
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

/// Records its number under its key: in this process's `RUNS`, or appended
/// to a file when the key is a path (in a child process).
#[derive(Serialize, Deserialize)]
struct Record {
    key: String,
    n: u64,
}

impl BackgroundTask for Record {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        if let Some(path) = self.key.strip_prefix("file:") {
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)?;
            file.write_all(format!("{}\n", self.n).as_bytes())?;
        } else {
            record(&self.key, self.n);
        }
        Ok(())
    }
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

async fn sqlite(test: &str) -> DurableStore {
    DurableStore::sqlite(sqlite_path(test))
        .await
        .expect("open sqlite store")
        .poll_interval(Duration::from_millis(20))
}

/// The status of every job in a SQLite store, by status.
async fn sqlite_statuses(path: &Path) -> BTreeMap<String, i64> {
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap();
    let rows: Vec<(String, i64)> =
        sqlx::query_as("SELECT status, COUNT(*) FROM Jobs GROUP BY status")
            .fetch_all(&pool)
            .await
            .unwrap();
    rows.into_iter().collect()
}

#[tokio::test]
async fn a_scheduled_task_runs_in_this_process_and_is_done_in_the_store() {
    let path = sqlite_path("runs");
    let store = DurableStore::sqlite(&path)
        .await
        .unwrap()
        .poll_interval(Duration::from_millis(20));
    let background = Background::builder()
        .durable(store)
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
    assert!(report.overdue().is_empty(), "{report:?}");
    assert_settled(background.stats());
    assert_eq!(background.stats().completed, 2);
    assert_eq!(
        sqlite_statuses(&path).await,
        BTreeMap::from([("Done".to_owned(), 2)])
    );
}

#[tokio::test]
async fn the_phase_says_when_the_job_is_written() {
    let path = sqlite_path("phases");
    let store = DurableStore::sqlite(&path)
        .await
        .unwrap()
        .poll_interval(Duration::from_millis(20));
    let background = Background::builder()
        .durable(store)
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
    let response = app
        .oneshot(
            http::Request::post("/")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    // The body has not been read: the after-response phase has not come, and
    // the job is not in the store yet.
    assert_eq!(handler_done.load(Ordering::SeqCst), 1);
    assert_eq!(sqlite_statuses(&path).await, BTreeMap::new());
    drop(
        axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .unwrap(),
    );
    assert_eq!(wait_runs("phases", 1).await, [7]);
}

#[tokio::test]
async fn a_failing_task_is_retried_then_reported_and_not_run_again() {
    let path = sqlite_path("fails");
    let store = DurableStore::sqlite(&path)
        .await
        .unwrap()
        .poll_interval(Duration::from_millis(20));
    let reported = Arc::new(Mutex::new(Vec::<(String, String)>::new()));
    let config = TaskConfig::builder()
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(1)))
        .on_error({
            let reported = Arc::clone(&reported);
            move |info: &TaskInfo, error: &TaskError| {
                reported
                    .lock()
                    .unwrap()
                    .push((info.name.to_string(), error.to_string()));
            }
        })
        .build();
    let background = Background::builder()
        .durable(store)
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
        sqlite_statuses(&path).await,
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
        .durable(sqlite("unregistered").await)
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
