//! Learner erasure end to end (CONTRACT.md, "Learner data lifecycle"): the chaos deployment
//! (`lms api` and two processor processes on the broker, PostgreSQL and ClickHouse) takes
//! the first half of a cohort, three learners are erased through `DELETE /v1/learners/{id}`,
//! the rest of the cohort follows (the erased learners' later events included) while
//! processors are SIGKILLed, then every group is stopped and replayed from the beginning.
//! The erased learners must appear in no endpoint, and every other figure must equal the
//! oracles computed without them (revenue keeps their payments, without the learner).

use std::time::Duration;

use loadtest::chaos::{ChaosConfig, run};
use tests::kafka_brokers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn erased_learners_stay_erased_through_kills_and_a_replay() {
    tests::init_logs();
    let lms = std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`, which builds it)");
    let postgres = std::env::var("LMS_TEST_POSTGRES_URL").expect("LMS_TEST_POSTGRES_URL (run the tests with `cargo xtask test`)");
    let clickhouse = std::env::var("LMS_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    let mut cfg = ChaosConfig::new(lms.into(), kafka_brokers(), postgres, clickhouse);
    cfg.kills = 4;
    cfg.kill_delay_ms = (2000, 5000);
    cfg.learners = 40;
    cfg.weeks = 3;
    cfg.erase = 3;
    cfg.replay = true;
    cfg.catch_up_timeout = Duration::from_secs(180);
    cfg.log_dir = std::env::temp_dir().join("lms-erasure-test");
    cfg.verbose = true;
    let report = run(&cfg).await.expect("the run completes");
    println!("{report}");
    let erasure = report.tallies.iter().find(|t| t.endpoint.starts_with("DELETE")).expect("the erasures were checked");
    assert_eq!(erasure.checked, 3, "three learners erased:\n{report}");
    assert!(report.tallies.iter().all(|t| t.checked > 0), "every endpoint was compared:\n{report}");
    assert!(report.ok(), "the endpoints differ from the oracle, or an erased learner shows:\n{report}");
}
