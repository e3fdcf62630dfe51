//! The compacted catalog topic keeps every course (issue 24, part 2).
//!
//! - `a_catalog_rebuilt_from_the_compacted_topic_equals_the_full_log`: two tenants sharing
//!   course ids, retirements (one before its course), a late lower version, an equal-version
//!   republish with other content and a redelivered publication, among learners' enrollment
//!   and lesson events. The catalog and progress stages run on fresh PostgreSQL databases,
//!   one fed the full log, one the catalog as compaction leaves it ([`compact`]) plus the
//!   same learner events: catalog rows, retirements, every learner's progress and the
//!   recorded completions are equal. Under the old keys (course id alone) they are not.
//! - `rekey_catalog_gives_an_old_topic_keys_that_survive_compaction`: a catalog topic written
//!   with the old keys on the real broker, re-keyed by `lms topics rekey-catalog`: read back
//!   and compacted it holds every course of both tenants at its highest version, and the
//!   retirements; a second run re-produces nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::{DateTime, Duration as Span, TimeZone, Utc};
use lms_bus::admin::Admin;
use lms_bus::admin::rekey::{LogRecord, compact};
use lms_bus::{BusMetrics, OnQueueFull, OutRecord, Producer, Record, TopicsFile};
use lms_events::data::{CoursePublished, CourseRetired, EnrollmentCreated, EnrollmentSource, LessonRef, Module};
use lms_events::{Domain, Event, EventData, codec};
use lms_state::Store;
use processors::Stage;
use processors::progress::Progress;
use processors::progress::catalog::Catalog;
use processors::progress::model::ProgressView;
use sqlx::Row as _;
use tests::{create_topic, durable_kafka_brokers, init_logs, unique_prefix};

use crate::support::{fresh_postgres_db, kafka};

const TENANTS: [&str; 2] = ["acme", "globex"];
const COURSES: [&str; 4] = ["c1", "c2", "c3", "c4"];
const LEARNERS: usize = 6;

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 9, 1, 8, 0, 0).single().expect("time")
}

fn event(tenant: &str, id: String, time: DateTime<Utc>, data: EventData) -> Event {
    Event::derived(tenant, "compaction-test", time, data).with_id(id)
}

fn published(tenant: &str, course: &str, version: u32, lessons: &[&str], title: &str, day: i64) -> Event {
    let data = EventData::CoursePublished(CoursePublished {
        course_id: course.to_owned(),
        title: title.to_owned(),
        version,
        modules: vec![Module { module_id: "m1".into(), lessons: lessons.iter().map(|l| (*l).to_owned()).collect() }],
    });
    event(tenant, format!("{tenant}-{course}-v{version}-{title}"), t0() - Span::days(day), data)
}

fn retired(tenant: &str, course: &str, day: i64) -> Event {
    let data = EventData::CourseRetired(CourseRetired { course_id: course.to_owned() });
    event(tenant, format!("{tenant}-{course}-retired"), t0() + Span::days(day), data)
}

/// The catalog topic in offset order: what is produced before the learners' activity, then
/// what arrives after it.
fn catalog_log() -> (Vec<Event>, Vec<Event>) {
    let acme_c1_v1 = published("acme", "c1", 1, &["l1", "l2", "l3"], "c1", 20);
    let early = vec![
        published("acme", "c1", 2, &["l1", "l2", "l3", "l4"], "c1", 10),
        published("globex", "c1", 1, &["l1", "l2"], "c1", 20),
        published("acme", "c2", 1, &["l1", "l2"], "c2", 20),
        // A late lower version: v2 above must stay.
        acme_c1_v1.clone(),
        published("globex", "c2", 2, &["l1", "l2", "l3"], "c2", 10),
        retired("acme", "c2", 2),
        // The same version again with other content: the catalog orders equal versions by
        // content, and compaction must keep both for it to do so.
        published("globex", "c2", 2, &["l1", "l2"], "c2 (fixed)", 9),
        published("globex", "c3", 3, &["l1"], "c3", 10),
        // A retirement before its course's publication.
        retired("globex", "c4", 1),
        published("globex", "c4", 1, &["l1", "l2"], "c4", 20),
        // Redelivered.
        acme_c1_v1,
        published("globex", "c3", 2, &["l1", "l2"], "c3", 20),
        published("acme", "c4", 1, &["l1", "l2", "l3"], "c4", 20),
    ];
    let late = vec![
        // Published after its lesson events.
        published("acme", "c3", 1, &["l1", "l2"], "c3", 20),
        // A new version after the activity (a learner who had completed it no longer has).
        published("globex", "c1", 2, &["l1", "l2", "l3"], "c1", 5),
    ];
    (early, late)
}

/// Enrollments and lesson completions of every learner of both tenants, in time order:
/// learner `i` completes the first `(i + course) % 5` lessons of each course.
fn activity() -> Vec<Event> {
    let mut out = Vec::new();
    for tenant in TENANTS {
        for i in 0..LEARNERS {
            let learner = format!("learner-{i}");
            for (c, course) in COURSES.iter().enumerate() {
                let start = t0() + Span::hours((i * 10 + c) as i64);
                let data = EventData::EnrollmentCreated(EnrollmentCreated {
                    learner_id: learner.clone(),
                    course_id: (*course).to_owned(),
                    source: EnrollmentSource::SelfService,
                });
                out.push(event(tenant, format!("{tenant}-{learner}-{course}-enrolled"), start, data));
                for l in 1..=((i + c) % 5) {
                    let r = LessonRef { learner_id: learner.clone(), course_id: (*course).to_owned(), lesson_id: format!("l{l}") };
                    let at = start + Span::minutes(l as i64 * 20);
                    out.push(event(tenant, format!("{tenant}-{learner}-{course}-l{l}-started"), at, EventData::LessonStarted(r.clone())));
                    out.push(event(
                        tenant,
                        format!("{tenant}-{learner}-{course}-l{l}-done"),
                        at + Span::minutes(9),
                        EventData::LessonCompleted(r),
                    ));
                }
            }
        }
    }
    out.sort_by_key(|e| e.time);
    out
}

/// The compacted view of `log` under `key`: the surviving events in offset order, split at
/// `early` (the offset of the first late record).
fn compacted(log: &[Event], early: usize, key: impl Fn(&Event) -> String) -> (Vec<Event>, Vec<Event>) {
    let survivors = compact(log.iter().enumerate().map(|(offset, e)| (key(e), Some(offset))));
    let (a, b): (Vec<_>, Vec<_>) = survivors.into_iter().map(|(_, offset)| offset).partition(|o| *o < early);
    (a.into_iter().map(|o| log[o].clone()).collect(), b.into_iter().map(|o| log[o].clone()).collect())
}

fn record(event: &Event, offset: i64) -> Record {
    Record::for_test(event.clone(), "catalog-compaction", offset)
}

/// Applies `events` through `stage` in batches of `size`, each in its own transaction.
async fn apply(store: &Store, stage: &dyn Stage, events: &[Event], size: usize) {
    for (b, batch) in events.chunks(size).enumerate() {
        let records: Vec<Record> = batch.iter().enumerate().map(|(i, e)| record(e, (b * size + i) as i64)).collect();
        let mut tx = store.begin().await.expect("begin");
        stage.apply(store, &mut tx, &records).await.expect("apply");
        tx.commit().await.expect("commit");
    }
}

/// Everything a rebuild must reproduce.
#[derive(Debug, PartialEq)]
struct State {
    catalog: Vec<(String, String, i64, String, String, i64)>,
    retirements: Vec<(String, String, i64)>,
    progress: BTreeMap<(String, String), Vec<ProgressView>>,
    completions: Vec<(String, String, String, i64, i64)>,
}

/// Runs the catalog before the activity, the activity, then the late catalog, on a fresh
/// database, and reads the state back.
async fn rebuild(test: &str, early: &[Event], activity: &[Event], late: &[Event]) -> State {
    let store = processors::open_store(&fresh_postgres_db(test).await, 4).await.expect("store");
    apply(&store, &Catalog, early, 3).await;
    apply(&store, &Progress, activity, 25).await;
    apply(&store, &Catalog, late, 1).await;
    let catalog =
        sqlx::query("SELECT tenant, course_id, version, title, lessons, published_at_us FROM catalog_courses ORDER BY tenant, course_id")
            .fetch_all(store.pool())
            .await
            .expect("catalog")
            .iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5)))
            .collect();
    let retirements = sqlx::query("SELECT tenant, course_id, retired_at_us FROM catalog_retirements ORDER BY tenant, course_id")
        .fetch_all(store.pool())
        .await
        .expect("retirements")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let completions = sqlx::query(
        "SELECT tenant, learner_id, course_id, completed_at_us, course_version FROM course_completions ORDER BY tenant, learner_id, course_id",
    )
    .fetch_all(store.pool())
    .await
    .expect("completions")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect();
    let mut progress = BTreeMap::new();
    for tenant in TENANTS {
        for i in 0..LEARNERS {
            let learner = format!("learner-{i}");
            let views = processors::progress::read(&store, tenant, &learner).await.expect("progress");
            progress.insert((tenant.to_owned(), learner), views);
        }
    }
    store.close().await;
    State { catalog, retirements, progress, completions }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_catalog_rebuilt_from_the_compacted_topic_equals_the_full_log() {
    init_logs();
    let (early, late) = catalog_log();
    let log: Vec<Event> = early.iter().chain(&late).cloned().collect();
    let activity = activity();
    let full = rebuild("compaction_full", &early, &activity, &late).await;

    // What the full log gives: the highest version per tenant and course, equal versions
    // by content, both retirements, and completions to compare.
    let versions: BTreeMap<(&str, &str), i64> = full.catalog.iter().map(|c| ((c.0.as_str(), c.1.as_str()), c.2)).collect();
    let want = BTreeMap::from([
        (("acme", "c1"), 2),
        (("acme", "c2"), 1),
        (("acme", "c3"), 1),
        (("acme", "c4"), 1),
        (("globex", "c1"), 2),
        (("globex", "c2"), 2),
        (("globex", "c3"), 3),
        (("globex", "c4"), 1),
    ]);
    assert_eq!(versions, want, "the full log's catalog");
    let globex_c2 = full.catalog.iter().find(|c| c.0 == "globex" && c.1 == "c2").expect("globex c2");
    assert_eq!(globex_c2.4, r#"["l1","l2"]"#, "equal versions: the greater content wins");
    let retired: Vec<(&str, &str)> = full.retirements.iter().map(|r| (r.0.as_str(), r.1.as_str())).collect();
    assert_eq!(retired, [("acme", "c2"), ("globex", "c4")]);
    assert!(full.completions.len() >= 10, "the stream completes courses: {:?}", full.completions);

    // New keys: compaction removes only the redelivered publication, and the rebuild is equal.
    let (new_early, new_late) = compacted(&log, early.len(), |e| e.partition_key().into_owned());
    assert_eq!(new_early.len() + new_late.len(), log.len() - 1, "only the exact duplicate is compacted away");
    let rebuilt = rebuild("compaction_new_keys", &new_early, &activity, &new_late).await;
    assert_eq!(rebuilt, full, "a catalog rebuilt from the compacted topic equals the full log's");

    // Old keys (course id alone): compaction loses courses, and the rebuild differs.
    let course_key = |e: &Event| e.course_id().unwrap_or_default().to_owned();
    let (old_early, old_late) = compacted(&log, early.len(), course_key);
    assert_eq!(old_early.len() + old_late.len(), COURSES.len(), "one record per course id survives");
    let old = rebuild("compaction_old_keys", &old_early, &activity, &old_late).await;
    assert_ne!(old.catalog, full.catalog, "under course-id keys the compacted catalog loses courses");
    assert_ne!(old.retirements, full.retirements, "and retirements");
    assert_ne!(old.progress, full.progress, "and so learners' progress");
}

/// The catalog records of [`catalog_log`] with the keys of the old version: the course id.
fn old_records(topic: &str, events: &[Event]) -> Vec<OutRecord> {
    events
        .iter()
        .map(|e| OutRecord {
            topic: topic.to_owned(),
            key: Some(e.course_id().unwrap_or_default().as_bytes().to_vec()),
            payload: codec::encode(e),
            headers: vec![(codec::headers::CONTENT_TYPE.to_owned(), codec::CONTENT_TYPE.as_bytes().to_vec())],
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rekey_catalog_gives_an_old_topic_keys_that_survive_compaction() {
    init_logs();
    // The durable engine: its watermarks are right, and the command reads up to them.
    let brokers = durable_kafka_brokers();
    let prefix = unique_prefix("rekey");
    let config = kafka(&brokers, &prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let topic = topics.topic(Domain::Catalog).to_owned();
    create_topic(&brokers, &topic, 3).await;
    let producer = Producer::new(&config, topics.clone(), BusMetrics::standalone(), "rekey-test").expect("producer");
    let (early, late) = catalog_log();
    let events: Vec<Event> = early.iter().chain(&late).cloned().collect();
    for r in producer.send(old_records(&topic, &events), OnQueueFull::Wait(Duration::from_secs(30))).await {
        r.expect("produced");
    }

    let env = [("LMS_KAFKA__BROKERS", brokers.clone()), ("LMS_KAFKA__TOPIC_PREFIX", prefix.clone())];
    let lms = |args: &[&str]| {
        let out = tests::run_lms(args, &env);
        assert!(out.ok, "lms {args:?}: {}{}", out.stdout, out.stderr);
        out.stdout
    };
    let help = lms(&["topics", "rekey-catalog", "--help"]);
    assert!(help.contains("When to run it") && help.contains("Processors can keep running"), "{help}");
    let distinct = events.len() - 1; // one publication is redelivered
    let dry = lms(&["topics", "rekey-catalog", "--dry-run"]);
    assert!(dry.contains(&format!("would re-produce {distinct} record(s) under new keys, then write 4 tombstone(s)")), "{dry}");
    let first = lms(&["topics", "rekey-catalog"]);
    assert!(first.contains(&format!("Done: read {}, re-keyed {distinct}, tombstones 4.", events.len())), "{first}");

    // Read back and compacted: every course of both tenants at its highest version, and
    // both retirements; no record under an old key.
    let admin = Admin::new(&config).expect("admin");
    let log = admin.read_log(&topic, &mut |_| {}).expect("read the topic");
    assert_eq!(log.len(), events.len() + distinct + 4, "the originals, one copy per distinct event, 4 tombstones");
    let view = compact(log.iter().map(|r: &LogRecord| (r.key.clone(), r.value.clone())));
    let survivors: Vec<(String, Event)> = view
        .into_iter()
        .map(|(k, v)| (String::from_utf8(k.unwrap_or_default()).expect("utf-8 key"), codec::decode(&v).expect("an event")))
        .collect();
    for (key, e) in &survivors {
        assert_eq!(key, &e.partition_key(), "{} survives under its new key", e.id);
    }
    let ids: BTreeSet<&str> = survivors.iter().map(|(_, e)| e.id.as_str()).collect();
    let want: BTreeSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, want, "every event survives compaction");
    let mut highest: BTreeMap<(String, String), u32> = BTreeMap::new();
    let mut retired = BTreeSet::new();
    for (_, e) in &survivors {
        match &e.data {
            EventData::CoursePublished(d) => {
                let v = highest.entry((e.tenant.clone(), d.course_id.clone())).or_default();
                *v = (*v).max(d.version);
            }
            EventData::CourseRetired(d) => {
                retired.insert((e.tenant.clone(), d.course_id.clone()));
            }
            _ => {}
        }
    }
    let highest: Vec<(&str, &str, u32)> = highest.iter().map(|((t, c), v)| (t.as_str(), c.as_str(), *v)).collect();
    assert_eq!(
        highest,
        [
            ("acme", "c1", 2),
            ("acme", "c2", 1),
            ("acme", "c3", 1),
            ("acme", "c4", 1),
            ("globex", "c1", 2),
            ("globex", "c2", 2),
            ("globex", "c3", 3),
            ("globex", "c4", 1)
        ]
    );
    assert_eq!(retired, BTreeSet::from([("acme".to_owned(), "c2".to_owned()), ("globex".to_owned(), "c4".to_owned())]));

    // Again: nothing to do, nothing produced.
    let second = lms(&["topics", "rekey-catalog"]);
    assert!(second.contains("Nothing to re-key"), "{second}");
    let after = admin.read_log(&topic, &mut |_| {}).expect("read the topic");
    assert_eq!(after.len(), log.len(), "a second run produces nothing");
}
