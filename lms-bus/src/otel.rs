//! The processors' spans, exported over OTLP in the trace of each event: for every record a
//! processor handles, a `process` span (the batch's time from hand-over to the end of its
//! write) with a `write` child (the processor's store write), both in the trace of the
//! record's `traceparent`. (The API's request span is a `tracing` span that
//! tracing-opentelemetry exports: `api::telemetry`.)
//!
//! These spans are known only once the batch is written, with its times, so they are made
//! here through the OpenTelemetry API with explicit start and end times and with the span
//! ids the derived records already carry ([`TraceContext`] in their headers), so that the
//! exported trace and the propagated headers agree; `tracing` spans cannot be back-dated.
//! Nothing happens until the binary installs an exporter and calls [`enable`]: then spans go
//! to the global tracer provider, and only for sampled contexts.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

use lms_events::TraceContext;
use opentelemetry::trace::{Span as _, SpanContext, SpanId, SpanKind, TraceContextExt as _, TraceFlags, TraceId, TraceState, Tracer as _};
use opentelemetry::{Context, KeyValue, global};

use crate::Record;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Starts reporting spans to the global tracer provider (which the caller has installed).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Whether spans are reported.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A finished span to report.
struct SpanRecord {
    /// Span name, such as `POST /v1/events`.
    name: String,
    /// Server, consumer, internal, ...
    kind: SpanKind,
    /// The span's own trace id and span id (and whether the trace is sampled).
    context: TraceContext,
    /// The parent span in the same trace, if any.
    parent: Option<[u8; 8]>,
    /// When it started.
    start: SystemTime,
    /// When it ended.
    end: SystemTime,
    /// Attributes (bounded: no payloads).
    attributes: Vec<KeyValue>,
}

/// Reports a finished span, if spans are enabled and its trace is sampled.
fn export(span: SpanRecord) {
    if !enabled() || !span.context.sampled {
        return;
    }
    let tracer = global::tracer("lms-pipeline");
    let trace_id = TraceId::from_bytes(span.context.trace_id);
    let parent = match span.parent {
        Some(p) => Context::new().with_remote_span_context(SpanContext::new(
            trace_id,
            SpanId::from_bytes(p),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        )),
        None => Context::new(),
    };
    let mut builder = tracer.span_builder(span.name).with_kind(span.kind).with_start_time(span.start).with_attributes(span.attributes);
    builder.trace_id = Some(trace_id);
    builder.span_id = Some(SpanId::from_bytes(span.context.span_id));
    let mut s = builder.start_with_context(&tracer, &parent);
    s.end_with_timestamp(span.end);
}

/// The spans of a processed batch: for each record with a sampled trace context, a
/// `<group> process` span (child of the record's context) from `received` to `written`, and
/// a `<group> write` child from `write_start` to `written`.
pub fn batch_spans(group: &str, records: &[Record], received: SystemTime, write_start: SystemTime, written: SystemTime) {
    if !enabled() {
        return;
    }
    for r in records {
        let Some(parent) = r.trace.as_ref().filter(|t| t.sampled) else { continue };
        let process = parent.child();
        let common = [
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.consumer.group.name", group.to_owned()),
            KeyValue::new("lms.event_id", r.event.id.clone()),
            KeyValue::new("lms.event_type", r.event.event_type().as_str()),
        ];
        let mut attributes = common.to_vec();
        attributes.push(KeyValue::new("messaging.destination.name", r.raw.tp.topic.clone()));
        attributes.push(KeyValue::new("messaging.destination.partition.id", r.raw.tp.partition.to_string()));
        attributes.push(KeyValue::new("messaging.kafka.offset", r.raw.offset));
        attributes.push(KeyValue::new("messaging.batch.message_count", records.len() as i64));
        let write = process.child();
        export(SpanRecord {
            name: format!("{group} process"),
            kind: SpanKind::Consumer,
            context: process.clone(),
            parent: Some(parent.span_id),
            start: received,
            end: written,
            attributes,
        });
        export(SpanRecord {
            name: format!("{group} write"),
            kind: SpanKind::Internal,
            context: write,
            parent: Some(process.span_id),
            start: write_start,
            end: written,
            attributes: common.to_vec(),
        });
    }
}
