//! Validation and completion of events sent by clients.
//!
//! [`parse_client_event`] takes one event as parsed JSON and either returns a complete
//! [`Event`] or a [`Rejection`]. The checks run in this order:
//!
//! 1. **Tenant.** When the event names a `tenant` (a string) other than the caller's, it is
//!    rejected with [`Rejection::ForeignTenant`] (HTTP 403) before anything else is reported,
//!    so that a caller learns nothing about another tenant's events beyond the refusal.
//! 2. **Schema.** The raw JSON is validated against [`crate::input_event_schema`] (strict:
//!    unknown attributes and data fields are errors; `format` is enforced). Every error is
//!    reported, each with the JSON pointer (RFC 6901) of the value at fault, relative to the
//!    event. A missing attribute or field, and an unknown one, is reported at the pointer it
//!    would have, such as `/time` or `/data/extra`.
//! 3. **Semantics.** Rules a schema cannot express are checked on the same raw JSON, so that
//!    they are reported together with the schema errors: `score` at most `max_score`, lesson
//!    ids unique across a course (reported at the repeated id), `subject` equal to
//!    `data.learner_id` when both are present.
//! 4. **Completion.** A valid event gets a UUIDv7 `id` when it has none, the caller's `tenant`
//!    and `data.learner_id` as `subject` when it has none; `traceparent` and `tracestate` are
//!    dropped (trace context travels in record headers). Only then is it decoded into an
//!    [`Event`]; times are normalised to UTC.

use std::fmt;
use std::sync::LazyLock;

use chrono::DateTime;
use jsonschema::error::{TypeKind, ValidationErrorKind};
use jsonschema::{ValidationError, Validator};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::event::{Event, EventType};
use crate::schema::input_event_schema;

/// One problem with a client-sent event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct FieldError {
    /// The JSON pointer (RFC 6901) of the value at fault, relative to the event, such as
    /// `/data/score`; `""` for the whole document.
    pub path: String,
    /// What is wrong, in words meant for the client's developer.
    pub message: String,
}

impl FieldError {
    /// Creates a field error.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> FieldError {
        FieldError { path: path.into(), message: message.into() }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Why a client-sent event was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum Rejection {
    /// The event breaks the schema: every problem found, not just the first (HTTP 422).
    #[error("the event is invalid")]
    Invalid(Vec<FieldError>),
    /// The event names a tenant other than the caller's (HTTP 403).
    #[error("the event names tenant {named:?}, the credentials are for {caller:?}")]
    ForeignTenant {
        /// The tenant the event names.
        named: String,
        /// The tenant of the caller's credentials.
        caller: String,
    },
}

/// The input schema, generated once.
static INPUT_SCHEMA: LazyLock<Value> = LazyLock::new(input_event_schema);

/// The compiled validator of the input schema, built once.
static VALIDATOR: LazyLock<Validator> = LazyLock::new(|| {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&INPUT_SCHEMA)
        // The schema is generated from this crate's own types, not from outside input; a
        // failure here is a bug caught by this module's tests.
        .expect("the generated input schema is a valid JSON Schema")
});

/// The message for a `time` that is not an RFC 3339 date-time.
const TIME_MESSAGE: &str = "must be an RFC 3339 date-time with offset, such as \"2026-11-20T10:15:00Z\"";

/// Validates one client-sent event (already parsed as JSON) and completes it: assigns a UUIDv7
/// `id` when absent, sets `tenant` to the caller's tenant, sets `subject` to `data.learner_id`
/// when absent.
///
/// The module documentation describes the order of the checks. Any JSON this function accepts
/// becomes an [`Event`] that encodes and decodes unchanged.
pub fn parse_client_event(value: &Value, caller_tenant: &str) -> Result<Event, Rejection> {
    check(value, caller_tenant)?;
    finish(value.clone(), caller_tenant)
}

/// [`parse_client_event`] for a value the caller gives up: the same checks, without copying
/// the event to complete it (the write API's hot path).
pub fn parse_client_event_owned(value: Value, caller_tenant: &str) -> Result<Event, Rejection> {
    check(&value, caller_tenant)?;
    finish(value, caller_tenant)
}

/// Steps 1 to 3 of the module documentation: tenant, schema, semantics.
fn check(value: &Value, caller_tenant: &str) -> Result<(), Rejection> {
    if let Some(named) = value.get("tenant").and_then(Value::as_str)
        && named != caller_tenant
    {
        return Err(Rejection::ForeignTenant { named: named.to_owned(), caller: caller_tenant.to_owned() });
    }

    let mut errors = Vec::new();
    // Most events are valid: the short-circuiting check is much cheaper than collecting
    // every error, which only the invalid ones need.
    if !VALIDATOR.is_valid(value) {
        for error in VALIDATOR.iter_errors(value) {
            for field_error in describe(&error) {
                push_unique(&mut errors, field_error);
            }
        }
    }
    for field_error in semantic_errors(value) {
        push_unique(&mut errors, field_error);
    }
    if errors.is_empty() { Ok(()) } else { Err(Rejection::Invalid(errors)) }
}

/// Step 4: completes a checked event and decodes it.
fn finish(value: Value, caller_tenant: &str) -> Result<Event, Rejection> {
    let Value::Object(object) = value else {
        // Not reached: the schema requires an object.
        return Err(Rejection::Invalid(vec![FieldError::new("", "the event must be an object")]));
    };
    let mut event = complete(object, caller_tenant);
    integral_floats_to_integers(&mut event);
    serde_json::from_value(event)
        .map_err(|error| Rejection::Invalid(vec![FieldError::new("", format!("the event could not be read: {error}"))]))
}

/// Adds the attributes the pipeline fills in and drops the ignored extension attributes.
fn complete(mut event: Map<String, Value>, caller_tenant: &str) -> Value {
    event.remove("traceparent");
    event.remove("tracestate");
    event.insert("tenant".to_owned(), Value::from(caller_tenant));
    if !event.contains_key("id") {
        event.insert("id".to_owned(), Value::from(Uuid::now_v7().to_string()));
    }
    if event.get("subject").is_none_or(Value::is_null) {
        match event.get("data").and_then(|d| d.get("learner_id")) {
            Some(learner) if learner.is_string() => {
                let learner = learner.clone();
                event.insert("subject".to_owned(), learner);
            }
            _ => {
                event.remove("subject");
            }
        }
    }
    Value::Object(event)
}

/// Rewrites numbers such as `1.0` as integers, so that fields the schema accepts as integers
/// (JSON Schema counts `1.0` as one) also decode into Rust integers.
fn integral_floats_to_integers(value: &mut Value) {
    /// 2^53: the integers up to here are exact in a float.
    const EXACT: f64 = 9_007_199_254_740_992.0;
    match value {
        Value::Number(number) => {
            if let Some(float) = number.as_f64().filter(|_| number.is_f64())
                && float.fract() == 0.0
                && float.abs() <= EXACT
            {
                // Exact: the value is an integer within ±2^53.
                *value = Value::from(float as i64);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(integral_floats_to_integers),
        Value::Object(object) => object.values_mut().for_each(integral_floats_to_integers),
        _ => {}
    }
}

/// Appends an error unless the same path already has the same message.
fn push_unique(errors: &mut Vec<FieldError>, error: FieldError) {
    if !errors.contains(&error) {
        errors.push(error);
    }
}

/// Returns a JSON pointer extended by one property name, escaped per RFC 6901.
fn child_path(parent: &str, name: &str) -> String {
    format!("{parent}/{}", name.replace('~', "~0").replace('/', "~1"))
}

/// Turns one schema validation error into field errors with human-readable messages.
fn describe(error: &ValidationError<'_>) -> Vec<FieldError> {
    let path = error.instance_path().as_str();
    let instance: &Value = error.instance();
    let one = |message: String| vec![FieldError::new(path, message)];
    match error.kind() {
        ValidationErrorKind::Required { property } => {
            let name = property.as_str().unwrap_or_default();
            let what = if path.is_empty() { "attribute" } else { "field" };
            vec![FieldError::new(child_path(path, name), format!("the required {what} `{name}` is missing"))]
        }
        ValidationErrorKind::AdditionalProperties { unexpected } => {
            let allowed = allowed_properties(error);
            unexpected
                .iter()
                .map(|name| {
                    let what = if path.is_empty() { "attribute" } else { "field" };
                    let mut message = format!("unknown {what} `{name}`");
                    if let Some(allowed) = &allowed {
                        message.push_str(&format!("; the allowed {what}s are {allowed}"));
                    }
                    FieldError::new(child_path(path, name), message)
                })
                .collect()
        }
        ValidationErrorKind::Type { kind } => {
            let expected = match kind {
                TypeKind::Single(kind) => article(&kind.to_string()),
                TypeKind::Multiple(kinds) => kinds.iter().map(|kind| article(&kind.to_string())).collect::<Vec<_>>().join(" or "),
            };
            if path.is_empty() {
                one(format!("the event must be {expected}, not {}", show(instance)))
            } else {
                one(format!("must be {expected}, not {}", show(instance)))
            }
        }
        ValidationErrorKind::Minimum { limit } => one(format!("must be at least {limit}, not {}", show(instance))),
        ValidationErrorKind::ExclusiveMinimum { limit } => one(format!("must be greater than {limit}, not {}", show(instance))),
        ValidationErrorKind::Maximum { limit } => one(format!("must be at most {limit}, not {}", show(instance))),
        ValidationErrorKind::ExclusiveMaximum { limit } => one(format!("must be less than {limit}, not {}", show(instance))),
        ValidationErrorKind::MinLength { limit: 1 } => one("must not be empty".to_owned()),
        ValidationErrorKind::MinLength { limit } => one(format!("must be at least {limit} characters long")),
        ValidationErrorKind::MaxLength { limit } => {
            let length = instance.as_str().map_or(0, |s| s.chars().count());
            one(format!("must be at most {limit} characters long (it has {length})"))
        }
        ValidationErrorKind::MinItems { limit: 1 } => one("must contain at least one item".to_owned()),
        ValidationErrorKind::MinItems { limit } => one(format!("must contain at least {limit} items")),
        ValidationErrorKind::MaxItems { limit } => one(format!("must contain at most {limit} items")),
        ValidationErrorKind::Pattern { pattern } => {
            if path.ends_with("/currency") {
                one(format!("must be an ISO 4217 currency code of three uppercase letters, such as \"EUR\", not {}", show(instance)))
            } else {
                one(format!("must match the pattern {pattern}"))
            }
        }
        ValidationErrorKind::Format { format } if format == "date-time" => one(TIME_MESSAGE.to_owned()),
        ValidationErrorKind::Format { format } => one(format!("must be a valid {format}")),
        ValidationErrorKind::Enum { .. } if path == "/type" => one(type_message(instance)),
        ValidationErrorKind::Enum { options } => {
            let options =
                options.as_array().map(|options| options.iter().map(Value::to_string).collect::<Vec<_>>().join(", ")).unwrap_or_default();
            one(format!("must be one of {options}, not {}", show(instance)))
        }
        ValidationErrorKind::Constant { expected_value } if path == "/specversion" => {
            one(format!("must be {expected_value} (CloudEvents 1.0), not {}", show(instance)))
        }
        ValidationErrorKind::Constant { expected_value } => one(format!("must be {expected_value}, not {}", show(instance))),
        _ => one(error.masked().to_string()),
    }
}

/// Returns the message for a `type` that is not a client-writable event type.
fn type_message(instance: &Value) -> String {
    let accepted = EventType::client_writable().map(EventType::as_str).collect::<Vec<_>>().join(", ");
    match instance.as_str().map(str::parse::<EventType>) {
        Some(Ok(derived)) => format!(
            "`{derived}` is written by the pipeline and cannot be sent by clients; the accepted \
             types are {accepted}"
        ),
        Some(Err(_)) => format!("unknown event type {}; the accepted types are {accepted}", show(instance)),
        None => format!("must be a string naming the event type, not {}; the accepted types are {accepted}", show(instance)),
    }
}

/// Returns a JSON type name with its indefinite article: "an integer", "a string", "null".
fn article(kind: &str) -> String {
    match kind {
        "null" => "null".to_owned(),
        "integer" | "object" | "array" => format!("an {kind}"),
        _ => format!("a {kind}"),
    }
}

/// Renders a value for a message: scalars as JSON (strings shortened), containers by kind.
fn show(value: &Value) -> String {
    match value {
        Value::Object(_) => "an object".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::String(s) if s.chars().count() > 40 => {
            let head: String = s.chars().take(40).collect();
            format!("\"{}…\"", head.escape_debug())
        }
        other => other.to_string(),
    }
}

/// Lists the properties the failing object may have, found by following the error's schema
/// path (through `$ref`s) to the object schema.
fn allowed_properties(error: &ValidationError<'_>) -> Option<String> {
    let schema_path = error.schema_path().as_str();
    // The last segment is the failing keyword, `additionalProperties`.
    let parent = schema_path.rsplit_once('/').map(|(parent, _)| parent)?;
    let root: &Value = &INPUT_SCHEMA;
    let mut current = root;
    for segment in parent.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        current = if segment == "$ref" {
            let target = current.get("$ref")?.as_str()?.strip_prefix('#')?;
            root.pointer(target)?
        } else {
            match current {
                Value::Array(items) => items.get(segment.parse::<usize>().ok()?)?,
                other => other.get(&segment)?,
            }
        };
    }
    if let Some(target) = current.get("$ref").and_then(Value::as_str) {
        current = root.pointer(target.strip_prefix('#')?)?;
    }
    let names: Vec<&str> = current.get("properties")?.as_object()?.keys().map(String::as_str).collect();
    Some(names.join(", "))
}

/// Checks the rules a JSON Schema cannot express, on the raw JSON.
fn semantic_errors(value: &Value) -> Vec<FieldError> {
    let mut errors = Vec::new();
    let data = value.get("data");

    if let Some(time) = value.get("time").and_then(Value::as_str)
        && DateTime::parse_from_rfc3339(time).is_err()
    {
        errors.push(FieldError::new("/time", TIME_MESSAGE));
    }

    if let (Some(subject), Some(learner)) =
        (value.get("subject").and_then(Value::as_str), data.and_then(|d| d.get("learner_id")).and_then(Value::as_str))
        && subject != learner
    {
        errors.push(FieldError::new(
            "/subject",
            format!(
                "must equal data.learner_id ({}) when both are given, not {}",
                show(&Value::from(learner)),
                show(&Value::from(subject))
            ),
        ));
    }

    let event_type = value.get("type").and_then(Value::as_str).and_then(|t| t.parse::<EventType>().ok());
    match (event_type, data) {
        (Some(EventType::AssessmentGraded), Some(data)) => {
            let score = data.get("score").and_then(Value::as_f64);
            let max_score = data.get("max_score").and_then(Value::as_f64);
            if let (Some(score), Some(max_score)) = (score, max_score)
                && score > max_score
            {
                errors.push(FieldError::new("/data/score", format!("must not be greater than max_score ({max_score}), not {score}")));
            }
        }
        (Some(EventType::CoursePublished), Some(data)) => {
            duplicate_lessons(data, &mut errors);
        }
        _ => {}
    }

    errors
}

/// Reports every lesson id that appears a second time in a course, at the repeated id.
fn duplicate_lessons(data: &Value, errors: &mut Vec<FieldError>) {
    let Some(modules) = data.get("modules").and_then(Value::as_array) else {
        return;
    };
    let mut seen: std::collections::HashMap<&str, String> = std::collections::HashMap::new();
    for (m, module) in modules.iter().enumerate() {
        let Some(lessons) = module.get("lessons").and_then(Value::as_array) else {
            continue;
        };
        for (l, lesson) in lessons.iter().enumerate() {
            let Some(id) = lesson.as_str() else {
                continue;
            };
            let path = format!("/data/modules/{m}/lessons/{l}");
            match seen.get(id) {
                Some(first) => errors.push(FieldError::new(
                    path,
                    format!("lesson ids must be unique across the course; {} is already at {first}", show(lesson)),
                )),
                None => {
                    seen.insert(id, path);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::codec::{decode, encode};
    use crate::examples;

    fn invalid(value: &Value) -> Vec<FieldError> {
        match parse_client_event(value, examples::TENANT) {
            Err(Rejection::Invalid(errors)) => errors,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    fn paths(errors: &[FieldError]) -> Vec<&str> {
        errors.iter().map(|e| e.path.as_str()).collect()
    }

    fn graded() -> Value {
        examples::client_json(EventType::AssessmentGraded)
    }

    #[test]
    fn every_client_type_is_accepted_and_completed() {
        for t in EventType::client_writable() {
            let input = examples::client_json(t);
            let event = parse_client_event(&input, examples::TENANT).unwrap_or_else(|e| panic!("{t}: {e:?}"));
            let expected = examples::event(t);
            assert_eq!(event.data, expected.data, "{t}");
            assert_eq!(event.tenant, examples::TENANT);
            assert_eq!(event.time, examples::time(), "normalised to UTC");
            assert_eq!(event.subject, expected.subject, "{t}");
            assert_eq!(Uuid::parse_str(&event.id).unwrap().get_version_num(), 7);
            assert_eq!(decode(&encode(&event)).unwrap(), event, "{t}");
            let owned = parse_client_event_owned(input, examples::TENANT).unwrap();
            assert_eq!(Event { id: event.id.clone(), ..owned }, event, "{t}: owned and borrowed agree");
        }
    }

    #[test]
    fn given_ids_and_subjects_are_kept() {
        let mut input = graded();
        input["id"] = json!("client-id-1");
        input["subject"] = json!("learner-42");
        input["tenant"] = json!("acme");
        let event = parse_client_event(&input, "acme").unwrap();
        assert_eq!(event.id, "client-id-1");
        assert_eq!(event.subject.as_deref(), Some("learner-42"));

        let mut input = examples::client_json(EventType::CourseRetired);
        input["subject"] = json!("catalog/rust");
        let event = parse_client_event(&input, "acme").unwrap();
        assert_eq!(event.subject.as_deref(), Some("catalog/rust"));
    }

    #[test]
    fn derived_types_are_refused() {
        for t in EventType::ALL.into_iter().filter(|t| !t.is_client_writable()) {
            let errors = invalid(&examples::client_json(t));
            assert_eq!(paths(&errors), ["/type"], "{t}: {errors:?}");
            assert!(errors[0].message.contains("written by the pipeline"), "{errors:?}");
        }
    }

    #[test]
    fn unknown_types_list_the_accepted_ones() {
        let mut input = graded();
        input["type"] = json!("lesson.finished");
        let errors = invalid(&input);
        assert_eq!(paths(&errors), ["/type"]);
        let message = &errors[0].message;
        assert!(message.contains("unknown event type \"lesson.finished\""), "{message}");
        assert!(message.contains("lesson.completed"), "{message}");
        assert!(message.contains("payment.failed"), "{message}");
        assert!(!message.contains("progress.updated"), "{message}");

        input["type"] = json!(7);
        let errors = invalid(&input);
        assert_eq!(paths(&errors), ["/type"]);
        assert!(errors[0].message.contains("must be a string"), "{errors:?}");
    }

    #[test]
    fn numbers_must_be_integers_where_integers_are_due() {
        let mut input = graded();
        input["data"]["attempt"] = json!(1.5);
        let errors = invalid(&input);
        assert_eq!(paths(&errors), ["/data/attempt"]);
        assert_eq!(errors[0].message, "must be an integer, not 1.5");

        input["data"]["attempt"] = json!(0);
        let errors = invalid(&input);
        assert_eq!(errors, [FieldError::new("/data/attempt", "must be at least 1, not 0")]);

        input["data"]["attempt"] = json!(4_294_967_296u64);
        assert_eq!(paths(&invalid(&input)), ["/data/attempt"]);

        // JSON Schema counts 2.0 as an integer; so does the decoding.
        input["data"]["attempt"] = json!(2.0);
        let event = parse_client_event(&input, "acme").unwrap();
        let crate::EventData::AssessmentGraded(data) = event.data else { panic!("wrong type") };
        assert_eq!(data.attempt, 2);

        let mut course = examples::client_json(EventType::CoursePublished);
        course["data"]["version"] = json!(0);
        assert_eq!(paths(&invalid(&course)), ["/data/version"]);
        course["data"]["version"] = json!("2");
        let errors = invalid(&course);
        assert_eq!(errors[0].message, "must be an integer, not \"2\"");
    }

    #[test]
    fn every_problem_is_reported() {
        let input = json!({
            "specversion": "0.3",
            "type": "assessment.graded",
            "time": "yesterday",
            "colour": "blue",
            "data": {
                "learner_id": "",
                "course_id": "course-rust-101",
                "score": -1,
                "max_score": 0,
                "attempt": 1.5,
                "extra": true
            }
        });
        let errors = invalid(&input);
        let mut found = paths(&errors);
        found.sort_unstable();
        assert_eq!(
            found,
            [
                "/colour",
                "/data/assessment_id",
                "/data/attempt",
                "/data/extra",
                "/data/learner_id",
                "/data/max_score",
                "/data/score",
                "/source",
                "/specversion",
                "/time",
            ],
            "{errors:#?}"
        );
        let message = |path: &str| errors.iter().filter(|e| e.path == path).map(|e| e.message.as_str()).collect::<Vec<_>>();
        assert_eq!(message("/source"), ["the required attribute `source` is missing"]);
        assert_eq!(message("/data/assessment_id"), ["the required field `assessment_id` is missing"]);
        assert_eq!(message("/data/learner_id"), ["must not be empty"]);
        assert_eq!(message("/data/max_score"), ["must be greater than 0, not 0"]);
        assert_eq!(message("/specversion"), ["must be \"1.0\" (CloudEvents 1.0), not \"0.3\""]);
        assert_eq!(message("/time"), [TIME_MESSAGE]);
        assert!(message("/colour")[0].starts_with("unknown attribute `colour`; the allowed attributes are"));
        assert!(message("/colour")[0].contains("traceparent"));
        assert_eq!(
            message("/data/extra"),
            ["unknown field `extra`; the allowed fields are assessment_id, attempt, course_id, learner_id, max_score, score"]
        );
    }

    #[test]
    fn required_envelope_attributes() {
        let errors = invalid(&json!({}));
        let mut found = paths(&errors);
        found.sort_unstable();
        assert_eq!(found, ["/data", "/source", "/specversion", "/time", "/type"]);
    }

    #[test]
    fn the_event_must_be_an_object() {
        let errors = invalid(&json!([1, 2]));
        assert_eq!(errors, [FieldError::new("", "the event must be an object, not an array")]);
        let mut input = graded();
        input["data"] = json!("x");
        assert_eq!(invalid(&input), [FieldError::new("/data", "must be an object, not \"x\"")]);
    }

    #[test]
    fn trace_attributes_are_allowed_and_dropped() {
        let mut input = graded();
        input["traceparent"] = json!("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        input["tracestate"] = json!("vendor=x");
        let event = parse_client_event(&input, "acme").unwrap();
        let encoded: Value = serde_json::from_slice(&encode(&event)).unwrap();
        assert_eq!(encoded.get("traceparent"), None);
        assert_eq!(encoded.get("tracestate"), None);
    }

    #[test]
    fn tenants() {
        let mut input = graded();
        input["tenant"] = json!("globex");
        match parse_client_event(&input, "acme") {
            Err(Rejection::ForeignTenant { named, caller }) => {
                assert_eq!((named.as_str(), caller.as_str()), ("globex", "acme"));
            }
            other => panic!("expected ForeignTenant, got {other:?}"),
        }
        // The tenant is checked before the schema.
        input["data"] = json!({});
        assert!(matches!(parse_client_event(&input, "acme"), Err(Rejection::ForeignTenant { .. })));

        let mut input = graded();
        input["tenant"] = json!("acme");
        assert_eq!(parse_client_event(&input, "acme").unwrap().tenant, "acme");
        input["tenant"] = json!(42);
        assert_eq!(paths(&invalid(&input)), ["/tenant"]);
    }

    #[test]
    fn subject_must_match_the_learner() {
        let mut input = graded();
        input["subject"] = json!("learner-7");
        let errors = invalid(&input);
        assert_eq!(
            errors,
            [FieldError::new("/subject", "must equal data.learner_id (\"learner-42\") when both are given, not \"learner-7\"")]
        );
    }

    #[test]
    fn score_may_not_exceed_max_score() {
        let mut input = graded();
        input["data"]["score"] = json!(11);
        assert_eq!(invalid(&input), [FieldError::new("/data/score", "must not be greater than max_score (10), not 11")]);
        input["data"]["score"] = json!(10);
        assert!(parse_client_event(&input, "acme").is_ok());
    }

    #[test]
    fn lesson_ids_must_be_unique_across_the_course() {
        let mut input = examples::client_json(EventType::CoursePublished);
        input["data"]["modules"][1]["lessons"] = json!(["lesson-2", "lesson-3", "lesson-1"]);
        let errors = invalid(&input);
        assert_eq!(paths(&errors), ["/data/modules/1/lessons/0", "/data/modules/1/lessons/2"]);
        assert_eq!(errors[0].message, "lesson ids must be unique across the course; \"lesson-2\" is already at /data/modules/0/lessons/1");
    }

    #[test]
    fn courses_need_modules_and_lessons() {
        let mut input = examples::client_json(EventType::CoursePublished);
        input["data"]["modules"][1]["lessons"] = json!([]);
        assert_eq!(invalid(&input), [FieldError::new("/data/modules/1/lessons", "must contain at least one item")]);
        input["data"]["modules"] = json!([]);
        assert_eq!(paths(&invalid(&input)), ["/data/modules"]);
        input["data"]["modules"] = json!([{"module_id": "m", "lessons": ["a"], "x": 1}]);
        let errors = invalid(&input);
        assert_eq!(paths(&errors), ["/data/modules/0/x"]);
        assert_eq!(errors[0].message, "unknown field `x`; the allowed fields are lessons, module_id");
    }

    #[test]
    fn times() {
        let mut input = graded();
        for accepted in [
            "2026-11-20T10:15:00Z",
            "2026-11-20T10:15:00.123456789Z",
            "2026-11-20T10:15:00.123456789012Z",
            "2026-11-20t10:15:00z",
            "2026-11-20T05:15:00-05:00",
            "2026-11-20T10:15:00+00:00",
            "2016-12-31T23:59:60Z",
        ] {
            input["time"] = json!(accepted);
            let event = parse_client_event(&input, "acme").unwrap_or_else(|e| panic!("{accepted}: {e:?}"));
            assert_eq!(decode(&encode(&event)).unwrap(), event, "{accepted}");
        }
        for refused in
            ["2026-11-20T10:15:00", "2026-11-20 10:15:00Z", "2026-11-20", "2026-13-20T10:15:00Z", "2026-02-30T10:15:00Z", "20 Nov 2026"]
        {
            input["time"] = json!(refused);
            assert_eq!(invalid(&input), [FieldError::new("/time", TIME_MESSAGE)], "{refused}");
        }
    }

    #[test]
    fn payments() {
        let mut input = examples::client_json(EventType::PaymentSucceeded);
        input["data"]["currency"] = json!("eur");
        assert_eq!(
            invalid(&input),
            [FieldError::new(
                "/data/currency",
                "must be an ISO 4217 currency code of three uppercase letters, such as \"EUR\", not \"eur\""
            )]
        );
        input["data"]["currency"] = json!("EUR");
        input["data"]["amount_minor"] = json!(0);
        assert_eq!(paths(&invalid(&input)), ["/data/amount_minor"]);
        input["data"]["amount_minor"] = json!(9_007_199_254_740_992u64);
        assert_eq!(paths(&invalid(&input)), ["/data/amount_minor"]);
        input["data"]["amount_minor"] = json!(9_007_199_254_740_991u64);
        assert!(parse_client_event(&input, "acme").is_ok());

        input["data"].as_object_mut().unwrap().remove("course_id");
        let event = parse_client_event(&input, "acme").unwrap();
        assert_eq!(event.course_id(), None);
        input["data"]["course_id"] = Value::Null;
        assert_eq!(parse_client_event(&input, "acme").unwrap().course_id(), None);
    }

    #[test]
    fn enrollment_sources() {
        let mut input = examples::client_json(EventType::EnrollmentCreated);
        for source in ["self", "admin", "purchase"] {
            input["data"]["source"] = json!(source);
            assert!(parse_client_event(&input, "acme").is_ok(), "{source}");
        }
        input["data"]["source"] = json!("gift");
        assert_eq!(invalid(&input), [FieldError::new("/data/source", "must be one of \"self\", \"admin\", \"purchase\", not \"gift\"")]);
    }

    #[test]
    fn ids_and_lengths() {
        let mut input = graded();
        input["id"] = json!("");
        assert_eq!(invalid(&input), [FieldError::new("/id", "must not be empty")]);
        input["id"] = json!("x".repeat(129));
        assert_eq!(invalid(&input), [FieldError::new("/id", "must be at most 128 characters long (it has 129)")]);
        // Characters, not bytes.
        input["id"] = json!("é".repeat(128));
        assert!(parse_client_event(&input, "acme").is_ok());
        input["id"] = Value::Null;
        assert_eq!(paths(&invalid(&input)), ["/id"]);
    }

    #[test]
    fn unknown_names_are_escaped_in_pointers() {
        let mut input = graded();
        input["data"]["a/b~c"] = json!(1);
        assert_eq!(paths(&invalid(&input)), ["/data/a~1b~0c"]);
    }

    /// Whatever passes the schema and the semantic checks must decode into an `Event`: try
    /// awkward values in every attribute and data field of every client type.
    #[test]
    fn accepted_json_always_decodes() {
        let awkward = [
            json!(null),
            json!(true),
            json!(0),
            json!(-0.0),
            json!(1.0),
            json!(1.5),
            json!(-1),
            json!(1e300),
            json!(4_294_967_295u64),
            json!(4_294_967_296u64),
            json!(9_007_199_254_740_991u64),
            json!(18_446_744_073_709_551_615u64),
            json!(""),
            json!("x"),
            json!("EUR"),
            json!("2026-11-20T10:15:00Z"),
            json!([]),
            json!(["a"]),
            json!({}),
        ];
        let mut accepted = 0;
        for t in EventType::client_writable() {
            let base = examples::client_json(t);
            let mut targets: Vec<(Option<&str>, String)> = base.as_object().unwrap().keys().map(|k| (None, k.clone())).collect();
            targets.extend(base["data"].as_object().unwrap().keys().map(|k| (Some("data"), k.clone())));
            targets.extend(["id", "subject", "tenant"].map(|k| (None, k.to_owned())));
            for (parent, key) in targets {
                for value in &awkward {
                    let mut input = base.clone();
                    match parent {
                        Some(parent) => input[parent][&key] = value.clone(),
                        None => input[&key] = value.clone(),
                    }
                    match parse_client_event(&input, "x") {
                        Ok(event) => {
                            accepted += 1;
                            assert_eq!(decode(&encode(&event)).unwrap(), event);
                        }
                        Err(Rejection::Invalid(errors)) => {
                            assert!(errors.iter().all(|e| !e.path.is_empty()), "{t} {key}={value}: {errors:?}");
                        }
                        Err(Rejection::ForeignTenant { .. }) => {}
                    }
                }
            }
        }
        assert!(accepted > 50, "{accepted}");
    }

    #[test]
    fn field_errors_serialise_as_the_contract_shows() {
        let error = FieldError::new("/data/score", "must be at least 0, not -1");
        assert_eq!(serde_json::to_value(&error).unwrap(), json!({"path": "/data/score", "message": "must be at least 0, not -1"}));
        assert_eq!(error.to_string(), "/data/score: must be at least 0, not -1");
    }
}
