//! Property tests: the progress figures depend on the set of events only, not on their
//! order, their batching or their redelivery.
//!
//! Arbitrary sequences of catalog, enrollment and learning events for two learners and two
//! courses go through the real stages ([`super::catalog::Catalog`] for `course.*`,
//! [`Progress`] for the rest) on an in-memory SQLite store, one transaction per batch as
//! the runner does; the same events shuffled, cut into other batches and with duplicates
//! must leave the same `GET /v1/learners/{id}/progress` answers, and `course.completed` is
//! emitted at most once per learner and course (and once for every completed course).

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use lms_events::data::{CoursePublished, EnrollmentCreated, EnrollmentDropped, EnrollmentSource, LessonRef, Module, VideoProgressed};
use lms_events::{Event, EventData, data::ProgressStatus};
use proptest::prelude::*;
use proptest::sample::Index;

use super::Progress;
use super::catalog::Catalog;
use super::model::ProgressView;
use crate::stateful::Stage;
use crate::testkit::{apply_batch, batches, block_on, redelivered, reorderings};

const TENANT: &str = "acme";
const LEARNERS: [&str; 2] = ["ada", "bob"];
const COURSES: [&str; 2] = ["c1", "c2"];
const LESSONS: [&str; 3] = ["l1", "l2", "l3"];

/// The lessons of a course version: fixed per (course, version), so that two publications of
/// one version agree, as the contract assumes.
fn lessons_of(course: usize, version: u32) -> Vec<String> {
    let pick: &[usize] = match (course, version) {
        (0, 1) => &[0, 1],
        (0, 2) => &[0, 1, 2],
        (0, _) => &[1, 2],
        (_, 1) => &[0],
        (_, 2) => &[0, 2],
        (_, _) => &[2],
    };
    pick.iter().map(|&i| LESSONS[i].to_owned()).collect()
}

/// One generated event, before it gets its id and time.
#[derive(Debug, Clone)]
enum Op {
    Publish { course: usize, version: u32 },
    Enroll { learner: usize, course: usize },
    Drop { learner: usize, course: usize },
    Started { learner: usize, course: usize, lesson: usize },
    Completed { learner: usize, course: usize, lesson: usize },
    Video { learner: usize, course: usize, lesson: usize, watched_ms: u32 },
}

fn op() -> impl Strategy<Value = Op> {
    let (l, c, s) = (0..LEARNERS.len(), 0..COURSES.len(), 0..LESSONS.len());
    prop_oneof![
        (c.clone(), 1u32..=3).prop_map(|(course, version)| Op::Publish { course, version }),
        (l.clone(), c.clone()).prop_map(|(learner, course)| Op::Enroll { learner, course }),
        (l.clone(), c.clone()).prop_map(|(learner, course)| Op::Drop { learner, course }),
        (l.clone(), c.clone(), s.clone()).prop_map(|(learner, course, lesson)| Op::Started { learner, course, lesson }),
        (l.clone(), c.clone(), s.clone()).prop_map(|(learner, course, lesson)| Op::Completed { learner, course, lesson }),
        (l.clone(), c.clone(), s.clone()).prop_map(|(learner, course, lesson)| Op::Completed { learner, course, lesson }),
        (l, c, s, 0u32..400_000).prop_map(|(learner, course, lesson, watched_ms)| Op::Video { learner, course, lesson, watched_ms }),
    ]
}

fn time(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).single().expect("a valid time") + chrono::Duration::minutes(i64::from(minute))
}

fn event(i: usize, op: &Op, minute: u32) -> Event {
    let lesson = |learner: usize, course: usize, lesson: usize| LessonRef {
        learner_id: LEARNERS[learner].to_owned(),
        course_id: COURSES[course].to_owned(),
        lesson_id: LESSONS[lesson].to_owned(),
    };
    let data = match *op {
        Op::Publish { course, version } => EventData::CoursePublished(CoursePublished {
            course_id: COURSES[course].to_owned(),
            title: format!("{} v{version}", COURSES[course]),
            version,
            modules: vec![Module { module_id: "m".to_owned(), lessons: lessons_of(course, version) }],
        }),
        Op::Enroll { learner, course } => EventData::EnrollmentCreated(EnrollmentCreated {
            learner_id: LEARNERS[learner].to_owned(),
            course_id: COURSES[course].to_owned(),
            source: EnrollmentSource::SelfService,
        }),
        Op::Drop { learner, course } => EventData::EnrollmentDropped(EnrollmentDropped {
            learner_id: LEARNERS[learner].to_owned(),
            course_id: COURSES[course].to_owned(),
        }),
        Op::Started { learner, course, lesson: l } => EventData::LessonStarted(lesson(learner, course, l)),
        Op::Completed { learner, course, lesson: l } => EventData::LessonCompleted(lesson(learner, course, l)),
        Op::Video { learner, course, lesson: l, watched_ms } => EventData::VideoProgressed(VideoProgressed {
            learner_id: LEARNERS[learner].to_owned(),
            course_id: COURSES[course].to_owned(),
            lesson_id: LESSONS[l].to_owned(),
            position_s: 10.0,
            duration_s: 600.0,
            watched_s: f64::from(watched_ms) / 1000.0,
        }),
    };
    let subject = data.learner_id().map(str::to_owned);
    Event {
        specversion: lms_events::SPEC_VERSION.to_owned(),
        id: format!("e{i}"),
        source: "proptest".to_owned(),
        time: time(minute),
        subject,
        tenant: TENANT.to_owned(),
        data,
    }
}

/// What a run leaves: each learner's progress, how many `course.completed` were emitted
/// per (learner, course), and every derived event in the order emitted.
#[derive(Debug, PartialEq)]
struct Outcome {
    progress: BTreeMap<&'static str, Vec<ProgressView>>,
    completions: BTreeMap<(String, String), usize>,
    derived: Vec<Event>,
}

/// Applies `events` in this order on a fresh store, in batches of the given sizes (cycled):
/// within a batch the catalog's events go to the catalog stage and the others to the
/// progress stage, each stage in its own transaction, as the two processors do.
async fn run(events: &[Event], batch_sizes: &[usize]) -> Outcome {
    let store = crate::open_store("sqlite::memory:", 1).await.expect("an in-memory store");
    let mut completions = BTreeMap::new();
    let mut derived = Vec::new();
    let mut offset = 0;
    for batch in batches(events, batch_sizes) {
        let (catalog, learning): (Vec<&Event>, Vec<&Event>) =
            batch.iter().partition(|e| e.data.event_type().as_str().starts_with("course."));
        for (stage, events) in [(&Catalog as &dyn Stage, catalog), (&Progress as &dyn Stage, learning)] {
            if events.is_empty() {
                continue;
            }
            for (e, _) in apply_batch(&store, stage, events.into_iter(), &mut offset).await {
                if let EventData::CourseCompleted(c) = &e.data {
                    *completions.entry((c.learner_id.clone(), c.course_id.clone())).or_insert(0) += 1;
                }
                derived.push(e);
            }
        }
    }
    let mut progress = BTreeMap::new();
    for learner in LEARNERS {
        let mut views = super::read(&store, TENANT, learner).await.expect("read progress");
        views.sort_by(|a, b| a.course_id.cmp(&b.course_id));
        progress.insert(learner, views);
    }
    store.close().await;
    Outcome { progress, completions, derived }
}

/// Checks the completions of one run: at most one `course.completed` per learner and
/// course, and one for every course its final progress shows completed.
fn check_completions(outcome: &Outcome, what: &str) -> Result<(), TestCaseError> {
    for ((learner, course), n) in &outcome.completions {
        prop_assert!(*n <= 1, "{what}: {n} course.completed for {learner} in {course}");
    }
    for (learner, views) in &outcome.progress {
        for v in views.iter().filter(|v| v.status == ProgressStatus::Completed) {
            prop_assert!(
                outcome.completions.contains_key(&((*learner).to_owned(), v.course_id.clone())),
                "{what}: {learner} completed {} without a course.completed",
                v.course_id
            );
        }
    }
    Ok(())
}

/// The generated events: in their order of generation (one batch each), and the same set
/// shuffled, batched otherwise, and with some events delivered twice.
fn scenario() -> impl Strategy<Value = (Vec<Event>, Vec<Event>, Vec<usize>, Vec<Index>)> {
    prop::collection::vec((op(), 0u32..2_000), 1..40).prop_flat_map(|ops| {
        let events: Vec<Event> = ops.iter().enumerate().map(|(i, (op, minute))| event(i, op, *minute)).collect();
        reorderings(events)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn progress_depends_on_the_events_not_on_their_order_batching_or_duplicates(
        (events, shuffled, batch_sizes, duplicates) in scenario()
    ) {
        let reference = block_on(run(&events, &[1]));
        check_completions(&reference, "in order")?;

        let reordered = block_on(run(&shuffled, &batch_sizes));
        check_completions(&reordered, "shuffled")?;
        prop_assert_eq!(&reordered.progress, &reference.progress, "shuffled and batched {:?}", batch_sizes);

        let redelivered = redelivered(&events, &shuffled, &duplicates);
        let again = block_on(run(&redelivered, &batch_sizes));
        check_completions(&again, "with duplicates")?;
        prop_assert_eq!(&again.progress, &reference.progress, "with duplicates");
    }
}

/// The analytics answers about progress and completion (completions per day, funnel and
/// at-risk list per course) that the embedded analytics store gives for `events` and the
/// derived events of a run, delivered in `derived` order.
#[derive(Debug, PartialEq)]
struct Figures {
    completions: Vec<lms_analytics::CompletionsPoint>,
    funnels: Vec<lms_analytics::Funnel>,
    at_risk: Vec<Vec<lms_analytics::AtRiskLearner>>,
}

async fn analytics(events: &[Event], derived: &[Event]) -> Figures {
    use lms_analytics::{AnalyticsStore as _, AtRiskParams, FunnelParams, Granularity, ParquetConfig, ParquetStore, SeriesParams};
    let dir = std::env::temp_dir().join(format!("lms-props-{}", uuid::Uuid::new_v4().simple()));
    let store = ParquetStore::open(ParquetConfig::new(&dir)).await.expect("the twin");
    store.migrate().await.expect("migrate");
    let all: Vec<&Event> = events.iter().chain(derived).collect();
    // Several inserts, as several batches of the sink would be.
    for chunk in all.chunks(7) {
        store.insert(chunk).await.expect("insert");
    }
    let day = time(0).date_naive();
    let series = SeriesParams {
        tenant: TENANT.to_owned(),
        from: day - chrono::Duration::days(2),
        to: day + chrono::Duration::days(3),
        granularity: Granularity::Day,
        course_id: None,
    };
    let mut figures = Figures { completions: store.completions(&series).await.expect("completions"), funnels: vec![], at_risk: vec![] };
    for course in COURSES {
        let funnel = FunnelParams { tenant: TENANT.to_owned(), course_id: course.to_owned() };
        figures.funnels.push(store.funnel(&funnel).await.expect("funnel"));
        let at_risk =
            AtRiskParams { tenant: TENANT.to_owned(), course_id: course.to_owned(), inactive_days: 0, as_of: time(10_000), limit: 100 };
        figures.at_risk.push(store.at_risk(&at_risk).await.expect("at-risk"));
    }
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
    figures
}

proptest! {
    // Each case builds three analytics stores (DataFusion over Parquet): fewer cases.
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    /// Course versions that add or remove lessons, interleaved with the activity in any
    /// order and batching: the analytics end where processing in time order ends, and
    /// their completions are the learners' own (CONTRACT.md, "Meanings").
    #[test]
    fn analytics_follow_the_learners_progress_whatever_the_interleaving(
        (events, shuffled, batch_sizes, _duplicates) in scenario()
    ) {
        let mut in_time = events.clone();
        in_time.sort_by_key(|e| e.time);
        let reference = block_on(run(&in_time, &[1]));
        let expected = block_on(analytics(&in_time, &reference.derived));
        // The completions are those of the learners' progress.
        let mut own: BTreeMap<chrono::NaiveDate, u64> = BTreeMap::new();
        for v in reference.progress.values().flatten() {
            if let Some(at) = v.completed_at {
                *own.entry(at.date_naive()).or_default() += 1;
            }
        }
        let got: BTreeMap<chrono::NaiveDate, u64> = expected.completions.iter().map(|p| (p.bucket, p.completions)).collect();
        prop_assert_eq!(&got, &own, "completions against the learners' progress");

        let reordered = block_on(run(&shuffled, &batch_sizes));
        prop_assert_eq!(&reordered.progress, &reference.progress);
        // The derived events reach the analytics in any order: the revisions decide.
        let mut derived = reordered.derived.clone();
        derived.reverse();
        let figures = block_on(analytics(&shuffled, &derived));
        prop_assert_eq!(&figures, &expected, "shuffled and batched {:?}", batch_sizes);
    }
}
