//! Replay: after the analytics group has processed a stream, its offsets are reset to the
//! beginning and every record is processed again. Every answer must stay what it was (and
//! the oracle's), before and after ClickHouse merged the duplicate rows away.

use std::sync::Arc;
use std::time::Duration;

use lms_analytics::AnalyticsStore;
use lms_bus::BusMetrics;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tests::{eventually, init_logs, kafka_brokers, unique_prefix};
use tokio_util::sync::CancellationToken;

use crate::analytics_common::{
    Ends, Oracle, answers, assert_same, assert_substantial, committed_to_ends, create_sink_topics, fresh_clickhouse, generate,
    oracle_answers, produce, queries, spawn_sink,
};
use crate::support::{committed, kafka, producer};

const TENANTS: usize = 2;

/// Commits offset 0 on every partition of `ends` for `group` (no member may be running).
fn reset_to_beginning(brokers: &str, group: &str, ends: &Ends) {
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for (topic, parts) in ends {
        for p in parts.keys() {
            tpl.add_partition_offset(topic, *p, Offset::Offset(0)).expect("offset");
        }
    }
    c.commit(&tpl, CommitMode::Sync).expect("reset the group's offsets");
}

async fn wait_committed(brokers: &str, group: &str, ends: &Ends) {
    eventually("the analytics group to commit every partition to its end", Duration::from_secs(180), || {
        let (brokers, group, ends) = (brokers.to_owned(), group.to_owned(), ends.clone());
        async move {
            tokio::task::spawn_blocking(move || committed_to_ends(&brokers, &group, &ends)).await.expect("check offsets").then_some(())
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_replay_from_the_beginning_changes_no_answer() {
    init_logs();
    let stream = generate(1234, TENANTS, 30);
    let brokers = kafka_brokers();
    let kafka = kafka(&brokers, &unique_prefix("analytics-replay"));
    create_sink_topics(&brokers, &kafka).await;
    let metrics = BusMetrics::standalone();
    let producer = producer(&kafka, metrics.clone());
    let ends = produce(&producer, &stream.delivered).await;
    let store = Arc::new(fresh_clickhouse("replay").await);
    let group = kafka.group_id("analytics");
    let q = queries(TENANTS);
    let expected = oracle_answers(&Oracle::new(&stream.distinct), &q);
    assert_substantial(&expected);

    let shutdown = CancellationToken::new();
    let member = spawn_sink(&kafka, store.clone(), producer.clone(), metrics.clone(), shutdown.clone());
    wait_committed(&brokers, &group, &ends).await;
    shutdown.cancel();
    member.join().await.expect("first member stops");
    let first = answers(store.as_ref() as &dyn AnalyticsStore, &q).await;
    assert_same("first pass", &first, &expected);

    {
        let (brokers, group, ends) = (brokers.clone(), group.clone(), ends.clone());
        tokio::task::spawn_blocking(move || reset_to_beginning(&brokers, &group, &ends)).await.expect("reset");
    }
    for (topic, parts) in &ends {
        let got = committed(&brokers, &group, topic, crate::analytics_common::PARTITIONS);
        assert!(parts.keys().all(|p| got.get(p) == Some(&0)), "{topic} reset to 0: {got:?}");
    }

    let shutdown = CancellationToken::new();
    let member = spawn_sink(&kafka, store.clone(), producer.clone(), metrics.clone(), shutdown.clone());
    wait_committed(&brokers, &group, &ends).await;
    shutdown.cancel();
    let report = member.join().await.expect("replaying member stops");
    assert_eq!(report.records as usize, stream.delivered.len(), "the replay processed every record again");
    let raw_rows: u64 = store.client().query("SELECT count() FROM events").fetch_one().await.expect("count");
    let distinct: u64 = store.client().query("SELECT uniqExact(tenant, id) FROM events").fetch_one().await.expect("uniq");
    assert_eq!(distinct as usize, stream.distinct.len());
    assert!(
        raw_rows as usize > stream.delivered.len() || raw_rows as usize == stream.distinct.len(),
        "the replay wrote every event again (or merges already dropped the copies): {raw_rows} rows"
    );
    assert_same("after the replay", &answers(store.as_ref() as &dyn AnalyticsStore, &q).await, &first);

    // Merged: duplicates gone from the tables, answers unchanged.
    for table in ["events", "activity_daily", "course_activity", "enrollments", "completions", "progress", "payments", "attempts"] {
        store.client().query(&format!("OPTIMIZE TABLE {table} FINAL")).execute().await.expect("optimize");
    }
    let merged: u64 = store.client().query("SELECT count() FROM events").fetch_one().await.expect("count");
    assert_eq!(merged as usize, stream.distinct.len(), "merges keep one row per event");
    assert_same("after merges", &answers(store.as_ref() as &dyn AnalyticsStore, &q).await, &first);
}
