//! Read endpoints of the learner resources the processors keep in the state store:
//! `GET /v1/learners/{learner_id}/progress` and `GET /v1/learners/{learner_id}/achievements`.
//!
//! A learner token (`learner:read`) reads only itself; `analytics:read` and `admin` read any
//! learner of the token's tenant. The tenant always comes from the token, never from the
//! request, so no request can name another tenant's learner.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use lms_state::{Store, StoreError};
use processors::achievements::{self, AchievementView};
use processors::progress::{self, model::ProgressView};

use crate::auth::Claims;
use crate::problem::{AccessProblems, PathParams, Problem, ProblemDocument};

/// The learner read routes over `store`, to [`crate::Api::merge`].
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/v1/learners/{learner_id}/progress", get(get_progress))
        .route("/v1/learners/{learner_id}/achievements", get(get_achievements))
        .with_state(store)
}

/// The `learner_id` path parameter of the learner routes: 1 to 128 characters, none a
/// control character (else 400, see [`check_learner`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)] // documentation: the handlers take the path as a string
pub(crate) struct LearnerPath {
    /// The learner.
    #[param(min_length = 1, max_length = 128, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")]
    learner_id: String,
}

/// The 400 answer of every read, beside [`AccessProblems`] (OpenAPI only).
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum InvalidParameter {
    /// A parameter is invalid; `errors` names each one
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(ProblemDocument),
}

/// A learner's progress per course (learner:read (own) or analytics:read)
#[utoipa::path(
    get,
    path = "/v1/learners/{learner_id}/progress",
    tag = "read",
    security(("bearer" = [])),
    params(LearnerPath),
    responses((status = 200, description = "OK", body = Vec<ProgressView>), InvalidParameter, AccessProblems)
)]
pub(crate) async fn get_progress(
    State(store): State<Store>,
    claims: Claims,
    PathParams(learner_id): PathParams<String>,
) -> Result<Json<Vec<ProgressView>>, Problem> {
    check_learner(&claims, &learner_id)?;
    progress::read(&store, &claims.tenant, &learner_id).await.map(Json).map_err(store_problem)
}

/// A learner's achievements (learner:read (own) or analytics:read)
#[utoipa::path(
    get,
    path = "/v1/learners/{learner_id}/achievements",
    tag = "read",
    security(("bearer" = [])),
    params(LearnerPath),
    responses((status = 200, description = "OK", body = Vec<AchievementView>), InvalidParameter, AccessProblems)
)]
pub(crate) async fn get_achievements(
    State(store): State<Store>,
    claims: Claims,
    PathParams(learner_id): PathParams<String>,
) -> Result<Json<Vec<AchievementView>>, Problem> {
    check_learner(&claims, &learner_id)?;
    achievements::read(&store, &claims.tenant, &learner_id).await.map(Json).map_err(store_problem)
}

/// The token may read `learner_id`, which is a well-formed id (1 to 128 characters, no
/// control characters: PostgreSQL refuses a NUL in text, which would otherwise be a 500).
pub(crate) fn check_learner(claims: &Claims, learner_id: &str) -> Result<(), Problem> {
    claims.may_read_learner(learner_id)?;
    if learner_id.is_empty() || learner_id.chars().count() > 128 {
        return Err(Problem::bad_request("learner_id must have 1 to 128 characters"));
    }
    if learner_id.chars().any(char::is_control) {
        return Err(Problem::bad_request("learner_id must not contain control characters"));
    }
    Ok(())
}

/// 503 with `Retry-After` while the store is unreachable; 500 otherwise (logged).
pub(crate) fn store_problem(e: StoreError) -> Problem {
    if e.is_transient() {
        tracing::warn!(error = %e, "state store unavailable for a read");
        Problem::unavailable("the state store is unavailable; retry shortly", 2)
    } else {
        tracing::error!(error = %e, "state store read failed");
        Problem::internal("the read failed")
    }
}
