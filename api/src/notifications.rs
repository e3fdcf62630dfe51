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
use crate::learners::{check_learner, store_problem};
use crate::problem::{PathParams, Problem};

/// The notification routes over `store`, to [`crate::Api::merge`].
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/v1/learners/{learner_id}/notifications", get(list))
        .route("/v1/learners/{learner_id}/notifications/{id}/read", post(mark_read))
        .route("/v1/learners/{learner_id}/notification-preferences", get(get_preferences).put(put_preferences))
        .with_state(store)
}

/// Query of the inbox.
#[derive(Debug, Deserialize)]
struct ListQuery {
    /// Only notifications not read yet.
    #[serde(default)]
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

async fn list(
    State(store): State<Store>,
    claims: Claims,
    PathParams(learner_id): PathParams<String>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<InboxItem>>, Problem> {
    check_learner(&claims, &learner_id)?;
    let Query(q) = query.map_err(|e| Problem::bad_request(format!("query: {e}")))?;
    inbox::list(&store, &claims.tenant, &learner_id, q.unread_only).await.map(Json).map_err(store_problem)
}

async fn mark_read(
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

async fn get_preferences(
    State(store): State<Store>,
    claims: Claims,
    PathParams(learner_id): PathParams<String>,
) -> Result<Json<Preferences>, Problem> {
    check_learner(&claims, &learner_id)?;
    preferences::read(&store, &claims.tenant, &learner_id).await.map(Json).map_err(store_problem)
}

async fn put_preferences(
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

/// Adds the notification routes and their schemas to the OpenAPI document `doc` (the
/// answers are types of the processors crate, which does not depend on utoipa).
pub(crate) fn add_openapi(doc: &mut serde_json::Value) {
    use serde_json::json;
    let time = |nullable: bool| {
        if nullable { json!({"type": ["string", "null"], "format": "date-time"}) } else { json!({"type": "string", "format": "date-time"}) }
    };
    let hhmm = json!({"type": "string", "pattern": "^[0-2][0-9]:[0-5][0-9]$"});
    doc["components"]["schemas"]["Notification"] = json!({
        "type": "object", "required": ["id", "category", "title", "body", "created_at", "read_at"],
        "properties": {
            "id": {"type": "string"},
            "category": {"type": "string", "description": "enrollment, payment, completion, achievement, milestone or digest"},
            "title": {"type": "string"}, "body": {"type": "string"},
            "created_at": time(false), "read_at": time(true)
        }
    });
    doc["components"]["schemas"]["NotificationPreferences"] = json!({
        "type": "object", "additionalProperties": false,
        "description": "Absent fields take their defaults; PUT answers the stored document",
        "properties": {
            "email": {"type": ["string", "null"], "format": "email"},
            "locale": {"type": "string", "default": "en"},
            "timezone": {"type": "string", "default": "UTC", "description": "IANA time zone (quiet hours, daily digests, streak days)"},
            "channels": {"type": "object", "required": ["in_app", "email", "webhook"], "additionalProperties": false,
                         "properties": {"in_app": {"type": "boolean"}, "email": {"type": "boolean"}, "webhook": {"type": "boolean"}}},
            "muted_categories": {"type": "array", "items": {"type": "string"}},
            "quiet_hours": {"oneOf": [{"type": "null"}, {"type": "object", "required": ["start", "end"], "additionalProperties": false,
                            "properties": {"start": hhmm, "end": hhmm}}]},
            "digest": {"type": "string", "enum": ["off", "hourly", "daily"], "default": "off"}
        }
    });
    let problem = json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
    let learner = crate::openapi_reads::learner_path();
    let bad = json!({"description": "learner_id (or the notification id) is not a well-formed id", "content": problem});
    let errors = |extra: serde_json::Value| {
        let mut r = json!({
            "401": {"description": "Missing, expired or invalid token", "content": problem},
            "403": {"description": "The token may not read or change this learner", "content": problem},
            "503": {"description": "The store is unavailable; retry after `Retry-After`", "content": problem}
        });
        if let (Some(r), Some(extra)) = (r.as_object_mut(), extra.as_object()) {
            r.extend(extra.clone());
        }
        r
    };
    let prefs = json!({"application/json": {"schema": {"$ref": "#/components/schemas/NotificationPreferences"}}});
    let mut list = errors(json!({"200": {"description": "The inbox, newest first", "content": {"application/json": {"schema":
        {"type": "array", "items": {"$ref": "#/components/schemas/Notification"}}}}}}));
    list["400"] =
        json!({"description": "A parameter is invalid: `unread_only`, or learner_id is not a well-formed id", "content": problem});
    doc["paths"]["/v1/learners/{learner_id}/notifications"] = json!({"get": {
        "tags": ["read"], "summary": "A learner's in-app notifications (learner:read (own) or analytics:read)",
        "security": [{"bearer": []}],
        "parameters": [learner, {"name": "unread_only", "in": "query", "required": false, "schema": {"type": "boolean", "default": false}}],
        "responses": list
    }});
    doc["paths"]["/v1/learners/{learner_id}/notifications/{id}/read"] = json!({"post": {
        "tags": ["read"], "summary": "Marks a notification read (the learner itself or admin)",
        "security": [{"bearer": []}],
        "parameters": [learner, {"name": "id", "in": "path", "required": true,
                                 "schema": {"type": "string", "minLength": 1, "pattern": crate::openapi_reads::NO_CONTROL}}],
        "responses": errors(json!({"204": {"description": "Read (again: unchanged)"}, "400": bad,
                                   "404": {"description": "No such notification in the learner's inbox", "content": problem}}))
    }});
    doc["paths"]["/v1/learners/{learner_id}/notification-preferences"] = json!({
        "get": {
            "tags": ["read"], "summary": "A learner's notification preferences, defaults included (learner:read (own) or analytics:read)",
            "security": [{"bearer": []}], "parameters": [learner],
            "responses": errors(json!({"200": {"description": "The preferences", "content": prefs}, "400": bad}))
        },
        "put": {
            "tags": ["read"], "summary": "Replaces a learner's notification preferences (the learner itself or admin)",
            "security": [{"bearer": []}], "parameters": [learner],
            "requestBody": {"required": true, "content": prefs},
            "responses": errors(json!({
                "200": {"description": "Stored", "content": prefs},
                "400": {"description": "Malformed JSON, or learner_id is not a well-formed id", "content": problem},
                "410": {"description": "The learner was erased: nothing of them is stored again", "content": problem},
                "422": {"description": "Invalid preferences; `errors` names each field", "content": problem}
            }))
        }
    });
}
