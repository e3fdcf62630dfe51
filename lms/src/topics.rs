//! `lms topics plan|apply`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use lms_bus::TopicsFile;
use lms_bus::topics::{Action, Drift, Plan, TopicAdmin};

use crate::config::Config;

/// Make the cluster's topics match topics.yaml.
#[derive(Debug, Subcommand)]
pub enum TopicsCommand {
    /// Shows what `apply` would change, the drift it would not fix, and what the broker
    /// did not let it verify. Changes nothing.
    #[command(after_help = "Exit status (as `terraform plan -detailed-exitcode`):
  0  nothing to apply: every topic of the file exists as specified
  2  changes are pending: `lms topics apply` would make them
  1  an error: the broker unreachable, an invalid topics file, ...
Drift that apply does not fix (more partitions than the file asks, another replication
factor, unmanaged topics) and configs the broker would not show are printed but are no
pending change.

With --json, stdout is one JSON object:
  {\"changes_pending\": true,
   \"actions\": [{\"action\": \"create\", \"topic\": ..., \"partitions\": 12, \"replication_factor\": 3, \"config\": {...}},
               {\"action\": \"add_partitions\", \"topic\": ..., \"from\": 6, \"to\": 12},
               {\"action\": \"set_config\", \"topic\": ..., \"changes\": [{\"key\": ..., \"from\": null, \"to\": ...}]},
               {\"action\": \"delete\", \"topic\": ...}],
   \"drift\": [{\"kind\": \"more_partitions\" | \"replication_factor\" | \"unmanaged\", \"topic\": ..., ...}],
   \"unverified\": [\"...\"]}

Examples:
  lms topics plan                    read the plan
  lms topics plan --json | jq '.actions[].topic'
  lms topics plan >/dev/null; [ $? -eq 2 ] && lms topics apply")]
    Plan(PlanArgs),
    /// Shows the plan, then creates missing topics and raises partition counts, and says
    /// how many of the changes were applied (and which the broker refused). Safe to run
    /// again: a second apply prints "No changes" and does nothing. Never lowers partitions
    /// or deletes topics unless `--delete-unmanaged`.
    #[command(after_help = "Exit status:
  0  every change was applied, or there was none
  1  a change was not applied (each is printed as `! not applied: <topic>: <why>`, for
     example a broker that does not implement CreatePartitions), or an error
A Job or CI step running it therefore fails when the cluster does not match the file.")]
    Apply(TopicsArgs),
}

/// Options of `plan`.
#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    topics: TopicsArgs,
    /// Print the plan as one JSON object (see below) instead of text.
    #[arg(long)]
    json: bool,
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

/// The exit status of `topics plan` when changes are pending.
const CHANGES_PENDING: u8 = 2;

pub async fn run(cmd: TopicsCommand, config: &Config) -> anyhow::Result<ExitCode> {
    let (args, apply, json) = match cmd {
        TopicsCommand::Plan(a) => (a.topics, false, a.json),
        TopicsCommand::Apply(a) => (a, true, false),
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
    if json {
        println!("{}", serde_json::to_string_pretty(&plan_json(&plan))?);
    } else {
        print!("{plan}");
    }
    if !apply {
        return Ok(if plan.is_noop() { ExitCode::SUCCESS } else { ExitCode::from(CHANGES_PENDING) });
    }
    if !plan.is_noop() {
        let unsupported = admin.apply(&plan).await?;
        for u in &unsupported {
            println!("! not applied: {u}");
        }
        let total = plan.actions.len();
        println!("Applied {} of {total} change(s).", total - unsupported.len());
        anyhow::ensure!(
            unsupported.is_empty(),
            "{} of {total} change(s) not applied (the `! not applied` lines above): the cluster does not match the topics file",
            unsupported.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// The plan as `topics plan --json` prints it (the shape is in its `--help`).
fn plan_json(plan: &Plan) -> serde_json::Value {
    use serde_json::json;
    let actions: Vec<_> = plan
        .actions
        .iter()
        .map(|a| match a {
            Action::Create { topic, partitions, replication_factor, config } => json!({
                "action": "create", "topic": topic, "partitions": partitions,
                "replication_factor": replication_factor, "config": config,
            }),
            Action::AddPartitions { topic, from, to } => json!({"action": "add_partitions", "topic": topic, "from": from, "to": to}),
            Action::SetConfig { topic, changes, .. } => json!({
                "action": "set_config", "topic": topic,
                "changes": changes.iter().map(|(key, from, to)| json!({"key": key, "from": from, "to": to})).collect::<Vec<_>>(),
            }),
            Action::Delete { topic } => json!({"action": "delete", "topic": topic}),
        })
        .collect();
    let drift: Vec<_> = plan
        .drift
        .iter()
        .map(|d| match d {
            Drift::MorePartitions { topic, have, want } => json!({"kind": "more_partitions", "topic": topic, "have": have, "want": want}),
            Drift::ReplicationFactor { topic, have, want } => {
                json!({"kind": "replication_factor", "topic": topic, "have": have, "want": want})
            }
            Drift::Unmanaged { topic } => json!({"kind": "unmanaged", "topic": topic}),
        })
        .collect();
    json!({"changes_pending": !plan.is_noop(), "actions": actions, "drift": drift, "unverified": plan.unverified})
}
