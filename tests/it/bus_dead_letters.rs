//! Poison records land in the dead-letter topic with their reason and origin while the
//! rest flow: an undecodable record, one the processor's check refuses, and one the
//! processor fails on permanently inside a batch (isolated by splitting the batch).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lms_bus::{Batch, BusMetrics, Member, OnQueueFull, OutRecord, ProcessError, Processor, Record, TopicsFile};
use lms_events::{Domain, EventData, codec};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use tests::{create_topic, eventually, init_logs, kafka_brokers, unique_prefix};
use tokio_util::sync::CancellationToken;

use crate::support::{committed, kafka, lesson_events, member, producer};

/// Refuses lesson `lesson-bad-check` in `check`; fails permanently on any batch holding
/// lesson `lesson-bad-process`.
struct Picky {
    seen: Mutex<HashSet<String>>,
}

fn lesson(r: &Record) -> &str {
    match &r.event.data {
        EventData::LessonCompleted(l) => &l.lesson_id,
        _ => "",
    }
}

#[async_trait]
impl Processor for Picky {
    fn name(&self) -> &str {
        "picky"
    }

    fn check(&self, r: &Record) -> Result<(), String> {
        if lesson(r) == "lesson-bad-check" { Err("lesson-bad-check is refused by check".into()) } else { Ok(()) }
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        if batch.records.iter().any(|r| lesson(r) == "lesson-bad-process") {
            return Err(ProcessError::permanent("lesson-bad-process breaks an invariant"));
        }
        let mut seen = self.seen.lock().expect("lock");
        for r in &batch.records {
            seen.insert(r.event.id.clone());
        }
        Ok(())
    }
}

fn header(m: &rdkafka::message::BorrowedMessage<'_>, name: &str) -> String {
    m.headers()
        .and_then(|hs| hs.iter().find(|h| h.key == name).and_then(|h| h.value.map(|v| String::from_utf8_lossy(v).into_owned())))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_records_are_dead_lettered_with_reason_and_origin_while_the_rest_flow() {
    init_logs();
    let brokers = kafka_brokers();
    let prefix = unique_prefix("dlq");
    let k = kafka(&brokers, &prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let learning = topics.topic(Domain::Learning).to_owned();
    let dlq = topics.topic(Domain::DeadLetter).to_owned();
    create_topic(&brokers, &learning, 4).await;
    create_topic(&brokers, &dlq, 1).await;
    let metrics = BusMetrics::standalone();
    let producer = producer(&k, metrics.clone());

    // 3000 good events with three poison records in between.
    let mut events = lesson_events("tenant-a", 3000, 300);
    let mut bad_check = events[1000].clone();
    bad_check.id = "poison-check".into();
    if let EventData::LessonCompleted(l) = &mut bad_check.data {
        l.lesson_id = "lesson-bad-check".into();
    }
    let mut bad_process = events[2000].clone();
    bad_process.id = "poison-process".into();
    if let EventData::LessonCompleted(l) = &mut bad_process.data {
        l.lesson_id = "lesson-bad-process".into();
    }
    let mut records: Vec<OutRecord> = Vec::new();
    for (i, e) in events.drain(..).enumerate() {
        records.push(producer.event_record(&e, None));
        match i {
            500 => records.push(OutRecord {
                topic: learning.clone(),
                key: Some(b"learner-1".to_vec()),
                payload: b"{not json".to_vec(),
                headers: vec![("content-type".into(), codec::CONTENT_TYPE.as_bytes().to_vec())],
            }),
            1000 => records.push(producer.event_record(&bad_check, None)),
            2000 => records.push(producer.event_record(&bad_process, None)),
            _ => {}
        }
    }
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    let mut origin: BTreeMap<String, (i32, i64)> = BTreeMap::new();
    let results = producer.send(records.clone(), OnQueueFull::Wait(Duration::from_secs(30))).await;
    for (r, res) in records.iter().zip(results) {
        let d = res.expect("delivered");
        let e = ends.entry(d.partition).or_default();
        *e = (*e).max(d.offset + 1);
        if r.payload.starts_with(b"{not") {
            origin.insert("undecodable".into(), (d.partition, d.offset));
        } else if r.payload.windows(12).any(|w| w == b"poison-check") {
            origin.insert("check".into(), (d.partition, d.offset));
        } else if r.payload.windows(14).any(|w| w == b"poison-process") {
            origin.insert("process".into(), (d.partition, d.offset));
        }
    }
    assert_eq!(origin.len(), 3);

    let picky = Arc::new(Picky { seen: Mutex::new(HashSet::new()) });
    let shutdown = CancellationToken::new();
    let m =
        Member::spawn(member(&k, "picky", "picky-1"), picky.clone(), producer.clone(), metrics.clone(), shutdown.clone()).expect("member");

    // The dead-letter topic receives exactly the three poison records.
    let c: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{prefix}dlq-reader"))
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("consumer");
    c.subscribe(&[&dlq]).expect("subscribe");
    let mut dead: BTreeMap<String, (String, String, i32, i64, Vec<u8>)> = BTreeMap::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while dead.len() < 3 {
        assert!(std::time::Instant::now() < deadline, "dead letters so far: {dead:?}");
        let Some(msg) = tokio::task::block_in_place(|| c.poll(Duration::from_millis(200))) else { continue };
        let m = msg.expect("dlq record");
        let reason = header(&m, codec::headers::DLQ_REASON);
        let kind = if reason.contains("undecodable") {
            "undecodable"
        } else if reason.contains("refused by check") {
            "check"
        } else if reason.contains("breaks an invariant") {
            "process"
        } else {
            panic!("unexpected dead letter with reason {reason:?}")
        };
        dead.insert(
            kind.to_owned(),
            (
                reason,
                header(&m, codec::headers::DLQ_SOURCE_TOPIC),
                header(&m, codec::headers::DLQ_SOURCE_PARTITION).parse().expect("partition header"),
                header(&m, codec::headers::DLQ_SOURCE_OFFSET).parse().expect("offset header"),
                m.payload().unwrap_or_default().to_vec(),
            ),
        );
    }
    for (kind, (p, o)) in &origin {
        let (_, topic, dp, doff, _) = &dead[kind];
        assert_eq!((topic.as_str(), *dp, *doff), (learning.as_str(), *p, *o), "origin of the {kind} dead letter");
    }
    assert_eq!(dead["undecodable"].4, b"{not json".to_vec(), "the dead letter keeps the original bytes");

    // Every good event is processed, and the committed offsets move past the poison.
    eventually("all good events processed", Duration::from_secs(60), || {
        let n = picky.seen.lock().expect("lock").len();
        async move { (n == 3000).then_some(()) }
    })
    .await;
    let group = k.group_id("picky");
    eventually("committed offsets at the log ends", Duration::from_secs(60), || {
        let done = committed(&brokers, &group, &learning, 4) == ends;
        async move { done.then_some(()) }
    })
    .await;
    shutdown.cancel();
    let report = m.join().await.expect("member stops");
    assert_eq!(report.dead_lettered, 3);
    assert!(!picky.seen.lock().expect("lock").contains("poison-process"));
    assert_eq!(metrics.dead_lettered.with_label_values(&[&group, &learning]).get(), 3);
    assert_eq!(metrics.processed.with_label_values(&[&group]).get(), 3000, "processed counts only events whose effects were applied");
}

/// The members' dead-letter producer connects when they start (`Producer::warm_up`), not on
/// the first poison record: that first record used to hold its batch's commit for the
/// connection, the producer id and the topic's metadata (0.6 s against tansu).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warmed_up_producer_reaches_the_broker_and_says_when_it_cannot() {
    init_logs();
    let prefix = unique_prefix("warm-up");
    let k = kafka(&kafka_brokers(), &prefix);
    let topic = TopicsFile::bundled().topic_map(&prefix).topic(Domain::DeadLetter).to_owned();
    create_topic(&kafka_brokers(), &topic, 1).await;
    let p = producer(&k, BusMetrics::standalone());
    assert!(tokio::task::block_in_place(|| p.warm_up(&topic, Duration::from_secs(10))), "the broker answers");
    // Nothing listens on the port of a listener bound and dropped.
    let port = tests::free_port();
    let nowhere = producer(&kafka(&format!("127.0.0.1:{port}"), &prefix), BusMetrics::standalone());
    assert!(!tokio::task::block_in_place(|| nowhere.warm_up(&topic, Duration::from_millis(500))), "no broker there");
}
