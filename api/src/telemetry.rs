//! Request telemetry: one span per request carrying its W3C trace context, and the HTTP
//! metrics.
//!
//! - **The span** is tower-http's `TraceLayer` with [`RequestSpan`]: a `tracing` span named
//!   `http_request` with the OpenTelemetry fields (`otel.name`, `otel.kind`, the HTTP
//!   semantic-convention attributes). When the binary exports traces, tracing-opentelemetry
//!   turns it into the OTLP server span (lms/src/telemetry.rs), a child of the caller's
//!   `traceparent`; the span ids are then OpenTelemetry's.
//! - **The trace context** of the request ([`bind_trace`]) is that span's context, or, when
//!   no trace is exported, a child of the caller's `traceparent` (or a new trace) made here;
//!   with the caller's `tracestate` and `baggage` either way. Handlers read it with the
//!   [`RequestTrace`] extractor and put it into the Kafka record headers of what they
//!   produce, so the records' `traceparent` names the exported span.
//! - **The metrics** ([`count`]): requests and their duration by route template.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::{FromRequestParts, MatchedPath, Request, State};
use axum::http::HeaderMap;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
use lms_events::TraceContext;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt as _, TraceFlags, TraceId, TraceState};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};
use tower_http::trace::{MakeSpan, OnResponse};
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

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
        Ok(parts.extensions.get::<RequestTrace>().cloned().unwrap_or_else(|| RequestTrace(context_of(&Span::none(), &parts.headers))))
    }
}

/// The context of a request in `span`: the span's OpenTelemetry context when traces are
/// exported, else a child of a valid incoming `traceparent` or a sampled root; with the
/// caller's `tracestate` and `baggage`.
fn context_of(span: &Span, headers: &HeaderMap) -> TraceContext {
    let parent = incoming(headers);
    let otel = span.context();
    let otel_span = otel.span();
    let exported = otel_span.span_context();
    let own = if exported.is_valid() {
        TraceContext {
            trace_id: exported.trace_id().to_bytes(),
            span_id: exported.span_id().to_bytes(),
            sampled: exported.is_sampled(),
            state: None,
            baggage: None,
        }
    } else {
        parent.as_ref().map_or_else(|| TraceContext::new_root(true), TraceContext::child)
    };
    match parent {
        Some(p) => own.with_state(p.state.as_deref(), p.baggage.as_deref()),
        None => own,
    }
}

/// The caller's valid `traceparent`, if any, with its `tracestate` and `baggage` (W3C:
/// repeated headers are one comma-separated list).
fn incoming(headers: &HeaderMap) -> Option<TraceContext> {
    let joined = |name: &str| {
        let values: Vec<&str> = headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).collect();
        (!values.is_empty()).then(|| values.join(","))
    };
    let parent = headers.get("traceparent").and_then(|v| v.to_str().ok()).and_then(TraceContext::parse_traceparent)?;
    Some(parent.with_state(joined("tracestate").as_deref(), joined("baggage").as_deref()))
}

/// The route template of a request (`unmatched` when no route matched).
fn route_of<B>(request: &axum::http::Request<B>) -> &str {
    request.extensions().get::<MatchedPath>().map_or("unmatched", MatchedPath::as_str)
}

/// Makes the span of a request for tower-http's `TraceLayer`: `http_request`, named and
/// attributed for OpenTelemetry, a child of the caller's `traceparent` (when traces are
/// exported; otherwise `set_parent` has nothing to do).
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestSpan;

impl<B> MakeSpan<B> for RequestSpan {
    fn make_span(&mut self, request: &axum::http::Request<B>) -> Span {
        let (method, route) = (request.method(), route_of(request));
        let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
        let span = tracing::info_span!(
            "http_request",
            otel.name = %format_args!("{method} {route}"),
            otel.kind = "server",
            http.request.method = %method,
            http.route = %route,
            request_id = %request_id,
            trace_id = tracing::field::Empty,
            span_id = tracing::field::Empty,
            tenant = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
        );
        if let Some(parent) = incoming(request.headers()) {
            let remote = SpanContext::new(
                TraceId::from_bytes(parent.trace_id),
                SpanId::from_bytes(parent.span_id),
                if parent.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() },
                true,
                parent.state.as_deref().and_then(|s| s.parse::<TraceState>().ok()).unwrap_or_default(),
            );
            // Fails only when no layer exports traces, or the span is disabled.
            let _ = span.set_parent(opentelemetry::Context::new().with_remote_span_context(remote));
        }
        span
    }
}

/// Records the status on the request span and logs the answer: a warning for a 5xx, a
/// debug line otherwise (tower-http calls it inside the span).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Answered;

impl<B> OnResponse<B> for Answered {
    fn on_response(self, response: &axum::http::Response<B>, latency: Duration, span: &Span) {
        let status = response.status();
        span.record("http.response.status_code", status.as_u16());
        let elapsed_ms = latency.as_millis() as u64;
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), elapsed_ms, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), elapsed_ms, "request answered");
        }
    }
}

/// Inside the request span: fixes the request's trace context (see [`context_of`]),
/// records its ids on the span (so log lines carry them) and hands it to the handlers.
pub(crate) async fn bind_trace(mut request: Request, next: Next) -> Response {
    let span = Span::current();
    let trace = context_of(&span, request.headers());
    span.record("trace_id", tracing::field::display(trace.trace_id_hex()));
    span.record("span_id", tracing::field::display(trace.span_id_hex()));
    request.extensions_mut().insert(RequestTrace(trace));
    next.run(request).await
}

/// The HTTP metrics of every answer, by route template, method and status.
pub(crate) async fn count(State(metrics): State<Arc<ApiMetrics>>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = route_of(&request).to_owned();
    let method = request.method().clone();
    let response = next.run(request).await;
    metrics.requests.with_label_values(&[route.as_str(), method.as_str(), response.status().as_str()]).inc();
    metrics.duration.with_label_values(&[route.as_str(), method.as_str()]).observe(started.elapsed().as_secs_f64());
    response
}
