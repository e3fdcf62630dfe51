//! The consumer-group runner: one [`Member`] of a group, on a thread of its own.
//!
//! A member polls a batch (up to `max_batch_records`, or what arrived within
//! `max_batch_wait_ms` of its first record), hands it to the processor on the async
//! runtime and waits for the outcome before polling again. So nothing is ever in flight
//! while librdkafka runs a rebalance callback (they run inside `poll`): when partitions
//! are revoked, every processed batch is already committed, and records of the revoked
//! partitions that were fetched but not processed are dropped for the new owner.
//!
//! Per batch, in this order:
//! 1. decode every record and run the processor's `check`; failures are produced to the
//!    dead-letter topic (acknowledged) with reason and origin; tombstones (records without
//!    a value, on compacted topics) are skipped and counted, their offsets passed over;
//! 2. `process` the rest, retrying transient failures with exponential back-off (no
//!    commit meanwhile, prefetch bounded by `prefetch_max_kbytes`); a permanent failure
//!    splits the batch in halves until the poison record is isolated and dead-lettered;
//! 3. commit the batch's offsets (one past its last record per partition).
//!
//! **Invariant: offsets are committed only after the effects of their batch are
//! durable**, and dead letters are acknowledged before the offsets that skip them.
//!
//! Processors that keep offsets in their own store get exactly-once effects: on
//! assignment the member seeks to the stored offsets, and each batch carries the offsets
//! it expects to be stored so the store can fence a member that lost the partition.
//! The Kafka commit then only serves lag monitoring.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, RebalanceProtocol};
use rdkafka::error::KafkaError;
use rdkafka::message::Message;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::types::RDKafkaRespErr;
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::config::{ConsumerConfig, KafkaConfig};
use crate::error::{BoxError, BusError, ProcessError};
use crate::metrics::BusMetrics;
use crate::processor::{OffsetStore, Processor};
use crate::producer::{OnQueueFull, Producer};
use crate::record::{Batch, DeadLetters, Fetched, PartitionOffsets, RawRecord, Record, TopicPartition, sort_fetched};

/// Settings of one member.
#[derive(Debug, Clone)]
pub struct MemberConfig {
    /// Cluster and client settings.
    pub kafka: KafkaConfig,
    /// Batching, timeouts and retries.
    pub consumer: ConsumerConfig,
    /// Consumer group id.
    pub group_id: String,
    /// Topics to subscribe to.
    pub topics: Vec<String>,
    /// Client id (shows up in broker logs and group descriptions).
    pub client_id: String,
}

/// What a member did, returned when it stops.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemberReport {
    /// Batches processed and committed.
    pub batches: u64,
    /// Records in those batches.
    pub records: u64,
    /// Records sent to the dead-letter topic.
    pub dead_lettered: u64,
}

/// A running member of a consumer group.
pub struct Member {
    kill: CancellationToken,
    shared: Arc<Shared>,
    done: tokio::sync::oneshot::Receiver<Result<MemberReport, BusError>>,
}

impl Member {
    /// Joins the group and starts consuming. Must be called on a Tokio runtime: batches
    /// are processed on it. The member stops when `shutdown` is cancelled, after finishing
    /// and committing the batch in hand.
    pub fn spawn(
        cfg: MemberConfig,
        processor: Arc<dyn Processor>,
        producer: Arc<Producer>,
        metrics: Arc<BusMetrics>,
        shutdown: CancellationToken,
    ) -> Result<Member, BusError> {
        let handle = Handle::current();
        let kill = CancellationToken::new();
        let shared = Arc::new(Shared::default());
        let group: Arc<str> = Arc::from(cfg.group_id.as_str());
        let ctx = MemberContext {
            group: group.clone(),
            member: Arc::from(cfg.client_id.as_str()),
            handle: handle.clone(),
            store: processor.offset_store(),
            shared: shared.clone(),
            metrics: metrics.clone(),
            stop: [shutdown.clone(), kill.clone()],
            backoff: backoff_of(&cfg.consumer),
            errors: crate::producer::ClientErrors::default(),
        };
        let consumer: BaseConsumer<MemberContext> =
            cfg.consumer.client_config(&cfg.kafka, &cfg.group_id, &cfg.client_id).create_with_context(ctx)?;
        let topics: Vec<&str> = cfg.topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics)?;
        let env = Arc::new(BatchEnv {
            group,
            processor,
            producer,
            metrics,
            stop: [shutdown.clone(), kill.clone()],
            backoff: backoff_of(&cfg.consumer),
        });
        let (tx, done) = tokio::sync::oneshot::channel();
        let loop_state = Loop { consumer, env, handle, shutdown, kill: kill.clone(), shared: shared.clone(), cfg: cfg.consumer };
        std::thread::Builder::new()
            .name(format!("member-{}", cfg.client_id))
            .spawn(move || {
                let _ = tx.send(loop_state.run());
            })
            .map_err(|e| BusError::Member(format!("cannot start the member thread: {e}")))?;
        Ok(Member { kill, shared, done })
    }

    /// Partitions currently assigned to this member.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.shared.lock().assignment.iter().cloned().collect()
    }

    /// Waits for the member to stop (after its shutdown token was cancelled).
    pub async fn join(self) -> Result<MemberReport, BusError> {
        self.done.await.map_err(|_| BusError::Member("the member thread panicked".to_owned()))?
    }

    /// The token that [`Member::kill`] cancels, for a test to crash the member from inside
    /// a processor at a precise point.
    pub fn kill_switch(&self) -> CancellationToken {
        self.kill.clone()
    }

    /// Stops the member at once, as a crash would: the batch in hand is neither finished
    /// nor committed, and the consumer is closed without committing anything. Meant for
    /// tests of take-over; returns when the member is gone.
    pub async fn kill(self) -> Result<MemberReport, BusError> {
        self.kill.cancel();
        self.join().await
    }
}

fn backoff_of(c: &ConsumerConfig) -> (Duration, Duration) {
    (Duration::from_millis(c.retry_initial_backoff_ms), Duration::from_millis(c.retry_max_backoff_ms))
}

/// State the rebalance callbacks share with the member loop.
#[derive(Default)]
struct Shared {
    inner: Mutex<SharedInner>,
}

#[derive(Default)]
struct SharedInner {
    assignment: BTreeSet<TopicPartition>,
    /// Partitions revoked since the loop last looked.
    revoked: Vec<TopicPartition>,
    /// Offsets the member believes are stored (offset-store processors only).
    expected: HashMap<TopicPartition, Option<i64>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The librdkafka context: rebalances (with seeks to stored offsets), lag metrics, errors.
struct MemberContext {
    group: Arc<str>,
    member: Arc<str>,
    handle: Handle,
    store: Option<Arc<dyn OffsetStore>>,
    shared: Arc<Shared>,
    metrics: Arc<BusMetrics>,
    stop: [CancellationToken; 2],
    backoff: (Duration, Duration),
    errors: crate::producer::ClientErrors,
}

impl ClientContext for MemberContext {
    fn stats(&self, stats: Statistics) {
        for (topic, t) in &stats.topics {
            for (p, part) in &t.partitions {
                // Partition -1 is librdkafka's internal "unassigned" partition.
                if *p >= 0 && part.consumer_lag >= 0 {
                    self.metrics.consumer_lag.with_label_values(&[&*self.group, topic, &p.to_string()]).set(part.consumer_lag);
                }
            }
        }
    }

    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        crate::producer::log_librdkafka(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if self.errors.record(&error, reason) {
            warn!(group = %self.group, error = %error, reason, "kafka client error");
        }
    }
}

impl ConsumerContext for MemberContext {
    fn rebalance(&self, consumer: &BaseConsumer<Self>, err: RDKafkaRespErr, tpl: &mut TopicPartitionList) {
        let cooperative = matches!(consumer.rebalance_protocol(), RebalanceProtocol::Cooperative);
        let tps: Vec<TopicPartition> = tpl.elements().iter().map(|e| TopicPartition::new(e.topic(), e.partition())).collect();
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                if let Some(store) = &self.store {
                    // Exactly-once processors resume where their store says, not where Kafka does.
                    let stored = self.load_offsets_blocking(store, &tps).unwrap_or_default();
                    let mut shared = self.shared.lock();
                    for tp in &tps {
                        let offset = stored.get(tp).copied();
                        let at = offset.map_or(Offset::Beginning, Offset::Offset);
                        if let Err(e) = tpl.set_partition_offset(&tp.topic, tp.partition, at) {
                            error!(group = %self.group, %tp, error = %e, "cannot set the start offset");
                        }
                        shared.expected.insert(tp.clone(), offset);
                    }
                }
                let r = if cooperative { consumer.incremental_assign(tpl) } else { consumer.assign(tpl) };
                if let Err(e) = r {
                    error!(group = %self.group, error = %e, "assign failed");
                }
                if self.store.is_some() {
                    // Mirror the stored offsets into Kafka so that lag and `lms groups` see
                    // where the group really is (the store stays the source of truth).
                    let mut stored = TopicPartitionList::new();
                    for e in tpl.elements() {
                        if let Offset::Offset(o) = e.offset() {
                            let _ = stored.add_partition_offset(e.topic(), e.partition(), Offset::Offset(o));
                        }
                    }
                    if stored.count() > 0 {
                        if let Err(e) = consumer.commit(&stored, CommitMode::Async) {
                            warn!(group = %self.group, error = %e, "mirroring stored offsets to Kafka failed");
                        }
                    }
                }
                self.shared.lock().assignment.extend(tps.iter().cloned());
                info!(group = %self.group, member = %self.member, partitions = %list(&tps), "partitions assigned");
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                {
                    let mut shared = self.shared.lock();
                    for tp in &tps {
                        shared.assignment.remove(tp);
                        shared.expected.remove(tp);
                        let _ = self.metrics.consumer_lag.remove_label_values(&[&*self.group, &tp.topic, &tp.partition.to_string()]);
                    }
                    shared.revoked.extend(tps.iter().cloned());
                }
                let r = if cooperative { consumer.incremental_unassign(tpl) } else { consumer.unassign() };
                if let Err(e) = r {
                    error!(group = %self.group, error = %e, "unassign failed");
                }
                info!(group = %self.group, member = %self.member, partitions = %list(&tps), lost = consumer.assignment_lost(), "partitions revoked");
            }
            other => {
                error!(group = %self.group, error = ?other, "rebalance error");
                if !cooperative {
                    let _ = consumer.unassign();
                }
            }
        }
    }
}

impl MemberContext {
    /// Loads stored offsets from the async store on this (non-runtime) thread, retrying
    /// with back-off until it answers or the member stops.
    fn load_offsets_blocking(&self, store: &Arc<dyn OffsetStore>, tps: &[TopicPartition]) -> Option<HashMap<TopicPartition, i64>> {
        load_offsets_blocking(&self.handle, store, &self.group, tps, &self.stop, self.backoff)
    }
}

fn load_offsets_blocking(
    handle: &Handle,
    store: &Arc<dyn OffsetStore>,
    group: &Arc<str>,
    tps: &[TopicPartition],
    stop: &[CancellationToken; 2],
    (initial, max): (Duration, Duration),
) -> Option<HashMap<TopicPartition, i64>> {
    let mut backoff = initial;
    loop {
        if stop.iter().any(CancellationToken::is_cancelled) {
            return None;
        }
        let (tx, rx) = std::sync::mpsc::channel::<Result<HashMap<TopicPartition, i64>, BoxError>>();
        let (store, group2, tps2) = (store.clone(), group.clone(), tps.to_vec());
        handle.spawn(async move {
            let _ = tx.send(store.load_offsets(&group2, &tps2).await);
        });
        match rx.recv() {
            Ok(Ok(offsets)) => return Some(offsets),
            Ok(Err(e)) => {
                warn!(%group, error = %e, backoff_ms = backoff.as_millis() as u64, "cannot load stored offsets; retrying");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(max);
            }
            Err(_) => return None,
        }
    }
}

fn list(tps: &[TopicPartition]) -> String {
    tps.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}

/// How often an idle member re-commits what it has done (see [`Loop::recommit`]).
const RECOMMIT_EVERY: Duration = Duration::from_secs(5);

/// An expected stored offset that no store holds. A partition whose seek to its stored
/// offset failed gets it, so that its next batch is fenced and sought again instead of
/// passing the compare-and-set with records skipped before it.
const UNSEEKABLE: i64 = -1;

/// The member's poll loop, on its own thread.
struct Loop {
    consumer: BaseConsumer<MemberContext>,
    env: Arc<BatchEnv>,
    handle: Handle,
    shutdown: CancellationToken,
    kill: CancellationToken,
    shared: Arc<Shared>,
    cfg: ConsumerConfig,
}

impl Loop {
    fn run(self) -> Result<MemberReport, BusError> {
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

/// The outcome of one batch.
enum Outcome {
    /// Effects durable, dead letters acknowledged: commit `next`.
    Done { next: BTreeMap<TopicPartition, i64>, dead_lettered: u64, started: Instant },
    /// The member is stopping and the batch is not finished: commit nothing.
    Stopped,
    /// Another member processed these partitions: re-seek, commit nothing.
    Fenced { partitions: Vec<TopicPartition> },
}

/// Why a processing attempt did not succeed, after retries.
enum Fail {
    Stopped,
    Fenced,
    Permanent(String),
}

/// What a batch needs on the async side.
struct BatchEnv {
    group: Arc<str>,
    processor: Arc<dyn Processor>,
    producer: Arc<Producer>,
    metrics: Arc<BusMetrics>,
    stop: [CancellationToken; 2],
    backoff: (Duration, Duration),
}

impl BatchEnv {
    async fn handle_batch(self: Arc<Self>, raws: Vec<RawRecord>, expected: HashMap<TopicPartition, Option<i64>>) -> Outcome {
        let started = Instant::now();
        let received = std::time::SystemTime::now();
        let span = info_span!("batch", group = %self.group, records = raws.len());
        async move {
            let mut next: BTreeMap<TopicPartition, i64> = BTreeMap::new();
            let mut consumed: HashMap<&str, u64> = HashMap::new();
            for r in &raws {
                let e = next.entry(r.tp.clone()).or_insert(r.offset + 1);
                *e = (*e).max(r.offset + 1);
                *consumed.entry(&r.tp.topic).or_default() += 1;
            }
            for (t, n) in consumed {
                self.metrics.consumed.with_label_values(&[&*self.group, t]).inc_by(n);
            }
            // Tombstones (compacted topics) are skipped: no event, no dead letter, and the
            // offsets move past them like past any record of the batch.
            let Fetched { good, dead, tombstones } = sort_fetched(raws, |r| self.processor.check(r));
            for (t, n) in tombstones {
                self.metrics.tombstones.with_label_values(&[&*self.group, &*t]).inc_by(n);
            }
            let mut dead_lettered = dead.len() as u64;
            // Dead letters go out while the batch is processed (their acknowledgement used
            // to add a round trip to every batch with poison in it); nothing past them is
            // committed before they are acknowledged (see `DeadLetters`).
            let dead_letters = if dead.is_empty() {
                DeadLetters::none()
            } else {
                let (opened, gate) = DeadLetters::pending();
                let env = Arc::clone(&self);
                tokio::spawn(async move {
                    let _ = opened.send(Some(env.dead_letter(&dead).await));
                });
                gate
            };
            let processed = good.len() as u64;
            let mut isolated = 0;
            let mut expected = expected;
            let batch =
                Batch { group: self.group.clone(), records: good, offsets: offsets(&next, &expected), dead_letters: dead_letters.clone() };
            let write_start = std::time::SystemTime::now();
            match self.process_with_retry(&batch).await {
                Ok(()) => {
                    if !dead_letters.acknowledged().await {
                        return Outcome::Stopped;
                    }
                    crate::otel::batch_spans(&self.group, &batch.records, received, write_start, std::time::SystemTime::now())
                }
                Err(Fail::Stopped) => return Outcome::Stopped,
                Err(Fail::Fenced) => return Outcome::Fenced { partitions: next.keys().cloned().collect() },
                Err(Fail::Permanent(reason)) => {
                    if !dead_letters.acknowledged().await {
                        return Outcome::Stopped;
                    }
                    warn!(group = %self.group, %reason, "batch failed permanently; isolating the poison record(s)");
                    match self.isolate(batch.records, &mut expected, reason).await {
                        Ok(n) => {
                            dead_lettered += n;
                            isolated = n;
                        }
                        Err(Fail::Fenced) => return Outcome::Fenced { partitions: next.keys().cloned().collect() },
                        Err(_) => return Outcome::Stopped,
                    }
                    // Advance the stored offsets over the dead-lettered tail, if any.
                    let rest: BTreeMap<_, _> = next
                        .iter()
                        .filter(|(tp, o)| expected.get(*tp).copied().flatten() != Some(**o))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect();
                    if !rest.is_empty() && self.processor.offset_store().is_some() {
                        let b = Batch {
                            group: self.group.clone(),
                            records: Vec::new(),
                            offsets: offsets(&rest, &expected),
                            dead_letters: DeadLetters::none(),
                        };
                        match self.process_with_retry(&b).await {
                            Ok(()) => {}
                            Err(Fail::Fenced) => return Outcome::Fenced { partitions: next.keys().cloned().collect() },
                            Err(Fail::Permanent(reason)) => {
                                error!(group = %self.group, %reason, "processor refused an offsets-only batch");
                                return Outcome::Stopped;
                            }
                            Err(Fail::Stopped) => return Outcome::Stopped,
                        }
                    }
                }
            }
            self.metrics.processed.with_label_values(&[&*self.group]).inc_by(processed - isolated);
            Outcome::Done { next, dead_lettered, started }
        }
        .instrument(span)
        .await
    }

    fn stopped(&self) -> bool {
        self.stop.iter().any(CancellationToken::is_cancelled)
    }

    async fn wait_or_stop(&self, d: Duration) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(d) => true,
            _ = self.stop[0].cancelled() => false,
            _ = self.stop[1].cancelled() => false,
        }
    }

    async fn process_with_retry(&self, batch: &Batch) -> Result<(), Fail> {
        let mut backoff = self.backoff.0;
        loop {
            match self.processor.process(batch).await {
                Ok(()) => return Ok(()),
                Err(ProcessError::Transient(e)) => {
                    self.metrics.batch_failures.with_label_values(&[&*self.group, "transient"]).inc();
                    warn!(group = %self.group, error = %e, backoff_ms = backoff.as_millis() as u64, "batch failed; retrying");
                    if !self.wait_or_stop(backoff).await {
                        return Err(Fail::Stopped);
                    }
                    backoff = (backoff * 2).min(self.backoff.1);
                }
                Err(ProcessError::Permanent(e)) => {
                    self.metrics.batch_failures.with_label_values(&[&*self.group, "permanent"]).inc();
                    return Err(Fail::Permanent(e.to_string()));
                }
                Err(ProcessError::Fenced(m)) => {
                    self.metrics.batch_failures.with_label_values(&[&*self.group, "fenced"]).inc();
                    warn!(group = %self.group, reason = %m, "batch fenced");
                    return Err(Fail::Fenced);
                }
            }
        }
    }

    /// Splits a failing batch until each poison record stands alone, dead-letters it, and
    /// processes the rest in order. Returns how many records were dead-lettered.
    async fn isolate(
        &self,
        records: Vec<Record>,
        expected: &mut HashMap<TopicPartition, Option<i64>>,
        first_reason: String,
    ) -> Result<u64, Fail> {
        let mut queue: VecDeque<(Vec<Record>, Option<String>)> = VecDeque::new();
        queue.push_back((records, Some(first_reason)));
        let mut dead = 0;
        while let Some((slice, known_failure)) = queue.pop_front() {
            if slice.is_empty() {
                continue;
            }
            let reason = match known_failure {
                Some(r) => r,
                None => {
                    let mut next = BTreeMap::new();
                    for r in &slice {
                        next.insert(r.raw.tp.clone(), r.raw.offset + 1);
                    }
                    let b = Batch {
                        group: self.group.clone(),
                        records: slice,
                        offsets: offsets(&next, expected),
                        dead_letters: DeadLetters::none(),
                    };
                    match self.process_with_retry(&b).await {
                        Ok(()) => {
                            for (tp, o) in next {
                                expected.insert(tp, Some(o));
                            }
                            continue;
                        }
                        Err(Fail::Permanent(r)) => {
                            // Known to fail now: split it (or dead-letter it) below.
                            queue.push_front((b.records, Some(r)));
                            continue;
                        }
                        Err(other) => return Err(other),
                    }
                }
            };
            // The slice is known to fail: split it (or dead-letter a single record).
            if slice.len() == 1 {
                if !self.dead_letter(&[(slice[0].raw.clone(), reason)]).await {
                    return Err(Fail::Stopped);
                }
                dead += 1;
            } else {
                let mut first = slice;
                let second = first.split_off(first.len() / 2);
                queue.push_front((second, None));
                queue.push_front((first, None));
            }
        }
        Ok(dead)
    }

    /// Produces dead letters and waits for the broker's acknowledgement, retrying until
    /// it succeeds or the member stops. Returns false when stopped.
    async fn dead_letter(&self, dead: &[(RawRecord, String)]) -> bool {
        for (raw, reason) in dead {
            let trace = raw.trace();
            warn!(
                group = %self.group,
                tp = %raw.tp,
                offset = raw.offset,
                event_id = raw.event_id().unwrap_or_default(),
                trace_id = trace.map(|t| t.trace_id_hex()).unwrap_or_default(),
                span_id = trace.map(|t| t.span_id_hex()).unwrap_or_default(),
                %reason,
                "dead-lettering a record"
            );
        }
        let mut todo: Vec<_> = dead.iter().map(|(raw, reason)| self.producer.dead_letter_record(raw, &self.group, reason)).collect();
        let mut backoff = self.backoff.0;
        loop {
            let results = self.producer.send(todo.clone(), OnQueueFull::Wait(Duration::from_secs(30))).await;
            let failed: Vec<_> = todo.into_iter().zip(&results).filter(|(_, r)| r.is_err()).map(|(t, _)| t).collect();
            if failed.is_empty() {
                let mut by_topic: HashMap<&str, u64> = HashMap::new();
                for (raw, _) in dead {
                    *by_topic.entry(&raw.tp.topic).or_default() += 1;
                }
                for (t, n) in by_topic {
                    self.metrics.dead_lettered.with_label_values(&[&*self.group, t]).inc_by(n);
                }
                return true;
            }
            warn!(group = %self.group, failed = failed.len(), "dead-letter produce failed; retrying");
            if self.stopped() || !self.wait_or_stop(backoff).await {
                return false;
            }
            backoff = (backoff * 2).min(self.backoff.1);
            todo = failed;
        }
    }
}

fn offsets(next: &BTreeMap<TopicPartition, i64>, expected: &HashMap<TopicPartition, Option<i64>>) -> Vec<PartitionOffsets> {
    next.iter().map(|(tp, n)| PartitionOffsets { tp: tp.clone(), expected: expected.get(tp).copied().flatten(), next: *n }).collect()
}
