//! `POST /v1/enrollments` and `DELETE /v1/enrollments/{learner_id}/{course_id}`: the
//! enrollment events as resources.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use chrono::{SecondsFormat, Utc};
use lms_events::{FieldError, Rejection, parse_client_event};
use serde::Deserialize;
use serde_json::{Map, Value, json};
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Claims, scope};
use crate::body;
use crate::ingest::Accepted;
use crate::problem::{PathParams, Problem, ProblemDocument};
use crate::telemetry::RequestTrace;

/// The `source` attribute of the events these routes produce.
const SOURCE: &str = "lms-api";

/// An enrollment to create.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
#[serde(deny_unknown_fields)]
pub struct EnrollmentRequest {
    /// The learner.
    #[schema(min_length = 1, max_length = 128)]
    learner_id: String,
    /// The course.
    #[schema(min_length = 1, max_length = 128)]
    course_id: String,
    /// How the learner was enrolled.
    source: EnrollmentSourceDoc,
    /// Idempotency key: the event id. A UUIDv7 is assigned when absent.
    #[schema(nullable = false, min_length = 1, max_length = 128)]
    id: Option<String>,
    /// When the enrollment happened (RFC 3339 with offset); now when absent.
    #[schema(nullable = false, format = DateTime)]
    time: Option<String>,
}

/// How a learner was enrolled.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
#[schema(as = EnrollmentRequestSource)]
#[allow(dead_code)]
pub enum EnrollmentSourceDoc {
    /// The learner enrolled themselves.
    #[serde(rename = "self")]
    SelfService,
    /// An administrator enrolled the learner.
    Admin,
    /// A purchase enrolled the learner.
    Purchase,
}

/// Maps the event pointers of validation errors onto the request's fields.
fn request_path(path: &str) -> String {
    path.strip_prefix("/data").filter(|p| !p.is_empty()).unwrap_or(path).to_owned()
}

/// Validates an event built from a request and maps its errors back onto the request.
fn to_event(event: Value, tenant: &str, map_path: impl Fn(&str) -> String) -> Result<lms_events::Event, Problem> {
    parse_client_event(&event, tenant).map_err(|r| match r {
        Rejection::Invalid(errors) => Problem::unprocessable(
            "the enrollment is invalid",
            errors.into_iter().map(|e| FieldError::new(map_path(&e.path), e.message)).collect(),
        ),
        // The built event carries no tenant attribute.
        Rejection::ForeignTenant { .. } => Problem::internal("unexpected tenant attribute"),
    })
}

/// Enroll a learner
///
/// Produces `enrollment.created`. Send `id` to make retries idempotent.
#[utoipa::path(
    post,
    path = "/v1/enrollments",
    tag = "write",
    security(("bearer" = ["events:write"])),
    request_body = EnrollmentRequest,
    responses(
        (status = 202, description = "The event is durably on the broker", body = Accepted),
        (status = 400, description = "Malformed JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "Scope missing", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Invalid enrollment", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Tenant rate limit exhausted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable or backpressure", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn post_enrollment(
    State(state): State<Arc<AppState>>,
    claims: Claims,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, Problem> {
    claims.require(scope::EVENTS_WRITE)?;
    state.admit_claims(&claims)?;
    body::format(&headers, false)?;
    let config = &state.config;
    let bytes = body::read(request_body, &headers, config.max_event_bytes, config.body_timeout()).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|e| Problem::bad_request(format!("malformed JSON: {e}")))?;
    let Value::Object(mut fields) = value else {
        return Err(Problem::unprocessable("the body must be a JSON object", vec![FieldError::new("", "must be an object")]));
    };
    let unknown: Vec<FieldError> = fields
        .keys()
        .filter(|k| !["learner_id", "course_id", "source", "id", "time"].contains(&k.as_str()))
        .map(|k| {
            FieldError::new(format!("/{k}"), format!("unknown field `{k}`; the allowed fields are learner_id, course_id, source, id, time"))
        })
        .collect();
    if !unknown.is_empty() {
        state.metrics.count_events(0, 1, 0);
        return Err(Problem::unprocessable("the enrollment is invalid", unknown));
    }
    let mut event = Map::new();
    event.insert("specversion".into(), json!("1.0"));
    event.insert("type".into(), json!("enrollment.created"));
    event.insert("source".into(), json!(SOURCE));
    event.insert("time".into(), fields.remove("time").unwrap_or_else(now));
    if let Some(id) = fields.remove("id") {
        event.insert("id".into(), id);
    }
    event.insert("data".into(), Value::Object(fields));
    let event = to_event(Value::Object(event), &claims.tenant, request_path).inspect_err(|_| state.metrics.count_events(0, 1, 0))?;
    let accepted = state.produce(vec![event], trace).await?;
    Ok(Accepted { accepted, rejected: Vec::new() }.into_response())
}

/// Drop an enrollment
///
/// Produces `enrollment.dropped`. Send `Idempotency-Key` (used as the event id) to make
/// retries idempotent.
#[utoipa::path(
    delete,
    path = "/v1/enrollments/{learner_id}/{course_id}",
    tag = "write",
    security(("bearer" = ["events:write"])),
    params(
        ("learner_id" = String, Path, description = "The learner", min_length = 1, max_length = 128),
        ("course_id" = String, Path, description = "The course", min_length = 1, max_length = 128),
        ("Idempotency-Key" = Option<String>, Header, description = "The event id (at most 128 characters)", nullable = false, min_length = 1, max_length = 128),
    ),
    responses(
        (status = 202, description = "The event is durably on the broker", body = Accepted),
        (status = 400, description = "Idempotency-Key is not visible ASCII, or a path parameter is not UTF-8", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "Scope missing", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Invalid ids", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Tenant rate limit exhausted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable or backpressure", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_enrollment(
    State(state): State<Arc<AppState>>,
    claims: Claims,
    RequestTrace(trace): RequestTrace,
    PathParams((learner_id, course_id)): PathParams<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Problem> {
    claims.require(scope::EVENTS_WRITE)?;
    state.admit_claims(&claims)?;
    let mut event = json!({
        "specversion": "1.0",
        "type": "enrollment.dropped",
        "source": SOURCE,
        "time": now(),
        "data": {"learner_id": learner_id, "course_id": course_id},
    });
    if let Some(key) = headers.get("idempotency-key") {
        let key = key.to_str().map_err(|_| Problem::bad_request("Idempotency-Key must be visible ASCII"))?;
        event["id"] = json!(key);
    }
    let map = |p: &str| match p {
        "/id" => "Idempotency-Key".to_owned(),
        "/data/learner_id" => "learner_id".to_owned(),
        "/data/course_id" => "course_id".to_owned(),
        other => other.to_owned(),
    };
    let event = to_event(event, &claims.tenant, map).inspect_err(|_| state.metrics.count_events(0, 1, 0))?;
    let accepted = state.produce(vec![event], trace).await?;
    Ok(Accepted { accepted, rejected: Vec::new() }.into_response())
}

fn now() -> Value {
    json!(Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true))
}
