//! `lms replay --to-offset` and `--to-timestamp` against librdkafka's mock cluster, whose
//! watermarks are right (tansu's memory engine answers stale ones). The binary connects
//! to the mock brokers over loopback like to any cluster.
//!
//! Neither broker available here answers ListOffsets by time: tansu 0.6.0 answers offset
//! 0, the mock cluster "no such record" (its handler is a FIXME). `--to-timestamp` must
//! notice and refuse rather than move the group to a wrong place; its happy path needs a
//! broker that implements the request (Kafka itself).

use std::collections::HashMap;
use std::time::Duration;

use lms_bus::admin::Admin;
use lms_bus::{KafkaConfig, TopicPartition, TopicsFile};
use lms_events::Domain;
use rdkafka::ClientConfig;
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{FutureProducer, FutureRecord};
use serde_json::Value;
use tests::{init_logs, run_lms, unique_prefix};

/// Records per partition of the learning topic; record `i` of a partition is stamped
/// `T0 + i` seconds.
const PER_PARTITION: i64 = 10;
const T0_MS: i64 = 1_795_000_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_to_offsets_moves_store_and_kafka_and_a_broker_without_time_lookup_is_refused() {
    init_logs();
    let mock = MockCluster::new(1).expect("mock cluster");
    let prefix = unique_prefix("replay-mock");
    let topics = TopicsFile::bundled().topic_map(&prefix);
    for d in [Domain::Learning, Domain::Enrollment] {
        mock.create_topic(topics.topic(d), 2, 1).expect("mock topic");
    }
    let learning = topics.topic(Domain::Learning).to_owned();
    let producer: FutureProducer = ClientConfig::new().set("bootstrap.servers", mock.bootstrap_servers()).create().expect("producer");
    for p in 0..2 {
        for i in 0..PER_PARTITION {
            let payload = format!("record {i}");
            producer
                .send(
                    FutureRecord::<(), _>::to(&learning).partition(p).payload(&payload).timestamp(T0_MS + i * 1000),
                    Duration::from_secs(10),
                )
                .await
                .expect("produced");
        }
    }

    let store = std::env::temp_dir().join(format!("{prefix}store.db"));
    let store_url = format!("sqlite://{}?mode=rwc", store.display());
    let env = [
        ("LMS_KAFKA__BROKERS", mock.bootstrap_servers()),
        ("LMS_KAFKA__TOPIC_PREFIX", prefix.clone()),
        ("LMS_STORE__URL", store_url.clone()),
    ];
    let lms = |args: &[&str]| {
        let out = run_lms(args, &env);
        (out.ok, out.stdout, out.stderr)
    };
    let group = format!("{prefix}lms-progress");
    let tp = |p: i32| TopicPartition::new(&learning, p);
    let admin = Admin::new(&KafkaConfig::new(mock.bootstrap_servers())).expect("admin");
    // The group has read everything: its offsets are at the end, in Kafka and in the store.
    let ends = [(tp(0), PER_PARTITION), (tp(1), PER_PARTITION)];
    admin.commit(&group, &ends).expect("commit the ends");
    let to_offset = |o: &str| format!("{learning}:{o}");
    let (ok, out, err) = lms(&[
        "replay",
        "--group",
        "progress",
        "--to-offset",
        &to_offset("0:10"),
        "--to-offset",
        &to_offset("1:10"),
        "--skip-member-check",
        "--yes",
    ]);
    assert!(ok, "store offsets set to the ends: {out}{err}");

    // Dry run: a plan, nothing changed.
    let (ok, out, err) = lms(&["replay", "--group", "progress", "--to-offset", &to_offset("1:4"), "--skip-member-check", "--json"]);
    assert!(ok, "{out}{err}");
    let plan: Value = serde_json::from_str(&out).expect("plan JSON");
    let rows = plan["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 1, "only the partition named moves: {plan}");
    assert_eq!(
        (rows[0]["partition"].as_i64(), rows[0]["from"].as_i64(), rows[0]["to"].as_i64(), rows[0]["replayed"].as_i64()),
        (Some(1), Some(10), Some(4), Some(6)),
        "{plan}"
    );
    let committed = |admin: &Admin| admin.committed(&group, &[tp(0), tp(1)]).expect("committed");
    assert_eq!(committed(&admin), HashMap::from(ends.clone()), "a dry run changes nothing");

    // Applied: Kafka and the state store both resume at 4 on partition 1, 10 on partition 0.
    let (ok, out, err) = lms(&["replay", "--group", "progress", "--to-offset", &to_offset("1:4"), "--skip-member-check", "--yes"]);
    assert!(ok, "{out}{err}");
    assert_eq!(committed(&admin), HashMap::from([(tp(0), PER_PARTITION), (tp(1), 4)]));
    let s = processors::open_store(&store_url, 1).await.expect("open the store");
    let stored = lms_state::offsets::load(&s, &group).await.expect("stored offsets");
    s.close().await;
    assert_eq!((stored.get(&tp(0)), stored.get(&tp(1))), (Some(&PER_PARTITION), Some(&4)), "{stored:?}");

    // Outside the log: refused, nothing changed.
    let (ok, out, err) = lms(&["replay", "--group", "progress", "--to-offset", &to_offset("0:11"), "--skip-member-check", "--yes"]);
    assert!(!ok && err.contains("outside the log"), "{out}{err}");
    assert_eq!(committed(&admin), HashMap::from([(tp(0), PER_PARTITION), (tp(1), 4)]));

    // By time: the mock cluster answers "no record that recent" for a time its newest
    // records are after; the plan must refuse instead of moving the group to the end.
    let at = chrono::DateTime::from_timestamp_millis(T0_MS + 5_000).expect("a time").to_rfc3339();
    let (ok, out, err) = lms(&["replay", "--group", "progress", "--to-timestamp", &at, "--skip-member-check", "--yes"]);
    assert!(!ok && err.contains("does not implement ListOffsets by time"), "{out}{err}");
    assert_eq!(committed(&admin), HashMap::from([(tp(0), PER_PARTITION), (tp(1), 4)]), "a refused replay changes nothing");
    let _ = std::fs::remove_file(store);
}
