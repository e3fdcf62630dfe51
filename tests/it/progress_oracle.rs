//! The catalog, progress and achievements processors, on PostgreSQL and on SQLite, fed
//! through the real broker with a generated stream (two tenants, versioned courses,
//! duplicates, shuffled order, courses published after their lesson events): every
//! learner's progress and achievements must equal a plain computation over the distinct
//! events, and `course.completed` must appear exactly once per learner-course that was
//! completed at some quiet moment. Versions that arrive after the activity add a lesson
//! (taking completions back) and remove one (completing learners without a new event).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as Days, TimeZone, Utc};
use lms_bus::{BusMetrics, Producer, TopicsFile};
use lms_events::data::{
    AssessmentGraded, CoursePublished, EnrollmentCreated, EnrollmentDropped, EnrollmentSource, LessonRef, Module, VideoProgressed,
};
use lms_events::{Domain, Event, EventData};
use lms_state::{Store, offsets, outbox};
use processors::achievements::rules::Rules;
use processors::runtime::{self, Plumbing};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, TopicPartitionList};
use tests::{create_topic, eventually, init_logs, kafka_brokers, unique_prefix};

use crate::support::{fast_consumer, kafka, produce_all};

pub(crate) use tests::oracle::progress::ACHIEVEMENT_RULES as RULES;

pub(crate) const PARTITIONS: &[(Domain, i32)] =
    &[(Domain::Learning, 4), (Domain::Enrollment, 2), (Domain::Catalog, 2), (Domain::Derived, 4), (Domain::DeadLetter, 1)];

/// The generated stream, in the three phases it is produced in.
pub(crate) struct World {
    /// Versioned courses, published (out of version order) before any activity.
    pub(crate) early_catalog: Vec<Event>,
    /// Enrollments and learning events, shuffled, with duplicates.
    pub(crate) activity: Vec<Event>,
    /// Courses published only after their lesson events.
    pub(crate) late_catalog: Vec<Event>,
    /// New versions of courses that had activity: sent after it was processed (only by
    /// [`run_oracle`]; see [`oracle_with_late_versions`]).
    pub(crate) late_versions: Vec<Event>,
}

fn ev(tenant: &str, id: String, time: DateTime<Utc>, data: EventData) -> Event {
    let mut e = Event::derived(tenant, "oracle-test", time, data);
    e.id = id;
    e
}

fn publish(tenant: &str, course: &str, version: u32, lessons: &[&str], time: DateTime<Utc>) -> Event {
    let data = EventData::CoursePublished(CoursePublished {
        course_id: course.to_owned(),
        title: format!("{course} v{version}"),
        version,
        modules: vec![Module { module_id: "m1".into(), lessons: lessons.iter().map(|l| (*l).to_owned()).collect() }],
    });
    ev(tenant, format!("{tenant}-{course}-v{version}"), time, data)
}

pub(crate) fn world(seed: u64, learners_per_tenant: usize) -> World {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Utc.with_ymd_and_hms(2026, 10, 1, 6, 0, 0).single().expect("time");
    let mut early = Vec::new();
    let mut late = Vec::new();
    let mut versions = Vec::new();
    let mut activity = Vec::new();
    let mut n = 0u64;
    let mut id = |tenant: &str| {
        n += 1;
        format!("{tenant}-e{n}")
    };
    for tenant in ["acme", "globex"] {
        // c0: v2 wins over v1 (published in the wrong order, v1 twice); c1: one version;
        // c2 and c3: published after the activity. After the activity too: c1 v2 adds l3
        // (learners who completed v1 without l3 are complete no more), c0 v3 drops l5
        // (learners who had every lesson but l5 become complete).
        early.push(publish(tenant, "c0", 2, &["l0", "l1", "l2", "l3", "l5"], t0 - Days::days(3)));
        early.push(publish(tenant, "c0", 1, &["l0", "l1", "l2", "l3", "l4"], t0 - Days::days(5)));
        early.push(publish(tenant, "c0", 1, &["l0", "l1", "l2", "l3", "l4"], t0 - Days::days(5)));
        early.push(publish(tenant, "c1", 1, &["l0", "l1", "l2"], t0 - Days::days(4)));
        late.push(publish(tenant, "c2", 1, &["l0", "l1", "l2", "l3"], t0 - Days::days(2)));
        late.push(publish(tenant, "c3", 1, &["l0", "l1"], t0 - Days::days(2)));
        versions.push(publish(tenant, "c1", 2, &["l0", "l1", "l2", "l3"], t0 - Days::days(4)));
        versions.push(publish(tenant, "c0", 3, &["l0", "l1", "l2", "l3", "l4"], t0 - Days::days(3)));
        let lessons: HashMap<&str, Vec<&str>> = HashMap::from([
            ("c0", vec!["l0", "l1", "l2", "l3", "l4", "l5"]),
            ("c1", vec!["l0", "l1", "l2", "l3"]),
            ("c2", vec!["l0", "l1", "l2", "l3"]),
            ("c3", vec!["l0", "l1"]),
        ]);
        for l in 0..learners_per_tenant {
            let learner = format!("learner-{l}");
            let mut courses = vec!["c0", "c1", "c2", "c3"];
            courses.shuffle(&mut rng);
            courses.truncate(rng.random_range(1..=4));
            for course in courses {
                let start = t0 + Days::hours(rng.random_range(0..72));
                let enrolled = rng.random_bool(0.8);
                if enrolled {
                    let data = EventData::EnrollmentCreated(EnrollmentCreated {
                        learner_id: learner.clone(),
                        course_id: course.into(),
                        source: EnrollmentSource::SelfService,
                    });
                    activity.push(ev(tenant, id(tenant), start, data));
                    if rng.random_bool(0.1) {
                        let data =
                            EventData::EnrollmentDropped(EnrollmentDropped { learner_id: learner.clone(), course_id: course.into() });
                        activity.push(ev(tenant, id(tenant), start + Days::days(2), data));
                    }
                }
                let all = &lessons[course];
                let done = if rng.random_bool(0.45) { all.len() } else { rng.random_range(0..all.len()) };
                let mut t = start + Days::minutes(10);
                for lesson in all.iter().take(done) {
                    let r = LessonRef { learner_id: learner.clone(), course_id: course.into(), lesson_id: (*lesson).into() };
                    activity.push(ev(tenant, id(tenant), t, EventData::LessonStarted(r.clone())));
                    let v = VideoProgressed {
                        learner_id: learner.clone(),
                        course_id: course.into(),
                        lesson_id: (*lesson).into(),
                        position_s: 100.0,
                        duration_s: 600.0,
                        watched_s: rng.random_range(0.0..420.0),
                    };
                    activity.push(ev(tenant, id(tenant), t + Days::minutes(3), EventData::VideoProgressed(v)));
                    activity.push(ev(tenant, id(tenant), t + Days::minutes(7), EventData::LessonCompleted(r.clone())));
                    if rng.random_bool(0.15) {
                        // Completed again later: it counts once, from the first time.
                        activity.push(ev(tenant, id(tenant), t + Days::hours(30), EventData::LessonCompleted(r)));
                    }
                    // Mostly one lesson a day, sometimes two days apart: streaks of varying length.
                    t += Days::hours(if rng.random_bool(0.8) { 24 } else { 48 }) + Days::minutes(rng.random_range(0..90));
                }
                if rng.random_bool(0.5) {
                    let max = 20.0;
                    let score = if rng.random_bool(0.3) { max } else { rng.random_range(0..20) as f64 };
                    let data = EventData::AssessmentGraded(AssessmentGraded {
                        learner_id: learner.clone(),
                        course_id: course.into(),
                        assessment_id: format!("{course}-quiz"),
                        score,
                        max_score: max,
                        attempt: 1,
                    });
                    activity.push(ev(tenant, id(tenant), t, data));
                }
            }
        }
    }
    let duplicates: Vec<Event> = activity.iter().filter(|_| rng.random_bool(0.1)).cloned().collect();
    activity.extend(duplicates);
    activity.shuffle(&mut rng);
    early.shuffle(&mut rng);
    World { early_catalog: early, activity, late_catalog: late, late_versions: versions }
}

pub(crate) use tests::oracle::progress::{Expected, Oracle};

/// The oracle over the world's catalog and activity, without the late versions.
pub(crate) fn oracle(world: &World) -> Oracle {
    Oracle::new(world.early_catalog.iter().chain(&world.activity).chain(&world.late_catalog))
}

/// The oracle of [`run_oracle`]: the catalog and the activity, then (once every processor
/// caught up) the late versions.
pub(crate) fn oracle_with_late_versions(world: &World) -> Oracle {
    Oracle::phased(&[
        world.early_catalog.iter().chain(&world.activity).chain(&world.late_catalog).collect(),
        world.late_versions.iter().collect(),
    ])
}

/// Every learner's progress as read from the store equals the oracle's.
pub(crate) async fn check_progress(store: &Store, expected: &Oracle) {
    for ((tenant, learner), courses) in &expected.progress {
        let got = processors::progress::read(store, tenant, learner).await.expect("read progress");
        let got: BTreeMap<String, Expected> = got
            .into_iter()
            .map(|v| {
                let e = Expected {
                    status: v.status.as_str(),
                    lessons_completed: v.lessons_completed,
                    lessons_total: v.lessons_total,
                    percent_complete: v.percent_complete,
                    time_spent_ms: (v.time_spent_s * 1000.0).round() as i64,
                    last_activity_at: v.last_activity_at,
                    completed_at: v.completed_at,
                };
                (v.course_id, e)
            })
            .collect();
        assert_eq!(&got, courses, "progress of {tenant}/{learner}");
    }
}

pub(crate) async fn wait_for_offsets(store: &Store, group: &str, topic_ends: &BTreeMap<String, BTreeMap<i32, i64>>, topics: &[String]) {
    eventually(&format!("group {group} to store the end offsets of {topics:?}"), Duration::from_secs(120), || async {
        let stored = offsets::load(store, group).await.ok()?;
        let all = topics
            .iter()
            .all(|t| topic_ends.get(t).into_iter().flatten().all(|(p, end)| stored.get(&lms_bus::TopicPartition::new(t, *p)) == Some(end)));
        all.then_some(())
    })
    .await;
}

/// (tenant, learner, course) → the distinct `course.completed` ids seen for it.
pub(crate) type CompletedIds = BTreeMap<(String, String, String), BTreeSet<String>>;

/// Distinct `course.completed` ids on the derived topic, and how many records carried them.
pub(crate) fn completed_on_topic(brokers: &str, topic: &str, partitions: i32, expect: usize) -> (CompletedIds, usize) {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", "oracle-reader")
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    for p in 0..partitions {
        tpl.add_partition_offset(topic, p, rdkafka::Offset::Beginning).expect("assign");
    }
    consumer.assign(&tpl).expect("assign");
    let mut per_key: BTreeMap<(String, String, String), BTreeSet<String>> = BTreeMap::new();
    let mut records = 0;
    let mut take = |m: &rdkafka::message::BorrowedMessage<'_>| {
        let e = lms_events::decode(m.payload().unwrap_or_default()).expect("derived events decode");
        if let EventData::CourseCompleted(d) = &e.data {
            records += 1;
            per_key.entry((e.tenant.clone(), d.learner_id.clone(), d.course_id.clone())).or_default().insert(e.id.clone());
        }
        per_key.len()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut seen = 0;
    while seen < expect && std::time::Instant::now() < deadline {
        if let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) {
            seen = take(&m);
        }
    }
    // Read on until the topic is quiet, so that a duplicate right behind is seen too.
    while let Some(r) = consumer.poll(Duration::from_millis(500)) {
        if let Ok(m) = r {
            take(&m);
        }
    }
    (per_key, records)
}

pub async fn run_oracle(store_url: &str, test: &str) {
    init_logs();
    let prefix = unique_prefix(test);
    let brokers = kafka_brokers();
    let kafka = kafka(&brokers, &prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    for (domain, partitions) in PARTITIONS {
        create_topic(&brokers, topics.topic(*domain), *partitions).await;
    }
    let store = processors::open_store(store_url, 8).await.expect("store");
    let metrics = BusMetrics::standalone();
    let producer = Arc::new(Producer::new(&kafka, topics.clone(), metrics.clone(), "oracle-producer").expect("producer"));
    let (mut ctx, relay) = runtime::context(store.clone(), Arc::clone(&producer));
    ctx.extensions.insert(Arc::new(Rules::parse(RULES).expect("rules")));
    // Small batches: late events then land in later batches than what they correct.
    let consumer = lms_bus::ConsumerConfig { max_batch_records: 50, ..fast_consumer() };
    let plumbing = Plumbing { kafka: kafka.clone(), consumer, topics: topics.clone(), producer: Arc::clone(&producer), metrics };
    let names = ["catalog", "progress", "achievements"].map(|n| processors::lookup(n).expect("registered"));
    let running = runtime::start(&plumbing, &ctx, relay, &names, 1).expect("start");

    let world = world(7, 60);
    let expected = oracle_with_late_versions(&world);
    let mut ends: BTreeMap<String, BTreeMap<i32, i64>> = BTreeMap::new();
    // Record the ends per topic from the produce results.
    let produce_tracked = async |events: &[Event], ends: &mut BTreeMap<String, BTreeMap<i32, i64>>| {
        let got = produce_all(&producer, events).await;
        for e in events {
            let (p, o) = got.at[&e.id];
            let end = ends.entry(topics.topic(e.domain()).to_owned()).or_default().entry(p).or_insert(0);
            *end = (*end).max(o + 1);
        }
    };
    produce_tracked(&world.early_catalog, &mut ends).await;
    let catalog_topic = topics.topic(Domain::Catalog).to_owned();
    wait_for_offsets(&store, &kafka.group_id("catalog"), &ends, std::slice::from_ref(&catalog_topic)).await;
    produce_tracked(&world.activity, &mut ends).await;
    produce_tracked(&world.late_catalog, &mut ends).await;
    let learning = [topics.topic(Domain::Learning).to_owned(), topics.topic(Domain::Enrollment).to_owned()];
    wait_for_offsets(&store, &kafka.group_id("progress"), &ends, &learning).await;
    wait_for_offsets(&store, &kafka.group_id("catalog"), &ends, std::slice::from_ref(&catalog_topic)).await;
    eventually("the outbox to drain", Duration::from_secs(60), || async { (outbox::pending(&store).await.ok()? == 0).then_some(()) }).await;
    // The late versions: after the activity was processed, so what they take back was given.
    produce_tracked(&world.late_versions, &mut ends).await;
    wait_for_offsets(&store, &kafka.group_id("catalog"), &ends, std::slice::from_ref(&catalog_topic)).await;
    eventually("the outbox to drain", Duration::from_secs(60), || async { (outbox::pending(&store).await.ok()? == 0).then_some(()) }).await;
    assert!(!expected.lowered.is_empty(), "a late version took completions back");

    // Progress: final as soon as its groups are caught up.
    check_progress(&store, &expected).await;
    let learners: usize = expected.progress.len();
    let completed: usize = expected.progress.values().flat_map(|c| c.values()).filter(|e| e.completed_at.is_some()).count();
    assert!(completed > 20 && learners >= 100, "the stream exercises completions: {completed} of {learners} learners");

    // Achievements follow the derived topic: poll until they match.
    let mismatch = tests::poll_until(Duration::from_secs(60), || async {
        let mut wrong = Vec::new();
        for ((tenant, learner), want) in &expected.achievements {
            let got: BTreeSet<(String, String, DateTime<Utc>)> = processors::achievements::read(&store, tenant, learner)
                .await
                .ok()?
                .into_iter()
                .map(|a| (a.achievement_id, a.course_id.unwrap_or_default(), a.unlocked_at))
                .collect();
            if &got != want {
                wrong.push(format!("{tenant}/{learner}: got {got:?}, want {want:?}"));
            }
        }
        wrong.is_empty().then_some(())
    })
    .await;
    if mismatch.is_none() {
        let mut wrong = Vec::new();
        for ((tenant, learner), want) in &expected.achievements {
            let got: BTreeSet<(String, String, DateTime<Utc>)> = processors::achievements::read(&store, tenant, learner)
                .await
                .expect("read")
                .into_iter()
                .map(|a| (a.achievement_id, a.course_id.unwrap_or_default(), a.unlocked_at))
                .collect();
            if &got != want {
                wrong.push(format!("{tenant}/{learner}: got {got:?}, want {want:?}"));
            }
        }
        panic!("achievements differ from the oracle for {} learners:\n{}", wrong.len(), wrong.join("\n"));
    }

    // course.completed: exactly once per learner-course completed at a quiet moment (also
    // when a late version took it back), none for others.
    let want: BTreeSet<(String, String, String)> = expected.completed_once.keys().cloned().collect();
    let taken_back = want.iter().filter(|(t, l, c)| expected.progress[&(t.clone(), l.clone())][c].completed_at.is_none()).count();
    assert!(taken_back > 0, "some completions were taken back by a late version");
    let derived = topics.topic(Domain::Derived).to_owned();
    let (per_key, records) = completed_on_topic(&brokers, &derived, 4, want.len());
    assert_eq!(per_key.keys().cloned().collect::<BTreeSet<_>>(), want, "course.completed keys");
    assert!(per_key.values().all(|ids| ids.len() == 1), "one course.completed event per learner and course");
    assert_eq!(records, want.len(), "course.completed records: one per learner and course");

    running.stop().await.expect("clean stop");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_oracle_on_sqlite() {
    let dir = std::env::temp_dir().join(unique_prefix("progress-sqlite"));
    std::fs::create_dir_all(&dir).expect("dir");
    run_oracle(&format!("sqlite://{}", dir.join("state.db").display()), "progress-oracle-sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn progress_oracle_on_postgres() {
    let url = crate::support::fresh_postgres_db("progress_oracle").await;
    run_oracle(&url, "progress-oracle-postgres").await;
}
