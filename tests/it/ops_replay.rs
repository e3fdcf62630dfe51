//! Operator tools at work on a real pipeline: `lms processor run catalog progress` (a
//! separate process, with `--listen`) takes the oracle stream on the durable broker
//! (correct watermarks) and PostgreSQL; `lms groups` shows its member, offsets and lag;
//! `lms replay` refuses while the group is live, then, once it is stopped, shows a plan,
//! changes nothing without `--yes`, and with it resets the store's and Kafka's offsets.
//! The processor restarted re-reads everything and the results are identical: progress
//! equal to the oracle, one `course.completed` id per learner and course.

use std::collections::BTreeMap;
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lms_bus::{BusMetrics, Producer, TopicPartition, TopicsFile};
use lms_events::{Domain, Event};
use lms_state::{offsets, outbox};
use serde_json::Value;
use tests::{create_topic, durable_kafka_brokers, eventually, free_port, init_logs, unique_prefix};

use crate::progress_oracle::{PARTITIONS, check_progress, completed_on_topic, oracle, wait_for_offsets, world};
use crate::support::{fresh_postgres_db, kafka, produce_all};

pub(crate) use tests::{Proc, lms_bin};

/// The environment of one pipeline deployment: broker, topic prefix, state store.
#[derive(Clone)]
pub(crate) struct Deployment {
    pub(crate) brokers: String,
    pub(crate) prefix: String,
    pub(crate) store: String,
}

impl Deployment {
    fn command(&self, args: &[&str]) -> Command {
        let mut c = Command::new(lms_bin());
        c.args(args)
            .env("LMS_KAFKA__BROKERS", &self.brokers)
            .env("LMS_KAFKA__TOPIC_PREFIX", &self.prefix)
            .env("LMS_STORE__URL", &self.store)
            .env("LMS_CONSUMER__MAX_BATCH_RECORDS", "200")
            .env("LMS_CONSUMER__MAX_BATCH_WAIT_MS", "50")
            // The shared durable broker can stall for seconds under load; members here only
            // leave gracefully, so a long session costs nothing and avoids flapping.
            .env("LMS_CONSUMER__SESSION_TIMEOUT_MS", "30000")
            .env("LMS_CONSUMER__STATISTICS_INTERVAL_MS", "500")
            .env("RUST_LOG", "info,librdkafka=warn");
        c
    }

    /// Runs an `lms` command to completion.
    pub(crate) fn run(&self, args: &[&str]) -> Output {
        let out = tokio::task::block_in_place(|| self.command(args).output()).expect("run lms");
        tracing::info!(?args, status = %out.status, stderr = %String::from_utf8_lossy(&out.stderr), "lms");
        out
    }

    /// Runs an `lms` command that must succeed and returns its stdout.
    pub(crate) fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(out.status.success(), "lms {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).expect("utf-8 output")
    }

    /// `lms groups <name> --json --trend-ms 0`: the group's status.
    pub(crate) fn group(&self, name: &str) -> Value {
        let v: Value = serde_json::from_str(&self.ok(&["groups", name, "--json", "--trend-ms", "0"])).expect("groups JSON");
        v[0].clone()
    }

    /// Starts `lms processor run <names>` in the background, logging to a file.
    pub(crate) fn spawn(&self, names: &[&str], extra: &[&str], tag: &str) -> Proc {
        let log = std::env::temp_dir().join(format!("{}{tag}.log", self.prefix));
        let log = std::fs::File::create(&log).expect("log file");
        let mut args = vec!["processor", "run"];
        args.extend(names);
        args.extend(extra);
        Proc(self.command(&args).stdout(Stdio::null()).stderr(log).spawn().expect("start lms processor run"))
    }
}

/// Stops a process with SIGTERM (graceful drain) and waits for it.
pub(crate) fn terminate(proc: &mut Proc) {
    let status = tokio::task::block_in_place(|| proc.terminate()).expect("SIGTERM and wait");
    assert!(status.success(), "the processor drains and exits cleanly on SIGTERM: {status}");
}

/// Members of a group as `lms groups` reports them (`None`: the broker cannot tell).
pub(crate) fn members(group: &Value) -> Option<usize> {
    group["members"].as_array().map(Vec::len)
}

pub(crate) fn track(
    ends: &mut BTreeMap<String, BTreeMap<i32, i64>>,
    topics: &lms_bus::TopicMap,
    events: &[Event],
    got: &crate::support::Produced,
) {
    for e in events {
        let (p, o) = got.at[&e.id];
        let end = ends.entry(topics.topic(e.domain()).to_owned()).or_default().entry(p).or_insert(0);
        *end = (*end).max(o + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_the_progress_group_gives_identical_results() {
    init_logs();
    let prefix = unique_prefix("ops-replay");
    let brokers = durable_kafka_brokers();
    let topics = TopicsFile::bundled().topic_map(&prefix);
    for (domain, partitions) in PARTITIONS {
        create_topic(&brokers, topics.topic(*domain), *partitions).await;
    }
    let url = fresh_postgres_db("ops_replay").await;
    let store = processors::open_store(&url, 4).await.expect("store");
    let d = Deployment { brokers: brokers.clone(), prefix: prefix.clone(), store: url.clone() };
    let k = kafka(&brokers, &prefix);
    let producer = Arc::new(Producer::new(&k, topics.clone(), BusMetrics::standalone(), "ops-producer").expect("producer"));
    let world = world(5, 30);
    let expected = oracle(&world);
    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();

    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut proc = d.spawn(&["catalog", "progress"], &["--listen", &listen], "first");
    let got = produce_all(&producer, &world.early_catalog).await;
    track(&mut ends, &topics, &world.early_catalog, &got);
    let catalog = vec![topics.topic(Domain::Catalog).to_owned()];
    wait_for_offsets(&store, &k.group_id("catalog"), &ends, &catalog).await;
    for events in [&world.activity, &world.late_catalog] {
        let got = produce_all(&producer, events).await;
        track(&mut ends, &topics, events, &got);
    }
    let learning = vec![topics.topic(Domain::Learning).to_owned(), topics.topic(Domain::Enrollment).to_owned()];
    let group = k.group_id("progress");
    wait_for_offsets(&store, &group, &ends, &learning).await;
    wait_for_offsets(&store, &k.group_id("catalog"), &ends, &catalog).await;
    eventually("the outbox to drain", Duration::from_secs(60), || async { (outbox::pending(&store).await.ok()? == 0).then_some(()) }).await;
    check_progress(&store, &expected).await;
    let total: i64 = learning.iter().flat_map(|t| ends[t].values()).sum();

    // The process serves its probes and metrics, with the lag gauge per partition.
    let http = reqwest::Client::new();
    for path in ["/healthz", "/livez", "/readyz"] {
        let r = http.get(format!("http://{listen}{path}")).send().await.expect(path);
        assert_eq!(r.status(), 200, "{path}");
    }
    let lag_line = format!("lms_bus_consumer_lag_records{{group=\"{group}\",partition=\"0\",topic=\"{}\"}}", learning[0]);
    eventually("the lag gauge of the progress group on /metrics", Duration::from_secs(30), || async {
        let m = http.get(format!("http://{listen}/metrics")).send().await.ok()?.text().await.ok()?;
        (m.contains(&lag_line) && m.contains("lms_ready 1")).then_some(())
    })
    .await;

    // `lms groups`: one live member owning every partition, nothing left to read.
    let g = eventually("lms groups to show the caught-up member", Duration::from_secs(30), || {
        let g = d.group("progress");
        async move { (g["lag"] == 0 && members(&g) != Some(0)).then_some(g) }
    })
    .await;
    assert_eq!(g["group"], group.as_str());
    assert_eq!(g["offsets_kept_in"], "store");
    let parts = g["partitions"].as_array().expect("partitions");
    assert_eq!(parts.len(), 6, "4 learning + 2 enrollment partitions");
    for p in parts {
        let tp = (p["topic"].as_str().expect("topic").to_owned(), p["partition"].as_i64().expect("p") as i32);
        let end = ends[&tp.0].get(&tp.1).copied().unwrap_or(0);
        assert_eq!((p["log_end"].as_i64(), p["stored"].as_i64(), p["lag"].as_i64()), (Some(end), Some(end), Some(0)), "{tp:?}");
    }
    match members(&g) {
        Some(n) => {
            assert_eq!(n, 1, "one member: {g}");
            assert!(parts.iter().all(|p| p["owner"].is_string()), "every partition has its owner: {g}");
        }
        None => assert!(g["describe_error"].as_str().is_some_and(|e| !e.is_empty()), "members unknown must say why: {g}"),
    }

    // A live group is not replayed; neither is one the broker cannot describe.
    let out = d.run(&["replay", "--group", "progress", "--to-earliest", "--yes"]);
    assert!(!out.status.success(), "replay of a live group must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("live member") || err.contains("broker cannot tell"), "{err}");

    terminate(&mut proc);
    // tansu 0.6.0 cannot describe groups (README): there the operator vouches that the
    // group is stopped, which it is now.
    let check: &[&str] = if members(&g).is_some() { &[] } else { &["--skip-member-check"] };
    let replay = |extra: &[&str]| {
        let mut args = vec!["replay", "--group", "progress", "--to-earliest"];
        args.extend(extra);
        args.extend(check);
        d.ok(&args)
    };

    // The plan first: nothing changes without --yes.
    let plan = replay(&[]);
    assert!(plan.contains(&format!("{total} record(s) to read again")) && plan.contains("Dry run"), "{plan}");
    let stored = offsets::load(&store, &group).await.expect("offsets");
    assert_eq!(stored.values().sum::<i64>(), total, "a dry run changes nothing");

    let applied: Value = serde_json::from_str(&replay(&["--yes", "--json"])).expect("plan JSON");
    assert_eq!(applied["rows"].as_array().map(Vec::len), Some(6));
    let stored = offsets::load(&store, &group).await.expect("offsets");
    assert_eq!(stored.len(), 6);
    assert!(stored.values().all(|o| *o == 0), "every stored offset back at the log start: {stored:?}");
    let committed = crate::support::committed(&brokers, &group, &learning[0], 4);
    assert!(committed.values().all(|o| *o == 0), "Kafka's committed offsets too: {committed:?}");
    let g = d.group("progress");
    assert_eq!(g["lag"].as_i64(), Some(total), "the whole log is lag again: {g}");

    // Replay: the same results.
    let mut proc = d.spawn(&["catalog", "progress"], &[], "replay");
    wait_for_offsets(&store, &group, &ends, &learning).await;
    eventually("the outbox to drain", Duration::from_secs(60), || async { (outbox::pending(&store).await.ok()? == 0).then_some(()) }).await;
    check_progress(&store, &expected).await;
    let want: usize = expected.progress.values().flat_map(|c| c.values()).filter(|e| e.completed_at.is_some()).count();
    let (per_key, _records) = completed_on_topic(&brokers, topics.topic(Domain::Derived), 4, want);
    assert_eq!(per_key.len(), want, "learner-courses with a course.completed");
    assert!(per_key.values().all(|ids| ids.len() == 1), "one course.completed id per learner and course after the replay");
    let stored: BTreeMap<TopicPartition, i64> = offsets::load(&store, &group).await.expect("offsets").into_iter().collect();
    assert_eq!(stored.values().sum::<i64>(), total);
    terminate(&mut proc);
}

/// The analytics group keeps its offsets in Kafka: `lms replay` resets them there, and
/// the sink's answers after re-reading everything are the same as before (and the
/// oracle's).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replaying_the_analytics_group_changes_no_answer() {
    use lms_analytics::AnalyticsStore;
    use tokio_util::sync::CancellationToken;

    use crate::analytics_common::{
        Oracle, answers, assert_same, committed_to_ends, create_sink_topics, fresh_clickhouse, generate, oracle_answers, produce, queries,
        spawn_sink,
    };

    init_logs();
    let stream = generate(4321, 2, 20);
    let brokers = durable_kafka_brokers();
    let prefix = unique_prefix("ops-replay-analytics");
    let k = kafka(&brokers, &prefix);
    create_sink_topics(&brokers, &k).await;
    let metrics = BusMetrics::standalone();
    let producer = crate::support::producer(&k, metrics.clone());
    let ends = produce(&producer, &stream.delivered).await;
    let store = Arc::new(fresh_clickhouse("opsreplay").await);
    let group = k.group_id("analytics");
    let q = queries(2);
    let expected = oracle_answers(&Oracle::new(&stream.distinct), &q);
    let caught_up = || async {
        let (b, g, e) = (brokers.clone(), group.clone(), ends.clone());
        tokio::task::spawn_blocking(move || committed_to_ends(&b, &g, &e)).await.expect("offsets").then_some(())
    };

    let shutdown = CancellationToken::new();
    let member = spawn_sink(&k, store.clone(), producer.clone(), metrics.clone(), shutdown.clone());
    eventually("the analytics group to commit every partition to its end", Duration::from_secs(120), caught_up).await;
    shutdown.cancel();
    member.join().await.expect("first member stops");
    let first = answers(store.as_ref() as &dyn AnalyticsStore, &q).await;
    assert_same("first pass", &first, &expected);

    let d = Deployment { brokers: brokers.clone(), prefix: prefix.clone(), store: "sqlite::memory:".into() };
    let g = d.group("analytics");
    assert_eq!((g["offsets_kept_in"].as_str(), g["lag"].as_i64()), (Some("kafka"), Some(0)), "{g}");
    let check: &[&str] = if members(&g).is_some() { &[] } else { &["--skip-member-check"] };
    let mut args = vec!["replay", "--group", "analytics", "--to-earliest", "--json"];
    args.extend(check);
    let plan: Value = serde_json::from_str(&d.ok(&args)).expect("plan");
    let replayed: i64 = plan["rows"].as_array().expect("rows").iter().map(|r| r["replayed"].as_i64().expect("replayed")).sum();
    assert_eq!(replayed as usize, stream.delivered.len(), "the plan re-reads every record");
    args.push("--yes");
    d.ok(&args);
    for (topic, parts) in &ends {
        let got = crate::support::committed(&brokers, &group, topic, crate::analytics_common::PARTITIONS);
        assert!(parts.keys().all(|p| got.get(p) == Some(&0)), "{topic} reset to 0: {got:?}");
    }
    assert_eq!(d.group("analytics")["lag"].as_i64(), Some(stream.delivered.len() as i64));

    let shutdown = CancellationToken::new();
    let member = spawn_sink(&k, store.clone(), producer.clone(), metrics.clone(), shutdown.clone());
    eventually("the replay to commit every partition to its end", Duration::from_secs(120), caught_up).await;
    shutdown.cancel();
    let report = member.join().await.expect("replaying member stops");
    assert_eq!(report.records as usize, stream.delivered.len(), "the replay processed every record again");
    assert_same("after lms replay", &answers(store.as_ref() as &dyn AnalyticsStore, &q).await, &first);
}
