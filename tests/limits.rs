//! Limits that hold under load: the blocking-pool bound (`max_blocking`), the
//! in-flight bound (`max_in_flight` with `OverflowPolicy::Wait` / `Reject`),
//! per-task timeouts and retries with backoff, and how shutdown treats tasks
//! waiting for a slot.
//!
//! That the type system refuses `retry` for a task that cannot run again is
//! checked by the `compile_fail` doctest on `ConfiguredTasks::<Retrying>::schedule`
//! in `src/extractor.rs`; it is not repeated here.

mod util;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::ThreadId;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::response::Response;
use axum::routing::get;
use axum_background::handler::{IntoErrorHandler, SharedErrorHandler};
use axum_background::{
    Background, BackgroundTask, BoxError, FlowLimit, OverflowPolicy, Phase, RejectReason,
    RetryPolicy, TaskConfig, TaskContext, TaskError, TaskHandle, TaskId, TaskInfo, Tasks, mode,
};
use bytes::Bytes;
use futures_util::stream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_test::{assert_pending, task};
use tower::ServiceExt;

use util::assert_settled;
use util::{Events, within};

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// How many tasks run at this moment, and the most that ever did.
#[derive(Clone, Default)]
struct HighWater(Arc<(AtomicUsize, AtomicUsize)>);

impl HighWater {
    /// Counts the caller as running until the returned guard drops.
    fn enter(&self) -> Running {
        let (now, max) = &*self.0;
        let running = now.fetch_add(1, Ordering::SeqCst) + 1;
        max.fetch_max(running, Ordering::SeqCst);
        Running(self.clone())
    }

    fn max(&self) -> usize {
        self.0.1.load(Ordering::SeqCst)
    }
}

struct Running(HighWater);

impl Drop for Running {
    fn drop(&mut self) {
        self.0.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How many times each task ran, keyed by the id the task reads from its
/// own `TaskContext`.
#[derive(Clone, Default)]
struct Runs(Arc<Mutex<HashMap<TaskId, u32>>>);

impl Runs {
    fn record(&self) {
        let id = TaskContext::current().expect("inside a task").info().id;
        *self.0.lock().unwrap().entry(id).or_default() += 1;
    }

    fn of(&self, id: TaskId) -> u32 {
        self.0.lock().unwrap().get(&id).copied().unwrap_or(0)
    }

    fn total(&self) -> u32 {
        self.0.lock().unwrap().values().sum()
    }
}

/// A gate blocking threads until it opens (for sync tasks); see [`gate`].
#[derive(Clone)]
struct Gate(Arc<(Mutex<bool>, Condvar)>);

impl Gate {
    fn wait(&self) {
        let (open, changed) = &*self.0;
        let mut open = open.lock().unwrap();
        while !*open {
            open = changed.wait(open).unwrap();
        }
    }
}

/// Opens its gate when told or when dropped, so that a failing test never
/// leaves a blocking-pool thread (and the runtime's shutdown) waiting for ever.
struct Opener(Gate);

impl Opener {
    fn open(&self) {
        let (open, changed) = &*(self.0).0;
        *open.lock().unwrap() = true;
        changed.notify_all();
    }
}

impl Drop for Opener {
    fn drop(&mut self) {
        self.open();
    }
}

fn gate() -> (Gate, Opener) {
    let gate = Gate(Arc::default());
    (gate.clone(), Opener(gate))
}

/// Every error-handler call: the task as the handler saw it, and why.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<Vec<(TaskInfo, TaskError)>>>);

impl Calls {
    fn handler(&self) -> impl Fn(&TaskInfo, &TaskError) + Send + Sync + 'static {
        let calls = self.clone();
        move |info: &TaskInfo, error: &TaskError| {
            calls.0.lock().unwrap().push((info.clone(), error.clone()));
        }
    }

    fn snapshot(&self) -> Vec<(TaskInfo, TaskError)> {
        self.0.lock().unwrap().clone()
    }

    fn kinds(&self) -> Vec<(TaskId, &'static str)> {
        self.snapshot()
            .iter()
            .map(|(info, error)| (info.id, error.kind()))
            .collect()
    }
}

fn ids(infos: &[TaskInfo]) -> Vec<TaskId> {
    infos.iter().map(|info| info.id).collect()
}

fn handle_ids<'a>(handles: impl IntoIterator<Item = &'a TaskHandle>) -> Vec<TaskId> {
    handles.into_iter().map(TaskHandle::id).collect()
}

fn expect_rejected_at_limit(outcome: &Result<(), TaskError>, limit: usize) {
    match outcome {
        Err(TaskError::Rejected(RejectReason::LimitReached { limit: got })) => {
            assert_eq!(*got, limit, "{outcome:?}");
        }
        other => panic!("expected Rejected(LimitReached {{ limit: {limit} }}), got {other:?}"),
    }
}

/// Sends a GET through `app` and returns its status.
async fn get_status(app: Router, uri: &str) -> StatusCode {
    let request = Request::get(uri).body(Body::empty()).unwrap();
    within("response", app.oneshot(request))
        .await
        .unwrap()
        .status()
}

// ---------------------------------------------------------------------------
// max_blocking
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_blocking_never_runs_more_than_n_sync_tasks_at_once() {
    const TASKS: usize = 2_000;
    const LIMIT: usize = 8;
    let background = Background::builder().max_blocking(LIMIT).build();
    let high_water = HighWater::default();
    let runs = Runs::default();
    let (gate, opener) = gate();
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();

    // Four threads schedule at once; every task holds at the gate until the
    // test has seen the pool full.
    let handles: Vec<TaskHandle> = std::thread::scope(|scope| {
        let schedulers: Vec<_> = (0..4)
            .map(|_| {
                let (background, high_water, runs) = (&background, &high_water, &runs);
                let (gate, started_tx) = (&gate, &started_tx);
                scope.spawn(move || {
                    (0..TASKS / 4)
                        .map(|_| {
                            let (high_water, runs) = (high_water.clone(), runs.clone());
                            let (gate, started_tx) = (gate.clone(), started_tx.clone());
                            background.schedule(move || {
                                let _running = high_water.enter();
                                runs.record();
                                let _ = started_tx.send(());
                                gate.wait();
                                std::thread::yield_now();
                            })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        schedulers
            .into_iter()
            .flat_map(|scheduler| scheduler.join().unwrap())
            .collect()
    });
    assert_eq!(handles.len(), TASKS);

    for _ in 0..LIMIT {
        within("a sync task to start", started_rx.recv()).await;
    }
    // `LIMIT` tasks hold their threads: every other task waits, unstarted.
    let stats = background.stats();
    assert_eq!(
        (stats.running, stats.queued),
        (LIMIT as u64, (TASKS - LIMIT) as u64),
        "{stats:?}"
    );
    assert_eq!(
        handles.iter().filter(|handle| handle.is_started()).count(),
        LIMIT
    );

    opener.open();
    within("every task", background.wait_idle()).await;

    assert_eq!(
        high_water.max(),
        LIMIT,
        "more sync tasks ran at once than allowed"
    );
    for handle in &handles {
        assert!(matches!(handle.try_outcome(), Some(Ok(()))), "{handle:?}");
        assert_eq!(runs.of(handle.id()), 1, "task {} ran", handle.id());
    }
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.completed),
        (TASKS as u64, TASKS as u64),
        "{stats:?}"
    );
    assert_settled(stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_blocking_starts_queued_sync_tasks_in_schedule_order() {
    const QUEUED: usize = 100;
    let background = Background::builder().max_blocking(1).build();
    let events = Events::default();
    let high_water = HighWater::default();
    let (gate, opener) = gate();

    let (inside_tx, inside_rx) = oneshot::channel();
    background.schedule({
        let (events, high_water, gate) = (events.clone(), high_water.clone(), gate.clone());
        move || {
            let _running = high_water.enter();
            events.push("first");
            let _ = inside_tx.send(());
            gate.wait();
        }
    });
    // (Signalled from inside the task: by then the counters count it running.)
    within("the first task to start", inside_rx).await.unwrap();
    let queued: Vec<TaskHandle> = (0..QUEUED)
        .map(|i| {
            let (events, high_water) = (events.clone(), high_water.clone());
            background.schedule(move || {
                let _running = high_water.enter();
                events.push(format!("task {i}"));
            })
        })
        .collect();
    assert!(queued.iter().all(|handle| !handle.is_started()));
    assert_eq!(background.stats().queued, QUEUED as u64);

    opener.open();
    within("every task", background.wait_idle()).await;

    let expected: Vec<String> = std::iter::once("first".to_owned())
        .chain((0..QUEUED).map(|i| format!("task {i}")))
        .collect();
    assert_eq!(events.snapshot(), expected);
    assert_eq!(high_water.max(), 1);
    assert_settled(background.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_blocking_does_not_hold_back_async_tasks() {
    let background = Background::builder().max_blocking(1).build();
    let (gate, opener) = gate();
    let blocker = background.schedule({
        let gate = gate.clone();
        move || gate.wait()
    });
    within("the blocker to start", blocker.started()).await;
    let queued_sync = background.schedule(|| ());

    let async_task = background.schedule(async {});
    let outcome = within("the async task", async_task.outcome()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    assert!(!queued_sync.is_started(), "the sync task jumped the limit");
    opener.open();
    within("every task", background.wait_idle()).await;
    assert!(matches!(queued_sync.try_outcome(), Some(Ok(()))));
}

/// A sync task past its timeout has ended, but its thread has not: the thread
/// keeps its `max_blocking` permit, so the bound counts real threads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timed_out_sync_task_keeps_its_blocking_slot_until_its_thread_ends() {
    let background = Background::builder().max_blocking(1).build();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let thread_ended = Arc::new(AtomicBool::new(false));

    let slow = background
        .task()
        .timeout(Duration::from_millis(50))
        .build()
        .schedule({
            let thread_ended = Arc::clone(&thread_ended);
            move || {
                let _ = release_rx.recv();
                thread_ended.store(true, Ordering::SeqCst);
            }
        });
    let next = background.schedule({
        let thread_ended = Arc::clone(&thread_ended);
        move || -> Result<(), BoxError> {
            if thread_ended.load(Ordering::SeqCst) {
                Ok(())
            } else {
                Err("started while the timed-out task's thread still ran".into())
            }
        }
    });
    let outcome = within("the timeout", slow.outcome()).await;
    assert!(matches!(outcome, Err(TaskError::TimedOut)), "{outcome:?}");

    // The slot is still taken by the thread that runs on: `next` must wait.
    let started = tokio::time::timeout(Duration::from_millis(50), next.started()).await;
    assert!(
        started.is_err(),
        "a sync task started while a timed-out one still held the only thread"
    );
    release_tx.send(()).unwrap();
    let outcome = within("the next task", next.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    within("every task", background.wait_idle()).await;
    assert_settled(background.stats());
}

// ---------------------------------------------------------------------------
// max_in_flight
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_in_flight_wait_queues_the_excess_and_runs_every_task_once() {
    const LIMIT: usize = 4;
    const TASKS: usize = 400;
    let background = Background::builder()
        .max_in_flight(LIMIT)
        .overflow(OverflowPolicy::Wait)
        .build();
    let high_water = HighWater::default();
    let runs = Runs::default();
    let (open_tx, open_rx) = watch::channel(false);
    let (inside_tx, mut inside_rx) = mpsc::unbounded_channel::<()>();

    // The first LIMIT tasks hold their slots until the gate opens.
    let holders: Vec<TaskHandle> = (0..LIMIT)
        .map(|_| {
            let (high_water, runs, mut open) = (high_water.clone(), runs.clone(), open_rx.clone());
            let inside = inside_tx.clone();
            background.schedule(async move {
                let _running = high_water.enter();
                runs.record();
                let _ = inside.send(());
                let _ = open.wait_for(|open| *open).await;
            })
        })
        .collect();
    for _ in 0..LIMIT {
        within("a holder to start", inside_rx.recv()).await;
    }

    // `schedule` returns at once even though no slot is free, from several
    // threads, for both modes.
    let rest: Vec<TaskHandle> = std::thread::scope(|scope| {
        let schedulers: Vec<_> = (0..4)
            .map(|thread| {
                let (background, high_water, runs) = (&background, &high_water, &runs);
                scope.spawn(move || {
                    (0..(TASKS - LIMIT) / 4)
                        .map(|i| {
                            let (high_water, runs) = (high_water.clone(), runs.clone());
                            if (thread + i) % 2 == 0 {
                                background.schedule(async move {
                                    let _running = high_water.enter();
                                    runs.record();
                                    tokio::task::yield_now().await;
                                })
                            } else {
                                background.schedule(move || {
                                    let _running = high_water.enter();
                                    runs.record();
                                    std::thread::yield_now();
                                })
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        schedulers
            .into_iter()
            .flat_map(|scheduler| scheduler.join().unwrap())
            .collect()
    });
    let stats = background.stats();
    assert_eq!(
        (stats.running, stats.queued),
        (LIMIT as u64, (TASKS - LIMIT) as u64),
        "{stats:?}"
    );
    assert!(rest.iter().all(|handle| !handle.is_started()));

    open_tx.send_replace(true);
    within("every task", background.wait_idle()).await;

    assert_eq!(high_water.max(), LIMIT);
    for handle in holders.iter().chain(&rest) {
        assert!(matches!(handle.try_outcome(), Some(Ok(()))), "{handle:?}");
        assert_eq!(runs.of(handle.id()), 1, "task {} ran", handle.id());
    }
    assert_eq!(runs.total(), TASKS as u32);
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.completed),
        (TASKS as u64, TASKS as u64),
        "{stats:?}"
    );
    assert_settled(stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_in_flight_wait_starts_queued_tasks_of_both_modes_in_schedule_order() {
    let background = Background::builder().max_in_flight(1).build();
    let events = Events::default();
    let high_water = HighWater::default();
    let (open_tx, mut open_rx) = watch::channel(false);

    let holder = background.schedule({
        let high_water = high_water.clone();
        async move {
            let _running = high_water.enter();
            let _ = open_rx.wait_for(|open| *open).await;
        }
    });
    within("the holder to start", holder.started()).await;
    let queued: Vec<TaskHandle> = (0..20)
        .map(|i| {
            let (events, high_water) = (events.clone(), high_water.clone());
            if i % 2 == 0 {
                background.schedule(async move {
                    let _running = high_water.enter();
                    events.push(format!("task {i}"));
                })
            } else {
                background.schedule(move || {
                    let _running = high_water.enter();
                    events.push(format!("task {i}"));
                })
            }
        })
        .collect();
    assert!(queued.iter().all(|handle| !handle.is_started()));

    open_tx.send_replace(true);
    within("every task", background.wait_idle()).await;

    let expected: Vec<String> = (0..20).map(|i| format!("task {i}")).collect();
    assert_eq!(events.snapshot(), expected);
    assert_eq!(high_water.max(), 1);
    assert_settled(background.stats());
}

struct Named;

impl BackgroundTask<()> for Named {
    type Mode = mode::Async;

    async fn run(self) {
        panic!("a rejected task must never run");
    }
}

#[tokio::test]
async fn max_in_flight_reject_ends_the_excess_as_rejected_and_calls_its_handler() {
    let background = Background::builder()
        .max_in_flight(2)
        .overflow(OverflowPolicy::Reject)
        .build();
    let calls = Calls::default();
    let ran = Arc::new(AtomicU32::new(0));
    let (open_tx, open_rx) = watch::channel(false);
    let configured = background.task().on_error(calls.handler()).build();

    let holders: Vec<TaskHandle> = (0..2)
        .map(|_| {
            let mut open = open_rx.clone();
            configured.schedule(async move {
                let _ = open.wait_for(|open| *open).await;
            })
        })
        .collect();
    for holder in &holders {
        within("a holder to start", holder.started()).await;
    }

    let rejected = vec![
        configured.schedule({
            let ran = Arc::clone(&ran);
            async move {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        }),
        configured.schedule({
            let ran = Arc::clone(&ran);
            move || {
                ran.fetch_add(1, Ordering::SeqCst);
            }
        }),
        configured.schedule(Named),
    ];
    // Ended before `schedule` returned: never queued, never started.
    for handle in &rejected {
        let outcome = handle.try_outcome().expect("rejected at once");
        expect_rejected_at_limit(&outcome, 2);
        assert!(!handle.is_started());
        assert_eq!(handle.info().attempts, 0);
    }
    let calls_seen = calls.snapshot();
    assert_eq!(
        calls_seen
            .iter()
            .map(|(info, _)| info.id)
            .collect::<Vec<_>>(),
        handle_ids(&rejected),
        "the handler is called once per rejected task"
    );
    for (_, error) in &calls_seen {
        expect_rejected_at_limit(&Err(error.clone()), 2);
        let message = error.to_string();
        assert!(
            message.contains("max_in_flight limit of 2"),
            "the message should name the limit: {message}"
        );
    }

    // Once the holders end, their slots are free again.
    open_tx.send_replace(true);
    within("the holders", background.wait_idle()).await;
    let later = configured.schedule({
        let ran = Arc::clone(&ran);
        async move {
            ran.fetch_add(1, Ordering::SeqCst);
        }
    });
    let outcome = within("a task after the holders", later.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(ran.load(Ordering::SeqCst), 1, "only the later task ran");
    within("every task", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.completed, stats.rejected),
        (6, 3, 3),
        "{stats:?}"
    );
    assert_settled(stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn max_in_flight_reject_under_load_loses_nothing_and_runs_nothing_twice() {
    const LIMIT: usize = 4;
    const TASKS: usize = 1_000;
    let background = Background::builder()
        .max_in_flight(LIMIT)
        .overflow(OverflowPolicy::Reject)
        .build();
    let calls = Calls::default();
    let high_water = HighWater::default();
    let runs = Runs::default();
    let configured = background.task().on_error(calls.handler()).build();

    let handles: Vec<TaskHandle> = std::thread::scope(|scope| {
        let schedulers: Vec<_> = (0..4)
            .map(|thread| {
                let (configured, high_water, runs) = (&configured, &high_water, &runs);
                scope.spawn(move || {
                    (0..TASKS / 4)
                        .map(|i| {
                            let (high_water, runs) = (high_water.clone(), runs.clone());
                            if (thread + i) % 2 == 0 {
                                configured.schedule(async move {
                                    let _running = high_water.enter();
                                    runs.record();
                                    tokio::task::yield_now().await;
                                })
                            } else {
                                configured.schedule(move || {
                                    let _running = high_water.enter();
                                    runs.record();
                                    std::thread::yield_now();
                                })
                            }
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        schedulers
            .into_iter()
            .flat_map(|scheduler| scheduler.join().unwrap())
            .collect()
    });
    within("every task", background.wait_idle()).await;

    let (mut completed, mut rejected) = (0u64, 0u64);
    for handle in &handles {
        match handle.try_outcome().expect("ended") {
            Ok(()) => {
                completed += 1;
                assert_eq!(runs.of(handle.id()), 1, "task {} ran", handle.id());
            }
            outcome => {
                expect_rejected_at_limit(&outcome, LIMIT);
                rejected += 1;
                assert_eq!(runs.of(handle.id()), 0, "rejected task {} ran", handle.id());
            }
        }
    }
    assert_eq!(completed + rejected, TASKS as u64);
    assert!(completed >= LIMIT as u64, "completed {completed}");
    assert!(high_water.max() <= LIMIT, "high water {}", high_water.max());
    assert_eq!(calls.snapshot().len() as u64, rejected);
    let stats = background.stats();
    assert_eq!(
        (stats.scheduled, stats.completed, stats.rejected),
        (TASKS as u64, completed, rejected),
        "{stats:?}"
    );
    assert_settled(stats);
}

// ---------------------------------------------------------------------------
// Timeouts
// ---------------------------------------------------------------------------

/// Sets its flag when dropped: shows that a task's future was dropped.
struct DropFlag(Arc<AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn async_task_past_its_timeout_is_dropped_and_ends_timed_out() {
    let background = Background::new();
    let calls = Calls::default();
    let dropped = Arc::new(AtomicBool::new(false));
    let resumed = Arc::new(AtomicBool::new(false));

    let start = Instant::now();
    let handle = background
        .task()
        .timeout(Duration::from_secs(1))
        .on_error(calls.handler())
        .build()
        .schedule({
            let guard = DropFlag(Arc::clone(&dropped));
            let resumed = Arc::clone(&resumed);
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                resumed.store(true, Ordering::SeqCst);
            }
        });
    let outcome = within("the timeout", handle.outcome()).await;

    assert!(matches!(outcome, Err(TaskError::TimedOut)), "{outcome:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(
        dropped.load(Ordering::SeqCst),
        "the task's future was not dropped"
    );
    assert!(!resumed.load(Ordering::SeqCst), "code after the await ran");
    assert_eq!(calls.kinds(), [(handle.id(), "timed_out")]);
    let stats = background.stats();
    assert_eq!(stats.timed_out, 1, "{stats:?}");
    assert_settled(stats);
}

#[tokio::test(start_paused = true)]
async fn default_config_timeout_applies_and_a_per_task_timeout_overrides_it() {
    let background = Background::builder()
        .default_config(
            TaskConfig::builder()
                .timeout(Duration::from_secs(1))
                .build(),
        )
        .build();
    let work = |secs: u64| tokio::time::sleep(Duration::from_secs(secs));

    let too_slow = background.schedule(work(2));
    let quick = background.schedule(work(0));
    let allowed_longer = background
        .task()
        .timeout(Duration::from_secs(5))
        .build()
        .schedule(work(2));

    let outcome = within("too slow", too_slow.outcome()).await;
    assert!(matches!(outcome, Err(TaskError::TimedOut)), "{outcome:?}");
    assert!(within("quick", quick.outcome()).await.is_ok());
    let outcome = within("allowed longer", allowed_longer.outcome()).await;
    assert!(
        outcome.is_ok(),
        "the per-task timeout should win: {outcome:?}"
    );
    within("every task", background.wait_idle()).await;
    let stats = background.stats();
    assert_eq!((stats.completed, stats.timed_out), (2, 1), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn timeout_set_in_a_handler_through_tasks_applies() {
    let background = Background::new();
    let (handle_tx, mut handle_rx) = mpsc::unbounded_channel::<TaskHandle>();
    let app = Router::new()
        .route(
            "/import",
            get(move |tasks: Tasks| {
                let handle_tx = handle_tx.clone();
                async move {
                    let handle = tasks
                        .task()
                        .timeout(Duration::from_secs(2))
                        .build()
                        .schedule(tokio::time::sleep(Duration::from_secs(60)));
                    handle_tx.send(handle).unwrap();
                    StatusCode::ACCEPTED
                }
            }),
        )
        .layer(background.layer());

    let start = Instant::now();
    assert_eq!(get_status(app, "/import").await, StatusCode::ACCEPTED);
    let handle = handle_rx.recv().await.unwrap();
    let outcome = within("the timeout", handle.outcome()).await;

    assert!(matches!(outcome, Err(TaskError::TimedOut)), "{outcome:?}");
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert_eq!(handle.info().path.as_deref(), Some("/import"));
}

/// Paused time cannot pass while a thread blocks, so this test uses a short
/// real timeout and releases the thread with a channel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_task_past_its_timeout_is_timed_out_while_its_thread_runs_on() {
    let background = Background::new();
    let calls = Calls::default();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    let (saw_tx, saw_rx) = oneshot::channel::<bool>();

    let handle = background
        .task()
        .timeout(Duration::from_millis(50))
        .on_error(calls.handler())
        .build()
        .schedule(move || {
            let token = TaskContext::current()
                .expect("inside a task")
                .cancellation_token();
            let _ = release_rx.recv();
            // Still running after the task was reported: did it hear why?
            let _ = saw_tx.send(token.is_cancelled());
        });
    let outcome = within("the timeout", handle.outcome()).await;

    // Reported while the thread is still blocked in `recv`.
    assert!(matches!(outcome, Err(TaskError::TimedOut)), "{outcome:?}");
    assert_eq!(calls.kinds(), [(handle.id(), "timed_out")]);
    release_tx.send(()).unwrap();
    let saw_cancellation = within("the thread to run on", saw_rx).await.unwrap();
    assert!(saw_cancellation, "the token did not fire at the timeout");
    assert_eq!(background.stats().timed_out, 1);
}

/// A sync task that says when it has started, waits (awaiting on its
/// blocking thread) for its own cancellation, and says when it saw it.
struct WaitForCancellation {
    started: Option<oneshot::Sender<()>>,
    saw: Option<oneshot::Sender<()>>,
}

impl BackgroundTask<()> for WaitForCancellation {
    type Mode = mode::Sync;

    async fn run(self) {
        let token = TaskContext::current()
            .expect("inside a task")
            .cancellation_token();
        if let Some(started) = self.started {
            let _ = started.send(());
        }
        token.cancelled().await;
        if let Some(saw) = self.saw {
            let _ = saw.send(());
        }
    }
}

/// The timeout here comes from the default config.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_task_observes_its_default_timeout_through_its_cancellation_token() {
    let background = Background::builder()
        .default_config(
            TaskConfig::builder()
                .timeout(Duration::from_millis(20))
                .build(),
        )
        .build();
    let (saw_tx, saw_rx) = oneshot::channel::<()>();
    let handle = background.schedule(WaitForCancellation {
        started: None,
        saw: Some(saw_tx),
    });

    let outcome = within("the timeout", handle.outcome()).await;
    assert!(matches!(outcome, Err(TaskError::TimedOut)), "{outcome:?}");
    within("the task to see its cancellation", saw_rx)
        .await
        .expect("the task saw its token fire");
}

// ---------------------------------------------------------------------------
// Retries
// ---------------------------------------------------------------------------

/// A named `Clone` task that fails until its `succeed_on`-th run, recording
/// the (paused) time of each run.
#[derive(Clone)]
struct Flaky {
    runs: Arc<Mutex<Vec<Instant>>>,
    succeed_on: u32,
}

impl Flaky {
    fn new(succeed_on: u32) -> Self {
        Flaky {
            runs: Arc::default(),
            succeed_on,
        }
    }

    fn count(&self) -> u32 {
        self.runs.lock().unwrap().len() as u32
    }

    /// The time between each run and the next.
    fn gaps(&self) -> Vec<Duration> {
        let runs = self.runs.lock().unwrap();
        runs.windows(2).map(|pair| pair[1] - pair[0]).collect()
    }
}

impl BackgroundTask for Flaky {
    type Mode = mode::Async;

    async fn run(self) -> Result<(), BoxError> {
        let run = {
            let mut runs = self.runs.lock().unwrap();
            runs.push(Instant::now());
            runs.len() as u32
        };
        if run >= self.succeed_on {
            Ok(())
        } else {
            Err(format!("attempt {run} failed").into())
        }
    }
}

fn failed_with(error: &TaskError, message: &str) -> bool {
    matches!(error, TaskError::Failed(source) if source.to_string() == message)
}

#[tokio::test(start_paused = true)]
async fn clone_task_is_retried_up_to_n_runs_and_the_handler_gets_the_last_error_once() {
    let background = Background::new();
    let calls = Calls::default();
    let task = Flaky::new(u32::MAX);

    let handle = background
        .task()
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(100)))
        .on_error(calls.handler())
        .build()
        .schedule(task.clone());
    let outcome = within("the retries", handle.outcome()).await;

    assert!(
        matches!(&outcome, Err(error) if failed_with(error, "attempt 3 failed")),
        "{outcome:?}"
    );
    assert_eq!(task.count(), 3);
    let calls = calls.snapshot();
    assert_eq!(calls.len(), 1, "{calls:?}");
    let (info, error) = &calls[0];
    assert_eq!(info.id, handle.id());
    assert_eq!(info.attempts, 3);
    assert!(failed_with(error, "attempt 3 failed"), "{error:?}");
    assert_eq!(handle.info().attempts, 3);
    let stats = background.stats();
    assert_eq!((stats.scheduled, stats.failed), (1, 1), "{stats:?}");
    assert_settled(stats);
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_doubles_from_base_with_jitter_between_half_and_all_of_it() {
    let background = Background::new();
    let policy = RetryPolicy::attempts(6).backoff(Duration::from_millis(100));
    let retrying = background.task().retry(policy).build();
    let tasks: Vec<Flaky> = (0..20).map(|_| Flaky::new(u32::MAX)).collect();
    for task in &tasks {
        retrying.schedule(task.clone());
    }
    within("every task", background.wait_idle()).await;

    let mut jittered = 0;
    for task in &tasks {
        let gaps = task.gaps();
        assert_eq!(gaps.len(), 5, "{gaps:?}");
        for (attempt, gap) in (1..).zip(&gaps) {
            let nominal = Duration::from_millis(100) * 2u32.pow(attempt - 1);
            assert_eq!(policy.nominal_delay(attempt), nominal);
            assert!(
                nominal / 2 <= *gap && *gap <= nominal,
                "wait after attempt {attempt}: {gap:?}, nominal {nominal:?}"
            );
            if *gap < nominal {
                jittered += 1;
            }
        }
    }
    assert!(jittered > 0, "no wait was jittered");
    assert_eq!(background.stats().failed, 20);
}

#[tokio::test(start_paused = true)]
async fn retry_backoff_without_jitter_is_exact_and_capped_by_max_backoff() {
    let background = Background::new();
    let task = Flaky::new(u32::MAX);
    let handle = background
        .task()
        .retry(
            RetryPolicy::attempts(5)
                .backoff(Duration::from_millis(100))
                .max_backoff(Duration::from_millis(300))
                .jitter(false),
        )
        .build()
        .schedule(task.clone());
    within("the retries", handle.outcome()).await.unwrap_err();

    let millis = |ms: &[u64]| {
        ms.iter()
            .map(|&ms| Duration::from_millis(ms))
            .collect::<Vec<_>>()
    };
    assert_eq!(task.gaps(), millis(&[100, 200, 300, 300]));
}

/// Fails until `counter` reaches 3.
async fn flaky(counter: Arc<AtomicU32>) -> Result<(), BoxError> {
    let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
    if run < 3 {
        Err(format!("run {run} failed").into())
    } else {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn factory_closure_retries_an_async_fn_until_it_succeeds() {
    let background = Background::new();
    let calls = Calls::default();
    let counter = Arc::new(AtomicU32::new(0));

    let handle = background
        .task()
        .retry(RetryPolicy::attempts(5).backoff(Duration::from_millis(10)))
        .on_error(calls.handler())
        .build()
        .schedule({
            let counter = Arc::clone(&counter);
            move || flaky(counter.clone())
        });
    let outcome = within("the retries", handle.outcome()).await;

    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(
        counter.load(Ordering::SeqCst),
        3,
        "no run after the success"
    );
    assert_eq!(handle.info().attempts, 3);
    assert!(calls.snapshot().is_empty(), "{:?}", calls.kinds());
    assert_eq!(handle.info().name, "flaky");
    let stats = background.stats();
    assert_eq!((stats.completed, stats.failed), (1, 0), "{stats:?}");
}

#[tokio::test(start_paused = true)]
async fn sync_clone_closure_is_retried_with_its_backoff() {
    let background = Background::new();
    let calls = Calls::default();
    // When each run started, and on which thread.
    let runs: Arc<Mutex<Vec<(Instant, ThreadId)>>> = Arc::default();

    let handle = background
        .task()
        .retry(
            RetryPolicy::attempts(3)
                .backoff(Duration::from_millis(100))
                .jitter(false),
        )
        .on_error(calls.handler())
        .build()
        .schedule({
            let runs = Arc::clone(&runs);
            move || -> Result<(), BoxError> {
                let mut runs = runs.lock().unwrap();
                runs.push((Instant::now(), std::thread::current().id()));
                Err(format!("sync run {} failed", runs.len()).into())
            }
        });
    let outcome = within("the retries", handle.outcome()).await;

    assert!(
        matches!(&outcome, Err(error) if failed_with(error, "sync run 3 failed")),
        "{outcome:?}"
    );
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 3);
    let gaps: Vec<Duration> = runs.windows(2).map(|pair| pair[1].0 - pair[0].0).collect();
    assert_eq!(
        gaps,
        [Duration::from_millis(100), Duration::from_millis(200)]
    );
    // This current-thread runtime runs on the test's thread; each attempt ran
    // on a blocking-pool thread instead.
    let runtime = std::thread::current().id();
    assert!(
        runs.iter().all(|(_, thread)| *thread != runtime),
        "{runs:?}"
    );
    let calls = calls.snapshot();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0].0.attempts, 3);
}

/// Panics on every run, counting them.
#[derive(Clone)]
struct Explodes(Arc<AtomicU32>);

impl BackgroundTask<()> for Explodes {
    type Mode = mode::Async;

    async fn run(self) {
        self.0.fetch_add(1, Ordering::SeqCst);
        panic!("boom (expected by the test)");
    }
}

#[tokio::test(start_paused = true)]
async fn panics_are_retried_only_with_retry_panics() {
    let background = Background::new();
    let calls = Calls::default();
    let policy = RetryPolicy::attempts(3).backoff(Duration::from_millis(10));
    let (once, thrice) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));

    let not_retried = background
        .task()
        .retry(policy)
        .on_error(calls.handler())
        .build()
        .schedule(Explodes(Arc::clone(&once)));
    let retried = background
        .task()
        .retry(policy.retry_panics(true))
        .on_error(calls.handler())
        .build()
        .schedule(Explodes(Arc::clone(&thrice)));
    within("every task", background.wait_idle()).await;

    assert_eq!(once.load(Ordering::SeqCst), 1);
    assert_eq!(thrice.load(Ordering::SeqCst), 3);
    assert!(matches!(
        not_retried.try_outcome(),
        Some(Err(TaskError::Panicked(_)))
    ));
    assert!(matches!(
        retried.try_outcome(),
        Some(Err(TaskError::Panicked(_)))
    ));
    let mut attempts: Vec<(TaskId, u32)> = calls
        .snapshot()
        .iter()
        .map(|(info, _)| (info.id, info.attempts))
        .collect();
    attempts.sort();
    assert_eq!(attempts, [(not_retried.id(), 1), (retried.id(), 3)]);
}

#[tokio::test(start_paused = true)]
async fn a_timed_out_attempt_is_not_retried() {
    let background = Background::new();
    let counter = Arc::new(AtomicU32::new(0));
    let handle = background
        .task()
        .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(10)))
        .timeout(Duration::from_secs(1))
        .build()
        .schedule({
            let counter = Arc::clone(&counter);
            move || {
                let counter = Arc::clone(&counter);
                async move {
                    counter.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_secs(60)).await;
                }
            }
        });
    let outcome = within("the timeout", handle.outcome()).await;

    assert!(matches!(outcome, Err(TaskError::TimedOut)), "{outcome:?}");
    assert_eq!(counter.load(Ordering::SeqCst), 1);
    assert_eq!(handle.info().attempts, 1);
}

/// Fails on its first run only, saying so on `ran`.
async fn fails_first_time(
    counter: Arc<AtomicU32>,
    ran: mpsc::UnboundedSender<u32>,
) -> Result<(), BoxError> {
    let run = counter.fetch_add(1, Ordering::SeqCst) + 1;
    let _ = ran.send(run);
    if run == 1 {
        Err("first run fails".into())
    } else {
        Ok(())
    }
}

/// On this current-thread runtime the runner enters its backoff in the same
/// poll that ran the failing attempt, before the test sees the attempt's message.
#[tokio::test(start_paused = true)]
async fn task_in_backoff_when_shutdown_begins_ends_cancelled_and_is_not_retried() {
    let background = Background::new();
    let calls = Calls::default();
    let counter = Arc::new(AtomicU32::new(0));
    let (ran_tx, mut ran_rx) = mpsc::unbounded_channel();

    let handle = background
        .task()
        .retry(RetryPolicy::attempts(5).backoff(Duration::from_secs(2)))
        .on_error(calls.handler())
        .build()
        .schedule({
            let counter = Arc::clone(&counter);
            move || fails_first_time(counter.clone(), ran_tx.clone())
        });
    assert_eq!(within("the first run", ran_rx.recv()).await, Some(1));
    assert!(!handle.is_finished());

    let start = Instant::now();
    let report = within("shutdown", background.shutdown(Duration::from_secs(30))).await;

    assert!(
        start.elapsed() < Duration::from_secs(1),
        "shutdown waited out the backoff: {:?}",
        start.elapsed()
    );
    let outcome = handle.try_outcome();
    assert!(
        matches!(outcome, Some(Err(TaskError::Cancelled))),
        "{outcome:?}"
    );
    assert_eq!(
        counter.load(Ordering::SeqCst),
        1,
        "retried after shutdown began"
    );
    assert_eq!(ids(&util::infos(&report.cancelled)), [handle.id()]);
    assert!(
        report.finished.is_empty() && report.overdue.is_empty(),
        "{report:?}"
    );
    assert_eq!(calls.kinds(), [(handle.id(), "cancelled")]);
    assert_eq!(calls.snapshot()[0].0.attempts, 1);
    assert_settled(background.stats());
}

/// The default config's retry policy is for durable task types: an
/// in-process task runs once unless it is scheduled with its own policy
/// (which checks at compile time that it can run again).
#[tokio::test(start_paused = true)]
async fn a_default_retry_policy_leaves_in_process_tasks_to_their_own() {
    let background = Background::builder()
        .default_config(
            TaskConfig::builder()
                .retry(RetryPolicy::attempts(3).backoff(Duration::from_millis(10)))
                .build(),
        )
        .build();
    let (plain, own_policy) = (Flaky::new(u32::MAX), Flaky::new(u32::MAX));
    let app = Router::new()
        .route(
            "/jobs",
            get({
                let (plain, own_policy) = (plain.clone(), own_policy.clone());
                move |tasks: Tasks| async move {
                    tasks.schedule(plain);
                    tasks
                        .task()
                        .retry(RetryPolicy::attempts(2).backoff(Duration::from_millis(10)))
                        .build()
                        .schedule(own_policy);
                    StatusCode::ACCEPTED
                }
            }),
        )
        .layer(background.layer());

    assert_eq!(get_status(app, "/jobs").await, StatusCode::ACCEPTED);
    within("every task", background.wait_idle()).await;

    assert_eq!(
        plain.count(),
        1,
        "a task scheduled to run once is not retried"
    );
    assert_eq!(own_policy.count(), 2, "its own policy applies");
    assert_eq!(background.stats().failed, 2);
}

// ---------------------------------------------------------------------------
// Limits together
// ---------------------------------------------------------------------------

/// A retried sync task gives up its thread permit between attempts and asks
/// for one again while it keeps its in-flight slot. A sync task queued behind
/// it for both must not end up holding the thread permit while it waits for
/// the slot: the two would wait for each other for ever.
#[tokio::test(start_paused = true)]
async fn retried_sync_task_and_a_queued_sync_task_under_both_limits_all_finish() {
    let background = Background::builder()
        .max_blocking(1)
        .max_in_flight(1)
        .build();
    let counter = Arc::new(AtomicU32::new(0));
    let retried = background
        .task()
        .retry(
            RetryPolicy::attempts(2)
                .backoff(Duration::from_millis(10))
                .jitter(false),
        )
        .build()
        .schedule({
            let counter = Arc::clone(&counter);
            move || -> Result<(), BoxError> {
                if counter.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err("first run fails".into())
                } else {
                    Ok(())
                }
            }
        });
    let queued = background.schedule(|| ());

    let outcome = within("the retried task", retried.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    let outcome = within("the queued task", queued.outcome()).await;
    assert!(outcome.is_ok(), "{outcome:?}");
    assert_eq!(counter.load(Ordering::SeqCst), 2);
}

/// Sync tasks scheduled from several threads at once under both limits. A
/// task asks for its in-flight slot, then for its thread permit; when two
/// schedules interleave, one task can hold the thread permit while it waits
/// for a slot that the other holds while it waits for the thread permit.
/// Nothing then ever runs again. Each round must drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_tasks_scheduled_concurrently_under_both_limits_all_finish() {
    for round in 0..25 {
        let background = Background::builder()
            .max_blocking(1)
            .max_in_flight(1)
            .build();
        std::thread::scope(|scope| {
            for _ in 0..4 {
                let background = &background;
                scope.spawn(move || {
                    for _ in 0..200 {
                        background.schedule(|| ());
                    }
                });
            }
        });
        let drained = tokio::time::timeout(Duration::from_secs(2), background.wait_idle()).await;
        assert!(
            drained.is_ok(),
            "round {round}: tasks waiting on each other for ever: {:?}",
            background.stats()
        );
        let stats = background.stats();
        assert_eq!(stats.completed, 800, "{stats:?}");
    }
}

// ---------------------------------------------------------------------------
// Shutdown with tasks waiting for a slot
// ---------------------------------------------------------------------------

#[tokio::test]
async fn shutdown_cancels_unshielded_tasks_waiting_for_an_in_flight_slot_and_runs_shielded_ones() {
    let background = Background::builder().max_in_flight(1).build();
    let calls = Calls::default();
    let events = Events::default();
    let holder = background
        .task()
        .on_error(calls.handler())
        .build()
        .schedule(std::future::pending::<()>());
    within("the holder to start", holder.started()).await;

    // Queued: even ones unshielded, odd ones shielded; both modes.
    let queued: Vec<TaskHandle> = (0..6)
        .map(|i| {
            let configured = background
                .task()
                .shield(i % 2 == 1)
                .on_error(calls.handler())
                .build();
            let events = events.clone();
            if i < 3 {
                configured.schedule(async move { events.push(format!("task {i}")) })
            } else {
                configured.schedule(move || events.push(format!("task {i}")))
            }
        })
        .collect();
    let stats = background.stats();
    assert_eq!((stats.running, stats.queued), (1, 6), "{stats:?}");

    let report = within("shutdown", background.shutdown(Duration::from_secs(10))).await;

    let (unshielded, shielded): (Vec<_>, Vec<_>) =
        queued.iter().partition(|handle| !handle.info().shielded);
    let mut cancelled = vec![holder.id()];
    cancelled.extend(handle_ids(unshielded.iter().copied()));
    assert_eq!(ids(&util::infos(&report.cancelled)), cancelled);
    assert_eq!(
        ids(&util::infos(&report.finished)),
        handle_ids(shielded.iter().copied())
    );
    assert!(report.overdue.is_empty(), "{report:?}");
    assert_eq!(events.snapshot(), ["task 1", "task 3", "task 5"]);
    for handle in &unshielded {
        assert!(matches!(
            handle.try_outcome(),
            Some(Err(TaskError::Cancelled))
        ));
        assert!(!handle.is_started(), "a cancelled queued task started");
    }
    let mut handled: Vec<(TaskId, &str)> = calls.kinds();
    handled.sort();
    assert_eq!(
        handled,
        cancelled
            .iter()
            .map(|id| (*id, "cancelled"))
            .collect::<Vec<_>>()
    );
    let stats = background.stats();
    assert_eq!((stats.completed, stats.cancelled), (3, 4), "{stats:?}");
    assert_settled(stats);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_cancels_unshielded_sync_tasks_waiting_for_a_blocking_slot_and_runs_shielded_ones()
{
    let background = Background::builder().max_blocking(1).build();
    let events = Events::default();
    let (inside_tx, inside_rx) = oneshot::channel();
    let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
    // Shielded and running: holds the only thread until the test releases it.
    let holder = background.task().shield(true).build().schedule(move || {
        let _ = inside_tx.send(());
        let _ = release_rx.recv();
    });
    within("the holder to start", inside_rx).await.unwrap();

    let queued: Vec<TaskHandle> = (0..6)
        .map(|i| {
            let events = events.clone();
            background
                .task()
                .shield(i % 2 == 1)
                .build()
                .schedule(move || events.push(format!("task {i}")))
        })
        .collect();
    let stats = background.stats();
    assert_eq!((stats.running, stats.queued), (1, 6), "{stats:?}");

    // The first poll cancels the unshielded tasks; then the holder lets go.
    let mut shutdown = task::spawn(background.shutdown(Duration::from_secs(10)));
    assert_pending!(shutdown.poll());
    release_tx.send(()).unwrap();
    let report = within("shutdown", &mut shutdown).await;

    let (unshielded, shielded): (Vec<_>, Vec<_>) =
        queued.iter().partition(|handle| !handle.info().shielded);
    let mut completed = vec![holder.id()];
    completed.extend(handle_ids(shielded.iter().copied()));
    assert_eq!(ids(&util::infos(&report.finished)), completed);
    assert_eq!(
        ids(&util::infos(&report.cancelled)),
        handle_ids(unshielded.iter().copied())
    );
    assert!(report.overdue.is_empty(), "{report:?}");
    assert_eq!(events.snapshot(), ["task 1", "task 3", "task 5"]);
    for handle in &unshielded {
        assert!(matches!(
            handle.try_outcome(),
            Some(Err(TaskError::Cancelled))
        ));
        assert!(!handle.is_started(), "a cancelled queued task started");
    }
    let stats = background.stats();
    assert_eq!((stats.completed, stats.cancelled), (4, 3), "{stats:?}");
    assert_settled(stats);
}

/// How long the error handler of the task shutdown cancels between the
/// holder and the queued task waits to see whether the queued task starts.
const RACE_WINDOW: Duration = Duration::from_millis(200);

/// A sync error handler that waits up to [`RACE_WINDOW`] for a message on `ran`.
fn wait_for_a_run(ran: std::sync::mpsc::Receiver<()>) -> SharedErrorHandler {
    let ran = Mutex::new(ran);
    (move |_: &TaskInfo, _: &TaskError| {
        let _ = ran.lock().unwrap().recv_timeout(RACE_WINDOW);
    })
    .into_shared()
}

/// Schedules, from a request whose response body is never sent, an
/// after-response task with `on_error`. It waits for its phase with nothing
/// polling for it, so it is shutdown's own cancellation loop that ends it and
/// calls `on_error`, in place: a handler that blocks holds that loop. Keep the
/// response until shutdown has returned.
async fn task_waiting_for_its_phase(
    background: &Background,
    on_error: SharedErrorHandler,
) -> (TaskHandle, Response) {
    let (handle_tx, mut handle_rx) = mpsc::unbounded_channel();
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let (handle_tx, on_error) = (handle_tx.clone(), on_error.clone());
                async move {
                    let handle = tasks
                        .after_response()
                        .task()
                        .on_error(on_error)
                        .build()
                        .schedule(|| ());
                    handle_tx.send(handle).unwrap();
                    Body::from_stream(stream::pending::<Result<Bytes, Infallible>>())
                }
            }),
        )
        .layer(background.layer());
    let request = Request::get("/").body(Body::empty()).unwrap();
    let response = within("response", app.oneshot(request)).await.unwrap();
    let handle = handle_rx.recv().await.unwrap();
    (handle, response)
}

/// Shutdown cancels unshielded tasks one at a time, in id order. Cancelling
/// the running holder frees its thread; a task queued behind it for that
/// thread was waiting when shutdown began, so it may not take the freed slot
/// and start, whether or not shutdown has reached it yet. The task in between
/// (its error handler holding shutdown's loop) makes the window deterministic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshielded_sync_task_queued_for_a_blocking_slot_never_starts_once_shutdown_begins() {
    let background = Background::builder().max_blocking(1).build();
    let (started_tx, started_rx) = oneshot::channel();
    let holder = background.schedule(WaitForCancellation {
        started: Some(started_tx),
        saw: None,
    });
    within("the holder to start", started_rx).await.unwrap();
    let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
    let (between, response) = task_waiting_for_its_phase(&background, wait_for_a_run(ran_rx)).await;
    let queued = background.schedule(move || {
        let _ = ran_tx.send(());
    });

    let report = within("shutdown", background.shutdown(Duration::from_secs(10))).await;
    drop(response);

    assert!(
        !queued.is_started(),
        "an unshielded task queued for a thread started after shutdown began"
    );
    let outcome = queued.try_outcome();
    assert!(
        matches!(outcome, Some(Err(TaskError::Cancelled))),
        "{outcome:?}"
    );
    assert_eq!(ids(&util::infos(&report.finished)), [holder.id()]);
    assert_eq!(
        ids(&util::infos(&report.cancelled)),
        [between.id(), queued.id()]
    );
}

/// As above, for an async task scheduled with `config` and queued (for
/// `what`) behind a running one scheduled with it too, which is dropped on a
/// worker thread as soon as it is cancelled.
async fn queued_async_task_never_starts_once_shutdown_begins(
    background: Background,
    config: axum_background::config::ConfiguredTasks,
    what: &str,
) {
    let holder = config.schedule(std::future::pending::<()>());
    within("the holder to start", holder.started()).await;
    let (ran_tx, ran_rx) = std::sync::mpsc::channel::<()>();
    let (between, response) = task_waiting_for_its_phase(&background, wait_for_a_run(ran_rx)).await;
    let queued = config.schedule(async move {
        let _ = ran_tx.send(());
    });

    let report = within("shutdown", background.shutdown(Duration::from_secs(10))).await;
    drop(response);

    assert!(
        !queued.is_started(),
        "an unshielded task queued for {what} started after shutdown began"
    );
    let outcome = queued.try_outcome();
    assert!(
        matches!(outcome, Some(Err(TaskError::Cancelled))),
        "{outcome:?}"
    );
    assert_eq!(
        ids(&util::infos(&report.cancelled)),
        [holder.id(), between.id(), queued.id()]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshielded_task_queued_for_an_in_flight_slot_never_starts_once_shutdown_begins() {
    let background = Background::builder().max_in_flight(1).build();
    let config = background.task().build();
    queued_async_task_never_starts_once_shutdown_begins(background, config, "a slot").await;
}

/// At most one of the flow at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unshielded_task_queued_behind_its_flow_never_starts_once_shutdown_begins() {
    let background = Background::builder()
        .flow("one-at-a-time", FlowLimit::new().concurrency(1))
        .build();
    let config = background.task().name("one-at-a-time").build();
    queued_async_task_never_starts_once_shutdown_begins(background, config, "its flow").await;
}

/// Once a task has ended (its handle or `wait_idle` says so), its slot is free:
/// the next task is never rejected for it, on any runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ended_task_has_given_back_its_slot() {
    let background = Background::builder()
        .max_in_flight(1)
        .overflow(OverflowPolicy::Reject)
        .build();
    for n in 0..2_000 {
        let handle = background.schedule(async {});
        let outcome = within("the task", handle.outcome()).await;
        assert!(outcome.is_ok(), "task {n}: {outcome:?}");
        let failing = background.schedule(async { Err::<(), _>("no") });
        let _ = within("the failing task", failing.outcome()).await;
        within("idle", background.wait_idle()).await;
    }
    assert_eq!(background.stats().rejected, 0);
}

/// A request's tasks refused when their phase comes are reported once the
/// request's lock is released: their error handler may schedule through the
/// request's own `Tasks`.
#[tokio::test]
async fn tasks_refused_when_their_phase_comes_are_reported_outside_the_requests_lock() {
    let background = Background::builder()
        .max_in_flight(1)
        .overflow(OverflowPolicy::Reject)
        .build();
    let (open_tx, open_rx) = watch::channel(false);
    let holder = background.schedule(async move {
        let mut open = open_rx;
        let _ = open.wait_for(|open| *open).await;
    });
    within("the holder to start", holder.started()).await;

    let (reported, mut reports) = mpsc::unbounded_channel::<(Phase, Option<TaskHandle>)>();
    let app = Router::new()
        .route(
            "/",
            get(move |tasks: Tasks| {
                let reported = reported.clone();
                async move {
                    for phase in [Phase::AfterRoute, Phase::AfterResponse] {
                        let (kept, reported) = (tasks.clone(), reported.clone());
                        let report = move |info: &TaskInfo, _: &TaskError| {
                            // From another thread, waited for a while: a
                            // report made under the request's lock fails
                            // here instead of hanging.
                            let (done, scheduled) = std::sync::mpsc::channel();
                            let kept = kept.clone();
                            std::thread::spawn(move || {
                                let _ = done.send(kept.schedule(async {}));
                            });
                            let scheduled = scheduled.recv_timeout(Duration::from_secs(5)).ok();
                            let _ = reported.send((info.phase, scheduled));
                        };
                        tasks
                            .task()
                            .phase(phase)
                            .on_error(report)
                            .build()
                            .schedule(async {});
                    }
                    "ok"
                }
            }),
        )
        .layer(background.layer());
    let request = Request::get("/")
        .body(Body::empty())
        .expect("valid request");
    let response = app.oneshot(request).await.expect("infallible");
    within(
        "the body",
        http_body_util::BodyExt::collect(response.into_body()),
    )
    .await
    .expect("infallible");

    for expected in [Phase::AfterRoute, Phase::AfterResponse] {
        let (phase, scheduled) = within("a report", reports.recv()).await.expect("reported");
        assert_eq!(phase, expected);
        let scheduled = scheduled.expect("the report ran outside the request's lock");
        // Scheduled after the request ended: at once, and refused too.
        let outcome = within("its outcome", scheduled.outcome()).await;
        expect_rejected_at_limit(&outcome, 1);
    }
    let _ = open_tx.send(true);
    within("idle", background.wait_idle()).await;
}
