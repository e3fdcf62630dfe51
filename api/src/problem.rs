//! Errors as HTTP responses: `application/problem+json` (RFC 9457).
//!
//! Every error a client sees is a [`Problem`] with a stable `type` (`urn:lms:problem:<kind>`),
//! a `title` per kind, the `status`, a `detail` for this occurrence and, for validation
//! errors, `errors: [{path, message}]` with JSON pointers. Internals (broker error texts,
//! stack traces) are logged, never sent.

use axum::http::header::{CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use lms_events::FieldError;
use serde::Serialize;
use serde_json::{Map, Value};
use utoipa::ToSchema;

/// The media type of problem documents.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// An RFC 9457 problem document, and the HTTP response carrying it.
///
/// The document is boxed so that `Result<T, Problem>` stays small; its fields are read and
/// changed through `Deref` (`problem.status`, `problem.errors`).
#[derive(Debug, Clone, PartialEq)]
pub struct Problem(Box<ProblemDocument>);

/// The members of a [`Problem`].
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[schema(as = Problem)]
pub struct ProblemDocument {
    /// Identifies the kind of problem: `urn:lms:problem:<kind>`; stable across versions.
    #[serde(rename = "type")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong in this occurrence.
    pub detail: String,
    /// Validation errors, each at the JSON pointer of the value at fault.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<FieldErrorDoc>)]
    pub errors: Vec<FieldError>,
    /// Extension members of this kind of problem (for example `accepted`, `rejected`).
    #[serde(flatten)]
    #[schema(value_type = Object)]
    pub extensions: Map<String, Value>,
    /// Headers sent with the response (`Retry-After`, `WWW-Authenticate`).
    #[serde(skip)]
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

/// The problems every authenticated route that reads or changes a learner's or tenant's
/// state can answer besides its own (OpenAPI only: the handlers answer [`Problem`]).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum AccessProblems {
    /// Missing, expired or invalid token
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthorized(ProblemDocument),
    /// The token's scopes or learner do not allow this
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(ProblemDocument),
    /// The store is unavailable; retry after `Retry-After`
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(ProblemDocument),
}

/// A validation error: what is wrong, at which JSON pointer.
#[derive(ToSchema)]
#[schema(as = FieldError)]
#[allow(dead_code)]
pub struct FieldErrorDoc {
    /// JSON pointer (RFC 6901) of the value at fault, such as `/data/score` in a body; for a
    /// request parameter, into the parameters by where they are, such as `/query/from` or
    /// `/path/course_id`.
    path: String,
    /// For a request parameter: its name, such as `from`.
    #[schema(nullable = false)]
    param: Option<String>,
    /// What is wrong, for the client's developer.
    message: String,
}

impl Problem {
    /// A problem of `kind` (the last part of its `type`) with a title and detail.
    pub fn new(status: StatusCode, kind: &str, title: &str, detail: impl Into<String>) -> Problem {
        Problem(Box::new(ProblemDocument {
            kind: format!("urn:lms:problem:{kind}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            errors: Vec::new(),
            extensions: Map::new(),
            headers: Vec::new(),
        }))
    }

    /// 400: the body is not well-formed (malformed JSON, a missing protocol header).
    pub fn bad_request(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::BAD_REQUEST, "malformed-request", "Malformed request", detail)
    }

    /// 401: no or invalid credentials; asks for a bearer token.
    pub fn unauthorized(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "unauthorized", "Missing or invalid credentials", detail)
            .with_header(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))
    }

    /// 401 for a payment-provider webhook: the signature is missing, wrong or too old.
    pub fn bad_signature(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNAUTHORIZED, "bad-signature", "Missing, invalid or expired webhook signature", detail)
    }

    /// 403: the credentials are valid but do not allow this (scope, tenant, learner).
    pub fn forbidden(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::FORBIDDEN, "forbidden", "Not allowed", detail)
    }

    /// 404: no such resource.
    pub fn not_found(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::NOT_FOUND, "not-found", "Not found", detail)
    }

    /// 405: the resource exists but not with this method.
    pub fn method_not_allowed(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed", detail)
    }

    /// 408: the client did not send its body in time.
    pub fn request_timeout(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request body not received in time", detail)
    }

    /// 413: the body, or the number of items in it, exceeds a limit.
    pub fn payload_too_large(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request too large", detail)
    }

    /// 415: the content type is not one the endpoint reads.
    pub fn unsupported_media_type(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported content type", detail)
    }

    /// 422: well-formed JSON that breaks the schema, with every error found.
    pub fn unprocessable(detail: impl Into<String>, errors: Vec<FieldError>) -> Problem {
        let mut p = Problem::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", "Invalid content", detail);
        p.errors = errors;
        p
    }

    /// 429: the tenant's rate limit is exhausted; retry after `retry_after_s` seconds.
    pub fn rate_limited(retry_after_s: u64) -> Problem {
        Problem::new(
            StatusCode::TOO_MANY_REQUESTS,
            "rate-limited",
            "Rate limit exceeded",
            format!("the tenant's request rate limit is exhausted; retry in {retry_after_s} s"),
        )
        .with_retry_after(retry_after_s)
    }

    /// 503: the broker is unavailable or the producer is saturated; nothing was lost, retry
    /// after `retry_after_s` seconds.
    pub fn unavailable(detail: impl Into<String>, retry_after_s: u64) -> Problem {
        Problem::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "Service temporarily unavailable", detail)
            .with_retry_after(retry_after_s)
    }

    /// 500: a bug; the detail says nothing about internals.
    pub fn internal(detail: impl Into<String>) -> Problem {
        Problem::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal error", detail)
    }

    /// Adds an extension member.
    #[must_use]
    pub fn with(mut self, name: &str, value: impl Into<Value>) -> Problem {
        self.extensions.insert(name.to_owned(), value.into());
        self
    }

    /// Adds a response header.
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Problem {
        self.headers.push((name, value));
        self
    }

    /// Adds `Retry-After` in seconds (at least 1).
    #[must_use]
    pub fn with_retry_after(self, seconds: u64) -> Problem {
        self.with_header(RETRY_AFTER, HeaderValue::from(seconds.max(1)))
    }

    /// The HTTP status.
    pub fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl std::ops::Deref for Problem {
    type Target = ProblemDocument;
    fn deref(&self) -> &ProblemDocument {
        &self.0
    }
}

impl std::ops::DerefMut for Problem {
    fn deref_mut(&mut self) -> &mut ProblemDocument {
        &mut self.0
    }
}

impl Serialize for Problem {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.0.serialize(serializer)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        let body = serde_json::to_vec(&*self.0).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        for (name, value) in self.0.headers {
            headers.insert(name, value);
        }
        response
    }
}

/// The path parameters of a route, as [`axum::extract::Path`] reads them, but refused with a
/// 400 problem document instead of axum's plain-text answer when they do not decode (a
/// percent-encoded segment that is not UTF-8, for example).
#[derive(Debug)]
pub struct PathParams<T>(pub T);

impl<T, S> axum::extract::FromRequestParts<S> for PathParams<T>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut axum::http::request::Parts, state: &S) -> Result<Self, Problem> {
        match axum::extract::Path::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Path(value)) => Ok(PathParams(value)),
            Err(e) => Err(Problem::bad_request(format!("a path parameter is invalid: {}", e.body_text()))),
        }
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.title, self.detail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn serialises_as_rfc_9457_with_extensions_and_headers() {
        let p = Problem::unprocessable("1 event is invalid", vec![FieldError::new("/data/score", "must be at least 0, not -1")])
            .with("rejected", json!([{"index": 0}]));
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            json!({
                "type": "urn:lms:problem:invalid", "title": "Invalid content", "status": 422,
                "detail": "1 event is invalid",
                "errors": [{"path": "/data/score", "message": "must be at least 0, not -1"}],
                "rejected": [{"index": 0}]
            })
        );
        let r = Problem::unavailable("broker down", 0).into_response();
        assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(r.headers()[CONTENT_TYPE], PROBLEM_JSON);
        assert_eq!(r.headers()[RETRY_AFTER], "1", "Retry-After is at least one second");
        assert_eq!(Problem::unauthorized("x").into_response().headers()[WWW_AUTHENTICATE], "Bearer");
    }

    #[tokio::test]
    async fn a_path_parameter_that_is_not_utf8_is_a_problem() {
        use axum::body::Body;
        use axum::http::Request;
        use tower::ServiceExt;
        let app = axum::Router::new().route("/x/{id}", axum::routing::get(|PathParams(id): PathParams<String>| async move { id }));
        let ok = app.clone().oneshot(Request::get("/x/a%20b").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(ok.status(), StatusCode::OK);
        let bad = app.oneshot(Request::get("/x/%FF").body(Body::empty()).unwrap()).await.unwrap();
        assert_eq!(bad.status(), StatusCode::BAD_REQUEST);
        assert_eq!(bad.headers()[CONTENT_TYPE], PROBLEM_JSON);
    }
}
