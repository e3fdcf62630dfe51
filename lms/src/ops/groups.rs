//! `lms groups`: consumer groups, members, offsets, lag and its trend.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Args;
use lms_bus::admin::Admin;
use lms_bus::admin::groups::{GroupStatus, add_trends};

use crate::config::Config;

/// Options of `lms groups`.
#[derive(Debug, Args)]
#[command(after_help = "Examples:
  lms groups                         every group of the pipeline, lag and its trend over 1 s
  lms groups progress --watch        refresh the progress group every 2 s (Ctrl-C stops)
  lms groups --json --trend-ms 0     one JSON array, no trend (for scripts and tests)

The lag of a processor that keeps its offsets in the state store (catalog, progress,
achievements, notifications) is computed from the store's offsets, which are the truth: the Kafka
commit only mirrors them. Both columns are shown; a partition with no offset at all is
read from the beginning, so its lag is the whole log.")]
pub struct GroupsArgs {
    /// Processor names or group ids to show (default: every group of the pipeline).
    groups: Vec<String>,
    /// Refresh until interrupted; the trend compares each look with the previous one.
    #[arg(long)]
    watch: bool,
    /// Seconds between refreshes with `--watch`.
    #[arg(long, default_value_t = 2)]
    interval_s: u64,
    /// Without `--watch`: look twice this many milliseconds apart to show the lag trend
    /// (0: look once, no trend).
    #[arg(long, default_value_t = 1000)]
    trend_ms: u64,
    /// JSON instead of tables (one array per look; one line per refresh with `--watch`).
    #[arg(long)]
    json: bool,
}

pub async fn run(args: GroupsArgs, config: &Config) -> anyhow::Result<()> {
    let store = super::open_store(config, "groups").await?;
    let specs = super::select(super::group_specs(config), &args.groups)?;
    let admin = Admin::new(&config.kafka)?;
    let look = async || -> anyhow::Result<Vec<GroupStatus>> {
        let mut out = Vec::new();
        for s in &specs {
            out.push(admin.group_status(s, Some(&store)).await.with_context(|| format!("reading group {}", s.group))?);
        }
        Ok(out)
    };
    let mut before = look().await?;
    let mut at = Instant::now();
    if !args.watch {
        if args.trend_ms > 0 {
            tokio::time::sleep(Duration::from_millis(args.trend_ms)).await;
            let mut now = look().await?;
            add_trends(&mut now, &before, at.elapsed());
            before = now;
        }
        print(&before, args.json)?;
        store.close().await;
        return Ok(());
    }
    print(&before, args.json)?;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(args.interval_s.max(1))) => {}
            _ = crate::shutdown_signal() => break,
        }
        let mut now = look().await?;
        add_trends(&mut now, &before, at.elapsed());
        at = Instant::now();
        if !args.json {
            // Clear the screen and go home, like `watch`.
            print!("\x1b[2J\x1b[H");
        }
        print(&now, args.json)?;
        before = now;
    }
    store.close().await;
    Ok(())
}

fn print(groups: &[GroupStatus], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(groups)?);
        return Ok(());
    }
    let opt = |o: Option<i64>| o.map_or_else(|| "-".to_owned(), |o| o.to_string());
    for g in groups {
        let members = match &g.members {
            Some(m) => m.len().to_string(),
            None => "unknown".to_owned(),
        };
        let trend = g
            .trend
            .map_or_else(String::new, |t| format!(", {} {:+.0}/s, consuming {:.0}/s", t.direction, t.per_second, t.consumed_per_second));
        println!(
            "GROUP {}  processor {}  offsets in {:?}  state {}  members {}  lag {}{}",
            g.group,
            g.processor,
            g.offsets_kept_in,
            g.state.as_deref().unwrap_or("unknown"),
            members,
            g.lag,
            trend
        );
        if let Some(e) = &g.describe_error {
            println!("  ! members unknown: the broker did not describe the group ({e})");
        }
        for m in g.members.iter().flatten() {
            println!("  member {} ({}, {})  {}", m.client_id, m.member_id, m.host, m.partitions.join(","));
        }
        println!("  {:<40} {:>4} {:<28} {:>10} {:>10} {:>10} {:>10}", "topic", "part", "owner", "committed", "stored", "log end", "lag");
        for p in &g.partitions {
            println!(
                "  {:<40} {:>4} {:<28} {:>10} {:>10} {:>10} {:>10}",
                p.topic,
                p.partition,
                p.owner.as_deref().unwrap_or("-"),
                opt(p.committed),
                opt(p.stored),
                p.log_end,
                p.lag
            );
        }
        println!();
    }
    Ok(())
}
