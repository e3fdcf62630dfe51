//! The producer under injected broker errors (librdkafka's mock cluster): retriable
//! produce errors are retried by the idempotent producer, every event arrives exactly
//! once and in order per key.

use std::collections::HashMap;
use std::time::Duration;

use lms_bus::{BusMetrics, KafkaConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::{Domain, codec};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::mocking::MockCluster;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaApiKey;
use rdkafka::types::RDKafkaRespErr;
use tests::init_logs;

use crate::support::lesson_events;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retriable_produce_errors_are_retried_without_duplicates() {
    init_logs();
    let mock = MockCluster::new(3).expect("mock cluster");
    let topics = TopicsFile::bundled().topic_map("");
    let topic = topics.topic(Domain::Learning).to_owned();
    mock.create_topic(&topic, 4, 3).expect("mock topic");

    // The next produce requests fail with errors a real cluster returns during leader
    // elections and under load.
    use RDKafkaRespErr::*;
    let errors = [
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS,
        RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT,
        RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION,
        RD_KAFKA_RESP_ERR_NOT_ENOUGH_REPLICAS_AFTER_APPEND,
        RD_KAFKA_RESP_ERR_LEADER_NOT_AVAILABLE,
    ];
    mock.request_errors(RDKafkaApiKey::Produce, &errors.repeat(4));

    let mut cfg = KafkaConfig::new(mock.bootstrap_servers());
    cfg.properties.insert("retry.backoff.ms".into(), "10".into());
    let metrics = BusMetrics::standalone();
    let producer = Producer::new(&cfg, topics.clone(), metrics.clone(), "fault-test").expect("producer");
    let events = lesson_events("tenant-a", 2_000, 50);
    let batch: Vec<_> = events.iter().map(|e| (e.clone(), None)).collect();
    let results = producer.send_events(&batch, OnQueueFull::Wait(Duration::from_secs(30))).await;
    let failed = results.iter().filter(|r| r.is_err()).count();
    assert_eq!(failed, 0, "every event is delivered despite the injected errors: {:?}", results.iter().find(|r| r.is_err()));
    assert_eq!(metrics.produced.with_label_values(&[&topic]).get(), 2_000);

    // Read everything back: each id exactly once, and per key in production order.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", "fault-test-reader")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..4 {
        tpl.add_partition_offset(&topic, p, Offset::Beginning).expect("tpl");
    }
    c.assign(&tpl).expect("assign");
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut last_per_key: HashMap<String, String> = HashMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while seen.values().sum::<usize>() < 2_000 {
        assert!(std::time::Instant::now() < deadline, "read back {} of 2000", seen.len());
        let Some(m) = tokio::task::block_in_place(|| c.poll(Duration::from_millis(100))) else { continue };
        let m = m.expect("record");
        let e = codec::decode(m.payload().expect("value")).expect("decodable");
        let key = String::from_utf8(m.key().expect("key").to_vec()).expect("utf-8 key");
        assert_eq!(key, e.partition_key());
        if let Some(prev) = last_per_key.insert(key, e.id.clone()) {
            assert!(prev < e.id, "out of order for one key: {prev} then {}", e.id);
        }
        *seen.entry(e.id).or_default() += 1;
    }
    assert_eq!(seen.len(), 2_000);
    assert!(seen.values().all(|n| *n == 1), "duplicates were written");
}
