//! The W3C trace context (`traceparent`, `tracestate`) and W3C baggage of a record, read
//! from and written to its Kafka headers with OpenTelemetry's propagators
//! (`TraceContextPropagator` and `BaggagePropagator` behind one composite), through a header
//! extractor and injector.
//!
//! A record whose trace has neither `tracestate` nor `baggage` (the common case) takes a
//! fast path with the same result: its `traceparent` alone, parsed and written by
//! [`TraceContext`] without building an OpenTelemetry context per record.

use std::collections::HashMap;
use std::sync::LazyLock;

use lms_events::TraceContext;
use lms_events::codec::headers;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};

/// Record headers as an OpenTelemetry extractor.
struct Headers<'a>(&'a [(String, Vec<u8>)]);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Record headers as an OpenTelemetry injector.
struct HeadersMut<'a>(&'a mut Vec<(String, Vec<u8>)>);

impl Injector for HeadersMut<'_> {
    /// Skips empty values: the trace-context propagator writes an empty `tracestate` for a
    /// trace without state, which means the same as none.
    fn set(&mut self, key: &str, value: String) {
        if !value.is_empty() {
            self.0.push((key.to_owned(), value.into_bytes()));
        }
    }
}

/// Built once: records carrying state or baggage go through it one by one.
static PROPAGATOR: LazyLock<TextMapCompositePropagator> =
    LazyLock::new(|| TextMapCompositePropagator::new(vec![Box::new(TraceContextPropagator::new()), Box::new(BaggagePropagator::new())]));

fn propagator() -> &'static TextMapCompositePropagator {
    &PROPAGATOR
}

/// The trace context of `record_headers`: `None` without a valid `traceparent`.
pub fn extract(record_headers: &[(String, Vec<u8>)]) -> Option<TraceContext> {
    let found = Headers(record_headers);
    if found.get(headers::TRACESTATE).is_none() && found.get(headers::BAGGAGE).is_none() {
        return found.get(headers::TRACEPARENT).and_then(TraceContext::parse_traceparent);
    }
    // The propagators parse (and drop what the W3C specifications reject); writing the
    // context back gives the header values to carry.
    let context = propagator().extract(&found);
    let mut normalized = HashMap::new();
    propagator().inject_context(&context, &mut normalized);
    let parent = normalized.get(headers::TRACEPARENT).and_then(|v| TraceContext::parse_traceparent(v))?;
    Some(parent.with_state(normalized.get(headers::TRACESTATE).map(String::as_str), normalized.get(headers::BAGGAGE).map(String::as_str)))
}

/// Adds the headers of `trace` to `record_headers`.
pub fn inject(trace: &TraceContext, record_headers: &mut Vec<(String, Vec<u8>)>) {
    if trace.state.is_none() && trace.baggage.is_none() {
        record_headers.push((headers::TRACEPARENT.to_owned(), trace.to_traceparent().into_bytes()));
        return;
    }
    let mut given = HashMap::from([(headers::TRACEPARENT.to_owned(), trace.to_traceparent())]);
    for (name, value) in [(headers::TRACESTATE, &trace.state), (headers::BAGGAGE, &trace.baggage)] {
        if let Some(value) = value {
            given.insert(name.to_owned(), value.to_string());
        }
    }
    let context = propagator().extract(&given);
    propagator().inject_context(&context, &mut HeadersMut(record_headers));
}

#[cfg(test)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn header<'a>(h: &'a [(String, Vec<u8>)], name: &str) -> Option<&'a str> {
        h.iter().find(|(k, _)| k == name).and_then(|(_, v)| std::str::from_utf8(v).ok())
    }

    #[test]
    fn state_and_baggage_survive_a_round_trip_through_record_headers() {
        let trace = TraceContext::parse_traceparent(PARENT).unwrap().with_state(Some("vendor=abc,other=x:1"), Some("user=ada,plan=pro"));
        let mut h = Vec::new();
        inject(&trace, &mut h);
        assert_eq!(header(&h, "traceparent"), Some(PARENT));
        assert_eq!(header(&h, "tracestate"), Some("vendor=abc,other=x:1"));
        let baggage = header(&h, "baggage").unwrap_or_default();
        assert!(baggage.contains("user=ada") && baggage.contains("plan=pro"), "{baggage}");
        let back = extract(&h).expect("a context");
        assert_eq!((back.trace_id, back.span_id, back.sampled), (trace.trace_id, trace.span_id, true));
        assert_eq!(back.state.as_deref(), Some("vendor=abc,other=x:1"));
        let child = back.child();
        assert_eq!(child.state, back.state, "a child span keeps the trace's state");
        assert_eq!(child.baggage, back.baggage);
    }

    #[test]
    fn without_state_the_fast_path_gives_what_the_propagators_give() {
        let trace = TraceContext::parse_traceparent(PARENT).unwrap();
        let mut fast = Vec::new();
        inject(&trace, &mut fast);
        let mut standard = Vec::new();
        propagator().inject_context(&propagator().extract(&Headers(&fast)), &mut HeadersMut(&mut standard));
        assert_eq!(fast, standard);
        assert_eq!(extract(&fast), Some(trace));
        // An invalid traceparent is no context, whatever comes with it.
        let bad = vec![
            ("traceparent".to_owned(), b"00-00000000000000000000000000000000-00f067aa0ba902b7-01".to_vec()),
            ("tracestate".to_owned(), b"a=b".to_vec()),
        ];
        assert_eq!(extract(&bad), None);
    }
}
