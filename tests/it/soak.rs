//! The soak run, short: `lms api` and one `lms processor run catalog progress achievements
//! notifications analytics` process against the broker, PostgreSQL and ClickHouse; two ramp
//! steps of 5 s, then 30 s at half the last rate that held, sampled every 5 s (RSS of each
//! process, the progress group's lag, freshness of one lesson completion in 10 from the 202
//! of its POST to its visibility in `/progress`). Progress and achievements must then equal
//! the oracle (over several rounds of new learners); the figures are printed, not judged: speed and memory targets are checked by
//! the long run (`loadtest soak`, README, Benchmarks), not by a timed test.

use std::time::Duration;

use loadtest::soak::{SoakConfig, run};
use tests::kafka_brokers;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_short_samples_rss_lag_and_freshness_and_loses_nothing() {
    tests::init_logs();
    let lms = std::env::var("LMS_BIN").expect("LMS_BIN: the lms binary (run the tests with `cargo xtask test`, which builds it)");
    let postgres = std::env::var("LMS_TEST_POSTGRES_URL").expect("LMS_TEST_POSTGRES_URL (run the tests with `cargo xtask test`)");
    let clickhouse = std::env::var("LMS_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned());
    let mut cfg = SoakConfig::new(lms.into(), kafka_brokers(), postgres, clickhouse);
    cfg.start_rate = 150.0;
    cfg.step = Duration::from_secs(5);
    cfg.max_steps = 2;
    cfg.steady = Duration::from_secs(30);
    cfg.sample = Duration::from_secs(5);
    cfg.batch_size = 20;
    cfg.probe_every = 10;
    cfg.cohort.learners = 15; // small rounds: the run crosses several round boundaries
    cfg.cohort.weeks = 4;
    cfg.catch_up_timeout = Duration::from_secs(120);
    cfg.services.log_dir = std::env::temp_dir().join("lms-soak-test");
    cfg.verbose = true;
    let report = run(&cfg).await.expect("the soak run completes");
    let shown = report.display(cfg.probe_timeout).to_string();
    println!("{shown}");
    assert!(!report.steps.is_empty() && report.steps.len() <= 2, "one or two ramp steps:\n{shown}");
    assert!(report.steady_rate > 0.0, "{shown}");
    assert!(report.samples.len() >= 5, "a sample every 5 s over 30 s:\n{shown}");
    assert_eq!(report.processes, ["api", "processor-0"]);
    assert!(
        report.samples.iter().all(|s| s.rss_kib.len() == 2 && s.rss_kib.iter().all(|kib| *kib > 1024)),
        "the RSS of every process was read in every sample:\n{shown}"
    );
    let probes = report.freshness_ms.len() + report.probes_late as usize;
    assert!(probes >= 30, "freshness measured for at least 30 lesson completions, got {probes}:\n{shown}");
    assert!(report.freshness_ms.iter().all(|ms| *ms >= 0.0));
    assert!(report.events >= 1000, "{shown}");
    assert!(report.rounds >= 2, "the oracle is checked across cohort rounds:\n{shown}");
    assert_eq!(report.tallies.len(), 2, "progress and achievements compared:\n{shown}");
    assert!(report.tallies.iter().all(|t| t.checked > 0), "something was compared:\n{shown}");
    assert!(report.tallies.iter().all(tests::Tally::clean), "progress differs from the oracle:\n{shown}");
}
