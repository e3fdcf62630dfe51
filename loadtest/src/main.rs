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
//!
//! `loadtest processors` measures a processor's rate with 1, 2, 4 … members against the
//! no-op processor on the same topics (see `procbench`); `loadtest chaos` runs the whole
//! pipeline while SIGKILLing processor processes and compares every read endpoint with the
//! oracle (see `loadtest::chaos`).
//!
//! `loadtest soak` ramps the write API to the pipeline's saturation, then holds half of
//! that rate while sampling RSS, lag and end-to-end freshness (see `loadtest::soak`).
//!
//! `loadtest notify` measures the notifications processor's decision rate against a no-op
//! consumer on the same topic, and the dispatcher's in-app and e-mail rates (see `notify`).

mod http;
mod import;
mod notify;
mod procbench;

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{TimeZone, Utc};
use clap::{Parser, Subcommand};
use lms_bus::{BusMetrics, ConsumerConfig, KafkaConfig, Member, MemberConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::{Domain, Event, EventData, LessonRef};
use lms_harness::create_topics;
use processors::noop::Noop;
use tokio_util::sync::CancellationToken;

/// The allocator of `lms` (see there), so that the in-process API costs what it does in `lms api`.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// `lms import` of an NDJSON file against the raw producer, same broker, same run.
    Import(import::ImportArgs),
    /// Notifications decided per second versus a no-op consumer, and the dispatcher's rates.
    Notify(notify::NotifyArgs),
    /// The whole pipeline as `lms` processes while processor instances are SIGKILLed at
    /// random; every read endpoint compared with the oracle (exit status 1 on a difference).
    Chaos(ChaosArgs),
    /// A processor's events/s with 1, 2, 4 … members versus the no-op processor on the same
    /// topics, with the broker's CPU share.
    Processors(procbench::ProcessorsArgs),
    /// Ramp to the max sustainable rate, then half of it for `--minutes` while sampling RSS,
    /// the progress lag and freshness; progress compared with the oracle at the end (exit
    /// status 1 when a goal fails).
    Soak(SoakArgs),
}

/// Options of `loadtest soak` (services from the environment `cargo xtask services` prints).
#[derive(Debug, clap::Args)]
struct SoakArgs {
    /// Bootstrap servers of the broker.
    #[arg(long, env = "LMS_TEST_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// PostgreSQL URL allowed to create databases (the run creates a fresh one).
    #[arg(long, env = "LMS_TEST_POSTGRES_URL")]
    postgres_url: String,
    /// ClickHouse HTTP URL (the run creates a fresh database).
    #[arg(long, env = "LMS_TEST_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// The `lms` binary (default: the one next to this binary).
    #[arg(long, env = "LMS_BIN")]
    lms_bin: Option<std::path::PathBuf>,
    /// What the processor process runs (comma-separated; catalog and progress required).
    #[arg(long, value_delimiter = ',', default_value = "catalog,progress,achievements,notifications,analytics")]
    processors: Vec<String>,
    /// Processor processes.
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Ramp to saturation first (the default; `--rate` skips it).
    #[arg(long, conflicts_with = "rate")]
    ramp: bool,
    /// Steady rate in events/s, without a ramp.
    #[arg(long)]
    rate: Option<f64>,
    /// The ramp's first rate (events/s).
    #[arg(long, default_value_t = 200.0)]
    start_rate: f64,
    /// Each ramp step offers this times the previous rate.
    #[arg(long, default_value_t = 1.5)]
    step_factor: f64,
    /// Seconds per ramp step.
    #[arg(long, default_value_t = 15)]
    step_secs: u64,
    /// Most ramp steps.
    #[arg(long, default_value_t = 30)]
    max_steps: usize,
    /// Minutes of the steady phase.
    #[arg(long, default_value_t = 30.0)]
    minutes: f64,
    /// Seconds between two samples of the steady phase.
    #[arg(long, default_value_t = 10)]
    sample_secs: u64,
    /// Events per POST.
    #[arg(long, default_value_t = 100)]
    batch_size: usize,
    /// Concurrent POSTs.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// One `lesson.completed` in this many accepted events is timed until visible.
    #[arg(long, default_value_t = 50)]
    probe_every: u64,
    /// Probes polling at the same time (more are skipped and counted).
    #[arg(long, default_value_t = 8)]
    probe_concurrency: usize,
    /// Cohort seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Tenants of each round's cohort.
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Courses per tenant.
    #[arg(long, default_value_t = 4)]
    courses: usize,
    /// Learners per tenant and round (each round brings new learners).
    #[arg(long, default_value_t = 100)]
    learners: usize,
    /// Weeks of each round's period.
    #[arg(long, default_value_t = 6)]
    weeks: u32,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Every process produces one record per batch (tansu's memory engine skips records
    /// when a consumer resumes inside a batch; without restarts batching is safe).
    #[arg(long)]
    one_record_per_batch: bool,
    /// An extra librdkafka property of every `lms` process, `key=value` (repeatable; for
    /// example `fetch.wait.max.ms=50`).
    #[arg(long = "kafka-property", value_parser = parse_property)]
    kafka_properties: Vec<(String, String)>,
    /// Where the processes' logs go.
    #[arg(long, default_value = "lms-data/soak")]
    log_dir: std::path::PathBuf,
}

/// Options of `loadtest chaos` (services from the environment `cargo xtask services` prints).
#[derive(Debug, clap::Args)]
struct ChaosArgs {
    /// Bootstrap servers of the broker.
    #[arg(long, env = "LMS_TEST_KAFKA_BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// Let the processes batch records (by default each produces one record per batch, as
    /// tansu's memory engine skips records when a consumer resumes inside a stored batch).
    #[arg(long)]
    batches: bool,
    /// PostgreSQL URL allowed to create databases (the run creates a fresh one).
    #[arg(long, env = "LMS_TEST_POSTGRES_URL")]
    postgres_url: String,
    /// ClickHouse HTTP URL (the run creates a fresh database).
    #[arg(long, env = "LMS_TEST_CLICKHOUSE_URL", default_value = "http://127.0.0.1:8123")]
    clickhouse_url: String,
    /// The `lms` binary (default: the one next to this binary).
    #[arg(long, env = "LMS_BIN")]
    lms_bin: Option<std::path::PathBuf>,
    /// SIGKILLs to deliver.
    #[arg(long, default_value_t = 20)]
    kills: usize,
    /// Shortest delay between two kills (ms).
    #[arg(long, default_value_t = 500)]
    kill_min_ms: u64,
    /// Longest delay between two kills (ms).
    #[arg(long, default_value_t = 3000)]
    kill_max_ms: u64,
    /// Processor processes.
    #[arg(long, default_value_t = 2)]
    instances: usize,
    /// Cohort seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Tenants of the cohort.
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Courses per tenant.
    #[arg(long, default_value_t = 4)]
    courses: usize,
    /// Learners per tenant.
    #[arg(long, default_value_t = 150)]
    learners: usize,
    /// Weeks of the cohort's period.
    #[arg(long, default_value_t = 6)]
    weeks: u32,
    /// Where the processes' logs go.
    #[arg(long, default_value = "lms-data/chaos")]
    log_dir: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bus { brokers, events, partitions, members } => bus(&brokers, events, partitions, members).await,
        Command::Http(args) => http::run(args).await,
        Command::Import(args) => import::run(args).await,
        Command::Notify(args) => notify::run(args).await,
        Command::Chaos(args) => chaos(args).await,
        Command::Processors(args) => procbench::run(args).await,
        Command::Soak(args) => soak(args).await,
    }
}

fn parse_property(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

async fn soak(args: SoakArgs) -> anyhow::Result<()> {
    let lms_bin = match args.lms_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("lms"),
    };
    anyhow::ensure!(
        args.minutes > 0.0 && args.step_secs > 0 && args.sample_secs > 0,
        "--minutes, --step-secs and --sample-secs must be positive"
    );
    let mut cfg = loadtest::soak::SoakConfig::new(lms_bin, args.brokers, args.postgres_url, args.clickhouse_url);
    cfg.processors = args.processors;
    cfg.services.instances = args.instances;
    cfg.rate = args.rate;
    cfg.start_rate = args.start_rate;
    cfg.step_factor = args.step_factor;
    cfg.step = Duration::from_secs(args.step_secs);
    cfg.max_steps = args.max_steps;
    cfg.steady = Duration::from_secs_f64(args.minutes * 60.0);
    cfg.sample = Duration::from_secs(args.sample_secs);
    cfg.batch_size = args.batch_size;
    cfg.concurrency = args.concurrency;
    cfg.probe_every = args.probe_every;
    cfg.probe_concurrency = args.probe_concurrency;
    cfg.cohort.seed = args.seed;
    cfg.cohort.tenants = args.tenants;
    cfg.cohort.courses = args.courses;
    cfg.cohort.learners = args.learners;
    cfg.cohort.weeks = args.weeks;
    cfg.services.partitions = args.partitions;
    cfg.services.one_record_per_batch = args.one_record_per_batch;
    cfg.kafka_properties = args.kafka_properties;
    cfg.services.log_dir = args.log_dir;
    cfg.verbose = true;
    let report = loadtest::soak::run(&cfg).await?;
    println!("{}", report.display(cfg.probe_timeout));
    if !report.ok(cfg.probe_timeout) {
        std::process::exit(1);
    }
    Ok(())
}

async fn chaos(args: ChaosArgs) -> anyhow::Result<()> {
    let lms_bin = match args.lms_bin {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("lms"),
    };
    let mut cfg = loadtest::chaos::ChaosConfig::new(lms_bin, args.brokers, args.postgres_url, args.clickhouse_url);
    cfg.kills = args.kills;
    cfg.kill_delay_ms = (args.kill_min_ms, args.kill_max_ms);
    cfg.services.instances = args.instances;
    cfg.cohort.seed = args.seed;
    cfg.cohort.tenants = args.tenants;
    cfg.cohort.courses = args.courses;
    cfg.cohort.learners = args.learners;
    cfg.cohort.weeks = args.weeks;
    cfg.services.log_dir = args.log_dir;
    cfg.services.one_record_per_batch = !args.batches;
    cfg.verbose = true;
    let report = loadtest::chaos::run(&cfg).await?;
    println!("{report}");
    if !report.ok() {
        std::process::exit(1);
    }
    Ok(())
}

async fn bus(brokers: &str, n: usize, partitions: i32, members: usize) -> anyhow::Result<()> {
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let kafka = KafkaConfig::new(brokers).with_prefix(&prefix);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    let topic = topics.topic(Domain::Learning).to_owned();
    create_topics(brokers, &[(topic.as_str(), partitions), (topics.topic(Domain::DeadLetter), 1)]).await?;
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
