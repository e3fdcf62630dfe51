//! Two `lms processor run catalog progress` processes share the groups over PostgreSQL
//! while about 200 000 events flow; one of them is killed with SIGKILL at random moments
//! and restarted, again and again. The final progress must equal the oracle, and
//! `course.completed` must exist exactly once per completed learner and course.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lms_bus::{BusMetrics, Producer, TopicsFile};
use lms_events::{Domain, Event};
use lms_state::{offsets, outbox};
use rand::{Rng, SeedableRng};
use tests::{OwnBroker, Proc, create_topics, eventually, init_logs, spawn_lms, unique_prefix};

use crate::progress_oracle::{PARTITIONS, check_progress, completed_on_topic, oracle, world};
use crate::support::{fresh_postgres_db, kafka, produce_all};

const KILLS: usize = 5;

/// A processor process; dropping it (the test's end, or a panic) kills it.
fn spawn(brokers: &str, prefix: &str, store: &str, n: usize) -> Proc {
    let env = [
        ("LMS_KAFKA__BROKERS", brokers.to_owned()),
        ("LMS_KAFKA__TOPIC_PREFIX", prefix.to_owned()),
        ("LMS_STORE__URL", store.to_owned()),
        ("LMS_CONSUMER__MAX_BATCH_RECORDS", "500".to_owned()),
        ("LMS_CONSUMER__MAX_BATCH_WAIT_MS", "50".to_owned()),
        ("LMS_CONSUMER__SESSION_TIMEOUT_MS", "6000".to_owned()),
    ];
    spawn_lms(&["processor", "run", "catalog", "progress"], &env, &format!("{prefix}processor-{n}.log"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_survives_sigkill_of_instances() {
    init_logs();
    let prefix = unique_prefix("progress-kill");
    // A memory-engine broker of its own: the shared one gets slower as it fills (see the
    // README's soak figures), and late in the suite it already holds every earlier test's
    // records. On it this run took 272–600 s depending on where in the suite it ran (a CI run
    // on 7 December hit nextest's 600 s limit); on a fresh broker it depends only on itself.
    let broker = OwnBroker::start(false).await;
    let brokers = broker.brokers();
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let partitions: Vec<(&str, i32)> = PARTITIONS.iter().map(|(d, p)| (topics.topic(*d), *p)).collect();
    create_topics(&brokers, &partitions).await.expect("create the topics");
    let url = fresh_postgres_db("progress_kill").await;
    let store = processors::open_store(&url, 4).await.expect("store");

    // tansu's memory engine loses the rest of a stored record batch when a consumer
    // resumes inside it (see tansu_probe.rs): one record per batch keeps every resume
    // point on a batch boundary, so this test checks the processors, not tansu.
    let mut k = kafka(&brokers, &prefix);
    k.properties.insert("batch.num.messages".into(), "1".into());
    // One record per produce request is slow on a loaded machine (the whole suite runs beside
    // it): the tail of a 10 000-record chunk waited more than the default 30 s delivery
    // timeout in a CI run. This test is about the processors, so the producer may wait.
    k.delivery_timeout_ms = 300_000;
    let producer = Arc::new(Producer::new(&k, topics.clone(), BusMetrics::standalone(), "kill-producer").expect("producer"));

    let world = world(11, 4100);
    let expected = oracle(&world);
    let total = world.early_catalog.len() + world.activity.len() + world.late_catalog.len();
    assert!(total >= 200_000, "the run has at least 200 000 events, not {total}");

    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    let track = |ends: &mut BTreeMap<String, BTreeMap<i32, i64>>, events: &[Event], got: crate::support::Produced| {
        for e in events {
            let (p, o) = got.at[&e.id];
            let end = ends.entry(topics.topic(e.domain()).to_owned()).or_default().entry(p).or_insert(0);
            *end = (*end).max(o + 1);
        }
    };
    let mut procs = vec![spawn(&brokers, &prefix, &url, 0), spawn(&brokers, &prefix, &url, 1)];
    track(&mut ends, &world.early_catalog, produce_all(&producer, &world.early_catalog).await);
    let g = |name: &str| kafka(&brokers, &prefix).group_id(name);
    let catalog_topic = vec![topics.topic(Domain::Catalog).to_owned()];
    crate::progress_oracle::wait_for_offsets(&store, &g("catalog"), &ends, &catalog_topic).await;

    // Produce while killing: the kills land before, during and after the backlog.
    let producing = {
        let producer = Arc::clone(&producer);
        let activity = world.activity.clone();
        let late = world.late_catalog.clone();
        tokio::spawn(async move {
            let a = produce_all(&producer, &activity).await;
            let l = produce_all(&producer, &late).await;
            (a, l)
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let started = Instant::now();
    let progress_group = g("progress");
    let step = world.activity.len() as i64 / (KILLS as i64 + 2);
    for kill in 0..KILLS {
        // Kill points: when the group's stored offsets have passed a random mark in the
        // kill's share of the stream, so kills land all along the run.
        let mark = step * (kill as i64 + 1) + rng.random_range(0..step / 2);
        eventually(&format!("progress to store {mark} offsets before kill {kill}"), Duration::from_secs(180), || async {
            let stored: i64 = offsets::load(&store, &progress_group).await.ok()?.values().sum();
            (stored >= mark).then_some(())
        })
        .await;
        let victim = rng.random_range(0..procs.len());
        procs[victim].kill().expect("SIGKILL");
        tracing::info!(kill, victim, mark, elapsed_ms = started.elapsed().as_millis() as u64, "killed a processor with SIGKILL");
        procs[victim] = spawn(&brokers, &prefix, &url, 2 + kill);
    }
    let (a, l) = producing.await.expect("producer task");
    track(&mut ends, &world.activity, a);
    track(&mut ends, &world.late_catalog, l);

    let learning = vec![topics.topic(Domain::Learning).to_owned(), topics.topic(Domain::Enrollment).to_owned()];
    crate::progress_oracle::wait_for_offsets(&store, &g("progress"), &ends, &learning).await;
    crate::progress_oracle::wait_for_offsets(&store, &g("catalog"), &ends, &catalog_topic).await;
    eventually("the outbox to drain", Duration::from_secs(120), || async { (outbox::pending(&store).await.ok()? == 0).then_some(()) })
        .await;
    check_progress(&store, &expected).await;

    let want: usize = expected.progress.values().flat_map(|c| c.values()).filter(|e| e.completed_at.is_some()).count();
    let (per_key, records) = completed_on_topic(&brokers, topics.topic(Domain::Derived), 4, want);
    assert_eq!(per_key.len(), want, "learner-courses with a course.completed");
    let doubled: Vec<_> = per_key.iter().filter(|(_, ids)| ids.len() != 1).collect();
    assert!(doubled.is_empty(), "course.completed events with more than one id: {doubled:?}");
    // A relay killed between the broker's acknowledgement and its delete sends a record
    // again with the same id (consumers dedupe by id): report it, it is not a new event.
    tracing::info!(records, distinct = want, "course.completed records on the derived topic");
    let stored = offsets::load(&store, &g("progress")).await.expect("offsets");
    assert!(!stored.is_empty());
    // SIGTERM would be the graceful path; this test only needs the processors gone, before
    // their broker: dropping them kills them.
    drop(procs);
}
