//! Task metrics in Prometheus format: `cargo run --example metrics --features metrics`.
//!
//! Installs `metrics-exporter-prometheus` as the recorder, serves its rendering
//! at `/metrics` on a local port next to an app that schedules tasks, sends
//! itself a few requests, then prints the scrape and exits.

use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum_background::{Background, Tasks};
use metrics_exporter_prometheus::PrometheusBuilder;

async fn order(tasks: Tasks) -> StatusCode {
    tasks.task().name("receipt").build().schedule(async {
        tokio::time::sleep(Duration::from_millis(5)).await; // stands for an email
    });
    tasks
        .after_response()
        .task()
        .name("audit")
        .build()
        .schedule(|| ()); // a sync task, after the response
    tasks
        .task()
        .name("charge")
        .build()
        .schedule(async { Err::<(), _>("card declined") });
    StatusCode::ACCEPTED
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let prometheus = PrometheusBuilder::new().install_recorder()?;
    let background = Background::new();
    let app = Router::new()
        .route("/order", post(order))
        .layer(background.layer())
        .route("/metrics", get(move || async move { prometheus.render() }));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });
    println!("serving /order and /metrics on {base}");

    let client = reqwest::Client::new();
    for _ in 0..3 {
        let status = client.post(format!("{base}/order")).send().await?.status();
        println!("POST /order -> {status}");
    }
    background.wait_idle().await;

    let scrape = client
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    println!("\nGET /metrics (the task metrics):");
    for line in scrape.lines().filter(|line| {
        line.starts_with("background_tasks_")
            || (line.starts_with("background_task_") && line.contains("_count"))
    }) {
        println!("  {line}");
    }
    Ok(())
}
