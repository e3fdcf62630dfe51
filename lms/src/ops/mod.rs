//! Operator commands: `lms groups`, `lms replay`, `lms dlq`. The logic lives in
//! `lms_bus::admin`; here are the command lines, the state store and the printing.

pub mod dlq;
pub mod groups;
pub mod health;
pub mod lag;
pub mod replay;

use anyhow::Context as _;
use lms_bus::TopicsFile;
use lms_bus::admin::groups::{GroupSpec, OffsetsKeptIn};
use lms_state::Store;

use crate::config::Config;

/// The pipeline's consumer groups: one per registered processor, with the topics it
/// reads and where it keeps the offsets it resumes from (`Registered::offsets_in_store`,
/// checked against the built processors by a test of the registry).
pub fn group_specs(config: &Config) -> Vec<GroupSpec> {
    let topics = TopicsFile::bundled().topic_map(&config.kafka.topic_prefix);
    processors::REGISTRY
        .iter()
        .map(|r| GroupSpec {
            group: config.kafka.group_id(r.name),
            processor: r.name.to_owned(),
            topics: r.domains.iter().map(|d| topics.topic(*d).to_owned()).collect(),
            offsets: if r.offsets_in_store { OffsetsKeptIn::Store } else { OffsetsKeptIn::Kafka },
        })
        .collect()
}

/// Picks groups by processor name or group id; an unknown one fails with the known ones.
pub fn select(specs: Vec<GroupSpec>, wanted: &[String]) -> anyhow::Result<Vec<GroupSpec>> {
    if wanted.is_empty() {
        return Ok(specs);
    }
    let mut out = Vec::new();
    for w in wanted {
        let Some(s) = specs.iter().find(|s| &s.processor == w || &s.group == w) else {
            let known: Vec<String> = specs.iter().map(|s| format!("{} ({})", s.processor, s.group)).collect();
            anyhow::bail!("unknown group {w:?}; the pipeline's groups are: {}", known.join(", "));
        };
        out.push(s.clone());
    }
    Ok(out)
}

/// Opens the state store of the configuration, which `lms <command>` needs set explicitly:
/// reading or resetting the offsets of a default SQLite file nobody else uses would report
/// or change nothing of the deployment's.
pub async fn open_store(config: &Config, command: &str) -> anyhow::Result<Store> {
    config.require_stores(command, false)?;
    processors::open_store(&config.store.url, 2)
        .await
        .with_context(|| format!("cannot open the state store {}", lms_state::redact_url(&config.store.url)))
}
