//! `lms dlq list|show|redrive` against the real broker: a processor refuses events it
//! does not support yet (dead-lettered with reason and origin) and an undecodable record;
//! the operator lists and inspects them, sees what a re-drive would send (nothing is
//! sent without `--yes`), deploys the fix, and re-drives exactly the refused events,
//! which the fixed processor then handles. The undecodable record stays where it is.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use lms_bus::{Batch, BusMetrics, Member, OnQueueFull, OutRecord, ProcessError, Processor, Record, TopicsFile};
use lms_events::{Domain, codec};
use serde_json::Value;
use tests::{create_topic, durable_kafka_brokers, eventually, init_logs, unique_prefix};
use tokio_util::sync::CancellationToken;

use crate::ops_replay::Deployment;
use crate::support::{kafka, lesson_events, member, producer};

/// Refuses events whose id starts with `needs-fix` until it is "redeployed" (`fixed`).
struct Strict {
    fixed: AtomicBool,
    /// Event id → the `lms_redriven_from` header it arrived with (empty when none).
    seen: Mutex<HashMap<String, String>>,
}

#[async_trait]
impl Processor for Strict {
    fn name(&self) -> &str {
        "strict"
    }

    fn check(&self, r: &Record) -> Result<(), String> {
        if r.event.id.starts_with("needs-fix") && !self.fixed.load(Ordering::SeqCst) {
            Err("this kind of lesson is not yet supported".into())
        } else {
            Ok(())
        }
    }

    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        let mut seen = self.seen.lock().expect("lock");
        for r in &batch.records {
            let from = r.raw.header("lms_redriven_from").map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
            seen.insert(r.event.id.clone(), from);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dead_letters_are_listed_shown_and_redriven_after_a_fix() {
    init_logs();
    let brokers = durable_kafka_brokers();
    let prefix = unique_prefix("ops-dlq");
    let k = kafka(&brokers, &prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let learning = topics.topic(Domain::Learning).to_owned();
    let dlq = topics.topic(Domain::DeadLetter).to_owned();
    create_topic(&brokers, &learning, 4).await;
    create_topic(&brokers, &dlq, 1).await;
    let metrics = BusMetrics::standalone();
    let producer = producer(&k, metrics.clone());
    let d = Deployment { brokers: brokers.clone(), prefix: prefix.clone(), store: "sqlite::memory:".into() };

    let mut events = lesson_events("tenant-a", 200, 20);
    for (i, id) in ["needs-fix-1", "needs-fix-2"].iter().enumerate() {
        let mut e = events[i * 50].clone();
        e.id = (*id).to_owned();
        events.push(e);
    }
    let mut records: Vec<OutRecord> = events.iter().map(|e| producer.event_record(e, None)).collect();
    records.push(OutRecord {
        topic: learning.clone(),
        key: Some(b"learner-1".to_vec()),
        payload: b"{not json".to_vec(),
        headers: vec![("content-type".into(), codec::CONTENT_TYPE.as_bytes().to_vec())],
    });
    let mut origin: BTreeMap<String, (i64, i64)> = BTreeMap::new();
    for (r, res) in records.iter().zip(producer.send(records.clone(), OnQueueFull::Wait(Duration::from_secs(30))).await) {
        let at = res.expect("delivered");
        let name =
            if r.payload.starts_with(b"{not") { "undecodable".to_owned() } else { lms_events::decode(&r.payload).expect("event").id };
        origin.insert(name, (i64::from(at.partition), at.offset));
    }

    let strict = Arc::new(Strict { fixed: AtomicBool::new(false), seen: Mutex::new(HashMap::new()) });
    let shutdown = CancellationToken::new();
    let m = Member::spawn(member(&k, "strict", "strict-1"), strict.clone(), producer.clone(), metrics, shutdown.clone()).expect("member");
    eventually("the 200 supported events processed", Duration::from_secs(60), || {
        let n = strict.seen.lock().expect("lock").len();
        async move { (n == 200).then_some(()) }
    })
    .await;

    // list: three dead letters with reason, origin, group and event.
    let listed: Vec<Value> = eventually("three dead letters listed", Duration::from_secs(60), || {
        let v: Value = serde_json::from_str(&d.ok(&["dlq", "list", "--json"])).expect("JSON");
        let v = v.as_array().cloned().unwrap_or_default();
        async move { (v.len() == 3).then_some(v) }
    })
    .await;
    let group = k.group_id("strict");
    for dl in &listed {
        let name = dl["event_id"].as_str().unwrap_or("undecodable").to_owned();
        let (p, o) = origin[&name];
        assert_eq!(dl["source_topic"], learning.as_str(), "{dl}");
        assert_eq!((dl["source_partition"].as_i64(), dl["source_offset"].as_i64()), (Some(p), Some(o)), "origin of {name}");
        assert_eq!(dl["group"], group.as_str());
        let reason = dl["reason"].as_str().expect("reason");
        if name == "undecodable" {
            assert!(reason.contains("undecodable"), "{reason}");
            assert_eq!(dl["value"], "{not json");
        } else {
            assert_eq!(reason, "this kind of lesson is not yet supported");
            assert_eq!(dl["event_type"], "lesson.completed");
        }
    }
    let table = d.ok(&["dlq", "list", "--reason", "not yet supported"]);
    assert!(table.contains("2 of 3 dead letter(s)"), "{table}");

    // show: every header, the value.
    let first = &listed[0];
    let at = format!("{}:{}", first["partition"], first["offset"]);
    let shown: Value = serde_json::from_str(&d.ok(&["dlq", "show", &at, "--json"])).expect("JSON");
    let headers = shown[0]["headers"].as_array().expect("headers");
    for h in ["lms_dlq_reason", "lms_dlq_source_topic", "lms_dlq_source_partition", "lms_dlq_source_offset", "lms_dlq_group", "lms_dlq_at"]
    {
        assert!(headers.iter().any(|kv| kv[0] == h), "{h} in {headers:?}");
    }
    assert!(!d.run(&["dlq", "show", "0:999999"]).status.success(), "an absent position is an error");

    // redrive: a selection is required; without --yes nothing is sent.
    let out = d.run(&["dlq", "redrive"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--all"));
    let dry = d.ok(&["dlq", "redrive", "--reason", "not yet supported"]);
    assert!(dry.contains("Dry run: 2 dead letter(s) selected"), "{dry}");

    // Deploy the fix, then re-drive the two refused events.
    strict.fixed.store(true, Ordering::SeqCst);
    let done = d.ok(&["dlq", "redrive", "--reason", "not yet supported", "--group", &group, "--yes"]);
    assert!(done.contains("Re-drove 2 dead letter(s)"), "{done}");
    let seen = eventually("the re-driven events processed", Duration::from_secs(60), || {
        let seen = strict.seen.lock().expect("lock").clone();
        async move { (seen.len() == 202).then_some(seen) }
    })
    .await;
    for id in ["needs-fix-1", "needs-fix-2"] {
        let from = &seen[id];
        let dl = listed.iter().find(|dl| dl["event_id"] == id).expect("listed");
        assert_eq!(from, &format!("{dlq}/{}/{}", dl["partition"], dl["offset"]), "{id} carries where it was re-driven from");
    }
    let after: Value = serde_json::from_str(&d.ok(&["dlq", "list", "--json"])).expect("JSON");
    assert_eq!(after.as_array().map(Vec::len), Some(3), "re-driving keeps the dead letters (the topic is a log)");
    shutdown.cancel();
    let report = m.join().await.expect("member stops");
    assert_eq!(report.dead_lettered, 3);
}
