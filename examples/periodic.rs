//! Periodic tasks: a cleanup every 200 ms that skips a tick while the last
//! run is still going, and a slow report that is allowed to overlap; the
//! schedules listed with their next run; shutdown stopping them before it
//! rejects anything. Runs by itself for about a second, then exits.
//!
//!     cargo run --example periodic

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum_background::periodic::{Overlap, Periodic};
use axum_background::{Background, BoxError};

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let cleanups = Arc::new(AtomicUsize::new(0));
    let reports = Arc::new(AtomicUsize::new(0));

    let cleanup = {
        let cleanups = Arc::clone(&cleanups);
        Periodic::every(Duration::from_millis(200), move || {
            let cleanups = Arc::clone(&cleanups);
            async move {
                // Takes longer than the period now and then: the tick that
                // falls during it is skipped (the default overlap policy).
                let run = cleanups.fetch_add(1, Ordering::SeqCst) + 1;
                let work = if run % 2 == 0 { 300 } else { 20 };
                tokio::time::sleep(Duration::from_millis(work)).await;
                println!("cleanup #{run}: purged expired sessions in {work} ms");
            }
        })
        .name("cleanup")
    };
    let report = {
        let reports = Arc::clone(&reports);
        Periodic::every(Duration::from_millis(300), move || {
            let reports = Arc::clone(&reports);
            move || {
                // A sync run: the blocking pool.
                std::thread::sleep(Duration::from_millis(400));
                let run = reports.fetch_add(1, Ordering::SeqCst) + 1;
                println!("report #{run}: written");
            }
        })
        .name("report")
        .overlap(Overlap::Allow)
    };
    let background = Background::builder()
        .periodic(cleanup)
        .periodic(report)
        .build();

    for schedule in background.periodic_tasks() {
        let next = schedule
            .next_run
            .map(|at| at.saturating_duration_since(std::time::Instant::now()));
        println!(
            "schedule {} ({}): next run in {next:?}",
            schedule.name, schedule.schedule
        );
    }

    tokio::time::sleep(Duration::from_secs(1)).await;

    // Stops both schedules first (no tick is rejected), then settles the
    // runs in flight: a report still writing is waited for up to the grace.
    let report = background.shutdown(Duration::from_secs(1)).await;
    let stats = background.stats();
    println!(
        "shutdown: {} finished, {} cancelled, {} overdue; {} runs scheduled, {} rejected",
        report.finished.len(),
        report.cancelled.len(),
        report.overdue.len(),
        stats.scheduled,
        stats.rejected,
    );
    println!(
        "cleanup ran {} times, report {} times",
        cleanups.load(Ordering::SeqCst),
        reports.load(Ordering::SeqCst)
    );
    assert_eq!(stats.rejected, 0, "a tick was rejected");
    Ok(())
}
