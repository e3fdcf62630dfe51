//! `lms processor`: run processors as members of their consumer groups.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use lms_bus::{BusMetrics, Producer, TopicsFile};
use processors::runtime::{self, Plumbing};

use crate::config::Config;

/// Processor commands.
#[derive(Debug, Subcommand)]
pub enum ProcessorCommand {
    /// Runs processors until SIGINT/SIGTERM, then drains: each member finishes its batch
    /// and commits, the outbox relay sends what was committed, the producer flushes.
    ///
    /// Every processor is a consumer group (`<topic_prefix>lms-<name>`): start the same
    /// command on more machines (or pods) to spread the partitions; any instance may be
    /// killed at any time without losing or doubling an effect, since offsets are stored
    /// with the effects in the state store.
    ///
    /// The state store (`store.url`) must be set explicitly, and the analytics store
    /// (`analytics.store`) too when `analytics` runs: it refuses to start rather than fall
    /// back to files on its own disk.
    ///
    /// Example: `LMS_STORE__URL=postgres://lms@db/lms lms processor run progress catalog`
    Run(RunArgs),
    /// Lists the processors, the topics they read and what they do.
    List,
}

/// Options of `lms processor run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Processors to run (see `lms processor list`), or `all` for every one but `noop`.
    #[arg(required = true, num_args = 1..)]
    names: Vec<String>,
    /// Members per processor in this process (for local tests; in production run one
    /// process per instance).
    #[arg(long, default_value_t = 1)]
    instances: usize,
    /// Achievement rules file (default: the rules shipped in config/achievements.yaml).
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Serve `/livez` (`/healthz`), `/readyz` and `/metrics` on this address, for
    /// Kubernetes probes and Prometheus (e.g. `0.0.0.0:9090`). Off when absent.
    #[arg(long, env = "LMS_PROCESSOR_LISTEN")]
    listen: Option<std::net::SocketAddr>,
}

pub async fn run(cmd: ProcessorCommand, config: &Config) -> anyhow::Result<()> {
    match cmd {
        ProcessorCommand::List => {
            for p in processors::REGISTRY {
                let domains: Vec<&str> = p.domains.iter().map(|d| d.as_str()).collect();
                println!("{:<14} reads {:<32} {}", p.name, domains.join(","), p.about);
            }
            Ok(())
        }
        ProcessorCommand::Run(args) => run_processors(args, config).await,
    }
}

async fn run_processors(args: RunArgs, config: &Config) -> anyhow::Result<()> {
    let names: Vec<&str> =
        if args.names.iter().any(|n| n == "all") { processors::all() } else { args.names.iter().map(String::as_str).collect() };
    let selected = names.iter().map(|n| processors::lookup(n).map_err(anyhow::Error::msg)).collect::<anyhow::Result<Vec<_>>>()?;
    // Before anything is opened: a component that cannot run without a section names it.
    config.require_stores("processor run", selected.iter().any(|r| r.requires.contains(&"analytics")))?;
    let store = processors::open_store(&config.store.url, config.store.max_connections)
        .await
        .with_context(|| format!("cannot open the state store {}", lms_state::redact_url(&config.store.url)))?;
    let topics = TopicsFile::bundled().topic_map(&config.kafka.topic_prefix);
    let metrics = BusMetrics::register(prometheus::default_registry())?;
    let producer = Arc::new(Producer::new(&config.kafka, topics.clone(), Arc::clone(&metrics), "lms-processor")?);
    let (mut ctx, relay) = runtime::context(store.clone(), Arc::clone(&producer));
    crate::config::provide_sections(&mut ctx, config, args.rules.clone());
    // Each selected component makes what it needs from its section (templates, rules, the
    // analytics store) and names what `/readyz` must check for it.
    let checks = runtime::prepare(&mut ctx, &selected).await.map_err(anyhow::Error::msg)?;
    let health_stop = tokio_util::sync::CancellationToken::new();
    let health = args
        .listen
        .map(|listen| tokio::spawn(crate::ops::health::serve(listen, store.clone(), Arc::clone(&producer), checks, health_stop.clone())));
    let plumbing = Plumbing { kafka: config.kafka.clone(), consumer: config.consumer.clone(), topics, producer, metrics };
    let running = runtime::start(&plumbing, &ctx, relay, &selected, args.instances)?;
    tracing::info!(
        processors = ?names,
        instances = args.instances,
        store = %lms_state::redact_url(&config.store.url),
        brokers = %config.kafka.brokers,
        "processors running; SIGINT/SIGTERM drains and stops"
    );
    crate::shutdown_signal().await;
    tracing::info!("draining");
    for (name, report) in running.stop().await? {
        tracing::info!(processor = name, batches = report.batches, records = report.records, "member stopped");
    }
    health_stop.cancel();
    if let Some(h) = health {
        h.await??;
    }
    store.close().await;
    Ok(())
}

/// `lms migrate`: applies the migrations of the state store and the analytics store.
pub async fn migrate(config: &Config) -> anyhow::Result<()> {
    config.require_stores("migrate", true)?;
    let store = processors::open_store(&config.store.url, 2)
        .await
        .with_context(|| format!("cannot migrate the state store {}", lms_state::redact_url(&config.store.url)))?;
    println!("state store {} is at the latest schema", lms_state::redact_url(&config.store.url));
    store.close().await;
    crate::serve::open_analytics(config).await?;
    println!("analytics store ({}) is at the latest schema", analytics_name(config));
    Ok(())
}

fn analytics_name(config: &Config) -> String {
    match &config.analytics() {
        lms_analytics::AnalyticsConfig::Clickhouse(c) => format!("clickhouse {} database {}", c.url, c.database),
        lms_analytics::AnalyticsConfig::Parquet(c) => format!("parquet twin in {}", c.dir.display()),
    }
}
