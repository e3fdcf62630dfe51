//! `lms dlq`: read dead letters (reason, origin, event) and re-drive chosen ones to the
//! topic they came from once the cause is fixed.
//!
//! A dead letter is the original record byte for byte (key, value, headers) plus
//! `lms_dlq_*` headers: reason, source topic, partition, offset, group and time (see
//! `Producer::dead_letter_record`). Re-driving produces the original key, value and
//! headers back to the source topic, without the `lms_dlq_*` headers and with
//! `lms_redriven_from: <dlq topic>/<partition>/<offset>`. Processors are idempotent by
//! event id, so re-driving a record twice changes nothing more than once.

use lms_events::codec::{self, headers as h};
use serde::Serialize;

use super::rekey::LogRecord;
use super::{Admin, AdminError};
use crate::producer::OutRecord;

/// The header a re-driven record carries: where on the dead-letter topic it came from.
pub const REDRIVEN_FROM: &str = "lms_redriven_from";

/// One dead letter.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DeadLetter {
    /// Dead-letter topic.
    pub topic: String,
    /// Its partition there.
    pub partition: i32,
    /// Its offset there.
    pub offset: i64,
    /// Why it was dead-lettered.
    pub reason: String,
    /// Topic it came from.
    pub source_topic: String,
    /// Partition it came from.
    pub source_partition: Option<i32>,
    /// Offset it had there.
    pub source_offset: Option<i64>,
    /// Consumer group that refused it.
    pub group: String,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
    /// The event id, when the value decodes.
    pub event_id: Option<String>,
    /// The event type, when the value decodes.
    pub event_type: Option<String>,
    /// The tenant, when the value decodes.
    pub tenant: Option<String>,
    /// The record key, lossily as UTF-8.
    pub key: Option<String>,
    /// The record value, lossily as UTF-8.
    pub value: String,
    /// Every header, values lossily as UTF-8.
    pub headers: Vec<(String, String)>,
    #[serde(skip)]
    raw_key: Option<Vec<u8>>,
    #[serde(skip)]
    raw_value: Vec<u8>,
    #[serde(skip)]
    raw_headers: Vec<(String, Vec<u8>)>,
}

impl DeadLetter {
    /// `partition:offset` on the dead-letter topic.
    pub fn position(&self) -> String {
        format!("{}:{}", self.partition, self.offset)
    }

    /// The record that puts it back on its source topic.
    pub fn redrive_record(&self) -> Result<OutRecord, AdminError> {
        if self.source_topic.is_empty() {
            return Err(AdminError::Invalid(format!("dead letter {} names no source topic", self.position())));
        }
        let mut headers: Vec<(String, Vec<u8>)> =
            self.raw_headers.iter().filter(|(k, _)| !k.starts_with("lms_dlq_") && k != REDRIVEN_FROM).cloned().collect();
        headers.push((REDRIVEN_FROM.to_owned(), format!("{}/{}/{}", self.topic, self.partition, self.offset).into_bytes()));
        Ok(OutRecord { topic: self.source_topic.clone(), key: self.raw_key.clone(), payload: self.raw_value.clone(), headers })
    }

    fn from_log(topic: &str, r: LogRecord) -> DeadLetter {
        let get = |name: &str| {
            r.headers.iter().find(|(k, _)| k == name).map(|(_, v)| String::from_utf8_lossy(v).into_owned()).unwrap_or_default()
        };
        let raw_value = r.value.unwrap_or_default();
        let event = codec::decode(&raw_value).ok();
        DeadLetter {
            topic: topic.to_owned(),
            partition: r.partition,
            offset: r.offset,
            reason: get(h::DLQ_REASON),
            source_topic: get(h::DLQ_SOURCE_TOPIC),
            source_partition: get(h::DLQ_SOURCE_PARTITION).parse().ok(),
            source_offset: get(h::DLQ_SOURCE_OFFSET).parse().ok(),
            group: get(h::DLQ_GROUP),
            dead_lettered_at: get(h::DLQ_AT),
            event_id: event.as_ref().map(|e| e.id.clone()),
            event_type: event.as_ref().map(|e| e.event_type().as_str().to_owned()),
            tenant: event.as_ref().map(|e| e.tenant.clone()),
            key: r.key.as_deref().map(|k| String::from_utf8_lossy(k).into_owned()),
            value: String::from_utf8_lossy(&raw_value).into_owned(),
            headers: r.headers.iter().map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned())).collect(),
            raw_key: r.key,
            raw_value,
            raw_headers: r.headers,
        }
    }
}

/// Which dead letters to pick. Every given criterion must hold; none given picks all.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    /// `(partition, offset)` positions on the dead-letter topic.
    pub positions: Vec<(i32, i64)>,
    /// Event ids.
    pub event_ids: Vec<String>,
    /// A substring of the reason.
    pub reason_contains: Option<String>,
    /// The source topic.
    pub source_topic: Option<String>,
    /// The group that dead-lettered them.
    pub group: Option<String>,
}

impl Selection {
    /// True when nothing narrows the selection.
    pub fn is_everything(&self) -> bool {
        self.positions.is_empty()
            && self.event_ids.is_empty()
            && self.reason_contains.is_none()
            && self.source_topic.is_none()
            && self.group.is_none()
    }

    /// Whether `d` is selected.
    pub fn matches(&self, d: &DeadLetter) -> bool {
        (self.positions.is_empty() || self.positions.contains(&(d.partition, d.offset)))
            && (self.event_ids.is_empty() || d.event_id.as_ref().is_some_and(|id| self.event_ids.contains(id)))
            && self.reason_contains.as_ref().is_none_or(|s| d.reason.contains(s.as_str()))
            && self.source_topic.as_ref().is_none_or(|t| &d.source_topic == t)
            && self.group.as_ref().is_none_or(|g| &d.group == g)
    }
}

impl Admin {
    /// Reads every dead letter on `topic`, from each partition's log start to its log
    /// end as the broker reported them when the read began ([`Admin::read_log`]).
    pub fn dead_letters(&self, topic: &str) -> Result<Vec<DeadLetter>, AdminError> {
        let log = self.read_log(topic, &mut |_| {})?;
        Ok(log.into_iter().map(|r| DeadLetter::from_log(topic, r)).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dl(p: i32, o: i64, reason: &str, id: Option<&str>) -> DeadLetter {
        DeadLetter {
            topic: "dlq".into(),
            partition: p,
            offset: o,
            reason: reason.into(),
            source_topic: "learning".into(),
            source_partition: Some(2),
            source_offset: Some(40),
            group: "lms-progress".into(),
            dead_lettered_at: String::new(),
            event_id: id.map(str::to_owned),
            event_type: None,
            tenant: None,
            key: Some("k".into()),
            value: "v".into(),
            headers: vec![],
            raw_key: Some(b"k".to_vec()),
            raw_value: b"v".to_vec(),
            raw_headers: vec![
                ("content-type".into(), b"x".to_vec()),
                (h::DLQ_REASON.into(), reason.as_bytes().to_vec()),
                (REDRIVEN_FROM.into(), b"old".to_vec()),
            ],
        }
    }

    #[test]
    fn selections_combine_their_criteria() {
        let a = dl(0, 1, "undecodable event: x", None);
        let b = dl(0, 2, "refused by check", Some("e2"));
        assert!(Selection::default().matches(&a) && Selection::default().is_everything());
        let s = Selection { reason_contains: Some("check".into()), ..Default::default() };
        assert!(!s.matches(&a) && s.matches(&b));
        let s = Selection { positions: vec![(0, 1)], event_ids: vec!["e2".into()], ..Default::default() };
        assert!(!s.matches(&a) && !s.matches(&b), "both criteria must hold");
        let s = Selection { event_ids: vec!["e2".into()], group: Some("lms-progress".into()), ..Default::default() };
        assert!(s.matches(&b));
    }

    #[test]
    fn a_redriven_record_is_the_original_without_dead_letter_headers() {
        let r = dl(3, 7, "r", None).redrive_record().expect("record");
        assert_eq!((r.topic.as_str(), r.key.as_deref(), r.payload.as_slice()), ("learning", Some(&b"k"[..]), &b"v"[..]));
        assert_eq!(r.headers, vec![("content-type".to_owned(), b"x".to_vec()), (REDRIVEN_FROM.to_owned(), b"dlq/3/7".to_vec())]);
    }
}
