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
//!
//! The module has three parts: [`rebalance`] (librdkafka's callbacks, on the member's
//! thread, inside `poll`), [`poll`] (the member's loop: polling, batching, committing,
//! re-seeking after a fence) and [`batch`] (one batch on the async runtime: decode,
//! dead letters, retries, isolating poison records). Only `batch` runs without a broker,
//! and its tests drive it with a fake processor and dead-letter sink.

mod batch;
mod poll;
mod rebalance;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use tokio::runtime::Handle;
use tokio_util::sync::CancellationToken;

use self::batch::BatchEnv;
use self::poll::Loop;
use self::rebalance::MemberContext;
use crate::config::{ConsumerConfig, KafkaConfig};
use crate::error::BusError;
use crate::metrics::BusMetrics;
use crate::processor::Processor;
use crate::producer::Producer;
use crate::record::TopicPartition;

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
            dead_letters: producer,
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

pub(super) fn backoff_of(c: &ConsumerConfig) -> (Duration, Duration) {
    (Duration::from_millis(c.retry_initial_backoff_ms), Duration::from_millis(c.retry_max_backoff_ms))
}

/// State the rebalance callbacks share with the member loop.
#[derive(Default)]
pub(super) struct Shared {
    inner: Mutex<SharedInner>,
}

#[derive(Default)]
pub(super) struct SharedInner {
    pub(super) assignment: BTreeSet<TopicPartition>,
    /// Partitions revoked since the loop last looked.
    pub(super) revoked: Vec<TopicPartition>,
    /// Offsets the member believes are stored (offset-store processors only).
    pub(super) expected: HashMap<TopicPartition, Option<i64>>,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, SharedInner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

pub(super) fn list(tps: &[TopicPartition]) -> String {
    tps.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
}
