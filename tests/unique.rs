//! Unique tasks: while a task with a key is in flight, scheduling another
//! with the same key returns the first one's handle and runs nothing.

mod util;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum_background::Background;
use tokio::sync::Notify;
use util::{assert_settled, within};

/// A task that counts its runs and waits for `release`.
fn held(runs: &Arc<AtomicUsize>, release: &Arc<Notify>) -> impl Future<Output = ()> + use<> {
    let (runs, release) = (Arc::clone(runs), Arc::clone(release));
    async move {
        runs.fetch_add(1, Ordering::SeqCst);
        release.notified().await;
    }
}

#[tokio::test]
async fn a_task_scheduled_while_its_key_is_in_flight_gets_the_holders_handle() {
    let background = Background::new();
    let (runs, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let unique = background.task().unique("invoice:42").build();

    let first = unique.schedule(held(&runs, &release));
    within("the first task starts", first.started()).await;
    let second = unique.schedule(held(&runs, &release));

    assert!(!first.is_duplicate());
    assert!(second.is_duplicate(), "{second:?}");
    assert_eq!(second.id(), first.id(), "the holder's handle");
    release.notify_waiters();
    within("the task ends", second.outcome())
        .await
        .expect("it succeeds");
    within("idle", background.wait_idle()).await;
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the duplicate ran");
    let stats = background.stats();
    assert_eq!(stats.scheduled, 1, "a duplicate is not a task: {stats:?}");
    assert_settled(stats);
}

#[tokio::test]
async fn a_key_is_free_again_once_its_task_has_ended() {
    let background = Background::new();
    let unique = background.task().unique("cleanup").build();
    let first = unique.schedule(async {});
    within("the first task ends", first.outcome())
        .await
        .expect("it succeeds");
    within("idle", background.wait_idle()).await;

    let second = unique.schedule(async {});
    assert!(!second.is_duplicate());
    assert_ne!(second.id(), first.id());
    within("the second task ends", second.outcome())
        .await
        .expect("it succeeds");
}

#[tokio::test]
async fn tasks_with_other_keys_or_none_are_not_held_back() {
    let background = Background::new();
    let (runs, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let a = background
        .task()
        .unique("a")
        .build()
        .schedule(held(&runs, &release));
    let b = background
        .task()
        .unique("b")
        .build()
        .schedule(held(&runs, &release));
    let plain = background.schedule(held(&runs, &release));
    for handle in [&a, &b, &plain] {
        assert!(!handle.is_duplicate());
        within("each task starts", handle.started()).await;
    }
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    release.notify_waiters();
    within("idle", background.wait_idle()).await;
}

/// Many threads schedule the same key at once: one task runs, every other
/// schedule gets its handle.
#[test]
fn concurrent_schedules_of_one_key_start_one_task() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let background = runtime.block_on(async { Background::new() });
    let (runs, release) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
    let handles: Vec<_> = std::thread::scope(|scope| {
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let (background, runs, release) = (&background, &runs, &release);
                scope.spawn(move || {
                    (0..50)
                        .map(|_| {
                            background
                                .task()
                                .unique("report")
                                .build()
                                .schedule(held(runs, release))
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        threads
            .into_iter()
            .flat_map(|thread| thread.join().expect("scheduler thread"))
            .collect()
    });
    let holders: Vec<_> = handles.iter().filter(|h| !h.is_duplicate()).collect();
    assert_eq!(holders.len(), 1, "one task holds the key");
    let holder = holders[0].id();
    assert!(handles.iter().all(|h| h.id() == holder));
    runtime.block_on(async {
        // A permit, not a wake: the task may not be waiting yet.
        release.notify_one();
        within("idle", background.wait_idle()).await;
    });
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
