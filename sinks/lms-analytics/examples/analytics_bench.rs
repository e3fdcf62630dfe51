//! Benchmarks of the analytics side. Run them in release (`--release`): the debug profile
//! builds this crate without optimisation and measures that instead.
//!
//! - `sink`: events/s of the analytics sink (ClickHouse) against a no-op consumer in the
//!   same run, over the same produced events;
//! - `clickhouse`: p50/p95 latency of every analytics query over `LMS_BENCH_CH_EVENTS`
//!   (default 10 M) events in ClickHouse;
//! - `twin`: the same over `LMS_BENCH_TWIN_EVENTS` (default 1 M) events in the Parquet twin;
//! - `facts`: the CPU cost of mapping 200 000 events to rows, without any store.
//!
//! `cargo run --release -p lms-analytics --example analytics_bench -- [sink|clickhouse|twin|facts]...` with
//! the services of `cargo xtask services` (`LMS_TEST_KAFKA_BROKERS`,
//! `LMS_TEST_CLICKHOUSE_URL`), or `LMS_BENCH_BROKERS` / `LMS_BENCH_CLICKHOUSE_URL`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Duration as Span, NaiveDate, TimeZone, Utc};
use hdrhistogram::Histogram;
use lms_analytics::{
    AnalyticsSink, AnalyticsStore, AtRiskParams, ClickHouseConfig, ClickHouseStore, FunnelParams, Granularity, ParquetConfig, ParquetStore,
    RevenueParams, ScoresParams, SeriesParams,
};
use lms_bus::{
    Batch, BusMetrics, ConsumerConfig, KafkaConfig, Member, MemberConfig, OnQueueFull, ProcessError, Processor, Producer, TopicsFile,
    topics::TopicAdmin,
};
use lms_events::data::{
    AchievementUnlocked, AssessmentGraded, CourseCompleted, EnrollmentCreated, EnrollmentDropped, EnrollmentSource, LessonRef,
    PaymentRefunded, PaymentSucceeded, ProgressStatus, ProgressUpdated, VideoProgressed,
};
use lms_events::{Event, EventData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio_util::sync::CancellationToken;

const TENANTS: u64 = 10;
const COURSES: u64 = 20;
const LEARNERS: u64 = 50_000;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

fn env_num(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn year_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("time")
}

/// Synthetic event `i` (deterministic): a mix like a busy platform's.
fn event(i: u64) -> Event {
    let h = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let tenant = format!("tenant-{}", i % TENANTS);
    let learner = format!("learner-{}", (h >> 8) % LEARNERS);
    let course = format!("course-{}", (h >> 32) % COURSES);
    let time = year_start() + Span::seconds(((h >> 16) % (365 * 86_400)) as i64);
    let lesson = LessonRef { learner_id: learner.clone(), course_id: course.clone(), lesson_id: format!("lesson-{}", h % 12) };
    let data = match h % 100 {
        0..=24 => EventData::LessonStarted(lesson),
        25..=44 => EventData::LessonCompleted(lesson),
        45..=54 => EventData::VideoProgressed(VideoProgressed {
            learner_id: learner.clone(),
            course_id: course.clone(),
            lesson_id: lesson.lesson_id,
            position_s: 10.0,
            duration_s: 600.0,
            watched_s: 10.0,
        }),
        55..=64 => EventData::AssessmentGraded(AssessmentGraded {
            learner_id: learner.clone(),
            course_id: course.clone(),
            assessment_id: format!("quiz-{course}"),
            score: ((h >> 40) % 21) as f64,
            max_score: 20.0,
            attempt: 1,
        }),
        65..=74 => EventData::ProgressUpdated(ProgressUpdated {
            learner_id: learner.clone(),
            course_id: course.clone(),
            course_version: 1,
            lessons_completed: (h % 12) as u32,
            lessons_total: 12,
            percent_complete: ((h % 12) * 1000 / 12) as f64 / 10.0,
            status: ProgressStatus::InProgress,
            time_spent_s: 0.0,
            last_activity_at: Some(time),
            completed_at: None,
            revision: 1,
        }),
        75..=82 => EventData::EnrollmentCreated(EnrollmentCreated {
            learner_id: learner.clone(),
            course_id: course.clone(),
            source: EnrollmentSource::SelfService,
        }),
        83..=84 => EventData::EnrollmentDropped(EnrollmentDropped { learner_id: learner.clone(), course_id: course.clone() }),
        85..=87 => EventData::CourseCompleted(CourseCompleted {
            learner_id: learner.clone(),
            course_id: course.clone(),
            course_version: 1,
            completed_at: time,
        }),
        88..=92 => EventData::PaymentSucceeded(PaymentSucceeded {
            payment_id: format!("pay-{i}"),
            learner_id: learner.clone(),
            course_id: Some(course.clone()),
            amount_minor: 1_000 + (h % 9_000) as i64,
            currency: if h.is_multiple_of(3) { "USD" } else { "EUR" }.to_owned(),
        }),
        93..=94 => EventData::PaymentRefunded(PaymentRefunded {
            // Refunds the payment of an earlier event number (which may not be a payment).
            payment_id: format!("pay-{}", i.saturating_sub(1 + h % 1000)),
            amount_minor: 500,
            currency: "EUR".to_owned(),
        }),
        _ => EventData::AchievementUnlocked(AchievementUnlocked {
            learner_id: learner.clone(),
            achievement_id: format!("a-{}", h % 50),
            title: "Achievement".to_owned(),
            course_id: None,
            unlocked_at: time,
        }),
    };
    Event { specversion: "1.0".to_owned(), id: format!("e{i:09}"), source: "bench".to_owned(), time, subject: Some(learner), tenant, data }
}

/// Counts the events a processor finished; times the first and the last batch.
struct Counting {
    inner: Option<AnalyticsSink>,
    events: AtomicU64,
    first: std::sync::Mutex<Option<Instant>>,
    last: std::sync::Mutex<Option<Instant>>,
}

impl Counting {
    fn new(inner: Option<AnalyticsSink>) -> Self {
        Self { inner, events: AtomicU64::new(0), first: Default::default(), last: Default::default() }
    }
    fn rate(&self) -> f64 {
        let first = self.first.lock().expect("lock").expect("a batch");
        let last = self.last.lock().expect("lock").expect("a batch");
        self.events.load(Ordering::Relaxed) as f64 / (last - first).as_secs_f64().max(1e-9)
    }
}

#[async_trait]
impl Processor for Counting {
    fn name(&self) -> &str {
        if self.inner.is_some() { AnalyticsSink::NAME } else { "bench-noop" }
    }
    async fn process(&self, batch: &Batch) -> Result<(), ProcessError> {
        self.first.lock().expect("lock").get_or_insert_with(Instant::now);
        if let Some(sink) = &self.inner {
            sink.process(batch).await?;
        }
        self.events.fetch_add(batch.records.len() as u64, Ordering::Relaxed);
        *self.last.lock().expect("lock") = Some(Instant::now());
        Ok(())
    }
}

async fn run_member(kafka: &KafkaConfig, p: Arc<Counting>, producer: Arc<Producer>, n: u64) -> f64 {
    let map = TopicsFile::bundled().topic_map(&kafka.topic_prefix);
    let cfg = MemberConfig {
        kafka: kafka.clone(),
        consumer: ConsumerConfig { max_batch_records: 5_000, max_batch_wait_ms: 100, ..ConsumerConfig::default() },
        group_id: kafka.group_id(p.name()),
        topics: AnalyticsSink::topics(&map),
        client_id: format!("bench-{}", p.name()),
    };
    let shutdown = CancellationToken::new();
    let member = Member::spawn(cfg, p.clone(), producer, BusMetrics::standalone(), shutdown.clone()).expect("member");
    let deadline = Instant::now() + Duration::from_secs(1800);
    while p.events.load(Ordering::Relaxed) < n {
        assert!(Instant::now() < deadline, "{} consumed only {}", p.name(), p.events.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    shutdown.cancel();
    member.join().await.expect("member stops");
    p.rate()
}

async fn sink_bench(brokers: &str, ch_url: &str) {
    let n = env_num("LMS_BENCH_SINK_EVENTS", 200_000) as u64;
    let prefix = format!("bench{}.", std::process::id());
    let kafka = KafkaConfig::new(brokers).with_prefix(&prefix);
    let admin = TopicAdmin::new(&kafka).expect("admin");
    let plan = admin.plan(&TopicsFile::bundled(), &prefix, None, false).await.expect("plan");
    admin.apply(&plan).await.expect("apply topics");
    let producer =
        Arc::new(Producer::new(&kafka, TopicsFile::bundled().topic_map(&prefix), BusMetrics::standalone(), "bench").expect("producer"));
    let started = Instant::now();
    for chunk in (0..n).collect::<Vec<_>>().chunks(20_000) {
        let events: Vec<_> = chunk.iter().map(|i| (event(*i), None)).collect();
        for r in producer.send_events(&events, OnQueueFull::Wait(Duration::from_secs(60))).await {
            r.expect("delivered");
        }
    }
    println!("produced {n} events in {:.1} s", started.elapsed().as_secs_f64());
    let noop = run_member(&kafka, Arc::new(Counting::new(None)), producer.clone(), n).await;
    let store = ClickHouseStore::new(ClickHouseConfig::new(ch_url, format!("bench_sink_{}", std::process::id()))).expect("a store");
    store.migrate().await.expect("migrate");
    let sink = run_member(&kafka, Arc::new(Counting::new(Some(AnalyticsSink::new(Arc::new(store))))), producer, n).await;
    println!(
        "sink bench over {n} events: no-op consumer {noop:.0} events/s, analytics sink (ClickHouse) {sink:.0} events/s, ratio {:.2}",
        sink / noop
    );
}

async fn fill(store: &dyn AnalyticsStore, n: u64, chunk: u64) {
    let started = Instant::now();
    let mut i = 0;
    while i < n {
        let end = (i + chunk).min(n);
        let events: Vec<Event> = (i..end).map(event).collect();
        let refs: Vec<&Event> = events.iter().collect();
        store.insert(&refs).await.expect("insert");
        i = end;
        if i % 1_000_000 == 0 {
            println!("  {} events written ({:.0}/s)", i, i as f64 / started.elapsed().as_secs_f64());
        }
    }
    println!(
        "{}: wrote {n} events in {:.1} s ({:.0} events/s)",
        store.kind(),
        started.elapsed().as_secs_f64(),
        n as f64 / started.elapsed().as_secs_f64()
    );
}

async fn query_bench(store: &dyn AnalyticsStore, runs: usize) {
    let mut rng = StdRng::seed_from_u64(1);
    let names = ["active_learners", "enrollments", "completions", "funnel", "revenue", "scores", "at_risk"];
    println!("{} query latency over {runs} runs each (random tenant, course, 90-day range, granularity):", store.kind());
    for (k, name) in names.iter().enumerate() {
        let mut h = Histogram::<u64>::new(3).expect("histogram");
        for _ in 0..runs {
            let tenant = format!("tenant-{}", rng.random_range(0..TENANTS));
            let course = format!("course-{}", rng.random_range(0..COURSES));
            let from = NaiveDate::from_ymd_opt(2026, 1, 1).expect("date") + Span::days(rng.random_range(0..270));
            let granularity = [Granularity::Day, Granularity::Week, Granularity::Month][rng.random_range(0..3)];
            let course_id = rng.random_bool(0.5).then(|| course.clone());
            let s = SeriesParams { tenant: tenant.clone(), from, to: from + Span::days(89), granularity, course_id };
            let t = Instant::now();
            match k {
                0 => drop(store.active_learners(&s).await.expect("query")),
                1 => drop(store.enrollments(&s).await.expect("query")),
                2 => drop(store.completions(&s).await.expect("query")),
                3 => drop(store.funnel(&FunnelParams { tenant, course_id: course }).await.expect("query")),
                4 => drop(store.revenue(&RevenueParams { series: s, currency: None }).await.expect("query")),
                5 => drop(
                    store
                        .scores(&ScoresParams { tenant, assessment_id: format!("quiz-{course}"), range: None, course_id: None })
                        .await
                        .expect("query"),
                ),
                _ => drop(
                    store
                        .at_risk(&AtRiskParams {
                            tenant,
                            course_id: course,
                            inactive_days: 30,
                            as_of: year_start() + Span::days(200),
                            limit: 1000,
                        })
                        .await
                        .expect("query"),
                ),
            }
            h.record(t.elapsed().as_micros() as u64).expect("record");
        }
        println!(
            "  {name:16} p50 {:7.1} ms  p95 {:7.1} ms",
            h.value_at_quantile(0.5) as f64 / 1000.0,
            h.value_at_quantile(0.95) as f64 / 1000.0
        );
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let brokers = std::env::var("LMS_BENCH_BROKERS").unwrap_or_else(|_| env_or("LMS_TEST_KAFKA_BROKERS", "127.0.0.1:9092"));
    let ch_url = std::env::var("LMS_BENCH_CLICKHOUSE_URL").unwrap_or_else(|_| env_or("LMS_TEST_CLICKHOUSE_URL", "http://127.0.0.1:8123"));
    let runs = env_num("LMS_BENCH_QUERY_RUNS", 50);
    let what: Vec<String> = std::env::args().skip(1).collect();
    let all = what.is_empty();
    if what.iter().any(|w| w == "facts") {
        let events: Vec<Event> = (0..200_000).map(event).collect();
        let t = Instant::now();
        let f = lms_analytics::rows::Facts::from_events(&events);
        println!("facts of {} events in {:.2} s ({} raw rows)", events.len(), t.elapsed().as_secs_f64(), f.events.len());
        return;
    }
    if all || what.iter().any(|w| w == "sink") {
        sink_bench(&brokers, &ch_url).await;
    }
    if all || what.iter().any(|w| w == "clickhouse") {
        let n = env_num("LMS_BENCH_CH_EVENTS", 10_000_000) as u64;
        let store = ClickHouseStore::new(ClickHouseConfig::new(&ch_url, format!("bench_queries_{}", std::process::id()))).expect("a store");
        store.migrate().await.expect("migrate");
        fill(&store, n, 100_000).await;
        query_bench(&store, runs).await;
    }
    if all || what.iter().any(|w| w == "twin") {
        let n = env_num("LMS_BENCH_TWIN_EVENTS", 1_000_000) as u64;
        let dir = std::env::temp_dir().join(format!("lms-analytics-bench-{}", std::process::id()));
        let store = ParquetStore::open(ParquetConfig::new(&dir)).await.expect("open");
        store.migrate().await.expect("migrate");
        fill(&store, n, 10_000).await;
        query_bench(&store, runs).await;
        drop(store);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
