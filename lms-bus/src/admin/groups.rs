//! `lms groups`: every consumer group of the pipeline with its members, their
//! partitions, the offsets that matter, the log ends, the lag and its trend.
//!
//! Which offset the lag is computed from: for a group whose processor keeps offsets in
//! its state store ([`OffsetsKeptIn::Store`]) the store's next offset is the truth (the
//! member seeks there on assignment; the Kafka commit is a mirror that may lag behind
//! when a commit failed); for the others Kafka's committed offset. A partition with
//! neither is read from the beginning (`auto.offset.reset=earliest`), so its lag is
//! the whole log. Both offsets are reported so a divergence is visible.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rdkafka::consumer::Consumer;
use serde::Serialize;

use super::{Admin, AdminError, Watermarks};
use crate::processor::OffsetStore;
use crate::record::TopicPartition;

/// Where a group's processor keeps the offsets it resumes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetsKeptIn {
    /// In the state store with its effects (Kafka only mirrors them).
    Store,
    /// In Kafka (committed after each batch).
    Kafka,
}

/// A consumer group of the pipeline, as the binary knows it from its registry.
#[derive(Debug, Clone)]
pub struct GroupSpec {
    /// The group id (`<prefix>lms-<processor>`).
    pub group: String,
    /// The processor running in the group.
    pub processor: String,
    /// Topics the group reads.
    pub topics: Vec<String>,
    /// Where the offsets that matter live.
    pub offsets: OffsetsKeptIn,
}

/// A live member of a group, as the broker describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    /// The member id the coordinator assigned.
    pub member_id: String,
    /// The client id (`lms-<processor>-<pid>-<n>` for processors).
    pub client_id: String,
    /// The member's host as the broker saw it.
    pub host: String,
    /// Partitions assigned to it, `topic/partition`.
    pub partitions: Vec<String>,
}

/// One partition a group reads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PartitionStatus {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Client id of the member that owns it, if the broker said.
    pub owner: Option<String>,
    /// First offset still in the log.
    pub log_start: i64,
    /// One past the last record.
    pub log_end: i64,
    /// Next offset as committed to Kafka.
    pub committed: Option<i64>,
    /// Next offset as stored in the state store (store-backed groups only).
    pub stored: Option<i64>,
    /// The next offset the group will read: the one the lag is computed from.
    pub position: i64,
    /// Records between `position` and the log end.
    pub lag: i64,
}

/// How the lag moved between two looks.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trend {
    /// Time between the two looks.
    pub interval_ms: u64,
    /// Lag now minus lag then.
    pub delta: i64,
    /// `delta` per second.
    pub per_second: f64,
    /// Records the group consumed per second meanwhile (its position's movement).
    pub consumed_per_second: f64,
    /// `growing`, `shrinking` or `steady`.
    pub direction: &'static str,
}

/// A group and its lag.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GroupStatus {
    /// Group id.
    pub group: String,
    /// Processor name.
    pub processor: String,
    /// Where the offsets that matter live.
    pub offsets_kept_in: OffsetsKeptIn,
    /// The coordinator's state (`Stable`, `Empty`, `PreparingRebalance`, ...), when it
    /// answered DescribeGroups.
    pub state: Option<String>,
    /// Live members; `None` when the broker could not describe the group.
    pub members: Option<Vec<MemberStatus>>,
    /// Why the members are unknown, if they are.
    pub describe_error: Option<String>,
    /// Every partition of the group's topics.
    pub partitions: Vec<PartitionStatus>,
    /// Sum of the partitions' lag.
    pub lag: i64,
    /// Sum of the positions (to compute consumption rates).
    pub position_sum: i64,
    /// Lag trend since the previous look, when there was one.
    pub trend: Option<Trend>,
}

/// What DescribeGroups said about a group.
#[derive(Debug, Clone, Default)]
pub struct Description {
    /// Coordinator state.
    pub state: String,
    /// Members and their assignments.
    pub members: Vec<MemberStatus>,
}

impl Admin {
    /// Describes `group` (ListGroups, then DescribeGroups): its state and live members
    /// with their assigned partitions. `has_commits` says whether the group has committed
    /// offsets: a broker that does not list such a group is not telling the truth (tansu
    /// 0.6.0's memory engine lists no groups), which is [`AdminError::Unsupported`]
    /// rather than "no members".
    pub fn describe(&self, group: &str, has_commits: bool) -> Result<Description, AdminError> {
        let list = tokio::task::block_in_place(|| self.client().fetch_group_list(Some(group), self.timeout()))
            .map_err(|e| AdminError::Unsupported(format!("DescribeGroups of {group} failed ({e})")))?;
        let Some(g) = list.groups().iter().find(|g| g.name() == group) else {
            if has_commits {
                return Err(AdminError::Unsupported(format!("the broker does not list group {group} although it has committed offsets")));
            }
            return Ok(Description { state: "Dead".into(), members: Vec::new() });
        };
        let members = g
            .members()
            .iter()
            .map(|m| MemberStatus {
                member_id: m.id().to_owned(),
                client_id: m.client_id().to_owned(),
                host: m.client_host().to_owned(),
                partitions: m.assignment().and_then(parse_assignment).unwrap_or_default().into_iter().map(|tp| tp.to_string()).collect(),
            })
            .collect();
        Ok(Description { state: g.state().to_owned(), members })
    }

    /// Every group the broker knows (ListGroups), by id.
    pub fn list_groups(&self) -> Result<Vec<String>, AdminError> {
        let list = tokio::task::block_in_place(|| self.client().fetch_group_list(None, self.timeout()))?;
        let mut names: Vec<String> = list.groups().iter().map(|g| g.name().to_owned()).collect();
        names.sort();
        Ok(names)
    }

    /// The status of one group: members, offsets, log ends and lag. `store` is the state
    /// store of store-backed groups.
    pub async fn group_status(&self, spec: &GroupSpec, store: Option<&dyn OffsetStore>) -> Result<GroupStatus, AdminError> {
        let mut tps = Vec::new();
        for (topic, n) in self.partitions(&spec.topics)? {
            tps.extend((0..n).map(|p| TopicPartition::new(&topic, p)));
        }
        let committed = self.committed(&spec.group, &tps)?;
        let (state, members, describe_error) = match self.describe(&spec.group, !committed.is_empty()) {
            Ok(d) => (Some(d.state), Some(d.members), None),
            Err(e) => (None, None, Some(e.to_string())),
        };
        let stored: HashMap<TopicPartition, i64> = match (spec.offsets, store) {
            (OffsetsKeptIn::Store, Some(s)) => s.load_offsets(&spec.group, &tps).await.map_err(AdminError::Store)?,
            _ => HashMap::new(),
        };
        let owners: HashMap<String, String> =
            members.iter().flatten().flat_map(|m| m.partitions.iter().map(move |p| (p.clone(), m.client_id.clone()))).collect();
        let mut partitions = Vec::with_capacity(tps.len());
        for tp in &tps {
            let w = self.watermarks(tp)?;
            let committed = committed.get(tp).copied();
            let stored = stored.get(tp).copied();
            let position = position_of(spec.offsets, stored, committed, w);
            partitions.push(PartitionStatus {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                owner: owners.get(&tp.to_string()).cloned(),
                log_start: w.low,
                log_end: w.high,
                committed,
                stored,
                position,
                lag: (w.high - position).max(0),
            });
        }
        Ok(GroupStatus {
            group: spec.group.clone(),
            processor: spec.processor.clone(),
            offsets_kept_in: spec.offsets,
            state,
            members,
            describe_error,
            lag: partitions.iter().map(|p| p.lag).sum(),
            position_sum: partitions.iter().map(|p| p.position).sum(),
            partitions,
            trend: None,
        })
    }
}

/// The offset a group resumes a partition from: the store's for store-backed groups
/// (Kafka's mirror only when the store has none), Kafka's otherwise, else the log start.
pub fn position_of(kept: OffsetsKeptIn, stored: Option<i64>, committed: Option<i64>, w: Watermarks) -> i64 {
    let known = match kept {
        OffsetsKeptIn::Store => stored,
        OffsetsKeptIn::Kafka => committed,
    };
    // An offset below the log start (retention deleted it) resumes at the log start.
    known.unwrap_or(w.low).max(w.low)
}

/// Fills in each group's trend from an earlier look `interval` ago.
pub fn add_trends(now: &mut [GroupStatus], before: &[GroupStatus], interval: Duration) {
    let secs = interval.as_secs_f64().max(1e-3);
    let before: BTreeMap<&str, &GroupStatus> = before.iter().map(|g| (g.group.as_str(), g)).collect();
    for g in now {
        if let Some(b) = before.get(g.group.as_str()) {
            let delta = g.lag - b.lag;
            g.trend = Some(Trend {
                interval_ms: interval.as_millis() as u64,
                delta,
                per_second: delta as f64 / secs,
                consumed_per_second: (g.position_sum - b.position_sum).max(0) as f64 / secs,
                direction: match delta {
                    d if d > 0 => "growing",
                    d if d < 0 => "shrinking",
                    _ => "steady",
                },
            });
        }
    }
}

/// Parses a consumer-protocol `MemberAssignment` (version, then topics with their
/// partitions, then user data) into partitions. `None` when it is not one.
pub fn parse_assignment(bytes: &[u8]) -> Option<Vec<TopicPartition>> {
    struct R<'a>(&'a [u8]);
    impl R<'_> {
        fn take(&mut self, n: usize) -> Option<&[u8]> {
            if self.0.len() < n {
                return None;
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Some(a)
        }
        fn i16(&mut self) -> Option<i16> {
            self.take(2).map(|b| i16::from_be_bytes([b[0], b[1]]))
        }
        fn i32(&mut self) -> Option<i32> {
            self.take(4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        }
    }
    if bytes.is_empty() {
        return Some(Vec::new());
    }
    let mut r = R(bytes);
    let _version = r.i16()?;
    let topics = r.i32()?;
    let mut out = Vec::new();
    for _ in 0..topics.max(0) {
        let len = r.i16()?;
        let topic = std::str::from_utf8(r.take(usize::try_from(len).ok()?)?).ok()?.to_owned();
        let n = r.i32()?;
        for _ in 0..n.max(0) {
            out.push(TopicPartition::new(&topic, r.i32()?));
        }
    }
    out.sort();
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(topics: &[(&str, &[i32])]) -> Vec<u8> {
        let mut b = vec![0, 1];
        b.extend((topics.len() as i32).to_be_bytes());
        for (t, ps) in topics {
            b.extend((t.len() as i16).to_be_bytes());
            b.extend(t.as_bytes());
            b.extend((ps.len() as i32).to_be_bytes());
            for p in *ps {
                b.extend(p.to_be_bytes());
            }
        }
        b.extend((-1i32).to_be_bytes());
        b
    }

    #[test]
    fn assignments_parse_to_partitions() {
        let got = parse_assignment(&assignment(&[("b", &[1, 0]), ("a", &[3])])).expect("parses");
        assert_eq!(got, vec![TopicPartition::new("a", 3), TopicPartition::new("b", 0), TopicPartition::new("b", 1)]);
        assert_eq!(parse_assignment(&[]), Some(vec![]));
        assert_eq!(parse_assignment(&[0, 1, 0, 0, 0, 1, 0, 9, b'x']), None, "truncated");
    }

    #[test]
    fn the_store_decides_the_position_of_store_backed_groups() {
        let w = Watermarks { low: 10, high: 100 };
        assert_eq!(position_of(OffsetsKeptIn::Store, Some(50), Some(40), w), 50);
        assert_eq!(position_of(OffsetsKeptIn::Store, None, Some(40), w), 10, "no stored offset: from the beginning");
        assert_eq!(position_of(OffsetsKeptIn::Kafka, Some(50), Some(40), w), 40);
        assert_eq!(position_of(OffsetsKeptIn::Kafka, None, Some(3), w), 10, "below the log start");
    }

    #[test]
    fn trends_compare_lag_between_looks() {
        let g = |lag, pos| GroupStatus {
            group: "g".into(),
            processor: "p".into(),
            offsets_kept_in: OffsetsKeptIn::Kafka,
            state: None,
            members: None,
            describe_error: None,
            partitions: vec![],
            lag,
            position_sum: pos,
            trend: None,
        };
        let mut now = vec![g(150, 300)];
        add_trends(&mut now, &[g(100, 100)], Duration::from_secs(2));
        let t = now[0].trend.expect("trend");
        assert_eq!((t.delta, t.direction), (50, "growing"));
        assert_eq!((t.per_second, t.consumed_per_second), (25.0, 100.0));
    }
}
