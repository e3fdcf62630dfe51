//! Configuration of the Kafka clients. Every option name carries its unit.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// How to reach the Kafka cluster and how to produce to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma-separated `host:port` pairs.
    pub brokers: String,
    /// Put before every topic name of topics.yaml and every consumer group id. It keeps
    /// test runs, or several pipelines on one cluster, apart. Empty in production.
    #[serde(default)]
    pub topic_prefix: String,
    /// Compression codec of produced batches: `none`, `gzip`, `snappy`, `lz4` or `zstd`.
    #[serde(default = "default_compression")]
    pub compression: String,
    /// How long a produced record may take to be acknowledged (`acks=all`) before its
    /// delivery fails (librdkafka `message.timeout.ms`).
    #[serde(default = "default_delivery_timeout_ms")]
    pub delivery_timeout_ms: u64,
    /// How long the producer waits to fill a batch (librdkafka `linger.ms`).
    #[serde(default = "default_linger_ms")]
    pub linger_ms: u64,
    /// Records the producer may hold in its local queue; beyond it sends fail fast with
    /// a queue-full error that callers surface as backpressure.
    #[serde(default = "default_queue_max_records")]
    pub queue_max_records: u32,
    /// Extra librdkafka properties (for example `security.protocol`, `sasl.mechanisms`),
    /// applied last so they override everything above.
    #[serde(default)]
    pub properties: BTreeMap<String, String>,
}

fn default_compression() -> String {
    "lz4".to_owned()
}
fn default_delivery_timeout_ms() -> u64 {
    30_000
}
fn default_linger_ms() -> u64 {
    5
}
fn default_queue_max_records() -> u32 {
    200_000
}

impl KafkaConfig {
    /// A configuration with defaults for everything but the brokers.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic_prefix: String::new(),
            compression: default_compression(),
            delivery_timeout_ms: default_delivery_timeout_ms(),
            linger_ms: default_linger_ms(),
            queue_max_records: default_queue_max_records(),
            properties: BTreeMap::new(),
        }
    }

    /// Sets the topic and group prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.topic_prefix = prefix.into();
        self
    }

    /// The consumer group id of a processor: the prefix, then `lms-<processor>`.
    pub fn group_id(&self, processor: &str) -> String {
        format!("{}lms-{}", self.topic_prefix, processor)
    }

    /// Properties shared by every client.
    pub(crate) fn base(&self, client_id: &str) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", client_id)
            // Metadata of auto-created topics (the mock cluster, tests) shows up sooner.
            .set("topic.metadata.refresh.interval.ms", "10000");
        c
    }

    /// Applies the user's extra properties last.
    pub(crate) fn finish(&self, mut c: ClientConfig) -> ClientConfig {
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// The producer configuration: idempotent, `acks=all`, compressed, bounded queue.
    pub fn producer_config(&self, client_id: &str) -> ClientConfig {
        let mut c = self.base(client_id);
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", &self.compression)
            .set("linger.ms", self.linger_ms.to_string())
            .set("message.timeout.ms", self.delivery_timeout_ms.to_string())
            .set("queue.buffering.max.messages", self.queue_max_records.to_string());
        self.finish(c)
    }

    /// The delivery timeout as a duration.
    pub fn delivery_timeout(&self) -> Duration {
        Duration::from_millis(self.delivery_timeout_ms)
    }
}

/// How a consumer-group member fetches and batches.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerConfig {
    /// Most records handed to a processor in one batch.
    #[serde(default = "default_max_batch_records")]
    pub max_batch_records: usize,
    /// Longest wait for a batch to fill once its first record arrived.
    #[serde(default = "default_max_batch_wait_ms")]
    pub max_batch_wait_ms: u64,
    /// Member is considered failed when it sends no heartbeat for this long.
    #[serde(default = "default_session_timeout_ms")]
    pub session_timeout_ms: u64,
    /// Longest time between two polls before the member leaves the group. Processing a
    /// batch, retries included, must fit in it; a store outage longer than this makes the
    /// member leave and rejoin, which is safe but slow.
    #[serde(default = "default_max_poll_interval_ms")]
    pub max_poll_interval_ms: u64,
    /// Bound on prefetched data per member (librdkafka `queued.max.messages.kbytes`): what
    /// memory a paused or slow processor can use for records not yet processed.
    #[serde(default = "default_prefetch_max_kbytes")]
    pub prefetch_max_kbytes: u64,
    /// First back-off after a transient processing error; it doubles up to the maximum.
    #[serde(default = "default_retry_initial_backoff_ms")]
    pub retry_initial_backoff_ms: u64,
    /// Longest back-off between two attempts at a batch.
    #[serde(default = "default_retry_max_backoff_ms")]
    pub retry_max_backoff_ms: u64,
    /// How often librdkafka reports statistics, from which consumer lag is exported.
    #[serde(default = "default_statistics_interval_ms")]
    pub statistics_interval_ms: u64,
    /// Longest time the broker may hold a fetch waiting for new records (librdkafka
    /// `fetch.wait.max.ms`, whose default this keeps). It is a floor under end-to-end
    /// freshness on tansu 0.6.0, which sleeps out the rest of the wait after every fetch, data
    /// or not (`loadtest soak` at 500 events/s: p50 459 ms with 500, 105 ms with 50). Lower it
    /// for freshness on the memory engine; on tansu's SQLite engine values under 500 left a
    /// member that took partitions over without records (tests/it/bus_takeover.rs).
    #[serde(default = "default_fetch_wait_max_ms")]
    pub fetch_wait_max_ms: u64,
}

fn default_max_batch_records() -> usize {
    2_000
}
fn default_max_batch_wait_ms() -> u64 {
    100
}
fn default_session_timeout_ms() -> u64 {
    10_000
}
fn default_max_poll_interval_ms() -> u64 {
    300_000
}
fn default_prefetch_max_kbytes() -> u64 {
    32 * 1024
}
fn default_retry_initial_backoff_ms() -> u64 {
    100
}
fn default_retry_max_backoff_ms() -> u64 {
    10_000
}
fn default_statistics_interval_ms() -> u64 {
    5_000
}
fn default_fetch_wait_max_ms() -> u64 {
    500
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        Self {
            max_batch_records: default_max_batch_records(),
            max_batch_wait_ms: default_max_batch_wait_ms(),
            session_timeout_ms: default_session_timeout_ms(),
            max_poll_interval_ms: default_max_poll_interval_ms(),
            prefetch_max_kbytes: default_prefetch_max_kbytes(),
            retry_initial_backoff_ms: default_retry_initial_backoff_ms(),
            retry_max_backoff_ms: default_retry_max_backoff_ms(),
            statistics_interval_ms: default_statistics_interval_ms(),
            fetch_wait_max_ms: default_fetch_wait_max_ms(),
        }
    }
}

impl ConsumerConfig {
    /// The librdkafka configuration of one group member.
    pub(crate) fn client_config(
        &self,
        kafka: &KafkaConfig,
        group_id: &str,
        client_id: &str,
    ) -> ClientConfig {
        let mut c = kafka.base(client_id);
        c.set("group.id", group_id)
            .set("partition.assignment.strategy", "cooperative-sticky")
            // Offsets are committed by the runner, explicitly, after a batch's effects are
            // durable; never by a timer and never from the consumed position.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("enable.partition.eof", "false")
            .set("session.timeout.ms", self.session_timeout_ms.to_string())
            .set("heartbeat.interval.ms", (self.session_timeout_ms / 3).max(100).to_string())
            .set("max.poll.interval.ms", self.max_poll_interval_ms.to_string())
            .set("queued.max.messages.kbytes", self.prefetch_max_kbytes.to_string())
            .set("statistics.interval.ms", self.statistics_interval_ms.to_string())
            .set("fetch.wait.max.ms", self.fetch_wait_max_ms.to_string());
        kafka.finish(c)
    }
}
