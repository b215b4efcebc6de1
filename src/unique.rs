//! Unique tasks: at most one task in flight per key. Scheduling a task whose
//! key is taken returns the handle of the task that holds it.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use crate::TaskId;
use crate::cell::TaskCell;
use crate::registry::Registry;

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
    /// The task in flight that holds `key`, if any; else `make` builds the
    /// new task, which takes the key. Under one lock: two schedules of one
    /// key cannot both start a task.
    pub(crate) fn claim_or(
        &self,
        key: Cow<'static, str>,
        registry: &Registry<TaskCell>,
        make: impl FnOnce() -> Arc<TaskCell>,
    ) -> Result<Arc<TaskCell>, Arc<TaskCell>> {
        let mut keys = self.lock();
        if let Some(holder) = keys.by_key.get(&key).and_then(|id| registry.get(*id)) {
            return Err(holder);
        }
        let cell = make();
        keys.by_task.insert(cell.id, key.clone());
        keys.by_key.insert(key, cell.id);
        Ok(cell)
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
