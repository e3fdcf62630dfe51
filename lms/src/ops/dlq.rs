//! `lms dlq list|show|redrive`.

use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use lms_bus::admin::Admin;
use lms_bus::admin::dlq::{DeadLetter, Selection};
use lms_bus::{BusMetrics, OnQueueFull, Producer, TopicsFile};
use lms_events::Domain;

use crate::config::Config;

/// Dead letters: records no processor could handle, with their reason and origin.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Lists dead letters: position, origin, group, reason and event.
    #[command(after_help = "Examples:
  lms dlq list
  lms dlq list --reason undecodable --source-topic lms.learning.v1
  lms dlq list --json | jq '.[].reason'")]
    List(ListArgs),
    /// Shows dead letters in full: every header and the value.
    #[command(after_help = "Example:
  lms dlq show 0:42 0:43")]
    Show(ShowArgs),
    /// Re-produces selected dead letters to their source topic, after the cause is fixed
    /// (a processor deployed that accepts them). Dry run unless `--yes`.
    #[command(after_help = "Examples:
  lms dlq redrive --at 0:42                      what would be re-driven (nothing sent)
  lms dlq redrive --at 0:42 --at 0:43 --yes      re-drive two dead letters
  lms dlq redrive --reason 'unknown course' --group lms-progress --yes
  lms dlq redrive --all --yes                    every dead letter

Re-driven records keep their key, value and headers (without the lms_dlq_* ones) and
carry lms_redriven_from. Processors are idempotent by event id, so a record re-driven
twice has the effect of one. A record that still fails is dead-lettered again.")]
    Redrive(RedriveArgs),
}

/// Which dead letters.
#[derive(Debug, Args)]
pub struct Filter {
    /// A position on the dead-letter topic, `<partition>:<offset>` (repeatable).
    #[arg(long = "at", value_parser = parse_position)]
    at: Vec<(i32, i64)>,
    /// An event id (repeatable).
    #[arg(long = "id")]
    ids: Vec<String>,
    /// Only dead letters whose reason contains this text.
    #[arg(long)]
    reason: Option<String>,
    /// Only dead letters from this topic.
    #[arg(long)]
    source_topic: Option<String>,
    /// Only dead letters of this consumer group (group id).
    #[arg(long)]
    group: Option<String>,
}

impl Filter {
    fn selection(&self) -> Selection {
        Selection {
            positions: self.at.clone(),
            event_ids: self.ids.clone(),
            reason_contains: self.reason.clone(),
            source_topic: self.source_topic.clone(),
            group: self.group.clone(),
        }
    }
}

/// Options of `list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    filter: Filter,
    /// JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// Options of `show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// Positions on the dead-letter topic, `<partition>:<offset>`.
    #[arg(required = true, value_parser = parse_position)]
    at: Vec<(i32, i64)>,
    /// JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// Options of `redrive`.
#[derive(Debug, Args)]
pub struct RedriveArgs {
    #[command(flatten)]
    filter: Filter,
    /// Re-drive every dead letter (required when no filter is given).
    #[arg(long)]
    all: bool,
    /// Send them; without it only the selection is shown.
    #[arg(long)]
    yes: bool,
}

fn parse_position(s: &str) -> Result<(i32, i64), String> {
    let (p, o) = s.split_once(':').ok_or_else(|| format!("{s:?}: expected <partition>:<offset>"))?;
    Ok((p.parse().map_err(|e| format!("partition {p:?}: {e}"))?, o.parse().map_err(|e| format!("offset {o:?}: {e}"))?))
}

pub async fn run(cmd: DlqCommand, config: &Config) -> anyhow::Result<()> {
    let topics = TopicsFile::bundled().topic_map(&config.kafka.topic_prefix);
    let dlq = topics.topic(Domain::DeadLetter).to_owned();
    let admin = Admin::new(&config.kafka)?;
    let all = admin.dead_letters(&dlq).with_context(|| format!("reading the dead-letter topic {dlq}"))?;
    match cmd {
        DlqCommand::List(a) => {
            let sel = a.filter.selection();
            let picked: Vec<&DeadLetter> = all.iter().filter(|d| sel.matches(d)).collect();
            if a.json {
                println!("{}", serde_json::to_string(&picked)?);
            } else {
                println!("{:<10} {:<34} {:<20} {:<38} reason", "at", "origin", "group", "event");
                for d in &picked {
                    println!("{:<10} {:<34} {:<20} {:<38} {}", d.position(), origin(d), d.group, event(d), d.reason);
                }
                println!("{} of {} dead letter(s) on {dlq}", picked.len(), all.len());
            }
        }
        DlqCommand::Show(a) => {
            let picked: Vec<&DeadLetter> = all.iter().filter(|d| a.at.contains(&(d.partition, d.offset))).collect();
            if let Some(missing) = a.at.iter().find(|p| !picked.iter().any(|d| (d.partition, d.offset) == **p)) {
                anyhow::bail!("no dead letter at {}:{} on {dlq}", missing.0, missing.1);
            }
            if a.json {
                println!("{}", serde_json::to_string_pretty(&picked)?);
            } else {
                for d in picked {
                    println!("dead letter {} on {}", d.position(), d.topic);
                    println!("  reason:      {}", d.reason);
                    println!("  origin:      {}", origin(d));
                    println!("  group:       {}", d.group);
                    println!("  at:          {}", d.dead_lettered_at);
                    println!("  event:       {}", event(d));
                    println!("  key:         {}", d.key.as_deref().unwrap_or("-"));
                    for (k, v) in &d.headers {
                        println!("  header       {k}: {v}");
                    }
                    println!("  value:       {}\n", d.value);
                }
            }
        }
        DlqCommand::Redrive(a) => {
            let sel = a.filter.selection();
            anyhow::ensure!(
                !sel.is_everything() || a.all,
                "select dead letters (--at, --id, --reason, --source-topic, --group) or pass --all"
            );
            let picked: Vec<&DeadLetter> = all.iter().filter(|d| sel.matches(d)).collect();
            for d in &picked {
                println!(
                    "{} {} -> {}  {}  ({})",
                    if a.yes { "re-drive" } else { "would re-drive" },
                    d.position(),
                    d.source_topic,
                    event(d),
                    d.reason
                );
            }
            if !a.yes {
                println!("Dry run: {} dead letter(s) selected, nothing sent. Re-run with --yes to send them.", picked.len());
                return Ok(());
            }
            let records = picked.iter().map(|d| d.redrive_record()).collect::<Result<Vec<_>, _>>()?;
            let producer = Producer::new(&config.kafka, topics, BusMetrics::standalone(), "lms-dlq-redrive")?;
            let results = producer.send(records, OnQueueFull::Wait(Duration::from_secs(60))).await;
            let failed: Vec<String> =
                picked.iter().zip(&results).filter_map(|(d, r)| r.as_ref().err().map(|e| format!("{}: {e}", d.position()))).collect();
            anyhow::ensure!(failed.is_empty(), "{} of {} re-drives failed: {}", failed.len(), picked.len(), failed.join("; "));
            println!("Re-drove {} dead letter(s).", picked.len());
        }
    }
    Ok(())
}

fn origin(d: &DeadLetter) -> String {
    let o = |x: Option<i64>| x.map_or_else(|| "?".to_owned(), |x| x.to_string());
    format!("{}/{}@{}", d.source_topic, o(d.source_partition.map(i64::from)), o(d.source_offset))
}

fn event(d: &DeadLetter) -> String {
    match (&d.event_type, &d.event_id) {
        (Some(t), Some(id)) => format!("{t} {id}"),
        _ => "(undecodable)".to_owned(),
    }
}
