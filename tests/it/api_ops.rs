//! Operations routes, merged routers, metrics, the OpenAPI document and the per-tenant
//! rate limit.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use api::auth::Claims;
use api::{Problem, RateLimitConfig};
use axum::routing::get;
use lms_events::{EventType, examples};
use serde_json::json;
use tests::{eventually, kafka_brokers};

use crate::api_support::{TestApi, answer, config, token, token_with};

async fn whoami(claims: Claims) -> Result<String, Problem> {
    claims.require("analytics:read")?;
    Ok(claims.tenant)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_ops_routes_merged_routers_metrics_and_openapi() {
    let store_up = Arc::new(AtomicBool::new(true));
    let flag = store_up.clone();
    let api = TestApi::start_with("api-ops", &kafka_brokers(), config(), move |a| {
        a.merge(axum::Router::new().route("/v1/whoami", get(whoami))).readiness_check(api::readiness_fn("store", move || {
            let up = flag.load(Ordering::SeqCst);
            Box::pin(async move { if up { Ok(()) } else { Err("connection refused".to_owned()) } })
        }))
    })
    .await;
    let get = |path: &str| api.http.get(format!("{}{path}", api.url)).send();

    for path in ["/livez", "/healthz"] {
        let (status, _, body) = answer(get(path).await.unwrap()).await;
        assert_eq!((status, body), (200, json!({"status": "alive"})), "{path}");
    }
    // Every answer carries a request id: the caller's, or a new UUID, one per request.
    let given = api.http.get(format!("{}/livez", api.url)).header("x-request-id", "req-42").send().await.unwrap();
    assert_eq!(given.headers()["x-request-id"], "req-42");
    let id = |r: &reqwest::Response| r.headers().get("x-request-id").map(|v| v.to_str().unwrap_or_default().to_owned());
    let (a, b) = (id(&get("/nope").await.unwrap()), id(&get("/livez").await.unwrap()));
    assert!(a.as_deref().is_some_and(|a| uuid::Uuid::parse_str(a).is_ok()) && a != b, "{a:?} {b:?}");
    let (status, _, body) = answer(get("/readyz").await.unwrap()).await;
    assert_eq!((status, body), (200, json!({"status": "ready", "checks": {"broker": "ok", "store": "ok"}})));
    store_up.store(false, Ordering::SeqCst);
    let body = eventually("readyz to name the failed check", Duration::from_secs(30), || async {
        let (status, _, body) = answer(get("/readyz").await.ok()?).await;
        (status == 503).then_some(body)
    })
    .await;
    assert_eq!(body["checks"]["store"], "connection refused", "{body}");
    assert!(body["detail"].as_str().unwrap().contains("store"));
    store_up.store(true, Ordering::SeqCst);
    api.wait_ready().await;

    // A merged router authenticates with the API's tokens.
    assert_eq!(get("/v1/whoami").await.unwrap().status(), 401);
    let r = api.http.get(format!("{}/v1/whoami", api.url)).bearer_auth(token("analytics:read")).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (200, "acme".to_owned()));
    let r = api.http.get(format!("{}/v1/whoami", api.url)).bearer_auth(token("learner:read")).send().await.unwrap();
    assert_eq!(r.status(), 403);

    let mut invalid = examples::client_json(EventType::LessonStarted);
    invalid["data"]["lesson_id"] = json!("");
    let events = json!([examples::client_json(EventType::LessonStarted), invalid]);
    assert_eq!(api.post("/v1/events", Some(&token("events:write")), &events).send().await.unwrap().status(), 202);
    let r = api.http.delete(format!("{}/v1/enrollments/l-1/c-1", api.url)).bearer_auth(token("events:write")).send().await.unwrap();
    assert_eq!(r.status(), 202);

    let r = get("/metrics").await.unwrap();
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = r.text().await.unwrap();
    let value = |parts: &[&str]| -> f64 {
        let line = text
            .lines()
            .find(|l| !l.starts_with('#') && parts.iter().all(|p| l.contains(p)))
            .unwrap_or_else(|| panic!("no line with {parts:?} in\n{text}"));
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    assert_eq!(value(&["lms_http_requests_total{", "route=\"/v1/events\"", "method=\"POST\"", "status=\"202\""]), 1.0);
    assert_eq!(value(&["lms_http_requests_total{", "route=\"/v1/whoami\"", "status=\"401\""]), 1.0);
    assert_eq!(value(&["lms_http_requests_total{", "route=\"/v1/enrollments/{learner_id}/{course_id}\"", "method=\"DELETE\""]), 1.0);
    assert_eq!(value(&["lms_http_request_duration_seconds_count{", "route=\"/v1/events\"", "method=\"POST\""]), 1.0);
    assert_eq!(value(&["lms_api_events_total{", "outcome=\"accepted\""]), 2.0);
    assert_eq!(value(&["lms_api_events_total{", "outcome=\"rejected\""]), 1.0);
    assert_eq!(value(&["lms_bus_produced_records_total{", "learning"]), 1.0, "the producer's metrics are on the same registry");

    let (status, _, doc) = answer(get("/openapi.json").await.unwrap()).await;
    assert_eq!((status, doc), (200, api::openapi_document()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_rate_limit_is_per_tenant_with_retry_after() {
    let cfg = api::ApiConfig { rate_limit: RateLimitConfig { per_second: 0.2, burst: 2 }, ..config() };
    let api = TestApi::start("api-rate", &kafka_brokers(), cfg).await;
    let event = examples::client_json(EventType::LessonStarted);
    let acme = token("events:write");
    for _ in 0..2 {
        assert_eq!(api.post("/v1/events", Some(&acme), &event).send().await.unwrap().status(), 202);
    }
    let r = api.post("/v1/events", Some(&acme), &event).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let retry: u64 = r.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=5).contains(&retry), "{retry}");
    let (_, ct, body) = answer(r).await;
    assert_eq!((ct.as_str(), body["status"].as_u64()), ("application/problem+json", Some(429)));
    let globex = token_with("globex", "svc", "events:write", 60);
    assert_eq!(api.post("/v1/events", Some(&globex), &event).send().await.unwrap().status(), 202, "another tenant has its own bucket");
}
