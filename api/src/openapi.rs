//! The OpenAPI 3.1 document, generated from the handlers' annotations and types.
//!
//! utoipa describes the routes, their parameters and the response types (the read models'
//! types derive their schemas in their own crates, behind the `openapi` feature of
//! processors, lms-analytics and lms-events); the event input schema, generated
//! by `lms-events` from the event types, is added as the `ClientEvent` component (its
//! `$defs` become components too). The document is committed as `api/openapi.json`; the
//! test `openapi_json_is_current` keeps it in step (`LMS_BLESS=1 cargo test -p api`
//! rewrites it).

use serde_json::{Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

#[derive(OpenApi)]
#[openapi(
    info(
        title = "lms-pipeline API",
        description = "The HTTP services of lms-pipeline: events, xAPI statements, enrollments and payment webhooks in; \
                       learner progress, achievements, notifications and analytics out; and the operations routes. \
                       See docs/CONTRACT.md.",
        license(name = "Apache-2.0")
    ),
    paths(
        crate::events::post_events,
        crate::xapi::post_statements,
        crate::enrollments::post_enrollment,
        crate::enrollments::delete_enrollment,
        crate::webhook::post_webhook,
        crate::erasure::delete_learner,
        crate::ops::livez,
        crate::ops::readyz,
        crate::ops::metrics,
        crate::ops::openapi,
        crate::learners::get_progress,
        crate::learners::get_achievements,
        crate::notifications::list,
        crate::notifications::mark_read,
        crate::notifications::get_preferences,
        crate::notifications::put_preferences,
        crate::analytics::active_learners,
        crate::analytics::enrollments,
        crate::analytics::completions,
        crate::analytics::revenue,
        crate::analytics::funnel,
        crate::analytics::at_risk,
        crate::analytics::scores,
        crate::credentials::get_credential,
        crate::credentials::revoke_credential,
        crate::credentials::get_profile,
        crate::credentials::get_jwks,
        crate::credentials::get_status_list,
    ),
    modifiers(&Security),
    tags(
        (name = "write", description = "Write services: authenticate, validate, put on the right topic, answer"),
        (name = "operations", description = "Liveness, readiness, metrics, this document"),
        (name = "read", description = "Learner resources from the processors' state store"),
        (name = "analytics", description = "Analytics from the analytics store (ClickHouse or the embedded twin)"),
        (name = "credentials", description = "Achievements as Open Badges 3.0 credentials")
    )
)]
struct ApiDoc;

struct Security;

impl Modify for Security {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some("HS256 token with claims sub, tenant, scope (space-separated), exp"))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "basic",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Basic)
                    .description(Some(
                        "xAPI only: any user name, the bearer token as password (for LRS clients configured with key and secret)",
                    ))
                    .build(),
            ),
        );
    }
}

/// The OpenAPI document as JSON.
pub fn document() -> Value {
    let mut doc = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
    doc["info"]["version"] = json!("v1");
    let mut input = lms_events::input_event_schema();
    let defs = input.as_object_mut().and_then(|o| o.remove("$defs")).unwrap_or_else(|| json!({}));
    if let Some(o) = input.as_object_mut() {
        o.remove("$schema");
    }
    rewrite_refs(&mut input);
    data_by_type(&mut input);
    let schemas = &mut doc["components"]["schemas"];
    if let Value::Object(defs) = defs {
        for (name, mut schema) in defs {
            rewrite_refs(&mut schema);
            debug_assert!(schemas.get(&name).is_none(), "schema name {name} is used twice");
            schemas[name.as_str()] = schema;
        }
    }
    schemas["ClientEvent"] = input;
    schemas["ClientEventBatch"] = json!({
        "type": "array", "maxItems": 1000, "minItems": 1,
        "items": {"$ref": "#/components/schemas/ClientEvent"},
        "description": "A batch of at most 1000 events."
    });
    schemas["ClientEventOrBatch"] = json!({
        "oneOf": [{"$ref": "#/components/schemas/ClientEvent"}, {"$ref": "#/components/schemas/ClientEventBatch"}],
        "description": "One event, or a batch of at most 1000."
    });
    crate::xapi::add_openapi(&mut doc);
    doc
}

/// Says "the shape of `data` follows `type`" as a `oneOf` with one branch per type
/// (`{"properties": {"type": {"const": T}, "data": D}}`) instead of the generated `allOf` of
/// `if`/`then` pairs. Both admit the same events, because `type` is required and one of
/// exactly those `T`; but eleven `if`/`then` pairs expand to 2^11 cases, more than
/// generators and many validators follow (schemathesis refused the operation with "Schema
/// Error"). Leaves the schema as it is unless it has exactly that shape.
fn data_by_type(event: &mut Value) {
    let required = event["required"].as_array().is_some_and(|r| r.iter().any(|n| n == "type"));
    let Some(types) = event["properties"]["type"]["enum"].as_array().cloned() else { return };
    let Some(pairs) = event["allOf"].as_array() else { return };
    let mut branches = Vec::new();
    for pair in pairs {
        let only_type = pair["if"]["required"] == json!(["type"])
            && pair["if"]["properties"].as_object().is_some_and(|p| p.len() == 1)
            && pair["then"]["properties"].as_object().is_some_and(|p| p.len() == 1);
        let (t, data) = (&pair["if"]["properties"]["type"]["const"], &pair["then"]["properties"]["data"]);
        if !only_type || pair.get("else").is_some() || t.is_null() || data.is_null() {
            return;
        }
        let mut branch = json!({"properties": {"type": {"const": t}, "data": data}});
        if let Some(d) = pair.get("description") {
            branch["description"] = d.clone();
        }
        branches.push((t.clone(), branch));
    }
    let mut consts: Vec<String> = branches.iter().map(|(t, _)| t.to_string()).collect();
    let mut all: Vec<String> = types.iter().map(Value::to_string).collect();
    consts.sort();
    all.sort();
    if !required || consts != all {
        return;
    }
    if let Some(o) = event.as_object_mut() {
        o.remove("allOf");
        o.insert("oneOf".to_owned(), Value::Array(branches.into_iter().map(|(_, b)| b).collect()));
    }
}

/// Points `#/$defs/X` references at `#/components/schemas/X`.
fn rewrite_refs(value: &mut Value) {
    match value {
        Value::Object(o) => {
            for (k, v) in o.iter_mut() {
                match v {
                    Value::String(s) if k == "$ref" => {
                        if let Some(name) = s.strip_prefix("#/$defs/") {
                            *s = format!("#/components/schemas/{name}");
                        }
                    }
                    _ => rewrite_refs(v),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(rewrite_refs),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed `api/openapi.json` is the generated document.
    #[test]
    fn openapi_json_is_current() {
        // The runtime variable, not `env!`: see `tests::repo_root`.
        let dir = std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (run by cargo test)");
        let path = std::path::PathBuf::from(dir).join("openapi.json");
        let generated = format!("{}\n", serde_json::to_string_pretty(&document()).unwrap());
        if std::env::var_os("LMS_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(committed == generated, "api/openapi.json is stale: run `LMS_BLESS=1 cargo test -p api` and commit it");
    }

    #[test]
    fn every_route_and_reference_is_there() {
        let doc = document();
        assert_eq!(doc["openapi"], "3.1.0");
        for path in [
            "/v1/learners/{learner_id}/progress",
            "/v1/analytics/courses/{course_id}/funnel",
            "/v1/events",
            "/v1/xapi/statements",
            "/v1/enrollments",
            "/v1/enrollments/{learner_id}/{course_id}",
            "/v1/payments/webhook",
            "/livez",
            "/readyz",
            "/metrics",
            "/openapi.json",
        ] {
            assert!(doc["paths"].get(path).is_some(), "{path} is documented");
        }
        let text = doc.to_string();
        for (i, _) in text.match_indices("\"$ref\":\"#/components/schemas/") {
            let name: String = text[i + "\"$ref\":\"#/components/schemas/".len()..].chars().take_while(|c| *c != '"').collect();
            assert!(doc["components"]["schemas"].get(&name).is_some(), "{name} is referenced but missing");
        }
        assert!(!text.contains("#/$defs/"));
    }

    /// The event schema names the data schema of each type once, in a `oneOf` over `type`,
    /// and says the same as the generated `if`/`then` pairs.
    #[test]
    fn event_data_follows_its_type_in_one_branch_each() {
        let doc = document();
        let event = &doc["components"]["schemas"]["ClientEvent"];
        assert!(event.get("allOf").is_none(), "{event}");
        let branches = event["oneOf"].as_array().expect("oneOf");
        let types = event["properties"]["type"]["enum"].as_array().expect("type enum");
        assert_eq!(branches.len(), types.len());
        let mut generated = lms_events::input_event_schema();
        rewrite_refs(&mut generated);
        for (branch, pair) in branches.iter().zip(generated["allOf"].as_array().expect("allOf")) {
            assert_eq!(branch["properties"]["type"]["const"], pair["if"]["properties"]["type"]["const"]);
            assert_eq!(branch["properties"]["data"], pair["then"]["properties"]["data"]);
        }
    }
}
