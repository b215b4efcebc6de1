//! Periodic tasks at a fixed interval: their ticks, overlap and missed-tick
//! policies, jitter, listing, and shutdown. Paused time: the clock moves
//! only when every task waits, straight to the next timer.

mod util;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum_background::periodic::{MissedTicks, Overlap, Periodic};
use axum_background::{Background, BoxError, TaskConfig, TaskError, TaskInfo};
use tokio::sync::mpsc;
use tokio::time::Instant;
use util::assert_settled;

const PERIOD: Duration = Duration::from_secs(10);

/// Awaits `future` for up to an hour of paused time.
async fn within_the_hour<F: std::future::Future>(what: &str, future: F) -> F::Output {
    tokio::time::timeout(Duration::from_secs(3600), future)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for: {what}"))
}

/// A periodic task that reports the instant each run starts, then works for
/// `work` (paused time).
fn reporting(work: Duration) -> (Periodic, mpsc::UnboundedReceiver<Instant>) {
    let (runs, started) = mpsc::unbounded_channel();
    let periodic = Periodic::every(PERIOD, move || {
        let runs = runs.clone();
        async move {
            let _ = runs.send(Instant::now());
            tokio::time::sleep(work).await;
        }
    });
    (periodic, started)
}

/// The offsets from `origin` of the next `n` runs, in whole seconds.
async fn next_runs(
    started: &mut mpsc::UnboundedReceiver<Instant>,
    origin: Instant,
    n: usize,
) -> Vec<u64> {
    let mut offsets = Vec::new();
    for _ in 0..n {
        let at = within_the_hour("a run", started.recv())
            .await
            .expect("a run");
        offsets.push((at - origin).as_secs());
    }
    offsets
}

#[tokio::test(start_paused = true)]
async fn a_periodic_task_runs_once_a_period_from_one_period_after_start() {
    let origin = Instant::now();
    let (periodic, mut started) = reporting(Duration::ZERO);
    let background = Background::builder()
        .periodic(periodic.name("tick"))
        .build();
    assert_eq!(next_runs(&mut started, origin, 3).await, [10, 20, 30]);
    let info = &background.periodic_tasks()[0];
    assert_eq!(
        (info.name.as_ref(), info.schedule.as_str()),
        ("tick", "every 10s")
    );
    let last = info.last_run.as_ref().expect("it ran");
    assert_eq!(
        last.info().name,
        "tick",
        "each run is a task named after it"
    );
}

#[tokio::test(start_paused = true)]
async fn a_tick_is_skipped_while_the_previous_run_is_in_flight() {
    let origin = Instant::now();
    let (periodic, mut started) = reporting(Duration::from_secs(25));
    let _background = Background::builder().periodic(periodic).build();
    // The run of 10 s ends at 35 s: the ticks of 20 s and 30 s are skipped.
    assert_eq!(next_runs(&mut started, origin, 3).await, [10, 40, 70]);
}

#[tokio::test(start_paused = true)]
async fn overlapping_runs_are_allowed_when_asked() {
    let origin = Instant::now();
    let (periodic, mut started) = reporting(Duration::from_secs(25));
    let _background = Background::builder()
        .periodic(periodic.overlap(Overlap::Allow))
        .build();
    assert_eq!(next_runs(&mut started, origin, 3).await, [10, 20, 30]);
}

/// The schedule wakes 25 s late (its runtime was busy): skipping resumes on
/// the grid; running once late catches up once, then counts from there.
#[tokio::test(start_paused = true)]
async fn missed_ticks_are_skipped_or_run_once_late() {
    for (missed, expected) in [
        (MissedTicks::Skip, [35, 40, 50]),
        (MissedTicks::RunOnceLate, [35, 35, 45]),
    ] {
        let origin = Instant::now();
        let (periodic, mut started) = reporting(Duration::ZERO);
        let background = Background::builder()
            .periodic(periodic.overlap(Overlap::Allow).missed_ticks(missed))
            .build();
        // Everything waits; the clock jumps 35 s at once.
        tokio::time::advance(Duration::from_secs(35)).await;
        assert_eq!(
            next_runs(&mut started, origin, 3).await,
            expected,
            "{missed:?}"
        );
        let _ = background.shutdown(Duration::ZERO).await;
    }
}

#[tokio::test(start_paused = true)]
async fn jitter_delays_each_run_by_less_than_it() {
    let (periodic, mut started) = reporting(Duration::ZERO);
    let origin = Instant::now();
    let _background = Background::builder()
        .periodic(periodic.jitter(Duration::from_secs(3)))
        .build();
    for tick in 1..=5 {
        let at = within_the_hour("a run", started.recv())
            .await
            .expect("a run");
        let late = at - (origin + PERIOD * tick);
        assert!(late < Duration::from_secs(3), "run {tick} is {late:?} late");
    }
}

#[tokio::test(start_paused = true)]
async fn the_next_run_is_listed_before_it_is_due() {
    let (periodic, _started) = reporting(Duration::ZERO);
    let background = Background::builder()
        .periodic(periodic.name("purge"))
        .build();
    let info = &background.periodic_tasks()[0];
    let next = info.next_run.expect("a next run");
    let ahead = next.saturating_duration_since(Instant::now().into_std());
    assert!(
        ahead > PERIOD - Duration::from_secs(1) && ahead <= PERIOD,
        "next run in {ahead:?}"
    );
    assert!(info.last_run.is_none());
}

/// Each run is an ordinary task: a failure reaches the configured handler
/// and the schedule goes on.
#[tokio::test(start_paused = true)]
async fn a_failing_run_reaches_its_handler_and_the_schedule_goes_on() {
    let failures = Arc::new(Mutex::new(Vec::new()));
    let handler = {
        let failures = Arc::clone(&failures);
        move |info: &TaskInfo, error: &TaskError| {
            failures
                .lock()
                .unwrap()
                .push((info.name.to_string(), error.to_string()));
        }
    };
    let (runs, mut started) = mpsc::unbounded_channel();
    let periodic = Periodic::every(PERIOD, move || {
        let runs = runs.clone();
        async move {
            let _ = runs.send(Instant::now());
            Err::<(), BoxError>("upstream down".into())
        }
    })
    .name("sync-prices")
    .config(TaskConfig::builder().on_error(handler).build());
    let background = Background::builder().periodic(periodic).build();
    let origin = Instant::now();
    assert_eq!(next_runs(&mut started, origin, 2).await, [10, 20]);
    let last = background.periodic_tasks()[0]
        .last_run
        .clone()
        .expect("ran");
    within_the_hour("the second run ends", last.outcome())
        .await
        .expect_err("it fails");
    let failures = failures.lock().unwrap().clone();
    assert_eq!(failures.len(), 2, "{failures:?}");
    assert_eq!(failures[0].0, "sync-prices");
    assert!(failures[0].1.contains("upstream down"), "{failures:?}");
}

/// Shutdown stops the schedule before it rejects new tasks: no tick is
/// rejected, and none runs after.
#[tokio::test(start_paused = true)]
async fn shutdown_stops_the_schedule_and_rejects_no_tick() {
    let (periodic, mut started) = reporting(Duration::ZERO);
    let background = Background::builder()
        .periodic(periodic.name("tick"))
        .build();
    let origin = Instant::now();
    assert_eq!(next_runs(&mut started, origin, 2).await, [10, 20]);

    let report = background.shutdown(Duration::from_secs(5)).await;
    assert!(report.cancelled.is_empty(), "{report:?}");
    let stats = background.stats();
    assert_eq!(stats.rejected, 0, "{stats:?}");
    assert_settled(stats);
    assert!(background.periodic_tasks()[0].next_run.is_none());

    tokio::time::advance(PERIOD * 3).await;
    assert!(started.try_recv().is_err(), "a run after shutdown");
    assert_eq!(background.stats().scheduled, 2);
}

#[cfg(feature = "cron")]
mod cron {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_cron_schedule_runs_at_each_of_its_times() {
        let (runs, mut started) = mpsc::unbounded_channel();
        let every_ten_seconds = Periodic::cron("*/10 * * * * *", move || {
            let runs = runs.clone();
            async move {
                let _ = runs.send(Instant::now());
            }
        })
        .expect("a cron expression")
        .name("ten")
        .time_zone(chrono_tz::Europe::Paris);
        let origin = Instant::now();
        let background = Background::builder().periodic(every_ten_seconds).build();
        let info = &background.periodic_tasks()[0];
        assert_eq!(info.schedule, "cron */10 * * * * * (Europe/Paris)");

        let mut at = Vec::new();
        for _ in 0..3 {
            at.push(
                within_the_hour("a run", started.recv())
                    .await
                    .expect("a run"),
            );
        }
        assert!(
            at[0] - origin <= PERIOD,
            "first run {:?} in",
            at[0] - origin
        );
        assert_eq!(at[1] - at[0], PERIOD);
        assert_eq!(at[2] - at[1], PERIOD);
    }

    #[test]
    fn a_bad_cron_expression_is_an_error_that_says_what_to_write() {
        let error = Periodic::cron("every tuesday", || async {}).expect_err("not cron");
        let message = error.to_string();
        assert!(message.contains("every tuesday"), "{message}");
        assert!(message.contains("0 30 2 * * *"), "{message}");
    }
}
