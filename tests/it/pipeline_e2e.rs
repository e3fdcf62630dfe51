//! The deployed shape end to end: `lms api` and `lms processor run` as separate processes
//! on the real broker, PostgreSQL and the analytics twin. Events go in over HTTP; progress,
//! achievements and analytics come out of the read endpoints, with the contract's access
//! rules.

use std::time::Duration;

use serde_json::{Value, json};
use tests::{BusFixture, eventually, free_port, init_logs, kafka_brokers, lms_env, poll_until};
pub(crate) use tests::{Proc, spawn_lms as lms};

use crate::api_support::{SECRET, TENANT, answer, token, token_with};
use crate::support::fresh_postgres_db;

/// Checks `body`, the 200 answer of `GET route`, against the committed OpenAPI document.
pub(crate) fn conforms(route: &str, body: &Value) {
    let doc = api::openapi_document();
    let schema = doc["paths"][route]["get"]["responses"]["200"]["content"]["application/json"]["schema"].clone();
    assert!(!schema.is_null(), "{route} is documented");
    let root = json!({"$schema": "https://json-schema.org/draft/2020-12/schema", "components": doc["components"], "allOf": [schema]});
    let validator = jsonschema::validator_for(&root).expect("the OpenAPI schema compiles");
    let errors: Vec<String> = validator.iter_errors(body).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    assert!(errors.is_empty(), "{route}: the answer does not conform to the OpenAPI document: {errors:?}\n{body}");
}

pub(crate) fn event(id: &str, kind: &str, time: &str, subject: Option<&str>, data: Value) -> Value {
    let mut e = json!({"specversion": "1.0", "id": id, "type": kind, "source": "e2e", "time": time, "data": data});
    if let Some(s) = subject {
        e["subject"] = json!(s);
    }
    e
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_in_over_http_come_out_of_the_read_endpoints() {
    init_logs();
    let brokers = kafka_brokers();
    let BusFixture { prefix, .. } = BusFixture::fresh(&brokers, "e2e", 2).await;
    let store = fresh_postgres_db("pipeline_e2e").await;
    let port = free_port();
    let env = lms_env(&brokers, &prefix, &store, port, SECRET);
    let _processors =
        lms(&["processor", "run", "catalog", "progress", "achievements", "analytics"], &env, &format!("{prefix}processors.log"));
    let _api = lms(&["api"], &env, &format!("{prefix}api.log"));
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();

    eventually("the API is ready (broker, state store, analytics store)", Duration::from_secs(60), || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    // Two learners of acme in course rust (ada completes it), a payment, an assessment.
    let events = crate::security_matrix::seed_events();
    let writer = token("events:write");
    let (status, _, body) =
        answer(http.post(format!("{base}/v1/events")).bearer_auth(&writer).json(&events).send().await.expect("post")).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["accepted"].as_array().map(Vec::len), Some(8), "{body}");

    let ada = token_with(TENANT, "ada", "learner:read", 3600);
    let progress = eventually("ada's progress shows the completed course", Duration::from_secs(90), || async {
        let r = http.get(format!("{base}/v1/learners/ada/progress")).bearer_auth(&ada).send().await.ok()?;
        let (status, _, body) = answer(r).await;
        (status == 200 && body[0]["status"] == "completed").then_some(body)
    })
    .await;
    conforms("/v1/learners/{learner_id}/progress", &progress);
    assert_eq!(progress[0]["course_id"], "rust");
    assert_eq!(progress[0]["lessons_completed"], 2);
    assert_eq!(progress[0]["percent_complete"], 100.0);
    assert_eq!(progress[0]["completed_at"], "2026-11-04T10:00:00Z");

    let analyst = token("analytics:read");
    let bob = eventually("bob's progress is visible to an analyst", Duration::from_secs(30), || async {
        let r = http.get(format!("{base}/v1/learners/bob/progress")).bearer_auth(&analyst).send().await.ok()?;
        let (status, _, body) = answer(r).await;
        (status == 200 && body[0]["lessons_completed"] == 1).then_some(body)
    })
    .await;
    assert_eq!(bob[0]["status"], "in_progress", "{bob}");

    let achievements = eventually("ada's achievements include the course completion", Duration::from_secs(60), || async {
        let r = http.get(format!("{base}/v1/learners/ada/achievements")).bearer_auth(&ada).send().await.ok()?;
        let (status, _, body) = answer(r).await;
        (status == 200 && body.as_array().is_some_and(|a| !a.is_empty())).then_some(body)
    })
    .await;
    conforms("/v1/learners/{learner_id}/achievements", &achievements);

    // The sink writes a batch's tables concurrently, so one read may see the completion
    // before the progress of the same batch: wait for the whole answer.
    let want = json!({"enrolled": 2, "started": 2, "reached_25": 2, "reached_50": 2, "reached_75": 1, "completed": 1});
    let last = std::sync::Mutex::new(Value::Null);
    let funnel = poll_until(Duration::from_secs(60), || async {
        let r = http.get(format!("{base}/v1/analytics/courses/rust/funnel")).bearer_auth(&analyst).send().await.ok()?;
        let (status, _, body) = answer(r).await;
        *last.lock().expect("last answer") = body.clone();
        (status == 200 && body == want).then_some(body)
    })
    .await;
    let funnel = funnel.unwrap_or_else(|| {
        panic!("the funnel counts both learners and ada's completion: last answer {}, want {want}", last.lock().expect("last answer"))
    });
    conforms("/v1/analytics/courses/{course_id}/funnel", &funnel);
    let q = "from=2026-11-01&to=2026-11-30";
    let (status, _, revenue) =
        answer(http.get(format!("{base}/v1/analytics/revenue?{q}")).bearer_auth(&analyst).send().await.expect("revenue")).await;
    assert_eq!(status, 200);
    conforms("/v1/analytics/revenue", &revenue);
    assert_eq!(revenue, json!([{"bucket": "2026-11-02", "currency": "EUR", "gross_minor": 4900, "refunds_minor": 0, "net_minor": 4900}]));

    for (route, path) in [
        ("/v1/analytics/active-learners", format!("/v1/analytics/active-learners?{q}&granularity=week")),
        ("/v1/analytics/enrollments", format!("/v1/analytics/enrollments?{q}")),
        ("/v1/analytics/completions", format!("/v1/analytics/completions?{q}")),
        (
            "/v1/analytics/courses/{course_id}/at-risk",
            "/v1/analytics/courses/rust/at-risk?inactive_days=1&as_of=2026-11-20T00:00:00Z".to_owned(),
        ),
        ("/v1/analytics/assessments/{assessment_id}/scores", "/v1/analytics/assessments/quiz/scores".to_owned()),
    ] {
        let (status, _, body) = answer(http.get(format!("{base}{path}")).bearer_auth(&analyst).send().await.expect("get")).await;
        assert_eq!(status, 200, "{path}: {body}");
        assert!(body != json!([]), "{path} has data: {body}");
        conforms(route, &body);
    }

    // Access rules: a learner reads only itself, analytics need their scope, a token of
    // another tenant sees nothing of this one, a bad parameter is a 400 naming it.
    let status = |r: reqwest::Response| r.status().as_u16();
    let get = |path: &str, t: &str| http.get(format!("{base}{path}")).bearer_auth(t.to_owned()).send();
    assert_eq!(status(get("/v1/learners/bob/progress", &ada).await.expect("get")), 403);
    assert_eq!(status(get("/v1/analytics/courses/rust/funnel", &ada).await.expect("get")), 403);
    assert_eq!(status(http.get(format!("{base}/v1/learners/ada/progress")).send().await.expect("get")), 401);
    let other = token_with("globex", "svc", "analytics:read", 3600);
    let (s, _, body) = answer(get("/v1/learners/ada/progress", &other).await.expect("get")).await;
    assert_eq!((s, body), (200, json!([])));
    let (s, _, body) = answer(get("/v1/analytics/completions?from=2026-13-01&to=2026-11-30", &analyst).await.expect("get")).await;
    assert_eq!(s, 400, "{body}");
    assert_eq!(body["errors"][0]["param"], "from", "{body}");
}
