//! The durable broker the take-over tests run on must resume a partition at an offset
//! inside a record batch. tansu 0.6.0's memory engine does not: a fetch at an offset in
//! the middle of a stored batch returns the *next* batch, silently skipping the rest of
//! the one asked for (seen here: 100 records produced as one batch, a fetch at offset 1
//! returned nothing). Its SQLite engine is correct, so every test that resumes a group
//! from committed or stored offsets uses `durable_kafka_brokers()`.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};
use tests::{create_topic, durable_kafka_brokers, unique_prefix};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_durable_broker_resumes_inside_a_record_batch() {
    let brokers = durable_kafka_brokers();
    let topic = format!("{}probe", unique_prefix("probe"));
    create_topic(&brokers, &topic, 1).await;
    let p: FutureProducer = ClientConfig::new().set("bootstrap.servers", &brokers).set("linger.ms", "200").create().expect("producer");
    let sends = (0..100).map(|i| {
        let (p, t) = (p.clone(), topic.clone());
        async move { p.send(FutureRecord::to(&t).key("k").payload(&format!("v{i}")), Duration::from_secs(10)).await.map(|d| d.offset) }
    });
    let offsets: Vec<i64> = futures::future::join_all(sends).await.into_iter().map(|r| r.expect("delivered")).collect();
    assert_eq!((offsets[0], offsets[99]), (0, 99));
    for start in [1i64, 50, 99] {
        let c: BaseConsumer = ClientConfig::new().set("bootstrap.servers", &brokers).set("group.id", "probe").create().expect("consumer");
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&topic, 0, Offset::Offset(start)).expect("tpl");
        c.assign(&tpl).expect("assign");
        let mut got = Vec::new();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while got.len() < (100 - start) as usize {
            assert!(std::time::Instant::now() < deadline, "from offset {start}: only {got:?}");
            if let Some(m) = tokio::task::block_in_place(|| c.poll(Duration::from_millis(100))) {
                got.push(m.expect("record").offset());
            }
        }
        assert_eq!(got, (start..100).collect::<Vec<_>>());
    }
}
