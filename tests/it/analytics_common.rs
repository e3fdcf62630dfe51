//! What the analytics tests share: a generated event stream (several tenants, duplicates,
//! reordering, refunds, the derived events the progress processor would emit), an oracle that
//! computes every analytics answer plainly from the distinct events, the queries every test
//! asks, and plumbing to run the analytics sink through the real broker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Duration as Days, NaiveDate, TimeZone, Utc};
use lms_analytics::{
    ActiveLearnersPoint, AnalyticsSink, AnalyticsStore, AtRiskLearner, AtRiskParams, ClickHouseConfig, ClickHouseStore, CompletionsPoint,
    EnrollmentsPoint, Funnel, FunnelParams, Granularity, RevenueParams, RevenuePoint, Scores, ScoresParams, SeriesParams,
};
use lms_bus::{BusMetrics, KafkaConfig, Member, MemberConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::data::{
    AchievementUnlocked, AssessmentGraded, CoursePublished, EnrollmentCreated, EnrollmentDropped, EnrollmentSource, LessonRef, Module,
    PaymentFailed, PaymentRefunded, PaymentSucceeded, VideoProgressed,
};
use lms_events::{Event, EventData};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tests::create_topic;
use tokio_util::sync::CancellationToken;

use crate::support::fast_consumer;

/// The test ClickHouse (18.16), from `LMS_TEST_CLICKHOUSE_URL`.
pub fn clickhouse_url() -> String {
    std::env::var("LMS_TEST_CLICKHOUSE_URL").unwrap_or_else(|_| "http://127.0.0.1:8123".to_owned())
}

/// A ClickHouse store on a database of its own, migrated.
pub async fn fresh_clickhouse(test: &str) -> ClickHouseStore {
    let db = format!("t_{}_{}", test, &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let store = ClickHouseStore::new(ClickHouseConfig::new(clickhouse_url(), db)).expect("a store");
    store.migrate().await.expect("migrate the test database");
    store
}

/// The first day of the generated activity.
pub fn start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 0, 0, 0).single().expect("valid time")
}

/// The generated stream: every distinct event once, then what is delivered (duplicates and
/// all, shuffled).
pub struct Stream {
    /// Distinct events, in generation order.
    pub distinct: Vec<Event>,
    /// The delivery: the distinct events plus copies of some, in random order.
    pub delivered: Vec<Event>,
}

struct Gen {
    rng: StdRng,
    n: u64,
    events: Vec<Event>,
}

impl Gen {
    fn event(&mut self, tenant: &str, time: DateTime<Utc>, data: EventData) -> Event {
        self.n += 1;
        let e = Event {
            specversion: "1.0".to_owned(),
            id: format!("{tenant}-e{:06}", self.n),
            source: "analytics-test".to_owned(),
            time,
            subject: data.learner_id().map(str::to_owned),
            tenant: tenant.to_owned(),
            data,
        };
        self.events.push(e.clone());
        e
    }

    fn at(&mut self, base: DateTime<Utc>, max_minutes: i64) -> DateTime<Utc> {
        base + Days::minutes(self.rng.random_range(1..=max_minutes.max(1)))
    }
}

/// Generates a stream over `tenants` tenants with `learners` learners each, seeded.
pub fn generate(seed: u64, tenants: usize, learners: usize) -> Stream {
    let mut g = Gen { rng: StdRng::seed_from_u64(seed), n: 0, events: Vec::new() };
    for t in 0..tenants {
        let tenant = format!("tenant-{t}");
        let mut payments: Vec<(String, i64, String)> = Vec::new();
        // Courses: 3 per tenant with 3–7 lessons. Each has a second version, published (in
        // event time) before any activity but delivered anywhere in the stream: course-1's
        // adds a lesson (learners learn all of them: those done with version 1's lessons
        // first were complete before it arrived), course-2's removes its last lesson
        // (learners who skipped it complete when it arrives), course-0's changes nothing.
        let mut courses = Vec::new();
        for c in 0..3 {
            let course_id = format!("course-{c}");
            let mut lessons: Vec<String> = (0..g.rng.random_range(3..=7)).map(|l| format!("lesson-{l}")).collect();
            let published = start() - Days::days(30);
            let publish = |g: &mut Gen, version: u32, lessons: &[String]| {
                g.event(
                    &tenant,
                    published + Days::minutes(i64::from(version)),
                    EventData::CoursePublished(CoursePublished {
                        course_id: course_id.clone(),
                        title: format!("Course {c}"),
                        version,
                        modules: vec![Module { module_id: "m1".to_owned(), lessons: lessons.to_vec() }],
                    }),
                );
            };
            publish(&mut g, 1, &lessons);
            match c {
                1 => {
                    lessons.push("lesson-extra".to_owned());
                    publish(&mut g, 2, &lessons);
                }
                2 => publish(&mut g, 2, &lessons[..lessons.len() - 1]),
                _ => publish(&mut g, 2, &lessons),
            }
            courses.push((course_id, lessons));
        }
        for l in 0..learners {
            let learner = format!("learner-{l}");
            for (course_id, lessons) in &courses {
                let roll: f64 = g.rng.random();
                if roll > 0.7 {
                    continue;
                }
                // About one in ten learns without an enrollment.
                let enrolled = roll < 0.63;
                // Some activity starts before the queried ranges, some runs past them.
                let mut t0 = start() + Days::minutes(g.rng.random_range(-20 * 24 * 60..80 * 24 * 60));
                let enrolled_at = t0;
                if enrolled {
                    let source =
                        [EnrollmentSource::SelfService, EnrollmentSource::Admin, EnrollmentSource::Purchase][g.rng.random_range(0..3)];
                    g.event(
                        &tenant,
                        t0,
                        EventData::EnrollmentCreated(EnrollmentCreated {
                            learner_id: learner.clone(),
                            course_id: course_id.clone(),
                            source,
                        }),
                    );
                    if source == EnrollmentSource::Purchase || g.rng.random_bool(0.2) {
                        let payment_id = format!("{tenant}-pay-{l}-{course_id}");
                        let currency = ["EUR", "USD"][g.rng.random_range(0..2)].to_owned();
                        let amount = g.rng.random_range(1_000..50_000);
                        let paid_at = g.at(t0, 60);
                        let with_course = g.rng.random_bool(0.85);
                        g.event(
                            &tenant,
                            paid_at,
                            EventData::PaymentSucceeded(PaymentSucceeded {
                                payment_id: payment_id.clone(),
                                learner_id: learner.clone(),
                                course_id: with_course.then(|| course_id.clone()),
                                amount_minor: amount,
                                currency: currency.clone(),
                            }),
                        );
                        payments.push((payment_id, amount, currency));
                    }
                }
                // Learning: lessons in order, some repeated, up to a random point.
                let stop = g.rng.random_range(0..=lessons.len());
                let mut done: BTreeSet<String> = BTreeSet::new();
                for lesson in lessons.iter().take(stop) {
                    t0 = g.at(t0, 3 * 24 * 60);
                    let r = LessonRef { learner_id: learner.clone(), course_id: course_id.clone(), lesson_id: lesson.clone() };
                    g.event(&tenant, t0, EventData::LessonStarted(r.clone()));
                    if g.rng.random_bool(0.5) {
                        let at = g.at(t0, 30);
                        g.event(
                            &tenant,
                            at,
                            EventData::VideoProgressed(VideoProgressed {
                                learner_id: learner.clone(),
                                course_id: course_id.clone(),
                                lesson_id: lesson.clone(),
                                position_s: 100.0,
                                duration_s: 600.0,
                                watched_s: 100.0,
                            }),
                        );
                    }
                    t0 = g.at(t0, 60);
                    let repeats = if g.rng.random_bool(0.1) { 2 } else { 1 };
                    for _ in 0..repeats {
                        g.event(&tenant, t0, EventData::LessonCompleted(r.clone()));
                    }
                    // An achievement at the end (the analytics keep it as a raw event only).
                    if done.insert(lesson.clone()) && done.len() == lessons.len() {
                        g.event(
                            &tenant,
                            t0,
                            EventData::AchievementUnlocked(AchievementUnlocked {
                                learner_id: learner.clone(),
                                achievement_id: format!("finished-{course_id}"),
                                title: "Finished".to_owned(),
                                course_id: Some(course_id.clone()),
                                unlocked_at: t0,
                            }),
                        );
                    }
                }
                // Assessment attempts: 0–3, scores on 20 or 50 points.
                let max_score = [20.0, 50.0][g.rng.random_range(0..2)];
                for attempt in 1..=g.rng.random_range(0..=3u32) {
                    t0 = g.at(t0, 24 * 60);
                    let score = f64::from(g.rng.random_range(0..=max_score as u32));
                    g.event(
                        &tenant,
                        t0,
                        EventData::AssessmentGraded(AssessmentGraded {
                            learner_id: learner.clone(),
                            course_id: course_id.clone(),
                            assessment_id: format!("quiz-{course_id}"),
                            score,
                            max_score,
                            attempt,
                        }),
                    );
                }
                // Drops (after the activity or not), and some re-enrollments.
                if enrolled && g.rng.random_bool(0.25) {
                    let after = if g.rng.random_bool(0.5) { t0 } else { enrolled_at };
                    let dropped_at = g.at(after, 5 * 24 * 60);
                    g.event(
                        &tenant,
                        dropped_at,
                        EventData::EnrollmentDropped(EnrollmentDropped { learner_id: learner.clone(), course_id: course_id.clone() }),
                    );
                    if g.rng.random_bool(0.3) {
                        let again = g.at(dropped_at, 10 * 24 * 60);
                        g.event(
                            &tenant,
                            again,
                            EventData::EnrollmentCreated(EnrollmentCreated {
                                learner_id: learner.clone(),
                                course_id: course_id.clone(),
                                source: EnrollmentSource::SelfService,
                            }),
                        );
                    }
                }
            }
        }
        // Refunds: a third of the payments, partly, some weeks later; two refunds of
        // payments never seen; a few failed payments.
        for (payment_id, amount, currency) in payments.clone() {
            if g.rng.random_bool(0.33) {
                let at = start() + Days::minutes(g.rng.random_range(0..100 * 24 * 60));
                let part = g.rng.random_range(1..=amount);
                g.event(&tenant, at, EventData::PaymentRefunded(PaymentRefunded { payment_id, amount_minor: part, currency }));
            }
        }
        for i in 0..2 {
            let at = start() + Days::days(10 + i);
            g.event(
                &tenant,
                at,
                EventData::PaymentRefunded(PaymentRefunded {
                    payment_id: format!("{tenant}-unknown-{i}"),
                    amount_minor: 999,
                    currency: "EUR".to_owned(),
                }),
            );
        }
        for i in 0..3 {
            let at = start() + Days::days(i);
            g.event(
                &tenant,
                at,
                EventData::PaymentFailed(PaymentFailed {
                    payment_id: format!("{tenant}-failed-{i}"),
                    learner_id: format!("learner-{i}"),
                    reason: "card declined".to_owned(),
                }),
            );
        }
    }
    // The client events arrive shuffled, some twice; the derived events are what a progress
    // processor emits for that arrival order (numbered by revision, with the completions
    // that the late versions take back or give), and reach the analytics shuffled again.
    let mut arrival = g.events.clone();
    for e in &g.events {
        if g.rng.random_bool(0.15) {
            arrival.push(e.clone());
        }
    }
    arrival.shuffle(&mut g.rng);
    let derived = tests::oracle::progress::derived_in_order(&arrival, "analytics-test");
    let mut distinct = g.events.clone();
    distinct.extend(derived.iter().cloned());
    let mut delivered = arrival;
    for e in &derived {
        delivered.push(e.clone());
        if g.rng.random_bool(0.15) {
            delivered.push(e.clone());
        }
    }
    delivered.shuffle(&mut g.rng);
    Stream { distinct, delivered }
}

// The oracle (every answer computed plainly over the distinct events) is shared with the
// chaos run: `tests::oracle::analytics`.
pub use tests::oracle::analytics::Oracle;

// ---------------------------------------------------------------------------------------
// The queries every test asks, and the comparison.
// ---------------------------------------------------------------------------------------

/// Every answer of one store (or the oracle), in a fixed order, for comparing.
#[derive(Debug, PartialEq)]
pub enum Answer {
    Active(Vec<ActiveLearnersPoint>),
    Enrollments(Vec<EnrollmentsPoint>),
    Completions(Vec<CompletionsPoint>),
    Funnel(Funnel),
    Revenue(Vec<RevenuePoint>),
    Scores(Scores),
    AtRisk(Vec<AtRiskLearner>),
}

/// The queries: every endpoint, every granularity, with and without filters, two ranges,
/// every tenant plus one with no data.
pub struct Queries {
    pub series: Vec<SeriesParams>,
    pub revenue: Vec<RevenueParams>,
    pub funnels: Vec<FunnelParams>,
    pub scores: Vec<ScoresParams>,
    pub at_risk: Vec<AtRiskParams>,
}

pub fn queries(tenants: usize) -> Queries {
    let d = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").expect("date");
    let mut q = Queries { series: vec![], revenue: vec![], funnels: vec![], scores: vec![], at_risk: vec![] };
    let mut names: Vec<String> = (0..tenants).map(|t| format!("tenant-{t}")).collect();
    names.push("tenant-without-data".to_owned());
    for tenant in &names {
        for (from, to) in [(d("2026-03-01"), d("2026-05-31")), (d("2026-03-18"), d("2026-04-09"))] {
            for granularity in [Granularity::Day, Granularity::Week, Granularity::Month] {
                for course_id in [None, Some("course-1".to_owned())] {
                    let s = SeriesParams { tenant: tenant.clone(), from, to, granularity, course_id };
                    for currency in [None, Some("EUR".to_owned())] {
                        q.revenue.push(RevenueParams { series: s.clone(), currency });
                    }
                    q.series.push(s);
                }
            }
        }
        for c in 0..3 {
            let course_id = format!("course-{c}");
            q.funnels.push(FunnelParams { tenant: tenant.clone(), course_id: course_id.clone() });
            q.scores.push(ScoresParams {
                tenant: tenant.clone(),
                assessment_id: format!("quiz-{course_id}"),
                range: None,
                course_id: None,
            });
            q.scores.push(ScoresParams {
                tenant: tenant.clone(),
                assessment_id: format!("quiz-{course_id}"),
                range: Some((d("2026-03-10"), d("2026-04-20"))),
                course_id: Some(course_id.clone()),
            });
            for (days, as_of) in [(7, start() + Days::days(60)), (14, start() + Days::days(120)), (0, start())] {
                q.at_risk.push(AtRiskParams {
                    tenant: tenant.clone(),
                    course_id: course_id.clone(),
                    inactive_days: days,
                    as_of,
                    limit: if days == 14 { 5 } else { 1000 },
                });
            }
        }
    }
    q
}

/// Every answer of a store.
pub async fn answers(store: &dyn AnalyticsStore, q: &Queries) -> Vec<Answer> {
    let mut out = Vec::new();
    for p in &q.series {
        out.push(Answer::Active(store.active_learners(p).await.expect("active learners")));
        out.push(Answer::Enrollments(store.enrollments(p).await.expect("enrollments")));
        out.push(Answer::Completions(store.completions(p).await.expect("completions")));
    }
    for p in &q.revenue {
        out.push(Answer::Revenue(store.revenue(p).await.expect("revenue")));
    }
    for p in &q.funnels {
        out.push(Answer::Funnel(store.funnel(p).await.expect("funnel")));
    }
    for p in &q.scores {
        out.push(Answer::Scores(store.scores(p).await.expect("scores")));
    }
    for p in &q.at_risk {
        out.push(Answer::AtRisk(store.at_risk(p).await.expect("at risk")));
    }
    out
}

/// Every answer of the oracle, in the order of [`answers`].
pub fn oracle_answers(o: &Oracle, q: &Queries) -> Vec<Answer> {
    let mut out = Vec::new();
    for p in &q.series {
        out.push(Answer::Active(o.active_learners(p)));
        out.push(Answer::Enrollments(o.enrollments(p)));
        out.push(Answer::Completions(o.completions(p)));
    }
    for p in &q.revenue {
        out.push(Answer::Revenue(o.revenue(p)));
    }
    for p in &q.funnels {
        out.push(Answer::Funnel(o.funnel(p)));
    }
    for p in &q.scores {
        out.push(Answer::Scores(o.scores(p)));
    }
    for p in &q.at_risk {
        out.push(Answer::AtRisk(o.at_risk(p)));
    }
    out
}

/// Fails with the first differing answer, naming which one.
pub fn assert_same(what: &str, got: &[Answer], expected: &[Answer]) {
    assert_eq!(got.len(), expected.len(), "{what}: number of answers");
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert_eq!(g, e, "{what}: answer {i} differs");
    }
}

/// Guards against an oracle comparison that passes because everything is empty: the stream
/// must make every endpoint answer something for the first tenant.
pub fn assert_substantial(expected: &[Answer]) {
    let mut seen = [false; 7];
    for a in expected {
        match a {
            Answer::Active(v) => seen[0] |= !v.is_empty(),
            Answer::Enrollments(v) => seen[1] |= v.iter().any(|p| p.drops > 0),
            Answer::Completions(v) => seen[2] |= !v.is_empty(),
            Answer::Funnel(f) => seen[3] |= f.completed > 0 && f.reached_50 > f.completed && f.started < f.enrolled,
            Answer::Revenue(v) => seen[4] |= v.iter().any(|r| r.refunds_minor > 0),
            Answer::Scores(s) => seen[5] |= s.learners > 1 && s.attempts > s.learners,
            Answer::AtRisk(v) => seen[6] |= v.len() > 1,
        }
    }
    assert_eq!(seen, [true; 7], "the generated stream exercises every endpoint");
}

// ---------------------------------------------------------------------------------------
// The sink through the broker.
// ---------------------------------------------------------------------------------------

/// Topic → partition → one past the last offset produced.
pub type Ends = BTreeMap<String, BTreeMap<i32, i64>>;

/// Partitions of each test topic (fewer than production keeps the test quick).
pub const PARTITIONS: i32 = 3;

/// Creates the sink's topics under `kafka`'s prefix.
pub async fn create_sink_topics(brokers: &str, kafka: &KafkaConfig) {
    let map = TopicsFile::bundled().topic_map(&kafka.topic_prefix);
    for topic in AnalyticsSink::topics(&map) {
        create_topic(brokers, &topic, PARTITIONS).await;
    }
}

/// Produces events in order and returns the end offset of every partition written.
pub async fn produce(producer: &Producer, events: &[Event]) -> Ends {
    let mut ends = Ends::new();
    for chunk in events.chunks(5_000) {
        let batch: Vec<_> = chunk.iter().map(|e| (e.clone(), None)).collect();
        let results = producer.send_events(&batch, OnQueueFull::Wait(Duration::from_secs(60))).await;
        for (e, r) in chunk.iter().zip(results) {
            let d = r.expect("test events are delivered");
            let topic = producer.topics().topic(e.domain()).to_owned();
            let end = ends.entry(topic).or_default().entry(d.partition).or_insert(0);
            *end = (*end).max(d.offset + 1);
        }
    }
    ends
}

/// Merges the ends of two productions.
pub fn merge_ends(a: &mut Ends, b: Ends) {
    for (topic, parts) in b {
        for (p, end) in parts {
            let e = a.entry(topic.clone()).or_default().entry(p).or_insert(0);
            *e = (*e).max(end);
        }
    }
}

/// Whether `group` has committed every partition up to its end.
pub fn committed_to_ends(brokers: &str, group: &str, ends: &Ends) -> bool {
    ends.iter().all(|(topic, parts)| {
        let got = crate::support::committed(brokers, group, topic, PARTITIONS);
        parts.iter().all(|(p, end)| got.get(p) == Some(end))
    })
}

/// Starts one member of the analytics group writing to `store`.
pub fn spawn_sink(
    kafka: &KafkaConfig,
    store: Arc<dyn AnalyticsStore>,
    producer: Arc<Producer>,
    metrics: Arc<BusMetrics>,
    shutdown: CancellationToken,
) -> Member {
    let map = TopicsFile::bundled().topic_map(&kafka.topic_prefix);
    let cfg = MemberConfig {
        kafka: kafka.clone(),
        consumer: fast_consumer(),
        group_id: kafka.group_id(AnalyticsSink::NAME),
        topics: AnalyticsSink::topics(&map),
        client_id: format!("analytics-test-{}", uuid::Uuid::new_v4().simple()),
    };
    Member::spawn(cfg, Arc::new(AnalyticsSink::new(store)), producer, metrics, shutdown).expect("spawn the analytics member")
}
