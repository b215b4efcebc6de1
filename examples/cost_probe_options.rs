//! The cost per task of the options of "Tasks in time", against a plain task
//! in the same binary: `bench/callgrind.sh` counts the instructions of each
//! (a zero delay, a key per task, a concurrency flow and a rate flow that
//! never hold a task).
//!
//! ```text
//! cargo run --release --example cost_probe_options -- unique 100000
//! ```
//!
//! Arguments: `plain`, `delayed`, `unique`, `flow` or `rate`; the number of
//! tasks.

use std::time::Duration;

use axum_background::{Background, FlowLimit};

const BATCH: usize = 1_000;

fn main() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut args = std::env::args().skip(1);
    let variant = args.next().unwrap_or_else(|| "plain".into());
    let tasks: usize = args.next().map_or(Ok(100_000), |n| n.parse())?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let mut builder = Background::builder();
        match variant.as_str() {
            "flow" => builder = builder.flow("probe", FlowLimit::new().concurrency(BATCH)),
            // A rate no batch reaches: each start still takes a token and
            // arranges its return.
            "rate" => {
                let limit = FlowLimit::new().rate(usize::MAX, Duration::from_secs(3600));
                builder = builder.flow("probe", limit);
            }
            _ => {}
        }
        let background = builder.build();
        let configured = match variant.as_str() {
            "plain" | "unique" => background.task().build(),
            "delayed" => background.task().delay(Duration::ZERO).build(),
            "flow" | "rate" => background.task().flow("probe").build(),
            other => {
                return Err(format!(
                    "unknown variant {other:?}: plain, delayed, unique, flow or rate"
                )
                .into());
            }
        };
        let unique = variant == "unique";
        for batch in 0..tasks / BATCH {
            for i in 0..BATCH {
                let handle = if unique {
                    background
                        .task()
                        .unique(format!("{batch}:{i}"))
                        .build()
                        .schedule(async {})
                } else {
                    configured.schedule(async {})
                };
                drop(handle);
            }
            background.wait_idle().await;
        }
        let stats = background.stats();
        if stats.completed != (tasks / BATCH * BATCH) as u64 {
            return Err(format!("only {} tasks completed", stats.completed).into());
        }
        Ok::<(), Box<dyn std::error::Error + Send + Sync>>(())
    })
}
