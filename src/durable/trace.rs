//! Trace continuity (the `opentelemetry` feature): a job carries the trace
//! context of the span that scheduled it, and its worker runs it in that
//! trace, in whichever process takes it.
//!
//! # Invariants
//!
//! - The context is taken when the job is made (`DurableTasks::stored`), in
//!   the caller's span: in a later phase that is the handler's, not the
//!   phase's.
//! - It is stored in W3C Trace Context form (`traceparent`, and `tracestate`
//!   when not empty) under [`TRACE_KEY`] in the job's metadata; a job made
//!   outside any OpenTelemetry span has no such key.
//! - A job without a valid context runs as it would without the feature: no
//!   span of ours, no parent set.

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use riverqueue::{InsertOpts, JobRow};
use serde_json::{Map, Value};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Where a job keeps its scheduler's trace context: an object with
/// `traceparent` and, if any, `tracestate` (W3C Trace Context).
pub(crate) const TRACE_KEY: &str = "axum_background_trace";

/// `opts` with the current span's trace context in the job's metadata, or
/// `opts` as they were when the current span has none (no subscriber, no
/// OpenTelemetry layer, no span).
pub(crate) fn inject(opts: InsertOpts) -> InsertOpts {
    if !tracing::dispatcher::has_been_set() {
        return opts;
    }
    let context = Span::current().context();
    if !context.span().span_context().is_valid() {
        return opts;
    }
    let mut carrier = HashMap::<String, String>::with_capacity(2);
    TraceContextPropagator::new().inject_context(&context, &mut carrier);
    let fields: Map<String, Value> = carrier
        .into_iter()
        .filter(|(_, value)| !value.is_empty())
        .map(|(key, value)| (key, Value::String(value)))
        .collect();
    let mut metadata = Map::with_capacity(1);
    metadata.insert(TRACE_KEY.to_owned(), Value::Object(fields));
    opts.with_metadata(metadata)
}

/// The INFO `durable_job` span to run `row`'s task in, its OpenTelemetry
/// parent the context the job carries; [`Span::none`] when it carries none
/// (or one that does not parse).
pub(crate) fn job_span(row: &JobRow, task: &'static str) -> Span {
    let Ok(Some(carrier)) = row.metadata.get::<HashMap<String, String>>(TRACE_KEY) else {
        return Span::none();
    };
    // Extracted over an empty context: a carrier that does not parse must not
    // fall back to the current one.
    let parent = TraceContextPropagator::new().extract_with_context(&Context::new(), &carrier);
    if !parent.span().span_context().is_valid() {
        return Span::none();
    }
    let span = tracing::info_span!("durable_job", job = row.id, task);
    // Set before the span is entered (the parent of a started span is fixed).
    // It fails only where nothing would record the link: no OpenTelemetry
    // layer, or the span filtered out.
    let _ = span.set_parent(parent);
    span
}
