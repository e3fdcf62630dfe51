//! `lms topics plan|apply`.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use lms_bus::TopicsFile;
use lms_bus::topics::TopicAdmin;

use crate::config::Config;

/// Make the cluster's topics match topics.yaml.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Shows what `apply` would change, the drift it would not fix, and what the broker
    /// did not let it verify. Changes nothing.
    Plan(TopicsArgs),
    /// Shows the plan, then creates missing topics and raises partition counts, and says
    /// how many of the changes were applied (and which the broker refused). Safe to run
    /// again: a second apply prints "No changes" and does nothing. Never lowers partitions
    /// or deletes topics unless `--delete-unmanaged`.
    Apply(TopicsArgs),
}

/// Options of `plan` and `apply`.
#[derive(Debug, Args)]
pub struct TopicsArgs {
    /// The topics file (default: the topics.yaml built into this binary).
    #[arg(long)]
    topics: Option<PathBuf>,
    /// Overrides every topic's replication factor (3 on a production cluster).
    #[arg(long)]
    replication_factor: Option<i32>,
    /// Also delete topics under the managed prefix that the file does not list.
    #[arg(long)]
    delete_unmanaged: bool,
}

pub async fn run(cmd: TopicsCommand, config: &Config) -> anyhow::Result<()> {
    let (args, apply) = match cmd {
        TopicsCommand::Plan(a) => (a, false),
        TopicsCommand::Apply(a) => (a, true),
    };
    let file = match &args.topics {
        Some(p) => TopicsFile::parse(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)?,
        None => TopicsFile::bundled(),
    };
    let prefix = &config.kafka.topic_prefix;
    let admin = TopicAdmin::new(&config.kafka)?;
    let plan = admin
        .plan(&file, prefix, args.replication_factor, args.delete_unmanaged)
        .await
        .with_context(|| format!("reading topics from {}", config.kafka.brokers))?;
    print!("{plan}");
    if apply && !plan.is_noop() {
        let unsupported = admin.apply(&plan).await?;
        for u in &unsupported {
            println!("! not applied: {u}");
        }
        println!("Applied {} of {} change(s).", plan.actions.len() - unsupported.len(), plan.actions.len());
    }
    Ok(())
}
