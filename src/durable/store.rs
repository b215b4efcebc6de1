//! [`DurableStore`]: where durable jobs are kept (apalis' SQLite or Postgres
//! storage), and how they are written.

use std::fmt;
#[cfg(feature = "durable-sqlite")]
use std::path::Path;
use std::time::Duration;

use apalis::prelude::{TaskBuilder, TaskSink};
use apalis_core::task::task_id::TaskId as StoreTaskId;

#[cfg(feature = "durable-postgres")]
use apalis_postgres::PostgresStorage;
#[cfg(feature = "durable-sqlite")]
use apalis_sqlite::SqliteStorage;
use serde::{Deserialize, Serialize};
#[cfg(feature = "durable-postgres")]
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
#[cfg(feature = "durable-sqlite")]
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
#[cfg(feature = "durable-postgres")]
use sqlx::{ConnectOptions, Connection};

use super::{DurableError, JobId};

/// A job as stored: the task's registered name and its serialised fields.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Job {
    pub(crate) task: String,
    pub(crate) args: serde_json::Value,
}

/// Where durable tasks are kept, and how this process works on them.
///
/// [`sqlite`](Self::sqlite) is the embedded default: one file, nothing to
/// install, workers in this process. [`postgres`](Self::postgres) lets
/// several processes (on several machines) share one queue: each runs its
/// own workers, or none ([`without_workers`](Self::without_workers)) and only
/// schedules.
///
/// Cloning is cheap: clones share the connection pool.
#[derive(Clone)]
pub struct DurableStore {
    backend: Backend,
    pub(crate) options: Options,
}

#[derive(Clone)]
pub(crate) enum Backend {
    #[cfg(feature = "durable-sqlite")]
    Sqlite(SqlitePool),
    #[cfg(feature = "durable-postgres")]
    Postgres(PgPool),
}

/// How this process's workers behave.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) queue: String,
    pub(crate) workers: bool,
    pub(crate) concurrency: usize,
    pub(crate) poll_interval: Duration,
    pub(crate) heartbeat_interval: Duration,
    pub(crate) missed_heartbeats: usize,
    pub(crate) max_deliveries: usize,
    pub(crate) worker_name: Option<String>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            queue: "axum-background".to_owned(),
            workers: true,
            concurrency: 16,
            poll_interval: Duration::from_millis(100),
            heartbeat_interval: Duration::from_secs(10),
            missed_heartbeats: 3,
            max_deliveries: 25,
            worker_name: None,
        }
    }
}

impl DurableStore {
    #[cfg(feature = "durable-sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-sqlite")))]
    /// Opens (or creates) the SQLite database at `path` and its tables.
    ///
    /// Every connection writes in WAL mode with `synchronous = FULL`: a job
    /// is on disk when `schedule` returns, whatever happens to the process
    /// or the machine next.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when the file cannot be opened or set up.
    pub async fn sqlite(path: impl AsRef<Path>) -> Result<Self, DurableError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full);
        // apalis' setup relaxes `synchronous` on the connection it runs on:
        // run it on a connection of its own, then open the pool.
        let setup = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await
            .map_err(store_error)?;
        SqliteStorage::setup(&setup).await.map_err(store_error)?;
        setup.close().await;
        let pool = SqlitePoolOptions::new()
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Self::from_sqlite_pool(pool).await
    }

    #[cfg(feature = "durable-sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-sqlite")))]
    /// Uses an open SQLite pool (sqlx 0.9); creates the tables if needed.
    ///
    /// apalis' table setup sets `synchronous = OFF` on the connection it runs
    /// on: safe against a process crash, not against a power loss. For the
    /// stronger guarantee, run the setup once before, or use
    /// [`sqlite`](Self::sqlite).
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when the tables cannot be set up.
    pub async fn from_sqlite_pool(pool: SqlitePool) -> Result<Self, DurableError> {
        SqliteStorage::setup(&pool).await.map_err(store_error)?;
        Ok(DurableStore {
            backend: Backend::Sqlite(pool),
            options: Options::default(),
        })
    }

    #[cfg(feature = "durable-postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-postgres")))]
    /// Connects to Postgres at `url` (`postgres://user:pass@host:port/db`)
    /// and creates the tables (in the `apalis` schema) if needed.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when it cannot connect or set up the tables.
    pub async fn postgres(url: &str) -> Result<Self, DurableError> {
        let options: PgConnectOptions = url.parse().map_err(store_error)?;
        // One connection first: a wrong address or password fails now, with
        // its own error (a pool would wait out its acquire timeout and say
        // only that it timed out).
        options
            .connect()
            .await
            .map_err(store_error)?
            .close()
            .await
            .map_err(store_error)?;
        let pool = PgPoolOptions::new()
            .connect_with(options)
            .await
            .map_err(store_error)?;
        Self::from_postgres_pool(pool).await
    }

    #[cfg(feature = "durable-postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-postgres")))]
    /// Uses an open Postgres pool (sqlx 0.9); creates the tables if needed.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when the tables cannot be set up.
    pub async fn from_postgres_pool(pool: PgPool) -> Result<Self, DurableError> {
        PostgresStorage::setup(&pool).await.map_err(store_error)?;
        Ok(DurableStore {
            backend: Backend::Postgres(pool),
            options: Options::default(),
        })
    }

    /// The queue this store writes to and works on (default
    /// `"axum-background"`). Processes share work through a queue of the
    /// same name; each must register every task type stored in it.
    #[must_use]
    pub fn queue(mut self, name: impl Into<String>) -> Self {
        self.options.queue = name.into();
        self
    }

    /// This process only schedules: it runs no workers (others, sharing the
    /// store, do). By default a `Background` runs workers.
    #[must_use]
    pub fn without_workers(mut self) -> Self {
        self.options.workers = false;
        self
    }

    /// How many jobs this process runs at once (default 16; `0` is taken as 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.options.concurrency = n.max(1);
        self
    }

    /// How often an idle worker looks for new jobs (default 100 ms).
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.options.poll_interval = every;
        self
    }

    /// How often a worker says it is alive (default 10 s), and how many
    /// beats it may miss (default 3) before its jobs are given to another
    /// worker. A job held by a worker that died runs again after
    /// `interval × missed`.
    #[must_use]
    pub fn heartbeat(mut self, interval: Duration, missed: usize) -> Self {
        self.options.heartbeat_interval = interval.max(Duration::from_secs(1));
        self.options.missed_heartbeats = missed.max(1);
        self
    }

    /// How many times a job may be taken by a worker and cut off by a
    /// shutdown before it is given up (default 25). Failures are retried by
    /// the task's [`RetryPolicy`](crate::RetryPolicy), not by this.
    #[must_use]
    pub fn max_deliveries(mut self, n: usize) -> Self {
        self.options.max_deliveries = n.max(1);
        self
    }

    /// The prefix of this process's worker names (default: the queue's
    /// name). Each worker's name is made unique with the process id and a
    /// random suffix: a stable name would keep a crashed worker's jobs locked.
    #[must_use]
    pub fn worker_name(mut self, prefix: impl Into<String>) -> Self {
        self.options.worker_name = Some(prefix.into());
        self
    }

    pub(crate) fn backend(&self) -> &Backend {
        &self.backend
    }

    #[cfg(feature = "durable-sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-sqlite")))]
    pub(crate) fn sqlite_storage(&self, pool: &SqlitePool) -> SqliteStorage<Job> {
        let o = &self.options;
        SqliteStorage::new(pool).with_config(
            apalis_sqlite::Config::default()
                .queue(&o.queue)
                .heartbeat_interval(o.heartbeat_interval)
                .missed_heartbeats(o.missed_heartbeats),
        )
    }

    #[cfg(feature = "durable-postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-postgres")))]
    pub(crate) fn postgres_storage(&self, pool: &PgPool) -> PostgresStorage<Job> {
        let o = &self.options;
        PostgresStorage::new(pool).with_config(
            apalis_postgres::Config::default()
                .queue(&o.queue)
                .heartbeat_interval(o.heartbeat_interval)
                .missed_heartbeats(o.missed_heartbeats),
        )
    }

    /// Writes one job; `Ok` once it is in the store.
    pub(crate) async fn push(&self, id: &JobId, job: Job) -> Result<(), DurableError> {
        let task = TaskBuilder::new(job)
            .task_id(StoreTaskId::from_string(id.as_str()))
            .max_attempts(self.options.max_deliveries)
            .build();
        match &self.backend {
            #[cfg(feature = "durable-sqlite")]
            Backend::Sqlite(pool) => self
                .sqlite_storage(pool)
                .push_task(task)
                .await
                .map_err(store_error),
            #[cfg(feature = "durable-postgres")]
            Backend::Postgres(pool) => self
                .postgres_storage(pool)
                .push_task(task)
                .await
                .map_err(store_error),
        }
    }
}

fn store_error(error: impl std::error::Error + Send + Sync + 'static) -> DurableError {
    DurableError::Store(Box::new(error))
}

impl fmt::Debug for DurableStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.backend {
            #[cfg(feature = "durable-sqlite")]
            Backend::Sqlite(_) => "sqlite",
            #[cfg(feature = "durable-postgres")]
            Backend::Postgres(_) => "postgres",
        };
        f.debug_struct("DurableStore")
            .field("backend", &kind)
            .field("options", &self.options)
            .finish()
    }
}
