//! W3C Trace Context (`traceparent`, `tracestate`) and W3C Baggage for following an event
//! through the pipeline.
//!
//! The context travels in the `traceparent`, `tracestate` and `baggage` record headers (see
//! [`crate::codec::headers`]; `lms-bus` reads and writes them with OpenTelemetry's
//! propagators); clients send it as HTTP headers. `tracestate` and `baggage` are carried
//! as received, so a vendor's entries and the caller's baggage reach every record the
//! request leads to, derived events included.

use std::fmt;
use std::sync::Arc;

use uuid::Uuid;

/// A W3C trace context: the trace, the current span and whether the trace is sampled, with
/// the trace's `tracestate` and `baggage` as received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace id, never all zeros.
    pub trace_id: [u8; 16],
    /// The span (parent) id, never all zeros.
    pub span_id: [u8; 8],
    /// Whether the caller records the trace (the `sampled` flag).
    pub sampled: bool,
    /// The `tracestate` header value (vendors' entries), passed on unchanged.
    pub state: Option<Arc<str>>,
    /// The `baggage` header value, passed on unchanged.
    pub baggage: Option<Arc<str>>,
}

/// The longest `tracestate` kept (W3C: 512 characters may be dropped beyond).
const MAX_TRACESTATE: usize = 512;
/// The longest `baggage` kept (W3C Baggage: at least 8192 bytes must be propagated).
const MAX_BAGGAGE: usize = 8192;

/// A header value kept as is when it is printable ASCII within `max` bytes, else dropped.
fn carried(value: Option<&str>, max: usize) -> Option<Arc<str>> {
    let value = value?.trim_matches([' ', '\t']);
    (!value.is_empty() && value.len() <= max && value.bytes().all(|b| (0x20..0x7f).contains(&b))).then(|| Arc::from(value))
}

impl TraceContext {
    /// Parses a `traceparent` header value: `00-<32 hex>-<16 hex>-<2 hex flags>`.
    ///
    /// Returns `None` for anything invalid, as the W3C recommendation asks (the receiver then
    /// starts a new trace): uppercase or non-hex digits, wrong lengths, all-zero ids and
    /// version `ff`. A value of a later version is read by its first four fields, as long as
    /// anything after them is separated by a dash.
    pub fn parse_traceparent(s: &str) -> Option<TraceContext> {
        let s = s.trim_matches([' ', '\t']);
        let bytes = s.as_bytes();
        if bytes.len() < 55 {
            return None;
        }
        let version = hex_byte(&bytes[0..2])?;
        if version == 0xff {
            return None;
        }
        // Version 00 has exactly four fields; later versions may append fields after a dash.
        if (version == 0 && bytes.len() != 55) || (bytes.len() > 55 && bytes[55] != b'-') {
            return None;
        }
        if bytes[2] != b'-' || bytes[35] != b'-' || bytes[52] != b'-' {
            return None;
        }
        let mut trace_id = [0; 16];
        for (i, byte) in trace_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[3 + 2 * i..5 + 2 * i])?;
        }
        let mut span_id = [0; 8];
        for (i, byte) in span_id.iter_mut().enumerate() {
            *byte = hex_byte(&bytes[36 + 2 * i..38 + 2 * i])?;
        }
        let flags = hex_byte(&bytes[53..55])?;
        if trace_id == [0; 16] || span_id == [0; 8] {
            return None;
        }
        Some(TraceContext { trace_id, span_id, sampled: flags & 0x01 == 0x01, state: None, baggage: None })
    }

    /// The same context with the `tracestate` and `baggage` header values of its trace; a
    /// value that is not printable ASCII within the W3C sizes is dropped.
    #[must_use]
    pub fn with_state(mut self, tracestate: Option<&str>, baggage: Option<&str>) -> TraceContext {
        self.state = carried(tracestate, MAX_TRACESTATE);
        self.baggage = carried(baggage, MAX_BAGGAGE);
        self
    }

    /// Formats the context as a version-00 `traceparent` header value.
    pub fn to_traceparent(&self) -> String {
        format!("00-{}-{}-{:02x}", hex(&self.trace_id), hex(&self.span_id), u8::from(self.sampled))
    }

    /// Starts a new trace with random trace and span ids.
    pub fn new_root(sampled: bool) -> TraceContext {
        // A UUIDv4 has 122 random bits; bytes 6 and 8 carry the version and variant, so they
        // are replaced by random bytes of a second UUID, whose other bytes give the span id.
        let mut trace_id = Uuid::new_v4().into_bytes();
        let extra = Uuid::new_v4().into_bytes();
        trace_id[6] = extra[0];
        trace_id[8] = extra[1];
        let span_id = [extra[2], extra[3], extra[4], extra[5], extra[7], extra[9], extra[10], extra[11]];
        TraceContext { trace_id: non_zero(trace_id), span_id: non_zero(span_id), sampled, state: None, baggage: None }
    }

    /// Returns the context of a child span: the same trace, flags, state and baggage, a new
    /// random span id.
    pub fn child(&self) -> TraceContext {
        TraceContext { span_id: random_span_id(), ..self.clone() }
    }

    /// Returns the trace id as 32 lowercase hex digits.
    pub fn trace_id_hex(&self) -> String {
        hex(&self.trace_id)
    }

    /// Returns the span id as 16 lowercase hex digits.
    pub fn span_id_hex(&self) -> String {
        hex(&self.span_id)
    }
}

impl fmt::Display for TraceContext {
    /// Formats the context as its `traceparent` header value.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_traceparent())
    }
}

/// Returns a random span id from the fully random bytes of a UUIDv4.
fn random_span_id() -> [u8; 8] {
    let b = Uuid::new_v4().into_bytes();
    non_zero([b[0], b[1], b[2], b[3], b[4], b[5], b[7], b[9]])
}

/// Replaces an all-zero id (probability 2^-64 or less) by one with its last bit set.
fn non_zero<const N: usize>(mut id: [u8; N]) -> [u8; N] {
    if id.iter().all(|&b| b == 0) {
        id[N - 1] = 1;
    }
    id
}

/// Parses two lowercase hex digits.
fn hex_byte(pair: &[u8]) -> Option<u8> {
    let digit = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    };
    match pair {
        [high, low] => Some(digit(*high)? << 4 | digit(*low)?),
        _ => None,
    }
}

/// Formats bytes as lowercase hex.
fn hex(bytes: &[u8]) -> String {
    use fmt::Write;
    bytes.iter().fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example of the W3C Trace Context recommendation.
    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_w3c_example() {
        let context = TraceContext::parse_traceparent(EXAMPLE).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(context.span_id_hex(), "00f067aa0ba902b7");
        assert!(context.sampled);
        assert_eq!(context.to_traceparent(), EXAMPLE);
        assert_eq!(context.to_string(), EXAMPLE);
    }

    #[test]
    fn parses_the_unsampled_w3c_example() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let context = TraceContext::parse_traceparent(value).unwrap();
        assert!(!context.sampled);
        assert_eq!(context.to_traceparent(), value);
    }

    #[test]
    fn reads_only_the_sampled_flag() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03";
        let context = TraceContext::parse_traceparent(value).unwrap();
        assert!(context.sampled);
        assert!(context.to_traceparent().ends_with("-01"));
    }

    #[test]
    fn accepts_later_versions_with_extra_fields() {
        let value = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        let context = TraceContext::parse_traceparent(value).unwrap();
        assert_eq!(context.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert!(TraceContext::parse_traceparent(&value[..55]).is_some());
        assert!(TraceContext::parse_traceparent("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x").is_none());
    }

    #[test]
    fn rejects_invalid_values() {
        let invalid = [
            "",
            "00",
            // All-zero trace id and span id.
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // Version ff.
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Version 00 with extra fields.
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            // Wrong lengths.
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            // Uppercase and non-hex digits.
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00F067AA0BA902B7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "0x-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            // Wrong separators.
            "00_4bf92f3577b34da6a3ce929d0e0e4736_00f067aa0ba902b7_01",
            // Multi-byte characters where digits belong.
            "00-4bf92f3577b34da6a3ce929d0e0e47é-00f067aa0ba902b7-01",
        ];
        for value in invalid {
            assert_eq!(TraceContext::parse_traceparent(value), None, "{value:?}");
        }
    }

    #[test]
    fn new_roots_and_children() {
        let root = TraceContext::new_root(true);
        let other = TraceContext::new_root(false);
        assert_ne!(root.trace_id, other.trace_id);
        assert!(root.sampled && !other.sampled);
        let child = root.child();
        assert_eq!(child.trace_id, root.trace_id);
        assert_eq!(child.sampled, root.sampled);
        assert_ne!(child.span_id, root.span_id);
        let parsed = TraceContext::parse_traceparent(&child.to_traceparent()).unwrap();
        assert_eq!(parsed, child);
        assert_eq!(root.trace_id_hex().len(), 32);
    }
}
