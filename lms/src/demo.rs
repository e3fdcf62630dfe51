//! `lms demo`: the whole pipeline in one process with nothing installed.
//!
//! The same code as production, with embedded stand-ins for the three servers: an
//! in-process Kafka cluster (librdkafka's mock cluster, so the very same producer and
//! consumer code runs), SQLite as the state store, and the Parquet + DataFusion twin as the
//! analytics store. Every processor runs as a member of its consumer group, the HTTP API
//! serves the write and read routes and the dashboard page, and the synthetic cohort
//! generator feeds it: first a backfill of past weeks, then a live stream.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use api::dashboard::{CourseHint, DashboardHints, TenantHints};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lms_bus::{BusMetrics, KafkaConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::Event;
use lms_generator::{Cohort, CohortConfig, Live, Tenant};
use processors::runtime::{self, Plumbing};
use rdkafka::mocking::MockCluster;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, StoreConfig};
use crate::generate::ApiTarget;
use crate::serve;

/// Options of `lms demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Where the state store (SQLite) and the analytics twin (Parquet) are written. The
    /// demo's files in it are replaced at start: the in-memory broker starts empty, and
    /// state derived from an older run's topics would disagree with it.
    #[arg(long, default_value = "lms-data/demo")]
    data_dir: PathBuf,
    /// Address of the HTTP API and the dashboard.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: String,
    /// Seed of the cohort generator: the same seed gives the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Tenants (organisations), each with its own courses and learners.
    #[arg(long, default_value_t = 2)]
    tenants: usize,
    /// Learners per tenant in the backfill.
    #[arg(long, default_value_t = 300)]
    learners: usize,
    /// Weeks of history in the backfill, ending now.
    #[arg(long, default_value_t = 8)]
    weeks: u32,
    /// Events per second of the live stream after the backfill (0: none).
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Exit once every processor has caught up with the backfill (for scripts and CI)
    /// instead of serving until Ctrl-C.
    #[arg(long)]
    exit_when_caught_up: bool,
}

/// The processors the demo runs: every one but the no-op baseline.
fn processor_names() -> Vec<&'static str> {
    processors::all()
}

pub async fn run(args: DemoArgs, base: &Config) -> anyhow::Result<()> {
    anyhow::ensure!(args.rate.is_finite() && args.rate >= 0.0, "--rate must be a number of events per second ≥ 0");
    let cohort_config = CohortConfig { tenants: args.tenants, learners: args.learners, weeks: args.weeks, ..CohortConfig::new(args.seed) };
    let cohort = Cohort::new(cohort_config.clone()).context("invalid cohort options")?;
    prepare_data_dir(&args.data_dir)?;

    let mock = MockCluster::new(1).context("cannot start the in-process Kafka cluster")?;
    let file = TopicsFile::bundled();
    for t in &file.topics {
        mock.create_topic(&t.name, t.partitions, 1)?;
    }
    let secret = format!("demo-{:032x}", rand::random::<u128>());
    let mut config = base.clone();
    config.kafka = KafkaConfig { brokers: mock.bootstrap_servers(), topic_prefix: String::new(), ..base.kafka.clone() };
    config.store = StoreConfig { url: format!("sqlite://{}", args.data_dir.join("state.db").display()), ..base.store.clone() };
    config.analytics = Some(lms_analytics::AnalyticsConfig::Parquet(lms_analytics::ParquetConfig::new(args.data_dir.join("analytics"))));
    config.api.listen = args.listen.clone();
    config.api.jwt_secret = Some(secret.clone().into());
    // The demo is the only client: no rate limit in its way.
    config.api.rate_limit.per_second = 0.0;

    let names = processor_names();
    print_plan(&args, &config, &names);

    let registry = prometheus::default_registry();
    let metrics = BusMetrics::register(registry)?;
    let backends = serve::Backends::open(&config).await?;
    let topics = file.topic_map("");
    let producer = Arc::new(Producer::new(&config.kafka, topics.clone(), Arc::clone(&metrics), "lms-demo")?);
    let (mut ctx, relay) = runtime::context(backends.store.clone(), Arc::clone(&producer));
    crate::config::provide_sections(&mut ctx, &config, None);
    // The API reads the same twin: the analytics component uses it instead of opening its own.
    ctx.extensions.insert(Arc::clone(&backends.analytics));
    let selected = names.iter().map(|n| processors::lookup(n).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
    runtime::prepare(&mut ctx, &selected).await.map_err(anyhow::Error::msg)?;
    let plumbing = Plumbing {
        kafka: config.kafka.clone(),
        consumer: config.consumer.clone(),
        topics,
        producer: Arc::clone(&producer),
        metrics: Arc::clone(&metrics),
    };
    let running = runtime::start(&plumbing, &ctx, relay, &selected, 1)?;

    let router = serve::router(&config, registry, Arc::clone(&metrics), &backends, hints(cohort.tenants()))?;
    let listener = tokio::net::TcpListener::bind(&config.api.listen)
        .await
        .with_context(|| format!("cannot listen on {} (choose another with --listen)", config.api.listen))?;
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(api::serve_on(listener, router, shutdown.clone()));
    print_urls(&config, &secret, &cohort.tenants()[0].name, args.weeks);

    let stop = CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            crate::shutdown_signal().await;
            stop.cancel();
        }
    });
    let outcome = async {
        let produced = backfill(cohort, &producer, &stop).await?;
        if stop.is_cancelled() {
            return Ok(());
        }
        // The groups the backfill feeds: the erasure topic stays empty until someone erases.
        let fed = |n: &str| processors::lookup(n).is_ok_and(|r| r.domains.iter().any(|d| *d != lms_events::Domain::Erasure));
        let groups: Vec<(&str, String)> = names.iter().filter(|n| fed(n)).map(|n| (*n, config.kafka.group_id(n))).collect();
        wait_caught_up(&groups, &metrics, produced, &stop).await;
        if args.exit_when_caught_up || stop.is_cancelled() {
            return Ok(());
        }
        if args.rate > 0.0 {
            println!("live: {} events/s with event times of now, posted to the API; Ctrl-C stops", args.rate);
            let live = Live::new(cohort_config.clone(), args.rate).context("invalid live stream options")?;
            let base = format!("http://{}", config.api.listen);
            let target = ApiTarget::with_credentials(&base, None, Some(&secret), &cohort_config.tenant_names(), 1_000)?;
            tokio::select! {
                r = stream(live, target) => r?,
                () = stop.cancelled() => {}
            }
        } else {
            println!("serving; Ctrl-C stops");
            stop.cancelled().await;
        }
        anyhow::Ok(())
    }
    .await;

    println!("stopping: the API answers what is in flight, every processor commits its batch");
    shutdown.cancel();
    server.await.context("the HTTP server task failed")??;
    for (name, report) in running.stop().await? {
        tracing::info!(processor = name, batches = report.batches, records = report.records, "member stopped");
    }
    backends.store.close().await;
    println!("stopped; the state and analytics files stay in {} for inspection", args.data_dir.display());
    outcome
}

/// Creates the data directory and removes the demo's files of an earlier run in it (and
/// nothing else).
fn prepare_data_dir(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create the data directory {}", dir.display()))?;
    for file in ["state.db", "state.db-wal", "state.db-shm"] {
        let path = dir.join(file);
        if path.exists() {
            std::fs::remove_file(&path).with_context(|| format!("cannot remove {}", path.display()))?;
        }
    }
    let analytics = dir.join("analytics");
    if analytics.exists() {
        std::fs::remove_dir_all(&analytics).with_context(|| format!("cannot remove {}", analytics.display()))?;
    }
    Ok(())
}

fn print_plan(args: &DemoArgs, config: &Config, names: &[&str]) {
    println!("lms demo: the whole lms-pipeline in one process, nothing installed.");
    println!("  broker      in-process Kafka (librdkafka mock cluster), every topic of topics.yaml: in memory");
    println!("  state       SQLite {}", args.data_dir.join("state.db").display());
    println!("  analytics   Parquet + DataFusion twin in {}", args.data_dir.join("analytics").display());
    println!("  processors  {} (one member each, offsets kept with their state)", names.join(", "));
    println!("  API         write + read routes, dashboard, metrics on http://{}", config.api.listen);
    println!(
        "  generator   seed {}, {} tenant(s) × {} learners over {} weeks, then {} events/s live",
        args.seed, args.tenants, args.learners, args.weeks, args.rate
    );
    println!("  restart     nothing carries over: the broker is in memory, so the files above are replaced at start;");
    println!("              they stay after exit for inspection (sqlite3, any Parquet reader)");
    println!();
}

/// Prints where to look and what to try. Every command printed here is run, exactly as
/// printed, by `tests/it/demo_commands.rs`: keep them copy-and-paste ready.
fn print_urls(config: &Config, secret: &str, tenant: &str, weeks: u32) {
    let base = format!("http://{}", config.api.listen);
    let exp = (chrono::Utc::now() + chrono::Duration::days(1)).timestamp().max(0) as u64;
    let token = api::auth::sign_hs256(
        secret.as_bytes(),
        &api::Claims { sub: "demo".to_owned(), tenant: tenant.to_owned(), scope: "events:write analytics:read".to_owned(), exp },
    );
    println!("  dashboard   {base}/dashboard#token={token}");
    println!("  OpenAPI     {base}/openapi.json");
    println!("  metrics     {base}/metrics   readiness {base}/readyz");
    println!("  token       tenant {tenant}, scopes events:write analytics:read, valid 24 h:");
    println!("              export TOKEN={token}");
    // The backfill's weeks, ending today: a range the analytics routes accept (at most
    // three years) that holds every generated event.
    let today = chrono::Utc::now().date_naive();
    let from = today - chrono::Duration::weeks(i64::from(weeks));
    // `--fail-with-body`: a refused request exits non-zero and still shows the problem.
    println!(
        "  try         curl -sS --fail-with-body -H \"Authorization: Bearer $TOKEN\" '{base}/v1/analytics/enrollments?from={from}&to={today}&granularity=week'"
    );
    println!("              curl -sS --fail-with-body -H \"Authorization: Bearer $TOKEN\" {base}/v1/learners/learner-00001/progress");
    println!();
}

/// The generated catalogs, for the dashboard's selectors.
fn hints(tenants: &[Tenant]) -> DashboardHints {
    let tenants = tenants
        .iter()
        .map(|t| {
            let courses = t
                .courses
                .iter()
                .map(|c| CourseHint { course_id: c.course_id.clone(), title: c.title.clone(), assessments: c.assessment_ids() })
                .collect();
            (t.name.clone(), TenantHints { courses })
        })
        .collect();
    DashboardHints { tenants }
}

/// Produces the cohort's events (in time order, batch by batch) and returns how many.
async fn backfill(mut cohort: Cohort, producer: &Producer, stop: &CancellationToken) -> anyhow::Result<u64> {
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("backfill {spinner} {pos} events produced ({per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let mut produced = 0u64;
    loop {
        let batch: Vec<Event> = cohort.by_ref().take(5_000).collect();
        if batch.is_empty() || stop.is_cancelled() {
            break;
        }
        produce(producer, batch.clone()).await?;
        produced += batch.len() as u64;
        bar.set_position(produced);
    }
    let summary = cohort.summary();
    bar.finish_with_message(format!(
        "({} learners, {} enrollments, {} lesson completions, {} payments)",
        cohort.learners(),
        summary.count("enrollment.created"),
        summary.count("lesson.completed"),
        summary.count("payment.succeeded")
    ));
    Ok(produced)
}

async fn produce(producer: &Producer, events: Vec<Event>) -> anyhow::Result<()> {
    let batch: Vec<_> = events.into_iter().map(|e| (e, None)).collect();
    let failed = producer.send_events(&batch, OnQueueFull::Wait(Duration::from_secs(30))).await.iter().filter(|r| r.is_err()).count();
    anyhow::ensure!(failed == 0, "{failed} events could not be produced to the in-process broker");
    Ok(())
}

/// Waits until every processor's group has no lag left and has processed nothing new for
/// two seconds (derived events travel on: progress feeds achievements and notifications),
/// printing their progress from the bus metrics.
async fn wait_caught_up(groups: &[(&str, String)], metrics: &BusMetrics, produced: u64, stop: &CancellationToken) {
    let started = Instant::now();
    let mut last = Vec::new();
    let mut idle_rounds = 0;
    loop {
        let lags = lag_by_group(groups);
        let now: Vec<(u64, i64)> = groups
            .iter()
            .map(|(_, g)| (metrics.processed.with_label_values(&[g.as_str()]).get(), lags.get(g).copied().unwrap_or(-1)))
            .collect();
        if now != last {
            let line = groups.iter().zip(&now).map(|((n, _), (done, lag))| match lag {
                -1 => format!("{n} {done}"),
                lag => format!("{n} {done} (lag {lag})"),
            });
            println!("processed: {}", line.collect::<Vec<_>>().join(", "));
            last = now;
            idle_rounds = 0;
        } else {
            idle_rounds += 1;
        }
        let no_lag = last.iter().all(|(done, lag)| *done > 0 && *lag <= 0);
        if (no_lag && idle_rounds >= 4) || stop.is_cancelled() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
            () = stop.cancelled() => break,
        }
    }
    println!("caught up: {produced} events through every processor in {:.1}s", started.elapsed().as_secs_f64());
}

/// `lms_bus_consumer_lag_records` summed per group (groups without a sample yet are absent).
fn lag_by_group(groups: &[(&str, String)]) -> std::collections::HashMap<String, i64> {
    let mut out = std::collections::HashMap::new();
    for family in prometheus::default_registry().gather() {
        if family.name() != "lms_bus_consumer_lag_records" {
            continue;
        }
        for m in family.get_metric() {
            let group = m.get_label().iter().find(|l| l.name() == "group").map(|l| l.value().to_owned());
            if let Some(g) = group.filter(|g| groups.iter().any(|(_, x)| x == g)) {
                *out.entry(g).or_insert(0) += m.get_gauge().get_value() as i64;
            }
        }
    }
    out
}

/// Posts the live stream to the demo's own API, a batch per tick: the write path, its
/// metrics and the dashboard's "accepted by the API" move like in production.
async fn stream(mut live: Live, mut target: ApiTarget) -> anyhow::Result<()> {
    let quiet = ProgressBar::hidden();
    loop {
        let batch = live.next_batch().await;
        target.send(batch, &quiet).await?;
        target.flush(&quiet).await?;
    }
}
