//! Blocking detection: an async task whose poll holds its worker thread
//! longer than a threshold is logged once, counted, and marked (its
//! [`TaskInfo::blocked`](crate::TaskInfo::blocked)).
//!
//! Reading a clock around every poll would cost more than the rest of a
//! task's bookkeeping, so a poll only stamps its thread's slot with a coarse
//! tick and the task it polls: a watchdog thread (one per process, started
//! with the first `Background` that detects) advances the tick every quarter
//! threshold and reads the slots. A slot still stamped a threshold ago holds
//! its thread; the watchdog looks its task up by id.

#[cfg(axum_background_loom)]
use loom::sync::atomic::{AtomicU64, Ordering, fence};
use std::cell::OnceCell;
#[cfg(not(axum_background_loom))]
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::sync::{Arc, Mutex, OnceLock, PoisonError, Weak};
use std::time::Duration;

use crate::cell::TaskCell;
use crate::info::TaskId;
use crate::inner::Shared;
use crate::mode::ModeKind;

/// How long a poll may hold its thread before it is reported, unless the
/// builder says otherwise: far above a well-behaved poll (microseconds),
/// short enough that a request queued behind it is visibly late.
pub(crate) const DEFAULT_THRESHOLD: Duration = Duration::from_millis(100);

/// Ticks per threshold: a held thread is seen within a quarter threshold of
/// the threshold passing.
const TICKS_PER_THRESHOLD: u32 = 4;

/// One worker thread's stamp: a seqlock over (task, `Background`), keyed by
/// the tick its poll began at (0: no poll).
///
/// # Invariant
///
/// [`Slot::read`] returns `Some((since, background, task))` only if a poll
/// stamped with exactly those values began at tick `since` and was running at
/// some point during the read (or another poll began at the same tick, which
/// is as right to name).
///
/// Orderings: a stamp is the seqlock's write: a `Release` fence after the
/// previous poll's clear (`since` = 0), then the ids (`Relaxed`), then
/// `since` with `Release`. A read loads `since` with `Acquire` (it sees the
/// ids of the stamp it read, or later ones), the ids (`Relaxed`), then an
/// `Acquire` fence and `since` again: if the ids came from a later stamp, the
/// fence pairs with that stamp's fence, and the second load sees its clear
/// or its tick, never the first value again unless the later stamp is of the
/// same tick. The loom model below checks this.
#[derive(Default)]
struct Slot {
    since: AtomicU64,
    background: AtomicU64,
    task: AtomicU64,
}

impl Slot {
    fn stamp(&self, background: u64, task: u64, tick: u64) {
        fence(Ordering::Release);
        self.background.store(background, Ordering::Relaxed);
        self.task.store(task, Ordering::Relaxed);
        self.since.store(tick, Ordering::Release);
    }

    fn clear(&self) {
        self.since.store(0, Ordering::Relaxed);
    }

    fn read(&self) -> Option<(u64, u64, u64)> {
        let since = self.since.load(Ordering::Acquire);
        let background = self.background.load(Ordering::Relaxed);
        let task = self.task.load(Ordering::Relaxed);
        fence(Ordering::Acquire);
        let again = self.since.load(Ordering::Relaxed);
        (since != 0 && since == again).then_some((since, background, task))
    }
}

/// The process's watchdog: the tick, the slots, and the `Background`s that
/// detect (by index).
struct Watchdog {
    tick: AtomicU64,
    tick_length: Duration,
    slots: Mutex<Vec<Weak<Slot>>>,
    backgrounds: Mutex<Vec<Weak<Shared>>>,
}

static WATCHDOG: OnceLock<Watchdog> = OnceLock::new();

thread_local! {
    static SLOT: OnceCell<Arc<Slot>> = const { OnceCell::new() };
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while these locks are held.
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

fn watchdog(first_threshold: Duration) -> &'static Watchdog {
    WATCHDOG.get_or_init(|| {
        let spawned = std::thread::Builder::new()
            .name("axum-background-watchdog".into())
            .spawn(watch);
        if let Err(error) = spawned {
            tracing::error!(%error, "blocking detection off: its watchdog thread did not start");
        }
        Watchdog {
            tick: AtomicU64::new(1),
            tick_length: (first_threshold / TICKS_PER_THRESHOLD).max(Duration::from_millis(1)),
            slots: Mutex::new(Vec::new()),
            backgrounds: Mutex::new(Vec::new()),
        }
    })
}

/// A `Background`'s detection: its index with the watchdog, and its
/// threshold in ticks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Detection {
    index: u64,
    ticks: u64,
}

impl Detection {
    /// Registers a `Background` about to be built with the watchdog (started
    /// once per process; the first threshold asked for sets the tick, and a
    /// shorter one later is read at that tick's precision).
    pub(crate) fn register(threshold: Duration) -> Detection {
        let watchdog = watchdog(threshold);
        let ticks = threshold.as_nanos() / watchdog.tick_length.as_nanos().max(1);
        let mut backgrounds = lock(&watchdog.backgrounds);
        backgrounds.push(Weak::new());
        Detection {
            index: (backgrounds.len() - 1) as u64,
            ticks: u64::try_from(ticks).unwrap_or(u64::MAX).max(1),
        }
    }

    /// The `Background` is built: the watchdog can find its tasks.
    pub(crate) fn attach(self, shared: &Arc<Shared>) {
        if let Some(watchdog) = WATCHDOG.get()
            && let Ok(index) = usize::try_from(self.index)
            && let Some(slot) = lock(&watchdog.backgrounds).get_mut(index)
        {
            *slot = Arc::downgrade(shared);
        }
    }
}

/// Stamps this thread's slot for a poll of `cell`, if its `Background`
/// detects and it is an async task (a sync task's thread is its own to
/// block).
#[inline]
pub(crate) fn poll_begins(shared: &Shared, cell: &TaskCell) {
    let Some(detection) = shared.detection else {
        return;
    };
    if cell.mode != ModeKind::Async {
        return;
    }
    let Some(watchdog) = WATCHDOG.get() else {
        return;
    };
    let _ = SLOT.try_with(|slot| {
        let slot = slot.get_or_init(|| {
            let slot = Arc::new(Slot::default());
            lock(&watchdog.slots).push(Arc::downgrade(&slot));
            slot
        });
        // Relaxed: the tick is a clock reading; a stale one only makes a
        // held thread look held for a tick longer.
        let tick = watchdog.tick.load(Ordering::Relaxed);
        slot.stamp(detection.index, cell.id.as_u64(), tick);
    });
}

/// The poll stamped by [`poll_begins`] has returned.
#[inline]
pub(crate) fn poll_ends(shared: &Shared) {
    if shared.detection.is_none() {
        return;
    }
    let _ = SLOT.try_with(|slot| {
        if let Some(slot) = slot.get() {
            slot.clear();
        }
    });
}

/// The watchdog thread: advances the tick, and reports the polls that hold
/// their thread.
fn watch() {
    // `WATCHDOG` is set by the thread that spawned this one, right after.
    let watchdog = loop {
        if let Some(watchdog) = WATCHDOG.get() {
            break watchdog;
        }
        std::thread::yield_now();
    };
    loop {
        std::thread::sleep(watchdog.tick_length);
        // Relaxed: only this thread writes the tick; pollers read it as a
        // clock (see `poll_begins`).
        let now = watchdog.tick.fetch_add(1, Ordering::Relaxed) + 1;
        let held: Vec<(u64, u64, u64)> = {
            let mut slots = lock(&watchdog.slots);
            slots.retain(|slot| slot.strong_count() > 0);
            slots
                .iter()
                .filter_map(Weak::upgrade)
                .filter_map(|slot| slot.read())
                .collect()
        };
        for (since, background, task) in held {
            let shared = usize::try_from(background).ok().and_then(|index| {
                lock(&watchdog.backgrounds)
                    .get(index)
                    .and_then(Weak::upgrade)
            });
            let Some(shared) = shared else { continue };
            let Some(detection) = shared.detection else {
                continue;
            };
            let held_ticks = now.saturating_sub(since);
            if held_ticks < detection.ticks {
                continue;
            }
            if let Some(cell) = shared.registry.get(TaskId(task)) {
                let ticks = u32::try_from(held_ticks).unwrap_or(u32::MAX);
                held_thread(&cell, watchdog.tick_length.saturating_mul(ticks));
            }
        }
    }
}

/// `cell`'s poll has held its thread for `held` (at least): marked, and the
/// first time logged and counted.
fn held_thread(cell: &TaskCell, held: Duration) {
    if cell.mark_blocked(held) {
        tracing::warn!(
            task.id = %cell.id,
            task.name = %cell.name(),
            held_ms = u64::try_from(held.as_millis()).unwrap_or(u64::MAX),
            "async task is blocking its runtime worker thread: move the blocking work \
             to a sync task (mode::Sync) or tokio::task::spawn_blocking"
        );
        cell.metrics.blocked();
    }
}

/// The stamp's seqlock under every interleaving loom finds: a poller stamps
/// two polls in turn while the watchdog reads. Run by `.ci/run`:
/// `RUSTFLAGS="--cfg axum_background_loom" cargo test --lib loom`.
#[cfg(all(test, axum_background_loom))]
mod loom_model {
    use loom::sync::Arc;
    use loom::thread;

    use super::Slot;

    #[test]
    fn loom_a_read_names_a_poll_with_its_own_tick() {
        loom::model(|| {
            let slot = Arc::new(Slot::default());
            let poller = {
                let slot = Arc::clone(&slot);
                thread::spawn(move || {
                    slot.stamp(7, 10, 1);
                    slot.clear();
                    slot.stamp(7, 20, 2);
                    slot.clear();
                })
            };
            if let Some((since, background, task)) = slot.read() {
                assert_eq!(background, 7);
                assert!(
                    (since, task) == (1, 10) || (since, task) == (2, 20),
                    "read tick {since} with task {task}"
                );
            }
            poller.join().unwrap();
        });
    }
}
