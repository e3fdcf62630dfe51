//! Scaling at the operator level: the progress group runs as separate
//! `lms processor run` processes (as pods would), scaled 1 → 3 → 1 while the oracle
//! stream flows. Each of the three members takes partitions and processes events (seen
//! on its own `/metrics`), the two extra ones are stopped with SIGTERM mid-stream, and
//! the final progress equals the oracle with one `course.completed` per learner and
//! course: partition moves lost nothing and doubled nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use lms_bus::{BusMetrics, Producer, TopicsFile};
use lms_events::Domain;
use lms_state::outbox;
use tests::{create_topic, eventually, free_port, init_logs, kafka_brokers, unique_prefix};

use crate::ops_replay::{Deployment, Proc, terminate, track};
use crate::progress_oracle::{PARTITIONS, check_progress, completed_on_topic, oracle, wait_for_offsets, world};
use crate::support::{fresh_postgres_db, kafka, produce_all};

/// A processor process and the address of its `/metrics`.
struct Instance {
    child: Proc,
    listen: String,
}

impl Instance {
    fn start(d: &Deployment, names: &[&str], tag: &str) -> Instance {
        let listen = format!("127.0.0.1:{}", free_port());
        let child = d.spawn(names, &["--listen", &listen], tag);
        Instance { child, listen }
    }

    /// The value of a sample of this instance's `/metrics` (its full name with labels).
    async fn sample(&self, http: &reqwest::Client, series: &str) -> Option<f64> {
        let text = http.get(format!("http://{}/metrics", self.listen)).send().await.ok()?.text().await.ok()?;
        text.lines().find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
    }

    /// True once the instance reports lag for some partition of `group`: it owns one.
    async fn owns_partitions(&self, http: &reqwest::Client, group: &str) -> bool {
        let Ok(r) = http.get(format!("http://{}/metrics", self.listen)).send().await else { return false };
        r.text().await.is_ok_and(|t| t.contains(&format!("lms_bus_consumer_lag_records{{group=\"{group}\"")))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scaling_the_progress_group_1_3_1_keeps_results_equal_to_the_oracle() {
    init_logs();
    let prefix = unique_prefix("ops-scale");
    // The memory engine: the SQLite one slows down under the shared load of the suite.
    // Its fetches skip the rest of a stored batch when a member resumes inside one
    // (README), so the test producer writes one record per batch, as progress_kill does.
    let brokers = kafka_brokers();
    let topics = TopicsFile::bundled().topic_map(&prefix);
    for (domain, partitions) in PARTITIONS {
        create_topic(&brokers, topics.topic(*domain), *partitions).await;
    }
    let url = fresh_postgres_db("ops_scale").await;
    let store = processors::open_store(&url, 4).await.expect("store");
    let d = Deployment { brokers: brokers.clone(), prefix: prefix.clone(), store: url.clone() };
    let k = kafka(&brokers, &prefix);
    let mut one_per_batch = k.clone();
    one_per_batch.properties.insert("batch.num.messages".into(), "1".into());
    let producer = Arc::new(Producer::new(&one_per_batch, topics.clone(), BusMetrics::standalone(), "scale-producer").expect("producer"));
    let world = world(9, 250);
    let expected = oracle(&world);
    let group = k.group_id("progress");
    let learning = vec![topics.topic(Domain::Learning).to_owned(), topics.topic(Domain::Enrollment).to_owned()];
    let catalog = vec![topics.topic(Domain::Catalog).to_owned()];
    let http = reqwest::Client::new();
    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();

    // One instance (it also runs the catalog group) takes the catalog and a third of the activity.
    let first = Instance::start(&d, &["catalog", "progress"], "scale-0");
    let got = produce_all(&producer, &world.early_catalog).await;
    track(&mut ends, &topics, &world.early_catalog, &got);
    wait_for_offsets(&store, &k.group_id("catalog"), &ends, &catalog).await;
    let third = world.activity.len() / 3;
    let (a, rest) = world.activity.split_at(third);
    let (b, c) = rest.split_at(third);
    let got = produce_all(&producer, a).await;
    track(&mut ends, &topics, a, &got);

    // Scale to three: both new instances get partitions, then the second third flows.
    let mut extra = vec![Instance::start(&d, &["progress"], "scale-1"), Instance::start(&d, &["progress"], "scale-2")];
    for (i, inst) in extra.iter().enumerate() {
        eventually(&format!("instance {} to own partitions of {group}", i + 1), Duration::from_secs(90), || async {
            inst.owns_partitions(&http, &group).await.then_some(())
        })
        .await;
    }
    let got = produce_all(&producer, b).await;
    track(&mut ends, &topics, b, &got);
    // `lms groups` looks twice and reports how the lag moved meanwhile.
    let looked: serde_json::Value = serde_json::from_str(&d.ok(&["groups", "progress", "--json", "--trend-ms", "300"])).expect("JSON");
    let trend = &looked[0]["trend"];
    assert!(["growing", "shrinking", "steady"].contains(&trend["direction"].as_str().unwrap_or_default()), "{looked}");
    assert!(trend["interval_ms"].as_u64().is_some_and(|ms| ms >= 300), "{trend}");
    let processed = format!("lms_bus_processed_events_total{{group=\"{group}\"}}");
    for (i, inst) in std::iter::once(&first).chain(&extra).enumerate() {
        let n = eventually(&format!("instance {i} to process progress events"), Duration::from_secs(120), || async {
            inst.sample(&http, &processed).await.filter(|n| *n > 0.0)
        })
        .await;
        tracing::info!(instance = i, processed = n, "progress events processed by this member");
    }

    // Back to one while the last third flows: the two extra instances drain and leave.
    let producing = {
        let (producer, c, late) = (Arc::clone(&producer), c.to_vec(), world.late_catalog.clone());
        tokio::spawn(async move { (produce_all(&producer, &c).await, produce_all(&producer, &late).await) })
    };
    for mut inst in extra.drain(..) {
        terminate(&mut inst.child);
    }
    let (got_c, got_late) = producing.await.expect("producer task");
    track(&mut ends, &topics, c, &got_c);
    track(&mut ends, &topics, &world.late_catalog, &got_late);

    wait_for_offsets(&store, &group, &ends, &learning).await;
    wait_for_offsets(&store, &k.group_id("catalog"), &ends, &catalog).await;
    eventually("the outbox to drain", Duration::from_secs(60), || async { (outbox::pending(&store).await.ok()? == 0).then_some(()) }).await;
    check_progress(&store, &expected).await;
    let want: usize = expected.progress.values().flat_map(|c| c.values()).filter(|e| e.completed_at.is_some()).count();
    let (per_key, _) = completed_on_topic(&brokers, topics.topic(Domain::Derived), 4, want);
    assert_eq!(per_key.len(), want, "learner-courses with a course.completed");
    assert!(per_key.values().all(|ids| ids.len() == 1), "one course.completed id per learner and course");
    let g = d.group("progress");
    assert_eq!(g["lag"], 0, "lms groups: the group caught up: {g}");
    let mut first = first;
    terminate(&mut first.child);
}
