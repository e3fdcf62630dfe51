//! `topics.yaml`: the topics of the pipeline, the domain each one carries, and the
//! idempotent plan/apply that makes a cluster match the file.
//!
//! The plan compares the file with what the broker reports (metadata for partitions
//! and replication, DescribeConfigs for configs) and lists actions it will take (create
//! topics, add partitions, set configs), drift it will not fix (fewer partitions than
//! the broker has, another replication factor, unmanaged topics) and what it could not
//! verify. Known broker limitation: tansu 0.6.0 answers DescribeConfigs with no entries,
//! so configs of existing topics show up as unverified there rather than as drift.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::Duration;

use lms_events::Domain;
use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, NewPartitions, NewTopic, ResourceSpecifier, TopicReplication};
use serde::{Deserialize, Serialize};

use crate::config::KafkaConfig;
use crate::error::BusError;

/// The topics.yaml shipped with this build; `--topics <path>` reads another one.
pub const BUNDLED_TOPICS_YAML: &str = include_str!("../../topics.yaml");

/// The contents of topics.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicsFile {
    /// Topics whose names start with this (after the run-time prefix) are managed by the
    /// file; those it does not list are reported as unmanaged.
    pub managed_prefix: String,
    /// Replication factor of topics that do not set their own.
    pub replication_factor: i32,
    /// The topics.
    pub topics: Vec<TopicSpec>,
}

/// One topic of topics.yaml.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// Topic name without the run-time prefix.
    pub name: String,
    /// The domain whose events the topic carries.
    pub domain: Domain,
    /// Partition count: the upper bound of a consumer group's parallelism.
    pub partitions: i32,
    /// Overrides the file's replication factor.
    #[serde(default)]
    pub replication_factor: Option<i32>,
    /// Topic configs (`cleanup.policy`, `retention.ms`, ...), values as strings.
    #[serde(default)]
    pub config: BTreeMap<String, String>,
}

impl TopicsFile {
    /// Parses and checks a topics file: one topic per domain, positive counts.
    pub fn parse(yaml: &str) -> Result<Self, BusError> {
        let file: TopicsFile = serde_yaml::from_str(yaml).map_err(|e| BusError::Topics(format!("topics.yaml: {e}")))?;
        let mut seen = HashMap::new();
        for t in &file.topics {
            if t.partitions < 1 {
                return Err(BusError::Topics(format!("topic {}: partitions must be >= 1", t.name)));
            }
            if let Some(other) = seen.insert(t.domain, &t.name) {
                return Err(BusError::Topics(format!(
                    "topics {other} and {} both carry domain {}; one topic per domain",
                    t.name,
                    t.domain.as_str()
                )));
            }
            if !t.name.starts_with(&file.managed_prefix) {
                return Err(BusError::Topics(format!("topic {} does not start with managed_prefix {:?}", t.name, file.managed_prefix)));
            }
        }
        for d in Domain::ALL {
            if !seen.contains_key(&d) {
                return Err(BusError::Topics(format!("no topic carries domain {}", d.as_str())));
            }
        }
        Ok(file)
    }

    /// The file shipped with this build.
    pub fn bundled() -> Self {
        Self::parse(BUNDLED_TOPICS_YAML).expect("the bundled topics.yaml is checked by a unit test")
    }

    /// The domain → topic-name map with the run-time prefix applied.
    pub fn topic_map(&self, prefix: &str) -> TopicMap {
        TopicMap { names: self.topics.iter().map(|t| (t.domain, format!("{prefix}{}", t.name))).collect() }
    }
}

/// Resolves a domain to its topic name (prefix included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicMap {
    names: HashMap<Domain, String>,
}

impl TopicMap {
    /// The topic carrying `domain`.
    pub fn topic(&self, domain: Domain) -> &str {
        self.names.get(&domain).map(String::as_str).unwrap_or_else(|| {
            // TopicsFile::parse guarantees every domain has a topic.
            unreachable!("topics file without a topic for {domain:?}")
        })
    }

    /// The domain carried by a topic name, if it is one of ours.
    pub fn domain_of(&self, topic: &str) -> Option<Domain> {
        self.names.iter().find(|(_, n)| n.as_str() == topic).map(|(d, _)| *d)
    }
}

/// What the broker reports about one topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObservedTopic {
    /// Partition count.
    pub partitions: i32,
    /// Replicas of partition 0 (the broker's replication factor for the topic).
    pub replication_factor: i32,
    /// Configs as DescribeConfigs answered; `None` when the broker answered nothing.
    pub config: Option<BTreeMap<String, String>>,
}

/// One change `apply` will make.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Create a missing topic.
    Create { topic: String, partitions: i32, replication_factor: i32, config: BTreeMap<String, String> },
    /// Raise the partition count.
    AddPartitions { topic: String, from: i32, to: i32 },
    /// Set configs that differ from the file (the whole managed set is written).
    SetConfig { topic: String, changes: Vec<(String, Option<String>, String)>, config: BTreeMap<String, String> },
    /// Delete a topic under the managed prefix that the file does not list (only with
    /// `--delete-unmanaged`).
    Delete { topic: String },
}

/// A difference `apply` will not fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drift {
    /// The broker has more partitions than the file asks for; Kafka cannot remove any.
    MorePartitions { topic: String, have: i32, want: i32 },
    /// The replication factor differs; changing it needs a partition reassignment.
    ReplicationFactor { topic: String, have: i32, want: i32 },
    /// A topic under the managed prefix that the file does not list.
    Unmanaged { topic: String },
}

/// The plan: actions, drift and what could not be verified.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Changes `apply` makes, in order.
    pub actions: Vec<Action>,
    /// Differences reported but not fixed.
    pub drift: Vec<Drift>,
    /// Things the broker did not let us check.
    pub unverified: Vec<String>,
}

impl Plan {
    /// Compares the wanted topics with the observed ones. Pure, so it is unit-tested
    /// without a broker.
    pub fn compute(
        file: &TopicsFile,
        prefix: &str,
        replication_override: Option<i32>,
        observed: &BTreeMap<String, ObservedTopic>,
        delete_unmanaged: bool,
    ) -> Plan {
        let mut plan = Plan::default();
        for spec in &file.topics {
            let topic = format!("{prefix}{}", spec.name);
            let rf = replication_override.or(spec.replication_factor).unwrap_or(file.replication_factor);
            match observed.get(&topic) {
                None => plan.actions.push(Action::Create {
                    topic,
                    partitions: spec.partitions,
                    replication_factor: rf,
                    config: spec.config.clone(),
                }),
                Some(o) => {
                    if o.partitions < spec.partitions {
                        plan.actions.push(Action::AddPartitions { topic: topic.clone(), from: o.partitions, to: spec.partitions });
                    } else if o.partitions > spec.partitions {
                        plan.drift.push(Drift::MorePartitions { topic: topic.clone(), have: o.partitions, want: spec.partitions });
                    }
                    if o.replication_factor != rf {
                        plan.drift.push(Drift::ReplicationFactor { topic: topic.clone(), have: o.replication_factor, want: rf });
                    }
                    match &o.config {
                        None if !spec.config.is_empty() => plan.unverified.push(format!(
                            "configs of {topic} ({}): the broker answered DescribeConfigs with no entries",
                            spec.config.keys().cloned().collect::<Vec<_>>().join(", ")
                        )),
                        None => {}
                        Some(have) => {
                            let changes: Vec<_> = spec
                                .config
                                .iter()
                                .filter(|(k, v)| have.get(*k) != Some(*v))
                                .map(|(k, v)| (k.clone(), have.get(k).cloned(), v.clone()))
                                .collect();
                            if !changes.is_empty() {
                                plan.actions.push(Action::SetConfig { topic: topic.clone(), changes, config: spec.config.clone() });
                            }
                        }
                    }
                }
            }
        }
        let managed = format!("{prefix}{}", file.managed_prefix);
        for topic in observed.keys() {
            let listed = file.topics.iter().any(|s| format!("{prefix}{}", s.name) == *topic);
            if topic.starts_with(&managed) && !listed {
                if delete_unmanaged {
                    plan.actions.push(Action::Delete { topic: topic.clone() });
                } else {
                    plan.drift.push(Drift::Unmanaged { topic: topic.clone() });
                }
            }
        }
        plan
    }

    /// True when applying would change nothing.
    pub fn is_noop(&self) -> bool {
        self.actions.is_empty()
    }
}

impl fmt::Display for Plan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.actions.is_empty() {
            writeln!(f, "No changes: every topic of the file exists as specified.")?;
        }
        for a in &self.actions {
            match a {
                Action::Create { topic, partitions, replication_factor, config } => {
                    let cfg: Vec<String> = config.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    writeln!(
                        f,
                        "+ create {topic}: {partitions} partitions, replication {replication_factor}, {}",
                        if cfg.is_empty() { "no configs".to_owned() } else { cfg.join(" ") }
                    )?;
                }
                Action::AddPartitions { topic, from, to } => writeln!(f, "~ partitions of {topic}: {from} -> {to}")?,
                Action::SetConfig { topic, changes, .. } => {
                    for (k, from, to) in changes {
                        writeln!(f, "~ config of {topic}: {k} {} -> {to}", from.as_deref().unwrap_or("(unset)"))?;
                    }
                }
                Action::Delete { topic } => writeln!(f, "- delete {topic} (not in the file)")?,
            }
        }
        for d in &self.drift {
            match d {
                Drift::MorePartitions { topic, have, want } => {
                    writeln!(
                        f,
                        "! drift, not fixed: {topic} has {have} partitions, the file wants {want}; Kafka cannot remove partitions"
                    )?;
                }
                Drift::ReplicationFactor { topic, have, want } => writeln!(
                    f,
                    "! drift, not fixed: {topic} has replication factor {have}, the file wants {want}; it needs a partition reassignment"
                )?,
                Drift::Unmanaged { topic } => {
                    writeln!(f, "! drift, not fixed: {topic} is not in the file (delete it with --delete-unmanaged)")?;
                }
            }
        }
        for u in &self.unverified {
            writeln!(f, "? not verified: {u}")?;
        }
        Ok(())
    }
}

/// Talks to the cluster's admin API.
pub struct TopicAdmin {
    admin: AdminClient<crate::producer::ClientErrors>,
    timeout: Duration,
}

impl TopicAdmin {
    /// Connects an admin client.
    pub fn new(kafka: &KafkaConfig) -> Result<Self, BusError> {
        let admin = kafka.finish(kafka.base("lms-topics")).create_with_context(crate::producer::ClientErrors::default())?;
        Ok(Self { admin, timeout: Duration::from_secs(30) })
    }

    /// Reads partitions, replication and configs of every topic on the broker.
    pub async fn observe(&self) -> Result<BTreeMap<String, ObservedTopic>, BusError> {
        let md = self.admin.inner().fetch_metadata(None, self.timeout)?;
        let mut out = BTreeMap::new();
        for t in md.topics() {
            if t.name().starts_with("__") {
                continue;
            }
            let rf = t.partitions().first().map(|p| p.replicas().len() as i32).unwrap_or(0);
            out.insert(
                t.name().to_owned(),
                ObservedTopic { partitions: t.partitions().len() as i32, replication_factor: rf, config: None },
            );
        }
        if !out.is_empty() {
            let names: Vec<String> = out.keys().cloned().collect();
            let specs: Vec<ResourceSpecifier<'_>> = names.iter().map(|n| ResourceSpecifier::Topic(n)).collect();
            // A broker that cannot describe configs leaves them unverified instead of failing the plan.
            match self.admin.describe_configs(&specs, &self.options()).await {
                Ok(results) => {
                    for (name, r) in names.iter().zip(results) {
                        if let (Ok(res), Some(o)) = (r, out.get_mut(name))
                            && !res.entries.is_empty()
                        {
                            o.config = Some(res.entries.iter().filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v))).collect());
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "DescribeConfigs failed; configs stay unverified"),
            }
        }
        Ok(out)
    }

    fn options(&self) -> AdminOptions {
        AdminOptions::new().operation_timeout(Some(self.timeout)).request_timeout(Some(self.timeout))
    }

    /// Plans against the broker's current state.
    pub async fn plan(
        &self,
        file: &TopicsFile,
        prefix: &str,
        replication_override: Option<i32>,
        delete_unmanaged: bool,
    ) -> Result<Plan, BusError> {
        let observed = self.observe().await?;
        Ok(Plan::compute(file, prefix, replication_override, &observed, delete_unmanaged))
    }

    /// Carries out a plan's actions. Returns the actions the broker does not support
    /// (with the reason), which stay as drift; stops at the first other failure and says
    /// which action failed (what was done before it stays done, a re-run continues).
    pub async fn apply(&self, plan: &Plan) -> Result<Vec<String>, BusError> {
        let mut unsupported = Vec::new();
        let opts = self.options();
        for action in &plan.actions {
            let results = match action {
                Action::Create { topic, partitions, replication_factor, config } => {
                    let mut nt = NewTopic::new(topic, *partitions, TopicReplication::Fixed(*replication_factor));
                    for (k, v) in config {
                        nt = nt.set(k, v);
                    }
                    self.admin.create_topics([&nt], &opts).await?
                }
                Action::AddPartitions { topic, to, .. } => {
                    let np = NewPartitions::new(topic, *to as usize);
                    match self.admin.create_partitions([&np], &opts).await {
                        Err(rdkafka::error::KafkaError::AdminOp(rdkafka::types::RDKafkaErrorCode::UnsupportedFeature)) => {
                            vec![Err((topic.clone(), rdkafka::types::RDKafkaErrorCode::UnsupportedFeature))]
                        }
                        other => other?,
                    }
                }
                Action::SetConfig { topic, config, .. } => {
                    let mut ac = AlterConfig::new(ResourceSpecifier::Topic(topic));
                    for (k, v) in config {
                        ac = ac.set(k, v);
                    }
                    let r = self.admin.alter_configs([&ac], &opts).await?;
                    r.into_iter().map(|r| r.map(|_| topic.clone()).map_err(|(_, code)| (topic.clone(), code))).collect()
                }
                Action::Delete { topic } => self.admin.delete_topics(&[topic.as_str()], &opts).await?,
            };
            for r in results {
                if let Err((topic, code)) = r {
                    // A topic created meanwhile by someone else is what we wanted anyway.
                    if code == rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists {
                        continue;
                    }
                    if code == rdkafka::types::RDKafkaErrorCode::UnsupportedFeature {
                        // tansu 0.6.0 does not implement CreatePartitions, for one.
                        unsupported.push(format!("{topic}: the broker does not support this change ({action:?})"));
                        continue;
                    }
                    return Err(BusError::Topics(format!("{topic}: {code} (while applying: {action:?})")));
                }
            }
        }
        Ok(unsupported)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed_from(file: &TopicsFile, prefix: &str) -> BTreeMap<String, ObservedTopic> {
        file.topics
            .iter()
            .map(|t| {
                (
                    format!("{prefix}{}", t.name),
                    ObservedTopic { partitions: t.partitions, replication_factor: file.replication_factor, config: Some(t.config.clone()) },
                )
            })
            .collect()
    }

    #[test]
    fn bundled_file_parses_and_covers_every_domain() {
        let f = TopicsFile::bundled();
        let m = f.topic_map("x.");
        for d in Domain::ALL {
            assert!(m.topic(d).starts_with("x.lms."));
            assert_eq!(m.domain_of(m.topic(d)), Some(d));
        }
    }

    #[test]
    fn empty_cluster_plans_a_create_per_topic() {
        let f = TopicsFile::bundled();
        let p = Plan::compute(&f, "", None, &BTreeMap::new(), false);
        assert_eq!(p.actions.len(), f.topics.len());
        assert!(p.actions.iter().all(|a| matches!(a, Action::Create { .. })));
    }

    #[test]
    fn matching_cluster_plans_nothing() {
        let f = TopicsFile::bundled();
        let p = Plan::compute(&f, "p.", None, &observed_from(&f, "p."), false);
        assert!(p.is_noop(), "{p}");
        assert!(p.drift.is_empty() && p.unverified.is_empty());
    }

    #[test]
    fn partitions_are_raised_never_lowered() {
        let f = TopicsFile::bundled();
        let mut o = observed_from(&f, "");
        if let Some(t) = o.get_mut("lms.learning.v1") {
            t.partitions = 4;
        }
        if let Some(t) = o.get_mut("lms.payment.v1") {
            t.partitions = 50;
        }
        let p = Plan::compute(&f, "", None, &o, false);
        assert_eq!(p.actions, vec![Action::AddPartitions { topic: "lms.learning.v1".into(), from: 4, to: 12 }]);
        assert_eq!(p.drift, vec![Drift::MorePartitions { topic: "lms.payment.v1".into(), have: 50, want: 6 }]);
    }

    #[test]
    fn unmanaged_topics_are_deleted_only_when_asked() {
        let f = TopicsFile::bundled();
        let mut o = observed_from(&f, "");
        o.insert("lms.old.v0".into(), ObservedTopic { partitions: 1, replication_factor: 1, config: None });
        o.insert("other-team".into(), ObservedTopic { partitions: 1, replication_factor: 1, config: None });
        let p = Plan::compute(&f, "", None, &o, false);
        assert!(p.is_noop());
        assert_eq!(p.drift, vec![Drift::Unmanaged { topic: "lms.old.v0".into() }]);
        let p = Plan::compute(&f, "", None, &o, true);
        assert_eq!(p.actions, vec![Action::Delete { topic: "lms.old.v0".into() }]);
    }

    #[test]
    fn configs_are_compared_when_known_and_unverified_when_not() {
        let f = TopicsFile::bundled();
        let mut o = observed_from(&f, "");
        if let Some(c) = o.get_mut("lms.catalog.v1").and_then(|t| t.config.as_mut()) {
            c.insert("cleanup.policy".into(), "delete".into());
        }
        if let Some(t) = o.get_mut("lms.derived.v1") {
            t.config = None;
        }
        let p = Plan::compute(&f, "", None, &o, false);
        assert!(matches!(&p.actions[..], [Action::SetConfig { topic, changes, .. }]
            if topic == "lms.catalog.v1" && changes == &vec![("cleanup.policy".to_owned(), Some("delete".to_owned()), "compact".to_owned())]));
        assert_eq!(p.unverified.len(), 1);
        assert!(p.unverified[0].contains("lms.derived.v1"));
    }

    #[test]
    fn a_file_without_some_domain_is_refused() {
        let err =
            TopicsFile::parse("managed_prefix: lms.\nreplication_factor: 1\ntopics:\n  - {name: lms.a, domain: learning, partitions: 1}\n")
                .unwrap_err()
                .to_string();
        assert!(err.contains("no topic carries domain"), "{err}");
    }
}
