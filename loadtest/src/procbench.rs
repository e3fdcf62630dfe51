//! `loadtest processors`: a processor's throughput with 1, 2, 4 … members in one group,
//! next to the no-op processor on the same topics in the same run, with the CPU the broker
//! and this process used meanwhile.
//!
//! A generated cohort (`lms_generator::Cohort`) is produced once to fresh topics; the
//! catalog processor loads the catalog into a fresh database (not measured). Then, for each
//! member count k: the no-op group reads the processor's topics to their end, then the
//! processor's group (members in this process, as `lms processor run --instances k` runs
//! them; a fresh database and group each time) processes them until its stored offsets
//! reach the end. CPU shares come from `/proc/<pid>/stat` (user + system time) before and
//! after each measurement: the broker's (found by its listener address) and this
//! process's (the members and the relay).
//!
//! With `--poison-percent P`, the same cohort also goes to a second set of topics with P %
//! poison records written between its events (undecodable bytes, an unknown type, an event
//! breaking the invariants, in turn), and the processor runs there too: the table then shows
//! the valid events per second next to the clean run's, and the drop (issue 9: < 10 % at 1 %)
//! against the mean of two clean runs, one before and one after the poisoned one.
//!
//! Each measurement gets a fresh database, dropped afterwards, and starts after a
//! `CHECKPOINT`, so it does not share PostgreSQL with its predecessor's autovacuum and
//! dirty pages.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use clap::Args;
use lms_bus::{
    BusMetrics, ConsumerConfig, KafkaConfig, Member, MemberConfig, OnQueueFull, OutRecord, Producer, TopicMap, TopicPartition, TopicsFile,
};
use lms_events::{Domain, Event};
use lms_generator::{Cohort, CohortConfig};
use lms_state::Store;
use processors::achievements::rules::Rules;
use processors::noop::Noop;
use processors::runtime::{self, Plumbing};
use tokio_util::sync::CancellationToken;

/// Options of `loadtest processors`.
#[derive(Debug, Args)]
pub struct ProcessorsArgs {
    /// Bootstrap servers of the broker under test.
    #[arg(long, env = "LMS_KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// A PostgreSQL URL on whose server fresh databases are created.
    #[arg(long, env = "LMS_TEST_POSTGRES_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    postgres: String,
    /// The processors to measure, comma-separated (store-backed ones: progress,
    /// achievements, notifications, catalog), each against the no-op on the same topics.
    #[arg(long = "processors", alias = "processor", value_delimiter = ',', default_value = "progress")]
    processors: Vec<String>,
    /// The workload: `cohort` (the generator's learners over 8 weeks: a batch touches few
    /// learner-course pairs) or `wide` (`--events` lesson completions spread over `--learners`
    /// learners × `--courses` courses of `--lessons` lessons, each pair enrolled at its first
    /// event: every event is another learner, as on a large platform).
    #[arg(long, value_enum, default_value_t = Shape::Cohort)]
    shape: Shape,
    /// `wide`: courses.
    #[arg(long, default_value_t = 20)]
    courses: usize,
    /// `wide`: lessons per course.
    #[arg(long, default_value_t = 10)]
    lessons: usize,
    /// `wide`: lesson completions.
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// `wide`: how events spread over learners: `uniform`, or `skewed` (a tenth of the
    /// learners get about half of the events).
    #[arg(long, value_enum, default_value_t = Spread::Uniform)]
    spread: Spread,
    /// Member counts to measure, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4")]
    instances: Vec<usize>,
    /// Learners: per tenant of the generated cohort (about 330 events each over 8 weeks), or
    /// in all for `--shape wide`.
    #[arg(long, default_value_t = 300)]
    learners: usize,
    /// Tenants of the cohort.
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Partitions of each topic.
    #[arg(long, default_value_t = 4)]
    partitions: i32,
    /// Process id of the broker (default: the process listening on `--brokers`).
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Also run on a copy of the topics with this percentage of poison records among the
    /// events (e.g. 1), and report the valid events' rate against the clean run.
    #[arg(long, default_value_t = 0.0)]
    poison_percent: f64,
}

/// The workload's shape (`--shape`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// The generator's cohort.
    Cohort,
    /// Lesson completions spread over many learner-course pairs.
    Wide,
}

/// How a wide workload's events spread over learners (`--spread`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Spread {
    /// Every learner equally likely.
    Uniform,
    /// Learner `⌊n·u³⌋` for uniform `u`: the first tenth of the learners get about half.
    Skewed,
}

/// The wide workload: the courses, then `events` lesson completions in time order, each
/// learner-course pair enrolled just before its first completion.
fn wide_events(args: &ProcessorsArgs, now: DateTime<Utc>) -> Vec<Event> {
    use rand::{Rng, SeedableRng};
    use serde_json::json;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let start = now - chrono::Duration::days(30);
    let tenant = "wide";
    let event = |id: String, kind: &str, at: DateTime<Utc>, data: serde_json::Value| {
        let v = json!({"specversion": "1.0", "id": id, "type": kind, "source": "loadtest", "time": at.to_rfc3339(), "data": data});
        lms_events::parse_client_event(&v, tenant).expect("a valid generated event")
    };
    let mut out = Vec::with_capacity(args.events + args.courses);
    for c in 0..args.courses {
        let lessons: Vec<String> = (0..args.lessons).map(|l| format!("l{l}")).collect();
        let modules = json!([{"module_id": "m1", "lessons": lessons}]);
        out.push(event(
            format!("course-{c}"),
            "course.published",
            start,
            json!({"course_id": format!("c{c}"), "title": format!("Course {c}"), "version": 1, "modules": modules}),
        ));
    }
    let mut enrolled = std::collections::HashSet::new();
    let learners = args.learners.max(1);
    for i in 0..args.events {
        let u: f64 = rng.random();
        let learner = match args.spread {
            Spread::Uniform => rng.random_range(0..learners),
            Spread::Skewed => ((learners as f64) * u * u * u) as usize % learners,
        };
        let course = rng.random_range(0..args.courses.max(1));
        let lesson = rng.random_range(0..args.lessons.max(1));
        let at = start + chrono::Duration::milliseconds(i as i64 * 10);
        let (l, c) = (format!("learner-{learner}"), format!("c{course}"));
        if enrolled.insert((learner, course)) {
            out.push(event(
                format!("enr-{learner}-{course}"),
                "enrollment.created",
                at,
                json!({"learner_id": l, "course_id": c, "source": "self"}),
            ));
        }
        out.push(event(
            format!("done-{i}"),
            "lesson.completed",
            at,
            json!({"learner_id": l, "course_id": c, "lesson_id": format!("l{lesson}")}),
        ));
    }
    out
}

/// Poison record number `n`, in the topic and under the key of `e`: undecodable bytes, an
/// unknown event type, or an event whose learner id is empty (an invariant), in turn.
fn poison(n: usize, e: &Event, topic: &str) -> OutRecord {
    let payload = match n % 3 {
        0 => b"{\"specversion\": \"1.0\", not json".to_vec(),
        1 => serde_json::to_vec(&serde_json::json!({"specversion": "1.0", "id": format!("poison-{n}"), "type": "lesson.exploded",
            "source": "loadtest", "time": "2026-01-01T00:00:00Z", "tenant": e.tenant, "data": {}}))
        .unwrap_or_default(),
        _ => {
            let mut bad = e.clone();
            bad.id = String::new();
            lms_events::codec::encode(&bad)
        }
    };
    let headers = vec![("content-type".to_owned(), lms_events::codec::CONTENT_TYPE.as_bytes().to_vec())];
    OutRecord { topic: topic.to_owned(), key: e.learner_id().map(|l| l.as_bytes().to_vec()), payload, headers }
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = stat.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// The process whose command line names `tcp://<brokers>` (tansu's listener URL).
fn broker_pid(brokers: &str) -> Option<u32> {
    let needle = format!("tcp://{}", brokers.split(',').next()?);
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
        String::from_utf8_lossy(&cmd).contains(&needle).then_some(pid)
    })
}

/// CPU seconds of every local PostgreSQL process (the server and its backends, by command
/// name), so the figures say how much of the machine the store took. A remote server shows 0.
fn postgres_cpu_seconds() -> f64 {
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    dir.flatten()
        .filter(|e| std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres"))
        .filter_map(|e| cpu_seconds(e.file_name().to_str()?))
        .sum()
}

/// CPU use over a measurement.
struct Cpu {
    broker: Option<(String, f64)>,
    own: f64,
    postgres: f64,
    started: Instant,
}

impl Cpu {
    fn start(broker: Option<u32>) -> Cpu {
        let broker = broker.and_then(|p| Some((p.to_string(), cpu_seconds(&p.to_string())?)));
        Cpu { broker, own: cpu_seconds("self").unwrap_or(0.0), postgres: postgres_cpu_seconds(), started: Instant::now() }
    }

    /// (broker, this process, PostgreSQL) CPU in cores over the elapsed time. Backends that
    /// started meanwhile count whole; none ends during a measurement (the pool stays open).
    fn shares(&self) -> (Option<f64>, f64, f64) {
        let wall = self.started.elapsed().as_secs_f64();
        let broker = self.broker.as_ref().and_then(|(p, before)| Some((cpu_seconds(p)? - before) / wall));
        (broker, (cpu_seconds("self").unwrap_or(0.0) - self.own) / wall, (postgres_cpu_seconds() - self.postgres).max(0.0) / wall)
    }
}

async fn fresh_db(base: &str, tag: &str) -> anyhow::Result<(String, String)> {
    let name = format!("bench_{tag}_{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    Ok((lms_state::create_postgres_database(base, &name).await?, name))
}

/// Drops a measurement's database, so the next measurement does not share the server with
/// its autovacuum (the next one's [`checkpoint`] writes out its dirty pages).
async fn drop_db(base: &str, name: &str) -> anyhow::Result<()> {
    let admin = Store::connect(base, 2).await?;
    // FORCE (PostgreSQL 13+): the measured members' pool may still be closing its connections.
    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).execute(admin.pool()).await?;
    admin.close().await;
    Ok(())
}

/// `CHECKPOINT`, when the role may (a superuser or `pg_checkpoint`); otherwise says so.
async fn checkpoint(store: &Store) {
    if let Err(e) = sqlx::query("CHECKPOINT").execute(store.pool()).await {
        println!("(CHECKPOINT refused, so a measurement may share the server with its predecessor's writes: {e})");
    }
}

type Ends = BTreeMap<TopicPartition, i64>;

/// Waits until the group's stored offsets reach `ends`, handing each poll's records done
/// (the stored offsets summed over `ends`) to `each`.
async fn wait_stored(store: &Store, group: &str, ends: &Ends, mut each: impl FnMut(i64)) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(1800);
    loop {
        let stored = lms_state::offsets::load(store, group).await?;
        let at = |tp: &TopicPartition| stored.get(tp).copied().unwrap_or(0);
        each(ends.keys().map(at).sum());
        if ends.iter().all(|(tp, end)| at(tp) >= *end) {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "group {group} did not reach the end in 30 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One copy of the cohort on its own topics.
struct Produced {
    prefix: String,
    topics: TopicMap,
    producer: Arc<Producer>,
    /// End offsets per domain.
    ends: BTreeMap<&'static str, Ends>,
    /// The end offsets of the processor's topics.
    wanted: Ends,
    /// Records on the processor's topics (poison included).
    records: i64,
    /// Poison records among them.
    poison: i64,
}

/// What every measurement shares.
struct Bench {
    reg: &'static processors::Registered,
    rules: Arc<Rules>,
    consumer: ConsumerConfig,
    metrics: Arc<BusMetrics>,
}

/// Produces `events` to fresh topics, with a poison record after every `poison_every`-th
/// event of the processor's topics when asked.
async fn produce(
    args: &ProcessorsArgs,
    reg: &processors::Registered,
    metrics: &Arc<BusMetrics>,
    events: &[(Event, Option<lms_events::TraceContext>)],
    poison_every: Option<usize>,
) -> anyhow::Result<Produced> {
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let topics = TopicsFile::bundled().topic_map(&prefix);
    for d in Domain::ALL {
        lms_harness::create_topics(&args.brokers, &[(topics.topic(d), if d == Domain::DeadLetter { 1 } else { args.partitions })]).await?;
    }
    let kafka = KafkaConfig::new(&args.brokers).with_prefix(&prefix);
    let producer = Arc::new(Producer::new(&kafka, topics.clone(), Arc::clone(metrics), "loadtest-processors")?);
    let mut ends: BTreeMap<&'static str, Ends> = BTreeMap::new();
    let (mut poison, mut seen) = (0i64, 0usize);
    for chunk in events.chunks(20_000) {
        let mut out = Vec::with_capacity(chunk.len() + chunk.len() / 50);
        // The domain of each record, in `out`'s order: its topic and its entry in `ends`.
        let mut domains = Vec::with_capacity(out.capacity());
        for (e, trace) in chunk {
            out.push(producer.event_record(e, trace.as_ref()));
            domains.push(e.domain());
            if reg.domains.contains(&e.domain()) {
                seen += 1;
                if poison_every.is_some_and(|n| seen % n == 0) {
                    out.push(self::poison(poison as usize, e, topics.topic(e.domain())));
                    domains.push(e.domain());
                    poison += 1;
                }
            }
        }
        for (domain, r) in domains.into_iter().zip(producer.send(out, OnQueueFull::Wait(Duration::from_secs(60))).await) {
            let d = r?;
            let end = ends.entry(domain.as_str()).or_default().entry(TopicPartition::new(topics.topic(domain), d.partition)).or_insert(0);
            *end = (*end).max(d.offset + 1);
        }
    }
    let records: i64 = reg.domains.iter().flat_map(|d| ends.get(d.as_str()).into_iter().flatten()).map(|(_, e)| *e).sum();
    let wanted: Ends = reg.domains.iter().flat_map(|d| ends.get(d.as_str()).cloned().unwrap_or_default()).collect();
    Ok(Produced { prefix, topics, producer, ends, wanted, records, poison })
}

/// The processor's rate over `p` with `k` members (a fresh database with the catalog loaded
/// first): records per second, the broker's and this process's CPU, records processed, and
/// when the group formed.
async fn measure(args: &ProcessorsArgs, bench: &Bench, p: &Produced, k: usize, broker: Option<u32>) -> anyhow::Result<Measured> {
    let reg = bench.reg;
    let (url, db) = fresh_db(&args.postgres, &reg.name.replace('-', "_")).await?;
    let store = processors::open_store(&url, 16).await?;
    let run_kafka = KafkaConfig::new(&args.brokers).with_prefix(format!("{}k{k}-", p.prefix));
    let plumbing = Plumbing {
        kafka: run_kafka.clone(),
        consumer: bench.consumer.clone(),
        topics: p.topics.clone(),
        producer: Arc::clone(&p.producer),
        metrics: Arc::clone(&bench.metrics),
    };
    if reg.name != "catalog" {
        let (ctx, relay) = runtime::context(store.clone(), Arc::clone(&p.producer));
        let catalog = runtime::start(&plumbing, &ctx, relay, &[processors::lookup("catalog").map_err(anyhow::Error::msg)?], 1)?;
        wait_stored(&store, &run_kafka.group_id("catalog"), p.ends.get(Domain::Catalog.as_str()).unwrap_or(&Ends::new()), |_| {}).await?;
        catalog.stop().await?;
    }
    let (mut ctx, relay) = runtime::context(store.clone(), Arc::clone(&p.producer));
    ctx.extensions.insert(Arc::clone(&bench.rules));
    ctx.extensions.insert(Arc::new(processors::notifications::Settings::default()));
    checkpoint(&store).await;
    let cpu = Cpu::start(broker);
    let before = processors::cost::snapshot();
    let t = Instant::now();
    let running = runtime::start(&plumbing, &ctx, relay, &[reg], k)?;
    let mut formed = None;
    wait_stored(&store, &run_kafka.group_id(reg.name), &p.wanted, |done| {
        if formed.is_none() && running.members().all(|(_, m)| !m.assignment().is_empty()) {
            formed = Some(Formed { after: t.elapsed(), done: done as f64 / p.records as f64 });
        }
    })
    .await?;
    let rate = p.records as f64 / t.elapsed().as_secs_f64();
    let stages = stage_costs(reg.name, &before, &processors::cost::snapshot());
    let (broker_share, own, postgres) = cpu.shares();
    let reports = running.stop().await?;
    store.close().await;
    drop_db(&args.postgres, &db).await?;
    Ok(Measured { rate, broker_share, own, postgres, processed: reports.iter().map(|(_, r)| r.records).sum(), formed, stages })
}

/// When every member of a group first had partitions, and the share of the records done by
/// then: with several members, a short run can be mostly group formation (tansu 0.6.0
/// takes seconds to settle a group of 4), which the rate then measures rather than the
/// members.
#[derive(Clone, Copy)]
struct Formed {
    after: Duration,
    done: f64,
}

impl std::fmt::Display for Formed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.1} s, {:.0} % done", self.after.as_secs_f64(), self.done * 100.0)
    }
}

/// The batch stages of `processor` between two snapshots of `lms_batch_stage_seconds`:
/// (stage, seconds, batches), in the order of the transaction.
fn stage_costs(
    processor: &str,
    before: &BTreeMap<(String, String), (f64, u64)>,
    after: &BTreeMap<(String, String), (f64, u64)>,
) -> Vec<(String, f64, u64)> {
    const ORDER: [&str; 9] = ["offsets", "admit", "apply", "apply.locks", "apply.facts", "apply.recompute", "outbox", "gate", "commit"];
    let mut out: Vec<(String, f64, u64)> = after
        .iter()
        .filter(|((p, _), _)| p == processor)
        .map(|((p, stage), (sum, n))| {
            let (s0, n0) = before.get(&(p.clone(), stage.clone())).copied().unwrap_or((0.0, 0));
            (stage.clone(), sum - s0, n - n0)
        })
        .filter(|(_, _, n)| *n > 0)
        .collect();
    out.sort_by_key(|(stage, _, _)| ORDER.iter().position(|o| o == stage).unwrap_or(ORDER.len()));
    out
}

/// `offsets 0.41 ms (3 %), …`: mean per batch and share of the transaction's stages
/// (`apply.*` are parts of `apply`, shown as shares of it too).
fn show_stages(stages: &[(String, f64, u64)]) -> String {
    let total: f64 = stages.iter().filter(|(s, _, _)| !s.starts_with("apply.")).map(|(_, t, _)| t).sum();
    let batches = stages.iter().find(|(s, _, _)| s == "offsets").map_or(0, |(_, _, n)| *n);
    let parts: Vec<String> = stages
        .iter()
        .map(|(stage, t, n)| {
            format!("{stage} {:.2} ms ({:.0} %)", t * 1000.0 / (*n).max(1) as f64, t / total.max(f64::MIN_POSITIVE) * 100.0)
        })
        .collect();
    format!("{batches} batches: {}", parts.join(", "))
}

/// One processor measurement.
struct Measured {
    /// Time per batch stage: (stage, seconds, batches).
    stages: Vec<(String, f64, u64)>,
    rate: f64,
    broker_share: Option<f64>,
    own: f64,
    /// PostgreSQL's CPU, in cores.
    postgres: f64,
    processed: u64,
    formed: Option<Formed>,
}

/// Runs the benchmark: every processor of `--processors` on the same workload, then the
/// ratios side by side.
pub async fn run(args: ProcessorsArgs) -> anyhow::Result<()> {
    let metrics = BusMetrics::standalone();
    let now: DateTime<Utc> = DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z")?.to_utc();
    let events: Vec<(Event, Option<lms_events::TraceContext>)> = match args.shape {
        Shape::Cohort => {
            let cohort = Cohort::new(CohortConfig { tenants: args.tenants, learners: args.learners, now, ..CohortConfig::new(7) })?;
            cohort.map(|e| (e, None)).collect()
        }
        Shape::Wide => wide_events(&args, now).into_iter().map(|e| (e, None)).collect(),
    };
    let shape = match args.shape {
        Shape::Cohort => format!("cohort: {} tenants × {} learners over 8 weeks", args.tenants, args.learners),
        Shape::Wide => format!(
            "wide: {} lesson completions over {} learners × {} courses of {} lessons ({:?} spread)",
            args.events, args.learners, args.courses, args.lessons, args.spread
        ),
    };
    println!("workload {shape}: {} events", events.len());
    let mut summary = Vec::new();
    for name in &args.processors {
        let reg = processors::lookup(name).map_err(anyhow::Error::msg)?;
        println!();
        summary.extend(run_one(&args, reg, &metrics, &events).await?.into_iter().map(|(k, ratio)| (reg.name, k, ratio)));
    }
    println!();
    println!("ratio to the no-op on the same topics, workload {shape}:");
    for (name, k, ratio) in summary {
        println!("  {name:<14} k={k}: {ratio:.2}×");
    }
    Ok(())
}

/// One processor's table; returns its ratio to the no-op per member count.
async fn run_one(
    args: &ProcessorsArgs,
    reg: &'static processors::Registered,
    metrics: &Arc<BusMetrics>,
    events: &[(Event, Option<lms_events::TraceContext>)],
) -> anyhow::Result<Vec<(usize, f64)>> {
    let started = Instant::now();
    let clean = produce(args, reg, metrics, events, None).await?;
    let (prefix, topics, producer, records) = (clean.prefix.clone(), clean.topics.clone(), Arc::clone(&clean.producer), clean.records);
    let read: Vec<Domain> = reg.domains.to_vec();
    println!(
        "broker {}, {} events produced in {:.1} s ({} partitions per topic); {} reads {} records of {:?}",
        args.brokers,
        events.len(),
        started.elapsed().as_secs_f64(),
        args.partitions,
        reg.name,
        records,
        read.iter().map(|d| d.as_str()).collect::<Vec<_>>()
    );
    let poisoned = if args.poison_percent > 0.0 {
        let every = (100.0 / args.poison_percent).round().max(1.0) as usize;
        let p = produce(args, reg, metrics, events, Some(every)).await?;
        println!("the same events with {} poison records (one per {every}) on {}*", p.poison, p.prefix);
        Some(p)
    } else {
        None
    };
    let poison_records = poisoned.as_ref().map_or(0, |p| p.poison);
    let broker = args.broker_pid.or_else(|| broker_pid(&args.brokers));
    if broker.is_none() {
        println!("(no broker process found for {}: its CPU share is not measured)", args.brokers);
    }
    let bench = Bench { reg, rules: Arc::new(Rules::load(None)?), consumer: ConsumerConfig::default(), metrics: metrics.clone() };
    let consumer = bench.consumer.clone();
    let poison_cols = if poisoned.is_some() { format!(" {:>12} {:>9}", "poisoned ev/s", "drop") } else { String::new() };
    println!(
        "{:>3} {:>12} {:>12} {:>8} {:>9} {:>11} {:>11} {:>11} {:>11}{poison_cols}",
        "k",
        "no-op ev/s",
        format!("{} ev/s", reg.name),
        "ratio",
        "scaling",
        "broker CPU",
        "member CPU",
        "pg CPU",
        "no-op brk"
    );
    let mut first: Option<f64> = None;
    let mut ratios = Vec::new();
    for &k in &args.instances {
        // The no-op baseline: a group of k members on the same topics.
        let noop = Arc::new(Noop::default());
        let stop = CancellationToken::new();
        let group_kafka = KafkaConfig::new(&args.brokers).with_prefix(format!("{prefix}noop{k}-"));
        let cpu = Cpu::start(broker);
        let t = Instant::now();
        let mut members = Vec::new();
        for i in 0..k.max(1) {
            let cfg = MemberConfig {
                kafka: group_kafka.clone(),
                consumer: consumer.clone(),
                group_id: group_kafka.group_id("noop"),
                topics: read.iter().map(|d| topics.topic(*d).to_owned()).collect(),
                client_id: format!("loadtest-noop-{i}"),
            };
            members.push(Member::spawn(cfg, noop.clone(), producer.clone(), metrics.clone(), stop.clone())?);
        }
        let mut noop_formed = None;
        while (noop.events() as i64) < records {
            anyhow::ensure!(t.elapsed() < Duration::from_secs(900), "the no-op group consumed only {} of {records}", noop.events());
            if noop_formed.is_none() && members.iter().all(|m| !m.assignment().is_empty()) {
                noop_formed = Some(Formed { after: t.elapsed(), done: noop.events() as f64 / records as f64 });
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let noop_rate = records as f64 / t.elapsed().as_secs_f64();
        let (noop_broker, _, _) = cpu.shares();
        stop.cancel();
        for m in members {
            m.join().await?;
        }

        // The processor: a fresh database with the catalog loaded, then k members.
        let m = measure(args, &bench, &clean, k, broker).await?;
        // With poison, the clean copy runs again after the poisoned one and the drop is
        // against the mean of both: which of two back-to-back measurements went first moved
        // the rate by 10–30 % over 1.1 M records, either way.
        let (poisoned, again) = match &poisoned {
            Some(p) => (Some(measure(args, &bench, p, k, broker).await?), Some(measure(args, &bench, &clean, k, broker).await?)),
            None => (None, None),
        };
        let rate = m.rate;
        let clean_rate = again.as_ref().map_or(rate, |a| (rate + a.rate) / 2.0);
        let base = *first.get_or_insert(rate);
        ratios.push((k, rate / noop_rate));
        let pct = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{:.0} %", v * 100.0));
        let poisoned_cols = poisoned.as_ref().map_or(String::new(), |p| {
            // Rates count every record read; of the poisoned run's, only the valid ones.
            let valid = p.rate * records as f64 / (records + poison_records) as f64;
            format!(" {valid:>12.0} {:>7.1} %", (1.0 - valid / clean_rate) * 100.0)
        });
        println!(
            "{k:>3} {noop_rate:>12.0} {rate:>12.0} {:>7.2}× {:>8.2}× {:>11} {:>11} {:>11} {:>11}{poisoned_cols}{}",
            rate / noop_rate,
            rate / base,
            pct(m.broker_share),
            pct(Some(m.own)),
            pct(Some(m.postgres)),
            pct(noop_broker),
            if m.processed as i64 == records {
                String::new()
            } else {
                format!("  ({} records processed: rebalances re-read some)", m.processed)
            }
        );
        println!("    cost per batch stage, {}", show_stages(&m.stages));
        if let Some(a) = &again {
            println!("    clean copy again after the poisoned one: {:.0} events/s; the drop is against their mean {clean_rate:.0}", a.rate);
        }
        if k > 1 {
            let show = |f: Option<Formed>| f.map_or("never (done first)".to_owned(), |f| f.to_string());
            let poisoned = poisoned.as_ref().map_or(String::new(), |p| format!(", poisoned {}", show(p.formed)));
            println!("    group of {k} formed after: no-op {}, {} {}{poisoned}", show(noop_formed), reg.name, show(m.formed));
        }
    }
    println!("CPU shares are of one core (the machine has {}).", std::thread::available_parallelism().map_or(0, std::num::NonZero::get));
    Ok(ratios)
}
