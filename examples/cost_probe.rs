//! The per-task instruction probe behind `bench/callgrind.sh`: schedules `N`
//! trivial `async {}` tasks on a current-thread runtime, in batches of 1,000,
//! each batch awaited (`wait_idle` for the crate, the join handles for bare
//! `tokio::spawn`). Under `valgrind --tool=callgrind` the difference between
//! two values of `N` is the cost per task, free of start-up costs.
//!
//! ```sh
//! cargo run --release --example cost_probe -- crate none 100000
//! cargo run --release --features metrics --example cost_probe -- crate prometheus 100000
//! ```
//!
//! Arguments: `bare` or `crate` (or `bare-sync` and `crate-sync`: the same
//! with sync closures on the blocking pool, `spawn_blocking` for bare; or
//! `bare-phases` and `crate-phases`: `N / 3` requests through a router,
//! `tower`'s `oneshot`, body read, each scheduling one task per phase, three
//! `tokio::spawn` for bare; `*-immediate`: `N` requests scheduling one async
//! task each; `*-request-sync`: `N` requests scheduling one sync task each;
//! `*-extract`: `N` requests extracting `Tasks` and scheduling nothing (bare
//! extracts nothing); `*-noop`: `N` requests scheduling nothing, the layer
//! alone); the metrics recorder, `none` or (with the
//! `metrics` feature) `prometheus`; the number of tasks; optionally `multi`,
//! for a multi-thread runtime with 2 workers (the benches' runtime) with the
//! batches scheduled from a task on it, for a wall-time profile:
//!
//! ```sh
//! perf record -e cpu-clock -F 4000 -g target/release/examples/cost_probe crate none 3000000 multi
//! ```

use axum_background::Background;

const BATCH: usize = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "crate".into());
    let recorder = args.next().unwrap_or_else(|| "none".into());
    let tasks: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;

    // Kept for the whole run, so that every task records into it.
    #[cfg(feature = "metrics")]
    let _prometheus = match recorder.as_str() {
        "none" => None,
        "prometheus" => {
            Some(metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder()?)
        }
        other => return Err(format!("unknown recorder {other:?}: none or prometheus").into()),
    };
    #[cfg(not(feature = "metrics"))]
    if recorder != "none" {
        return Err("a recorder needs the `metrics` feature".into());
    }

    let runtime = match args.next().as_deref() {
        None | Some("current") => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?,
        Some("multi") => tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?,
        Some(other) => return Err(format!("unknown runtime {other:?}: current or multi").into()),
    };
    let run = async move {
        match variant.as_str() {
            "bare" => {
                let mut handles = Vec::with_capacity(BATCH);
                for _ in 0..tasks / BATCH {
                    handles.extend((0..BATCH).map(|_| tokio::spawn(async {})));
                    for handle in handles.drain(..) {
                        handle.await?;
                    }
                }
            }
            "bare-sync" => {
                let mut handles = Vec::with_capacity(BATCH);
                for _ in 0..tasks / BATCH {
                    handles.extend((0..BATCH).map(|_| tokio::task::spawn_blocking(|| {})));
                    for handle in handles.drain(..) {
                        handle.await?;
                    }
                }
            }
            "crate-sync" => {
                let background = Background::new();
                for _ in 0..tasks / BATCH {
                    for _ in 0..BATCH {
                        drop(background.schedule(|| {}));
                    }
                    background.wait_idle().await;
                }
                let stats = background.stats();
                if stats.completed != (tasks / BATCH * BATCH) as u64 {
                    return Err(format!("only {} tasks completed", stats.completed).into());
                }
            }
            "crate" | "crate-undetected" => {
                let background = if variant == "crate" {
                    Background::new()
                } else {
                    // The same without blocking detection: what it costs.
                    Background::builder().detect_blocking(None).build()
                };
                for _ in 0..tasks / BATCH {
                    for _ in 0..BATCH {
                        drop(background.schedule(async {}));
                    }
                    background.wait_idle().await;
                }
                let stats = background.stats();
                if stats.completed != (tasks / BATCH * BATCH) as u64 {
                    return Err(format!("only {} tasks completed", stats.completed).into());
                }
            }
            "bare-phases" | "crate-phases" | "bare-immediate" | "crate-immediate"
            | "bare-request-sync" | "crate-request-sync" | "bare-extract" | "crate-extract"
            | "bare-noop" | "crate-noop" | "identity-noop" | "watch-noop" => {
                requests(&variant, tasks).await?
            }
            other => {
                return Err(format!(
                    "unknown variant {other:?}: bare, crate, crate-undetected, bare-sync, \
                     crate-sync, bare- or crate- with phases, immediate, request-sync, \
                     extract or noop, or identity-noop or watch-noop"
                )
                .into());
            }
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    };
    // On a task, so that a multi-thread runtime's workers share the work.
    runtime.block_on(runtime.spawn(run))??;
    Ok(())
}

/// Requests through a router with the crate's layer (`crate-*`) or without
/// it (`bare-*`): `phases` schedules one trivial async task per phase (three
/// `tokio::spawn` for bare), `immediate` one (one `tokio::spawn`),
/// `request-sync` one sync task (`spawn_blocking`), `extract` nothing but
/// extracting `Tasks` (bare: nothing), `noop` nothing; `identity-noop` and
/// `watch-noop` are bare `noop` under a layer that does nothing, and under
/// one that only passes each response body on through a wrapper (what axum
/// charges any layer). `tasks` is the number of tasks (of requests, for
/// `noop`); batches of requests are awaited once every task has run.
async fn requests(
    variant: &str,
    tasks: usize,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::body::Body;
    use axum::routing::get;
    use axum_background::Tasks;
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    static RAN: AtomicUsize = AtomicUsize::new(0);
    fn bump() {
        RAN.fetch_add(1, Ordering::Relaxed);
    }

    let background = Background::new();
    let (layer, kind) = variant
        .split_once('-')
        .ok_or_else(|| format!("not a request variant: {variant:?}"))?;
    let with_layer = layer == "crate";
    let (app, per_request) = match (kind, with_layer) {
        ("phases", true) => (
            Router::new().route(
                "/",
                get(|tasks: Tasks| async move {
                    tasks.schedule(async { bump() });
                    tasks.after_route().schedule(async { bump() });
                    tasks.after_response().schedule(async { bump() });
                    "ok"
                }),
            ),
            3,
        ),
        ("phases", false) => (
            Router::new().route(
                "/",
                get(|| async {
                    for _ in 0..3 {
                        tokio::spawn(async { bump() });
                    }
                    "ok"
                }),
            ),
            3,
        ),
        ("request-sync", true) => (
            Router::new().route(
                "/",
                get(|tasks: Tasks| async move {
                    tasks.schedule(bump);
                    "ok"
                }),
            ),
            1,
        ),
        ("request-sync", false) => (
            Router::new().route(
                "/",
                get(|| async {
                    tokio::task::spawn_blocking(bump);
                    "ok"
                }),
            ),
            1,
        ),
        ("immediate", true) => (
            Router::new().route(
                "/",
                get(|tasks: Tasks| async move {
                    tasks.schedule(async { bump() });
                    "ok"
                }),
            ),
            1,
        ),
        ("immediate", false) => (
            Router::new().route(
                "/",
                get(|| async {
                    tokio::spawn(async { bump() });
                    "ok"
                }),
            ),
            1,
        ),
        // What a request that extracts `Tasks` pays before any task.
        ("extract", true) => (
            Router::new().route("/", get(|_tasks: Tasks| async { "ok" })),
            0,
        ),
        ("noop" | "extract", _) => (Router::new().route("/", get(|| async { "ok" })), 0),
        _ => return Err(format!("unknown request variant {variant:?}").into()),
    };
    let app = match layer {
        "crate" => app.layer(background.layer()),
        // The floor under any layer: axum's price for `Router::layer` itself.
        "identity" => app.layer(tower::layer::util::Identity::new()),
        // The least a layer that acts once the response has been sent does:
        // wrap the response body to see its end.
        "watch" => app.layer(tower::util::MapResponseLayer::new(
            |response: http::Response<Body>| {
                response.map(|body| body.map_err(std::convert::identity))
            },
        )),
        _ => app,
    };
    // As `axum::serve` does: routes made once, not at every request.
    let app = app.with_state::<()>(());
    let requests = BATCH / per_request.max(1);
    for batch in 1..=tasks / BATCH {
        for _ in 0..requests {
            let request = http::Request::get("/").body(Body::empty())?;
            let response = app.clone().oneshot(request).await?;
            response.into_body().collect().await?;
        }
        background.wait_idle().await;
        while RAN.load(Ordering::Relaxed) < batch * requests * per_request {
            tokio::task::yield_now().await;
        }
    }
    Ok(())
}
