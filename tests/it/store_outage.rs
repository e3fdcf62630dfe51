//! PostgreSQL down for 30 s under load: the processors and the API stay up, their
//! readiness says the store is down (liveness does not), events keep arriving, and after
//! the store is back the backlog drains to exactly the oracle's progress, with one
//! `course.completed` per completed learner and course.
//!
//! The outage is a TCP proxy in front of the real server cutting every connection (see
//! `tests::proxy`): to the processes it is the database going away and coming back.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lms_bus::{BusMetrics, Producer, TopicsFile};
use lms_events::{Domain, Event};
use tests::proxy::Proxy;
use tests::{create_topic, eventually, free_port, init_logs, kafka_brokers, lms_env, spawn_lms, unique_prefix};

use crate::progress_oracle::{PARTITIONS, check_progress, completed_on_topic, oracle, wait_for_offsets, world};
use crate::support::{fresh_postgres_db, kafka, produce_all};

const OUTAGE: Duration = Duration::from_secs(30);

async fn status(http: &reqwest::Client, url: &str) -> Option<u16> {
    http.get(url).timeout(Duration::from_secs(5)).send().await.ok().map(|r| r.status().as_u16())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_down_for_30_s_loses_and_doubles_nothing() {
    init_logs();
    let prefix = unique_prefix("store-outage");
    let brokers = kafka_brokers();
    let topics = TopicsFile::bundled().topic_map(&prefix);
    for (domain, partitions) in PARTITIONS {
        create_topic(&brokers, topics.topic(*domain), *partitions).await;
    }
    let direct = fresh_postgres_db("store_outage").await;
    let url = reqwest::Url::parse(&direct).expect("postgres url");
    let proxy = Proxy::start(&format!("{}:{}", url.host_str().unwrap_or("127.0.0.1"), url.port().unwrap_or(5432))).await;
    let mut via_proxy = url.clone();
    via_proxy.set_port(Some(proxy.addr().port())).expect("port");
    let store = processors::open_store(&direct, 4).await.expect("store");

    let (health, api_port) = (free_port(), free_port());
    let mut env = lms_env(&brokers, &prefix, via_proxy.as_str(), api_port, "outage-test");
    env.push(("LMS_CONSUMER__MAX_BATCH_RECORDS", "500".to_owned()));
    env.push(("LMS_API__READINESS_INTERVAL_MS", "200".to_owned()));
    let mut processors = spawn_lms(
        &["processor", "run", "catalog", "progress", "--listen", &format!("127.0.0.1:{health}")],
        &env,
        &format!("{prefix}processors.log"),
    );
    let mut api = spawn_lms(&["api"], &env, &format!("{prefix}api.log"));
    let http = reqwest::Client::new();
    let ready = |port: u16| format!("http://127.0.0.1:{port}/readyz");
    let live = |port: u16| format!("http://127.0.0.1:{port}/livez");
    for port in [health, api_port] {
        eventually("ready before the outage", Duration::from_secs(60), || async {
            (status(&http, &ready(port)).await == Some(200)).then_some(())
        })
        .await;
    }

    // One record per producer batch: tansu's memory engine skips the rest of a stored batch
    // when a consumer resumes inside it (tansu_probe.rs); this test is about the store.
    let mut k = kafka(&brokers, &prefix);
    k.properties.insert("batch.num.messages".into(), "1".into());
    let producer = Arc::new(Producer::new(&k, topics.clone(), BusMetrics::standalone(), "outage-producer").expect("producer"));
    let world = world(5, 300);
    let expected = oracle(&world);
    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    let mut produce = async |events: &[Event]| {
        let got = produce_all(&producer, events).await;
        for e in events {
            let (p, o) = got.at[&e.id];
            let end = ends.entry(topics.topic(e.domain()).to_owned()).or_default().entry(p).or_insert(0);
            *end = (*end).max(o + 1);
        }
    };
    let half = world.activity.len() / 2;
    produce(&world.early_catalog).await;
    produce(&world.activity[..half]).await;

    // The outage, while the second half arrives.
    proxy.cut();
    let cut_at = Instant::now();
    for port in [health, api_port] {
        eventually("readiness reports the store down", Duration::from_secs(20), || async {
            (status(&http, &ready(port)).await == Some(503)).then_some(())
        })
        .await;
    }
    produce(&world.activity[half..]).await;
    produce(&world.late_catalog).await;
    // Hold the outage for its full length, checking every second that nobody gave up.
    let mut every_second = tokio::time::interval(Duration::from_secs(1));
    while cut_at.elapsed() < OUTAGE {
        every_second.tick().await;
        assert!(processors.0.try_wait().expect("wait").is_none(), "the processors stay up while the store is down");
        assert!(api.0.try_wait().expect("wait").is_none(), "the API stays up while the store is down");
        for port in [health, api_port] {
            assert_eq!(status(&http, &live(port)).await, Some(200), "liveness does not depend on the store");
        }
    }
    proxy.restore();

    let all = ends.clone();
    let catalog = [topics.topic(Domain::Catalog).to_owned()];
    let learning = [topics.topic(Domain::Learning).to_owned(), topics.topic(Domain::Enrollment).to_owned()];
    wait_for_offsets(&store, &k.group_id("catalog"), &all, &catalog).await;
    wait_for_offsets(&store, &k.group_id("progress"), &all, &learning).await;
    for port in [health, api_port] {
        eventually("ready again", Duration::from_secs(30), || async { (status(&http, &ready(port)).await == Some(200)).then_some(()) })
            .await;
    }
    eventually("the outbox to drain", Duration::from_secs(60), || async {
        (lms_state::outbox::pending(&store).await.ok()? == 0).then_some(())
    })
    .await;
    check_progress(&store, &expected).await;

    let want: BTreeSet<(String, String, String)> = expected
        .progress
        .iter()
        .flat_map(|((t, l), cs)| cs.iter().filter(|(_, e)| e.completed_at.is_some()).map(move |(c, _)| (t.clone(), l.clone(), c.clone())))
        .collect();
    assert!(want.len() > 50, "the run completes courses: {}", want.len());
    let derived = topics.topic(Domain::Derived).to_owned();
    let (per_key, records) = completed_on_topic(&brokers, &derived, 4, want.len());
    assert_eq!(per_key.keys().cloned().collect::<BTreeSet<_>>(), want, "course.completed: none lost");
    assert_eq!(records, want.len(), "course.completed: none doubled");
}
