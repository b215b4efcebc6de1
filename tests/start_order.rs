//! Start order on a multi-thread runtime under load: every immediate task of
//! a request starts before its after-route tasks, and those before its
//! after-response tasks; within a phase, in schedule order; in every path,
//! the dropped handler included, and across both modes.

mod util;

use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::routing::get;
use axum_background::{Background, Phase, TaskHandle, Tasks};
use http_body_util::BodyExt;
use tokio::sync::mpsc;
use tower::ServiceExt;
use util::{CpuLoad, Events, within};

const ROUNDS: usize = 200;

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn request(uri: &str) -> Request<Body> {
    Request::builder()
        .uri(uri)
        .body(Body::empty())
        .expect("valid request")
}

/// Schedules, phases and modes interleaved on purpose, and returns the
/// handles in the order the tasks must start: by phase, then as scheduled.
fn schedule_interleaved(tasks: &Tasks, events: &Events) -> Vec<TaskHandle> {
    let mut scheduled = Vec::new();
    for i in 0..3 {
        for phase in [Phase::AfterResponse, Phase::Immediate, Phase::AfterRoute] {
            let label = format!("{phase} {i}");
            let scheduler = tasks.task().phase(phase).build();
            let handle = if i % 2 == 0 {
                let events = events.clone();
                scheduler.schedule(async move { events.push(label) })
            } else {
                let events = events.clone();
                scheduler.schedule(move || events.push(label))
            };
            scheduled.push((phase, handle));
        }
    }
    scheduled.sort_by_key(|(phase, _)| *phase); // stable: schedule order within a phase
    scheduled.into_iter().map(|(_, handle)| handle).collect()
}

/// The tasks' start instants follow `in_order`.
fn assert_started_in_order(round: usize, in_order: &[TaskHandle]) {
    let starts: Vec<(String, Instant)> = in_order
        .iter()
        .map(|handle| {
            let info = handle.info();
            let started = info.started_at.expect("every task started");
            (format!("{} #{}", info.phase, info.id), started)
        })
        .collect();
    for pair in starts.windows(2) {
        assert!(
            pair[0].1 <= pair[1].1,
            "round {round}: {} started after {}",
            pair[0].0,
            pair[1].0
        );
    }
}

#[test]
fn tasks_of_both_modes_start_in_phase_then_schedule_order_under_load() {
    let _load = CpuLoad::start(2);
    runtime().block_on(async {
        let background = Background::new();
        let (out, mut handed) = mpsc::unbounded_channel::<Vec<TaskHandle>>();
        let events = Events::default();
        let log = events.clone();
        let app = Router::new()
            .route(
                "/",
                get(move |tasks: Tasks| {
                    let (out, events) = (out.clone(), log.clone());
                    async move {
                        let _ = out.send(schedule_interleaved(&tasks, &events));
                        "ok"
                    }
                }),
            )
            .layer(background.layer());
        for round in 0..ROUNDS {
            let response = app.clone().oneshot(request("/")).await.expect("infallible");
            within("body", response.into_body().collect())
                .await
                .expect("infallible");
            let in_order = handed.recv().await.expect("the handler ran");
            within("every task to end", background.wait_idle()).await;
            assert_started_in_order(round, &in_order);
        }
    });
}

#[test]
fn dropped_handler_starts_its_deferred_tasks_in_order_under_load() {
    let _load = CpuLoad::start(2);
    runtime().block_on(async {
        let background = Background::new();
        let (out, mut handed) = mpsc::unbounded_channel::<(Vec<TaskHandle>, Events)>();
        let app = Router::new()
            .route(
                "/hang",
                get(move |tasks: Tasks| {
                    let out = out.clone();
                    async move {
                        let events = Events::default();
                        let mut handles = Vec::new();
                        for (phase, label) in [
                            (Phase::Immediate, "immediate"),
                            (Phase::AfterResponse, "response 1"),
                            (Phase::AfterRoute, "route 1"),
                            (Phase::AfterResponse, "response 2"),
                            (Phase::AfterRoute, "route 2"),
                        ] {
                            let e = events.clone();
                            let task = async move { e.push(label) };
                            handles.push(tasks.task().phase(phase).build().schedule(task));
                        }
                        let _ = out.send((handles, events));
                        std::future::pending::<StatusCode>().await
                    }
                }),
            )
            .layer(background.layer());
        for round in 0..ROUNDS {
            let mut call = tokio_test::task::spawn(app.clone().oneshot(request("/hang")));
            assert!(call.poll().is_pending());
            let (handles, events) = handed.recv().await.expect("the handler ran");
            // The client went away: the handler's future is dropped.
            drop(call);
            within("every task to end", background.wait_idle()).await;
            assert_eq!(
                events.snapshot(),
                [
                    "immediate",
                    "route 1",
                    "route 2",
                    "response 1",
                    "response 2"
                ],
                "round {round}"
            );
            let mut in_order = vec![handles[0].clone(), handles[2].clone(), handles[4].clone()];
            in_order.extend([handles[1].clone(), handles[3].clone()]);
            assert_started_in_order(round, &in_order);
        }
    });
}

/// A runtime dropped while a request's tasks wait in line: the first task's
/// turn is given up as the runtime drops it, and each task after it is
/// handed to the closed runtime, which drops it at once. A long line is
/// handed on in a loop (not one nested call per task, which would overflow
/// the stack), and every task is accounted for.
#[test]
fn a_long_line_dropped_with_its_runtime_ends_every_task() {
    const LINE: usize = 20_000;
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    let background = Background::builder()
        .runtime(runtime.handle().clone())
        .build();
    let app = Router::new()
        .route(
            "/",
            get(|tasks: Tasks| async move {
                for _ in 0..LINE {
                    tasks.schedule(async {
                        STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    });
                }
                "ok"
            }),
        )
        .layer(background.layer());
    runtime.block_on(async {
        let response = app.oneshot(request("/")).await.expect("infallible");
        response.into_body().collect().await.expect("infallible");
    });
    assert_eq!(background.in_flight().len(), LINE, "the tasks wait in line");
    drop(runtime);
    assert_eq!(
        STARTED.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "no task ran"
    );
    assert!(background.in_flight().is_empty(), "every task ended");
}
