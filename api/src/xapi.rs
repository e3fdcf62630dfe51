//! `POST /v1/xapi/statements`: xAPI 1.0.3 statements, received as a learning record store
//! (LRS) receives them, mapped onto the pipeline's events.
//!
//! `docs/xapi.md` documents the mapping with an example statement per verb; [`SUPPORTED`]
//! is the table the code follows, and the list sent with every unsupported statement.
//!
//! - Credentials: a bearer token, or (as LRS clients are often configured) `Basic` with the
//!   token as password.
//! - The request needs `X-Experience-API-Version: 1.0.x` (else 400, as an LRS answers);
//!   every answer carries `X-Experience-API-Version: 1.0.3`.
//! - The body is one statement or an array; the answer is 200 with the array of the ids of
//!   the accepted statements, in request order, as an LRS answers.
//! - `actor.account.name` is the learner id. The statement `id` is the event `id`; a
//!   statement without one gets a UUIDv5 of its tenant and content, so an emitter that
//!   resends the same statement (Moodle's logstore sends none) produces the same id and
//!   the processors drop the copy.
//! - Course ids come from the course activity (the object of registered/unregistered, else
//!   the course in `context.contextActivities`), lesson and assessment ids from the object.
//!   Activity ids are kept as IRIs, except Open edX usage keys (`course-v1:…`, `block-v1:…`),
//!   which are taken out of their IRI so that one course has one id whatever the route.
//! - Statements that cannot be mapped (unsupported verb, missing learner, score or course)
//!   are rejected one by one. When some statements of a batch are accepted, the answer is
//!   still 200 (emitters retry a failed batch as a whole, and would resend the rejected
//!   statements forever) and lists the rejected ones in `Lms-Rejected-Count` and
//!   `Lms-Rejected-Indexes`; when none is accepted, it is a 422 problem with every
//!   statement's errors and the supported verbs.

use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::header::AUTHORIZATION;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use lms_events::{Event, FieldError, Rejection, parse_client_event};
use serde_json::{Map, Value, json};
use uuid::Uuid;

use crate::AppState;
use crate::auth::{Authenticator, Claims, scope};
use crate::body;
use crate::ingest::{Rejected, nothing_valid};
use crate::problem::{Problem, ProblemDocument};
use crate::telemetry::RequestTrace;

/// The xAPI version this endpoint speaks.
pub const XAPI_VERSION: &str = "1.0.3";
/// The version header of xAPI requests and answers.
pub const VERSION_HEADER: &str = "x-experience-api-version";

/// Verb IRIs.
pub mod verbs {
    /// ADL `completed`.
    pub const COMPLETED: &str = "http://adlnet.gov/expapi/verbs/completed";
    /// ADL `initialized`.
    pub const INITIALIZED: &str = "http://adlnet.gov/expapi/verbs/initialized";
    /// ADL `scored`.
    pub const SCORED: &str = "http://adlnet.gov/expapi/verbs/scored";
    /// ADL `passed`.
    pub const PASSED: &str = "http://adlnet.gov/expapi/verbs/passed";
    /// ADL `failed`.
    pub const FAILED: &str = "http://adlnet.gov/expapi/verbs/failed";
    /// ADL `registered`.
    pub const REGISTERED: &str = "http://adlnet.gov/expapi/verbs/registered";
    /// Tin Can registry `unregistered`.
    pub const UNREGISTERED: &str = "http://id.tincanapi.com/verb/unregistered";
    /// ADL `terminated` (video profile: the player was closed).
    pub const TERMINATED: &str = "http://adlnet.gov/expapi/verbs/terminated";
    /// Video profile `played`.
    pub const PLAYED: &str = "https://w3id.org/xapi/video/verbs/played";
    /// Video profile `paused`.
    pub const PAUSED: &str = "https://w3id.org/xapi/video/verbs/paused";
    /// Video profile `seeked`.
    pub const SEEKED: &str = "https://w3id.org/xapi/video/verbs/seeked";
}

/// Activity types that matter to the mapping.
pub mod activity_types {
    /// Course activity types (ADL; Moodle's Tin Can LMS course).
    pub const COURSE: [&str; 2] = ["http://adlnet.gov/expapi/activities/course", "http://id.tincanapi.com/activitytype/lms/course"];
    /// The video profile's video.
    pub const VIDEO: &str = "https://w3id.org/xapi/video/activity-type/video";
}

/// Extension IRIs read by the mapping.
pub mod extensions {
    /// Video profile: the playhead position, seconds (result extension).
    pub const TIME: &str = "https://w3id.org/xapi/video/extensions/time";
    /// Video profile: the position a seek ended at, seconds (result extension).
    pub const TIME_TO: &str = "https://w3id.org/xapi/video/extensions/time-to";
    /// Video profile: the video's length, seconds (context extension).
    pub const LENGTH: &str = "https://w3id.org/xapi/video/extensions/length";
    /// Video profile: the segments played, `"0[.]12.5[,]30[.]45"` (result extension).
    pub const PLAYED_SEGMENTS: &str = "https://w3id.org/xapi/video/extensions/played-segments";
    /// Tin Can registry: the attempt number (object definition, context or result extension).
    pub const ATTEMPT: &str = "http://id.tincanapi.com/extension/attempt-id";
}

/// The supported verbs and what each statement becomes: the table `docs/xapi.md` explains.
pub const SUPPORTED: &[(&str, &str)] = &[
    (verbs::REGISTERED, "enrollment.created (object: a course activity)"),
    (verbs::UNREGISTERED, "enrollment.dropped (object: a course activity)"),
    (verbs::INITIALIZED, "lesson.started (object: any activity but a course)"),
    (verbs::COMPLETED, "lesson.completed; assessment.graded with result.score; video.progressed on a video"),
    (verbs::SCORED, "assessment.graded (needs result.score)"),
    (verbs::PASSED, "assessment.graded (needs result.score)"),
    (verbs::FAILED, "assessment.graded (needs result.score)"),
    (verbs::PLAYED, "video.progressed (object: a video)"),
    (verbs::PAUSED, "video.progressed (object: a video)"),
    (verbs::SEEKED, "video.progressed (object: a video)"),
    (verbs::TERMINATED, "video.progressed (object: a video)"),
];

/// Adds the `XapiStatement` schema (the members the mapping reads; others are allowed and
/// ignored) and makes the request body of `POST /v1/xapi/statements` one statement or an
/// array of them.
pub(crate) fn add_openapi(doc: &mut Value) {
    let verbs: Vec<&str> = SUPPORTED.iter().map(|(verb, _)| *verb).collect();
    let activity = json!({"type": "object", "required": ["id"], "properties": {
        "id": {"type": "string", "minLength": 1, "description": "Activity IRI (Open edX usage keys are taken out of it)"},
        "definition": {"type": "object", "properties": {"type": {"type": "string", "description": "Activity type IRI: course, video, …"}}}
    }});
    doc["components"]["schemas"]["XapiStatement"] = json!({
        "type": "object", "required": ["actor", "verb", "object"],
        "description": "An xAPI 1.0.3 statement, with the members the mapping onto events reads (docs/xapi.md); other \
                        members are allowed and ignored. Which event it becomes follows the verb and the object's \
                        activity type; a statement that cannot be mapped is rejected with JSON-pointer errors.",
        "properties": {
            "id": {"type": ["string", "null"], "format": "uuid", "description": "The statement id, which becomes the event id; \
                   derived from the tenant and the content when absent"},
            "actor": {"type": "object", "required": ["account"], "properties": {"account": {
                "type": "object", "required": ["name"], "properties": {
                    "name": {"type": "string", "minLength": 1, "maxLength": 128, "description": "The learner id"},
                    "homePage": {"type": "string", "description": "Becomes the event source"}
                }
            }}},
            "verb": {"type": "object", "required": ["id"], "properties": {"id": {"type": "string", "enum": verbs}}},
            "object": activity,
            "result": {"type": "object", "properties": {"score": {"type": "object", "properties": {
                "raw": {"type": "number"}, "min": {"type": "number"}, "max": {"type": "number"}, "scaled": {"type": "number"}
            }}}},
            "context": {"type": "object", "description": "contextActivities name the course of lesson, video and assessment statements"},
            "timestamp": {"type": "string", "format": "date-time", "description": "The event time; the time of receipt when absent"}
        }
    });
    let statement = json!({"$ref": "#/components/schemas/XapiStatement"});
    doc["paths"]["/v1/xapi/statements"]["post"]["requestBody"]["content"]["application/json"]["schema"] =
        json!({"oneOf": [statement, {"type": "array", "items": statement}]});
}

/// The namespace of the ids given to statements that have none (UUIDv5 of tenant and content).
const NAMESPACE: Uuid = Uuid::from_u128(0x6c6d_735f_7861_7069_5f73_7461_7465_6d31);

/// Escapes a member name for a JSON pointer (RFC 6901).
fn esc(name: &str) -> String {
    name.replace('~', "~0").replace('/', "~1")
}

/// Where each part of a statement is read from, for error pointers.
struct Sources {
    course: String,
    score: String,
    max_score: String,
    position: String,
    duration: String,
    watched: String,
    attempt: String,
}

/// Maps one statement onto an event of `tenant`; the errors point into the statement.
pub fn statement_to_event(statement: &Value, tenant: &str, now: DateTime<Utc>) -> Result<Event, Vec<FieldError>> {
    let Some(st) = statement.as_object() else {
        return Err(vec![FieldError::new("", "a statement must be a JSON object")]);
    };
    let mut errors = Vec::new();
    let id = match st.get("id") {
        None | Some(Value::Null) => Uuid::new_v5(&NAMESPACE, format!("{tenant}\n{}", canonical(statement)).as_bytes()).to_string(),
        Some(Value::String(s)) if Uuid::parse_str(s).is_ok() => s.to_ascii_lowercase(),
        Some(_) => {
            errors.push(FieldError::new("/id", "a statement id must be a UUID"));
            String::new()
        }
    };
    let learner = st.get("actor").and_then(|a| a.pointer("/account/name")).and_then(Value::as_str);
    if learner.is_none() {
        errors.push(FieldError::new(
            "/actor/account/name",
            "the learner id is read from actor.account.name; actors identified only by mbox, mbox_sha1sum or openid are not supported",
        ));
    }
    let verb = st.get("verb").and_then(|v| v.get("id")).and_then(Value::as_str);
    if verb.is_none() {
        errors.push(FieldError::new("/verb/id", "the required verb id is missing"));
    }
    let object = st.get("object");
    let object_id = object.and_then(|o| o.get("id")).and_then(Value::as_str);
    if object_id.is_none() {
        errors.push(FieldError::new("/object/id", "the required activity id is missing"));
    }
    let (Some(learner), Some(verb), Some(object_id)) = (learner, verb, object_id) else {
        return Err(errors);
    };
    let object_type = object.and_then(|o| o.pointer("/definition/type")).and_then(Value::as_str).unwrap_or("");
    let is_course = activity_types::COURSE.contains(&object_type);
    let is_video = object_type == activity_types::VIDEO;
    let score = st.get("result").and_then(|r| r.get("score"));

    let mut src = Sources {
        course: String::new(),
        score: "/result/score/raw".into(),
        max_score: "/result/score/max".into(),
        position: format!("/result/extensions/{}", esc(extensions::TIME)),
        duration: format!("/context/extensions/{}", esc(extensions::LENGTH)),
        watched: format!("/result/extensions/{}", esc(extensions::PLAYED_SEGMENTS)),
        attempt: String::new(),
    };
    let mut data = Map::new();
    data.insert("learner_id".into(), json!(learner));
    let unsupported = |why: &str| FieldError::new("/verb/id", format!("{why}; the supported verbs are: {}", supported_list()));
    let event_type = match verb {
        verbs::REGISTERED | verbs::UNREGISTERED => {
            if !is_course {
                errors.push(FieldError::new(
                    "/object/definition/type",
                    format!(
                        "{verb} maps to an enrollment only when its object is a course activity ({})",
                        activity_types::COURSE.join(" or ")
                    ),
                ));
            }
            src.course = "/object/id".into();
            data.insert("course_id".into(), json!(activity_key(object_id)));
            if verb == verbs::REGISTERED {
                data.insert("source".into(), json!("self"));
                "enrollment.created"
            } else {
                "enrollment.dropped"
            }
        }
        verbs::PLAYED | verbs::PAUSED | verbs::SEEKED | verbs::TERMINATED | verbs::COMPLETED if is_video => {
            video(st, verb, &mut src, &mut data, &mut errors);
            data.insert("lesson_id".into(), json!(activity_key(object_id)));
            "video.progressed"
        }
        verbs::PLAYED | verbs::PAUSED | verbs::SEEKED | verbs::TERMINATED => {
            errors.push(FieldError::new(
                "/object/definition/type",
                format!("{verb} is mapped only for video activities ({})", activity_types::VIDEO),
            ));
            "video.progressed"
        }
        verbs::SCORED | verbs::PASSED | verbs::FAILED => {
            graded(st, score, &mut src, &mut data, &mut errors);
            data.insert("assessment_id".into(), json!(activity_key(object_id)));
            "assessment.graded"
        }
        verbs::COMPLETED if score.is_some() && !is_course => {
            graded(st, score, &mut src, &mut data, &mut errors);
            data.insert("assessment_id".into(), json!(activity_key(object_id)));
            "assessment.graded"
        }
        verbs::COMPLETED | verbs::INITIALIZED if is_course => {
            errors.push(unsupported(&format!(
                "{verb} of a course is not accepted (course completion is derived by the pipeline from lesson completions)"
            )));
            return Err(errors);
        }
        verbs::COMPLETED => {
            data.insert("lesson_id".into(), json!(activity_key(object_id)));
            "lesson.completed"
        }
        verbs::INITIALIZED => {
            data.insert("lesson_id".into(), json!(activity_key(object_id)));
            "lesson.started"
        }
        other => {
            errors.push(unsupported(&format!("the verb {other} is not supported")));
            return Err(errors);
        }
    };
    if !data.contains_key("course_id") {
        match context_course(st) {
            Some((pointer, course)) => {
                src.course = pointer;
                data.insert("course_id".into(), json!(activity_key(course)));
            }
            None => errors.push(FieldError::new(
                "/context/contextActivities",
                format!(
                    "no course activity (definition.type {}) in contextActivities parent or grouping",
                    activity_types::COURSE.join(" or ")
                ),
            )),
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut event = Map::new();
    event.insert("specversion".into(), json!("1.0"));
    event.insert("id".into(), json!(id));
    event.insert("type".into(), json!(event_type));
    let source =
        st.get("actor").and_then(|a| a.pointer("/account/homePage")).and_then(Value::as_str).filter(|s| !s.is_empty() && s.len() <= 256);
    event.insert("source".into(), json!(source.unwrap_or("xapi")));
    let time = match st.get("timestamp") {
        Some(t) => t.clone(),
        None => json!(now.to_rfc3339_opts(SecondsFormat::Micros, true)),
    };
    event.insert("time".into(), time);
    event.insert("data".into(), Value::Object(data));
    parse_client_event(&Value::Object(event), tenant).map_err(|r| match r {
        Rejection::Invalid(errors) => errors.into_iter().map(|e| FieldError::new(statement_path(&e.path, &src), e.message)).collect(),
        Rejection::ForeignTenant { .. } => vec![FieldError::new("", "unexpected tenant")],
    })
}

/// The statement pointer of an event pointer.
fn statement_path(event_path: &str, src: &Sources) -> String {
    let field = event_path.strip_prefix("/data/").map(|f| f.split('/').next().unwrap_or(f));
    match (event_path, field) {
        ("/time", _) => "/timestamp".into(),
        ("/id", _) => "/id".into(),
        (_, Some("learner_id")) => "/actor/account/name".into(),
        (_, Some("course_id")) => src.course.clone(),
        (_, Some("lesson_id" | "assessment_id")) => "/object/id".into(),
        (_, Some("score")) => src.score.clone(),
        (_, Some("max_score")) => src.max_score.clone(),
        (_, Some("position_s")) => src.position.clone(),
        (_, Some("duration_s")) => src.duration.clone(),
        (_, Some("watched_s")) => src.watched.clone(),
        (_, Some("attempt")) => src.attempt.clone(),
        (other, _) => other.to_owned(),
    }
}

/// The supported verbs, for error messages.
fn supported_list() -> String {
    SUPPORTED.iter().map(|(verb, maps)| format!("{verb} → {maps}")).collect::<Vec<_>>().join("; ")
}

/// The course activity of the statement's context: (its pointer, its id).
fn context_course(st: &Map<String, Value>) -> Option<(String, &str)> {
    for group in ["parent", "grouping", "other"] {
        let Some(list) = st.get("context").and_then(|c| c.pointer(&format!("/contextActivities/{group}"))) else { continue };
        // A single activity is allowed in place of an array (xAPI 0.95 style).
        let items: Vec<&Value> = match list {
            Value::Array(a) => a.iter().collect(),
            other => vec![other],
        };
        for (i, a) in items.into_iter().enumerate() {
            let typ = a.pointer("/definition/type").and_then(Value::as_str).unwrap_or("");
            if let (true, Some(id)) = (activity_types::COURSE.contains(&typ), a.get("id").and_then(Value::as_str)) {
                let pointer = if list.is_array() {
                    format!("/context/contextActivities/{group}/{i}/id")
                } else {
                    format!("/context/contextActivities/{group}/id")
                };
                return Some((pointer, id));
            }
        }
    }
    None
}

/// The id of an activity: Open edX usage and course keys (`course-v1:…`, `block-v1:…`) are
/// taken out of their IRI, anything else is kept as is.
pub fn activity_key(iri: &str) -> &str {
    let trimmed = iri.trim_end_matches('/');
    match trimmed.rsplit('/').next() {
        Some(last) if ["course-v1:", "block-v1:"].iter().any(|p| last.starts_with(p)) => last,
        _ => iri,
    }
}

/// Reads `assessment.graded` data from `result.score` and an attempt extension.
fn graded(st: &Map<String, Value>, score: Option<&Value>, src: &mut Sources, data: &mut Map<String, Value>, errors: &mut Vec<FieldError>) {
    let Some(score) = score else {
        errors.push(FieldError::new("/result/score", "a graded statement needs result.score (raw with max, or scaled)"));
        return;
    };
    let num = |k: &str| score.get(k).and_then(Value::as_f64);
    match (num("raw"), num("max"), num("scaled")) {
        (Some(raw), Some(max), _) => {
            let min = num("min").unwrap_or(0.0);
            data.insert("score".into(), json!(raw - min));
            data.insert("max_score".into(), json!(max - min));
        }
        (Some(_), None, _) => errors.push(FieldError::new("/result/score/max", "result.score.max is needed with result.score.raw")),
        (None, _, Some(scaled)) => {
            src.score = "/result/score/scaled".into();
            src.max_score = "/result/score/scaled".into();
            data.insert("score".into(), json!(scaled));
            data.insert("max_score".into(), json!(1));
        }
        (None, _, None) => errors.push(FieldError::new("/result/score", "result.score needs raw (with max) or scaled")),
    }
    let places = [
        ("/object/definition/extensions", st.get("object").and_then(|o| o.pointer("/definition/extensions"))),
        ("/context/extensions", st.get("context").and_then(|c| c.get("extensions"))),
        ("/result/extensions", st.get("result").and_then(|r| r.get("extensions"))),
    ];
    let mut attempt = json!(1);
    for (at, ext) in places {
        if let Some(v) = ext.and_then(|e| e.get(extensions::ATTEMPT)) {
            src.attempt = format!("{at}/{}", esc(extensions::ATTEMPT));
            attempt = v.clone();
            break;
        }
    }
    data.insert("attempt".into(), attempt);
}

/// Reads `video.progressed` data from the video profile's extensions.
fn video(st: &Map<String, Value>, verb: &str, src: &mut Sources, data: &mut Map<String, Value>, errors: &mut Vec<FieldError>) {
    let result_ext = st.get("result").and_then(|r| r.get("extensions"));
    let position_key = if verb == verbs::SEEKED { extensions::TIME_TO } else { extensions::TIME };
    src.position = format!("/result/extensions/{}", esc(position_key));
    match result_ext.and_then(|e| e.get(position_key)) {
        // Older Open edX versions send the position as an ISO 8601 duration.
        Some(Value::String(iso)) => match iso_duration_s(iso) {
            Some(s) => {
                data.insert("position_s".into(), json!(s));
            }
            None => errors.push(FieldError::new(src.position.clone(), "must be a number of seconds or an ISO 8601 duration")),
        },
        Some(p) => {
            data.insert("position_s".into(), p.clone());
        }
        None => errors.push(FieldError::new(src.position.clone(), "the playhead position is missing")),
    }
    match st.get("context").and_then(|c| c.get("extensions")).and_then(|e| e.get(extensions::LENGTH)) {
        Some(Value::String(iso)) => match iso_duration_s(iso) {
            Some(s) => {
                data.insert("duration_s".into(), json!(s));
            }
            None => errors.push(FieldError::new(src.duration.clone(), "must be a number of seconds or an ISO 8601 duration")),
        },
        Some(length) => {
            data.insert("duration_s".into(), length.clone());
        }
        None => errors.push(FieldError::new(src.duration.clone(), "the video length is missing")),
    }
    // Seconds watched since the previous report: the segment this report closes (the last
    // of played-segments); a `played` statement opens a segment and closes none.
    let watched = if verb == verbs::PLAYED {
        0.0
    } else {
        result_ext.and_then(|e| e.get(extensions::PLAYED_SEGMENTS)).and_then(Value::as_str).and_then(last_segment_s).unwrap_or(0.0)
    };
    data.insert("watched_s".into(), json!(watched));
}

/// The length of the last segment of a played-segments value `"0[.]5[,]10[.]20"`.
fn last_segment_s(segments: &str) -> Option<f64> {
    let last = segments.rsplit("[,]").next()?;
    let (from, to) = last.split_once("[.]")?;
    let (from, to): (f64, f64) = (from.trim().parse().ok()?, to.trim().parse().ok()?);
    (to >= from).then_some(to - from)
}

/// Seconds of an ISO 8601 duration such as `PT3M15.5S` (days, hours, minutes, seconds).
fn iso_duration_s(s: &str) -> Option<f64> {
    let rest = s.strip_prefix('P')?;
    let (days, time) = rest.split_once('T').unwrap_or((rest, ""));
    let mut total = 0.0;
    let mut take = |part: &str, units: &[(char, f64)]| -> Option<()> {
        let mut number = String::new();
        for c in part.chars() {
            if c.is_ascii_digit() || c == '.' {
                number.push(c);
            } else {
                let factor = units.iter().find(|(u, _)| *u == c)?.1;
                total += number.parse::<f64>().ok()? * factor;
                number.clear();
            }
        }
        number.is_empty().then_some(())
    };
    take(days, &[('D', 86_400.0)])?;
    take(time, &[('H', 3_600.0), ('M', 60.0), ('S', 1.0)])?;
    Some(total)
}

/// The statement as canonical JSON (object members sorted), the input of content ids.
fn canonical(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            let members: Vec<String> = keys.into_iter().map(|k| format!("{}:{}", Value::from(k.as_str()), canonical(&map[k]))).collect();
            format!("{{{}}}", members.join(","))
        }
        Value::Array(items) => format!("[{}]", items.iter().map(canonical).collect::<Vec<_>>().join(",")),
        other => other.to_string(),
    }
}

/// Send xAPI statements
///
/// One xAPI 1.0.3 statement or an array, as an LRS receives them; mapped onto events (see
/// `docs/xapi.md`). The answer lists the ids of the accepted statements. Statements that
/// cannot be mapped are rejected one by one: listed in `Lms-Rejected-Count` and
/// `Lms-Rejected-Indexes` when others are accepted, a 422 with every error when none is.
#[utoipa::path(
    post,
    path = "/v1/xapi/statements",
    tag = "write",
    security(("bearer" = ["events:write"]), ("basic" = ["events:write"])),
    params(("X-Experience-API-Version" = String, Header, description = "1.0.3 (any 1.0.x)", pattern = "^1\\.0(\\.[0-9]+)?$")),
    request_body(description = "A statement or an array of statements", content(("application/json"))),
    responses(
        (status = 200, description = "The ids of the accepted statements, durably on the broker", body = Vec<String>,
            headers(("Lms-Rejected-Count" = u32, description = "Statements not accepted (only when some were)"),
                    ("Lms-Rejected-Indexes" = String, description = "Their indexes, comma-separated"))),
        (status = 400, description = "Malformed JSON or missing version header", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "Scope missing", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body or batch too large", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "No statement could be mapped", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Tenant rate limit exhausted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable or backpressure", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn post_statements(
    State(state): State<Arc<AppState>>,
    Extension(auth): Extension<Arc<Authenticator>>,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    request_body: Body,
) -> Response {
    let header = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    let result = match auth.verify_header_or_basic(header).await {
        Ok(claims) => {
            tracing::Span::current().record("tenant", claims.tenant.as_str());
            statements(state, claims, trace, headers, request_body).await
        }
        Err(e) => Err(Problem::unauthorized(e.to_string())),
    };
    let mut response = match result {
        Ok(r) => r,
        Err(p) => p.into_response(),
    };
    response.headers_mut().insert(VERSION_HEADER, HeaderValue::from_static(XAPI_VERSION));
    response
}

async fn statements(
    state: Arc<AppState>,
    claims: Claims,
    trace: lms_events::TraceContext,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, Problem> {
    claims.require(scope::EVENTS_WRITE)?;
    let version = headers.get(VERSION_HEADER).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !(version == "1.0" || version.strip_prefix("1.0.").is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))) {
        return Err(Problem::bad_request(format!(
            "the X-Experience-API-Version header must be 1.0.x (this endpoint speaks {XAPI_VERSION}); got {version:?}"
        )));
    }
    state.admit_claims(&claims)?;
    let format = body::format(&headers, false)?;
    let config = &state.config;
    let bytes = body::read(request_body, &headers, config.max_body_bytes, config.body_timeout()).await?;
    let items = body::parse(&bytes, format, config.max_batch_events, config.max_event_bytes)?;
    drop(bytes);
    let single = items.single;
    let tenant = claims.tenant.clone();
    let map = move || {
        let now = Utc::now();
        let mut events = Vec::new();
        let mut rejected = Vec::new();
        for (index, item) in items.items.into_iter().enumerate() {
            match item.map_err(|e| vec![e]).and_then(|v| statement_to_event(&v, &tenant, now)) {
                Ok(e) => events.push(e),
                Err(errors) => rejected.push(Rejected { index, errors }),
            }
        }
        (events, rejected)
    };
    let (events, rejected) = if single {
        map()
    } else {
        tokio::task::spawn_blocking(map).await.map_err(|_| Problem::internal("mapping failed unexpectedly"))?
    };
    state.metrics.count_events(0, rejected.len(), 0);
    if events.is_empty() {
        return Err(if single {
            Problem::unprocessable("the statement cannot be accepted", rejected.into_iter().flat_map(|r| r.errors).collect())
        } else {
            nothing_valid(rejected, "statements")
        });
    }
    for r in &rejected {
        tracing::info!(index = r.index, errors = ?r.errors, "xAPI statement rejected");
    }
    let ids = state.produce(events, trace).await?;
    let mut response = (StatusCode::OK, Json(ids)).into_response();
    if !rejected.is_empty() {
        let indexes = rejected.iter().map(|r| r.index.to_string()).collect::<Vec<_>>().join(",");
        let h = response.headers_mut();
        h.insert("lms-rejected-count", HeaderValue::from(rejected.len()));
        if let Ok(v) = HeaderValue::from_str(&indexes) {
            h.insert("lms-rejected-indexes", v);
        }
    }
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use lms_events::EventData;

    #[test]
    fn helpers() {
        assert_eq!(iso_duration_s("PT3M15S"), Some(195.0));
        assert_eq!(iso_duration_s("P1DT1H0.5S"), Some(90_000.5));
        assert_eq!(iso_duration_s("3M"), None);
        assert_eq!(iso_duration_s("PT3X"), None);
        assert_eq!(last_segment_s("0[.]5.5[,]10[.]20.25"), Some(10.25));
        assert_eq!(last_segment_s("nonsense"), None);
        assert_eq!(activity_key("http://localhost:18000/course/course-v1:edX+DemoX+Demo_Course"), "course-v1:edX+DemoX+Demo_Course");
        assert_eq!(activity_key("http://localhost:18000/courses/course-v1:edX+DemoX+Demo_Course/"), "course-v1:edX+DemoX+Demo_Course");
        assert_eq!(activity_key("http://www.example.org/course/view.php?id=1"), "http://www.example.org/course/view.php?id=1");
        assert_eq!(canonical(&json!({"b": [1, {"d": 1, "c": "x"}], "a": null})), r#"{"a":null,"b":[1,{"c":"x","d":1}]}"#);
    }

    #[test]
    fn ids_are_kept_or_derived_from_content() {
        let st = json!({
            "actor": {"account": {"homePage": "https://lms.example.org", "name": "42"}},
            "verb": {"id": verbs::INITIALIZED},
            "object": {"id": "https://lms.example.org/lesson/1"},
            "context": {"contextActivities": {"parent": [{"id": "https://lms.example.org/c/1", "definition": {"type": activity_types::COURSE[0]}}]}},
            "timestamp": "2026-11-20T10:15:00Z"
        });
        let now = Utc::now();
        let a = statement_to_event(&st, "acme", now).unwrap();
        assert_eq!(a, statement_to_event(&st, "acme", now).unwrap(), "the same content gets the same id");
        assert_ne!(a.id, statement_to_event(&st, "globex", now).unwrap().id);
        assert!(
            matches!(a.data, EventData::LessonStarted(ref l) if l.lesson_id == "https://lms.example.org/lesson/1" && l.course_id == "https://lms.example.org/c/1" && l.learner_id == "42")
        );
        let mut with_id = st.clone();
        with_id["id"] = json!("6D1F033B-3F70-458C-B53A-E6BB63CBAEF9");
        assert_eq!(statement_to_event(&with_id, "acme", now).unwrap().id, "6d1f033b-3f70-458c-b53a-e6bb63cbaef9");
        with_id["id"] = json!("not-a-uuid");
        assert_eq!(statement_to_event(&with_id, "acme", now).unwrap_err()[0].path, "/id");
    }
}
