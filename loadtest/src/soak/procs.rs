//! Sampling the deployment's processes: memory (`VmRSS`) and the progress group's lag.

use anyhow::bail;
use lms_bus::TopicMap;
use lms_events::Domain;

use super::load::Shared;
use lms_harness::deploy::Fleet;

pub(crate) fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Records accepted on `domains` not yet covered by the offsets `group` stored.
pub(crate) async fn lag(
    store: &lms_state::Store,
    shared: &Shared,
    group: &str,
    topics: &TopicMap,
    domains: &[Domain],
) -> anyhow::Result<i64> {
    let names: Vec<&str> = domains.iter().map(|d| topics.topic(*d)).collect();
    let stored: i64 =
        lms_state::offsets::load(store, group).await?.iter().filter(|(tp, _)| names.contains(&&*tp.topic)).map(|(_, o)| *o).sum();
    Ok((shared.accepted_on(domains) as i64 - stored).max(0))
}

/// The `lms` processes, by name and pid; fails if one has exited.
pub(crate) fn processes(fleet: &mut Fleet) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    if let Some(lms_harness::Proc(api)) = fleet.api.as_mut() {
        if let Some(status) = api.try_wait()? {
            bail!("lms api exited ({status}); see its log");
        }
        out.push(("api".to_owned(), api.id()));
    }
    for (i, lms_harness::Proc(p)) in fleet.processors.iter_mut().enumerate() {
        if let Some(status) = p.try_wait()? {
            bail!("processor process {i} exited ({status}); see its log");
        }
        out.push((format!("processor-{i}"), p.id()));
    }
    Ok(out)
}
