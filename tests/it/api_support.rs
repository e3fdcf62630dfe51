//! The write API running in-process against a real broker, for the `api_*` tests: its own
//! topic prefix, a real HTTP listener on loopback, tokens, and reading the topics back.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use api::auth::{Claims, sign_hs256};
use api::{Api, ApiConfig};
use lms_bus::{BusMetrics, KafkaConfig, Producer, TopicMap, TopicsFile};
use lms_events::{Domain, Event, codec};
use prometheus::Registry;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use serde_json::Value;
use tests::{BusFixture, eventually};
use tokio_util::sync::CancellationToken;

/// The JWT secret of the test API.
pub const SECRET: &str = "api-test-secret";
/// The tenant of the test tokens.
pub const TENANT: &str = "acme";
/// The webhook secret of tenant `acme`.
pub const WEBHOOK_SECRET: &str = "whsec_acme_test";

/// The API serving on a loopback port, stopped when dropped.
pub struct TestApi {
    pub url: String,
    pub http: reqwest::Client,
    pub brokers: String,
    pub topics: TopicMap,
    /// The topic prefix, for a second instance on the same topics ([`TestApi::another`]).
    pub prefix: String,
    shutdown: CancellationToken,
}

impl Drop for TestApi {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// A test configuration: tenant `acme` may send webhooks, readiness is checked often.
pub fn config() -> ApiConfig {
    ApiConfig {
        listen: "127.0.0.1:0".to_owned(),
        jwt_secret: Some(SECRET.into()),
        webhook_secrets: [(TENANT.to_owned(), WEBHOOK_SECRET.into())].into(),
        readiness_interval_ms: 200,
        readiness_timeout_ms: 1000,
        ..ApiConfig::default()
    }
}

impl TestApi {
    /// Creates the topics of a fresh prefix (one partition each, so that order on a topic
    /// is total) and starts the API on them.
    pub async fn start(test: &str, brokers: &str, config: ApiConfig) -> TestApi {
        TestApi::start_with(test, brokers, config, |api| api).await
    }

    /// [`TestApi::start`] with extra routes or readiness checks.
    pub async fn start_with(test: &str, brokers: &str, config: ApiConfig, extend: impl FnOnce(Api) -> Api) -> TestApi {
        tests::init_logs();
        let BusFixture { prefix, .. } = BusFixture::fresh(brokers, test, 1).await;
        TestApi::serve(prefix, brokers, config, extend).await
    }

    /// Another API instance on this one's topics (a second replica, or a restart).
    pub async fn another(&self, config: ApiConfig, extend: impl FnOnce(Api) -> Api) -> TestApi {
        TestApi::serve(self.prefix.clone(), &self.brokers, config, extend).await
    }

    async fn serve(prefix: String, brokers: &str, config: ApiConfig, extend: impl FnOnce(Api) -> Api) -> TestApi {
        let topics = TopicsFile::bundled().topic_map(&prefix);
        let kafka = KafkaConfig::new(brokers).with_prefix(&prefix);
        let registry = Registry::new();
        let metrics = BusMetrics::register(&registry).expect("bus metrics");
        let producer_kafka = config.producer_kafka_config(&kafka);
        let producer = Producer::new(&producer_kafka, topics.clone(), metrics.clone(), "api-test").expect("producer");
        let factory_topics = topics.clone();
        let api = Api::new(&config, Arc::new(producer), &registry)
            .expect("api")
            .producer_factory(Box::new(move || Producer::new(&producer_kafka, factory_topics.clone(), metrics.clone(), "api-test")));
        let router = extend(api).into_router();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("address"));
        let shutdown = CancellationToken::new();
        tokio::spawn(api::serve_on(listener, router, shutdown.clone()));
        let t = TestApi { url, http: reqwest::Client::new(), brokers: brokers.to_owned(), topics, prefix, shutdown };
        t.wait_ready().await;
        t
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        eventually("the API to be ready", Duration::from_secs(60), || async {
            let r = self.http.get(format!("{}/readyz", self.url)).send().await.ok()?;
            (r.status() == 200).then_some(())
        })
        .await;
    }

    /// The topic of a domain.
    pub fn topic(&self, d: Domain) -> String {
        self.topics.topic(d).to_owned()
    }

    /// A POST of JSON with a bearer token (`None`: no Authorization header).
    pub fn post(&self, path: &str, token: Option<&str>, body: &Value) -> reqwest::RequestBuilder {
        let mut r = self.http.post(format!("{}{path}", self.url)).header("content-type", "application/json").body(body.to_string());
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r
    }
}

/// A token of tenant `acme` with `scope`, valid for an hour.
pub fn token(scope: &str) -> String {
    token_with(TENANT, "svc-test", scope, 3600)
}

/// A token signed with the test secret.
pub fn token_with(tenant: &str, sub: &str, scope: &str, expires_in_s: i64) -> String {
    let exp = (chrono::Utc::now().timestamp() + expires_in_s) as u64;
    sign_hs256(SECRET.as_bytes(), &Claims { sub: sub.into(), tenant: tenant.into(), scope: scope.into(), exp })
}

/// A response body as JSON, with its status and content type.
pub async fn answer(r: reqwest::Response) -> (u16, String, Value) {
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    let text = r.text().await.expect("body");
    (status, ct, serde_json::from_str(&text).unwrap_or(Value::String(text)))
}

/// A record read back from a topic.
#[derive(Debug, Clone)]
pub struct Rec {
    pub key: String,
    pub headers: BTreeMap<String, String>,
    pub event: Event,
}

/// Reads a one-partition topic from the beginning until `done` holds for what was read.
pub async fn read_until(brokers: &str, topic: &str, mut done: impl FnMut(&[Rec]) -> bool) -> Vec<Rec> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "api-test-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("tpl");
    c.assign(&tpl).expect("assign");
    let mut got = Vec::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !done(&got) {
        assert!(std::time::Instant::now() < deadline, "{topic}: read {} records, condition not met: {got:#?}", got.len());
        let Some(m) = tokio::task::block_in_place(|| c.poll(Duration::from_millis(100))) else { continue };
        let m = m.expect("record");
        let headers = m
            .headers()
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect())
            .unwrap_or_default();
        got.push(Rec {
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            headers,
            event: codec::decode(m.payload().unwrap_or_default()).expect("an event"),
        });
    }
    got
}

/// Reads a topic until an event with id `last` is there; returns the ids before and with it.
pub async fn ids_until(brokers: &str, topic: &str, last: &str) -> Vec<String> {
    read_until(brokers, topic, |rs| rs.iter().any(|r| r.event.id == last)).await.into_iter().map(|r| r.event.id).collect()
}
