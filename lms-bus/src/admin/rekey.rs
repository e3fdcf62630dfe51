//! `lms topics rekey-catalog`: give the records of an existing catalog topic the keys that
//! survive log compaction ([`lms_events::event::catalog_publication_key`],
//! [`lms_events::event::catalog_retirement_key`]).
//!
//! Before those keys, catalog records were keyed by course id alone: compaction (the latest
//! record per key) let one tenant's course replace another's, a retirement replace the
//! publication it retires, and a late lower version replace a higher one. The migration:
//! 1. read the topic from each partition's log start up to the high watermarks taken when
//!    the command starts ([`Admin::read_log`]);
//! 2. re-produce every record whose key is not the key its event gets now under that key,
//!    with the same value and headers, unless a record with that key and value is already
//!    in the log (a previous run, or the event produced again since): [`plan_rekey`];
//! 3. once every copy is acknowledged, produce a tombstone for each old key, unless it is
//!    also a key some record needs now, its latest record is already a tombstone, or it
//!    holds a record that could not be decoded (and so was not copied).
//!
//! A second run therefore produces nothing. Consumers may keep running: the catalog is
//! idempotent (a copy is a duplicate of an event it has applied) and the runner skips
//! tombstones. [`compact`] is Kafka's compaction as a function, for tests and checks.

use std::collections::{HashMap, HashSet};
use std::hash::Hash;
use std::time::{Duration, Instant};

use lms_events::codec;
use rdkafka::Message;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Headers;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};

use super::{Admin, AdminError};
use crate::producer::{OnQueueFull, OutRecord, Producer};
use crate::record::TopicPartition;

/// One record of a topic as read back, tombstones included.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    /// Partition.
    pub partition: i32,
    /// Offset in the partition.
    pub offset: i64,
    /// Key.
    pub key: Option<Vec<u8>>,
    /// Value; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Kafka's log compaction of `log` (records in offset order): the latest record of each
/// key, in the order of the log, with the keys whose latest record is a tombstone removed
/// (as they are once `delete.retention.ms` has passed). Compaction works per partition,
/// but a key always lands on one partition, so the result is the same on the whole log.
pub fn compact<K: Eq + Hash, V>(log: impl IntoIterator<Item = (K, Option<V>)>) -> Vec<(K, V)> {
    let log: Vec<(K, Option<V>)> = log.into_iter().collect();
    let mut latest: HashMap<&K, usize> = HashMap::with_capacity(log.len());
    for (i, (k, _)) in log.iter().enumerate() {
        latest.insert(k, i);
    }
    let keep: HashSet<usize> = latest.into_values().collect();
    log.into_iter().enumerate().filter(|(i, _)| keep.contains(i)).filter_map(|(_, (k, v))| v.map(|v| (k, v))).collect()
}

/// What a re-keying run will do, computed from the log alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RekeyPlan {
    /// Records read.
    pub read: usize,
    /// Records already under the key their event gets now.
    pub current: usize,
    /// Records with an old key whose copy under the new key is already in the log.
    pub already_copied: usize,
    /// Tombstones read (nothing to do for them).
    pub tombstones_read: usize,
    /// Records whose value is not an event: left as they are, and their keys are not
    /// tombstoned (the catalog dead-letters them anyway).
    pub undecodable: usize,
    /// The copies to produce: same value and headers, the new key.
    pub rekey: Vec<OutRecord>,
    /// The old keys to tombstone once every copy is acknowledged.
    pub tombstones: Vec<Vec<u8>>,
}

impl RekeyPlan {
    /// True when the run changes nothing.
    pub fn is_noop(&self) -> bool {
        self.rekey.is_empty() && self.tombstones.is_empty()
    }
}

/// Plans the re-keying of `log` (every record of `topic`, each partition in offset order).
pub fn plan_rekey(topic: &str, log: &[LogRecord]) -> RekeyPlan {
    let mut plan = RekeyPlan { read: log.len(), ..RekeyPlan::default() };
    // The new key of every record that has an event, and the (key, value) pairs present.
    let mut new_keys: Vec<Option<Vec<u8>>> = Vec::with_capacity(log.len());
    let mut needed: HashSet<Vec<u8>> = HashSet::new();
    let mut present: HashSet<(&[u8], &[u8])> = HashSet::new();
    let mut keep: HashSet<&[u8]> = HashSet::new();
    for r in log {
        let new = r.value.as_deref().and_then(|v| codec::decode(v).ok()).map(|e| e.partition_key().into_owned().into_bytes());
        match (&r.value, &new) {
            (None, _) => plan.tombstones_read += 1,
            (Some(_), None) => {
                plan.undecodable += 1;
                if let Some(k) = &r.key {
                    keep.insert(k.as_slice());
                }
            }
            (Some(v), Some(n)) => {
                needed.insert(n.clone());
                if let Some(k) = &r.key {
                    present.insert((k.as_slice(), v.as_slice()));
                }
            }
        }
        new_keys.push(new);
    }
    // The latest record of each key: whether it is a tombstone.
    let mut last_is_tombstone: HashMap<&[u8], bool> = HashMap::new();
    for r in log {
        if let Some(k) = &r.key {
            last_is_tombstone.insert(k.as_slice(), r.value.is_none());
        }
    }
    let mut copied: HashSet<(Vec<u8>, &[u8])> = HashSet::new();
    let mut old_keys: Vec<&[u8]> = Vec::new();
    let mut old_seen: HashSet<&[u8]> = HashSet::new();
    for (r, new) in log.iter().zip(&new_keys) {
        let (Some(value), Some(new)) = (&r.value, new) else { continue };
        if r.key.as_deref() == Some(new.as_slice()) {
            plan.current += 1;
            continue;
        }
        if let Some(k) = &r.key
            && old_seen.insert(k.as_slice())
        {
            old_keys.push(k.as_slice());
        }
        if present.contains(&(new.as_slice(), value.as_slice())) {
            plan.already_copied += 1;
            continue;
        }
        // The same event twice under old keys (a redelivery) is copied once.
        if copied.insert((new.clone(), value.as_slice())) {
            plan.rekey.push(OutRecord {
                topic: topic.to_owned(),
                key: Some(new.clone()),
                payload: value.clone(),
                headers: r.headers.clone(),
            });
        } else {
            plan.already_copied += 1;
        }
    }
    for k in old_keys {
        if needed.contains(k) || keep.contains(k) || last_is_tombstone.get(k).copied().unwrap_or(false) {
            continue;
        }
        plan.tombstones.push(k.to_vec());
    }
    plan
}

/// What a re-keying run did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RekeySummary {
    /// Copies produced under new keys.
    pub rekeyed: usize,
    /// Tombstones produced for old keys.
    pub tombstones: usize,
}

/// Records produced per round trip (and per progress report).
const CHUNK: usize = 1000;

/// Carries out `plan` through `producer`: every copy first, acknowledged, then the
/// tombstones. `progress` is called after each chunk with what is done so far.
pub async fn apply_rekey(
    producer: &Producer,
    topic: &str,
    plan: &RekeyPlan,
    progress: &mut (dyn FnMut(RekeySummary) + Send),
) -> Result<RekeySummary, AdminError> {
    let mut done = RekeySummary::default();
    for chunk in plan.rekey.chunks(CHUNK) {
        check(producer.send(chunk.to_vec(), OnQueueFull::Wait(Duration::from_secs(60))).await)?;
        done.rekeyed += chunk.len();
        progress(done);
    }
    for chunk in plan.tombstones.chunks(CHUNK) {
        check(producer.send_tombstones(topic, chunk.to_vec(), OnQueueFull::Wait(Duration::from_secs(60))).await)?;
        done.tombstones += chunk.len();
        progress(done);
    }
    Ok(done)
}

fn check(results: Vec<Result<crate::producer::Delivered, crate::error::ProduceError>>) -> Result<(), AdminError> {
    let total = results.len();
    let mut failed = results.into_iter().filter_map(Result::err);
    match failed.next() {
        None => Ok(()),
        Some(first) => Err(AdminError::Produce { failed: 1 + failed.count(), total, first }),
    }
}

impl Admin {
    /// Reads every record of `topic`, tombstones included, from each partition's log start
    /// up to its high watermark when the read began; records in offset order per partition,
    /// partitions in order. `progress` is called with the count read so far, every 10 000.
    pub fn read_log(&self, topic: &str, progress: &mut dyn FnMut(usize)) -> Result<Vec<LogRecord>, AdminError> {
        let parts = self.partitions(&[topic.to_owned()])?;
        let Some((_, n)) = parts.first() else {
            return Err(AdminError::Invalid(format!("the topic {topic} does not exist")));
        };
        let mut remaining: HashMap<i32, i64> = HashMap::new();
        let mut tpl = TopicPartitionList::new();
        for p in 0..*n {
            let w = self.watermarks(&TopicPartition::new(topic, p))?;
            if w.high > w.low {
                remaining.insert(p, w.high);
                tpl.add_partition_offset(topic, p, Offset::Offset(w.low))?;
            }
        }
        let mut out = Vec::new();
        if remaining.is_empty() {
            return Ok(out);
        }
        let c: BaseConsumer<crate::producer::ClientErrors> = self
            .client_config("lms-ops-read")
            .set("group.id", "lms-ops-read")
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "false")
            .create_with_context(crate::producer::ClientErrors::default())?;
        c.assign(&tpl)?;
        // No progress for this long means the broker does not deliver what it announced.
        let stall = self.timeout() * 4;
        let mut last = Instant::now();
        while !remaining.is_empty() {
            if last.elapsed() > stall {
                let mut left: Vec<String> = remaining.iter().map(|(p, end)| format!("{topic}/{p} up to {end}")).collect();
                left.sort();
                return Err(AdminError::Invalid(format!(
                    "timed out reading {topic}; not reached: {} (read {} records)",
                    left.join(", "),
                    out.len()
                )));
            }
            let Some(m) = tokio::task::block_in_place(|| c.poll(Duration::from_millis(200))) else { continue };
            let m = m?;
            let p = m.partition();
            let Some(end) = remaining.get(&p).copied() else { continue };
            last = Instant::now();
            if m.offset() < end {
                let headers = m
                    .headers()
                    .map(|hs| hs.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec).unwrap_or_default())).collect())
                    .unwrap_or_default();
                out.push(LogRecord {
                    partition: p,
                    offset: m.offset(),
                    key: m.key().map(<[u8]>::to_vec),
                    value: m.payload().map(<[u8]>::to_vec),
                    headers,
                });
                if out.len().is_multiple_of(10_000) {
                    progress(out.len());
                }
            }
            if m.offset() + 1 >= end {
                remaining.remove(&p);
            }
        }
        out.sort_by_key(|r| (r.partition, r.offset));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use lms_events::data::{CoursePublished, CourseRetired, Module};
    use lms_events::{Event, EventData};

    use super::*;

    #[test]
    fn compaction_keeps_the_latest_record_per_key_and_applies_tombstones() {
        let log = [("a", Some(1)), ("b", Some(2)), ("a", Some(3)), ("c", Some(4)), ("b", None), ("d", None), ("c", Some(5))];
        assert_eq!(compact(log), [("a", 3), ("c", 5)]);
        // A key written again after its tombstone lives again.
        assert_eq!(compact([("a", Some(1)), ("a", None), ("a", Some(2))]), [("a", 2)]);
        assert!(compact(Vec::<(u8, Option<u8>)>::new()).is_empty());
    }

    fn event(tenant: &str, id: &str, data: EventData) -> Event {
        let t = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time");
        Event::derived(tenant, "test", t, data).with_id(id)
    }

    fn published(tenant: &str, course: &str, version: u32) -> Event {
        let data = CoursePublished {
            course_id: course.into(),
            title: format!("{course} v{version}"),
            version,
            modules: vec![Module { module_id: "m".into(), lessons: vec!["l1".into()] }],
        };
        event(tenant, &format!("{tenant}-{course}-{version}"), EventData::CoursePublished(data))
    }

    fn retired(tenant: &str, course: &str) -> Event {
        event(tenant, &format!("{tenant}-{course}-retired"), EventData::CourseRetired(CourseRetired { course_id: course.into() }))
    }

    /// The log as produced with course-id keys, plus what `plan` adds, as a new log.
    fn record(i: usize, key: &[u8], e: Option<&Event>) -> LogRecord {
        LogRecord {
            partition: 0,
            offset: i as i64,
            key: Some(key.to_vec()),
            value: e.map(codec::encode),
            headers: vec![("content-type".into(), b"x".to_vec())],
        }
    }

    fn applied(log: &[LogRecord], plan: &RekeyPlan) -> Vec<LogRecord> {
        let mut out = log.to_vec();
        for r in &plan.rekey {
            out.push(LogRecord {
                partition: 0,
                offset: out.len() as i64,
                key: r.key.clone(),
                value: Some(r.payload.clone()),
                headers: r.headers.clone(),
            });
        }
        for k in &plan.tombstones {
            out.push(LogRecord { partition: 0, offset: out.len() as i64, key: Some(k.clone()), value: None, headers: vec![] });
        }
        out
    }

    #[test]
    fn rekeying_copies_each_event_once_then_tombstones_the_old_keys_and_is_idempotent() {
        let events = [
            published("acme", "c1", 2),
            published("globex", "c1", 1),
            published("acme", "c1", 1),
            published("acme", "c1", 1), // redelivered
            retired("globex", "c1"),
        ];
        let mut log: Vec<LogRecord> = events.iter().enumerate().map(|(i, e)| record(i, b"c1", Some(e))).collect();
        log.push(record(5, b"junk", None));
        log.push(LogRecord { value: Some(b"{not json".to_vec()), ..record(6, b"poison", None) });
        // A record already under its new key (produced by the new API).
        let fresh = published("acme", "c2", 1);
        log.push(record(7, fresh.partition_key().as_bytes(), Some(&fresh)));

        let plan = plan_rekey("catalog", &log);
        assert_eq!(plan.read, 8);
        assert_eq!((plan.current, plan.already_copied, plan.tombstones_read, plan.undecodable), (1, 1, 1, 1));
        let keys: Vec<String> =
            plan.rekey.iter().map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()).into_owned()).collect();
        assert_eq!(keys.len(), 4, "{keys:?}");
        assert!(keys.contains(&"globex/c1/retired".to_owned()));
        assert!(plan.rekey.iter().all(|r| r.headers == [("content-type".to_owned(), b"x".to_vec())]), "headers are kept");
        assert_eq!(plan.tombstones, [b"c1".to_vec()], "the poison's key and tombstoned keys are left alone");

        let after = applied(&log, &plan);
        let again = plan_rekey("catalog", &after);
        assert!(again.is_noop(), "a second run changes nothing: {again:?}");
        assert_eq!(again.already_copied, 5);

        // Compacted, every event survives under its new key.
        let survivors: Vec<Event> = compact(after.iter().map(|r| (r.key.clone(), r.value.clone())))
            .into_iter()
            .filter_map(|(_, v)| codec::decode(&v).ok())
            .collect();
        for e in events.iter().chain([&fresh]) {
            assert!(survivors.contains(e), "{} survives", e.id);
        }
    }

    #[test]
    fn an_old_key_that_is_also_a_new_key_is_not_tombstoned() {
        // A course id that happens to be spelled like a new key.
        let odd = retired("acme", "x");
        let clash = odd.partition_key().into_owned();
        let other = published("acme", &clash, 1);
        let log = vec![record(0, clash.as_bytes(), Some(&other)), record(1, b"x", Some(&odd))];
        let plan = plan_rekey("catalog", &log);
        assert_eq!(plan.rekey.len(), 2);
        assert_eq!(plan.tombstones, [b"x".to_vec()]);
    }
}
