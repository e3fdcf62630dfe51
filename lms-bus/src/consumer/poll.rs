//! The member's loop, on its own thread: poll, gather a batch, hand it to the runtime and
//! wait for its outcome, then commit (or re-seek after a fence). Idle, it re-commits.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::Message;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, warn};

use super::batch::{BatchEnv, Outcome};
use super::rebalance::{MemberContext, load_offsets_blocking};
use super::{MemberReport, Shared, list};
use crate::config::ConsumerConfig;
use crate::error::BusError;
use crate::record::{RawRecord, TopicPartition};

/// How often an idle member re-commits what it has done (see [`Loop::recommit`]).
const RECOMMIT_EVERY: Duration = Duration::from_secs(5);

/// An expected stored offset that no store holds. A partition whose seek to its stored
/// offset failed gets it, so that its next batch is fenced and sought again instead of
/// passing the compare-and-set with records skipped before it.
const UNSEEKABLE: i64 = -1;

/// The member's poll loop, on its own thread.
pub(super) struct Loop {
    pub(super) consumer: BaseConsumer<MemberContext>,
    pub(super) env: Arc<BatchEnv>,
    pub(super) handle: Handle,
    pub(super) shutdown: CancellationToken,
    pub(super) kill: CancellationToken,
    pub(super) shared: Arc<Shared>,
    pub(super) cfg: ConsumerConfig,
}

impl Loop {
    pub(super) fn run(self) -> Result<MemberReport, BusError> {
        let mut report = MemberReport::default();
        let mut pending: Vec<RawRecord> = Vec::new();
        let mut first_at: Option<Instant> = None;
        let mut topic_names: HashMap<String, Arc<str>> = HashMap::new();
        let max_wait = Duration::from_millis(self.cfg.max_batch_wait_ms);
        let idle_poll = Duration::from_millis(200);
        let mut last_recommit = Instant::now();
        // What this member has done per assigned partition (the offsets of its last
        // successful batches), for re-commits while idle.
        let mut done: BTreeMap<TopicPartition, i64> = BTreeMap::new();
        loop {
            if self.kill.is_cancelled() {
                return Ok(report);
            }
            if self.shutdown.is_cancelled() {
                // Records fetched but not processed are simply left for the next owner.
                break;
            }
            let timeout = first_at.map_or(idle_poll, |t| max_wait.saturating_sub(t.elapsed()).min(idle_poll));
            match self.consumer.poll(timeout) {
                Some(Ok(m)) => {
                    let topic = topic_names.entry(m.topic().to_owned()).or_insert_with(|| Arc::from(m.topic())).clone();
                    pending.push(RawRecord::from_message(&m, topic));
                    first_at.get_or_insert_with(Instant::now);
                }
                // Once per cause, not on every poll of a consumer that cannot reach the cluster.
                Some(Err(e)) if self.consumer.context().errors.record(&e, &e.to_string()) => {
                    warn!(group = %self.env.group, error = %e, "consume error");
                }
                Some(Err(_)) => {}
                None if pending.is_empty() && last_recommit.elapsed() >= RECOMMIT_EVERY => {
                    self.recommit(&done);
                    last_recommit = Instant::now();
                }
                None => {}
            }
            let revoked = std::mem::take(&mut self.shared.lock().revoked);
            if !revoked.is_empty() {
                pending.retain(|r| !revoked.contains(&r.tp));
                done.retain(|tp, _| !revoked.contains(tp));
                if pending.is_empty() {
                    first_at = None;
                }
            }
            let due = first_at.is_some_and(|t| t.elapsed() >= max_wait);
            if pending.is_empty() || !(pending.len() >= self.cfg.max_batch_records || due) {
                continue;
            }
            first_at = None;
            let raws = std::mem::take(&mut pending);
            let expected = {
                let shared = self.shared.lock();
                raws.iter().map(|r| (r.tp.clone(), shared.expected.get(&r.tp).copied().flatten())).collect()
            };
            let n = raws.len() as u64;
            let (tx, rx) = std::sync::mpsc::channel();
            let env = self.env.clone();
            self.handle.spawn(async move {
                let _ = tx.send(env.handle_batch(raws, expected).await);
            });
            let outcome = rx.recv().map_err(|_| BusError::Member("batch task dropped".to_owned()))?;
            match outcome {
                Outcome::Done { next, dead_lettered, started } => {
                    if self.kill.is_cancelled() {
                        // A crash after the effects and before the commit: exactly the case
                        // the stored offsets (or idempotent effects) must make harmless.
                        return Ok(report);
                    }
                    {
                        let mut shared = self.shared.lock();
                        for (tp, o) in &next {
                            if shared.assignment.contains(tp) && shared.expected.contains_key(tp) {
                                shared.expected.insert(tp.clone(), Some(*o));
                            }
                        }
                    }
                    self.commit(&next);
                    done.extend(next.iter().map(|(tp, o)| (tp.clone(), *o)));
                    self.env.metrics.batch_duration.with_label_values(&[&*self.env.group]).observe(started.elapsed().as_secs_f64());
                    report.batches += 1;
                    report.records += n;
                    report.dead_lettered += dead_lettered;
                }
                Outcome::Stopped => {
                    if self.kill.is_cancelled() {
                        return Ok(report);
                    }
                    break;
                }
                Outcome::Fenced { partitions } => self.reseek(&partitions),
            }
        }
        debug!(group = %self.env.group, "member stopping");
        Ok(report)
    }

    fn commit(&self, next: &BTreeMap<TopicPartition, i64>) {
        let mut tpl = TopicPartitionList::with_capacity(next.len());
        for (tp, o) in next {
            if let Err(e) = tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*o)) {
                error!(%tp, error = %e, "cannot build the commit");
            }
        }
        match self.consumer.commit(&tpl, CommitMode::Sync) {
            Ok(()) => {
                for (tp, o) in next {
                    self.env.metrics.committed_offset.with_label_values(&[&*self.env.group, &tp.topic, &tp.partition.to_string()]).set(*o);
                }
            }
            // The effects are durable; the next owner of these partitions redelivers the
            // batch and idempotent effects (or the stored offsets) absorb it.
            Err(e) => warn!(group = %self.env.group, error = %e, "offset commit failed"),
        }
    }

    /// Commits again, while idle, where this member is on its assigned partitions: the
    /// stored offsets for offset-store processors (one attempt, skipped while the store
    /// is unreachable), else the offsets of its last successful batches.
    ///
    /// A commit can fail or be overtaken without any effect being lost, and then nothing
    /// would repair it until new records arrive: a commit refused during a rebalance is
    /// only logged, and tansu 0.6.0's cooperative rebalances can hand one partition to two
    /// members for a moment, so a member fenced after the other one finished the records
    /// has nothing left to commit (seen in the CI chaos run: committed 297, stored 343,
    /// end 343). `lms groups`, the lag gauge and KEDA read Kafka's committed offsets, so
    /// that would be phantom lag for operators, for ever.
    fn recommit(&self, done: &BTreeMap<TopicPartition, i64>) {
        let assignment = self.shared.lock().assignment.clone();
        if assignment.is_empty() {
            return;
        }
        let next: BTreeMap<TopicPartition, i64> = match self.env.processor.offset_store() {
            Some(store) => {
                let (tx, rx) = std::sync::mpsc::channel();
                let (group, tps) = (self.env.group.clone(), assignment.iter().cloned().collect::<Vec<_>>());
                self.handle.spawn(async move {
                    let _ = tx.send(store.load_offsets(&group, &tps).await);
                });
                match rx.recv_timeout(Duration::from_secs(5)) {
                    Ok(Ok(stored)) => stored.into_iter().collect(),
                    Ok(Err(e)) => {
                        debug!(group = %self.env.group, error = %e, "cannot load stored offsets to re-commit them");
                        return;
                    }
                    Err(_) => {
                        debug!(group = %self.env.group, "stored offsets did not load within 5 s; re-commit skipped");
                        return;
                    }
                }
            }
            None => done.clone(),
        };
        // The assignment may have changed while the store answered.
        let assignment = self.shared.lock().assignment.clone();
        let next: BTreeMap<TopicPartition, i64> = next.into_iter().filter(|(tp, _)| assignment.contains(tp)).collect();
        if !next.is_empty() {
            self.commit(&next);
        }
    }

    /// After being fenced: seek the partitions to the stored offsets.
    fn reseek(&self, partitions: &[TopicPartition]) {
        let Some(store) = self.env.processor.offset_store() else { return };
        let Some(stored) = load_offsets_blocking(&self.handle, &store, &self.env.group, partitions, &self.env.stop, self.env.backoff)
        else {
            return;
        };
        let mut shared = self.shared.lock();
        for tp in partitions {
            if !shared.assignment.contains(tp) {
                continue;
            }
            let offset = stored.get(tp).copied();
            match self.consumer.seek(&tp.topic, tp.partition, offset.map_or(Offset::Beginning, Offset::Offset), Duration::from_secs(10)) {
                Ok(()) => {
                    shared.expected.insert(tp.clone(), offset);
                }
                Err(e) => {
                    // The position is still past the stored offset: a batch from there
                    // must not pass the fence, or the records in between would be skipped.
                    error!(group = %self.env.group, %tp, error = %e, "seek after fencing failed; the next batch is fenced again");
                    shared.expected.insert(tp.clone(), Some(UNSEEKABLE));
                }
            }
        }
        warn!(group = %self.env.group, partitions = %list(partitions), "fenced: re-sought to the stored offsets");
    }
}
