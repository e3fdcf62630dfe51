//! Kafka over TLS with real handshakes: tansu behind `stunnel4`, advertising the terminator,
//! with a certificate authority the test makes. The deployed binary (`lms topics apply`,
//! `lms api`, `lms processor run`, `lms groups`) is configured through `kafka.security` alone;
//! a client trusting another authority fails with librdkafka's clear error naming the broker.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use lms_bus::{KafkaConfig, KafkaSecurity, SecurityProtocol};
use rdkafka::client::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{BaseProducer, DeliveryResult, Producer as _, ProducerContext};
use serde_json::json;
use tests::tls::{TestCa, TlsTerminator};
use tests::{OwnBroker, eventually, free_port, init_logs, lms_env, run_lms, spawn_lms, unique_prefix};

use crate::api_support::{SECRET, TENANT, answer, token, token_with};
use crate::pipeline_e2e::event;
use crate::support::fresh_postgres_db;

/// A tansu broker reachable only through TLS: the broker advertises the terminator's port.
async fn broker_behind_tls(ca: &TestCa) -> (OwnBroker, TlsTerminator) {
    let port = free_port();
    let broker = OwnBroker::start_advertising(false, Some(format!("tcp://127.0.0.1:{port}"))).await;
    let tls = TlsTerminator::start(ca, Some(port), &broker.brokers()).await;
    (broker, tls)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_kafka_events_reach_a_processor_end_to_end() {
    init_logs();
    let ca = TestCa::new("kafka");
    let (_broker, tls) = broker_behind_tls(&ca).await;
    let prefix = unique_prefix("tls-kafka");
    let store = fresh_postgres_db("tls_kafka").await;
    let port = free_port();
    let mut env = lms_env(&format!("127.0.0.1:{}", tls.port()), &prefix, &store, port, SECRET);
    env.push(("LMS_KAFKA__SECURITY__PROTOCOL", "ssl".to_owned()));
    env.push(("LMS_KAFKA__SECURITY__CA_FILE", ca.ca_file.display().to_string()));

    let applied = run_lms(&["topics", "apply"], &env);
    assert!(applied.ok, "lms topics apply over TLS: {}{}", applied.stdout, applied.stderr);
    let _processors = spawn_lms(&["processor", "run", "catalog", "progress"], &env, &format!("{prefix}processors.log"));
    let _api = spawn_lms(&["api"], &env, &format!("{prefix}api.log"));
    a_lesson_reaches_progress(port, "tls", "over TLS").await;

    // The admin tools reach the cluster the same way.
    let groups = run_lms(&["groups"], &env);
    assert!(groups.ok && groups.stdout.contains("progress"), "lms groups over TLS: {}{}", groups.stdout, groups.stderr);
}

/// Waits for the `lms api` on `port` to be ready, posts a course of one lesson, an enrollment
/// and the lesson's completion, and waits until the learner's progress shows the course
/// completed: the API's producer and the processors both reached the broker (`how`).
pub(crate) async fn a_lesson_reaches_progress(port: u16, course: &str, how: &str) {
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    eventually(&format!("the API to be ready {how}"), Duration::from_secs(60), || async {
        let r = http.get(format!("{base}/readyz")).send().await.ok()?;
        (r.status() == 200).then_some(())
    })
    .await;

    let modules = json!([{"module_id": "m1", "lessons": ["l1"]}]);
    let events = json!([
        event(
            "c1",
            "course.published",
            "2026-11-02T08:00:00Z",
            None,
            json!({"course_id": course, "title": course, "version": 1, "modules": modules})
        ),
        event(
            "e1",
            "enrollment.created",
            "2026-11-02T09:00:00Z",
            Some("ada"),
            json!({"learner_id": "ada", "course_id": course, "source": "self"})
        ),
        event(
            "l1",
            "lesson.completed",
            "2026-11-03T10:00:00Z",
            Some("ada"),
            json!({"learner_id": "ada", "course_id": course, "lesson_id": "l1"})
        ),
    ]);
    let r = http.post(format!("{base}/v1/events")).bearer_auth(token("events:write")).json(&events).send().await.expect("post");
    let (status, _, body) = answer(r).await;
    assert_eq!(status, 202, "{body}");

    let ada = token_with(TENANT, "ada", "learner:read", 3600);
    eventually(&format!("ada's progress, produced and consumed {how}"), Duration::from_secs(90), || async {
        let r = http.get(format!("{base}/v1/learners/ada/progress")).bearer_auth(&ada).send().await.ok()?;
        let (status, _, body) = answer(r).await;
        (status == 200 && body[0]["status"] == "completed").then_some(())
    })
    .await;
}

/// The errors librdkafka reports for a client.
#[derive(Default, Clone)]
struct Errors(Arc<Mutex<Vec<String>>>);

impl ClientContext for Errors {
    fn error(&self, error: KafkaError, reason: &str) {
        self.0.lock().expect("errors").push(format!("{error}: {reason}"));
    }
}

impl ProducerContext for Errors {
    type DeliveryOpaque = ();
    fn delivery(&self, _: &DeliveryResult<'_>, _: ()) {}
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_kafka_a_client_trusting_another_ca_fails_clearly() {
    init_logs();
    let ca = TestCa::new("kafka");
    let (_broker, tls) = broker_behind_tls(&ca).await;
    let other = TestCa::new("other");
    let mut kafka = KafkaConfig::new(format!("127.0.0.1:{}", tls.port()));
    kafka.security = KafkaSecurity { protocol: SecurityProtocol::Ssl, ca_file: Some(other.ca_file.clone()), ..Default::default() };
    let errors = Errors::default();
    let producer: BaseProducer<Errors> = kafka.client_config("tls-test").create_with_context(errors.clone()).expect("a producer");
    let md = tokio::task::block_in_place(|| producer.client().fetch_metadata(None, Duration::from_secs(3)));
    assert!(md.is_err(), "no metadata through an untrusted certificate");
    let reported = eventually("librdkafka to report the failed handshake", Duration::from_secs(20), || {
        tokio::task::block_in_place(|| producer.poll(Duration::from_millis(100)));
        let seen = errors.0.lock().expect("errors").clone();
        let hit = seen.into_iter().find(|e| e.contains("SSL handshake failed"));
        async move { hit }
    })
    .await;
    assert!(reported.contains("certificate verify failed"), "the cause: {reported}");
    assert!(reported.contains(&format!("127.0.0.1:{}", tls.port())), "the endpoint: {reported}");

    // The same client trusting the right authority gets the metadata.
    kafka.security.ca_file = Some(ca.ca_file.clone());
    let good: BaseProducer = kafka.client_config("tls-test").create().expect("a producer");
    let md = tokio::task::block_in_place(|| good.client().fetch_metadata(None, Duration::from_secs(20)));
    assert!(md.is_ok_and(|m| !m.brokers().is_empty()), "metadata over TLS");
}

/// An operator's wrong CA file: `lms api` and `lms processor run` stay up (no crash loop),
/// `/readyz` answers unready with librdkafka's cause naming the endpoint, and the log says
/// it once, not on every reconnection attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_kafka_a_wrong_ca_shows_in_readiness_and_once_in_the_log() {
    init_logs();
    let ca = TestCa::new("kafka");
    let (_broker, tls) = broker_behind_tls(&ca).await;
    let other = TestCa::new("other");
    let prefix = unique_prefix("tls-wrong-ca");
    let store = fresh_postgres_db("tls_wrong_ca").await;
    let (api_port, processor_port) = (free_port(), free_port());
    let mut env = lms_env(&format!("127.0.0.1:{}", tls.port()), &prefix, &store, api_port, SECRET);
    env.push(("LMS_KAFKA__SECURITY__PROTOCOL", "ssl".to_owned()));
    env.push(("LMS_KAFKA__SECURITY__CA_FILE", other.ca_file.display().to_string()));
    let (api_log, processor_log) = (format!("{prefix}api.log"), format!("{prefix}processor.log"));
    let mut api = spawn_lms(&["api"], &env, &api_log);
    let listen = format!("127.0.0.1:{processor_port}");
    let mut processor = spawn_lms(&["processor", "run", "progress", "--listen", &listen], &env, &processor_log);

    let endpoint = format!("127.0.0.1:{}", tls.port());
    let http = reqwest::Client::new();
    let api_reason = eventually("the API's /readyz to name the failed handshake", Duration::from_secs(60), || async {
        let r = http.get(format!("http://127.0.0.1:{api_port}/readyz")).send().await.ok()?;
        let (status, _, body) = answer(r).await;
        let broker = body["checks"]["broker"].as_str().unwrap_or_default().to_owned();
        (status == 503 && broker.contains("certificate verify failed")).then_some(broker)
    })
    .await;
    assert!(api_reason.contains(&endpoint), "the endpoint in {api_reason}");
    let processor_reason = eventually("the processor's /readyz to name the failed handshake", Duration::from_secs(60), || async {
        let r = http.get(format!("http://{listen}/readyz")).send().await.ok()?;
        let status = r.status();
        let body = r.text().await.ok()?;
        (status == 503 && body.contains("certificate verify failed") && body.contains(&endpoint)).then_some(body)
    })
    .await;
    assert!(processor_reason.starts_with("broker: "), "{processor_reason}");

    // Both keep running and keep retrying: still unready a few checks later, never exited.
    for _ in 0..3 {
        let r = http.get(format!("http://127.0.0.1:{api_port}/readyz")).send().await.expect("the API answers");
        assert_eq!(r.status(), 503);
        let r = http.get(format!("http://127.0.0.1:{api_port}/livez")).send().await.expect("the API answers");
        assert_eq!(r.status(), 200);
    }
    assert!(api.0.try_wait().expect("api").is_none(), "lms api exited");
    assert!(processor.0.try_wait().expect("processor").is_none(), "lms processor run exited");
    for log in [&api_log, &processor_log] {
        let text = std::fs::read_to_string(std::env::temp_dir().join(log)).expect("log");
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("certificate verify failed")).collect();
        assert_eq!(lines.len(), 1, "{log}: the failure logged once per process, not on every retry of every client: {lines:#?}");
    }
}
