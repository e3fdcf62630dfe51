//! Event generation and bus plumbing shared by the bus tests.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use lms_bus::{BusMetrics, ConsumerConfig, KafkaConfig, MemberConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::{Domain, Event, EventData, LessonRef};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

/// `n` lesson.completed events over `learners` learners, each with a unique id.
pub fn lesson_events(tenant: &str, n: usize, learners: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let learner = format!("learner-{}", i % learners);
            Event {
                specversion: "1.0".to_owned(),
                id: format!("evt-{i:07}"),
                source: "bus-test".to_owned(),
                time: Utc.timestamp_opt(1_790_000_000 + i as i64, 0).single().expect("valid time"),
                subject: Some(learner.clone()),
                tenant: tenant.to_owned(),
                data: EventData::LessonCompleted(LessonRef {
                    learner_id: learner,
                    course_id: format!("course-{}", i % 7),
                    lesson_id: format!("lesson-{}", i % 13),
                }),
            }
        })
        .collect()
}

/// Kafka settings for a test with its own topic prefix.
pub fn kafka(brokers: &str, prefix: &str) -> KafkaConfig {
    KafkaConfig::new(brokers).with_prefix(prefix)
}

/// Consumer settings that make take-over quick in tests.
pub fn fast_consumer() -> ConsumerConfig {
    ConsumerConfig {
        max_batch_records: 1000,
        max_batch_wait_ms: 50,
        session_timeout_ms: 6000,
        retry_initial_backoff_ms: 50,
        retry_max_backoff_ms: 1000,
        statistics_interval_ms: 1000,
        ..ConsumerConfig::default()
    }
}

/// A member configuration for the learning topic of `kafka`'s prefix.
pub fn member(kafka: &KafkaConfig, processor: &str, client: &str) -> MemberConfig {
    let topics = TopicsFile::bundled().topic_map(&kafka.topic_prefix);
    MemberConfig {
        kafka: kafka.clone(),
        consumer: fast_consumer(),
        group_id: kafka.group_id(processor),
        topics: vec![topics.topic(Domain::Learning).to_owned()],
        client_id: client.to_owned(),
    }
}

/// A producer for `kafka`'s topics.
pub fn producer(kafka: &KafkaConfig, metrics: Arc<BusMetrics>) -> Arc<Producer> {
    let topics = TopicsFile::bundled().topic_map(&kafka.topic_prefix);
    Arc::new(Producer::new(kafka, topics, metrics, "bus-test-producer").expect("producer"))
}

/// Where each produced event landed, and one past the last offset of each partition.
pub struct Produced {
    /// Event id → (partition, offset).
    pub at: HashMap<String, (i32, i64)>,
    /// Partition → one past its last offset.
    pub ends: BTreeMap<i32, i64>,
}

impl Produced {
    /// Describes missing events by partition and offset range, for failure messages.
    pub fn describe_missing(&self, present: impl Fn(&str) -> bool) -> String {
        let mut by_partition: BTreeMap<i32, Vec<i64>> = BTreeMap::new();
        for (id, (p, o)) in &self.at {
            if !present(id) {
                by_partition.entry(*p).or_default().push(*o);
            }
        }
        by_partition
            .into_iter()
            .map(|(p, mut os)| {
                os.sort_unstable();
                format!("partition {p}: {} missing, offsets {}..={}", os.len(), os[0], os[os.len() - 1])
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Produces events and records where each landed.
pub async fn produce_all(producer: &Producer, events: &[Event]) -> Produced {
    let mut out = Produced { at: HashMap::new(), ends: BTreeMap::new() };
    for chunk in events.chunks(10_000) {
        let batch: Vec<_> = chunk.iter().map(|e| (e.clone(), None)).collect();
        for (e, r) in chunk.iter().zip(producer.send_events(&batch, OnQueueFull::Wait(Duration::from_secs(60))).await) {
            let d = r.expect("test events are delivered");
            let end = out.ends.entry(d.partition).or_insert(0);
            *end = (*end).max(d.offset + 1);
            out.at.insert(e.id.clone(), (d.partition, d.offset));
        }
    }
    out
}

/// The offsets group `group` has committed on `topic`, per partition.
pub fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> BTreeMap<i32, i64> {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition(topic, p);
    }
    let got = c.committed_offsets(tpl, Duration::from_secs(10)).expect("committed offsets");
    got.elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some((e.partition(), o)),
            _ => None,
        })
        .collect()
}

/// A new, empty PostgreSQL database on the test server (`LMS_TEST_POSTGRES_URL`), named
/// after `test` plus a unique suffix; returns its URL.
pub async fn fresh_postgres_db(test: &str) -> String {
    let base = std::env::var("LMS_TEST_POSTGRES_URL").expect("LMS_TEST_POSTGRES_URL (run the tests with `cargo xtask test`)");
    let name = tests::unique_prefix(test).replace(['-', '.'], "_").to_lowercase();
    lms_state::create_postgres_database(&base, &name).await.expect("a database of the test's own on the test PostgreSQL")
}
