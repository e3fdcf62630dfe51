//! The read routes of the OpenAPI document. Their handlers live in [`crate::learners`] and
//! [`crate::analytics`] and answer with types of other crates (processors, lms-analytics),
//! which do not depend on utoipa; so their paths and schemas are written here, once, in
//! the contract's shape (docs/CONTRACT.md, "Read endpoints"). `api_read_shapes` in the
//! tests compares real answers with these schemas.

use crate::analytics::params;
use serde_json::{Value, json};

fn date_time(nullable: bool) -> Value {
    if nullable { json!({"type": ["string", "null"], "format": "date-time"}) } else { json!({"type": "string", "format": "date-time"}) }
}

fn object(required: &[&str], properties: Value) -> Value {
    json!({"type": "object", "required": required, "properties": properties})
}

fn count() -> Value {
    json!({"type": "integer", "minimum": 0})
}

fn schemas() -> Vec<(&'static str, Value)> {
    let bucket = json!({"type": "string", "format": "date", "description": "First UTC day of the day, week (Monday) or month"});
    let pct = json!({"type": "number", "minimum": 0, "maximum": 100});
    let pct_or_null = json!({"type": ["number", "null"], "minimum": 0, "maximum": 100});
    vec![
        (
            "LearnerProgress",
            object(
                &[
                    "course_id",
                    "status",
                    "lessons_completed",
                    "lessons_total",
                    "percent_complete",
                    "time_spent_s",
                    "last_activity_at",
                    "completed_at",
                ],
                json!({
                    "course_id": {"type": "string"},
                    "status": {"type": "string", "enum": ["not_started", "in_progress", "completed"]},
                    "lessons_completed": count(), "lessons_total": count(),
                    "percent_complete": {"type": "number", "minimum": 0, "maximum": 100, "description": "One decimal"},
                    "time_spent_s": {"type": "number", "minimum": 0},
                    "last_activity_at": date_time(true), "completed_at": date_time(true)
                }),
            ),
        ),
        (
            "LearnerAchievement",
            object(
                &["achievement_id", "title", "unlocked_at"],
                json!({"achievement_id": {"type": "string"}, "title": {"type": "string"}, "unlocked_at": date_time(false), "course_id": {"type": "string"}}),
            ),
        ),
        ("ActiveLearnersPoint", object(&["bucket", "active_learners"], json!({"bucket": bucket, "active_learners": count()}))),
        (
            "EnrollmentsPoint",
            object(&["bucket", "enrollments", "drops"], json!({"bucket": bucket, "enrollments": count(), "drops": count()})),
        ),
        ("CompletionsPoint", object(&["bucket", "completions"], json!({"bucket": bucket, "completions": count()}))),
        (
            "RevenuePoint",
            object(
                &["bucket", "currency", "gross_minor", "refunds_minor", "net_minor"],
                json!({"bucket": bucket, "currency": {"type": "string", "pattern": "^[A-Z]{3}$"},
                   "gross_minor": {"type": "integer"}, "refunds_minor": {"type": "integer"}, "net_minor": {"type": "integer"}}),
            ),
        ),
        (
            "Funnel",
            object(
                &["enrolled", "started", "reached_25", "reached_50", "reached_75", "completed"],
                json!({"enrolled": count(), "started": count(), "reached_25": count(), "reached_50": count(), "reached_75": count(), "completed": count()}),
            ),
        ),
        (
            "Scores",
            object(
                &["attempts", "learners", "mean_pct", "p50_pct", "p90_pct", "histogram"],
                json!({"attempts": count(), "learners": count(), "mean_pct": pct_or_null, "p50_pct": pct_or_null, "p90_pct": pct_or_null,
                   "histogram": {"type": "array", "items": object(&["from_pct", "to_pct", "count"],
                       json!({"from_pct": count(), "to_pct": count(), "count": count()}))}}),
            ),
        ),
        (
            "AtRiskLearner",
            object(
                &["learner_id", "percent_complete", "last_activity_at"],
                json!({"learner_id": {"type": "string"}, "percent_complete": pct, "last_activity_at": date_time(true)}),
            ),
        ),
    ]
}

fn query(name: &str, required: bool, schema: Value, description: &str) -> Value {
    json!({"name": name, "in": "query", "required": required, "schema": schema, "description": description})
}

fn path(name: &str) -> Value {
    json!({"name": name, "in": "path", "required": true, "schema": {"type": "string", "minLength": 1, "maxLength": 128}})
}

/// The pattern of ids that are refused with a control character (U+0000 to U+001F, U+007F
/// to U+009F: PostgreSQL stores no NUL in text).
pub(crate) const NO_CONTROL: &str = "^[^\\x00-\\x1F\\x7F-\\x9F]*$";

/// The `learner_id` path parameter of the learner routes: 1 to 128 characters, none a
/// control character (else 400, see [`crate::learners::check_learner`]).
pub(crate) fn learner_path() -> Value {
    json!({"name": "learner_id", "in": "path", "required": true,
           "schema": {"type": "string", "minLength": 1, "maxLength": 128, "pattern": NO_CONTROL}})
}

fn series_params(revenue: bool) -> Vec<Value> {
    let mut p = vec![
        query("from", true, json!({"type": "string", "format": "date"}), "First day (UTC), inclusive"),
        query(
            "to",
            true,
            json!({"type": "string", "format": "date"}),
            &format!("Last day (UTC), inclusive; not before `from`, at most {} days after it", params::MAX_RANGE_DAYS - 1),
        ),
        query("granularity", false, json!({"type": "string", "enum": ["day", "week", "month"], "default": "day"}), "Bucket size"),
        query("course_id", false, json!({"type": "string", "minLength": 1, "maxLength": 128}), "Only this course"),
    ];
    if revenue {
        p.push(query("currency", false, json!({"type": "string", "pattern": "^[A-Z]{3}$"}), "Only this ISO 4217 currency"));
    }
    p
}

fn get(tag: &str, summary: &str, parameters: Vec<Value>, schema: Value) -> Value {
    let problem = json!({"application/problem+json": {"schema": {"$ref": "#/components/schemas/Problem"}}});
    json!({"get": {
        "tags": [tag], "summary": summary, "parameters": parameters,
        "security": [{"bearer": []}],
        "responses": {
            "200": {"description": "OK", "content": {"application/json": {"schema": schema}}},
            "400": {"description": "A parameter is invalid; `errors` names each one", "content": problem},
            "401": {"description": "Missing, expired or invalid token", "content": problem},
            "403": {"description": "The token may not read this", "content": problem},
            "503": {"description": "The store is unavailable; retry after `Retry-After`", "content": problem}
        }
    }})
}

fn list_of(name: &str) -> Value {
    json!({"type": "array", "items": {"$ref": format!("#/components/schemas/{name}")}})
}

fn one(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// Adds the read routes and their schemas to `doc`.
pub(crate) fn add(doc: &mut Value) {
    for (name, schema) in schemas() {
        doc["components"]["schemas"][name] = schema;
    }
    let learner = "learner:read (own) or analytics:read";
    let analytics = "analytics:read";
    let at_risk = vec![
        path("course_id"),
        query(
            "inactive_days",
            false,
            json!({"type": "integer", "minimum": 0, "maximum": params::MAX_INACTIVE_DAYS, "default": params::DEFAULT_INACTIVE_DAYS}),
            "Days without learning activity",
        ),
        query("as_of", false, json!({"type": "string", "format": "date-time"}), "Reference time (default now), in the years 1970 to 2199"),
        query(
            "limit",
            false,
            json!({"type": "integer", "minimum": 1, "maximum": params::MAX_AT_RISK_LIMIT, "default": params::DEFAULT_AT_RISK_LIMIT}),
            "Most learners returned",
        ),
    ];
    let scores = vec![
        path("assessment_id"),
        query("from", false, json!({"type": "string", "format": "date"}), "First day (with `to`)"),
        query(
            "to",
            false,
            json!({"type": "string", "format": "date"}),
            &format!("Last day (with `from`; not before it, at most {} days after it)", params::MAX_RANGE_DAYS - 1),
        ),
        query("course_id", false, json!({"type": "string", "minLength": 1, "maxLength": 128}), "Only this course"),
    ];
    let routes = [
        (
            "/v1/learners/{learner_id}/progress",
            get("read", &format!("A learner's progress per course ({learner})"), vec![learner_path()], list_of("LearnerProgress")),
        ),
        (
            "/v1/learners/{learner_id}/achievements",
            get("read", &format!("A learner's achievements ({learner})"), vec![learner_path()], list_of("LearnerAchievement")),
        ),
        (
            "/v1/analytics/active-learners",
            get(
                "analytics",
                &format!("Distinct active learners per bucket ({analytics})"),
                series_params(false),
                list_of("ActiveLearnersPoint"),
            ),
        ),
        (
            "/v1/analytics/enrollments",
            get("analytics", &format!("Enrollments and drops per bucket ({analytics})"), series_params(false), list_of("EnrollmentsPoint")),
        ),
        (
            "/v1/analytics/completions",
            get("analytics", &format!("Course completions per bucket ({analytics})"), series_params(false), list_of("CompletionsPoint")),
        ),
        (
            "/v1/analytics/revenue",
            get(
                "analytics",
                &format!("Gross, refunded and net revenue per bucket and currency ({analytics})"),
                series_params(true),
                list_of("RevenuePoint"),
            ),
        ),
        (
            "/v1/analytics/courses/{course_id}/funnel",
            get("analytics", &format!("A course's funnel ({analytics})"), vec![path("course_id")], one("Funnel")),
        ),
        (
            "/v1/analytics/courses/{course_id}/at-risk",
            get(
                "analytics",
                &format!("Inactive learners of a course, oldest activity first ({analytics})"),
                at_risk,
                list_of("AtRiskLearner"),
            ),
        ),
        (
            "/v1/analytics/assessments/{assessment_id}/scores",
            get("analytics", &format!("Score statistics of an assessment ({analytics})"), scores, one("Scores")),
        ),
    ];
    for (route, item) in routes {
        doc["paths"][route] = item;
    }
    if let Some(tags) = doc["tags"].as_array_mut() {
        tags.push(json!({"name": "read", "description": "Learner resources from the processors' state store"}));
        tags.push(json!({"name": "analytics", "description": "Analytics from the analytics store (ClickHouse or the embedded twin)"}));
    }
}
