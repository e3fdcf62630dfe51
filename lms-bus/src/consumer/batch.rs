//! One batch, on the async runtime: decode and check, dead-letter what fails (while the
//! batch is processed), process with retries, and on a permanent failure split the batch
//! until each poison record stands alone. Dead letters go through [`DeadLetterSink`], so
//! the tests below run all of it without a broker.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, error, info_span, warn};

use crate::error::ProcessError;
use crate::metrics::BusMetrics;
use crate::processor::Processor;
use crate::producer::{OnQueueFull, Producer};
use crate::record::{Batch, DeadLetters, Fetched, PartitionOffsets, RawRecord, Record, TopicPartition, sort_fetched};

/// Where a member's dead letters go: the dead-letter topic in production.
#[async_trait]
pub(super) trait DeadLetterSink: Send + Sync {
    /// Produces `dead` (record, reason) as dead letters of `group` and waits for each
    /// acknowledgement; one result per record, in order (`Err`: not produced, retry it).
    async fn produce(&self, group: &str, dead: &[(RawRecord, String)]) -> Vec<Result<(), String>>;
}

#[async_trait]
impl DeadLetterSink for Producer {
    async fn produce(&self, group: &str, dead: &[(RawRecord, String)]) -> Vec<Result<(), String>> {
        let records = dead.iter().map(|(raw, reason)| self.dead_letter_record(raw, group, reason)).collect();
        self.send(records, OnQueueFull::Wait(Duration::from_secs(30)))
            .await
            .into_iter()
            .map(|r| r.map(|_| ()).map_err(|e| e.to_string()))
            .collect()
    }
}

/// The outcome of one batch.
pub(super) enum Outcome {
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
pub(super) struct BatchEnv {
    pub(super) group: Arc<str>,
    pub(super) processor: Arc<dyn Processor>,
    pub(super) dead_letters: Arc<dyn DeadLetterSink>,
    pub(super) metrics: Arc<BusMetrics>,
    pub(super) stop: [CancellationToken; 2],
    pub(super) backoff: (Duration, Duration),
}

impl BatchEnv {
    pub(super) async fn handle_batch(self: Arc<Self>, raws: Vec<RawRecord>, expected: HashMap<TopicPartition, Option<i64>>) -> Outcome {
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
                    crate::otel::batch_spans(&self.group, &batch.records, received, write_start, std::time::SystemTime::now());
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
            let Some(reason) = known_failure else {
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
                trace_id = trace.as_ref().map(lms_events::TraceContext::trace_id_hex).unwrap_or_default(),
                span_id = trace.as_ref().map(lms_events::TraceContext::span_id_hex).unwrap_or_default(),
                %reason,
                "dead-lettering a record"
            );
        }
        let mut todo: Vec<(RawRecord, String)> = dead.to_vec();
        let mut backoff = self.backoff.0;
        loop {
            let results = self.dead_letters.produce(&self.group, &todo).await;
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::sync::Mutex;

    use lms_events::{EventType, codec, examples};

    use super::*;
    use crate::processor::OffsetStore;

    /// A processor that refuses (permanently) any batch holding a poison offset, fails
    /// transiently `transient` times first, and records the offsets of the batches it took.
    #[derive(Default)]
    struct Fake {
        poison: BTreeSet<i64>,
        transient: Mutex<u32>,
        fenced: bool,
        /// Keeps its offsets with its effects (an [`OffsetStore`] that the batch logic never reads).
        keeps_offsets: bool,
        taken: Mutex<Vec<Vec<i64>>>,
        /// (expected, next) of every batch taken, offsets-only ones included.
        advanced: Mutex<Vec<(Option<i64>, i64)>>,
        gates: Mutex<Vec<bool>>,
    }

    #[async_trait]
    impl Processor for Fake {
        fn name(&self) -> &str {
            "fake"
        }

        async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
            if self.fenced {
                return Err(ProcessError::Fenced("another member".into()));
            }
            {
                let mut left = self.transient.lock().unwrap();
                if *left > 0 {
                    *left -= 1;
                    return Err(ProcessError::transient("store unavailable"));
                }
            }
            let offsets: Vec<i64> = batch.records.iter().map(|r| r.raw.offset).collect();
            if let Some(bad) = offsets.iter().find(|o| self.poison.contains(o)) {
                return Err(ProcessError::permanent(format!("offset {bad} is poison")));
            }
            let open = batch.dead_letters.acknowledged().await;
            self.gates.lock().unwrap().push(open);
            self.advanced.lock().unwrap().extend(batch.offsets.iter().map(|o| (o.expected, o.next)));
            if !offsets.is_empty() {
                self.taken.lock().unwrap().push(offsets);
            }
            Ok(())
        }

        fn offset_store(&self) -> Option<Arc<dyn OffsetStore>> {
            self.keeps_offsets.then(|| Arc::new(Unused) as Arc<dyn OffsetStore>)
        }
    }

    struct Unused;

    #[async_trait]
    impl OffsetStore for Unused {
        async fn load_offsets(&self, _: &str, _: &[TopicPartition]) -> Result<HashMap<TopicPartition, i64>, crate::error::BoxError> {
            unreachable!("a batch never loads offsets")
        }
    }

    /// Records what it dead-letters; fails the first `failures` attempts.
    #[derive(Default)]
    struct Sink {
        failures: Mutex<u32>,
        produced: Mutex<Vec<(i64, String)>>,
    }

    #[async_trait]
    impl DeadLetterSink for Sink {
        async fn produce(&self, _group: &str, dead: &[(RawRecord, String)]) -> Vec<Result<(), String>> {
            let mut failures = self.failures.lock().unwrap();
            if *failures > 0 {
                *failures -= 1;
                return dead.iter().map(|_| Err("broker unavailable".to_owned())).collect();
            }
            self.produced.lock().unwrap().extend(dead.iter().map(|(r, why)| (r.offset, why.clone())));
            dead.iter().map(|_| Ok(())).collect()
        }
    }

    fn raw(offset: i64, payload: Vec<u8>) -> RawRecord {
        RawRecord {
            tp: TopicPartition::new("lms.learning.v1", 0),
            offset,
            key: None,
            payload: Some(payload),
            headers: Vec::new(),
            timestamp_ms: None,
        }
    }

    fn records(n: i64) -> Vec<RawRecord> {
        (0..n)
            .map(|o| {
                let mut e = examples::event(EventType::LessonCompleted);
                e.id = format!("evt-{o}");
                raw(o, codec::encode(&e))
            })
            .collect()
    }

    fn env(processor: Arc<Fake>, sink: Arc<Sink>) -> Arc<BatchEnv> {
        Arc::new(BatchEnv {
            group: Arc::from("test-group"),
            processor,
            dead_letters: sink,
            metrics: BusMetrics::standalone(),
            stop: [CancellationToken::new(), CancellationToken::new()],
            backoff: (Duration::from_millis(1), Duration::from_millis(4)),
        })
    }

    fn expected(offset: Option<i64>) -> HashMap<TopicPartition, Option<i64>> {
        HashMap::from([(TopicPartition::new("lms.learning.v1", 0), offset)])
    }

    fn done(outcome: Outcome) -> (BTreeMap<TopicPartition, i64>, u64) {
        match outcome {
            Outcome::Done { next, dead_lettered, .. } => (next, dead_lettered),
            Outcome::Stopped => panic!("stopped"),
            Outcome::Fenced { .. } => panic!("fenced"),
        }
    }

    #[tokio::test]
    async fn poison_records_are_isolated_the_rest_processed_once() {
        let fake = Arc::new(Fake { poison: BTreeSet::from([3, 7]), ..Fake::default() });
        let sink = Arc::new(Sink::default());
        let (next, dead) = done(env(fake.clone(), sink.clone()).handle_batch(records(10), expected(None)).await);
        assert_eq!(next.values().copied().collect::<Vec<_>>(), [10]);
        assert_eq!(dead, 2);
        let produced = sink.produced.lock().unwrap().clone();
        assert_eq!(produced.iter().map(|(o, _)| *o).collect::<Vec<_>>(), [3, 7]);
        assert!(produced.iter().all(|(o, why)| why == &format!("offset {o} is poison")), "{produced:?}");
        // Every other record was taken exactly once, in offset order.
        let taken: Vec<i64> = fake.taken.lock().unwrap().concat();
        assert_eq!(taken, [0, 1, 2, 4, 5, 6, 8, 9]);
    }

    #[tokio::test]
    async fn a_poison_tail_still_advances_the_offsets() {
        // The last record is poison: each good slice advances the stored offsets from where
        // the previous one left them, and an offsets-only batch moves them past the poison.
        let fake = Arc::new(Fake { poison: BTreeSet::from([4]), keeps_offsets: true, ..Fake::default() });
        let (next, dead) = done(env(fake.clone(), Arc::new(Sink::default())).handle_batch(records(5), expected(Some(0))).await);
        assert_eq!((next.values().copied().collect::<Vec<_>>(), dead), (vec![5], 1));
        assert_eq!(fake.taken.lock().unwrap().concat(), [0, 1, 2, 3]);
        assert_eq!(*fake.advanced.lock().unwrap(), [(Some(0), 2), (Some(2), 3), (Some(3), 4), (Some(4), 5)]);
    }

    #[tokio::test]
    async fn transient_failures_are_retried_without_dead_letters() {
        let fake = Arc::new(Fake { transient: Mutex::new(3), ..Fake::default() });
        let sink = Arc::new(Sink::default());
        let (next, dead) = done(env(fake.clone(), sink.clone()).handle_batch(records(4), expected(None)).await);
        assert_eq!((next.values().copied().collect::<Vec<_>>(), dead), (vec![4], 0));
        assert_eq!(*fake.taken.lock().unwrap(), [vec![0, 1, 2, 3]]);
        assert!(sink.produced.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn undecodable_records_are_dead_lettered_before_the_gate_opens() {
        let mut raws = records(3);
        raws.insert(1, raw(99, b"{not an event".to_vec()));
        let fake = Arc::new(Fake::default());
        // The first produce attempt fails: the gate stays shut until the retry succeeds.
        let sink = Arc::new(Sink { failures: Mutex::new(2), ..Sink::default() });
        let (next, dead) = done(env(fake.clone(), sink.clone()).handle_batch(raws, expected(None)).await);
        assert_eq!((next.values().copied().collect::<Vec<_>>(), dead), (vec![100], 1));
        assert_eq!(sink.produced.lock().unwrap().iter().map(|(o, _)| *o).collect::<Vec<_>>(), [99]);
        assert!(sink.produced.lock().unwrap()[0].1.starts_with("undecodable event"));
        assert_eq!(*fake.gates.lock().unwrap(), [true]);
        assert_eq!(*fake.taken.lock().unwrap(), [vec![0, 1, 2]]);
    }

    #[tokio::test]
    async fn a_fenced_batch_names_its_partitions() {
        let fake = Arc::new(Fake { fenced: true, ..Fake::default() });
        match env(fake, Arc::new(Sink::default())).handle_batch(records(2), expected(Some(0))).await {
            Outcome::Fenced { partitions } => assert_eq!(partitions, [TopicPartition::new("lms.learning.v1", 0)]),
            _ => panic!("expected a fence"),
        }
    }

    #[tokio::test]
    async fn a_stop_ends_the_retries_without_an_outcome_to_commit() {
        let fake = Arc::new(Fake { transient: Mutex::new(u32::MAX), ..Fake::default() });
        let env = env(fake.clone(), Arc::new(Sink::default()));
        let stop = env.stop[0].clone();
        let batch = tokio::spawn(env.handle_batch(records(2), expected(None)));
        // Polls with a deadline until the first attempt failed, then stops the member.
        let deadline = Instant::now() + Duration::from_secs(10);
        while *fake.transient.lock().unwrap() == u32::MAX {
            assert!(Instant::now() < deadline, "the processor was never called");
            tokio::task::yield_now().await;
        }
        stop.cancel();
        assert!(matches!(batch.await.unwrap(), Outcome::Stopped));
        assert!(fake.taken.lock().unwrap().is_empty());
    }
}
