//! The `metrics` feature, read back through a real recorder
//! (`metrics-util`'s debugging recorder, installed for this test binary).

mod util;

use std::collections::HashMap;
use std::sync::Arc;

use axum_background::{Background, Phase};
use metrics_util::MetricKind;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tokio::sync::Notify;
use util::within;

/// Every metric as `(kind, name, sorted labels) -> value`.
type Metrics = HashMap<(MetricKind, String, Vec<(String, String)>), DebugValue>;

/// Folds a snapshot into `seen`: the debugging recorder drains every metric
/// it reports (gauges too, to zero), so values add up across snapshots.
fn read(snapshotter: &Snapshotter, seen: &mut Metrics) {
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let mut labels: Vec<(String, String)> = key
            .key()
            .labels()
            .map(|label| (label.key().to_owned(), label.value().to_owned()))
            .collect();
        labels.sort();
        let entry = (key.kind(), key.key().name().to_owned(), labels);
        match (seen.get_mut(&entry), value) {
            (Some(DebugValue::Counter(total)), DebugValue::Counter(more)) => *total += more,
            (Some(DebugValue::Gauge(level)), DebugValue::Gauge(change)) => {
                *level = (level.into_inner() + change.into_inner()).into();
            }
            (Some(DebugValue::Histogram(all)), DebugValue::Histogram(more)) => all.extend(more),
            (_, value) => {
                seen.insert(entry, value);
            }
        }
    }
}

fn labels(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut labels: Vec<_> = pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    labels.sort();
    labels
}

fn counter(metrics: &Metrics, name: &str, pairs: &[(&str, &str)]) -> u64 {
    match metrics.get(&(MetricKind::Counter, name.to_owned(), labels(pairs))) {
        Some(DebugValue::Counter(value)) => *value,
        other => panic!("{name} {pairs:?}: {other:?}"),
    }
}

fn gauge(metrics: &Metrics, name: &str) -> f64 {
    match metrics.get(&(MetricKind::Gauge, name.to_owned(), Vec::new())) {
        Some(DebugValue::Gauge(value)) => value.into_inner(),
        other => panic!("{name}: {other:?}"),
    }
}

fn histogram_len(metrics: &Metrics, name: &str, pairs: &[(&str, &str)]) -> usize {
    match metrics.get(&(MetricKind::Histogram, name.to_owned(), labels(pairs))) {
        Some(DebugValue::Histogram(values)) => values.len(),
        other => panic!("{name} {pairs:?}: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tasks_are_counted_timed_and_gauged_by_name_phase_and_outcome() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder
        .install()
        .expect("the only recorder of this test binary");

    let background = Background::new();
    let release = Arc::new(Notify::new());
    let gate = Arc::clone(&release);
    let held = background
        .task()
        .name("held")
        .build()
        .schedule(async move { gate.notified().await });
    within("the held task to start", held.started()).await;
    let queued_after_response = background
        .task()
        .name("later")
        .phase(Phase::AfterResponse)
        .build();
    // Outside a request every phase starts at once; the phase is still its label.
    within(
        "the later task",
        queued_after_response.schedule(async {}).outcome(),
    )
    .await
    .unwrap();

    // While `held` runs: one in flight, none queued.
    let mut metrics = Metrics::new();
    read(&snapshotter, &mut metrics);
    assert_eq!(gauge(&metrics, "background_tasks_in_flight"), 1.0);
    assert_eq!(gauge(&metrics, "background_tasks_queued"), 0.0);

    background.task().name("sync-ok").build().schedule(|| ());
    background
        .task()
        .name("bad")
        .build()
        .schedule(async { Err::<(), _>("boom") });
    release.notify_one();
    within("idle", background.wait_idle()).await;

    read(&snapshotter, &mut metrics);
    let immediate = |name: &'static str| [("name", name), ("phase", "immediate")];
    for name in ["held", "sync-ok", "bad"] {
        assert_eq!(
            counter(
                &metrics,
                "background_tasks_scheduled_total",
                &immediate(name)
            ),
            1,
            "{name}"
        );
        assert_eq!(
            histogram_len(
                &metrics,
                "background_task_queue_wait_seconds",
                &immediate(name)
            ),
            1,
            "{name}"
        );
    }
    assert_eq!(
        counter(
            &metrics,
            "background_tasks_scheduled_total",
            &[("name", "later"), ("phase", "after_response")]
        ),
        1
    );
    for (name, outcome) in [
        ("held", "completed"),
        ("sync-ok", "completed"),
        ("bad", "failed"),
    ] {
        let pairs = [("name", name), ("phase", "immediate"), ("outcome", outcome)];
        assert_eq!(
            counter(&metrics, "background_tasks_ended_total", &pairs),
            1,
            "{name}"
        );
        assert_eq!(
            histogram_len(&metrics, "background_task_run_seconds", &pairs),
            1,
            "{name}"
        );
    }
    assert_eq!(gauge(&metrics, "background_tasks_in_flight"), 0.0);
    assert_eq!(gauge(&metrics, "background_tasks_queued"), 0.0);

    // A task blocking its worker thread is counted once, by name.
    let blocks = background
        .task()
        .name("blocks")
        .build()
        .schedule(async { std::thread::sleep(std::time::Duration::from_millis(400)) });
    within("the blocking task", blocks.outcome()).await.unwrap();
    assert!(blocks.info().blocked.is_some(), "marked");
    read(&snapshotter, &mut metrics);
    let blocking = [("name", "blocks"), ("phase", "immediate")];
    assert_eq!(
        counter(&metrics, "background_tasks_blocking_total", &blocking),
        1
    );
}
