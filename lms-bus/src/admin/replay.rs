//! `lms replay`: move a stopped group's offsets back (or forward) so that its processor
//! reads the records again. Safe because effects are idempotent (or exactly once with
//! stored offsets): a replay recomputes the same state.
//!
//! The plan is computed first and shown; applying it writes the state store's offsets
//! (store-backed groups: the caller does it, the store is the source of truth) and then
//! Kafka's committed offsets. Both refuse while the group has live members: a member
//! would keep its position and overwrite the reset (Kafka itself refuses a commit from
//! outside a live group).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::groups::{GroupSpec, OffsetsKeptIn, position_of};
use super::{Admin, AdminError};
use crate::processor::OffsetStore;
use crate::record::TopicPartition;

/// Where to move the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplayTarget {
    /// The oldest record still in each partition.
    Earliest,
    /// The first record at or after this time (the log end where none is that recent).
    Timestamp(DateTime<Utc>),
    /// Explicit offsets: `(topic, partition, offset)`; the topic may be omitted when the
    /// group reads one topic. Other partitions keep their position.
    Offsets(Vec<(Option<String>, i32, i64)>),
}

/// One partition of the plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanRow {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Next offset in the state store now (store-backed groups).
    pub stored: Option<i64>,
    /// Next offset committed to Kafka now.
    pub committed: Option<i64>,
    /// Where the group would resume now.
    pub from: i64,
    /// Where it will resume after the reset.
    pub to: i64,
    /// Records read again (negative: records skipped).
    pub replayed: i64,
}

/// What a replay will do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReplayPlan {
    /// Group id.
    pub group: String,
    /// Where its offsets live.
    pub offsets_kept_in: OffsetsKeptIn,
    /// Partitions that move.
    pub rows: Vec<PlanRow>,
}

impl ReplayPlan {
    /// The new offsets, for the store and Kafka.
    pub fn targets(&self) -> Vec<(TopicPartition, i64)> {
        self.rows.iter().map(|r| (TopicPartition::new(&r.topic, r.partition), r.to)).collect()
    }

    /// Records read again in total.
    pub fn replayed(&self) -> i64 {
        self.rows.iter().map(|r| r.replayed).sum()
    }
}

impl std::fmt::Display for ReplayPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "Replay plan for group {} (offsets kept in {:?}):", self.group, self.offsets_kept_in)?;
        writeln!(f, "  {:<40} {:>5} {:>12} {:>12} {:>12} {:>12}", "topic", "part", "stored", "committed", "from -> to", "replayed")?;
        let opt = |o: Option<i64>| o.map_or_else(|| "-".to_owned(), |o| o.to_string());
        for r in &self.rows {
            writeln!(
                f,
                "  {:<40} {:>5} {:>12} {:>12} {:>12} {:>12}",
                r.topic,
                r.partition,
                opt(r.stored),
                opt(r.committed),
                format!("{} -> {}", r.from, r.to),
                r.replayed
            )?;
        }
        writeln!(f, "  {} partition(s), {} record(s) to read again", self.rows.len(), self.replayed())
    }
}

impl Admin {
    /// Fails unless the group has no live members (DescribeGroups). A broker that cannot
    /// describe groups makes this fail too ([`AdminError::Unsupported`]): a replay is not
    /// safe unchecked, unless the operator vouches that every instance is stopped.
    pub fn ensure_no_members(&self, group: &str, partitions: &[TopicPartition]) -> Result<(), AdminError> {
        let has_commits = !self.committed(group, partitions)?.is_empty();
        let d = self.describe(group, has_commits)?;
        if !d.members.is_empty() {
            let who: Vec<String> = d.members.iter().map(|m| format!("{} ({})", m.client_id, m.host)).collect();
            return Err(AdminError::Refused(format!(
                "group {group} has {} live member(s): {}; stop its processors first (state {})",
                d.members.len(),
                who.join(", "),
                d.state
            )));
        }
        Ok(())
    }

    /// Computes the replay plan of a group without changing anything. Refuses while the
    /// group has live members.
    pub async fn replay_plan(
        &self,
        spec: &GroupSpec,
        target: &ReplayTarget,
        store: Option<&dyn OffsetStore>,
        check_members: bool,
    ) -> Result<ReplayPlan, AdminError> {
        let mut tps = Vec::new();
        for (topic, n) in self.partitions(&spec.topics)? {
            tps.extend((0..n).map(|p| TopicPartition::new(&topic, p)));
        }
        if tps.is_empty() {
            return Err(AdminError::Invalid(format!("none of the topics of group {} exists: {:?}", spec.group, spec.topics)));
        }
        if check_members {
            self.ensure_no_members(&spec.group, &tps)?;
        }
        let committed = self.committed(&spec.group, &tps)?;
        let stored: HashMap<TopicPartition, i64> = match (spec.offsets, store) {
            (OffsetsKeptIn::Store, Some(s)) => s.load_offsets(&spec.group, &tps).await.map_err(AdminError::Store)?,
            (OffsetsKeptIn::Store, None) => {
                return Err(AdminError::Invalid(format!("group {} keeps its offsets in the state store: open it", spec.group)));
            }
            _ => HashMap::new(),
        };
        let wanted: HashMap<TopicPartition, i64> = match target {
            ReplayTarget::Earliest => HashMap::new(),
            ReplayTarget::Timestamp(t) => {
                self.offsets_for_time(&tps, t.timestamp_millis())?.into_iter().filter_map(|(tp, o)| o.map(|o| (tp, o))).collect()
            }
            ReplayTarget::Offsets(list) => {
                let mut m = HashMap::new();
                for (topic, p, o) in list {
                    let topic = match topic {
                        Some(t) => t.clone(),
                        None if spec.topics.len() == 1 => spec.topics[0].clone(),
                        None => {
                            return Err(AdminError::Invalid(format!(
                                "group {} reads {} topics ({}): name the topic as <topic>:<partition>:<offset>",
                                spec.group,
                                spec.topics.len(),
                                spec.topics.join(", ")
                            )));
                        }
                    };
                    let tp = TopicPartition::new(&topic, *p);
                    if !tps.contains(&tp) {
                        return Err(AdminError::Invalid(format!("group {} does not read {tp}", spec.group)));
                    }
                    m.insert(tp, *o);
                }
                m
            }
        };
        let mut rows = Vec::new();
        for tp in &tps {
            let w = self.watermarks(tp)?;
            let (s, c) = (stored.get(tp).copied(), committed.get(tp).copied());
            let from = position_of(spec.offsets, s, c, w);
            let to = match target {
                ReplayTarget::Earliest => w.low,
                // No record that recent: nothing to replay, resume at the end.
                ReplayTarget::Timestamp(_) => wanted.get(tp).copied().unwrap_or(w.high),
                ReplayTarget::Offsets(_) => match wanted.get(tp) {
                    Some(o) => *o,
                    None => continue,
                },
            };
            if !(w.low..=w.high).contains(&to) {
                return Err(AdminError::Invalid(format!("{tp}: offset {to} is outside the log ({}..={})", w.low, w.high)));
            }
            rows.push(PlanRow {
                topic: tp.topic.to_string(),
                partition: tp.partition,
                stored: s,
                committed: c,
                from,
                to,
                replayed: from - to,
            });
        }
        Ok(ReplayPlan { group: spec.group.clone(), offsets_kept_in: spec.offsets, rows })
    }

    /// Checks again that the group has no live members (unless told not to), just
    /// before the caller resets the store.
    pub fn recheck(&self, plan: &ReplayPlan, check_members: bool) -> Result<(), AdminError> {
        let tps: Vec<TopicPartition> = plan.targets().into_iter().map(|(tp, _)| tp).collect();
        if check_members { self.ensure_no_members(&plan.group, &tps) } else { Ok(()) }
    }

    /// Commits the plan's offsets to Kafka (after the caller reset the store of a
    /// store-backed group). Kafka refuses a commit from outside a group with members.
    pub fn commit_plan(&self, plan: &ReplayPlan) -> Result<(), AdminError> {
        self.commit(&plan.group, &plan.targets())
    }
}
