//! The analytics sink through the real broker into the real ClickHouse: a generated stream
//! with duplicates, reordering, refunds and several tenants; every analytics endpoint must
//! equal the oracle's plain computation over the distinct events.

use std::sync::Arc;
use std::time::Duration;

use lms_analytics::AnalyticsStore;
use lms_bus::BusMetrics;
use tests::{eventually, init_logs, kafka_brokers, unique_prefix};
use tokio_util::sync::CancellationToken;

use crate::analytics_common::{
    Oracle, answers, assert_same, assert_substantial, committed_to_ends, create_sink_topics, fresh_clickhouse, generate, oracle_answers,
    produce, queries, spawn_sink,
};
use crate::support::{kafka, producer};

const TENANTS: usize = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn analytics_clickhouse_through_the_broker_equals_the_oracle() {
    init_logs();
    let stream = generate(42, TENANTS, 40);
    assert!(stream.delivered.len() > stream.distinct.len(), "the delivery holds duplicates");
    let brokers = kafka_brokers();
    let kafka = kafka(&brokers, &unique_prefix("analytics-oracle"));
    create_sink_topics(&brokers, &kafka).await;
    let metrics = BusMetrics::standalone();
    let producer = producer(&kafka, metrics.clone());
    let ends = produce(&producer, &stream.delivered).await;

    let store = Arc::new(fresh_clickhouse("oracle").await);
    let shutdown = CancellationToken::new();
    let member = spawn_sink(&kafka, store.clone(), producer.clone(), metrics.clone(), shutdown.clone());
    let group = kafka.group_id("analytics");
    eventually("the analytics group to commit every partition to its end", Duration::from_secs(180), || {
        let (brokers, group, ends) = (brokers.clone(), group.clone(), ends.clone());
        async move {
            tokio::task::spawn_blocking(move || committed_to_ends(&brokers, &group, &ends)).await.expect("check offsets").then_some(())
        }
    })
    .await;
    shutdown.cancel();
    let report = member.join().await.expect("member stops");
    assert_eq!(report.records as usize, stream.delivered.len(), "every delivered record processed once");

    let q = queries(TENANTS);
    let expected = oracle_answers(&Oracle::new(&stream.distinct), &q);
    assert_substantial(&expected);
    let got = answers(store.as_ref() as &dyn AnalyticsStore, &q).await;
    assert_same("clickhouse via the sink", &got, &expected);
}
