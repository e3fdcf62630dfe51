//! `loadtest`: drives running services and prints rates. Not a test: numbers, not
//! pass/fail.
//!
//! `loadtest bus` measures the two limits every later figure is compared with, against
//! the broker you point it at: the raw producer rate (the pipeline's producer: idempotent,
//! `acks=all`, many records in flight) and the rate of a consumer group running the no-op
//! processor (the bus's own cost: fetch, decode, batch, commit).
//!
//! `loadtest http` drives the write API (batch and single-event posts) and prints its
//! rates and latencies next to the raw producer rate against the same broker (see `http`).

mod http;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::{Parser, Subcommand};
use lms_bus::{BusMetrics, ConsumerConfig, KafkaConfig, Member, MemberConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::{Domain, Event, EventData, LessonRef};
use processors::noop::Noop;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use tokio_util::sync::CancellationToken;

/// Benchmarks against running services.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Raw producer rate and no-op consumer-group rate against a broker.
    Bus {
        /// Bootstrap servers of the broker under test.
        #[arg(long, env = "LMS_KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Events to produce and consume.
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Partitions of the benchmark topic.
        #[arg(long, default_value_t = 8)]
        partitions: i32,
        /// Consumer-group members running the no-op processor.
        #[arg(long, default_value_t = 1)]
        members: usize,
    },
    /// The write API's batch and single-event rates and latencies, next to the raw producer.
    Http(http::HttpArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bus { brokers, events, partitions, members } => bus(&brokers, events, partitions, members).await,
        Command::Http(args) => http::run(args).await,
    }
}

async fn bus(brokers: &str, n: usize, partitions: i32, members: usize) -> anyhow::Result<()> {
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let kafka = KafkaConfig::new(brokers).with_prefix(&prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let topic = topics.topic(Domain::Learning).to_owned();
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new().set("bootstrap.servers", brokers).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for (t, p) in [(topic.as_str(), partitions), (topics.topic(Domain::DeadLetter), 1)] {
        for r in admin.create_topics([&NewTopic::new(t, p, TopicReplication::Fixed(1))], &opts).await? {
            r.map_err(|(t, e)| anyhow::anyhow!("creating {t}: {e}"))?;
        }
    }
    println!("broker {brokers}, topic {topic} ({partitions} partitions), {n} events of ~{} bytes", sample_size());

    let metrics = BusMetrics::standalone();
    let producer = Arc::new(Producer::new(&kafka, topics.clone(), metrics.clone(), "loadtest")?);
    let events: Vec<(Event, Option<lms_events::TraceContext>)> = (0..n).map(|i| (event(i), None)).collect();
    let started = Instant::now();
    let mut done = 0;
    let mut last_report = Instant::now();
    for chunk in events.chunks(50_000) {
        let failed = producer.send_events(chunk, OnQueueFull::Wait(Duration::from_secs(60))).await.iter().filter(|r| r.is_err()).count();
        anyhow::ensure!(failed == 0, "{failed} records were not acknowledged");
        done += chunk.len();
        if last_report.elapsed() > Duration::from_secs(1) {
            println!("  produced {done}/{n}");
            last_report = Instant::now();
        }
    }
    let produce_rate = n as f64 / started.elapsed().as_secs_f64();
    println!("raw producer:      {produce_rate:>10.0} events/s (acks=all, idempotent, lz4)");

    let noop = Arc::new(Noop::default());
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let mut running = Vec::new();
    for i in 0..members.max(1) {
        let cfg = MemberConfig {
            kafka: kafka.clone(),
            consumer: ConsumerConfig::default(),
            group_id: kafka.group_id("noop"),
            topics: vec![topic.clone()],
            client_id: format!("loadtest-noop-{i}"),
        };
        running.push(Member::spawn(cfg, noop.clone(), producer.clone(), metrics.clone(), shutdown.clone())?);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    while (noop.events() as usize) < n {
        anyhow::ensure!(Instant::now() < deadline, "consumed only {} of {n} in 10 minutes", noop.events());
        tokio::time::sleep(Duration::from_millis(100)).await;
        if last_report.elapsed() > Duration::from_secs(1) {
            println!("  consumed {}/{n}", noop.events());
            last_report = Instant::now();
        }
    }
    let consume_rate = n as f64 / started.elapsed().as_secs_f64();
    shutdown.cancel();
    for m in running {
        m.join().await?;
    }
    println!("no-op consumer:    {consume_rate:>10.0} events/s ({members} member(s), group join included)");
    Ok(())
}

fn event(i: usize) -> Event {
    let learner = format!("learner-{}", i % 10_000);
    Event {
        specversion: "1.0".to_owned(),
        id: format!("bench-{i:09}"),
        source: "loadtest".to_owned(),
        time: Utc.timestamp_opt(1_790_000_000 + i as i64, 0).single().unwrap_or_default(),
        subject: Some(learner.clone()),
        tenant: "bench".to_owned(),
        data: EventData::LessonCompleted(LessonRef {
            learner_id: learner,
            course_id: format!("course-{}", i % 50),
            lesson_id: format!("lesson-{}", i % 40),
        }),
    }
}

fn sample_size() -> usize {
    lms_events::codec::encode(&event(0)).len()
}
