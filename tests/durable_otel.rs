//! Trace continuity of durable tasks (the `opentelemetry` feature): a job
//! carries the trace context of the span that scheduled it, and its task
//! runs in that trace, in another process too.
//!
//! A test binary of its own: it installs a global tracing subscriber (an
//! OpenTelemetry layer over an in-memory exporter). The cross-process test
//! runs this binary again as a child process (the `child_process` entry
//! point, ignored when run directly), which schedules a job in a span of its
//! own and exits.

mod util;

use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::routing::post;
use axum_background::durable::{DurableStore, DurableTask, JobId, JobState};
use axum_background::{Background, BackgroundTask, BoxError, Tasks, mode};
use opentelemetry::trace::{SpanId, TraceContextExt, TraceId, TracerProvider as _};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    InMemorySpanExporter, SdkTracerProvider, SimpleSpanProcessor, Span, SpanData, SpanProcessor,
};
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tower::ServiceExt;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;

use util::within;

/// Opens a span named `inside` (its `key` the task's) while it runs: a span
/// below the task's own.
#[derive(Serialize, Deserialize)]
struct Traced {
    key: String,
}

impl BackgroundTask for Traced {
    type Mode = mode::Async;
    async fn run(self) -> Result<(), BoxError> {
        tracing::info_span!("inside", key = self.key.as_str()).in_scope(|| {});
        Ok(())
    }
}

impl DurableTask for Traced {
    const NAME: &'static str = "traced";
}

// ---------------------------------------------------------------------------
// The spans this process ended.

/// The global subscriber's OpenTelemetry side: the provider, its in-memory
/// exporter, and a notification for each span it ends.
struct Traces {
    provider: SdkTracerProvider,
    exporter: InMemorySpanExporter,
    ended: Arc<Notify>,
}

/// Exports each ended span to the in-memory exporter, then says so.
#[derive(Debug)]
struct Notifying {
    inner: SimpleSpanProcessor<InMemorySpanExporter>,
    ended: Arc<Notify>,
}

impl SpanProcessor for Notifying {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        self.inner.on_end(span);
        self.ended.notify_waiters();
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }
}

/// Installs (once) the global subscriber: a `tracing_opentelemetry` layer
/// over an SDK tracer provider with an in-memory exporter.
fn traces() -> &'static Traces {
    static TRACES: OnceLock<Traces> = OnceLock::new();
    TRACES.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let ended = Arc::new(Notify::new());
        let provider = SdkTracerProvider::builder()
            .with_span_processor(Notifying {
                inner: SimpleSpanProcessor::new(exporter.clone()),
                ended: Arc::clone(&ended),
            })
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("durable_otel"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("the only global subscriber of this test binary");
        Traces {
            provider,
            exporter,
            ended,
        }
    })
}

/// Waits (up to 30 s) until the spans ended in this process satisfy `done`;
/// returns them, the provider flushed.
async fn spans_until(what: &str, done: impl Fn(&[SpanData]) -> bool) -> Vec<SpanData> {
    let traces = traces();
    let wait = async {
        loop {
            // Registered before the look: an end between the two wakes it.
            let ended = traces.ended.notified();
            if done(&traces.exporter.get_finished_spans().unwrap()) {
                break;
            }
            ended.await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .unwrap_or_else(|_| panic!("spans not ended in 30 s: {what}"));
    traces.provider.force_flush().unwrap();
    traces.exporter.get_finished_spans().unwrap()
}

fn attribute<'s>(span: &'s SpanData, key: &str) -> Option<&'s Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| &kv.value)
}

/// The `inside` span of the task whose key is `key`.
fn inside<'s>(spans: &'s [SpanData], key: &str) -> Option<&'s SpanData> {
    spans.iter().find(|span| {
        span.name == "inside" && attribute(span, "key") == Some(&Value::from(key.to_owned()))
    })
}

/// `span`'s parent, if it ended in this process.
fn parent<'s>(spans: &'s [SpanData], span: &SpanData) -> Option<&'s SpanData> {
    let id = span.parent_span_id;
    spans
        .iter()
        .find(|s| id != SpanId::INVALID && s.span_context.span_id() == id)
}

/// `span`'s ancestors that ended in this process, parent first.
fn lineage<'s>(spans: &'s [SpanData], span: &SpanData) -> Vec<&'s SpanData> {
    std::iter::successors(parent(spans, span), |s| parent(spans, s)).collect()
}

/// Whether the task keyed `key` has ended with the span its task span was
/// made in: its `inside` span and two ancestors. (Job ids repeat across
/// these tests' stores: a job's spans are found through its task's key.)
fn task_ended(spans: &[SpanData], key: &str) -> bool {
    inside(spans, key).is_some_and(|span| lineage(spans, span).len() >= 2)
}

/// The names of `span`'s ancestors up to `caller` (excluded), asserting that
/// they and `span` are in `caller`'s trace.
fn chain_to(spans: &[SpanData], span: &SpanData, caller: (TraceId, SpanId)) -> Vec<String> {
    let (trace, caller) = caller;
    let mut names = Vec::new();
    let mut at = span;
    loop {
        assert_eq!(
            at.span_context.trace_id(),
            trace,
            "{} in the caller's trace",
            at.name
        );
        if at.parent_span_id == caller {
            return names;
        }
        at = parent(spans, at).unwrap_or_else(|| {
            panic!(
                "the parent chain of {} ({names:?}) stops before the caller",
                span.name
            )
        });
        names.push(at.name.to_string());
    }
}

// ---------------------------------------------------------------------------
// Stores and processes.

async fn open(path: &Path, queue: &str) -> DurableStore {
    DurableStore::sqlite(path)
        .await
        .expect("open the store")
        .queue(queue)
        .poll_interval(Duration::from_millis(20))
}

/// A `Background` with workers for `Traced` on the store at `path`.
async fn workers(path: &Path, queue: &str) -> Background {
    Background::builder()
        .durable(open(path, queue).await)
        .register::<Traced>()
        .build()
}

/// The child process's side: schedules a `Traced` job in a `checkout` span
/// on the store the parent named (no workers), prints
/// `SCHEDULED <job> <trace id> <span id>`, and exits.
#[test]
#[ignore = "run by the other tests of this file as a child process"]
fn child_process() {
    let (Ok(path), Ok(queue)) = (
        std::env::var("DURABLE_OTEL_STORE"),
        std::env::var("DURABLE_OTEL_QUEUE"),
    ) else {
        return;
    };
    traces();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async move {
        let background = Background::builder()
            .durable(open(Path::new(&path), &queue).await.without_workers())
            .register::<Traced>()
            .build();
        let checkout = tracing::info_span!("checkout");
        let enqueued = background
            .durable()
            .schedule(Traced { key: queue.clone() })
            .instrument(checkout.clone())
            .await
            .expect("written to the store")
            .expect("written now: the immediate phase");
        let context = checkout.context();
        let span = context.span();
        let ids = span.span_context();
        println!(
            "SCHEDULED {} {} {}",
            enqueued.id,
            ids.trace_id(),
            ids.span_id()
        );
    });
}

/// Runs `child_process` in a child process on the store at `path`; the job
/// it wrote and the trace id and span id of the span it wrote it in.
async fn schedule_in_child(path: &Path, queue: &str) -> (JobId, TraceId, SpanId) {
    let run = tokio::process::Command::new(std::env::current_exe().unwrap())
        .args(["child_process", "--exact", "--ignored", "--nocapture"])
        .env("DURABLE_OTEL_STORE", path)
        .env("DURABLE_OTEL_QUEUE", queue)
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("the child process ends in 30 s")
        .expect("run the child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "the child process failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let line = stdout
        .lines()
        .find_map(|line| line.strip_prefix("SCHEDULED "))
        .unwrap_or_else(|| panic!("no SCHEDULED line from the child process: {stdout}"));
    let mut fields = line.split_whitespace();
    let id: i64 = fields.next().unwrap().parse().expect("a job id");
    let trace = TraceId::from_hex(fields.next().unwrap()).expect("a trace id");
    let span = SpanId::from_hex(fields.next().unwrap()).expect("a span id");
    (JobId::from(id), trace, span)
}

// ---------------------------------------------------------------------------
// The tests.

#[tokio::test]
async fn a_job_scheduled_in_one_process_runs_in_its_schedulers_trace_in_another() {
    traces();
    let path = util::fresh_sqlite("durable_otel", "across_processes");
    let queue = "otel-across-processes";
    let (id, trace, checkout) = schedule_in_child(&path, queue).await;

    let background = workers(&path, queue).await;
    within("the job runs", background.durable().wait_drained())
        .await
        .unwrap();
    assert_eq!(
        background.durable().job(id).await.unwrap().state,
        JobState::Completed
    );
    let spans = spans_until("the job's spans", |spans| task_ended(spans, queue)).await;

    // A span inside the task, below the task's span, below the job's span, a
    // child of the child process's `checkout`.
    let inside = inside(&spans, queue).unwrap();
    assert_eq!(
        chain_to(&spans, inside, (trace, checkout)),
        ["background_task", "durable_job"]
    );
    let (task, job) = (parent(&spans, inside).unwrap(), lineage(&spans, inside)[1]);
    assert_eq!(attribute(task, "name"), Some(&Value::from("traced")));
    assert_eq!(attribute(job, "job"), Some(&Value::I64(id.as_i64())));
    assert_eq!(attribute(job, "task"), Some(&Value::from("traced")));
    assert_eq!(job.parent_span_id, checkout);
    assert!(job.parent_span_is_remote);

    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
}

#[tokio::test]
async fn a_job_scheduled_outside_any_trace_runs_in_a_fresh_one() {
    traces();
    let path = util::fresh_sqlite("durable_otel", "outside_any_trace");
    let queue = "otel-outside-any-trace";
    let background = workers(&path, queue).await;
    assert!(tracing::Span::current().is_none());
    let id = background
        .durable()
        .schedule(Traced {
            key: queue.to_owned(),
        })
        .await
        .unwrap()
        .unwrap()
        .id;
    within("the job runs", background.durable().wait_drained())
        .await
        .unwrap();
    assert_eq!(
        background.durable().job(id).await.unwrap().state,
        JobState::Completed
    );
    let spans = spans_until("the task's spans", |spans| task_ended(spans, queue)).await;

    // The task's span is below a root of this process (the engine's span of
    // the job), with no span of ours between: a trace of its own.
    let inside = inside(&spans, queue).unwrap();
    let lineage = lineage(&spans, inside);
    let names: Vec<&str> = lineage.iter().map(|span| span.name.as_ref()).collect();
    assert_eq!(names.first(), Some(&"background_task"));
    assert!(!names.contains(&"durable_job"), "{names:?}");
    let root = lineage.last().unwrap();
    assert_eq!(root.parent_span_id, SpanId::INVALID, "{names:?}");
    for span in &lineage {
        assert_eq!(span.span_context.trace_id(), inside.span_context.trace_id());
    }

    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
}

/// Schedules a `Traced` job keyed `after_response`, written once the
/// response has been sent.
async fn checkout(tasks: Tasks) -> &'static str {
    tasks
        .durable()
        .after_response()
        .schedule(Traced {
            key: "otel-every-way-after_response".to_owned(),
        })
        .await
        .unwrap();
    "ordered"
}

#[tokio::test]
async fn every_way_of_scheduling_carries_the_callers_trace() {
    traces();
    let path = util::fresh_sqlite("durable_otel", "every_way");
    let queue = "otel-every-way";
    let key = |way: &str| format!("{queue}-{way}");
    let background = workers(&path, queue).await;
    let caller = tracing::info_span!("caller");
    let ids = {
        let context = caller.context();
        let span = context.span();
        (
            span.span_context().trace_id(),
            span.span_context().span_id(),
        )
    };

    // In a later phase: the context is the handler's, taken when it
    // schedules (the job is written after the response).
    let app = Router::new()
        .route("/", post(checkout))
        .layer(background.layer());
    let request = http::Request::post("/")
        .body(axum::body::Body::empty())
        .unwrap();
    let response = app.oneshot(request).instrument(caller.clone()).await;
    drop(response.unwrap());
    // In a transaction, and several at once.
    let pool = open(&path, queue).await.sqlite_pool().cloned().unwrap();
    async {
        let mut tx = pool.begin_with("BEGIN IMMEDIATE").await.unwrap();
        let _ = background
            .durable()
            .tx(&mut tx)
            .schedule(Traced { key: key("tx") })
            .await
            .unwrap();
        tx.commit().await.unwrap();
        background
            .durable()
            .schedule_many([Traced { key: key("many-1") }, Traced { key: key("many-2") }])
            .await
            .unwrap();
    }
    .instrument(caller.clone())
    .await;
    drop(caller);

    let ways = ["after_response", "tx", "many-1", "many-2"];
    let spans = spans_until("every way's task spans", |spans| {
        ways.iter().all(|way| task_ended(spans, &key(way)))
    })
    .await;
    for way in ways {
        let inside = inside(&spans, &key(way)).unwrap();
        assert_eq!(
            chain_to(&spans, inside, ids),
            ["background_task", "durable_job"],
            "{way}"
        );
    }
    within("the jobs ran", background.durable().wait_drained())
        .await
        .unwrap();
    within("shutdown", background.shutdown(Duration::from_secs(5))).await;
}
