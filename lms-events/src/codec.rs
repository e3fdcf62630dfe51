//! The Kafka record encoding of events.
//!
//! Records use the CloudEvents Kafka protocol binding in **structured content mode**: the
//! record value is the complete JSON envelope (as [`Event`] serialises it) and the
//! `content-type` header is [`CONTENT_TYPE`]. Headers carry transport concerns only, such as
//! the W3C trace context and, on dead letters, where the record came from and why it failed.
//!
//! Decoding is lenient on purpose: unknown attributes and data fields are ignored so that an
//! older processor can read events from a newer producer. Only a few cheap invariants of the
//! envelope are checked on top of what the types demand.

use thiserror::Error;

use crate::event::{Event, EventType, SPEC_VERSION};

/// The `content-type` header value of every event record (CloudEvents structured mode).
pub const CONTENT_TYPE: &str = "application/cloudevents+json; charset=utf-8";

/// The names of the record headers the pipeline uses.
pub mod headers {
    /// The content type of the record value; [`super::CONTENT_TYPE`] for events.
    pub const CONTENT_TYPE: &str = "content-type";
    /// The W3C `traceparent` of the trace the record belongs to.
    pub const TRACEPARENT: &str = "traceparent";
    /// The W3C `tracestate` accompanying [`TRACEPARENT`].
    pub const TRACESTATE: &str = "tracestate";
    /// The W3C `baggage` of the trace.
    pub const BAGGAGE: &str = "baggage";

    /// Dead letters: why the record could not be processed (set by the bus).
    pub const DLQ_REASON: &str = "lms_dlq_reason";
    /// Dead letters: the topic the record was read from.
    pub const DLQ_SOURCE_TOPIC: &str = "lms_dlq_source_topic";
    /// Dead letters: the partition the record was read from, in decimal.
    pub const DLQ_SOURCE_PARTITION: &str = "lms_dlq_source_partition";
    /// Dead letters: the offset of the record in its source partition, in decimal.
    pub const DLQ_SOURCE_OFFSET: &str = "lms_dlq_source_offset";
    /// Dead letters: the consumer group that gave up on the record.
    pub const DLQ_GROUP: &str = "lms_dlq_group";
    /// Dead letters: when the record was dead-lettered, RFC 3339.
    pub const DLQ_AT: &str = "lms_dlq_at";
}

/// Encodes an event as a record value: the complete JSON envelope, UTF-8.
pub fn encode(event: &Event) -> Vec<u8> {
    // Serialising these types cannot fail: every map key is a string and no Serialize
    // implementation reports errors. (A non-finite float, which only a processor bug can
    // produce, is written as `null` and then refused by `decode`.)
    serde_json::to_vec(event).expect("an Event always serialises to JSON")
}

/// Why a record value could not be decoded into an [`Event`].
#[derive(Debug, Error)]
pub enum DecodeError {
    /// The value is not valid UTF-8.
    #[error("the record value is not UTF-8: {0}")]
    NotUtf8(#[from] std::str::Utf8Error),
    /// The value is not well-formed JSON.
    #[error("the record value is not JSON: {0}")]
    NotJson(serde_json::Error),
    /// The `type` attribute names no event type this version knows; the record may come from
    /// a newer producer.
    #[error("unknown event type {0:?}")]
    UnknownType(String),
    /// The JSON does not fit the envelope or the data of its type (serde's message says which
    /// field and why).
    #[error("the event is malformed: {0}")]
    BadField(serde_json::Error),
    /// The `specversion` is not `"1.0"`.
    #[error("unsupported specversion {0:?}, expected \"1.0\"")]
    BadSpecVersion(String),
    /// The `id` attribute is empty.
    #[error("the event id is empty")]
    EmptyId,
    /// The `tenant` attribute is empty.
    #[error("the event tenant is empty")]
    EmptyTenant,
}

/// Decodes a record value into an event.
///
/// Unknown attributes and data fields are ignored; the envelope must have `specversion`
/// `"1.0"` and a non-empty `id` and `tenant`.
pub fn decode(payload: &[u8]) -> Result<Event, DecodeError> {
    let text = std::str::from_utf8(payload)?;
    let event: Event = serde_json::from_str(text).map_err(|error| classify(text, error))?;
    if event.specversion != SPEC_VERSION {
        return Err(DecodeError::BadSpecVersion(event.specversion));
    }
    if event.id.is_empty() {
        return Err(DecodeError::EmptyId);
    }
    if event.tenant.is_empty() {
        return Err(DecodeError::EmptyTenant);
    }
    Ok(event)
}

/// Tells a syntax error from a shape error, and an unknown type from other shape errors.
fn classify(text: &str, error: serde_json::Error) -> DecodeError {
    use serde_json::error::Category;

    /// Just the `type` attribute, to tell an unknown type from a bad field.
    #[derive(serde::Deserialize)]
    struct TypeOnly {
        #[serde(rename = "type")]
        event_type: Option<String>,
    }

    match error.classify() {
        Category::Syntax | Category::Eof | Category::Io => DecodeError::NotJson(error),
        Category::Data => match serde_json::from_str::<TypeOnly>(text) {
            Ok(TypeOnly { event_type: Some(name) }) if name.parse::<EventType>().is_err() => DecodeError::UnknownType(name),
            _ => DecodeError::BadField(error),
        },
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::examples;

    #[test]
    fn every_type_round_trips() {
        for t in EventType::ALL {
            let event = examples::event(t);
            let decoded = decode(&encode(&event)).unwrap();
            assert_eq!(decoded, event, "{t}");
        }
    }

    #[test]
    fn the_value_is_the_whole_envelope() {
        let event = examples::event(EventType::LessonCompleted);
        let value: serde_json::Value = serde_json::from_slice(&encode(&event)).unwrap();
        assert_eq!(
            value,
            json!({
                "specversion": "1.0",
                "id": "example-lesson.completed",
                "source": "web-app",
                "time": "2026-11-20T10:15:00Z",
                "subject": "learner-42",
                "tenant": "acme",
                "type": "lesson.completed",
                "data": {"learner_id": "learner-42", "course_id": "course-rust-101", "lesson_id": "lesson-1"}
            })
        );
    }

    #[test]
    fn decoding_ignores_what_it_does_not_know() {
        let mut value = serde_json::to_value(examples::event(EventType::VideoProgressed)).unwrap();
        value["newattribute"] = json!({"nested": true});
        value["data"]["new_field"] = json!([1, 2]);
        let decoded = decode(value.to_string().as_bytes()).unwrap();
        assert_eq!(decoded, examples::event(EventType::VideoProgressed));
    }

    #[test]
    fn decode_errors_say_what_is_wrong() {
        assert!(matches!(decode(b"\xff\xfe"), Err(DecodeError::NotUtf8(_))));
        assert!(matches!(decode(b"{\"specversion\":"), Err(DecodeError::NotJson(_))));

        let mut value = serde_json::to_value(examples::event(EventType::LessonStarted)).unwrap();
        value["type"] = json!("lesson.paused");
        let error = decode(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(&error, DecodeError::UnknownType(t) if t == "lesson.paused"));
        assert_eq!(error.to_string(), "unknown event type \"lesson.paused\"");

        let mut value = serde_json::to_value(examples::event(EventType::AssessmentGraded)).unwrap();
        value["data"]["attempt"] = json!("first");
        let error = decode(value.to_string().as_bytes()).unwrap_err();
        assert!(matches!(error, DecodeError::BadField(_)), "{error}");
        assert!(error.to_string().contains("invalid type: string \"first\""), "{error}");

        let mut value = serde_json::to_value(examples::event(EventType::LessonStarted)).unwrap();
        value.as_object_mut().unwrap().remove("tenant");
        let error = decode(value.to_string().as_bytes()).unwrap_err();
        assert!(error.to_string().contains("missing field `tenant`"), "{error}");

        assert!(matches!(decode(b"[1]"), Err(DecodeError::BadField(_))));
    }

    #[test]
    fn whole_numbers_decode_into_float_fields() {
        let mut value = serde_json::to_value(examples::event(EventType::VideoProgressed)).unwrap();
        value["data"]["duration_s"] = json!(600);
        let event = decode(value.to_string().as_bytes()).unwrap();
        assert_eq!(event, examples::event(EventType::VideoProgressed));
    }

    #[test]
    fn decode_checks_the_envelope_invariants() {
        let base = serde_json::to_value(examples::event(EventType::LessonStarted)).unwrap();
        let with = |key: &str, v: serde_json::Value| {
            let mut value = base.clone();
            value[key] = v;
            decode(value.to_string().as_bytes())
        };
        assert!(matches!(with("specversion", json!("0.3")), Err(DecodeError::BadSpecVersion(v)) if v == "0.3"));
        assert!(matches!(with("id", json!("")), Err(DecodeError::EmptyId)));
        assert!(matches!(with("tenant", json!("")), Err(DecodeError::EmptyTenant)));
    }

    #[test]
    fn times_in_other_offsets_are_normalised_to_utc() {
        let mut value = serde_json::to_value(examples::event(EventType::LessonStarted)).unwrap();
        value["time"] = json!("2026-11-20T11:15:00+01:00");
        let event = decode(value.to_string().as_bytes()).unwrap();
        assert_eq!(event.time, examples::time());
        let encoded: serde_json::Value = serde_json::from_slice(&encode(&event)).unwrap();
        assert_eq!(encoded["time"], "2026-11-20T10:15:00Z");
    }

    #[test]
    fn header_names_are_distinct() {
        let names = [
            headers::CONTENT_TYPE,
            headers::TRACEPARENT,
            headers::TRACESTATE,
            headers::DLQ_REASON,
            headers::DLQ_SOURCE_TOPIC,
            headers::DLQ_SOURCE_PARTITION,
            headers::DLQ_SOURCE_OFFSET,
            headers::DLQ_GROUP,
            headers::DLQ_AT,
        ];
        let distinct: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(distinct.len(), names.len());
    }
}
