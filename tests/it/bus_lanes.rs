//! One member, four partitions, `partition_lanes` 2: batches of different partitions are
//! processed concurrently, and each partition's records still arrive once, in order, with
//! no gap between one batch and the next.
//!
//! Before the per-partition queues, librdkafka's single queue handed tansu's fetches out
//! one partition after the other (seen in `loadtest notify`), so the lanes had one
//! partition to work on; the concurrency assertion below is meant to catch that (it was
//! not run against the code before the queues).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lms_bus::{Batch, BusMetrics, Member, ProcessError, Processor, TopicsFile};
use lms_events::Domain;
use tests::{create_topic, eventually, init_logs, kafka_brokers, unique_prefix};
use tokio_util::sync::CancellationToken;

use crate::support::{kafka, lesson_events, member, produce_all, producer};

const EVENTS: usize = 20_000;
const PARTITIONS: i32 = 4;

#[derive(Default)]
struct Recorder {
    /// Per partition, the (first, last) offsets of each batch, in the order processed.
    runs: Mutex<BTreeMap<i32, Vec<(i64, i64)>>>,
    applied: Mutex<HashMap<String, u32>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    met: AtomicBool,
}

#[async_trait]
impl Processor for Recorder {
    fn name(&self) -> &str {
        "lanes"
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        let now = self.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_in_flight.fetch_max(now, Ordering::SeqCst);
        {
            let mut runs = self.runs.lock().expect("lock");
            let mut spans: BTreeMap<i32, (i64, i64)> = BTreeMap::new();
            for r in &batch.records {
                let s = spans.entry(r.raw.tp.partition).or_insert((r.raw.offset, r.raw.offset - 1));
                assert_eq!(r.raw.offset, s.1 + 1, "partition {}: offsets follow each other within a batch", r.raw.tp.partition);
                s.1 = r.raw.offset;
            }
            for (p, s) in spans {
                runs.entry(p).or_default().push(s);
            }
            let mut applied = self.applied.lock().expect("lock");
            for r in &batch.records {
                *applied.entry(r.event.id.clone()).or_default() += 1;
            }
        }
        // Until two batches have been seen at once, wait (bounded) for a second one: with
        // lanes it comes at once, without them never.
        if !self.met.load(Ordering::SeqCst) {
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if self.in_flight.load(Ordering::SeqCst) >= 2 {
                    self.met.store(true, Ordering::SeqCst);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lanes_run_partitions_concurrently_in_order() {
    init_logs();
    let brokers = kafka_brokers();
    let prefix = unique_prefix("lanes");
    let k = kafka(&brokers, &prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    create_topic(&brokers, topics.topic(Domain::Learning), PARTITIONS).await;
    create_topic(&brokers, topics.topic(Domain::DeadLetter), 1).await;
    let metrics = BusMetrics::standalone();
    let producer = producer(&k, metrics.clone());
    let produced = produce_all(&producer, &lesson_events("tenant-a", EVENTS, 500)).await;
    assert_eq!(produced.ends.len(), PARTITIONS as usize, "every partition holds events");

    let p = Arc::new(Recorder::default());
    let shutdown = CancellationToken::new();
    let mut cfg = member(&k, "lanes", "a");
    assert_eq!(cfg.consumer.partition_lanes, 2, "the default under test");
    cfg.consumer.max_batch_records = 500;
    let m = Member::spawn(cfg, p.clone(), producer.clone(), metrics.clone(), shutdown.clone()).expect("member");
    eventually("every event to be processed", Duration::from_secs(120), || {
        let n = p.applied.lock().expect("lock").len();
        async move { (n == EVENTS).then_some(()) }
    })
    .await;
    shutdown.cancel();
    m.join().await.expect("the member stops cleanly");

    let applied = p.applied.lock().expect("lock");
    assert_eq!(applied.values().filter(|n| **n > 1).count(), 0, "a single member redelivers nothing");
    let runs = p.runs.lock().expect("lock");
    for (partition, spans) in runs.iter() {
        let mut next = 0;
        for (first, last) in spans {
            assert_eq!(*first, next, "partition {partition}: each batch starts where the one before it ended ({spans:?})");
            next = last + 1;
        }
        assert_eq!(Some(&next), produced.ends.get(partition), "partition {partition}: processed to its end");
    }
    assert!(
        p.max_in_flight.load(Ordering::SeqCst) >= 2,
        "no two batches were ever processed at once: the lanes had one partition at a time"
    );
}
