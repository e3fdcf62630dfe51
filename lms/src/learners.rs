//! `lms learners erase`: erases learners as `DELETE /v1/learners/{learner_id}` does, for an
//! operator handling data-protection requests outside the API (one id, several, or a file of
//! them). Each erasure goes on the erasure topic first, then both stores are erased; one JSON
//! report per learner is printed on stdout (the API's answer), progress on stderr.

use std::io::BufRead as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use lms_bus::{BusMetrics, OnQueueFull, Producer, TopicsFile};

use crate::config::Config;

/// `lms learners …`
#[derive(Debug, clap::Subcommand)]
pub enum LearnersCommand {
    /// Erases learners of a tenant everywhere: contact data, preferences, inbox, deliveries,
    /// progress, achievements (issued credentials are revoked), dedupe rows and analytics rows.
    /// Irreversible: the learners' events that arrive later, are redelivered or replayed are
    /// dropped.
    ///
    /// Needs the brokers, the state store and the analytics store of the deployment (as
    /// `lms api`). Example: `lms learners erase --tenant acme learner-42 learner-43`, or
    /// `lms learners erase --tenant acme --from-file ids.txt`.
    Erase(EraseArgs),
}

/// Arguments of `lms learners erase`.
#[derive(Debug, clap::Args)]
pub struct EraseArgs {
    /// The tenant the learners belong to.
    #[arg(long)]
    tenant: String,
    /// Learner ids to erase.
    learners: Vec<String>,
    /// A file with one learner id per line (`-` reads stdin); blank lines are skipped.
    #[arg(long, value_name = "FILE")]
    from_file: Option<PathBuf>,
}

/// Runs `lms learners …`.
pub async fn run(cmd: LearnersCommand, config: &Config) -> anyhow::Result<()> {
    let LearnersCommand::Erase(args) = cmd;
    let mut learners = args.learners;
    if let Some(file) = &args.from_file {
        let reader: Box<dyn std::io::BufRead> = if file.as_os_str() == "-" {
            Box::new(std::io::stdin().lock())
        } else {
            Box::new(std::io::BufReader::new(std::fs::File::open(file).with_context(|| format!("cannot read {}", file.display()))?))
        };
        for line in reader.lines() {
            let line = line.with_context(|| format!("cannot read {}", file.display()))?;
            if !line.trim().is_empty() {
                learners.push(line.trim().to_owned());
            }
        }
    }
    anyhow::ensure!(!learners.is_empty(), "no learner to erase: name ids as arguments or give --from-file");
    for l in &learners {
        anyhow::ensure!(
            !l.is_empty() && l.chars().count() <= 128 && !l.chars().any(char::is_control),
            "{l:?} is not a learner id (1 to 128 characters, no control characters); nothing was erased"
        );
    }
    anyhow::ensure!(!args.tenant.is_empty() && args.tenant.chars().count() <= 128, "--tenant must have 1 to 128 characters");
    config.require_stores("learners erase", true)?;
    let backends = crate::serve::Backends::open(config).await?;
    let stores = api::erasure::ErasureStores { store: backends.store.clone(), analytics: Arc::clone(&backends.analytics) };
    let topics = TopicsFile::bundled().topic_map(&config.kafka.topic_prefix);
    let producer = Producer::new(&config.kafka, topics, BusMetrics::standalone(), "lms-learners")?;
    let total = learners.len();
    for (i, learner) in learners.iter().enumerate() {
        let event = api::erasure::erasure_event(&args.tenant, learner, chrono::Utc::now());
        let sent = producer.send_events(&[(event.clone(), None)], OnQueueFull::Wait(Duration::from_secs(60))).await;
        if let Some(Err(e)) = sent.into_iter().next() {
            anyhow::bail!(
                "learner {learner:?}: the erasure could not be put on the erasure topic ({e}); {i} of {total} erased, this one not"
            );
        }
        let report = api::erasure::erase_stores(&stores, &event)
            .await
            .with_context(|| format!("learner {learner:?}: the state store erasure failed; {i} of {total} erased, run again to finish"))?;
        println!("{}", serde_json::to_string(&report)?);
        eprintln!("erased {}/{total}: {learner} (analytics {})", i + 1, report.analytics.status);
    }
    backends.store.close().await;
    Ok(())
}
