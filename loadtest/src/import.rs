//! `loadtest import`: `lms import` against the raw producer, same broker, same run.
//!
//! Writes `--events` client events (the shapes of `loadtest http`) to an NDJSON file, sends
//! the same events with the pipeline's producer (phase 1, on topics of a fresh prefix), then
//! runs `lms import` on the file (phase 2, on topics of another prefix) and prints both
//! rates and their ratio. The import's time is the whole command: start-up, reading,
//! validation, producing, checkpoints.

use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use lms_bus::{BusMetrics, KafkaConfig, OnQueueFull, Producer, TopicsFile};
use lms_events::{Domain, Event, TraceContext};

use crate::http::{client_json, event};

/// Options of `loadtest import`.
#[derive(Debug, clap::Args)]
pub struct ImportArgs {
    /// Bootstrap servers of the broker under test.
    #[arg(long, env = "LMS_KAFKA__BROKERS", default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The `lms` binary to run (a release build for figures worth reporting).
    #[arg(long, env = "LMS_BIN", default_value = "target/release/lms")]
    lms: PathBuf,
    /// Events of each phase.
    #[arg(long, default_value_t = 200_000)]
    events: usize,
    /// Tenant of the events.
    #[arg(long, default_value = "bench")]
    tenant: String,
}

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("lms-import-bench-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("events.ndjson");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&file)?);
    for i in 0..args.events {
        serde_json::to_writer(&mut out, &client_json(i, "import"))?;
        out.write_all(b"\n")?;
    }
    out.flush()?;
    drop(out);
    println!("{} events in {} ({} MB)", args.events, file.display(), std::fs::metadata(&file)?.len() / 1_000_000);

    // Phase 1: the raw producer.
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    topics(&args.brokers, &prefix).await?;
    let kafka = KafkaConfig::new(&args.brokers).with_prefix(&prefix);
    let producer = Producer::new(&kafka, TopicsFile::bundled().topic_map(&prefix), BusMetrics::standalone(), "loadtest-raw")?;
    let events: Vec<(Event, Option<TraceContext>)> = (0..args.events).map(|i| (event(i, "import", &args.tenant), None)).collect();
    let started = Instant::now();
    for chunk in events.chunks(20_000) {
        let failed = producer.send_events(chunk, OnQueueFull::Wait(Duration::from_secs(60))).await.iter().filter(|r| r.is_err()).count();
        ensure!(failed == 0, "{failed} records were not acknowledged");
    }
    let raw = args.events as f64 / started.elapsed().as_secs_f64();
    drop(events);
    drop(producer);
    println!("raw producer:   {raw:>9.0} events/s");

    // Phase 2: lms import of the same events.
    let prefix = format!("bench-{}.", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    topics(&args.brokers, &prefix).await?;
    let started = Instant::now();
    let output = tokio::process::Command::new(&args.lms)
        .args(["import", "--tenant", &args.tenant, "--checkpoint-dir"])
        .arg(dir.join("checkpoints"))
        .arg("--report")
        .arg(dir.join("rejected.ndjson"))
        .arg(&file)
        .env("LMS_KAFKA__BROKERS", &args.brokers)
        .env("LMS_KAFKA__TOPIC_PREFIX", &prefix)
        .env("RUST_LOG", "warn")
        .output()
        .await
        .with_context(|| format!("running {}", args.lms.display()))?;
    let elapsed = started.elapsed();
    ensure!(output.status.success(), "lms import failed: {}", String::from_utf8_lossy(&output.stderr));
    let summary = String::from_utf8_lossy(&output.stdout);
    ensure!(summary.contains(&format!("{} events sent, 0 rejected", args.events)), "unexpected summary: {summary}");
    let imported = args.events as f64 / elapsed.as_secs_f64();
    println!("lms import:     {imported:>9.0} events/s (the whole command: {:.1} s)", elapsed.as_secs_f64());
    println!();
    let ratio = imported / raw;
    println!("target: import ≥ 0.5× raw: {ratio:.2}× {}", if ratio >= 0.5 { "(met)" } else { "(NOT met)" });
    std::fs::remove_dir_all(&dir).ok();
    Ok(())
}

/// The pipeline's topics under `prefix`: 8 partitions for learning, 2 for the others.
async fn topics(brokers: &str, prefix: &str) -> anyhow::Result<()> {
    let map = TopicsFile::bundled().topic_map(prefix);
    let names: Vec<(String, i32)> =
        Domain::ALL.iter().map(|d| (map.topic(*d).to_owned(), if *d == Domain::Learning { 8 } else { 2 })).collect();
    let refs: Vec<(&str, i32)> = names.iter().map(|(n, p)| (n.as_str(), *p)).collect();
    lms_harness::create_topics(brokers, &refs).await
}
