//! One trace per event, end to end: an event posted with a `traceparent` yields spans in
//! that trace from the API (its request), and from each processor that handles it (its
//! `process` span, child of the API's span, and the `write` of its store), exported over
//! OTLP/HTTP by the real binaries to a receiver in this test. Their JSON log lines about
//! an event carry its trace id too.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::routing::post;
use lms_events::Domain;
use rdkafka::ClientConfig;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::{Value, json};
use tests::{BusFixture, eventually, free_port, init_logs, kafka_brokers, lms_env, spawn_lms};

use crate::api_support::{SECRET, token};
use crate::support::fresh_postgres_db;

/// A span as received: service, name, ids.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent: String,
    /// OTLP span kind (2: server).
    kind: i64,
    /// Attribute key to its value as text.
    attributes: std::collections::BTreeMap<String, String>,
}

fn spans_of(body: &Value) -> Vec<Received> {
    let mut out = Vec::new();
    for rs in body["resourceSpans"].as_array().into_iter().flatten() {
        let service = rs["resource"]["attributes"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|a| a["key"] == "service.name")
            .and_then(|a| a["value"]["stringValue"].as_str())
            .unwrap_or_default()
            .to_owned();
        for ss in rs["scopeSpans"].as_array().into_iter().flatten() {
            for s in ss["spans"].as_array().into_iter().flatten() {
                let text = |k: &str| s[k].as_str().unwrap_or_default().to_lowercase();
                out.push(Received {
                    service: service.clone(),
                    name: text("name"),
                    trace_id: text("traceId"),
                    span_id: text("spanId"),
                    parent: text("parentSpanId"),
                    kind: s["kind"].as_i64().unwrap_or_default(),
                    attributes: s["attributes"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|a| {
                            let v = &a["value"];
                            let text = v["stringValue"].as_str().map(str::to_owned).or_else(|| v["intValue"].as_str().map(str::to_owned));
                            (a["key"].as_str().unwrap_or_default().to_owned(), text.unwrap_or_else(|| v.to_string()))
                        })
                        .collect(),
                });
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_has_one_trace_across_api_processors_and_sinks() {
    init_logs();
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let receiver = Router::new()
        .route(
            "/v1/traces",
            post(|State(r): State<Arc<Mutex<Vec<Received>>>>, body: axum::body::Bytes| async move {
                let v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                r.lock().expect("spans").extend(spans_of(&v));
                axum::Json(json!({}))
            }),
        )
        .with_state(Arc::clone(&received));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let otlp = format!("http://{}", listener.local_addr().expect("addr"));
    tokio::spawn(async move { axum::serve(listener, receiver).await });

    let brokers = kafka_brokers();
    let BusFixture { prefix, topics, .. } = BusFixture::fresh(&brokers, "otlp", 1).await;
    let port = free_port();
    let mut env = lms_env(&brokers, &prefix, &fresh_postgres_db("otlp_trace").await, port, SECRET);
    env.push(("OTEL_EXPORTER_OTLP_ENDPOINT", otlp));
    env.push(("OTEL_BSP_SCHEDULE_DELAY", "200".to_owned()));
    env.push(("LMS_LOG_FORMAT", "json".to_owned()));
    // The API logs each answered request at debug level.
    env.push(("RUST_LOG", "info,api=debug,librdkafka=warn".to_owned()));
    let (processors_log, api_log) = (format!("{prefix}processors.log"), format!("{prefix}api.log"));
    let _processors = spawn_lms(&["processor", "run", "progress", "analytics"], &env, &processors_log);
    let _api = spawn_lms(&["api"], &env, &api_log);
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually("the API is ready", Duration::from_secs(60), || async {
        (http.get(format!("{base}/readyz")).send().await.ok()?.status() == 200).then_some(())
    })
    .await;

    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let event = json!({"specversion": "1.0", "id": "traced-1", "type": "lesson.completed", "source": "otlp-test",
        "time": "2026-11-20T10:00:00Z", "subject": "ada", "data": {"learner_id": "ada", "course_id": "c", "lesson_id": "l1"}});
    let r = http
        .post(format!("{base}/v1/events"))
        .bearer_auth(token("events:write"))
        .header("traceparent", format!("00-{trace_id}-{caller_span}-01"))
        .header("tracestate", "vendor=abc,other=x:1")
        .header("baggage", "user=ada,plan=pro")
        .json(&event)
        .send()
        .await
        .expect("post");
    assert_eq!(r.status(), 202);

    let progress_group = format!("{prefix}lms-progress");
    let analytics_group = format!("{prefix}lms-analytics");
    let spans = eventually("the spans of the event's trace from the API and both processors", Duration::from_secs(60), || {
        let mine: Vec<Received> = received.lock().expect("spans").iter().filter(|s| s.trace_id == trace_id).cloned().collect();
        let names: Vec<String> = mine.iter().map(|s| s.name.clone()).collect();
        let want = [
            "post /v1/events".to_owned(),
            format!("{progress_group} process"),
            format!("{progress_group} write"),
            format!("{analytics_group} process"),
            format!("{analytics_group} write"),
        ];
        let all = want.iter().all(|w| names.contains(&w.to_lowercase()));
        async move { all.then_some(mine) }
    })
    .await;
    let named = |name: String| -> Vec<&Received> { spans.iter().filter(|s| s.name == name.to_lowercase()).collect() };
    let api = named("post /v1/events".to_owned());
    assert_eq!(api.len(), 1, "one request span");
    let api = api[0];
    assert_eq!(api.service, "lms-api");
    assert_eq!(api.parent, caller_span, "the API's span is a child of the caller's");
    assert_eq!(api.kind, 2, "a server span: {api:?}");
    for (key, value) in [("http.request.method", "POST"), ("http.route", "/v1/events"), ("http.response.status_code", "202")] {
        assert_eq!(api.attributes.get(key).map(String::as_str), Some(value), "{key} of {api:?}");
    }
    for group in [&progress_group, &analytics_group] {
        // The event itself, and (for analytics) the derived events it caused, whose records
        // carry the same trace.
        let process = named(format!("{group} process"));
        let write = named(format!("{group} write"));
        assert!(process.iter().all(|p| p.service == "lms-processor"));
        assert!(process.iter().any(|p| p.parent == api.span_id), "{group}: processing the event is a child of the API's span: {spans:#?}");
        assert!(
            write.iter().all(|w| process.iter().any(|p| p.span_id == w.parent)),
            "{group}: each store write is a child of a processing span: {spans:#?}"
        );
    }

    // The caller's tracestate and baggage reach the derived events too: through the
    // progress processor's outbox to the records the relay produces.
    let derived = crate::api_support::read_until(&brokers, topics.topic(Domain::Derived), |rs| {
        rs.iter().any(|r| r.event.event_type() == lms_events::EventType::ProgressUpdated)
    })
    .await;
    let updated = derived.iter().find(|r| r.event.event_type() == lms_events::EventType::ProgressUpdated).expect("progress.updated");
    assert!(updated.headers["traceparent"].contains(trace_id), "{:?}", updated.headers);
    assert_eq!(updated.headers.get("tracestate").map(String::as_str), Some("vendor=abc,other=x:1"), "{:?}", updated.headers);
    let baggage = updated.headers.get("baggage").cloned().unwrap_or_default();
    assert!(baggage.contains("user=ada") && baggage.contains("plan=pro"), "{:?}", updated.headers);

    // JSON logs: the API's line about the request carries the request span's ids.
    let api_lines = json_lines(&api_log);
    assert!(
        api_lines.iter().any(|l| l["span"]["trace_id"] == trace_id && l["span"]["span_id"] == api.span_id.as_str()),
        "an API log line with the request's trace and span ids: {api_lines:#?}"
    );
    // A processor's line about a record it cannot process carries the record's trace.
    let poison_trace = "0af7651916cd43dd8448eb211c80319c";
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).create().expect("a producer");
    producer
        .send(
            FutureRecord::to(topics.topic(Domain::Learning))
                .key("ada")
                .payload(r#"{"id": "poison-1", "type": "lesson.completed"}"#)
                .headers(
                    OwnedHeaders::new()
                        .insert(Header { key: "traceparent", value: Some(&format!("00-{poison_trace}-b7ad6b7169203331-01")) }),
                ),
            Duration::from_secs(30),
        )
        .await
        .expect("the poison record is produced");
    let line = eventually("a processor log line about the poison record", Duration::from_secs(60), || {
        let line =
            json_lines(&processors_log).into_iter().find(|l| l["message"] == "dead-lettering a record" && l["event_id"] == "poison-1");
        async move { line }
    })
    .await;
    assert_eq!(line["trace_id"], poison_trace, "{line}");
    assert_eq!(line["span_id"], "b7ad6b7169203331", "{line}");
    assert_eq!(line["level"], "WARN", "{line}");
}

/// The JSON lines of a log in the temporary directory (other lines skipped).
fn json_lines(log: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(std::env::temp_dir().join(log)).unwrap_or_default();
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}
