//! `lms topics plan|apply|rekey-catalog`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};
use lms_bus::admin::Admin;
use lms_bus::admin::rekey::{apply_rekey, plan_rekey};
use lms_bus::topics::{Action, Drift, Plan, TopicAdmin};
use lms_bus::{BusMetrics, Producer, TopicsFile};
use lms_events::Domain;

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
    /// Re-keys the catalog topic of an existing deployment so that log compaction keeps
    /// every course: copies each record under the key its event gets now, then writes a
    /// tombstone for each old key.
    #[command(after_help = "When to run it: once, on a deployment whose catalog topic was written by a
version that keyed catalog records by course id alone. Under those keys compaction
lets one tenant's course replace another's with the same id, a retirement replace its
publication, and a late lower version replace a higher one, so a catalog rebuilt from
the compacted topic (replay, new processor) is wrong. The new keys are
`<tenant>/<course>/v<version>/<content hash>` and `<tenant>/<course>/retired`.

Order: first deploy processors that skip tombstones (this version), then `lms api`
(new events get the new keys), then run this command.

The topic is read from its log start up to the log ends taken when the command starts.
Each record whose key is not its new key is produced again under the new key (same
value and headers), unless that copy is already in the log; once every copy is
acknowledged, each old key gets a tombstone, so compaction removes the old records.
Records that do not decode are left alone, and so are their keys.

Processors can keep running: the catalog is idempotent (a copy is an event it has
already applied) and the runner skips tombstones. Safe to run again: a second run
re-produces nothing and writes no tombstone.

Examples:
  lms topics rekey-catalog --dry-run     what it would do (nothing sent)
  lms topics rekey-catalog")]
    RekeyCatalog(RekeyArgs),
}

/// Options of `rekey-catalog`.
#[derive(Debug, Args)]
pub struct RekeyArgs {
    /// Read the topic and print what would be re-produced and tombstoned; send nothing.
    #[arg(long)]
    dry_run: bool,
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
        TopicsCommand::RekeyCatalog(a) => return rekey_catalog(a, config).await.map(|()| ExitCode::SUCCESS),
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

async fn rekey_catalog(args: RekeyArgs, config: &Config) -> anyhow::Result<()> {
    let topics = TopicsFile::bundled().topic_map(&config.kafka.topic_prefix);
    let topic = topics.topic(Domain::Catalog).to_owned();
    let admin = Admin::new(&config.kafka)?;
    println!("Reading {topic} up to its current log ends...");
    let log = admin
        .read_log(&topic, &mut |n| println!("  read {n} records"))
        .with_context(|| format!("reading {topic} from {}", config.kafka.brokers))?;
    let plan = plan_rekey(&topic, &log);
    println!(
        "Read {} record(s): {} already under their new key, {} with a copy under it already, {} tombstone(s), {} undecodable (left alone).",
        plan.read, plan.current, plan.already_copied, plan.tombstones_read, plan.undecodable
    );
    if plan.is_noop() {
        println!("Nothing to re-key: every record has its new key or a copy under it, every old key a tombstone.");
        return Ok(());
    }
    if args.dry_run {
        println!(
            "Dry run: would re-produce {} record(s) under new keys, then write {} tombstone(s). Nothing sent.",
            plan.rekey.len(),
            plan.tombstones.len()
        );
        return Ok(());
    }
    let producer = Producer::new(&config.kafka, topics, BusMetrics::standalone(), "lms-rekey-catalog")?;
    let (rekey, tombstones) = (plan.rekey.len(), plan.tombstones.len());
    let done = apply_rekey(&producer, &topic, &plan, &mut |d| {
        println!("  re-keyed {} of {rekey}, tombstones {} of {tombstones}", d.rekeyed, d.tombstones);
    })
    .await
    .with_context(|| format!("producing to {topic}"))?;
    println!("Done: read {}, re-keyed {}, tombstones {}.", plan.read, done.rekeyed, done.tombstones);
    Ok(())
}
