//! The JSON Schemas of events, generated from the Rust types.
//!
//! Two schemas describe the two views of an event:
//!
//! - [`event_schema`] is the envelope as it travels on the topics: complete (`id` and `tenant`
//!   required), all sixteen types, one `oneOf` branch per type. It is open: readers ignore
//!   attributes and fields they do not know, so that older processors can read events from
//!   newer producers.
//! - [`input_event_schema`] is what a client may send: `id` and `tenant` optional, only the
//!   eleven client-writable types, and strict (`additionalProperties: false` everywhere except
//!   for the `traceparent` and `tracestate` extension attributes, which are allowed and ignored).
//!   The type branches are written as `if`/`then` pairs keyed on `type` rather than `oneOf`, so
//!   that a validator reports the errors inside `data` with their paths instead of a single
//!   "matches no branch" error.
//!
//! Both are checked into `schemas/` at the workspace root; the unit test `schemas_are_current`
//! keeps the files in step with the types (`LMS_BLESS=1 cargo test -p lms-events` rewrites them).

use std::collections::BTreeSet;

use serde_json::{Map, Value, json};

use crate::event::{Event, EventType};

/// Returns the JSON Schema (draft 2020-12) of the event envelope as it travels on the topics,
/// covering all sixteen types with one `oneOf` branch per type.
pub fn event_schema() -> Value {
    let mut schema = schemars::schema_for!(Event).to_value();
    tidy(&mut schema);
    schema
}

/// Returns the JSON Schema (draft 2020-12) of an event as a client sends it: client-writable
/// types only, `id` and `tenant` optional, unknown attributes and fields rejected.
pub fn input_event_schema() -> Value {
    let mut schema = event_schema();
    make_input(&mut schema);
    schema
}

/// The description of the input schema's root.
const INPUT_DESCRIPTION: &str = "An event as a client sends it to `POST /v1/events`: a \
CloudEvents 1.0 envelope around the data of one client-writable type. `id` is optional (the \
service assigns a UUIDv7 when it is absent); `tenant` is optional and, when present, must be the \
tenant of the credentials; `subject`, when present, must equal `data.learner_id`. The \
`traceparent` and `tracestate` extension attributes are allowed and ignored; any other unknown \
attribute or data field is an error.";

/// Applies the adjustments both schemas share: enums of documented string constants become
/// `enum` lists (with the value documentation folded into the description), and unsigned
/// 32-bit integers get their upper bound.
fn tidy(value: &mut Value) {
    match value {
        Value::Object(object) => {
            constant_one_of_to_enum(object);
            if object.get("format").and_then(Value::as_str) == Some("uint32") && !object.contains_key("maximum") {
                object.insert("maximum".to_owned(), json!(u32::MAX));
            }
            object.values_mut().for_each(tidy);
        }
        Value::Array(items) => items.iter_mut().for_each(tidy),
        _ => {}
    }
}

/// Rewrites `{"oneOf": [{"const": "a", "description": …}, …]}` (how schemars renders a unit
/// enum with documented variants) into `{"type": "string", "enum": ["a", …]}`.
fn constant_one_of_to_enum(object: &mut Map<String, Value>) {
    let Some(Value::Array(branches)) = object.get("oneOf") else {
        return;
    };
    let mut values = Vec::new();
    let mut notes = Vec::new();
    for branch in branches {
        let Some(constant) = branch.get("const").and_then(Value::as_str) else {
            return;
        };
        values.push(json!(constant));
        if let Some(description) = branch.get("description").and_then(Value::as_str) {
            notes.push(format!("- `{constant}`: {description}"));
        }
    }
    object.remove("oneOf");
    object.insert("type".to_owned(), json!("string"));
    object.insert("enum".to_owned(), Value::Array(values));
    if !notes.is_empty() {
        let mut description = object.get("description").and_then(Value::as_str).map(|d| format!("{d}\n\n")).unwrap_or_default();
        description.push_str(&notes.join("\n"));
        object.insert("description".to_owned(), json!(description));
    }
}

/// Turns the topic schema into the strict client-input schema.
fn make_input(schema: &mut Value) {
    let Some(root) = schema.as_object_mut() else {
        return;
    };
    root.insert("title".to_owned(), json!("EventInput"));
    root.insert("description".to_owned(), json!(INPUT_DESCRIPTION));

    // One if/then pair per client-writable type instead of the topic schema's oneOf.
    let branches = match root.remove("oneOf") {
        Some(Value::Array(branches)) => branches,
        _ => Vec::new(),
    };
    let mut pairs = Vec::new();
    for branch in branches {
        let Some(name) = branch.pointer("/properties/type/const").and_then(Value::as_str) else {
            continue;
        };
        if !name.parse::<EventType>().is_ok_and(EventType::is_client_writable) {
            continue;
        }
        let data = branch.pointer("/properties/data").cloned().unwrap_or_else(|| json!({}));
        let mut pair = Map::new();
        if let Some(description) = branch.get("description") {
            pair.insert("description".to_owned(), description.clone());
        }
        pair.insert("if".to_owned(), json!({"properties": {"type": {"const": name}}, "required": ["type"]}));
        pair.insert("then".to_owned(), json!({"properties": {"data": data}}));
        pairs.push(Value::Object(pair));
    }
    root.insert("allOf".to_owned(), Value::Array(pairs));

    if let Some(Value::Object(properties)) = root.get_mut("properties") {
        let writable: Vec<&str> = EventType::client_writable().map(EventType::as_str).collect();
        properties.insert(
            "type".to_owned(),
            json!({
                "description": "The event type; one of the client-writable types.",
                "enum": writable,
            }),
        );
        properties
            .insert("data".to_owned(), json!({"description": "The data of the event; its shape depends on `type`.", "type": "object"}));
        properties.insert(
            "traceparent".to_owned(),
            json!({"description": "W3C trace context (CloudEvents distributed tracing extension); allowed and ignored.", "type": "string"}),
        );
        properties.insert(
            "tracestate".to_owned(),
            json!({"description": "W3C trace state (CloudEvents distributed tracing extension); allowed and ignored.", "type": "string"}),
        );
        if let Some(id) = properties.get_mut("id").and_then(Value::as_object_mut) {
            id.insert(
                "description".to_owned(),
                json!("The idempotency key, unique per tenant; optional: the service assigns a UUIDv7 when it is absent."),
            );
        }
        if let Some(subject) = properties.get_mut("subject").and_then(Value::as_object_mut) {
            subject.insert(
                "description".to_owned(),
                json!("The learner id for learner events; when present it must equal `data.learner_id`, when absent it is set to it."),
            );
        }
        if let Some(tenant) = properties.get_mut("tenant").and_then(Value::as_object_mut) {
            tenant.insert(
                "description".to_owned(),
                json!("The tenant; optional, and when present it must be the tenant of the credentials (else 403)."),
            );
        }
    }
    let mut required: Vec<Value> = match root.remove("required") {
        Some(Value::Array(required)) => required.into_iter().filter(|name| name != "id" && name != "tenant").collect(),
        _ => Vec::new(),
    };
    for name in ["type", "data"] {
        if !required.iter().any(|r| r == name) {
            required.push(json!(name));
        }
    }
    root.insert("required".to_owned(), Value::Array(required));

    drop_unreferenced_definitions(root);
    close_objects(schema);
}

/// Sets `additionalProperties: false` on every object schema that lists its properties.
fn close_objects(value: &mut Value) {
    match value {
        Value::Object(object) => {
            if object.contains_key("properties") && object.get("type").and_then(Value::as_str) == Some("object") {
                object.insert("additionalProperties".to_owned(), json!(false));
            }
            object.values_mut().for_each(close_objects);
        }
        Value::Array(items) => items.iter_mut().for_each(close_objects),
        _ => {}
    }
}

/// Removes the `$defs` entries no longer reachable from the root (the derived types' data).
fn drop_unreferenced_definitions(root: &mut Map<String, Value>) {
    let Some(Value::Object(definitions)) = root.remove("$defs") else {
        return;
    };
    let mut reachable = BTreeSet::new();
    let mut pending = Vec::new();
    collect_refs(&Value::Object(root.clone()), &mut pending);
    while let Some(name) = pending.pop() {
        if reachable.insert(name.clone())
            && let Some(definition) = definitions.get(&name)
        {
            collect_refs(definition, &mut pending);
        }
    }
    let kept: Map<String, Value> = definitions.into_iter().filter(|(name, _)| reachable.contains(name)).collect();
    root.insert("$defs".to_owned(), Value::Object(kept));
}

/// Collects the names of the local definitions (`#/$defs/<name>`) a schema refers to.
fn collect_refs(value: &Value, names: &mut Vec<String>) {
    match value {
        Value::Object(object) => {
            for (key, child) in object {
                match (key.as_str(), child) {
                    ("$ref", Value::String(target)) => {
                        if let Some(name) = target.strip_prefix("#/$defs/") {
                            names.push(name.to_owned());
                        }
                    }
                    _ => collect_refs(child, names),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|item| collect_refs(item, names)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::examples;

    /// The checked-in schema files and the functions that generate them.
    fn schema_files() -> [(&'static str, Value); 2] {
        [("event.schema.json", event_schema()), ("event-input.schema.json", input_event_schema())]
    }

    fn schemas_dir() -> PathBuf {
        // The runtime variable, not `env!`: see `tests::repo_root`.
        PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR (run by cargo test)")).join("../schemas")
    }

    #[test]
    fn schemas_are_current() {
        let bless = std::env::var("LMS_BLESS").is_ok_and(|v| v == "1");
        let mut stale = Vec::new();
        for (name, generated) in schema_files() {
            let path = schemas_dir().join(name);
            if bless {
                let mut text = serde_json::to_string_pretty(&generated).unwrap();
                text.push('\n');
                std::fs::write(&path, text).unwrap();
                continue;
            }
            // Compared as JSON values, so that key order does not matter.
            let on_disk: Option<Value> = std::fs::read_to_string(&path).ok().and_then(|text| serde_json::from_str(&text).ok());
            if on_disk.as_ref() != Some(&generated) {
                stale.push(path.display().to_string());
            }
        }
        assert!(
            stale.is_empty(),
            "the schema files {stale:?} do not match the lms-events types; regenerate them with \
             `LMS_BLESS=1 cargo test -p lms-events schemas_are_current` and commit the result"
        );
    }

    #[test]
    fn topic_schema_has_a_branch_per_type() {
        let schema = event_schema();
        let names: Vec<&str> =
            schema["oneOf"].as_array().unwrap().iter().map(|b| b["properties"]["type"]["const"].as_str().unwrap()).collect();
        let all: Vec<&str> = EventType::ALL.map(EventType::as_str).to_vec();
        assert_eq!(names, all);
        let required = schema["required"].as_array().unwrap();
        assert!(required.contains(&json!("id")));
        assert!(required.contains(&json!("tenant")));
        assert_eq!(schema.pointer("/additionalProperties"), None);
    }

    #[test]
    fn input_schema_is_strict_and_client_only() {
        let schema = input_event_schema();
        assert_eq!(schema["additionalProperties"], json!(false));
        assert_eq!(schema["allOf"].as_array().unwrap().len(), 11);
        assert_eq!(schema["properties"]["type"]["enum"].as_array().unwrap().len(), 11);
        let required = schema["required"].as_array().unwrap();
        assert!(!required.contains(&json!("id")));
        assert!(!required.contains(&json!("tenant")));
        assert!(required.contains(&json!("time")));
        let definitions = schema["$defs"].as_object().unwrap();
        assert!(!definitions.contains_key("ProgressUpdated"));
        assert!(!definitions.contains_key("Channel"));
        for (name, definition) in definitions {
            if definition["type"] == "object" {
                assert_eq!(definition["additionalProperties"], json!(false), "{name}");
            }
        }
        assert_eq!(schema.pointer("/$defs/EnrollmentSource/enum"), Some(&json!(["self", "admin", "purchase"])));
        assert_eq!(schema.pointer("/$defs/AssessmentGraded/properties/attempt/maximum"), Some(&json!(u32::MAX)));
    }

    #[test]
    fn topic_schema_accepts_every_example() {
        let validator = jsonschema::options().should_validate_formats(true).build(&event_schema()).unwrap();
        for t in EventType::ALL {
            let event = serde_json::to_value(examples::event(t)).unwrap();
            let errors: Vec<String> = validator.iter_errors(&event).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{t}: {errors:?}");
        }
    }

    #[test]
    fn topic_schema_is_open_for_newer_producers() {
        let validator = jsonschema::validator_for(&event_schema()).unwrap();
        let mut event = serde_json::to_value(examples::event(EventType::LessonCompleted)).unwrap();
        event["newattribute"] = json!("x");
        event["data"]["new_field"] = json!(1);
        assert!(validator.is_valid(&event));
    }
}
