//! What a consumer-group member hands to a processor.

use std::fmt;
use std::sync::Arc;

use lms_events::{Event, TraceContext, codec};
use rdkafka::Message;
use rdkafka::message::{BorrowedMessage, Headers};

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    /// Topic name.
    pub topic: Arc<str>,
    /// Partition number.
    pub partition: i32,
}

impl TopicPartition {
    /// Builds one.
    pub fn new(topic: &str, partition: i32) -> Self {
        Self { topic: Arc::from(topic), partition }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A record as fetched, before decoding; kept so that a record that cannot be processed
/// is dead-lettered byte for byte.
#[derive(Debug, Clone)]
pub struct RawRecord {
    /// Where it came from.
    pub tp: TopicPartition,
    /// Its offset in the partition.
    pub offset: i64,
    /// Record key.
    pub key: Option<Vec<u8>>,
    /// Record value.
    pub payload: Option<Vec<u8>>,
    /// Record headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// Broker or producer timestamp, in ms since the epoch.
    pub timestamp_ms: Option<i64>,
}

impl RawRecord {
    /// Copies a fetched message.
    pub fn from_message(m: &BorrowedMessage<'_>, topic: Arc<str>) -> Self {
        let headers = m
            .headers()
            .map(|hs| {
                hs.iter()
                    .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default()))
                    .collect()
            })
            .unwrap_or_default();
        Self {
            tp: TopicPartition { topic, partition: m.partition() },
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            headers,
            timestamp_ms: m.timestamp().to_millis(),
        }
    }

    /// The value of the first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_slice())
    }

    /// The W3C trace context of the `traceparent` header, if any.
    pub fn trace(&self) -> Option<TraceContext> {
        self.header(codec::headers::TRACEPARENT)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(TraceContext::parse_traceparent)
    }

    /// The `id` of the event in the value, when the value is a JSON object that has one,
    /// even if it is not a valid event (for log lines about records that fail).
    pub fn event_id(&self) -> Option<String> {
        #[derive(serde::Deserialize)]
        struct Id {
            id: String,
        }
        serde_json::from_slice::<Id>(self.payload.as_deref()?).ok().map(|i| i.id)
    }

    /// Decodes the event, or says why it cannot be.
    pub fn decode(self) -> Result<Record, (RawRecord, String)> {
        let Some(payload) = self.payload.as_deref() else {
            return Err((self, "the record has no value".to_owned()));
        };
        match codec::decode(payload) {
            Ok(event) => Ok(Record { event, trace: self.trace(), raw: self }),
            Err(e) => {
                let reason = format!("undecodable event: {e}");
                Err((self, reason))
            }
        }
    }
}

/// A decoded record.
#[derive(Debug, Clone)]
pub struct Record {
    /// The event.
    pub event: Event,
    /// W3C trace context from the `traceparent` header, if any.
    pub trace: Option<TraceContext>,
    /// The record as fetched.
    pub raw: RawRecord,
}

/// Offsets of one partition in a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionOffsets {
    /// The partition.
    pub tp: TopicPartition,
    /// The next offset this member believes is stored for the partition (`None`: nothing
    /// stored yet). A store that keeps offsets with its effects must refuse the batch
    /// ([`crate::ProcessError::Fenced`]) unless its stored offset equals this: that is
    /// what fences a member that lost the partition to another one.
    pub expected: Option<i64>,
    /// The next offset to read once this batch is durable: one past its last record.
    pub next: i64,
}

/// A batch of decoded records from the partitions assigned to one member.
#[derive(Debug, Clone)]
pub struct Batch {
    /// The consumer group.
    pub group: Arc<str>,
    /// Records in fetch order (offset order within each partition). May be empty when
    /// only offsets advance (every record of the range was dead-lettered).
    pub records: Vec<Record>,
    /// Offsets the batch covers, one entry per partition.
    pub offsets: Vec<PartitionOffsets>,
    /// The dead letters of records of this batch's range that never reached the processor
    /// (undecodable, or refused by `check`), produced while the batch is processed.
    pub dead_letters: DeadLetters,
}

/// Opens once the dead letters of a batch's range are acknowledged by the broker.
///
/// The member produces them while the processor works, so their round trip does not add to
/// the batch's time. A processor that stores its offsets with its effects must wait for
/// [`DeadLetters::acknowledged`] before committing: offsets past a poison record may become
/// durable only after its dead letter did, or a crash in between would lose it. (For
/// processors whose offsets go to Kafka, the member itself waits before committing.)
#[derive(Debug, Clone, Default)]
pub struct DeadLetters(Option<tokio::sync::watch::Receiver<Option<bool>>>);

impl DeadLetters {
    /// Nothing to wait for.
    pub fn none() -> Self {
        Self(None)
    }

    /// A gate and the sender that opens it (`Some(true)`: acknowledged; `Some(false)` or a
    /// dropped sender: the member stopped first).
    pub(crate) fn pending() -> (tokio::sync::watch::Sender<Option<bool>>, Self) {
        let (tx, rx) = tokio::sync::watch::channel(None);
        (tx, Self(Some(rx)))
    }

    /// True once every dead letter is acknowledged; false when the member stopped before.
    pub async fn acknowledged(&self) -> bool {
        let Some(rx) = &self.0 else { return true };
        let mut rx = rx.clone();
        match rx.wait_for(Option::is_some).await {
            Ok(v) => (*v).unwrap_or(false),
            Err(_) => false,
        }
    }
}
