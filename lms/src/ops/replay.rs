//! `lms replay`: reset a stopped group to re-read records.

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use clap::{ArgGroup, Args};
use lms_bus::admin::Admin;
use lms_bus::admin::groups::OffsetsKeptIn;
use lms_bus::admin::replay::ReplayTarget;

use crate::config::Config;

/// Options of `lms replay`.
#[derive(Debug, Args)]
#[command(
    group(ArgGroup::new("target").required(true).args(["to_earliest", "to_timestamp", "to_offset"])),
    after_help = "Examples:
  lms replay --group progress --to-earliest                  show the plan (changes nothing)
  lms replay --group progress --to-earliest --yes            apply it
  lms replay --group lms-analytics --to-timestamp 2026-11-20T00:00:00Z --yes
  lms replay --group catalog --to-offset 0:120 --to-offset 1:98 --yes
  lms replay --group progress --to-offset lms.enrollment.v1:0:0 --dry-run

Stop every instance of the group first (scale its Deployment to 0): the command refuses
while the group has live members, and when the broker cannot tell (tansu 0.6.0 cannot
describe groups: there, stop the instances and pass --skip-member-check). Processors are idempotent, so a replay recomputes the
same results; the state store's offsets (the truth for catalog, progress, achievements
and notifications) and Kafka's committed offsets are both reset, the store first.")]
pub struct ReplayArgs {
    /// The group: a processor name (`progress`) or a group id (`lms-progress`).
    #[arg(long)]
    group: String,
    /// Every partition back to the oldest record still in the log.
    #[arg(long)]
    to_earliest: bool,
    /// Every partition to its first record at or after this RFC 3339 time (record
    /// timestamps, i.e. when the broker received the events, not event times).
    #[arg(long, value_parser = parse_time)]
    to_timestamp: Option<DateTime<Utc>>,
    /// One partition to an offset, `<partition>:<offset>` (groups reading one topic) or
    /// `<topic>:<partition>:<offset>`; repeat it for more partitions. Others stay put.
    #[arg(long, value_parser = parse_offset)]
    to_offset: Vec<(Option<String>, i32, i64)>,
    /// Show the plan and change nothing (the default without `--yes`).
    #[arg(long, conflicts_with = "yes")]
    dry_run: bool,
    /// Apply the plan.
    #[arg(long)]
    yes: bool,
    /// Print the plan as JSON.
    #[arg(long)]
    json: bool,
    /// Do not ask the broker whether the group has live members. Only for brokers that
    /// cannot describe groups (tansu 0.6.0): make sure every instance is stopped first.
    #[arg(long)]
    skip_member_check: bool,
}

fn parse_time(s: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(s)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("not an RFC 3339 time ({e}), e.g. 2026-11-20T10:00:00Z"))
}

fn parse_offset(s: &str) -> Result<(Option<String>, i32, i64), String> {
    let parts: Vec<&str> = s.rsplitn(3, ':').collect();
    let bad = || format!("{s:?}: expected <partition>:<offset> or <topic>:<partition>:<offset>");
    let offset: i64 = parts.first().and_then(|o| o.parse().ok()).ok_or_else(bad)?;
    let partition: i32 = parts.get(1).and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    Ok((parts.get(2).map(|t| (*t).to_owned()), partition, offset))
}

pub async fn run(args: ReplayArgs, config: &Config) -> anyhow::Result<()> {
    let store = super::open_store(config, "replay").await?;
    let spec = super::select(super::group_specs(config), std::slice::from_ref(&args.group))?.remove(0);
    let target = if args.to_earliest {
        ReplayTarget::Earliest
    } else if let Some(t) = args.to_timestamp {
        ReplayTarget::Timestamp(t)
    } else {
        ReplayTarget::Offsets(args.to_offset.clone())
    };
    let admin = Admin::new(&config.kafka)?;
    let plan = admin
        .replay_plan(&spec, &target, Some(&store), !args.skip_member_check)
        .await
        .with_context(|| format!("planning the replay of {}", spec.group))?;
    if args.json {
        println!("{}", serde_json::to_string(&plan)?);
    } else {
        print!("{plan}");
    }
    if !args.yes {
        if !args.json {
            println!("Dry run: nothing changed. Re-run with --yes to apply.");
        }
        store.close().await;
        return Ok(());
    }
    admin.recheck(&plan, !args.skip_member_check)?;
    if spec.offsets == OffsetsKeptIn::Store {
        let to: Vec<_> = plan.targets().into_iter().map(|(tp, o)| (tp, Some(o))).collect();
        lms_state::offsets::reset(&store, &spec.group, &to).await.context("resetting the state store's offsets")?;
    }
    admin.commit_plan(&plan).with_context(|| format!("committing the new offsets of {} to Kafka", spec.group))?;
    if !args.json {
        println!("Applied: group {} resumes at the new offsets when its processors start.", spec.group);
    }
    store.close().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn offsets_parse_with_and_without_topic() {
        assert_eq!(super::parse_offset("3:120"), Ok((None, 3, 120)));
        assert_eq!(super::parse_offset("lms.learning.v1:0:7"), Ok((Some("lms.learning.v1".into()), 0, 7)));
        assert!(super::parse_offset("x:7").is_err());
    }
}
