//! 1 % poison among records written straight to the topics (past the API's validation):
//! undecodable bytes, unknown types, and events that break the invariants (empty ids,
//! negative watching time, `max_score` 0). Every poison record lands in the dead-letter topic
//! once per consuming group, with its reason and origin, and the rest is processed exactly:
//! progress equals what the valid events say.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeZone, Utc};
use lms_bus::{BusMetrics, OnQueueFull, OutRecord, Producer, TopicsFile};
use lms_events::data::{AssessmentGraded, CoursePublished, LessonRef, Module, VideoProgressed};
use lms_events::{Domain, Event, EventData, codec};
use processors::runtime::{self, Plumbing};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use tests::{create_topic, eventually, init_logs, kafka_brokers, unique_prefix};

use crate::support::{fast_consumer, fresh_postgres_db, kafka};

const RECORDS: usize = 3_000;
const LEARNERS: usize = 50;
const LESSONS: usize = 10;

fn event(id: String, data: EventData) -> Event {
    Event {
        specversion: "1.0".to_owned(),
        id,
        source: "poison-test".to_owned(),
        time: Utc.timestamp_opt(1_790_000_000, 0).single().expect("time"),
        subject: None,
        tenant: "acme".to_owned(),
        data,
    }
}

/// Record `i` of the learning topic: poison when `i % 100 == 37`, of one of five kinds.
fn record(i: usize, topic: &str) -> (OutRecord, bool) {
    let learner = format!("learner-{}", i % LEARNERS);
    let lesson = LessonRef { learner_id: learner.clone(), course_id: "c".into(), lesson_id: format!("l{}", i % LESSONS) };
    let good = |e: &Event| codec::encode(e);
    let (payload, poison) = if i % 100 != 37 {
        (good(&event(format!("ok-{i}"), EventData::LessonCompleted(lesson))), false)
    } else {
        let payload = match (i / 100) % 5 {
            0 => b"{\"specversion\": \"1.0\", not json".to_vec(),
            1 => serde_json::to_vec(&serde_json::json!({"specversion": "1.0", "id": format!("bad-{i}"), "type": "lesson.exploded",
                "source": "x", "time": "2026-01-01T00:00:00Z", "tenant": "acme", "data": {}}))
            .expect("json"),
            2 => good(&event(format!("bad-{i}"), EventData::LessonCompleted(LessonRef { learner_id: String::new(), ..lesson }))),
            3 => good(&event(
                format!("bad-{i}"),
                EventData::VideoProgressed(VideoProgressed {
                    learner_id: learner.clone(),
                    course_id: "c".into(),
                    lesson_id: "l0".into(),
                    position_s: 1.0,
                    duration_s: 10.0,
                    watched_s: -5.0,
                }),
            )),
            _ => good(&event(
                format!("bad-{i}"),
                EventData::AssessmentGraded(AssessmentGraded {
                    learner_id: learner.clone(),
                    course_id: "c".into(),
                    assessment_id: "q".into(),
                    score: 1.0,
                    max_score: 0.0,
                    attempt: 1,
                }),
            )),
        };
        (payload, true)
    };
    let headers = vec![("content-type".to_owned(), codec::CONTENT_TYPE.as_bytes().to_vec())];
    (OutRecord { topic: topic.to_owned(), key: Some(learner.into_bytes()), payload, headers }, poison)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn poison_is_dead_lettered_per_group_with_reasons_and_the_rest_is_exact() {
    init_logs();
    let prefix = unique_prefix("poison");
    let brokers = kafka_brokers();
    let topics = TopicsFile::bundled().topic_map(&prefix);
    for domain in Domain::ALL {
        create_topic(&brokers, topics.topic(domain), if domain == Domain::Learning { 2 } else { 1 }).await;
    }
    let store = processors::open_store(&fresh_postgres_db("poison").await, 4).await.expect("store");
    let k = kafka(&brokers, &prefix);
    let metrics = BusMetrics::standalone();
    let producer = Arc::new(Producer::new(&k, topics.clone(), Arc::clone(&metrics), "poison-producer").expect("producer"));
    let twin = std::env::temp_dir().join(format!("{prefix}analytics"));
    let analytics = lms_analytics::AnalyticsConfig::Parquet(lms_analytics::ParquetConfig::new(&twin)).open().await.expect("twin");
    analytics.migrate().await.expect("migrate twin");
    let (mut ctx, relay) = runtime::context(store.clone(), Arc::clone(&producer));
    ctx.extensions.insert(analytics);
    let plumbing =
        Plumbing { kafka: k.clone(), consumer: fast_consumer(), topics: topics.clone(), producer: Arc::clone(&producer), metrics };
    let names = ["catalog", "progress", "analytics"].map(|n| processors::lookup(n).expect("registered"));
    let running = runtime::start(&plumbing, &ctx, relay, &names, 1).expect("start");

    let course = event(
        "course-c-1".into(),
        EventData::CoursePublished(CoursePublished {
            course_id: "c".into(),
            title: "C".into(),
            version: 1,
            modules: vec![Module { module_id: "m".into(), lessons: (0..LESSONS).map(|l| format!("l{l}")).collect() }],
        }),
    );
    for r in producer.send_events(&[(course, None)], OnQueueFull::Wait(Duration::from_secs(30))).await {
        r.expect("catalog event delivered");
    }
    let learning = topics.topic(Domain::Learning).to_owned();
    let (records, poison): (Vec<OutRecord>, Vec<bool>) = (0..RECORDS).map(|i| record(i, &learning)).unzip();
    let mut poison_at = BTreeSet::new();
    for ((r, p), i) in producer.send(records, OnQueueFull::Wait(Duration::from_secs(60))).await.into_iter().zip(&poison).zip(0..) {
        let d = r.unwrap_or_else(|e| panic!("record {i} delivered: {e}"));
        if *p {
            poison_at.insert((d.partition, d.offset));
        }
    }
    assert_eq!(poison_at.len(), RECORDS / 100, "1 % poison");

    // Dead letters: each poison record once per group, with a reason and its origin.
    let dlq = topics.topic(Domain::DeadLetter).to_owned();
    let letters = eventually("every poison record is dead-lettered by both groups", Duration::from_secs(120), || {
        let letters = read_dead_letters(&brokers, &dlq);
        async move { (letters.len() >= 2 * RECORDS / 100).then_some(letters) }
    })
    .await;
    for group in ["progress", "analytics"] {
        let group = k.group_id(group);
        let mine: Vec<&BTreeMap<String, String>> = letters.iter().filter(|h| h.get("lms_dlq_group") == Some(&group)).collect();
        let origins: BTreeSet<(i32, i64)> = mine
            .iter()
            .map(|h| (h["lms_dlq_source_partition"].parse().expect("partition"), h["lms_dlq_source_offset"].parse().expect("offset")))
            .collect();
        assert_eq!(origins, poison_at, "{group}: exactly the poison records, by origin");
        assert_eq!(mine.len(), poison_at.len(), "{group}: each once");
        assert!(mine.iter().all(|h| h.get("lms_dlq_source_topic") == Some(&learning) && !h["lms_dlq_reason"].is_empty()));
    }
    let reasons: BTreeSet<&str> = letters.iter().map(|h| h["lms_dlq_reason"].as_str()).collect();
    for part in ["learner_id", "watched_s", "max_score"] {
        assert!(reasons.iter().any(|r| r.contains(part)), "a reason names {part}: {reasons:?}");
    }

    // The rest: every learner completed exactly the lessons its valid events say.
    let mut want: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for i in (0..RECORDS).filter(|i| i % 100 != 37) {
        want.entry(format!("learner-{}", i % LEARNERS)).or_default().insert(i % LESSONS);
    }
    eventually("progress of the valid events", Duration::from_secs(120), || async {
        for (learner, lessons) in &want {
            let p = processors::progress::read(&store, "acme", learner).await.ok()?;
            if p.len() != 1 || p[0].lessons_completed as usize != lessons.len() {
                return None;
            }
        }
        Some(())
    })
    .await;
    running.stop().await.expect("clean stop");
}

fn read_dead_letters(brokers: &str, topic: &str) -> Vec<BTreeMap<String, String>> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "poison-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning).expect("assign");
    consumer.assign(&tpl).expect("assign");
    let mut out = Vec::new();
    let mut idle = 0;
    while idle < 5 {
        match consumer.poll(Duration::from_millis(200)) {
            Some(Ok(m)) => {
                idle = 0;
                let headers = m
                    .headers()
                    .map(|hs| {
                        hs.iter().map(|h| (h.key.to_owned(), String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned())).collect()
                    })
                    .unwrap_or_default();
                out.push(headers);
            }
            _ => idle += 1,
        }
    }
    out
}
