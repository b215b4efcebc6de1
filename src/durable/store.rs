//! [`DurableStore`]: where durable jobs are kept (River's tables in SQLite or
//! Postgres), and how this process works on them.

use std::fmt;
#[cfg(feature = "durable-sqlite")]
use std::path::Path;
use std::time::Duration;

#[cfg(feature = "durable-postgres")]
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
#[cfg(feature = "durable-sqlite")]
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
#[cfg(feature = "durable-postgres")]
use sqlx::{ConnectOptions, Connection};

use super::DurableError;

/// Where durable tasks are kept, and how this process works on them.
///
/// `DurableStore::sqlite` is the embedded default: one file, nothing to
/// install, workers in this process. `DurableStore::postgres` lets
/// several processes (on several machines) share one queue: each runs its
/// own workers, or none ([`without_workers`](Self::without_workers)) and only
/// schedules.
///
/// Cloning is cheap: clones share the connection pool.
#[derive(Clone)]
pub struct DurableStore {
    pub(crate) backend: Backend,
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
    pub(crate) fetch_cooldown: Duration,
    pub(crate) poll_interval: Duration,
    pub(crate) max_rescues: u32,
    pub(crate) rescue_check: Duration,
    pub(crate) leader_lease: Duration,
}

/// The timeout of a durable task whose type sets none: a job held by a
/// process that died is run again once this (and the margin) has passed.
pub(crate) const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5 * 60);

impl Default for Options {
    fn default() -> Self {
        Options {
            queue: "axum-background".to_owned(),
            workers: true,
            concurrency: 16,
            // River's default (100 ms between fetches) caps trivial jobs at
            // about 5 per worker slot per second; 2 ms keeps a fetch cheap
            // and lets 16 workers pass well over 1,000 jobs/s.
            fetch_cooldown: Duration::from_millis(2),
            poll_interval: Duration::from_secs(1),
            max_rescues: 5,
            rescue_check: Duration::from_secs(5),
            leader_lease: Duration::from_secs(2),
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
    /// or the machine next. A writer waits up to 10 s for another to finish
    /// rather than failing with `database is locked`.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when the file cannot be opened or set up.
    pub async fn sqlite(path: impl AsRef<Path>) -> Result<Self, DurableError> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10));
        // Two processes opening a new file at once contend for its first
        // write (the switch to WAL): the one that loses is told the database
        // is locked, and tries again.
        let mut attempt = 1;
        let pool = loop {
            match SqlitePoolOptions::new()
                .max_connections(8)
                .connect_with(options.clone())
                .await
            {
                Ok(pool) => break pool,
                Err(error) if attempt < 5 => {
                    tracing::debug!(%error, attempt, "durable store being opened by another process; retrying");
                    tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
                    attempt += 1;
                }
                Err(error) => return Err(DurableError::store(error)),
            }
        };
        Self::from_sqlite_pool(pool).await
    }

    #[cfg(feature = "durable-sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-sqlite")))]
    /// Uses an open SQLite pool (sqlx 0.9, SQLite 3.45 or later); creates
    /// or updates the tables if needed.
    ///
    /// The pool's own settings apply: give it WAL mode and a busy timeout
    /// (as [`sqlite`](Self::sqlite) does), or concurrent writers fail with
    /// `database is locked`.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when the tables cannot be set up.
    pub async fn from_sqlite_pool(pool: SqlitePool) -> Result<Self, DurableError> {
        // Two processes opening a new file at once race to create the tables
        // (the engine's migrator takes no lock of its own): the one that
        // loses finds them made, and looks again.
        let migrator = riverqueue::migrate::SqliteMigrator::new(pool.clone());
        let mut attempt = 1;
        while let Err(error) = migrator.migrate_up().await {
            if attempt == 5 {
                return Err(DurableError::store(error));
            }
            tracing::debug!(%error, attempt, "durable tables being set up by another process; retrying");
            tokio::time::sleep(Duration::from_millis(50 * attempt)).await;
            attempt += 1;
        }
        Ok(DurableStore {
            backend: Backend::Sqlite(pool),
            options: Options::default(),
        })
    }

    #[cfg(feature = "durable-postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-postgres")))]
    /// Connects to Postgres at `url` (`postgres://user:pass@host:port/db`)
    /// and creates or updates the tables (`river_job` and its companions,
    /// in the connection's search path) if needed.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when it cannot connect or set up the tables.
    pub async fn postgres(url: &str) -> Result<Self, DurableError> {
        let options: PgConnectOptions = url.parse().map_err(DurableError::store)?;
        // One connection first: a wrong address or password fails now, with
        // its own error (a pool would wait out its acquire timeout and say
        // only that it timed out).
        options
            .connect()
            .await
            .map_err(DurableError::store)?
            .close()
            .await
            .map_err(DurableError::store)?;
        let pool = PgPoolOptions::new()
            .max_connections(20)
            .connect_with(options)
            .await
            .map_err(DurableError::store)?;
        Self::from_postgres_pool(pool).await
    }

    #[cfg(feature = "durable-postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-postgres")))]
    /// Uses an open Postgres pool (sqlx 0.9); creates or updates the tables
    /// if needed. Processes starting together take turns (an advisory lock):
    /// the tables are set up once.
    ///
    /// # Errors
    ///
    /// [`DurableError::Store`] when the tables cannot be set up.
    pub async fn from_postgres_pool(pool: PgPool) -> Result<Self, DurableError> {
        // The engine's migrator takes no lock of its own; an advisory lock
        // (a number, no table) keeps two starting processes from racing.
        const MIGRATION_LOCK: i64 = 0x6178_756d_2d62_6772; // "axum-bgr"
        let mut lock = pool.acquire().await.map_err(DurableError::store)?;
        sqlx::query("SELECT pg_advisory_lock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *lock)
            .await
            .map_err(DurableError::store)?;
        let migrated = riverqueue::migrate::PostgresMigrator::new(pool.clone())
            .migrate_up()
            .await
            .map_err(DurableError::store);
        sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(MIGRATION_LOCK)
            .execute(&mut *lock)
            .await
            .map_err(DurableError::store)?;
        migrated?;
        Ok(DurableStore {
            backend: Backend::Postgres(pool),
            options: Options::default(),
        })
    }

    /// The queue this store writes to and works on (default
    /// `"axum-background"`: lower-case letters, digits, and single `-`, `_`
    /// or `|` between them). Processes share work through a queue of the
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
        self.options.concurrency = n.clamp(1, 10_000);
        self
    }

    /// How often an idle worker looks for jobs when no notification of a new
    /// one has arrived (default 1 s). New jobs are announced (Postgres
    /// `NOTIFY`, a table polled every 100 ms on SQLite), so this bounds the
    /// wait only when an announcement is lost or a delayed job falls due.
    #[must_use]
    pub fn poll_interval(mut self, every: Duration) -> Self {
        self.options.poll_interval = every.max(Duration::from_millis(10));
        self
    }

    /// How many times a job may be taken back from a process that died
    /// holding it before it is given up (default 5). Failures are retried by
    /// the task type's [`RetryPolicy`](crate::RetryPolicy), not by this.
    #[must_use]
    pub fn max_rescues(mut self, n: u32) -> Self {
        self.options.max_rescues = n;
        self
    }

    /// How often the leading process looks for jobs held by a process that
    /// died (default 5 s), and how long a leader's lease lasts unrenewed
    /// past its renewal interval (its renewal interval, default 2 s, plus 10
    /// s). A job held by a process that died runs again at most its task's
    /// timeout + 5 s + `check` later, plus the lease when the process that
    /// died was the leader.
    #[must_use]
    pub fn rescue(mut self, check: Duration, leader_renewal: Duration) -> Self {
        self.options.rescue_check = check.max(Duration::from_millis(100));
        self.options.leader_lease = leader_renewal.max(Duration::from_millis(100));
        self
    }

    #[cfg(feature = "durable-sqlite")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-sqlite")))]
    /// The SQLite pool, if this store is kept in SQLite: begin the
    /// transactions that schedule jobs on it (see
    /// [`DurableTasks::tx`](super::DurableTasks::tx)).
    pub fn sqlite_pool(&self) -> Option<&SqlitePool> {
        match &self.backend {
            Backend::Sqlite(pool) => Some(pool),
            #[cfg(feature = "durable-postgres")]
            Backend::Postgres(_) => None,
        }
    }

    #[cfg(feature = "durable-postgres")]
    #[cfg_attr(docsrs, doc(cfg(feature = "durable-postgres")))]
    /// The Postgres pool, if this store is kept in Postgres: begin the
    /// transactions that schedule jobs on it (see
    /// [`DurableTasks::tx`](super::DurableTasks::tx)).
    pub fn postgres_pool(&self) -> Option<&PgPool> {
        match &self.backend {
            Backend::Postgres(pool) => Some(pool),
            #[cfg(feature = "durable-sqlite")]
            Backend::Sqlite(_) => None,
        }
    }
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
