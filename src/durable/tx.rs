//! Scheduling in the caller's transaction.

use std::future::{Future, IntoFuture};
use std::pin::Pin;

use riverqueue::{Client, InsertOpts, InsertResult, JobArgs};

use super::{Durable, DurableError, DurableTask, DurableTasks, Enqueued, enqueued};

/// A sqlx transaction on the durable store's database, in which jobs can be
/// scheduled: `sqlx::Transaction<'_, Sqlite>` with `durable-sqlite`,
/// `sqlx::Transaction<'_, Postgres>` with `durable-postgres`.
pub trait Transaction: sealed::Sealed {}

type Insert<'t, T> = Pin<Box<dyn Future<Output = Result<T, riverqueue::Error>> + Send + 't>>;

mod sealed {
    use super::{Client, Insert, InsertOpts, InsertResult, JobArgs};

    /// The engine's insert in this transaction (not for use outside the
    /// crate: the trait cannot be named there).
    pub trait Sealed: Send {
        fn insert<'t, A: JobArgs>(
            &'t mut self,
            client: &'t Client,
            args: A,
            opts: InsertOpts,
        ) -> Insert<'t, InsertResult<A>>;

        fn insert_many<'t, A: JobArgs>(
            &'t mut self,
            client: &'t Client,
            jobs: Vec<(A, InsertOpts)>,
        ) -> Insert<'t, Vec<InsertResult<A>>>;
    }
}

macro_rules! transaction {
    ($feature:literal, $db:ty) => {
        #[cfg(feature = $feature)]
        impl sealed::Sealed for sqlx::Transaction<'_, $db> {
            fn insert<'t, A: JobArgs>(
                &'t mut self,
                client: &'t Client,
                args: A,
                opts: InsertOpts,
            ) -> Insert<'t, InsertResult<A>> {
                client.insert(args).opts(opts).tx(self).into_future()
            }

            fn insert_many<'t, A: JobArgs>(
                &'t mut self,
                client: &'t Client,
                jobs: Vec<(A, InsertOpts)>,
            ) -> Insert<'t, Vec<InsertResult<A>>> {
                client.insert_many(jobs).tx(self).into_future()
            }
        }

        #[cfg(feature = $feature)]
        impl Transaction for sqlx::Transaction<'_, $db> {}
    };
}

transaction!("durable-sqlite", sqlx::Sqlite);
transaction!("durable-postgres", sqlx::Postgres);

/// Schedules durable tasks in a transaction; from [`DurableTasks::tx`].
#[derive(Debug)]
pub struct InTransaction<'t, X> {
    tasks: DurableTasks,
    tx: &'t mut X,
}

impl<'t, X: Transaction> InTransaction<'t, X> {
    pub(super) fn new(tasks: DurableTasks, tx: &'t mut X) -> Self {
        InTransaction { tasks, tx }
    }

    /// Writes `task` in the transaction: workers see it once the
    /// transaction commits. A duplicate of a unique job returns the
    /// existing job's id and leaves the transaction usable.
    ///
    /// # Errors
    ///
    /// As [`DurableTasks::schedule`]. After a [`DurableError::Store`] the
    /// transaction may hold part of the write: roll it back.
    pub async fn schedule<T: DurableTask>(self, task: T) -> Result<Enqueued, DurableError> {
        let shared = self.tasks.tasks.shared();
        let (durable, store) = Durable::of(shared)?;
        let registration = durable.lookup::<T>()?;
        let (args, opts) = self.tasks.stored(&task, durable, registration, store)?;
        let client = durable.client(shared)?;
        Ok(enqueued(self.tx.insert(client, args, opts).await?))
    }

    /// Writes several tasks of one type in the transaction; returned in
    /// order.
    ///
    /// # Errors
    ///
    /// As [`schedule`](Self::schedule).
    pub async fn schedule_many<T: DurableTask>(
        self,
        tasks: impl IntoIterator<Item = T>,
    ) -> Result<Vec<Enqueued>, DurableError> {
        let shared = self.tasks.tasks.shared();
        let (durable, store) = Durable::of(shared)?;
        let registration = durable.lookup::<T>()?;
        let jobs = tasks
            .into_iter()
            .map(|task| self.tasks.stored(&task, durable, registration, store))
            .collect::<Result<Vec<_>, _>>()?;
        if jobs.is_empty() {
            return Ok(Vec::new());
        }
        let client = durable.client(shared)?;
        let results = self.tx.insert_many(client, jobs).await?;
        Ok(results.into_iter().map(enqueued).collect())
    }
}
