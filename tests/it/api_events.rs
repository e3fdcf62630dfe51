//! `POST /v1/events` against the real broker: what is accepted lands on its topic with its
//! key, headers and body; batches accept the valid items; every error class is a
//! problem+json; the auth matrix; nothing refused is produced.

use std::io::{Read, Write};
use std::time::Duration;

use lms_events::{Domain, EventType, TraceContext, examples, parse_client_event};
use serde_json::{Value, json};
use tests::kafka_brokers;

use crate::api_support::{TENANT, TestApi, answer, config, ids_until, read_until, token, token_with};

const PROBLEM: &str = "application/problem+json";

fn lesson(id: &str) -> Value {
    let mut e = examples::client_json(EventType::LessonCompleted);
    e["id"] = json!(id);
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_an_accepted_event_is_on_its_topic_with_its_key_headers_and_body() {
    let api = TestApi::start("api-roundtrip", &kafka_brokers(), config()).await;
    let write = token("events:write");
    let incoming = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    let input = lesson("evt-roundtrip-1");
    let r = api
        .post("/v1/events", Some(&write), &input)
        .header("traceparent", incoming)
        .header("tracestate", "vendor=abc")
        .header("baggage", "user=ada")
        .send()
        .await
        .unwrap();
    let (status, _, body) = answer(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body, json!({"accepted": ["evt-roundtrip-1"], "rejected": []}));

    // A payment without id gets a UUIDv7; a course goes to the catalog keyed by course.
    let payment = examples::client_json(EventType::PaymentSucceeded);
    let (status, _, body) = answer(api.post("/v1/events", Some(&write), &payment).send().await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
    let assigned = body["accepted"][0].as_str().unwrap().to_owned();
    assert_eq!(uuid::Uuid::parse_str(&assigned).unwrap().get_version_num(), 7);
    let course = examples::client_json(EventType::CoursePublished);
    let ct = "application/cloudevents+json; charset=utf-8";
    let r = api.post("/v1/events", Some(&write), &course).header("content-type", ct).send().await.unwrap();
    assert_eq!(r.status(), 202);

    let learning = read_until(&api.brokers, &api.topic(Domain::Learning), |rs| !rs.is_empty()).await;
    let rec = &learning[0];
    let expected = parse_client_event(&input, TENANT).unwrap();
    assert_eq!(rec.event, expected, "the body round-trips to the same event");
    assert_eq!(rec.key, "learner-42");
    assert_eq!(rec.headers["content-type"], lms_events::CONTENT_TYPE);
    let parent = TraceContext::parse_traceparent(incoming).unwrap();
    let child = TraceContext::parse_traceparent(&rec.headers["traceparent"]).expect("traceparent header");
    assert_eq!(child.trace_id, parent.trace_id, "the caller's trace continues");
    assert_ne!(child.span_id, parent.span_id, "as a child span");
    assert_eq!((rec.headers["tracestate"].as_str(), rec.headers["baggage"].as_str()), ("vendor=abc", "user=ada"), "carried as received");

    let payments = read_until(&api.brokers, &api.topic(Domain::Payment), |rs| !rs.is_empty()).await;
    assert_eq!((payments[0].key.as_str(), payments[0].event.id.as_str()), ("pay-7", assigned.as_str()));
    assert!(TraceContext::parse_traceparent(&payments[0].headers["traceparent"]).is_some(), "a new root trace");
    let catalog = read_until(&api.brokers, &api.topic(Domain::Catalog), |rs| !rs.is_empty()).await;
    // The catalog key survives compaction: tenant, course, version and content.
    assert_eq!(catalog[0].key, catalog[0].event.partition_key());
    assert!(catalog[0].key.starts_with(&format!("{TENANT}/{}/v2/", examples::COURSE)), "{}", catalog[0].key);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_batches_accept_the_valid_items_and_report_each_rejected_one() {
    let api = TestApi::start("api-batch", &kafka_brokers(), config()).await;
    let write = token("events:write");
    let mut bad_score = examples::client_json(EventType::AssessmentGraded);
    bad_score["data"]["score"] = json!(-1);
    let mut no_id = lesson("");
    no_id.as_object_mut().unwrap().remove("id");
    let batch = json!([lesson("evt-b-0"), bad_score, no_id, "not an event", lesson("evt-b-4")]);
    let (status, _, body) = answer(api.post("/v1/events", Some(&write), &batch).send().await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
    let accepted: Vec<String> = serde_json::from_value(body["accepted"].clone()).unwrap();
    assert_eq!(accepted.len(), 3);
    assert_eq!((accepted[0].as_str(), accepted[2].as_str()), ("evt-b-0", "evt-b-4"));
    assert_eq!(body["rejected"][0]["index"], 1);
    assert_eq!(body["rejected"][0]["errors"][0]["path"], "/data/score");
    assert_eq!(body["rejected"][1]["index"], 3);
    assert_eq!(body["rejected"][1]["errors"][0]["path"], "");

    // NDJSON: a malformed line is rejected at its index, the rest accepted.
    let ndjson = format!("{}\n{{oops\n\n{}\n", lesson("evt-n-0"), lesson("evt-n-2"));
    let r = api
        .http
        .post(format!("{}/v1/events", api.url))
        .bearer_auth(&write)
        .header("content-type", "application/x-ndjson")
        .body(ndjson)
        .send()
        .await
        .unwrap();
    let (status, _, body) = answer(r).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"], json!(["evt-n-0", "evt-n-2"]));
    assert_eq!(body["rejected"][0]["index"], 1);
    assert!(body["rejected"][0]["errors"][0]["message"].as_str().unwrap().contains("malformed JSON"));

    // A re-send keeps the ids: nothing new is minted for events that carry one.
    let again = json!([lesson("evt-b-0"), lesson("evt-b-4")]);
    let (_, _, body) = answer(api.post("/v1/events", Some(&write), &again).send().await.unwrap()).await;
    assert_eq!(body["accepted"], json!(["evt-b-0", "evt-b-4"]));

    let all = read_until(&api.brokers, &api.topic(Domain::Learning), |rs| rs.len() >= 7).await;
    let ids: Vec<&str> = all.iter().map(|r| r.event.id.as_str()).collect();
    assert_eq!(ids, ["evt-b-0", accepted[1].as_str(), "evt-b-4", "evt-n-0", "evt-n-2", "evt-b-0", "evt-b-4"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_every_error_class_is_a_problem_and_nothing_refused_is_produced() {
    let cfg = api::ApiConfig { max_body_bytes: 20_000, max_batch_events: 5, max_event_bytes: 2_000, body_timeout_ms: 300, ..config() };
    let api = TestApi::start("api-errors", &kafka_brokers(), cfg).await;
    let write = token("events:write");
    let url = format!("{}/v1/events", api.url);
    let check = |status: u16, what: &'static str| {
        move |(s, ct, body): (u16, String, Value)| {
            assert_eq!(s, status, "{what}: {body}");
            assert_eq!(ct, PROBLEM, "{what}");
            assert_eq!(body["status"], status, "{what}");
            assert!(body["type"].as_str().unwrap().starts_with("urn:lms:problem:"), "{what}");
            body
        }
    };

    let malformed =
        api.http.post(&url).bearer_auth(&write).header("content-type", "application/json").body("{\"type\": ").send().await.unwrap();
    check(400, "malformed JSON")(answer(malformed).await);
    let text =
        api.http.post(&url).bearer_auth(&write).header("content-type", "text/plain").body(lesson("t").to_string()).send().await.unwrap();
    check(415, "wrong content type")(answer(text).await);
    let huge =
        api.http.post(&url).bearer_auth(&write).header("content-type", "application/json").body(" ".repeat(20_001)).send().await.unwrap();
    check(413, "body too large")(answer(huge).await);
    let many = json!((0..6).map(|i| lesson(&format!("m{i}"))).collect::<Vec<_>>());
    check(413, "too many events")(answer(api.post("/v1/events", Some(&write), &many).send().await.unwrap()).await);
    let mut invalid = lesson("evt-invalid");
    invalid["data"].as_object_mut().unwrap().remove("lesson_id");
    invalid["extra"] = json!(1);
    let body = check(422, "invalid event")(answer(api.post("/v1/events", Some(&write), &invalid).send().await.unwrap()).await);
    let paths: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap()).collect();
    assert!(paths.contains(&"/extra") && paths.contains(&"/data/lesson_id"), "{paths:?}");
    let mut big = lesson("evt-big");
    big["source"] = json!("s".repeat(3_000));
    let all_bad = json!([invalid, big]);
    let body = check(422, "no valid item")(answer(api.post("/v1/events", Some(&write), &all_bad).send().await.unwrap()).await);
    assert_eq!(body["rejected"][1]["index"], 1);
    assert!(body["rejected"][1]["errors"][0]["message"].as_str().unwrap().contains("limit of 2000"), "{body}");
    assert!(body["errors"].as_array().unwrap().iter().any(|e| e["path"] == "/0/extra"), "{body}");
    let mut foreign = lesson("evt-foreign");
    foreign["tenant"] = json!("globex");
    check(403, "another tenant")(answer(api.post("/v1/events", Some(&write), &foreign).send().await.unwrap()).await);
    let mixed = json!([lesson("evt-with-foreign"), foreign]);
    let body = check(403, "another tenant in a batch")(answer(api.post("/v1/events", Some(&write), &mixed).send().await.unwrap()).await);
    assert!(body["detail"].as_str().unwrap().contains("item 1"), "{body}");
    check(404, "no such route")(answer(api.http.get(format!("{}/v1/nothing", api.url)).send().await.unwrap()).await);
    check(405, "wrong method")(answer(api.http.get(&url).bearer_auth(&write).send().await.unwrap()).await);

    // A body that never completes is answered 408 once body_timeout_ms has passed.
    let addr = api.url.trim_start_matches("http://").to_owned();
    let write2 = write.clone();
    let raw = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!("POST /v1/events HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {write2}\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n\r\n{{\"id\":");
        s.write_all(head.as_bytes()).unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    })
    .await
    .unwrap();
    assert!(raw.starts_with("HTTP/1.1 408"), "{raw}");

    // None of the refused events reached the topic: the sentinel sent last is first.
    let (status, _, _) = answer(api.post("/v1/events", Some(&write), &lesson("sentinel")).send().await.unwrap()).await;
    assert_eq!(status, 202);
    assert_eq!(ids_until(&api.brokers, &api.topic(Domain::Learning), "sentinel").await, ["sentinel"]);
}

/// A request its handler never answers (here a route that waits forever; in production a
/// read whose store hangs) is answered 503 problem+json with `Retry-After` once
/// `request_timeout_ms` has passed, and counted like any answer; a configuration whose limit
/// could cut a write short is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_a_request_not_answered_in_time_is_a_503_problem() {
    let short = api::ApiConfig { body_timeout_ms: 300, delivery_timeout_ms: 500, request_timeout_ms: 800, ..config() };
    let refused = api::Api::new(
        &short,
        std::sync::Arc::new(
            lms_bus::Producer::new(
                &lms_bus::KafkaConfig::new(kafka_brokers()),
                lms_bus::TopicsFile::bundled().topic_map(""),
                lms_bus::BusMetrics::register(&prometheus::Registry::new()).unwrap(),
                "timeout-test",
            )
            .unwrap(),
        ),
        &prometheus::Registry::new(),
    );
    let message = refused.err().expect("a request limit below the write limits is refused").to_string();
    assert!(message.contains("request_timeout_ms (800) must exceed body_timeout_ms + delivery_timeout_ms (800)"), "{message}");

    let cfg = api::ApiConfig { request_timeout_ms: 1_000, ..short };
    let hang = axum::Router::new().route("/v1/hang", axum::routing::get(std::future::pending::<&'static str>));
    let api = TestApi::start_with("api-timeout", &kafka_brokers(), cfg, |a| a.merge(hang)).await;
    let started = std::time::Instant::now();
    let r = api.http.get(format!("{}/v1/hang", api.url)).timeout(Duration::from_secs(30)).send().await.unwrap();
    let waited = started.elapsed();
    let retry_after = r.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let request_id = r.headers().get("x-request-id").is_some();
    let (status, ct, body) = answer(r).await;
    assert_eq!((status, ct.as_str()), (503, PROBLEM), "{body}");
    assert_eq!(body["type"], "urn:lms:problem:unavailable", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("within 1000 ms"), "{body}");
    assert_eq!(retry_after.as_deref(), Some("2"));
    assert!(request_id, "the answer carries its request id");
    assert!(waited >= Duration::from_millis(1_000), "answered after the limit, not before: {waited:?}");
    let metrics = api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("lms_http_requests_total{") && l.contains("route=\"/v1/hang\"") && l.contains("status=\"503\"")),
        "the 503 is counted under its route"
    );
    // Writes are answered by their own limits, well inside the request limit.
    let (status, _, body) =
        answer(api.post("/v1/events", Some(&token("events:write")), &lesson("evt-in-time")).send().await.unwrap()).await;
    assert_eq!(status, 202, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_auth_matrix() {
    let api = TestApi::start("api-auth", &kafka_brokers(), config()).await;
    let post = |token: Option<String>, id: &str| {
        let req = api.post("/v1/events", token.as_deref(), &lesson(id));
        async move { answer(req.send().await.unwrap()).await }
    };
    let (s, ct, body) = post(None, "a-none").await;
    assert_eq!((s, ct.as_str()), (401, PROBLEM), "no token: {body}");
    assert_eq!(post(Some(token_with(TENANT, "svc", "events:write", -120)), "a-expired").await.0, 401, "expired");
    let forged = api::auth::sign_hs256(
        b"not-the-secret",
        &api::Claims { sub: "svc".into(), tenant: TENANT.into(), scope: "admin".into(), exp: u64::MAX / 4 },
    );
    assert_eq!(post(Some(forged), "a-forged").await.0, 401, "forged");
    let valid = token("admin");
    let payload = valid.split('.').nth(1).unwrap().to_owned();
    // {"alg":"none","typ":"JWT"} in base64url, with the valid token's claims and no signature.
    let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{payload}.");
    assert_eq!(post(Some(none), "a-alg-none").await.0, 401, "alg none");
    assert_eq!(post(Some("garbage".into()), "a-garbage").await.0, 401, "not a JWT");
    let (s, _, body) = post(Some(token("analytics:read")), "a-scope").await;
    assert_eq!(s, 403, "wrong scope: {body}");
    assert!(body["detail"].as_str().unwrap().contains("events:write"));
    assert_eq!(post(Some(token_with(TENANT, "learner-42", "learner:read", 60)), "a-learner").await.0, 403, "learner token");
    let mut other = lesson("a-tenant");
    other["tenant"] = json!("globex");
    let r = api.post("/v1/events", Some(&token("events:write")), &other).send().await.unwrap();
    assert_eq!(r.status(), 403, "an event naming another tenant");
    let r = api.post("/v1/events", Some(&token_with("globex", "svc", "events:write", 60)), &other).send().await.unwrap();
    assert_eq!(r.status(), 202, "the same event with a token of its tenant");
    assert_eq!(post(Some(token("admin")), "a-admin").await.0, 202, "admin counts as every scope");
    assert_eq!(post(Some(token("events:write analytics:read")), "a-write").await.0, 202);

    let ids = ids_until(&api.brokers, &api.topic(Domain::Learning), "a-write").await;
    assert_eq!(ids, ["a-tenant", "a-admin", "a-write"], "only the authorised events were produced");
    let all = read_until(&api.brokers, &api.topic(Domain::Learning), |rs| rs.len() >= 3).await;
    assert_eq!(all[0].event.tenant, "globex", "the tenant comes from the token");
    assert_eq!(all[1].event.tenant, TENANT);
}
