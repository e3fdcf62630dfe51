//! Unit tests of the generator: validity, determinism, shape.

use std::collections::{HashMap, HashSet};

use chrono::{TimeZone, Utc};
use lms_events::{EventData, parse_client_event};

use crate::{Cohort, CohortConfig, ConfigError, Live};

fn config(seed: u64) -> CohortConfig {
    CohortConfig {
        tenants: 2,
        courses: 5,
        learners: 120,
        weeks: 6,
        now: Utc.with_ymd_and_hms(2026, 11, 20, 12, 0, 0).single().unwrap_or_default(),
        ..CohortConfig::new(seed)
    }
}

#[test]
fn every_event_is_valid_client_input_in_time_order_within_the_period() {
    let c = config(1);
    let (start, now) = (c.start(), c.now);
    let events: Vec<_> = Cohort::new(c).expect("valid config").collect();
    assert!(events.len() > 5_000, "only {} events", events.len());
    let mut ids = HashSet::new();
    for (i, e) in events.iter().enumerate() {
        let json = serde_json::to_value(e).expect("serialises");
        let parsed = parse_client_event(&json, &e.tenant).unwrap_or_else(|r| panic!("event {i} {json} rejected: {r:?}"));
        assert_eq!(&parsed, e, "event {i} changes when parsed");
        assert!(ids.insert(e.id.clone()), "duplicate id {}", e.id);
        assert!(e.time >= start && e.time <= now, "event {i} at {} outside the period", e.time);
    }
    assert!(events.windows(2).all(|w| w[0].time <= w[1].time), "not in time order");
}

#[test]
fn the_same_seed_gives_the_same_stream_and_another_seed_another() {
    let a: Vec<_> = Cohort::new(config(5)).expect("config").collect();
    let b: Vec<_> = Cohort::new(config(5)).expect("config").collect();
    let c: Vec<_> = Cohort::new(config(6)).expect("config").collect();
    assert_eq!(a, b);
    assert_ne!(a, c);
}

#[test]
fn the_cohort_looks_like_a_cohort() {
    let mut cohort = Cohort::new(config(3)).expect("config");
    let events: Vec<_> = cohort.by_ref().collect();
    let s = cohort.summary().clone();
    assert_eq!(s.events, events.len() as u64);
    for t in [
        "course.published",
        "course.retired",
        "enrollment.created",
        "enrollment.dropped",
        "lesson.started",
        "lesson.completed",
        "video.progressed",
        "assessment.graded",
        "payment.succeeded",
        "payment.refunded",
        "payment.failed",
    ] {
        assert!(s.count(t) > 0, "no {t}: {:?}", s.by_type);
    }
    assert_eq!(s.by_tenant.len(), 2);
    // Some courses have a second version.
    assert!(events.iter().any(|e| matches!(&e.data, EventData::CoursePublished(c) if c.version == 2)));

    // Drop-off: more learners complete the first lesson of a course than its last one,
    // and some complete every lesson.
    let mut lessons: HashMap<(&str, &str), usize> = HashMap::new();
    let mut done: HashMap<(&str, &str, &str), HashSet<&str>> = HashMap::new();
    for e in &events {
        match &e.data {
            EventData::CoursePublished(c) => {
                lessons.insert((e.tenant.as_str(), c.course_id.as_str()), c.lessons_total() as usize);
            }
            EventData::LessonCompleted(l) => {
                done.entry((e.tenant.as_str(), l.course_id.as_str(), l.learner_id.as_str())).or_default().insert(l.lesson_id.as_str());
            }
            _ => {}
        }
    }
    let started = done.len();
    let completed = done.iter().filter(|((t, c, _), ls)| ls.len() >= lessons[&(*t, *c)]).count();
    assert!(completed > 0 && completed * 2 < started, "{completed} of {started} completed");

    // Weekly rhythm: fewer learning events per weekend day than per weekday.
    use chrono::Datelike;
    let mut by_day = [0u64; 7];
    for e in events.iter().filter(|e| e.event_type().is_learning_activity()) {
        by_day[e.time.weekday().num_days_from_monday() as usize] += 1;
    }
    let weekday = by_day[..5].iter().sum::<u64>() as f64 / 5.0;
    let weekend = by_day[5..].iter().sum::<u64>() as f64 / 2.0;
    assert!(weekend < 0.8 * weekday, "{by_day:?}");

    // Scores spread over the range, below the maximum.
    let pcts: Vec<f64> = events
        .iter()
        .filter_map(|e| match &e.data {
            EventData::AssessmentGraded(a) => Some(a.percent()),
            _ => None,
        })
        .collect();
    assert!(pcts.iter().any(|p| *p < 50.0) && pcts.iter().any(|p| *p >= 90.0));
}

#[test]
fn a_refund_follows_its_payment() {
    let events: Vec<_> = Cohort::new(config(9)).expect("config").collect();
    let mut paid = HashSet::new();
    for e in &events {
        match &e.data {
            EventData::PaymentSucceeded(p) => {
                paid.insert(p.payment_id.clone());
            }
            EventData::PaymentRefunded(r) => assert!(paid.contains(&r.payment_id), "refund before payment {}", r.payment_id),
            _ => {}
        }
    }
}

#[test]
fn bounds_are_checked() {
    let err = Cohort::new(CohortConfig { tenants: 0, ..config(1) }).err();
    assert!(matches!(err, Some(ConfigError::OutOfRange { option: "tenants", .. })), "{err:?}");
    let err = Cohort::new(CohortConfig { tenant_names: vec!["a".into(), "a".into()], ..config(1) }).err();
    assert!(matches!(err, Some(ConfigError::TenantName(_))), "{err:?}");
    assert!(Live::new(config(1), 0.0).is_err());
}

#[test]
fn named_tenants_are_used() {
    let mut cohort = Cohort::new(CohortConfig { tenant_names: vec!["school".into()], learners: 10, ..config(2) }).expect("config");
    assert!(cohort.by_ref().all(|e| e.tenant == "school"));
}

#[tokio::test]
async fn live_mode_releases_valid_events_at_the_rate() {
    let mut live = Live::new(CohortConfig { learners: 5, weeks: 1, ..config(4) }, 1000.0).expect("live");
    let mut events = Vec::new();
    for _ in 0..10 {
        events.extend(live.next_batch().await);
    }
    // 10 ticks of 100 ms at 1000 events/s.
    assert_eq!(events.len(), 1000);
    assert_eq!(live.emitted(), 1000);
    let now = Utc::now();
    for e in &events {
        let json = serde_json::to_value(e).expect("serialises");
        parse_client_event(&json, &e.tenant).unwrap_or_else(|r| panic!("{json} rejected: {r:?}"));
        assert!((now - e.time).num_seconds().abs() < 60, "event time {} is not about now", e.time);
    }
    // Five learners per tenant run out quickly: later rounds bring new learners.
    assert!(events.iter().any(|e| e.learner_id().is_some_and(|l| l.starts_with("live2-"))));
}
