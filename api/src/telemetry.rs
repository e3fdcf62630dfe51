//! Request telemetry: one tracing span per request carrying its W3C trace context, and the
//! HTTP metrics.
//!
//! The trace context of a request continues the caller's `traceparent` header as a child
//! span, or starts a new trace; handlers read it with the [`RequestTrace`] extractor and
//! put it into the Kafka record headers of what they produce.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use lms_events::TraceContext;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tracing::Instrument;

/// Every metric the API exports.
pub struct ApiMetrics {
    /// `lms_http_requests_total{route,method,status}`.
    pub requests: IntCounterVec,
    /// `lms_http_request_duration_seconds{route,method}`.
    pub duration: HistogramVec,
    /// `lms_api_events_total{outcome}`: events accepted (acknowledged by the broker),
    /// rejected (invalid) or failed (not acknowledged: answered 503).
    pub events: IntCounterVec,
}

impl ApiMetrics {
    /// Registers the metrics in `registry`.
    pub fn register(registry: &Registry) -> Result<Arc<ApiMetrics>, prometheus::Error> {
        let m = ApiMetrics {
            requests: IntCounterVec::new(
                Opts::new("lms_http_requests_total", "HTTP requests answered, by route template, method and status."),
                &["route", "method", "status"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new("lms_http_request_duration_seconds", "Time to answer an HTTP request, by route template and method.")
                    .buckets(vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0]),
                &["route", "method"],
            )?,
            events: IntCounterVec::new(
                Opts::new("lms_api_events_total", "Events received by the write API, by outcome (accepted, rejected, failed)."),
                &["outcome"],
            )?,
        };
        registry.register(Box::new(m.requests.clone()))?;
        registry.register(Box::new(m.duration.clone()))?;
        registry.register(Box::new(m.events.clone()))?;
        for outcome in ["accepted", "rejected", "failed"] {
            m.events.with_label_values(&[outcome]);
        }
        Ok(Arc::new(m))
    }

    /// Counts events of one request by outcome.
    pub(crate) fn count_events(&self, accepted: usize, rejected: usize, failed: usize) {
        for (outcome, n) in [("accepted", accepted), ("rejected", rejected), ("failed", failed)] {
            if n > 0 {
                self.events.with_label_values(&[outcome]).inc_by(n as u64);
            }
        }
    }
}

/// The W3C trace context of the current request's span: a child of the caller's
/// `traceparent`, or a new root. The context of every record the request produces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestTrace(pub TraceContext);

impl<S: Send + Sync> FromRequestParts<S> for RequestTrace {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<RequestTrace, Self::Rejection> {
        Ok(parts.extensions.get::<RequestTrace>().cloned().unwrap_or_else(|| RequestTrace(context_of(parts))))
    }
}

/// The context of a request: a child of a valid incoming `traceparent`, else a sampled root.
fn context_of(parts: &Parts) -> TraceContext {
    incoming(parts).map_or_else(|| TraceContext::new_root(true), |parent| parent.child())
}

/// The caller's valid `traceparent`, if any, with its `tracestate` and `baggage` (W3C:
/// repeated headers are one comma-separated list).
fn incoming(parts: &Parts) -> Option<TraceContext> {
    let joined = |name: &str| {
        let values: Vec<&str> = parts.headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let parent = parts.headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse_traceparent)?;
    Some(parent.with_state(joined("tracestate").as_deref(), joined("baggage").as_deref()))
}

/// The middleware around every route: span, trace context, metrics.
pub(crate) async fn observe(State(metrics): State<Arc<ApiMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let (mut parts, body) = request.into_parts();
    let route = parts.extensions.get::<MatchedPath>().map_or("unmatched", |p| p.as_str()).to_owned();
    let method = parts.method.clone();
    let request_id = parts.headers.get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let parent = incoming(&parts);
    let trace = parent.as_ref().map_or_else(|| TraceContext::new_root(true), TraceContext::child);
    let start = std::time::SystemTime::now();
    parts.extensions.insert(RequestTrace(trace.clone()));
    let span = tracing::info_span!(
        "http_request",
        http.method = %method,
        http.route = %route,
        request_id = %request_id,
        trace_id = %trace.trace_id_hex(),
        span_id = %trace.span_id_hex(),
        tenant = tracing::field::Empty,
        http.status = tracing::field::Empty,
    );
    let response = next.run(Request::from_parts(parts, body)).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.status", status.as_u16());
    let elapsed = started.elapsed();
    if status.is_server_error() {
        span.in_scope(|| tracing::warn!(status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request failed"));
    } else {
        span.in_scope(|| tracing::debug!(status = status.as_u16(), elapsed_ms = elapsed.as_millis() as u64, "request answered"));
    }
    lms_bus::otel::export(lms_bus::otel::SpanRecord {
        name: format!("{method} {route}"),
        kind: opentelemetry::trace::SpanKind::Server,
        context: trace,
        parent: parent.map(|p| p.span_id),
        start,
        end: std::time::SystemTime::now(),
        attributes: vec![
            opentelemetry::KeyValue::new("http.request.method", method.to_string()),
            opentelemetry::KeyValue::new("http.route", route.clone()),
            opentelemetry::KeyValue::new("http.response.status_code", i64::from(status.as_u16())),
        ],
    });
    metrics.requests.with_label_values(&[route.as_str(), method.as_str(), status.as_str()]).inc();
    metrics.duration.with_label_values(&[route.as_str(), method.as_str()]).observe(elapsed.as_secs_f64());
    response
}
