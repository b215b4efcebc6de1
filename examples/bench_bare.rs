//! The floor for `bench/run.sh`: the endpoints of `bench_server`, served by
//! bare axum with plain `tokio::spawn` and `tokio::task::spawn_blocking`; no
//! axum-background.
//!
//! Serves on `127.0.0.1:$PORT` (default 3000): `/noop`, `/immediate`,
//! `/phases` (three `tokio::spawn` in the handler: bare tokio has no phases),
//! `/blocking`, `/stats` (`{"completed": N}`) and `/burst` (as
//! `bench_server`'s, counting what it schedules).
//!
//! On SIGTERM or Ctrl-C it stops taking requests, drains the open ones and
//! returns, dropping the runtime as a plain tokio program does; then it
//! prints `SHUTDOWN {json}` with what `/burst` scheduled and the counter.
//!
//! With `LAYER=watch` the routes sit under the least a layer acting once the
//! response has been sent can do: one wrapping each response body (to see its
//! end) that only passes its frames on. It is the floor for the crate's layer
//! on `/noop`: what axum charges any such layer (`bench/run.sh`'s `layered`).
//!
//! `PORT=3000 cargo run --release --example bench_bare`

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Response, header};
use axum::response::IntoResponse;
use axum::routing::get;
use http_body_util::BodyExt;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Tasks that ran to their end.
static COMPLETED: AtomicU64 = AtomicU64::new(0);
/// Tasks `/burst` spawned (the other endpoints do not count, to stay bare).
static BURST_SCHEDULED: AtomicU64 = AtomicU64::new(0);

fn bump() {
    COMPLETED.fetch_add(1, Ordering::Relaxed);
}

async fn noop() -> &'static str {
    "ok"
}

async fn immediate() -> &'static str {
    drop(tokio::spawn(async { bump() }));
    "ok"
}

async fn phases() -> &'static str {
    drop(tokio::spawn(async { bump() }));
    drop(tokio::spawn(async { bump() }));
    drop(tokio::spawn(async { bump() }));
    "ok"
}

async fn blocking() -> &'static str {
    drop(tokio::task::spawn_blocking(bump));
    "ok"
}

async fn burst() -> &'static str {
    BURST_SCHEDULED.fetch_add(3, Ordering::Relaxed);
    drop(tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        bump();
    }));
    drop(tokio::spawn(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        bump();
    }));
    drop(tokio::task::spawn_blocking(|| {
        std::thread::sleep(Duration::from_millis(50));
        bump();
    }));
    "ok"
}

async fn stats() -> impl IntoResponse {
    let body = format!("{{\"completed\":{}}}", COMPLETED.load(Ordering::Relaxed));
    ([(header::CONTENT_TYPE, "application/json")], body)
}

/// Ctrl-C or SIGTERM.
async fn signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut stream) => {
                stream.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
}

fn main() -> Result<(), BoxError> {
    let port: u16 = std::env::var("PORT")
        .ok()
        .and_then(|value| value.parse().ok())
        .unwrap_or(3000);
    let watch = match std::env::var("LAYER").as_deref() {
        Ok("watch") => true,
        Ok(other) => return Err(format!("unknown LAYER {other:?}: watch, or unset").into()),
        Err(_) => false,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;

    runtime.block_on(async move {
        let app = Router::new()
            .route("/noop", get(noop))
            .route("/immediate", get(immediate))
            .route("/phases", get(phases))
            .route("/blocking", get(blocking))
            .route("/burst", get(burst))
            .route("/stats", get(stats));
        let app = if watch {
            app.layer(tower::util::MapResponseLayer::new(
                |response: Response<Body>| {
                    response.map(|body| body.map_err(std::convert::identity))
                },
            ))
        } else {
            app
        };
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        println!("listening on http://127.0.0.1:{port}");
        axum::serve(listener, app)
            .with_graceful_shutdown(signal())
            .await?;
        Ok::<_, BoxError>(())
    })?;
    // As a plain program ends: spawned tasks are dropped, running blocking
    // closures finish, queued ones never start.
    drop(runtime);
    println!(
        "SHUTDOWN {{\"scheduled\":{},\"counter\":{}}}",
        BURST_SCHEDULED.load(Ordering::Relaxed),
        COMPLETED.load(Ordering::Relaxed)
    );
    Ok(())
}
