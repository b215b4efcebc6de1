//! Unique tasks: at most one task in flight per key. Scheduling a task whose
//! key is taken returns the handle of the task that holds it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::TaskId;

/// The keys of the unique tasks in flight, both ways round. Only unique
/// tasks come here: other tasks pay nothing for it.
#[derive(Debug, Default)]
pub(crate) struct UniqueKeys {
    keys: Mutex<Keys>,
}

#[derive(Debug, Default)]
struct Keys {
    by_key: HashMap<Cow<'static, str>, TaskId>,
    by_task: HashMap<TaskId, Cow<'static, str>>,
}

impl UniqueKeys {
    /// The task in flight that holds `key` (as `in_flight` finds it by id),
    /// if any; else `make` registers the new task, which takes the key.
    /// Under one lock: two schedules of one key cannot both start a task.
    pub(crate) fn claim_or<T>(
        &self,
        key: Cow<'static, str>,
        in_flight: impl FnOnce(TaskId) -> Option<T>,
        make: impl FnOnce() -> (TaskId, T),
    ) -> Result<T, T> {
        let mut keys = self.lock();
        if let Some(holder) = keys.by_key.get(&key).and_then(|id| in_flight(*id)) {
            return Err(holder);
        }
        let (id, task) = make();
        keys.by_task.insert(id, key.clone());
        keys.by_key.insert(key, id);
        Ok(task)
    }

    /// Frees the key of a unique task that has ended.
    pub(crate) fn release(&self, id: TaskId) {
        let mut keys = self.lock();
        if let Some(key) = keys.by_task.remove(&id) {
            // The key may already be held by a newer task (this one had
            // left the registry when the newer one was scheduled).
            if keys.by_key.get(&key) == Some(&id) {
                keys.by_key.remove(&key);
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Keys> {
        // Nothing panics while the lock is held.
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }
}
