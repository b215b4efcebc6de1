//! In-process tasks of durable types kept against shutdown: a task of a type
//! registered with `persist_on_shutdown` is serialised when it is scheduled
//! and, if shutdown cuts it off, written to the store to run on the next
//! start.

use std::any::Any;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::value::RawValue;

use super::Durable;
use crate::TaskError;
use crate::handle::TaskHandle;
use crate::info::TaskId;
use crate::inner::Shared;

/// A task kept in its stored form until it ends.
pub(crate) struct Kept {
    name: &'static str,
    task: Box<RawValue>,
}

/// The kept tasks in flight, and those shutdown wrote to the store.
#[derive(Debug, Default)]
pub(crate) struct KeptTasks {
    in_flight: Mutex<HashMap<TaskId, (Kept, TaskHandle)>>,
    stored: Mutex<HashSet<TaskId>>,
}

impl std::fmt::Debug for Kept {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kept")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while these locks are held.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Kept {
    /// `task` in its stored form, if its type is registered to persist on
    /// shutdown (a task that cannot be serialised is not kept, and says so).
    pub(crate) fn of<T: Any>(shared: &Shared, task: &T) -> Option<Kept> {
        let durable = shared.extensions.get::<Durable>()?;
        if !durable.persisting {
            return None;
        }
        let registration = durable
            .registry
            .values()
            .find(|r| r.persist && r.type_id == std::any::TypeId::of::<T>())?;
        match (registration.encode)(task) {
            Some(Ok(task)) => Some(Kept {
                name: registration.name,
                task,
            }),
            Some(Err(error)) => {
                tracing::error!(name = registration.name, %error, "task not kept for shutdown: it cannot be serialised");
                None
            }
            None => None,
        }
    }

    /// Keeps it while its task is in flight: removed when the task ends,
    /// unless shutdown has cut it off.
    pub(crate) fn watch(self, shared: &Arc<Shared>, handle: TaskHandle) {
        let Some(durable) = shared.extensions.get::<Durable>() else {
            return;
        };
        let Some(runtime) = shared.runtime() else {
            return;
        };
        let id = handle.id();
        lock(&durable.kept.in_flight).insert(id, (self, handle.clone()));
        let shared = Arc::downgrade(shared);
        runtime.spawn(async move {
            let outcome = handle.outcome().await;
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let cut_off = matches!(outcome, Err(TaskError::Cancelled)) && shared.is_closing();
            if !cut_off && let Some(durable) = shared.extensions.get::<Durable>() {
                lock(&durable.kept.in_flight).remove(&id);
            }
        });
    }
}

impl KeptTasks {
    /// Writes the tasks shutdown cut off to the store (the tasks have settled).
    pub(crate) async fn store(&self, durable: &Durable, shared: &Arc<Shared>) {
        let cut_off: Vec<(TaskId, Kept)> = lock(&self.in_flight)
            .drain()
            .filter(|(_, (_, handle))| {
                matches!(handle.try_outcome(), Some(Err(TaskError::Cancelled)))
            })
            .map(|(id, (kept, _))| (id, kept))
            .collect();
        if cut_off.is_empty() {
            return;
        }
        let (client, store) = match (durable.client(shared), durable.store.as_ref()) {
            (Ok(client), Some(store)) => (client, store),
            (Err(error), _) => {
                tracing::error!(%error, lost = cut_off.len(), "tasks cut off by shutdown not stored");
                return;
            }
            (_, None) => return,
        };
        for (id, kept) in cut_off {
            let Some(registration) = durable.registry.get(kept.name) else {
                continue;
            };
            let opts = durable.insert_opts(registration, store);
            match (registration.insert_raw)(client, kept.task, opts).await {
                Ok(job) => {
                    tracing::info!(task.id = %id, task.name = kept.name, job, "task cut off by shutdown stored: it runs on the next start");
                    lock(&self.stored).insert(id);
                }
                Err(error) => {
                    tracing::error!(task.id = %id, task.name = kept.name, %error, "task cut off by shutdown not stored")
                }
            }
        }
    }

    /// Whether shutdown wrote the task with this id to the store.
    pub(crate) fn is_stored(&self, id: TaskId) -> bool {
        lock(&self.stored).contains(&id)
    }
}
