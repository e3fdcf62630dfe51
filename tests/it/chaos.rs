//! The chaos run, short: `lms api` and two `lms processor run catalog progress achievements
//! notifications analytics` processes against the broker (one record per batch: tansu's
//! memory engine), PostgreSQL and ClickHouse;
//! a generated cohort through the API while processor processes are SIGKILLed 20 times at
//! random moments and restarted. Every read endpoint must then equal the oracle: nothing
//! lost, nothing counted twice. The long version is `loadtest chaos` (README, Benchmarks).

use std::time::Duration;

use loadtest::chaos::{ChaosConfig, run};
use tests::kafka_brokers;

/// The chaos deployment's defaults around the services of `cargo xtask test`.
pub(crate) fn chaos_config() -> ChaosConfig {
    tests::init_logs();
    let lms = std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`, which builds it)");
    let postgres = std::env::var("LMS_TEST_POSTGRES_URL").expect("LMS_TEST_POSTGRES_URL (run the tests with `cargo xtask test`)");
    let clickhouse = std::env::var("LMS_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    ChaosConfig::new(lms.into(), kafka_brokers(), postgres, clickhouse)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkilled_processors_lose_and_double_nothing() {
    let mut cfg = chaos_config();
    cfg.kills = 20;
    cfg.kill_delay_ms = (200, 1000);
    cfg.cohort.learners = 80;
    cfg.cohort.weeks = 4;
    cfg.catch_up_timeout = Duration::from_secs(120);
    cfg.services.log_dir = std::env::temp_dir().join("lms-chaos-test");
    cfg.verbose = true;
    let report = run(&cfg).await.expect("the chaos run completes");
    println!("{report}");
    assert_eq!(report.kills, 20);
    assert!(report.tallies.iter().all(|t| t.checked > 0), "every endpoint was compared:\n{report}");
    assert!(report.ok(), "the endpoints differ from the oracle:\n{report}");
}
