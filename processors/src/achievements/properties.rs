//! Property tests: the achievements a learner has, their unlock times, and the
//! `achievement.unlocked` events depend on the set of events only, not on their order,
//! their batching or their redelivery.
//!
//! Arbitrary lesson, enrollment, assessment and `progress.updated` events for two learners
//! and three courses go through the real stage ([`Achievements`]) on an in-memory SQLite
//! store, one transaction per batch as the runner does, with rules whose thresholds a short
//! stream can reach (two courses, a three-day streak, completion within a day of enrolling).
//! Each learner-course completes at most once, at one time, as the progress processor
//! reports it; everything else may come in any order and any number of times.

use std::collections::BTreeMap;

use chrono::{DateTime, TimeZone, Utc};
use lms_events::data::{AssessmentGraded, EnrollmentCreated, EnrollmentSource, LessonRef, ProgressStatus, ProgressUpdated};
use lms_events::{Event, EventData};
use lms_state::Store;
use proptest::prelude::*;
use proptest::sample::Index;

use super::rules::Rules;
use super::{AchievementView, Achievements};
use crate::testkit::{apply_batch, batches, block_on, redelivered, reorderings};

const TENANT: &str = "acme";
const LEARNERS: [&str; 2] = ["ada", "bob"];
const COURSES: [&str; 3] = ["c1", "c2", "c3"];

const RULES: &str = "
achievements:
  - { id: first-lesson, title: First steps, rule: first_lesson_completed }
  - { id: course-completed, title: Course completed, rule: course_completed }
  - { id: two-courses, title: Two courses, rule: courses_completed, count: 2 }
  - { id: streak-3, title: Three days, rule: learning_streak, days: 3 }
  - { id: perfect-score, title: Perfect score, rule: perfect_assessment }
  - { id: fast-finisher, title: Within a day, rule: completed_within_days_of_enrollment, days: 1 }
";

/// One generated event, before it gets its id and time (hours after the start).
#[derive(Debug, Clone)]
enum Op {
    Lesson { learner: usize, course: usize },
    Enroll { learner: usize, course: usize },
    Graded { learner: usize, course: usize, perfect: bool },
    Completed { learner: usize, course: usize },
}

fn op() -> impl Strategy<Value = Op> {
    let (l, c) = (0..LEARNERS.len(), 0..COURSES.len());
    prop_oneof![
        3 => (l.clone(), c.clone()).prop_map(|(learner, course)| Op::Lesson { learner, course }),
        1 => (l.clone(), c.clone()).prop_map(|(learner, course)| Op::Enroll { learner, course }),
        1 => (l.clone(), c.clone(), any::<bool>()).prop_map(|(learner, course, perfect)| Op::Graded { learner, course, perfect }),
        1 => (l, c).prop_map(|(learner, course)| Op::Completed { learner, course }),
    ]
}

fn time(hour: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 2, 8, 0, 0).single().expect("a valid time") + chrono::Duration::hours(i64::from(hour))
}

fn event(i: usize, op: &Op, hour: u32) -> Event {
    let (learner, course) = match *op {
        Op::Lesson { learner, course } | Op::Enroll { learner, course } | Op::Completed { learner, course } => (learner, course),
        Op::Graded { learner, course, .. } => (learner, course),
    };
    let (learner_id, course_id) = (LEARNERS[learner].to_owned(), COURSES[course].to_owned());
    let data = match *op {
        Op::Lesson { .. } => EventData::LessonCompleted(LessonRef { learner_id, course_id, lesson_id: format!("l{}", i % 3) }),
        Op::Enroll { .. } => {
            EventData::EnrollmentCreated(EnrollmentCreated { learner_id, course_id, source: EnrollmentSource::SelfService })
        }
        Op::Graded { perfect, .. } => EventData::AssessmentGraded(AssessmentGraded {
            learner_id,
            course_id,
            assessment_id: "quiz".to_owned(),
            score: if perfect { 10.0 } else { 7.0 },
            max_score: 10.0,
            attempt: 1,
        }),
        Op::Completed { .. } => EventData::ProgressUpdated(ProgressUpdated {
            learner_id,
            course_id,
            course_version: 1,
            lessons_completed: 3,
            lessons_total: 3,
            percent_complete: 100.0,
            status: ProgressStatus::Completed,
            time_spent_s: 0.0,
            last_activity_at: Some(time(hour)),
            completed_at: Some(time(hour)),
            revision: 1,
        }),
    };
    let subject = data.learner_id().map(str::to_owned);
    Event {
        specversion: lms_events::SPEC_VERSION.to_owned(),
        id: format!("e{i}"),
        source: "proptest".to_owned(),
        time: time(hour),
        subject,
        tenant: TENANT.to_owned(),
        data,
    }
}

/// What a run leaves: each learner's achievements, and how many `achievement.unlocked`
/// were emitted per (learner, achievement, course).
#[derive(Debug, PartialEq)]
struct Outcome {
    achievements: BTreeMap<&'static str, Vec<AchievementView>>,
    unlocked: BTreeMap<(String, String, Option<String>), usize>,
}

async fn run(rules: &Rules, events: &[Event], batch_sizes: &[usize]) -> Outcome {
    let store = crate::open_store("sqlite::memory:", 1).await.expect("an in-memory store");
    let outcome = run_on(&store, rules, events, batch_sizes, &mut 0).await;
    store.close().await;
    outcome
}

/// Runs `events` through the stage with `rules` on an existing store (whose facts a
/// replay finds), continuing the offsets after `offset`.
async fn run_on(store: &Store, rules: &Rules, events: &[Event], batch_sizes: &[usize], offset: &mut i64) -> Outcome {
    let stage = Achievements::new(std::sync::Arc::new(rules.clone()));
    let mut unlocked = BTreeMap::new();
    for batch in batches(events, batch_sizes) {
        for (e, _) in apply_batch(store, &stage, batch.iter(), offset).await {
            if let EventData::AchievementUnlocked(a) = e.data {
                *unlocked.entry((a.learner_id, a.achievement_id, a.course_id)).or_insert(0) += 1;
            }
        }
    }
    let mut achievements = BTreeMap::new();
    for learner in LEARNERS {
        achievements.insert(learner, super::read(store, TENANT, learner).await.expect("read achievements"));
    }
    Outcome { achievements, unlocked }
}

/// A rule added to the configuration unlocks for past activity when the group replays
/// from the start (`lms replay --group achievements --to-earliest`), with the unlock time
/// the past activity gives; the achievements unlocked before are not announced again.
#[test]
fn a_rule_added_later_unlocks_for_past_activity_on_replay() {
    let all = Rules::parse(RULES).expect("the test rules parse");
    let without: String = RULES.lines().filter(|l| !l.contains("two-courses") && !l.contains("streak-3")).collect::<Vec<_>>().join("\n");
    let before = Rules::parse(&without).expect("the reduced rules parse");
    // Ada learns on three consecutive days and completes two courses; Bob completes one.
    let ops = [
        (Op::Lesson { learner: 0, course: 0 }, 0),
        (Op::Lesson { learner: 0, course: 0 }, 24),
        (Op::Completed { learner: 0, course: 0 }, 25),
        (Op::Lesson { learner: 0, course: 1 }, 48),
        (Op::Completed { learner: 0, course: 1 }, 49),
        (Op::Lesson { learner: 1, course: 2 }, 50),
        (Op::Completed { learner: 1, course: 2 }, 51),
    ];
    let events: Vec<Event> = ops.iter().enumerate().map(|(i, (op, hour))| event(i, op, *hour)).collect();
    block_on(async {
        let store = crate::open_store("sqlite::memory:", 1).await.expect("an in-memory store");
        let mut offset = 0;
        let first = run_on(&store, &before, &events, &[3], &mut offset).await;
        let ids = |o: &Outcome, learner: &str| o.achievements[learner].iter().map(|v| v.achievement_id.clone()).collect::<Vec<_>>();
        assert!(
            !ids(&first, "ada").iter().any(|id| id == "two-courses" || id == "streak-3"),
            "not configured yet: {:?}",
            ids(&first, "ada")
        );

        let replay = run_on(&store, &all, &events, &[3], &mut offset).await;
        let ada = &replay.achievements["ada"];
        let unlocked_at = |id: &str| ada.iter().find(|v| v.achievement_id == id).map(|v| v.unlocked_at);
        assert_eq!(unlocked_at("two-courses"), Some(time(49)), "two courses, at the second completion: {ada:?}");
        assert_eq!(unlocked_at("streak-3"), Some(time(48)), "three days, on the third day: {ada:?}");
        assert!(!ids(&replay, "bob").iter().any(|id| id == "two-courses"), "bob completed one course only");
        for (key, n) in &replay.unlocked {
            assert!(key.1 == "two-courses" || key.1 == "streak-3", "announced again on replay: {key:?} ({n}×)");
        }
        // The same as running the full rules from the start.
        let fresh = run(&all, &events, &[3]).await;
        assert_eq!(replay.achievements, fresh.achievements);
        store.close().await;
    });
}

/// Every listed achievement was announced exactly once, and nothing else was.
fn check_unlocked(outcome: &Outcome, what: &str) -> Result<(), TestCaseError> {
    let mut listed = BTreeMap::new();
    for (learner, views) in &outcome.achievements {
        for v in views {
            listed.insert(((*learner).to_owned(), v.achievement_id.clone(), v.course_id.clone()), 1);
        }
    }
    prop_assert_eq!(&outcome.unlocked, &listed, "{}: achievement.unlocked once per listed achievement", what);
    Ok(())
}

/// The generated events in time order, and the same set shuffled, batched otherwise and
/// with some events delivered twice. A learner-course completes at most once.
fn scenario() -> impl Strategy<Value = (Vec<Event>, Vec<Event>, Vec<usize>, Vec<Index>)> {
    prop::collection::vec((op(), 0u32..24 * 6), 1..40).prop_flat_map(|mut ops| {
        let mut completed = std::collections::HashSet::new();
        ops.retain(|(op, _)| match op {
            Op::Completed { learner, course } => completed.insert((*learner, *course)),
            _ => true,
        });
        ops.sort_by_key(|(_, hour)| *hour);
        let events: Vec<Event> = ops.iter().enumerate().map(|(i, (op, hour))| event(i, op, *hour)).collect();
        reorderings(events)
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn achievements_depend_on_the_events_not_on_their_order_batching_or_duplicates(
        (events, shuffled, batch_sizes, duplicates) in scenario()
    ) {
        let rules = Rules::parse(RULES).expect("the test rules parse");
        let reference = block_on(run(&rules, &events, &[1]));
        check_unlocked(&reference, "in time order")?;

        let reordered = block_on(run(&rules, &shuffled, &batch_sizes));
        check_unlocked(&reordered, "shuffled")?;
        prop_assert_eq!(&reordered.achievements, &reference.achievements, "shuffled and batched {:?}", batch_sizes);

        let redelivered = redelivered(&events, &shuffled, &duplicates);
        let again = block_on(run(&rules, &redelivered, &batch_sizes));
        check_unlocked(&again, "with duplicates")?;
        prop_assert_eq!(&again.achievements, &reference.achievements, "with duplicates");
    }
}
