//! The notification endpoints over the state store the notifications processor writes:
//! - `GET /v1/learners/{learner_id}/notifications?unread_only=true`: the in-app inbox,
//!   newest first;
//! - `POST /v1/learners/{learner_id}/notifications/{id}/read`: 204, or 404 for a
//!   notification the learner does not have;
//! - `GET|PUT /v1/learners/{learner_id}/notification-preferences`: the CONTRACT shape;
//!   PUT answers the stored document, 422 with JSON pointers for invalid fields.
//!
//! Reading follows the learner rules of [`Claims::may_read_learner`]; changing (marking
//! read, PUT preferences) is for the learner itself (`learner:read`, `sub` = learner) or
//! `admin`. The tenant always comes from the token.

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use lms_events::FieldError;
use lms_state::Store;
use processors::notifications::inbox::{self, InboxItem};
use processors::notifications::preferences::{self, Preferences};
use serde::Deserialize;

use crate::auth::{Claims, scope};
use crate::learners::{LearnerPath, check_learner, store_problem};
use crate::problem::{AccessProblems, PathParams, Problem, ProblemDocument};

/// The notification routes over `store`, to [`crate::Api::merge`].
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/v1/learners/{learner_id}/notifications", get(list))
        .route("/v1/learners/{learner_id}/notifications/{id}/read", post(mark_read))
        .route("/v1/learners/{learner_id}/notification-preferences", get(get_preferences).put(put_preferences))
        .with_state(store)
}

/// Query of the inbox.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct ListQuery {
    /// Only notifications not read yet
    #[serde(default)]
    #[param(default = false)]
    unread_only: bool,
}

/// The learner itself or an admin may change the learner's notifications.
fn check_owner(claims: &Claims, learner_id: &str) -> Result<(), Problem> {
    check_learner(claims, learner_id)?;
    if claims.sub == learner_id || claims.scopes().any(|s| s == scope::ADMIN) {
        Ok(())
    } else {
        Err(Problem::forbidden("only the learner (or an admin) may change the learner's notifications"))
    }
}

/// A learner's in-app notifications (learner:read (own) or analytics:read)
#[utoipa::path(
    get,
    path = "/v1/learners/{learner_id}/notifications",
    tag = "read",
    security(("bearer" = [])),
    params(LearnerPath, ListQuery),
    responses(
        (status = 200, description = "The inbox, newest first", body = Vec<InboxItem>),
        (status = 400, description = "A parameter is invalid: `unread_only`, or learner_id is not a well-formed id", body = ProblemDocument, content_type = "application/problem+json"),
        AccessProblems,
    )
)]
pub(crate) async fn list(
    State(store): State<Store>,
    claims: Claims,
    PathParams(learner_id): PathParams<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<InboxItem>>, Problem> {
    check_learner(&claims, &learner_id)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    inbox::list(&store, &claims.tenant, &learner_id, q.unread_only).await.map(Json).map_err(store_problem)
}

/// Marks a notification read (the learner itself or admin)
#[utoipa::path(
    post,
    path = "/v1/learners/{learner_id}/notifications/{id}/read",
    tag = "read",
    security(("bearer" = [])),
    params(LearnerPath, ("id" = String, Path, description = "The notification", min_length = 1, pattern = "^[^\\x00-\\x1F\\x7F-\\x9F]*$")),
    responses(
        (status = 204, description = "Read (again: unchanged)"),
        (status = 400, description = "learner_id (or the notification id) is not a well-formed id", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 404, description = "No such notification in the learner's inbox", body = ProblemDocument, content_type = "application/problem+json"),
        AccessProblems,
    )
)]
pub(crate) async fn mark_read(
    State(store): State<Store>,
    claims: Claims,
    PathParams((learner_id, id)): PathParams<(String, String)>,
) -> Result<StatusCode, Problem> {
    check_owner(&claims, &learner_id)?;
    if id.chars().any(char::is_control) {
        // PostgreSQL refuses a NUL in text: the query would fail (500) instead of finding nothing.
        return Err(Problem::bad_request("the notification id must not contain control characters"));
    }
    if inbox::mark_read(&store, &claims.tenant, &learner_id, &id).await.map_err(store_problem)? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(Problem::not_found(format!("learner {learner_id:?} has no notification {id:?}")))
    }
}

/// A learner's notification preferences, defaults included (learner:read (own) or analytics:read)
#[utoipa::path(
    get,
    path = "/v1/learners/{learner_id}/notification-preferences",
    tag = "read",
    security(("bearer" = [])),
    params(LearnerPath),
    responses(
        (status = 200, description = "The preferences", body = Preferences),
        (status = 400, description = "learner_id (or the notification id) is not a well-formed id", body = ProblemDocument, content_type = "application/problem+json"),
        AccessProblems,
    )
)]
pub(crate) async fn get_preferences(
    State(store): State<Store>,
    claims: Claims,
    PathParams(learner_id): PathParams<String>,
) -> Result<Json<Preferences>, Problem> {
    check_learner(&claims, &learner_id)?;
    preferences::read(&store, &claims.tenant, &learner_id).await.map(Json).map_err(store_problem)
}

/// Replaces a learner's notification preferences (the learner itself or admin)
#[utoipa::path(
    put,
    path = "/v1/learners/{learner_id}/notification-preferences",
    tag = "read",
    security(("bearer" = [])),
    params(LearnerPath),
    request_body(content = Preferences, description = "Absent fields take their defaults"),
    responses(
        (status = 200, description = "Stored", body = Preferences),
        (status = 400, description = "Malformed JSON, or learner_id is not a well-formed id", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 410, description = "The learner was erased: nothing of them is stored again", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Invalid preferences; `errors` names each field", body = ProblemDocument, content_type = "application/problem+json"),
        AccessProblems,
    )
)]
pub(crate) async fn put_preferences(
    State(store): State<Store>,
    claims: Claims,
    PathParams(learner_id): PathParams<String>,
    body: Bytes,
) -> Result<Json<Preferences>, Problem> {
    check_owner(&claims, &learner_id)?;
    let prefs: Preferences = serde_json::from_slice(&body).map_err(|e| {
        if e.is_data() {
            Problem::unprocessable(
                "the preferences do not match their schema",
                vec![FieldError { path: String::new(), message: e.to_string() }],
            )
        } else {
            Problem::bad_request(format!("malformed JSON: {e}"))
        }
    })?;
    let errors = prefs.validate();
    if !errors.is_empty() {
        let errors = errors.into_iter().map(|(path, message)| FieldError { path, message }).collect();
        return Err(Problem::unprocessable("invalid notification preferences", errors));
    }
    if !preferences::write(&store, &claims.tenant, &learner_id, &prefs).await.map_err(store_problem)? {
        return Err(Problem::new(
            StatusCode::GONE,
            "erased",
            "Learner erased",
            "the learner was erased (DELETE /v1/learners/{learner_id}); nothing of them is stored again",
        ));
    }
    Ok(Json(prefs))
}
