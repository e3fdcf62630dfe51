//! `lms demo`: the pipeline in one process with nothing installed.
//!
//! Today it runs the bus end to end: an in-process Kafka cluster (librdkafka's mock
//! cluster, so the very same producer and consumer code runs), every topic of
//! topics.yaml, a deterministic synthetic event stream produced through the shared
//! producer, and a consumer group of the no-op processor. The processors with state, the
//! APIs and the dashboard join it as they are built.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::Args;
use lms_bus::{BusMetrics, ConsumerConfig, KafkaConfig, Member, MemberConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::{
    AssessmentGraded, Domain, EnrollmentCreated, EnrollmentSource, Event, EventData, LessonRef, VideoProgressed,
};
use processors::noop::Noop;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

/// Options of `lms demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// How many events to generate.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Seed of the event generator: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Consumer-group members sharing the partitions.
    #[arg(long, default_value_t = 2)]
    members: usize,
}

pub async fn run(args: DemoArgs) -> anyhow::Result<()> {
    println!("lms demo: the lms-pipeline bus in one process, nothing installed.");
    println!("  broker     in-process Kafka (librdkafka mock cluster), in memory: nothing survives a restart");
    println!("  topics     every topic of topics.yaml");
    println!("  producer   the pipeline's producer (idempotent, acks=all, lz4)");
    println!("  consumers  {} member(s) of the group lms-noop, the baseline processor", args.members);
    println!("  not yet    progress/achievement/notification/analytics processors, the HTTP APIs and the dashboard");
    println!();

    let mock = MockCluster::new(1)?;
    let file = TopicsFile::bundled();
    for t in &file.topics {
        mock.create_topic(&t.name, t.partitions, 1)?;
    }
    let kafka = KafkaConfig::new(mock.bootstrap_servers());
    let topics = file.topic_map("");
    let metrics = BusMetrics::standalone();
    let producer = Arc::new(Producer::new(&kafka, topics.clone(), metrics.clone(), "lms-demo")?);
    let noop = Arc::new(Noop::default());
    let shutdown = CancellationToken::new();
    let mut members = Vec::new();
    for i in 0..args.members.max(1) {
        let cfg = MemberConfig {
            kafka: kafka.clone(),
            consumer: ConsumerConfig::default(),
            group_id: kafka.group_id("noop"),
            topics: [Domain::Learning, Domain::Enrollment, Domain::Catalog].iter().map(|d| topics.topic(*d).to_owned()).collect(),
            client_id: format!("lms-demo-noop-{i}"),
        };
        members.push(Member::spawn(cfg, noop.clone(), producer.clone(), metrics.clone(), shutdown.clone())?);
    }

    let started = Instant::now();
    let events = generate(args.seed, args.events);
    let mut sent = 0;
    for chunk in events.chunks(20_000) {
        let batch: Vec<_> = chunk.iter().map(|e| (e.clone(), None)).collect();
        let failed = producer.send_events(&batch, OnQueueFull::Wait(Duration::from_secs(30))).await.iter().filter(|r| r.is_err()).count();
        anyhow::ensure!(failed == 0, "{failed} events could not be produced");
        sent += chunk.len();
        println!("produced {sent:>8} / {} events ({:.0}/s)", events.len(), sent as f64 / started.elapsed().as_secs_f64());
    }
    let produced_in = started.elapsed();

    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let done = noop.events();
        println!("consumed {done:>8} / {} events", events.len());
        if done as usize >= events.len() {
            break;
        }
        tokio::select! {
            _ = &mut stop => { println!("interrupted"); break; }
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
    let total = started.elapsed();
    shutdown.cancel();
    for m in members {
        m.join().await?;
    }
    println!();
    println!("events by type:");
    for (t, n) in noop.by_type() {
        println!("  {t:<20} {n:>8}");
    }
    println!(
        "produced {} events in {:.2}s; all consumed after {:.2}s ({:.0} events/s end to end)",
        events.len(),
        produced_in.as_secs_f64(),
        total.as_secs_f64(),
        events.len() as f64 / total.as_secs_f64()
    );
    Ok(())
}

/// A small deterministic cohort: enrollments, lesson starts and completions, video
/// progress and graded assessments over a few courses.
fn generate(seed: u64, n: usize) -> Vec<Event> {
    let mut rng = StdRng::seed_from_u64(seed);
    let t0 = Utc.with_ymd_and_hms(2026, 9, 1, 8, 0, 0).single().unwrap_or_default();
    let mut out = Vec::with_capacity(n);
    let mut i = 0u64;
    while out.len() < n {
        i += 1;
        let learner = format!("learner-{}", rng.random_range(0..2_000));
        let course = format!("course-{}", rng.random_range(0..8));
        let lesson = format!("{course}-lesson-{}", rng.random_range(0..12));
        let data = match rng.random_range(0..100) {
            0..5 => EventData::EnrollmentCreated(EnrollmentCreated {
                learner_id: learner.clone(),
                course_id: course,
                source: EnrollmentSource::SelfService,
            }),
            5..35 => EventData::LessonStarted(LessonRef { learner_id: learner.clone(), course_id: course, lesson_id: lesson }),
            35..60 => EventData::LessonCompleted(LessonRef { learner_id: learner.clone(), course_id: course, lesson_id: lesson }),
            60..90 => EventData::VideoProgressed(VideoProgressed {
                learner_id: learner.clone(),
                course_id: course,
                lesson_id: lesson,
                position_s: rng.random_range(0.0..600.0),
                duration_s: 600.0,
                watched_s: rng.random_range(0.0..120.0),
            }),
            _ => EventData::AssessmentGraded(AssessmentGraded {
                learner_id: learner.clone(),
                course_id: course.clone(),
                assessment_id: format!("{course}-quiz"),
                score: rng.random_range(0..=10) as f64,
                max_score: 10.0,
                attempt: rng.random_range(1..=3),
            }),
        };
        out.push(Event {
            specversion: "1.0".to_owned(),
            id: format!("demo-{seed}-{i}"),
            source: "lms-demo".to_owned(),
            time: t0 + chrono::Duration::seconds(i as i64 * 7),
            subject: Some(learner),
            tenant: "demo".to_owned(),
            data,
        });
    }
    out
}
