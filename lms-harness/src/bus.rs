//! The bus of a test: the shared test brokers, fresh topic names, topic creation.

use std::time::Duration;

use lms_bus::{TopicMap, TopicsFile};
use lms_events::Domain;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;

/// Bootstrap servers of the shared test broker (tansu, memory engine): fast, but its
/// watermarks are wrong and it cannot resume inside a record batch (see
/// `it/tansu_probe.rs`), so tests that resume a group use [`durable_kafka_brokers`].
pub fn kafka_brokers() -> String {
    std::env::var("LMS_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned())
}

/// Bootstrap servers of the durable test broker (tansu, SQLite engine): correct watermarks.
pub fn durable_kafka_brokers() -> String {
    std::env::var("LMS_TEST_KAFKA_DURABLE_BROKERS").unwrap_or_else(|_| "127.0.0.1:9093".to_owned())
}

/// A prefix no other test uses, for topics and groups.
pub fn unique_prefix(test: &str) -> String {
    format!("t{}-{}.", &uuid::Uuid::new_v4().simple().to_string()[..10], test)
}

/// Creates a topic with `partitions` partitions (replication 1) on `brokers`; fails the test
/// if it cannot.
pub async fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    create_topics(brokers, &[(topic, partitions)]).await.unwrap_or_else(|e| panic!("{e}"));
}

/// Creates topics of (name, partitions), or says which could not be created.
pub async fn create_topics(brokers: &str, topics: &[(&str, i32)]) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for (t, p) in topics {
        for r in admin.create_topics([&NewTopic::new(t, *p, TopicReplication::Fixed(1))], &opts).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
    }
    Ok(())
}

/// The bus a test of the whole pipeline runs on: every topic of the bundled topics file
/// (`topics.yaml`) under a fresh prefix, on `brokers`.
#[derive(Debug, Clone)]
pub struct BusFixture {
    /// Bootstrap servers.
    pub brokers: String,
    /// The topic (and group) prefix no other test uses.
    pub prefix: String,
    /// The prefixed topic names.
    pub topics: TopicMap,
}

impl BusFixture {
    /// Creates every topic under a fresh prefix of `test`, each with `partitions` partitions.
    pub async fn fresh(brokers: &str, test: &str, partitions: i32) -> BusFixture {
        let prefix = unique_prefix(test);
        let topics = TopicsFile::bundled().topic_map(&prefix);
        let all: Vec<(&str, i32)> = Domain::ALL.into_iter().map(|d| (topics.topic(d), partitions)).collect();
        create_topics(brokers, &all).await.unwrap_or_else(|e| panic!("{e}"));
        BusFixture { brokers: brokers.to_owned(), prefix, topics }
    }
}
