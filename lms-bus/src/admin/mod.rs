//! Operator tools on the cluster: consumer groups and their lag ([`groups`]), resetting a
//! group for a replay ([`replay`]), reading and re-driving dead letters ([`dlq`]), and
//! re-keying the catalog topic for compaction ([`rekey`], with Kafka's compaction as a
//! function).
//!
//! Every call here talks to the broker synchronously (librdkafka's admin requests
//! block): the async functions wrap them in `block_in_place`, so they must run on a
//! multi-threaded Tokio runtime, which the binary and the tests use.
//!
//! Offsets that matter: processors whose [`crate::Processor::offset_store`] is `Some` keep
//! their offsets in their state store, in the transaction of their effects; the Kafka
//! commit only mirrors them. Lag and replays therefore read and write the store's offsets
//! for those groups (through [`crate::OffsetStore`] and the caller), and Kafka's for the
//! others; `lms groups` shows both, and says which one the lag is computed from.

pub mod dlq;
pub mod groups;
pub mod rekey;
pub mod replay;

use std::time::Duration;

use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};

use crate::producer::ClientErrors;
use rdkafka::error::KafkaError;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;
use crate::error::BoxError;
use crate::record::TopicPartition;

/// Errors of the operator tools.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The Kafka client or the broker failed.
    #[error("kafka: {0}")]
    Kafka(#[from] KafkaError),
    /// The state store failed.
    #[error("state store: {0}")]
    Store(#[source] BoxError),
    /// The operation is refused as unsafe (for example: the group has live members).
    #[error("refused: {0}")]
    Refused(String),
    /// The request does not make sense for this group or topic.
    #[error("invalid request: {0}")]
    Invalid(String),
    /// The broker cannot answer this (a missing or broken API).
    #[error("the broker cannot tell: {0}")]
    Unsupported(String),
    /// Records the tool produces were not acknowledged.
    #[error("{failed} of {total} records not produced, the first because: {first}")]
    Produce {
        /// How many failed.
        failed: usize,
        /// How many were sent.
        total: usize,
        /// The error of the first that failed.
        #[source]
        first: crate::error::ProduceError,
    },
}

/// A client for the operator tools: metadata, watermarks, group listings, and offset
/// fetches and commits on behalf of a group (without joining it).
pub struct Admin {
    kafka: KafkaConfig,
    client: BaseConsumer<ClientErrors>,
    timeout: Duration,
}

/// The first and one-past-the-last offset of a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Watermarks {
    /// The oldest offset still in the log.
    pub low: i64,
    /// One past the newest record (the log end).
    pub high: i64,
}

impl Admin {
    /// An admin client for the cluster of `kafka`.
    pub fn new(kafka: &KafkaConfig) -> Result<Self, AdminError> {
        let client: BaseConsumer<ClientErrors> =
            kafka.finish(kafka.base("lms-ops")).set("group.id", "lms-ops").create_with_context(ClientErrors::default())?;
        Ok(Self { kafka: kafka.clone(), client, timeout: Duration::from_secs(15) })
    }

    /// The Kafka settings this client was made with.
    pub fn kafka(&self) -> &KafkaConfig {
        &self.kafka
    }

    /// Partition count of each topic that exists (absent topics are left out).
    pub fn partitions(&self, topics: &[String]) -> Result<Vec<(String, i32)>, AdminError> {
        let md = tokio::task::block_in_place(|| self.client.fetch_metadata(None, self.timeout))?;
        let mut out = Vec::new();
        for t in topics {
            if let Some(m) = md.topics().iter().find(|m| m.name() == t)
                && m.error().is_none()
                && !m.partitions().is_empty()
            {
                out.push((t.clone(), m.partitions().len() as i32));
            }
        }
        Ok(out)
    }

    /// Low and high watermarks of a partition.
    pub fn watermarks(&self, tp: &TopicPartition) -> Result<Watermarks, AdminError> {
        let (low, high) = tokio::task::block_in_place(|| self.client.fetch_watermarks(&tp.topic, tp.partition, self.timeout))?;
        Ok(Watermarks { low, high })
    }

    /// A consumer carrying `group`'s id that never subscribes: it fetches and commits the
    /// group's offsets without joining the group.
    fn group_client(&self, group: &str) -> Result<BaseConsumer<ClientErrors>, AdminError> {
        Ok(self
            .kafka
            .finish(self.kafka.base("lms-ops"))
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create_with_context(ClientErrors::default())?)
    }

    /// The offsets `group` has committed to Kafka (next offset to read) for `partitions`;
    /// partitions without a commit are absent.
    pub fn committed(
        &self,
        group: &str,
        partitions: &[TopicPartition],
    ) -> Result<std::collections::HashMap<TopicPartition, i64>, AdminError> {
        if partitions.is_empty() {
            return Ok(Default::default());
        }
        let c = self.group_client(group)?;
        let mut tpl = TopicPartitionList::new();
        for tp in partitions {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        let got = tokio::task::block_in_place(|| c.committed_offsets(tpl, self.timeout))?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }

    /// Commits offsets for `group` from outside it. Kafka accepts this only while the
    /// group has no members (a live group answers with a generation or member error).
    pub fn commit(&self, group: &str, offsets: &[(TopicPartition, i64)]) -> Result<(), AdminError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let c = self.group_client(group)?;
        let mut tpl = TopicPartitionList::new();
        for (tp, o) in offsets {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o))?;
        }
        tokio::task::block_in_place(|| c.commit(&tpl, rdkafka::consumer::CommitMode::Sync))?;
        Ok(())
    }

    /// For each partition, the first offset whose record timestamp is at or after
    /// `timestamp_ms`; `None` when no record is that recent. The answer is checked: the
    /// record at each offset must be that recent, and where the broker says none is, the
    /// newest record must not be; otherwise the broker does not implement ListOffsets by
    /// time ([`AdminError::Unsupported`]: tansu 0.6.0 answers 0, librdkafka's mock cluster
    /// answers "none" for every time).
    pub fn offsets_for_time(
        &self,
        partitions: &[TopicPartition],
        timestamp_ms: i64,
    ) -> Result<Vec<(TopicPartition, Option<i64>)>, AdminError> {
        let mut tpl = TopicPartitionList::new();
        for tp in partitions {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(timestamp_ms))?;
        }
        let got = tokio::task::block_in_place(|| self.client.offsets_for_times(tpl, self.timeout))?;
        let mut out = Vec::with_capacity(partitions.len());
        for tp in partitions {
            let o = got.find_partition(&tp.topic, tp.partition).and_then(|e| match e.offset() {
                Offset::Offset(o) if o >= 0 => Some(o),
                _ => None,
            });
            let w = self.watermarks(tp)?;
            match o {
                Some(o) if o < w.high => match self.record_timestamp(tp, o)? {
                    Some(ts) if ts >= timestamp_ms => {}
                    other => {
                        return Err(AdminError::Unsupported(format!(
                            "asked for the first record of {tp} at or after {timestamp_ms} ms, the broker answered offset {o}, \
                             whose record is from {other:?} ms: it does not implement ListOffsets by time"
                        )));
                    }
                },
                None if w.high > w.low => {
                    if let Some(ts) = self.record_timestamp(tp, w.high - 1)?.filter(|ts| *ts >= timestamp_ms) {
                        return Err(AdminError::Unsupported(format!(
                            "asked for the first record of {tp} at or after {timestamp_ms} ms, the broker answered that none \
                             is, but its newest record (offset {}) is from {ts} ms: it does not implement ListOffsets by time",
                            w.high - 1
                        )));
                    }
                }
                _ => {}
            }
            out.push((tp.clone(), o));
        }
        Ok(out)
    }

    /// The timestamp (ms) of the record at `offset`.
    fn record_timestamp(&self, tp: &TopicPartition, offset: i64) -> Result<Option<i64>, AdminError> {
        use rdkafka::Message as _;
        let c: BaseConsumer<ClientErrors> = self
            .client_config("lms-ops")
            .set("group.id", "lms-ops")
            .set("enable.auto.commit", "false")
            .create_with_context(ClientErrors::default())?;
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(offset))?;
        c.assign(&tpl)?;
        let deadline = std::time::Instant::now() + self.timeout;
        while std::time::Instant::now() < deadline {
            if let Some(m) = tokio::task::block_in_place(|| c.poll(Duration::from_millis(200))) {
                let m = m?;
                if m.offset() >= offset {
                    return Ok(m.timestamp().to_millis());
                }
            }
        }
        Err(AdminError::Unsupported(format!("no record at {tp}@{offset} within {:?}", self.timeout)))
    }

    /// A raw client configuration for the cluster (dead-letter reading).
    pub(crate) fn client_config(&self, client_id: &str) -> ClientConfig {
        self.kafka.finish(self.kafka.base(client_id))
    }

    /// The request timeout.
    pub(crate) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The underlying client (group listings).
    pub(crate) fn client(&self) -> &BaseConsumer<ClientErrors> {
        &self.client
    }
}
