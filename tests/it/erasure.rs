//! Learner erasure end to end (CONTRACT.md, "Learner data lifecycle"): the chaos deployment
//! (`lms api` and two processor processes on the broker, PostgreSQL and ClickHouse) takes
//! the first half of a cohort, three learners are erased through `DELETE /v1/learners/{id}`,
//! the rest of the cohort follows (the erased learners' later events included) while
//! processors are SIGKILLed, then every group is stopped and replayed from the beginning.
//! The erased learners must appear in no endpoint, and every other figure must equal the
//! oracles computed without them (revenue keeps their payments, without the learner).

use std::time::Duration;

use loadtest::chaos::run;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_learners_stay_erased_through_kills_and_a_replay() {
    let mut cfg = crate::chaos::chaos_config();
    cfg.kills = 4;
    cfg.kill_delay_ms = (2000, 5000);
    cfg.cohort.learners = 40;
    cfg.cohort.weeks = 3;
    cfg.erase = 3;
    cfg.replay = true;
    cfg.catch_up_timeout = Duration::from_secs(180);
    cfg.services.log_dir = std::env::temp_dir().join("lms-erasure-test");
    cfg.verbose = true;
    let report = run(&cfg).await.expect("the run completes");
    println!("{report}");
    let erasure = report.tallies.iter().find(|t| t.endpoint.starts_with("DELETE")).expect("the erasures were checked");
    assert_eq!(erasure.checked, 3, "three learners erased:\n{report}");
    assert!(report.tallies.iter().all(|t| t.checked > 0), "every endpoint was compared:\n{report}");
    assert!(report.ok(), "the endpoints differ from the oracle, or an erased learner shows:\n{report}");
}

/// `lms learners erase`, as an operator runs it against PostgreSQL, the analytics twin and
/// the broker: one JSON report per learner on stdout, the erasure on the erasure topic, the
/// learner in the erased list; a second run says `already_erased`; bad input changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lms_learners_erase_reports_records_and_refuses_bad_input() {
    use lms_analytics::{AnalyticsStore, ParquetConfig, ParquetStore};
    use lms_bus::admin::Admin;
    use lms_bus::{KafkaConfig, TopicsFile};
    use lms_events::{Domain, EventData, codec};
    use processors::notifications::preferences::{self, Preferences};

    tests::init_logs();
    let brokers = tests::durable_kafka_brokers();
    let prefix = tests::unique_prefix("learners-erase");
    let store_url = crate::support::fresh_postgres_db("learners_erase").await;
    let env = tests::lms_env(&brokers, &prefix, &store_url, tests::free_port(), "unused");
    let applied = tests::run_lms(&["topics", "apply"], &env);
    assert!(applied.ok, "{}{}", applied.stdout, applied.stderr);

    // What ada left: contact data in the state store, activity in the analytics twin.
    let store = processors::open_store(&store_url, 2).await.expect("state store");
    let prefs = Preferences { email: Some("ada@example.org".to_owned()), ..Preferences::default() };
    assert!(preferences::write(&store, "acme", "ada", &prefs).await.expect("preferences"));
    let twin_dir = env.iter().find(|(k, _)| *k == "LMS_ANALYTICS__DIR").map(|(_, v)| v.clone()).expect("twin dir");
    let twin = ParquetStore::open(ParquetConfig::new(&twin_dir)).await.expect("twin");
    twin.migrate().await.expect("migrate the twin");
    let lesson = crate::pipeline_e2e::event(
        "l1",
        "lesson.completed",
        "2026-11-20T10:00:00Z",
        Some("ada"),
        serde_json::json!({"learner_id": "ada", "course_id": "c1", "lesson_id": "x"}),
    );
    let lesson = lms_events::parse_client_event(&lesson, "acme").expect("a valid event");
    twin.insert(&[&lesson]).await.expect("twin insert");
    drop(twin);

    let bad = tests::run_lms(&["learners", "erase", "--tenant", "acme"], &env);
    assert!(!bad.ok && bad.stderr.contains("no learner to erase"), "{}", bad.stderr);
    let bad = tests::run_lms(&["learners", "erase", "--tenant", "acme", "ada", "b\u{7}ob"], &env);
    assert!(!bad.ok && bad.stderr.contains("nothing was erased"), "{}", bad.stderr);

    let out = tests::run_lms(&["learners", "erase", "--tenant", "acme", "ada"], &env);
    assert!(out.ok, "{}{}", out.stdout, out.stderr);
    let report: serde_json::Value = serde_json::from_str(out.stdout.trim()).expect("one JSON report");
    assert_eq!(report["learner_id"], "ada", "{report}");
    assert_eq!(report["already_erased"], false, "{report}");
    assert_eq!(report["state"]["preferences"], 1, "{report}");
    assert_eq!(report["analytics"]["status"], "erased", "{report}");
    assert!(report["analytics"]["rows"]["activity_daily"].as_u64() > Some(0), "{report}");
    assert!(out.stderr.contains("erased 1/1: ada"), "{}", out.stderr);

    let again = tests::run_lms(&["learners", "erase", "--tenant", "acme", "ada"], &env);
    assert!(again.ok, "{}", again.stderr);
    let again: serde_json::Value = serde_json::from_str(again.stdout.trim()).expect("JSON");
    assert_eq!((&again["already_erased"], &again["state"]["preferences"]), (&serde_json::json!(true), &serde_json::json!(0)), "{again}");
    assert!(!preferences::write(&store, "acme", "ada", &prefs).await.expect("write"), "an erased learner's preferences are refused");

    // The erasure is on its topic, keyed by tenant and learner, as the processors read it.
    let topic = TopicsFile::bundled().topic_map(&prefix).topic(Domain::Erasure).to_owned();
    let admin = Admin::new(&KafkaConfig::new(&brokers)).expect("admin");
    let log = tokio::task::block_in_place(|| admin.read_log(&topic, &mut |_| {})).expect("read the erasure topic");
    assert_eq!(log.len(), 2, "one record per run");
    for r in &log {
        assert_eq!(r.key.as_deref(), Some(b"acme/ada".as_slice()));
        let e = codec::decode(r.value.as_deref().unwrap_or_default()).expect("an event");
        assert!(matches!(&e.data, EventData::LearnerErased(d) if d.learner_id == "ada"), "{e:?}");
    }
    store.close().await;
}
