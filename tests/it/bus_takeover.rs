//! Two members of one group share 8 partitions; one crashes mid-way (its thread stops
//! without finishing or committing, its consumer is dropped) and the other takes over.
//! Every event's effect must be applied exactly once (offsets in the store) or at least
//! once with nothing lost (offsets in Kafka), and at the end the group's committed offset
//! of each partition is one past its last record.
//!
//! The crash is placed either just before a batch's effects or just after them (before
//! the commit): committing before the effects loses events in the first case, and
//! resuming from Kafka instead of the store doubles them in the second.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use lms_bus::{Batch, BoxError, BusMetrics, Member, OffsetStore, ProcessError, Processor, TopicPartition, TopicsFile};
use lms_events::Domain;
use tests::{create_topic, eventually, init_logs, kafka_brokers, unique_prefix};
use tokio_util::sync::CancellationToken;

use crate::support::{committed, kafka, lesson_events, member, produce_all, producer};

const EVENTS: usize = 100_000;
const PARTITIONS: i32 = 8;

#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    BeforeEffects,
    AfterEffects,
}

/// Crashes its member when its `at`-th batch arrives.
struct Crash {
    at: u64,
    point: CrashPoint,
    switch: OnceLock<CancellationToken>,
    batches: AtomicU64,
}

impl Crash {
    fn new(at: u64, point: CrashPoint) -> Self {
        Self { at, point, switch: OnceLock::new(), batches: AtomicU64::new(0) }
    }
    /// True when this batch is the one to crash at and the crash point is `point`.
    fn now(&self, point: CrashPoint, batch_no: u64) -> bool {
        batch_no == self.at && std::mem::discriminant(&point) == std::mem::discriminant(&self.point)
    }
    fn fire(&self) {
        if let Some(s) = self.switch.get() {
            s.cancel();
        }
    }
    fn fired(&self) -> bool {
        self.switch.get().is_some_and(CancellationToken::is_cancelled)
    }
}

/// A transactional store: effects and offsets change together, under one lock.
#[derive(Default)]
struct TxStore {
    state: Mutex<TxState>,
}

#[derive(Default)]
struct TxState {
    applied: HashMap<String, u32>,
    offsets: HashMap<TopicPartition, i64>,
}

#[async_trait]
impl OffsetStore for TxStore {
    async fn load_offsets(&self, _group: &str, partitions: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, BoxError> {
        let s = self.state.lock().expect("lock");
        Ok(partitions.iter().filter_map(|tp| s.offsets.get(tp).map(|o| (tp.clone(), *o))).collect())
    }
}

/// Counts every application of an event (not idempotent on purpose): only the stored
/// offsets can keep each count at one.
struct ExactlyOnce {
    store: Arc<TxStore>,
    crash: Option<Crash>,
}

#[async_trait]
impl Processor for ExactlyOnce {
    fn name(&self) -> &str {
        "exactly-once"
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        let n = self.crash.as_ref().map_or(0, |c| c.batches.fetch_add(1, Ordering::SeqCst) + 1);
        if let Some(c) = self.crash.as_ref().filter(|c| c.now(CrashPoint::BeforeEffects, n)) {
            c.fire();
            return Ok(());
        }
        {
            let mut s = self.store.state.lock().expect("lock");
            for po in &batch.offsets {
                if s.offsets.get(&po.tp).copied() != po.expected {
                    return Err(ProcessError::Fenced(format!("{} moved on", po.tp)));
                }
            }
            for r in &batch.records {
                *s.applied.entry(r.event.id.clone()).or_default() += 1;
            }
            for po in &batch.offsets {
                s.offsets.insert(po.tp.clone(), po.next);
            }
        }
        if let Some(c) = self.crash.as_ref().filter(|c| c.now(CrashPoint::AfterEffects, n)) {
            c.fire();
        }
        Ok(())
    }

    fn offset_store(&self) -> Option<Arc<dyn OffsetStore>> {
        Some(self.store.clone())
    }
}

/// Idempotent effects keyed by event id; offsets in Kafka. Redeliveries are allowed and
/// counted, losses are not.
struct AtLeastOnce {
    seen: Arc<Mutex<HashSet<String>>>,
    deliveries: Arc<AtomicU64>,
    crash: Option<Crash>,
}

#[async_trait]
impl Processor for AtLeastOnce {
    fn name(&self) -> &str {
        "at-least-once"
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        let n = self.crash.as_ref().map_or(0, |c| c.batches.fetch_add(1, Ordering::SeqCst) + 1);
        if let Some(c) = self.crash.as_ref().filter(|c| c.now(CrashPoint::BeforeEffects, n)) {
            c.fire();
            return Ok(());
        }
        {
            let mut seen = self.seen.lock().expect("lock");
            for r in &batch.records {
                seen.insert(r.event.id.clone());
            }
        }
        self.deliveries.fetch_add(batch.records.len() as u64, Ordering::SeqCst);
        if let Some(c) = self.crash.as_ref().filter(|c| c.now(CrashPoint::AfterEffects, n)) {
            c.fire();
        }
        Ok(())
    }
}

struct Setup {
    brokers: String,
    k: lms_bus::KafkaConfig,
    metrics: Arc<BusMetrics>,
    producer: Arc<lms_bus::Producer>,
    topic: String,
    ends: std::collections::BTreeMap<i32, i64>,
    produced: crate::support::Produced,
}

async fn setup(name: &str) -> Setup {
    init_logs();
    let brokers = kafka_brokers();
    let prefix = unique_prefix(name);
    let k = kafka(&brokers, &prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let topic = topics.topic(Domain::Learning).to_owned();
    create_topic(&brokers, &topic, PARTITIONS).await;
    create_topic(&brokers, topics.topic(Domain::DeadLetter), 1).await;
    let metrics = BusMetrics::standalone();
    // tansu's memory engine cannot resume inside a record batch (tansu_probe.rs) and its
    // SQLite engine is too slow for 100 000 events per test; one record per batch keeps
    // every committed offset on a batch boundary, so the test checks the bus, not tansu.
    let mut single = k.clone();
    single.properties.insert("batch.num.messages".into(), "1".into());
    let producer = producer(&single, metrics.clone());
    let produced = produce_all(&producer, &lesson_events("tenant-a", EVENTS, 5_000)).await;
    let ends = produced.ends.clone();
    assert_eq!(ends.len(), PARTITIONS as usize, "every partition holds events");
    assert_eq!(ends.values().sum::<i64>(), EVENTS as i64, "a fresh topic: offsets start at 0");
    Setup { brokers, k, metrics, producer, topic, ends, produced }
}

/// Waits until the group's committed offsets equal the log ends.
async fn wait_committed(s: &Setup, processor: &str) {
    let group = s.k.group_id(processor);
    eventually("every partition's committed offset to reach its log end", Duration::from_secs(120), || {
        let got = committed(&s.brokers, &group, &s.topic, PARTITIONS);
        let done = got == s.ends;
        async move { done.then_some(()) }
    })
    .await;
}

async fn exactly_once_takeover(point: CrashPoint) {
    let s = setup("eo-takeover").await;
    let store = Arc::new(TxStore::default());
    let crash_at = 3 + rand::random::<u64>() % 8;
    let pa = Arc::new(ExactlyOnce { store: store.clone(), crash: Some(Crash::new(crash_at, point)) });
    let pb = Arc::new(ExactlyOnce { store: store.clone(), crash: None });
    let shutdown = CancellationToken::new();
    let a = Member::spawn(member(&s.k, "exactly-once", "a"), pa.clone(), s.producer.clone(), s.metrics.clone(), shutdown.clone())
        .expect("member a");
    pa.crash.as_ref().map(|c| c.switch.set(a.kill_switch()));
    let b =
        Member::spawn(member(&s.k, "exactly-once", "b"), pb, s.producer.clone(), s.metrics.clone(), shutdown.clone()).expect("member b");

    eventually("member a to crash", Duration::from_secs(60), || {
        let fired = pa.crash.as_ref().is_some_and(Crash::fired);
        async move { fired.then_some(()) }
    })
    .await;
    a.kill().await.expect("member a stops");

    let applied_all = tests::poll_until(Duration::from_secs(120), || {
        let n = store.state.lock().expect("lock").applied.len();
        async move { (n == EVENTS).then_some(()) }
    })
    .await;
    if applied_all.is_none() {
        let state = store.state.lock().expect("lock");
        panic!(
            "events never applied (crash {point:?} at batch {crash_at}): {}",
            s.produced.describe_missing(|id| state.applied.contains_key(id))
        );
    }
    wait_committed(&s, "exactly-once").await;
    shutdown.cancel();
    b.join().await.expect("member b stops cleanly");

    let state = store.state.lock().expect("lock");
    let doubled = state.applied.values().filter(|c| **c > 1).count();
    assert_eq!(state.applied.len(), EVENTS, "lost events");
    assert_eq!(doubled, 0, "events applied more than once (crash {point:?} at batch {crash_at})");
    let stored: std::collections::BTreeMap<i32, i64> = state.offsets.iter().map(|(tp, o)| (tp.partition, *o)).collect();
    assert_eq!(stored, s.ends, "stored offsets are one past each partition's last record");
}

async fn at_least_once_takeover(point: CrashPoint) {
    let s = setup("alo-takeover").await;
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let deliveries = Arc::new(AtomicU64::new(0));
    let crash_at = 3 + rand::random::<u64>() % 8;
    let pa = Arc::new(AtLeastOnce { seen: seen.clone(), deliveries: deliveries.clone(), crash: Some(Crash::new(crash_at, point)) });
    let pb = Arc::new(AtLeastOnce { seen: seen.clone(), deliveries: deliveries.clone(), crash: None });
    let shutdown = CancellationToken::new();
    let a = Member::spawn(member(&s.k, "at-least-once", "a"), pa.clone(), s.producer.clone(), s.metrics.clone(), shutdown.clone())
        .expect("member a");
    pa.crash.as_ref().map(|c| c.switch.set(a.kill_switch()));
    let b =
        Member::spawn(member(&s.k, "at-least-once", "b"), pb, s.producer.clone(), s.metrics.clone(), shutdown.clone()).expect("member b");

    eventually("member a to crash", Duration::from_secs(60), || {
        let fired = pa.crash.as_ref().is_some_and(Crash::fired);
        async move { fired.then_some(()) }
    })
    .await;
    a.kill().await.expect("member a stops");
    wait_committed(&s, "at-least-once").await;
    shutdown.cancel();
    b.join().await.expect("member b stops cleanly");

    let seen = seen.lock().expect("lock");
    assert_eq!(
        seen.len(),
        EVENTS,
        "events lost (crash {point:?} at batch {crash_at}): {}",
        s.produced.describe_missing(|id| seen.contains(id))
    );
    assert!(deliveries.load(Ordering::SeqCst) >= EVENTS as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_when_a_member_crashes_before_its_effects() {
    exactly_once_takeover(CrashPoint::BeforeEffects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn exactly_once_when_a_member_crashes_between_effects_and_commit() {
    exactly_once_takeover(CrashPoint::AfterEffects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_lost_when_a_member_crashes_before_its_effects() {
    at_least_once_takeover(CrashPoint::BeforeEffects).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nothing_lost_when_a_member_crashes_between_effects_and_commit() {
    at_least_once_takeover(CrashPoint::AfterEffects).await;
}
