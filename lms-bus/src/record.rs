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
            .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
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

    /// The W3C trace context of the `traceparent`, `tracestate` and `baggage` headers, if
    /// any (see [`crate::propagation`]).
    pub fn trace(&self) -> Option<TraceContext> {
        crate::propagation::extract(&self.headers)
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

    /// True for a record without a value: a tombstone, which tells a compacted topic to
    /// forget its key. It carries no event; the runner skips it (see [`sort_fetched`]).
    pub fn is_tombstone(&self) -> bool {
        self.payload.is_none()
    }

    /// Decodes the event, or says why it cannot be.
    #[allow(clippy::result_large_err, reason = "the record comes back whole, to be dead-lettered byte for byte")]
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

#[cfg(any(test, feature = "test-util"))]
impl Record {
    /// `event` as a member hands it over from `offset` of partition 0 of `topic`: encoded and
    /// keyed as the producer writes it, without headers. For tests of processors (feature
    /// `test-util`).
    pub fn for_test(event: Event, topic: &str, offset: i64) -> Record {
        let raw = RawRecord {
            tp: TopicPartition::new(topic, 0),
            offset,
            key: Some(event.partition_key().as_bytes().to_vec()),
            payload: Some(codec::encode(&event)),
            headers: Vec::new(),
            timestamp_ms: None,
        };
        Record { event, trace: None, raw }
    }
}

/// Fetched records sorted for a batch: see [`sort_fetched`].
#[derive(Debug, Default)]
pub(crate) struct Fetched {
    /// Decoded records the processor accepted, in fetch order.
    pub good: Vec<Record>,
    /// Records to dead-letter, with the reason.
    pub dead: Vec<(RawRecord, String)>,
    /// Tombstones skipped, per topic.
    pub tombstones: Vec<(Arc<str>, u64)>,
}

/// Sorts a fetched batch: tombstones (records without a value, which compacted topics
/// carry to delete a key) are skipped and counted, every other record is decoded and
/// `check`ed, and those failing either go to the dead letters. The batch's offsets cover
/// every fetched record whatever its fate, so skipped tombstones are passed over.
pub(crate) fn sort_fetched(raws: Vec<RawRecord>, check: impl Fn(&Record) -> Result<(), String>) -> Fetched {
    let mut out = Fetched { good: Vec::with_capacity(raws.len()), ..Fetched::default() };
    for raw in raws {
        if raw.is_tombstone() {
            match out.tombstones.iter_mut().find(|(t, _)| *t == raw.tp.topic) {
                Some((_, n)) => *n += 1,
                None => out.tombstones.push((raw.tp.topic.clone(), 1)),
            }
            continue;
        }
        match raw.decode() {
            Ok(rec) => match check(&rec) {
                Ok(()) => out.good.push(rec),
                Err(reason) => out.dead.push((rec.raw, reason)),
            },
            Err((raw, reason)) => out.dead.push((raw, reason)),
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use lms_events::examples;

    use super::*;

    fn raw(topic: &str, offset: i64, payload: Option<Vec<u8>>) -> RawRecord {
        RawRecord {
            tp: TopicPartition::new(topic, 0),
            offset,
            key: Some(b"acme/course-1/retired".to_vec()),
            payload,
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    #[test]
    fn tombstones_are_skipped_not_dead_lettered() {
        let event = examples::event(lms_events::EventType::CourseRetired);
        let raws = vec![
            raw("catalog", 0, Some(codec::encode(&event))),
            raw("catalog", 1, None),
            raw("catalog", 2, Some(b"{not json".to_vec())),
            raw("catalog", 3, None),
            raw("learning", 4, None),
            raw("catalog", 5, Some(Vec::new())),
        ];
        let fetched = sort_fetched(raws, |_| Ok(()));
        assert_eq!(fetched.good.iter().map(|r| r.raw.offset).collect::<Vec<_>>(), [0]);
        // An empty value is a value (undecodable), not a tombstone.
        assert_eq!(fetched.dead.iter().map(|(r, _)| r.offset).collect::<Vec<_>>(), [2, 5]);
        assert_eq!(fetched.tombstones, [(Arc::from("catalog"), 2), (Arc::from("learning"), 1)]);
    }

    #[test]
    fn check_refusals_are_dead_lettered() {
        let event = examples::event(lms_events::EventType::CourseRetired);
        let fetched = sort_fetched(vec![raw("catalog", 0, Some(codec::encode(&event))), raw("catalog", 1, None)], |_| Err("no".into()));
        assert!(fetched.good.is_empty());
        assert_eq!(fetched.dead.iter().map(|(r, why)| (r.offset, why.as_str())).collect::<Vec<_>>(), [(0, "no")]);
        assert_eq!(fetched.tombstones.len(), 1);
    }
}
