//! The event contract of lms-pipeline.
//!
//! This crate defines what an event is — the CloudEvents 1.0 envelope, the typed data of each
//! event type, the JSON Schemas — and how it travels: the validation of client input and the
//! Kafka record encoding. Every other component (the API, the bus, the processors, the sinks)
//! codes against these types; `docs/CONTRACT.md` is the binding description they implement.
//!
//! # Two views of an event
//!
//! - **Input**: what a client sends. `id` (the idempotency key) and `tenant` are optional, only
//!   the eleven client-writable types are allowed and the JSON is checked strictly (unknown
//!   attributes and data fields are errors), with every problem reported at its JSON pointer.
//!   [`parse_client_event`] validates the input against [`input_event_schema`], applies the
//!   rules a schema cannot express, and completes it into an [`Event`].
//! - **Topic**: the [`Event`] as it travels on the topics, always complete (`id` and `tenant`
//!   set), including the five derived types the processors write. [`event_schema`] describes
//!   it. Reading it is lenient: unknown attributes and fields are ignored so that older
//!   processors can read events from newer producers.
//!
//! # Record encoding
//!
//! Records use the CloudEvents Kafka binding in *structured content mode*: the record value is
//! the complete JSON envelope ([`encode`], [`decode`]) with the `content-type` header
//! [`CONTENT_TYPE`]. Keeping the whole event in the value means replays, dead-letter re-drives
//! and tools that drop or rewrite headers keep the event intact. Headers ([`headers`]) carry
//! transport concerns only: the W3C trace context ([`TraceContext`]) and, on dead letters, where
//! a record came from and why it failed. The record key is [`Event::partition_key`].
//!
//! # Example
//!
//! ```
//! use lms_events::{EventType, Rejection, decode, encode, parse_client_event};
//! use serde_json::json;
//!
//! let input = json!({
//!     "specversion": "1.0",
//!     "type": "lesson.completed",
//!     "source": "web-app",
//!     "time": "2026-11-20T11:15:00+01:00",
//!     "data": {"learner_id": "learner-42", "course_id": "rust-101", "lesson_id": "lesson-1"}
//! });
//! let event = parse_client_event(&input, "acme").expect("a valid event");
//! assert_eq!(event.event_type(), EventType::LessonCompleted);
//! assert_eq!(event.tenant, "acme");
//! assert_eq!(event.subject.as_deref(), Some("learner-42"));
//! assert_eq!(event.partition_key(), "learner-42");
//! assert_eq!(decode(&encode(&event)).expect("decodes"), event);
//!
//! let Err(Rejection::Invalid(errors)) = parse_client_event(&json!({"type": "course.completed"}), "acme") else {
//!     panic!("derived types are refused");
//! };
//! assert!(errors.iter().any(|e| e.path == "/type"));
//! assert!(errors.iter().any(|e| e.path == "/time"));
//! ```
//!
//! # Modules
//!
//! - [`event`]: [`Event`], [`EventData`], [`EventType`], [`Domain`].
//! - [`data`]: the data structure of every type.
//! - [`input`]: client input validation ([`parse_client_event`], [`FieldError`], [`Rejection`]).
//! - [`schema`]: the generated JSON Schemas, checked into `schemas/` at the workspace root.
//! - [`codec`]: the Kafka record value and header names.
//! - [`trace`]: W3C `traceparent` parsing and generation.
//! - [`examples`]: one example event of every type, for tests and documentation.

pub mod codec;
pub mod data;
pub mod event;
pub mod examples;
pub mod input;
pub mod invariants;
pub mod schema;
pub mod signature;
pub mod trace;

pub use codec::{CONTENT_TYPE, DecodeError, decode, encode, headers};
pub use data::{
    AchievementUnlocked, AssessmentGraded, Channel, CourseCompleted, CoursePublished, CourseRetired, EnrollmentCreated, EnrollmentDropped,
    EnrollmentSource, LearnerErased, LessonRef, MAX_AMOUNT_MINOR, Module, NotificationOutcome, PaymentFailed, PaymentRefunded,
    PaymentSucceeded, ProgressStatus, ProgressUpdated, VideoProgressed,
};
pub use event::{Domain, Event, EventData, EventType, SPEC_VERSION, UnknownEventType, erasure_key};
pub use input::{FieldError, Rejection, parse_client_event, parse_client_event_owned};
pub use schema::{event_schema, input_event_schema};
pub use trace::TraceContext;
