//! The operations routes: `/livez` (alias `/healthz`), `/readyz`, `/metrics`, `/openapi.json`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use prometheus::{Encoder, TextEncoder};
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::problem::{Problem, ProblemDocument};

/// The state of the process or of its dependencies.
#[derive(Debug, Serialize, ToSchema)]
pub struct Status {
    /// `alive` or `ready`.
    pub status: String,
    /// Each readiness check and `ok`, or why it failed.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, String>,
}

/// Liveness
///
/// The process is alive; no dependency is checked. `/healthz` is an alias.
#[utoipa::path(get, path = "/livez", tag = "operations", responses((status = 200, body = Status)))]
pub(crate) async fn livez() -> Json<Status> {
    Json(Status { status: "alive".into(), checks: BTreeMap::new() })
}

/// Readiness
///
/// Ready when the broker and every registered dependency answered the last background
/// check (run every second); otherwise 503 naming the failed checks.
#[utoipa::path(
    get,
    path = "/readyz",
    tag = "operations",
    responses(
        (status = 200, body = Status),
        (status = 503, description = "Not ready; `checks` says which dependency failed", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    let results = state.readiness.results();
    let failed: Vec<String> = results.iter().filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n} ({e})"))).collect();
    let checks: BTreeMap<String, String> = results.into_iter().map(|(n, r)| (n, r.map_or_else(|e| e, |()| "ok".to_owned()))).collect();
    if failed.is_empty() {
        Json(Status { status: "ready".into(), checks }).into_response()
    } else {
        Problem::unavailable(format!("not ready: {}", failed.join(", ")), state.config.retry_after_s)
            .with("checks", serde_json::to_value(checks).unwrap_or_default())
            .into_response()
    }
}

/// Metrics
///
/// The registry in the Prometheus text format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, body = String, content_type = "text/plain")))]
pub(crate) async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    let encoder = TextEncoder::new();
    let mut buf = Vec::new();
    if let Err(e) = encoder.encode(&state.registry.gather(), &mut buf) {
        tracing::error!(error = %e, "encoding metrics");
        return Problem::internal("the metrics could not be encoded").into_response();
    }
    let mut r = buf.into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"));
    r
}

/// OpenAPI
///
/// This document.
#[utoipa::path(get, path = "/openapi.json", tag = "operations", responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json")))]
pub(crate) async fn openapi(State(state): State<Arc<AppState>>) -> Response {
    let mut r = state.openapi.clone().into_response();
    r.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}
