//! `lms generate` against the real broker: straight to the topics (`--brokers`) and through
//! the write API (`--api`, tokens minted with `--jwt-secret`). Each run must put exactly the
//! library's cohort for the same options on the topics of its domains.

use std::collections::BTreeMap;
use std::process::Command;

use chrono::{DateTime, Utc};
use lms_events::{Domain, Event};
use lms_generator::{Cohort, CohortConfig};
use tests::{BusFixture, kafka_brokers};

use crate::api_support::{self, TestApi, read_until};

const NOW: &str = "2026-11-20T00:00:00Z";

use tests::lms_bin;

/// The options both runs use, as the library takes them and as the command line does.
fn cohort(tenant: &str) -> (CohortConfig, Vec<String>) {
    let config = CohortConfig {
        tenant_names: vec![tenant.to_owned()],
        courses: 3,
        learners: 40,
        weeks: 3,
        now: NOW.parse::<DateTime<Utc>>().expect("time"),
        ..CohortConfig::new(11)
    };
    let args = ["generate", "--seed", "11", "--tenant", tenant, "--courses", "3", "--learners", "40", "--weeks", "3", "--now", NOW];
    (config, args.iter().map(|s| (*s).to_owned()).collect())
}

/// The cohort's events by domain, sorted by id.
fn expected(config: CohortConfig) -> BTreeMap<&'static str, Vec<Event>> {
    let mut by: BTreeMap<&'static str, Vec<Event>> = BTreeMap::new();
    for e in Cohort::new(config).expect("config") {
        by.entry(e.domain().as_str()).or_default().push(e);
    }
    for v in by.values_mut() {
        v.sort_by(|a, b| a.id.cmp(&b.id));
    }
    by
}

fn run(args: &[String]) -> String {
    let out = Command::new(lms_bin()).args(args).env("RUST_LOG", "warn").output().expect("run lms generate");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success(), "lms generate failed: {}\n{stdout}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    stdout
}

/// Reads each domain's one-partition topic until it holds as many records as expected, and
/// compares the events.
async fn check_topics(brokers: &str, topic: impl Fn(Domain) -> String, expected: &BTreeMap<&'static str, Vec<Event>>) {
    for d in [Domain::Catalog, Domain::Enrollment, Domain::Learning, Domain::Payment] {
        let want = &expected[d.as_str()];
        assert!(!want.is_empty(), "the cohort has {d} events");
        let mut got: Vec<Event> = read_until(brokers, &topic(d), |rs| rs.len() >= want.len()).await.into_iter().map(|r| r.event).collect();
        got.sort_by(|a, b| a.id.cmp(&b.id));
        assert_eq!(got.len(), want.len(), "{d}: record count");
        assert!(got == *want, "{d}: the events on the topic differ from the cohort's");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_produces_the_cohort_to_the_topics() {
    tests::init_logs();
    let brokers = kafka_brokers();
    let BusFixture { prefix, topics, .. } = BusFixture::fresh(&brokers, "generate", 1).await;
    let (config, mut args) = cohort("acme");
    args.extend(["--brokers".to_owned(), brokers.clone(), "--topic-prefix".to_owned(), prefix.clone()]);
    let stdout = tokio::task::spawn_blocking(move || run(&args)).await.expect("join");
    let want = expected(config);
    let total: usize = want.values().map(Vec::len).sum();
    assert!(stdout.contains(&format!("generated {total} events")), "summary: {stdout}");
    check_topics(&brokers, |d| topics.topic(d).to_owned(), &want).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generate_sends_the_cohort_through_the_api() {
    let brokers = kafka_brokers();
    let api = TestApi::start("generate-api", &brokers, api_support::config()).await;
    let (config, mut args) = cohort(api_support::TENANT);
    args.extend([
        "--api".to_owned(),
        api.url.clone(),
        "--jwt-secret".to_owned(),
        api_support::SECRET.to_owned(),
        "--batch-size".to_owned(),
        "500".to_owned(),
    ]);
    let stdout = tokio::task::spawn_blocking(move || run(&args)).await.expect("join");
    // With the secret it can also sign a dashboard link.
    let link = format!("{}/dashboard?course=", api.url);
    assert!(stdout.contains(&link) && stdout.contains("#token="), "no dashboard link in: {stdout}");
    check_topics(&brokers, |d| api.topic(d), &expected(config)).await;
}
