//! A deployment of `lms` processes against running services (the chaos and soak runs):
//! fresh names, the `lms api` and processor processes ([`Fleet`]), and waiting until every
//! group has caught up.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use lms_bus::{TopicMap, TopicsFile};
use lms_events::Domain;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};
use serde_json::Value;

use crate::client::mint;
use crate::oracle::progress;
use crate::process::Proc;

/// The processors every process runs.
pub const PROCESSORS: &[&str] = &["catalog", "progress", "achievements", "notifications", "analytics", "erasure"];

/// The `lms` processes of a run; all are killed when dropped.
pub struct Fleet {
    pub lms_bin: PathBuf,
    pub log_dir: PathBuf,
    pub prefix: String,
    pub env: Vec<(String, String)>,
    pub rules: PathBuf,
    pub processor_names: Vec<String>,
    /// The processor processes (killed when the fleet is dropped).
    pub processors: Vec<Proc>,
    pub started: usize,
    /// The `lms api` process (killed when the fleet is dropped).
    pub api: Option<Proc>,
}

impl Fleet {
    pub fn spawn(&mut self, args: &[&str], log: &str) -> anyhow::Result<Proc> {
        crate::process::spawn_logged(&self.lms_bin, args, self.env.iter().map(|(k, v)| (k, v)), &self.log_dir.join(log))
            .map(Proc)
            .with_context(|| format!("starting {}", self.lms_bin.display()))
    }

    /// Starts one more `lms processor run <processors>` process (not added to `processors`).
    pub fn spawn_processor(&mut self) -> anyhow::Result<Proc> {
        let n = self.started;
        self.started += 1;
        let rules = self.rules.display().to_string();
        let names = self.processor_names.clone();
        let mut args = vec!["processor", "run"];
        args.extend(names.iter().map(String::as_str));
        args.extend_from_slice(&["--rules", &rules]);
        let log = format!("{}processor-{n}.log", self.prefix);
        self.spawn(&args, &log)
    }

    /// Stops every processor process with SIGTERM (it drains and commits) and waits for it;
    /// fails if one could not be stopped or did not exit cleanly (a replay that follows
    /// assumes none is running and every one committed its work).
    pub fn stop_processors(&mut self) -> anyhow::Result<()> {
        for (i, c) in self.processors.iter_mut().enumerate() {
            let status = c.terminate().with_context(|| format!("stopping processor process {i}"))?;
            ensure!(status.success(), "processor process {i} did not exit cleanly on SIGTERM ({status}); see its log");
        }
        Ok(())
    }

    /// Runs an `lms` command with the deployment's environment to its end; fails unless it
    /// succeeds.
    pub fn run_to_end(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let out = Command::new(&self.lms_bin)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .with_context(|| format!("running lms {args:?}"))?;
        ensure!(out.status.success(), "lms {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(out)
    }
}

/// Where a run's processes run and what they reach: the part of every scenario's
/// configuration (chaos, soak) that describes the deployment.
#[derive(Debug, Clone)]
pub struct Services {
    /// The `lms` binary.
    pub lms_bin: PathBuf,
    /// Kafka bootstrap servers.
    pub brokers: String,
    /// A PostgreSQL server URL whose user may create databases.
    pub postgres_url: String,
    /// The ClickHouse HTTP URL.
    pub clickhouse_url: String,
    /// Partitions of each topic (the dead-letter topic has one).
    pub partitions: i32,
    /// Processor processes (each runs one member of every group).
    pub instances: usize,
    /// Where the processes' logs (and their configuration file) go.
    pub log_dir: PathBuf,
    /// Every process produces one record per batch (for tansu's memory engine).
    pub one_record_per_batch: bool,
}

impl Services {
    /// These services; 4 partitions, one processor process, logs in the temporary directory.
    pub fn new(lms_bin: PathBuf, brokers: String, postgres_url: String, clickhouse_url: String) -> Services {
        Services {
            lms_bin,
            brokers,
            postgres_url,
            clickhouse_url,
            partitions: 4,
            instances: 1,
            log_dir: std::env::temp_dir(),
            one_record_per_batch: false,
        }
    }
}

/// What a deployment of `lms` processes against running services needs (the chaos and
/// soak runs).
#[derive(Debug, Clone)]
pub struct DeploySpec {
    /// Names the topics (`<name>-<id>.`), databases (`<name>_<id>`) and logs.
    pub name: &'static str,
    /// The services and processes.
    pub services: Services,
    /// Extra librdkafka properties of every process (`kafka.properties`).
    pub kafka_properties: Vec<(String, String)>,
    /// What every processor process runs.
    pub processors: Vec<String>,
    /// More environment of every process (`LMS_…` settings).
    pub env: Vec<(String, String)>,
}

/// A running deployment: fresh topics, state store and ClickHouse database, `lms api` and
/// the processor processes (killed when dropped).
pub struct Deployment {
    pub prefix: String,
    pub topics: TopicMap,
    /// The state store, migrated.
    pub store: lms_state::Store,
    pub secret: String,
    /// `http://127.0.0.1:<port>` of the API.
    pub base: String,
    pub http: reqwest::Client,
    pub fleet: Fleet,
}

impl Deployment {
    /// Creates the fresh names and starts the processes; returns once the API is ready.
    pub async fn start(spec: &DeploySpec, say: impl Fn(String)) -> anyhow::Result<Deployment> {
        let name = spec.name;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("{name}-{}.", &id[..8]);
        let topics = TopicsFile::bundled().topic_map(&prefix);
        let partitions: Vec<(&str, i32)> = Domain::ALL
            .into_iter()
            .map(|d| (topics.topic(d), if d == Domain::DeadLetter { 1 } else { spec.services.partitions }))
            .collect();
        crate::create_topics(&spec.services.brokers, &partitions).await?;
        let store_url = lms_state::create_postgres_database(&spec.services.postgres_url, &format!("{name}_{}", &id[..10]))
            .await
            .context("creating the run's state database")?;
        // Migrated here, once, before the processes race to do it.
        let store = processors::open_store(&store_url, 2).await.context("opening the fresh state store")?;
        let clickhouse_db = format!("{name}_{}", &id[..10]);
        std::fs::create_dir_all(&spec.services.log_dir)?;
        let rules = spec.services.log_dir.join(format!("{prefix}rules.yaml"));
        std::fs::write(&rules, progress::ACHIEVEMENT_RULES)?;
        let config_file = spec.services.log_dir.join(format!("{prefix}lms.yaml"));
        let mut properties = spec.kafka_properties.clone();
        if spec.services.one_record_per_batch {
            properties.push(("batch.num.messages".to_owned(), "1".to_owned()));
        }
        let yaml = if properties.is_empty() {
            "{}\n".to_owned()
        } else {
            let lines: String =
                properties.iter().map(|(k, v)| format!("    {}: {}\n", Value::from(k.as_str()), Value::from(v.as_str()))).collect();
            format!("kafka:\n  properties:\n{lines}")
        };
        std::fs::write(&config_file, yaml)?;
        let secret = format!("{name}-{id}");
        let port = crate::free_port();
        let env: Vec<(String, String)> = [
            ("LMS_CONFIG", config_file.display().to_string()),
            ("LMS_KAFKA__BROKERS", spec.services.brokers.clone()),
            ("LMS_KAFKA__TOPIC_PREFIX", prefix.clone()),
            ("LMS_STORE__URL", store_url.clone()),
            ("LMS_ANALYTICS__STORE", "clickhouse".to_owned()),
            ("LMS_ANALYTICS__URL", spec.services.clickhouse_url.clone()),
            ("LMS_ANALYTICS__DATABASE", clickhouse_db.clone()),
            ("LMS_CONSUMER__MAX_BATCH_RECORDS", "500".to_owned()),
            ("LMS_CONSUMER__MAX_BATCH_WAIT_MS", "50".to_owned()),
            ("LMS_CONSUMER__SESSION_TIMEOUT_MS", "6000".to_owned()),
            ("LMS_API__LISTEN", format!("127.0.0.1:{port}")),
            ("LMS_API__RATE_LIMIT__PER_SECOND", "0".to_owned()),
            ("LMS_JWT_SECRET", secret.clone()),
            ("RUST_LOG", "info,librdkafka=warn".to_owned()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(spec.env.iter().cloned())
        .collect();
        say(format!(
            "topics {prefix}*, state store {}, ClickHouse database {clickhouse_db}, logs in {}",
            lms_state::redact_url(&store_url),
            spec.services.log_dir.display()
        ));

        let mut fleet = Fleet {
            lms_bin: spec.services.lms_bin.clone(),
            log_dir: spec.services.log_dir.clone(),
            prefix: prefix.clone(),
            env,
            rules,
            processor_names: spec.processors.clone(),
            processors: Vec::new(),
            started: 0,
            api: None,
        };
        fleet.api = Some(fleet.spawn(&["api"], &format!("{prefix}api.log"))?);
        for _ in 0..spec.services.instances {
            let c = fleet.spawn_processor()?;
            fleet.processors.push(c);
        }
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        wait_ready(&http, &base).await?;
        say(format!("API ready at {base}; {} processor processes", spec.services.instances));
        Ok(Deployment { prefix, topics, store, secret, base, http, fleet })
    }

    /// A token of `tenant` with `scope`, valid for a day.
    pub fn token(&self, sub: &str, tenant: &str, scope: &str) -> String {
        mint(&self.secret, sub, tenant, scope)
    }
}

pub fn group_of(prefix: &str, processor: &str) -> String {
    lms_bus::KafkaConfig::new("").with_prefix(prefix).group_id(processor)
}

pub async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let ready = || async { http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200).then_some(()) };
    crate::poll_until(Duration::from_secs(60), ready).await.with_context(|| format!("{base}/readyz did not answer 200 within 60 s"))
}

/// The partitions of `topics` where `group` is behind the end, as `(partition, committed,
/// high watermark)` (committed offsets against high watermarks).
pub fn group_lag(brokers: &str, group: &str, topics: &[String]) -> anyhow::Result<Vec<(String, i64, i64)>> {
    let consumer: BaseConsumer =
        ClientConfig::new().set("bootstrap.servers", brokers).set("group.id", group).set("enable.auto.commit", "false").create()?;
    let timeout = Duration::from_secs(10);
    let mut behind = Vec::new();
    for topic in topics {
        let md = consumer.fetch_metadata(Some(topic), timeout)?;
        let partitions: Vec<i32> =
            md.topics().iter().flat_map(|t| t.partitions().iter().map(rdkafka::metadata::MetadataPartition::id)).collect();
        let mut tpl = TopicPartitionList::new();
        for p in &partitions {
            tpl.add_partition(topic, *p);
        }
        let committed = consumer.committed_offsets(tpl, timeout)?;
        for p in partitions {
            let (_, high) = consumer.fetch_watermarks(topic, p, timeout)?;
            let at = committed.find_partition(topic, p).and_then(|e| e.offset().to_raw()).filter(|o| *o >= 0).unwrap_or(0);
            if high > at {
                behind.push((format!("{topic}/{p}"), at, high));
            }
        }
    }
    Ok(behind)
}

/// Waits until every group has committed the end of its topics and (when given) the
/// outbox is empty, twice in a row. On timeout the error names every partition still
/// behind, per group.
pub async fn wait_caught_up(
    brokers: &str,
    groups: &[(String, Vec<String>)],
    store: Option<&lms_state::Store>,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut streak = 0;
    loop {
        let pending = match store {
            Some(s) => lms_state::outbox::pending(s).await.unwrap_or(1),
            None => 0,
        };
        let (b, g) = (brokers.to_owned(), groups.to_vec());
        let behind = tokio::task::spawn_blocking(move || -> anyhow::Result<Vec<(String, String, i64, i64)>> {
            let mut behind = Vec::new();
            for (group, topics) in &g {
                for (partition, committed, high) in group_lag(&b, group, topics)? {
                    behind.push((group.clone(), partition, committed, high));
                }
            }
            Ok(behind)
        })
        .await??;
        streak = if behind.is_empty() && pending == 0 { streak + 1 } else { 0 };
        if streak >= 2 {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let mut lines = Vec::new();
            for (group, partition, committed, high) in &behind {
                // The stateful groups keep their offsets in the store; Kafka holds a mirror.
                let stored = match store {
                    Some(s) => lms_state::offsets::load(s, group)
                        .await
                        .ok()
                        .and_then(|o| o.into_iter().find(|(tp, _)| format!("{}/{}", tp.topic, tp.partition) == *partition).map(|(_, o)| o)),
                    None => None,
                };
                let stored = stored.map(|o| format!(", stored {o}")).unwrap_or_default();
                lines.push(format!("{group} {partition}: committed {committed}{stored}, end {high}"));
            }
            bail!("not caught up after {timeout:?}: outbox {pending} rows; behind:\n  {}", lines.join("\n  "));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
