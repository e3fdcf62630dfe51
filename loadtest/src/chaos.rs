//! The chaos run: the whole pipeline as separate `lms` processes against real services,
//! with processor instances killed by SIGKILL at random moments, then every read endpoint
//! compared with the oracles.
//!
//! 1. Fresh names: a topic prefix, a PostgreSQL database, a ClickHouse database.
//! 2. `lms api` and `instances` processes of `lms processor run catalog progress achievements
//!    notifications analytics` (each process one member of every group).
//! 3. A generated cohort (`lms_generator::Cohort`) through `POST /v1/events` with a token per
//!    tenant minted from the JWT secret; 429 and 503 (and connection errors) are retried with
//!    the same body, so the same ids. Course versions arrive late, in phases that end at
//!    quiet moments (every group caught up): first every course's version 1 (and the
//!    retirements), then half of the activity, then the later versions of the cohort
//!    (which add a lesson: learners who completed version 1 are no longer complete), then
//!    the other half, then one more version per tenant that removes a lesson (learners
//!    complete without a new event). Progress and analytics must follow the last version
//!    whatever arrived when; `course.completed`, achievements and notifications follow
//!    what each phase showed, and stay ([`crate::oracle::progress::Oracle::phased`]).
//! 4. Meanwhile a schedule kills a random processor process with SIGKILL after a random
//!    delay, `kills` times, restarting each at once.
//! 5. Once the kills are done: wait until every group has committed the end of every
//!    partition it reads and the outbox is empty (twice in a row), then compare progress
//!    and achievements of every learner and the analytics endpoints (active learners,
//!    enrollments, completions, revenue per granularity, with and without a course filter;
//!    funnel per course; scores per assessment) with [`crate::oracle`], and every learner's
//!    in-app inbox with [`crate::oracle::notifications`] (the processes run with a
//!    throttle no learner reaches, so no notification is folded into a digest).
//!
//! The result counts, per endpoint, what is missing (`lost`: a count below the oracle's, a
//! learner-course or achievement absent) and what is counted twice (`doubled`: a count
//! above it, an extra item), and other differences (`wrong`: times, means).
//!
//! tansu's memory engine skips records when a consumer resumes inside a stored batch (see
//! the README's broker defects): with `one_record_per_batch` every `lms` process produces
//! one record per batch (`kafka.properties.batch.num.messages: 1` in a configuration file),
//! so every resume point is a batch boundary. tansu 0.6.0's SQLite engine is no way out
//! here: under this churn of group joins it panicked (`lite.rs:503`, "more or less than one
//! row") and stopped serving.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use api::analytics::params::MAX_AT_RISK_LIMIT;
use api::auth::{Claims, scope, sign_hs256};
use chrono::{DateTime, NaiveDate, Utc};
use futures::StreamExt as _;
use lms_analytics::{
    ActiveLearnersPoint, AtRiskLearner, AtRiskParams, CompletionsPoint, EnrollmentsPoint, Funnel, FunnelParams, Granularity, RevenueParams,
    RevenuePoint, Scores, ScoresParams, SeriesParams,
};
use lms_bus::{TopicMap, TopicsFile};
use lms_events::{Domain, Event, EventData};
use lms_generator::{Cohort, CohortConfig, Tenant};
use rand::{Rng, SeedableRng};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, TopicPartitionList};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::Mutex;

use crate::oracle::progress::LearnerKey;
use crate::oracle::{analytics, notifications, progress};

/// The processors every process runs.
pub const PROCESSORS: &[&str] = &["catalog", "progress", "achievements", "notifications", "analytics", "erasure"];

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The `lms` binary.
    pub lms_bin: PathBuf,
    /// Bootstrap servers (the durable broker with tansu).
    pub brokers: String,
    /// A PostgreSQL URL allowed to `CREATE DATABASE`; the run uses a fresh database on it.
    pub postgres_url: String,
    /// ClickHouse HTTP URL; the run uses a fresh database on it.
    pub clickhouse_url: String,
    /// SIGKILLs to deliver.
    pub kills: usize,
    /// Random delay between two kills, milliseconds (uniform in the range).
    pub kill_delay_ms: (u64, u64),
    /// Processor processes (each runs one member of every group).
    pub instances: usize,
    /// Cohort: seed, tenants, courses per tenant, learners per tenant, weeks.
    pub seed: u64,
    /// See `seed`.
    pub tenants: usize,
    /// See `seed`.
    pub courses: usize,
    /// See `seed`.
    pub learners: usize,
    /// See `seed`.
    pub weeks: u32,
    /// The end of the cohort's period.
    pub now: DateTime<Utc>,
    /// Events per POST.
    pub batch_size: usize,
    /// Concurrent POSTs.
    pub concurrency: usize,
    /// Partitions of each topic (the dead-letter topic has one).
    pub partitions: i32,
    /// How long the groups may take to catch up after the last kill.
    pub catch_up_timeout: Duration,
    /// Where the processes' logs (and their configuration file) go.
    pub log_dir: PathBuf,
    /// Every process produces one record per batch (for tansu's memory engine).
    pub one_record_per_batch: bool,
    /// Learners erased through `DELETE /v1/learners/{id}` after the first half of the
    /// activity (their later events are still sent: they must be dropped). The oracles then
    /// leave them out, but for their payments, which revenue keeps.
    pub erase: usize,
    /// After everything caught up: stop every processor, `lms replay --to-earliest` every
    /// group, start them again and compare after that (erased learners must stay erased).
    pub replay: bool,
    /// Print what happens.
    pub verbose: bool,
}

impl ChaosConfig {
    /// Defaults around the given services: 20 kills, 2 instances, 2 tenants of 150 learners
    /// over 6 weeks.
    pub fn new(lms_bin: PathBuf, brokers: String, postgres_url: String, clickhouse_url: String) -> ChaosConfig {
        ChaosConfig {
            lms_bin,
            brokers,
            postgres_url,
            clickhouse_url,
            kills: 20,
            kill_delay_ms: (500, 3000),
            instances: 2,
            seed: 42,
            tenants: 2,
            courses: 4,
            learners: 150,
            weeks: 6,
            now: DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z").map(|t| t.to_utc()).unwrap_or_else(|_| Utc::now()),
            batch_size: 200,
            concurrency: 4,
            partitions: 4,
            catch_up_timeout: Duration::from_secs(300),
            log_dir: std::env::temp_dir(),
            one_record_per_batch: true,
            erase: 0,
            replay: false,
            verbose: false,
        }
    }
}

/// Differences of one endpoint from the oracle.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    /// The endpoint.
    pub endpoint: String,
    /// Items compared (learner-courses, achievements, buckets, funnels, ...).
    pub checked: u64,
    /// Counted too few (events lost).
    pub lost: u64,
    /// Counted too many (events counted twice).
    pub doubled: u64,
    /// Other differences (times, means, percentiles).
    pub wrong: u64,
    /// The first few differences.
    pub examples: Vec<String>,
}

impl Tally {
    fn new(endpoint: &str) -> Tally {
        Tally { endpoint: endpoint.to_owned(), ..Tally::default() }
    }

    /// Compares a count; returns whether it matched.
    fn count(&mut self, got: u64, want: u64) -> bool {
        if got < want {
            self.lost += want - got;
        } else {
            self.doubled += got - want;
        }
        got == want
    }

    /// Adds `other`'s counts and as many of its examples as fit.
    fn add(&mut self, other: Tally) {
        self.checked += other.checked;
        self.lost += other.lost;
        self.doubled += other.doubled;
        self.wrong += other.wrong;
        for e in other.examples {
            self.example(e);
        }
    }

    fn example(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }

    /// No difference at all.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.wrong == 0
    }
}

/// The outcome of a chaos run.
#[derive(Debug, Clone)]
pub struct Report {
    /// Events generated (and accepted by the API).
    pub events: usize,
    /// SIGKILLs delivered.
    pub kills: usize,
    /// Of those, delivered before the API had accepted every event.
    pub kills_while_feeding: usize,
    /// POSTs the API asked to retry (429/503) or that failed to connect.
    pub retries: u64,
    /// From the first POST to the end of the catch-up.
    pub elapsed: Duration,
    /// From the last kill to caught up.
    pub catch_up: Duration,
    /// Per endpoint.
    pub tallies: Vec<Tally>,
}

impl Report {
    /// Nothing lost, nothing doubled, nothing else different.
    pub fn ok(&self) -> bool {
        self.tallies.iter().all(Tally::clean)
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} events, {} SIGKILLs ({} while the API was still accepting events), {} retried POSTs, {:.1} s in all, caught up {:.1} s after the last kill",
            self.events,
            self.kills,
            self.kills_while_feeding,
            self.retries,
            self.elapsed.as_secs_f64(),
            self.catch_up.as_secs_f64()
        )?;
        writeln!(f, "{:<42} {:>8} {:>6} {:>8} {:>6}", "endpoint", "checked", "lost", "doubled", "wrong")?;
        for t in &self.tallies {
            writeln!(f, "{:<42} {:>8} {:>6} {:>8} {:>6}", t.endpoint, t.checked, t.lost, t.doubled, t.wrong)?;
            for e in &t.examples {
                writeln!(f, "    {e}")?;
            }
        }
        let (lost, doubled, wrong) = self.tallies.iter().fold((0, 0, 0), |(l, d, w), t| (l + t.lost, d + t.doubled, w + t.wrong));
        write!(f, "total: lost {lost}, double-counted {doubled}, other differences {wrong} (goal 0 / 0 / 0)")
    }
}

/// The `lms` processes of a run; all are killed when dropped.
pub(crate) struct Fleet {
    lms_bin: PathBuf,
    log_dir: PathBuf,
    prefix: String,
    env: Vec<(String, String)>,
    rules: PathBuf,
    processor_names: Vec<String>,
    /// The processor processes.
    pub(crate) processors: Vec<Child>,
    started: usize,
    /// The `lms api` process.
    pub(crate) api: Option<Child>,
}

impl Fleet {
    fn spawn(&mut self, args: &[&str], log: &str) -> anyhow::Result<Child> {
        let log = std::fs::File::create(self.log_dir.join(log)).context("creating a process log")?;
        Command::new(&self.lms_bin)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", self.lms_bin.display()))
    }

    /// Starts one more `lms processor run <processors>` process (not added to `processors`).
    pub(crate) fn spawn_processor(&mut self) -> anyhow::Result<Child> {
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
}

impl Fleet {
    /// Stops every processor process with SIGTERM (it drains and commits) and waits for it.
    pub(crate) fn stop_processors(&mut self) {
        for c in &mut self.processors {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
            let _ = c.wait();
        }
    }

    /// Runs an `lms` command with the deployment's environment to its end; fails unless it
    /// succeeds.
    pub(crate) fn run_to_end(&self, args: &[&str]) -> anyhow::Result<std::process::Output> {
        let out = Command::new(&self.lms_bin)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .with_context(|| format!("running lms {args:?}"))?;
        ensure!(out.status.success(), "lms {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        Ok(out)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for c in self.processors.iter_mut().chain(self.api.as_mut()) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// What a deployment of `lms` processes against running services needs (the chaos and
/// soak runs).
#[derive(Debug, Clone)]
pub(crate) struct DeploySpec {
    /// Names the topics (`<name>-<id>.`), databases (`<name>_<id>`) and logs.
    pub(crate) name: &'static str,
    pub(crate) lms_bin: PathBuf,
    pub(crate) brokers: String,
    pub(crate) postgres_url: String,
    pub(crate) clickhouse_url: String,
    pub(crate) partitions: i32,
    pub(crate) log_dir: PathBuf,
    pub(crate) one_record_per_batch: bool,
    /// Extra librdkafka properties of every process (`kafka.properties`).
    pub(crate) kafka_properties: Vec<(String, String)>,
    /// What every processor process runs.
    pub(crate) processors: Vec<String>,
    /// Processor processes.
    pub(crate) instances: usize,
    /// More environment of every process (`LMS_…` settings).
    pub(crate) env: Vec<(String, String)>,
}

/// A running deployment: fresh topics, state store and ClickHouse database, `lms api` and
/// the processor processes (killed when dropped).
pub(crate) struct Deployment {
    pub(crate) prefix: String,
    pub(crate) topics: TopicMap,
    /// The state store, migrated.
    pub(crate) store: lms_state::Store,
    pub(crate) secret: String,
    /// `http://127.0.0.1:<port>` of the API.
    pub(crate) base: String,
    pub(crate) http: reqwest::Client,
    pub(crate) fleet: Fleet,
}

impl Deployment {
    /// Creates the fresh names and starts the processes; returns once the API is ready.
    pub(crate) async fn start(spec: &DeploySpec, say: impl Fn(String)) -> anyhow::Result<Deployment> {
        let name = spec.name;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let prefix = format!("{name}-{}.", &id[..8]);
        let topics = TopicsFile::bundled().topic_map(&prefix);
        for d in Domain::ALL {
            let p = if d == Domain::DeadLetter { 1 } else { spec.partitions };
            crate::create_topics(&spec.brokers, &[(topics.topic(d), p)]).await?;
        }
        let store_url = lms_state::create_postgres_database(&spec.postgres_url, &format!("{name}_{}", &id[..10]))
            .await
            .context("creating the run's state database")?;
        // Migrated here, once, before the processes race to do it.
        let store = lms_state::Store::open(&store_url, 2).await.context("opening the fresh state store")?;
        let clickhouse_db = format!("{name}_{}", &id[..10]);
        std::fs::create_dir_all(&spec.log_dir)?;
        let rules = spec.log_dir.join(format!("{prefix}rules.yaml"));
        std::fs::write(&rules, progress::ACHIEVEMENT_RULES)?;
        let config_file = spec.log_dir.join(format!("{prefix}lms.yaml"));
        let mut properties = spec.kafka_properties.clone();
        if spec.one_record_per_batch {
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
        let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let env: Vec<(String, String)> = [
            ("LMS_CONFIG", config_file.display().to_string()),
            ("LMS_KAFKA__BROKERS", spec.brokers.clone()),
            ("LMS_KAFKA__TOPIC_PREFIX", prefix.clone()),
            ("LMS_STORE__URL", store_url.clone()),
            ("LMS_ANALYTICS__STORE", "clickhouse".to_owned()),
            ("LMS_ANALYTICS__URL", spec.clickhouse_url.clone()),
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
            spec.log_dir.display()
        ));

        let mut fleet = Fleet {
            lms_bin: spec.lms_bin.clone(),
            log_dir: spec.log_dir.clone(),
            prefix: prefix.clone(),
            env,
            rules,
            processor_names: spec.processors.clone(),
            processors: Vec::new(),
            started: 0,
            api: None,
        };
        fleet.api = Some(fleet.spawn(&["api"], &format!("{prefix}api.log"))?);
        for _ in 0..spec.instances {
            let c = fleet.spawn_processor()?;
            fleet.processors.push(c);
        }
        let base = format!("http://127.0.0.1:{port}");
        let http = reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?;
        wait_ready(&http, &base).await?;
        say(format!("API ready at {base}; {} processor processes", spec.instances));
        Ok(Deployment { prefix, topics, store, secret, base, http, fleet })
    }

    /// A token of `tenant` with `scope`, valid for a day.
    pub(crate) fn token(&self, sub: &str, tenant: &str, scope: &str) -> String {
        mint(&self.secret, sub, tenant, scope)
    }
}

/// A token signed with `secret`, valid for a day.
pub(crate) fn mint(secret: &str, sub: &str, tenant: &str, scope: &str) -> String {
    let exp = (Utc::now().timestamp() + 24 * 3600) as u64;
    sign_hs256(secret.as_bytes(), &Claims { sub: sub.to_owned(), tenant: tenant.to_owned(), scope: scope.to_owned(), exp })
}

/// Runs the chaos scenario and compares the endpoints with the oracles.
pub async fn run(cfg: &ChaosConfig) -> anyhow::Result<Report> {
    ensure!(cfg.instances >= 1 && cfg.kill_delay_ms.0 <= cfg.kill_delay_ms.1, "instances ≥ 1 and a kill delay range min ≤ max");
    let say = |s: String| {
        if cfg.verbose {
            println!("[chaos] {s}");
        }
    };
    let spec = DeploySpec {
        name: "chaos",
        lms_bin: cfg.lms_bin.clone(),
        brokers: cfg.brokers.clone(),
        postgres_url: cfg.postgres_url.clone(),
        clickhouse_url: cfg.clickhouse_url.clone(),
        partitions: cfg.partitions,
        log_dir: cfg.log_dir.clone(),
        one_record_per_batch: cfg.one_record_per_batch,
        kafka_properties: Vec::new(),
        processors: PROCESSORS.iter().map(|p| (*p).to_owned()).collect(),
        instances: cfg.instances,
        // No learner reaches the throttle, so every notification is listed under its own id
        // (the inbox oracle does not model digests, whose windows run on processing time).
        env: vec![("LMS_NOTIFICATIONS__THROTTLE_PER_WINDOW".to_owned(), "1000000".to_owned())],
    };
    let Deployment { prefix, topics, store, secret, base, http, fleet } = Deployment::start(&spec, say).await?;

    let cohort_config = CohortConfig {
        tenants: cfg.tenants,
        courses: cfg.courses,
        learners: cfg.learners,
        weeks: cfg.weeks,
        now: cfg.now,
        ..CohortConfig::new(cfg.seed)
    };
    let mut cohort = Cohort::new(cohort_config).context("invalid cohort options")?;
    let events: Vec<Event> = cohort.by_ref().collect();
    let tenants: Vec<Tenant> = cohort.tenants().to_vec();
    let token = |tenant: &str, scope: &str| mint(&secret, "loadtest-chaos", tenant, scope);
    let (catalog, activity): (Vec<&Event>, Vec<&Event>) = events.iter().partition(|e| e.domain() == Domain::Catalog);
    let (late_versions, first_versions): (Vec<&Event>, Vec<&Event>) =
        catalog.iter().partition(|e| matches!(&e.data, EventData::CoursePublished(d) if d.version > 1));
    let removals = lesson_removals(&catalog, &tenants);
    let (first_half, second_half) = activity.split_at(activity.len() / 2);
    say(format!(
        "cohort: {} events ({} catalog, {} versions arriving late, {} removing a lesson), {} tenants × {} learners",
        events.len(),
        catalog.len(),
        late_versions.len(),
        removals.len(),
        cfg.tenants,
        cfg.learners
    ));

    let started = Instant::now();
    let retries = Arc::new(AtomicU64::new(0));
    let tokens: BTreeMap<String, String> = tenants.iter().map(|t| (t.name.clone(), token(&t.name, scope::EVENTS_WRITE))).collect();
    post_all(&http, &base, &tokens, &first_versions, cfg.batch_size, cfg.concurrency, &retries).await?;
    let catalog_group = vec![(group_of(&prefix, "catalog"), vec![topics.topic(Domain::Catalog).to_owned()])];
    wait_caught_up(&cfg.brokers, &catalog_group, None, Duration::from_secs(180)).await.context("the catalog group did not catch up")?;
    say(format!("catalog caught up after {:.1} s; sending {} events", started.elapsed().as_secs_f64(), activity.len()));
    let groups: Vec<(String, Vec<String>)> = PROCESSORS
        .iter()
        .map(|name| {
            let info = processors::lookup(name).map_err(anyhow::Error::msg)?;
            Ok((group_of(&prefix, name), info.domains.iter().map(|d| topics.topic(*d).to_owned()).collect()))
        })
        .collect::<anyhow::Result<_>>()?;
    // The kill schedule runs from now on, alongside the feeding of the activity.
    let fleet = Arc::new(Mutex::new(fleet));
    let killer = {
        let (fleet, cfg) = (Arc::clone(&fleet), cfg.clone());
        tokio::spawn(async move {
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed ^ 0x5eed);
            let mut at = Vec::new();
            for kill in 0..cfg.kills {
                let delay = rng.random_range(cfg.kill_delay_ms.0..=cfg.kill_delay_ms.1);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let mut f = fleet.lock().await;
                let victim = rng.random_range(0..f.processors.len());
                let child = &mut f.processors[victim];
                let pid = child.id();
                child.kill().context("SIGKILL")?;
                let _ = child.wait();
                let fresh = f.spawn_processor()?;
                let new_pid = fresh.id();
                f.processors[victim] = fresh;
                at.push(Instant::now());
                if cfg.verbose {
                    println!("[chaos] kill {}/{}: SIGKILL pid {pid} after {delay} ms, restarted as pid {new_pid}", kill + 1, cfg.kills);
                }
            }
            anyhow::Ok(at)
        })
    };

    // Phases, each ending at a quiet moment (the kills go on throughout).
    let quiet = |what: &'static str| {
        let (brokers, groups, store) = (&cfg.brokers, &groups, &store);
        async move {
            wait_caught_up(brokers, groups, Some(store), cfg.catch_up_timeout).await.with_context(|| format!("caught up after {what}"))
        }
    };
    post_all(&http, &base, &tokens, first_half, cfg.batch_size, cfg.concurrency, &retries).await?;
    quiet("the first half of the activity").await?;
    let erased = pick_learners(first_half, cfg.erase);
    let mut erasure_tally = Tally::new("DELETE /v1/learners/{id}");
    for (tenant, learner) in &erased {
        let admin = token(tenant, scope::ADMIN);
        let report = delete_json(&http, &format!("{base}/v1/learners/{learner}"), &admin).await?;
        erasure_tally.checked += 1;
        // Each had activity in the first half, all processed: the erasure must remove some.
        if report["learner_id"] != learner.as_str()
            || report["already_erased"] != false
            || report["state"]["progress"].as_u64().unwrap_or(0) == 0
        {
            erasure_tally.wrong += 1;
            erasure_tally.example(format!("{tenant}/{learner}: {report}"));
        }
    }
    if !erased.is_empty() {
        say(format!("erased {} learners after the first half; their later events are still sent", erased.len()));
    }
    post_all(&http, &base, &tokens, &late_versions, cfg.batch_size, cfg.concurrency, &retries).await?;
    quiet("the versions that add a lesson").await?;
    say(format!("{} later versions arrived after the first half of the activity", late_versions.len()));
    post_all(&http, &base, &tokens, second_half, cfg.batch_size, cfg.concurrency, &retries).await?;
    quiet("the second half of the activity").await?;
    let removal_refs: Vec<&Event> = removals.iter().collect();
    post_all(&http, &base, &tokens, &removal_refs, cfg.batch_size, cfg.concurrency, &retries).await?;
    let fed = Instant::now();
    say(format!("every event accepted after {:.1} s; waiting for the kills to end", started.elapsed().as_secs_f64()));
    let kill_times = killer.await.context("the kill schedule panicked")??;
    let last_kill = kill_times.last().copied().unwrap_or_else(Instant::now);
    let kills_while_feeding = kill_times.iter().filter(|t| **t <= fed).count();

    wait_caught_up(&cfg.brokers, &groups, Some(&store), cfg.catch_up_timeout).await?;
    let catch_up = last_kill.elapsed();
    say(format!("every group caught up {:.1} s after the last kill", catch_up.as_secs_f64()));
    if cfg.replay {
        let mut f = fleet.lock().await;
        f.stop_processors();
        for name in PROCESSORS {
            f.run_to_end(&["replay", "--group", name, "--to-earliest", "--yes", "--skip-member-check"])?;
        }
        for i in 0..cfg.instances {
            let c = f.spawn_processor()?;
            if i < f.processors.len() {
                f.processors[i] = c;
            } else {
                f.processors.push(c);
            }
        }
        drop(f);
        let replayed = Instant::now();
        wait_caught_up(&cfg.brokers, &groups, Some(&store), cfg.catch_up_timeout).await.context("caught up after the replay")?;
        say(format!("every group replayed from the beginning and caught up in {:.1} s", replayed.elapsed().as_secs_f64()));
    }
    let elapsed = started.elapsed();

    // Erased learners are in no oracle; revenue keeps their payments, without them.
    let kept = |e: &&Event| !is_erased(&erased, e);
    let mut phase_one = first_versions.clone();
    phase_one.extend(first_half.iter().copied().filter(kept));
    let mut phase_three: Vec<&Event> = second_half.iter().copied().filter(kept).collect();
    phase_three.extend(removal_refs.iter().copied());
    let progress_oracle = progress::Oracle::phased(&[phase_one, late_versions.clone(), phase_three]);
    let lowered = progress_oracle.lowered.len();
    say(format!("{lowered} learner-courses were lowered by a late version, {} completed once", progress_oracle.completed_once.len()));
    let mut all_events: Vec<Event> = events.iter().filter(|e| !is_erased(&erased, e)).cloned().collect();
    all_events.extend(removals.iter().cloned());
    let anonymous_payments: Vec<Event> =
        events.iter().filter(|e| is_erased(&erased, e)).filter_map(lms_analytics::anonymized_payment).collect();
    let analytics_oracle = analytics::Oracle::new(all_events.iter().chain(&anonymous_payments));
    let mut tallies = Vec::new();
    let readers: BTreeMap<String, String> = tenants.iter().map(|t| (t.name.clone(), token(&t.name, scope::ANALYTICS_READ))).collect();
    let reader = |tenant: &str| readers.get(tenant).cloned().unwrap_or_default();
    tallies.push(compare_progress(&http, &base, &reader, &progress_oracle).await?);
    tallies.push(compare_achievements(&http, &base, &reader, &progress_oracle).await?);
    tallies.extend(compare_analytics(&http, &base, &reader, &analytics_oracle, &tenants, cfg).await?);
    let inbox_oracle = notifications::Oracle::new(&all_events, &progress_oracle);
    tallies.push(compare_notifications(&http, &base, &reader, &inbox_oracle, NOTIFICATIONS_DELIVERED).await?);
    if !erased.is_empty() {
        tallies.push(erasure_tally);
        tallies.push(check_erased(&http, &base, &reader, &erased).await?);
    }

    drop(fleet);
    store.close().await;
    Ok(Report {
        events: events.len(),
        kills: kill_times.len(),
        kills_while_feeding,
        retries: retries.load(Ordering::Relaxed),
        elapsed,
        catch_up,
        tallies,
    })
}

pub(crate) fn group_of(prefix: &str, processor: &str) -> String {
    lms_bus::KafkaConfig::new("").with_prefix(prefix).group_id(processor)
}

async fn wait_ready(http: &reqwest::Client, base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if http.get(format!("{base}/readyz")).send().await.is_ok_and(|r| r.status() == 200) {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "{base}/readyz did not answer 200 within 60 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// POSTs `events` in batches of one tenant each, `concurrency` at a time.
async fn post_all(
    http: &reqwest::Client,
    base: &str,
    tokens: &BTreeMap<String, String>,
    events: &[&Event],
    batch_size: usize,
    concurrency: usize,
    retries: &AtomicU64,
) -> anyhow::Result<()> {
    let mut pending: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut batches: Vec<(String, Vec<u8>)> = Vec::new();
    for e in events {
        let batch = pending.entry(e.tenant.as_str()).or_default();
        batch.push(serde_json::to_value(e)?);
        if batch.len() >= batch_size {
            batches.push((e.tenant.clone(), serde_json::to_vec(&std::mem::take(batch))?));
        }
    }
    for (tenant, batch) in pending {
        if !batch.is_empty() {
            batches.push((tenant.to_owned(), serde_json::to_vec(&batch)?));
        }
    }
    let url = format!("{base}/v1/events");
    let mut sends = futures::stream::iter(batches)
        .map(|(tenant, body)| {
            let token = tokens.get(&tenant).cloned().unwrap_or_default();
            let url = url.clone();
            async move { post(http, &url, &token, body, retries).await }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = sends.next().await {
        r?;
    }
    Ok(())
}

/// Posts one batch until the API accepts it: 429 and 503 after `Retry-After`, connection
/// errors with back-off; the body (so the ids) stays the same.
pub(crate) async fn post(http: &reqwest::Client, url: &str, token: &str, body: Vec<u8>, retries: &AtomicU64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut backoff = Duration::from_millis(100);
    loop {
        let sent = http.post(url).bearer_auth(token).header("content-type", "application/json").body(body.clone()).send().await;
        let wait = match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                let answer: Value = r.json().await.context("reading the API's answer")?;
                let rejected = answer["rejected"].as_array().map_or(0, Vec::len);
                ensure!(rejected == 0, "the API rejected {rejected} generated event(s): {}", answer["rejected"]);
                return Ok(());
            }
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status() == StatusCode::SERVICE_UNAVAILABLE => r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(backoff, Duration::from_secs),
            Ok(r) => {
                let status = r.status();
                bail!("the API answered {status} to a POST: {}", r.text().await.unwrap_or_default());
            }
            Err(_) => backoff,
        };
        ensure!(Instant::now() + wait < deadline, "the API did not accept a batch within 5 minutes of retries");
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
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
async fn wait_caught_up(
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

/// One more version of the first course of each tenant that has lessons to spare: the
/// highest version so far plus one, without its last lesson, published (in event time)
/// with the first version but sent after all the activity. Learners who had every lesson
/// but that one complete the course without a new event of theirs.
fn lesson_removals(catalog: &[&Event], tenants: &[Tenant]) -> Vec<Event> {
    let mut out = Vec::new();
    for tenant in tenants {
        let Some(course) = tenant.courses.first() else { continue };
        let highest = catalog
            .iter()
            .filter_map(|e| match &e.data {
                EventData::CoursePublished(d) if e.tenant == tenant.name && d.course_id == course.course_id => Some((d.version, e)),
                _ => None,
            })
            .max_by_key(|(v, _)| *v);
        let Some((version, e)) = highest else { continue };
        let EventData::CoursePublished(d) = &e.data else { continue };
        let mut d = d.clone();
        let Some(module) = d.modules.iter_mut().rev().find(|m| m.lessons.len() > 1) else { continue };
        module.lessons.pop();
        d.version = version + 1;
        let time = catalog
            .iter()
            .filter(|e| e.tenant == tenant.name && e.course_id() == Some(course.course_id.as_str()))
            .map(|e| e.time)
            .min()
            .unwrap_or(e.time);
        out.push(Event { id: uuid::Uuid::new_v4().to_string(), time, data: EventData::CoursePublished(d), ..(*e).clone() });
    }
    out
}

pub(crate) async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let r = http.get(url).bearer_auth(token).send().await.with_context(|| format!("GET {url}"))?;
    let status = r.status();
    let body: Value = r.json().await.with_context(|| format!("GET {url}: reading the answer"))?;
    ensure!(status == StatusCode::OK, "GET {url} answered {status}: {body}");
    Ok(body)
}

pub(crate) fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.to_utc())
}

/// `n` learners with learning activity in `events`, spread over the learners of every tenant
/// (deterministic).
fn pick_learners(events: &[&Event], n: usize) -> Vec<(String, String)> {
    let all: BTreeSet<(String, String)> = events
        .iter()
        .filter(|e| e.event_type().is_learning_activity())
        .filter_map(|e| e.learner_id().map(|l| (e.tenant.clone(), l.to_owned())))
        .collect();
    let all: Vec<(String, String)> = all.into_iter().collect();
    if n == 0 || all.is_empty() {
        return Vec::new();
    }
    let step = (all.len() / n).max(1);
    all.into_iter().step_by(step).take(n).collect()
}

fn is_erased(erased: &[(String, String)], e: &Event) -> bool {
    e.learner_id().is_some_and(|l| erased.iter().any(|(t, x)| *t == e.tenant && x == l))
}

async fn delete_json(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let r = http.delete(url).bearer_auth(token).send().await.with_context(|| format!("DELETE {url}"))?;
    let status = r.status();
    let body: Value = r.json().await.with_context(|| format!("DELETE {url}: reading the answer"))?;
    ensure!(status == StatusCode::OK, "DELETE {url} answered {status}: {body}");
    Ok(body)
}

/// Every learner endpoint of each erased learner must be empty (preferences: the defaults,
/// without an address).
async fn check_erased(
    http: &reqwest::Client,
    base: &str,
    reader: &impl Fn(&str) -> String,
    erased: &[(String, String)],
) -> anyhow::Result<Tally> {
    let mut t = Tally::new("erased learners: every learner endpoint");
    for (tenant, learner) in erased {
        for what in ["progress", "achievements", "notifications"] {
            let body = get_json(http, &format!("{base}/v1/learners/{learner}/{what}"), &reader(tenant)).await?;
            t.checked += 1;
            if body.as_array().is_none_or(|a| !a.is_empty()) {
                t.doubled += 1;
                t.example(format!("{tenant}/{learner} {what}: {body}"));
            }
        }
        let prefs = get_json(http, &format!("{base}/v1/learners/{learner}/notification-preferences"), &reader(tenant)).await?;
        t.checked += 1;
        if !prefs["email"].is_null() {
            t.doubled += 1;
            t.example(format!("{tenant}/{learner} preferences: {prefs}"));
        }
    }
    Ok(t)
}

pub(crate) async fn compare_progress(
    http: &reqwest::Client,
    base: &str,
    reader: &impl Fn(&str) -> String,
    o: &progress::Oracle,
) -> anyhow::Result<Tally> {
    let mut t = Tally::new("GET /v1/learners/{id}/progress");
    for ((tenant, learner), want) in &o.progress {
        let body = get_json(http, &format!("{base}/v1/learners/{learner}/progress"), &reader(tenant)).await?;
        let mut got: BTreeMap<String, progress::Expected> = BTreeMap::new();
        for v in body.as_array().into_iter().flatten() {
            let status = match v["status"].as_str() {
                Some("completed") => "completed",
                Some("in_progress") => "in_progress",
                _ => "not_started",
            };
            got.insert(
                v["course_id"].as_str().unwrap_or_default().to_owned(),
                progress::Expected {
                    status,
                    lessons_completed: v["lessons_completed"].as_u64().unwrap_or(0) as u32,
                    lessons_total: v["lessons_total"].as_u64().unwrap_or(0) as u32,
                    percent_complete: v["percent_complete"].as_f64().unwrap_or(0.0),
                    time_spent_ms: (v["time_spent_s"].as_f64().unwrap_or(0.0) * 1000.0).round() as i64,
                    last_activity_at: time(&v["last_activity_at"]),
                    completed_at: time(&v["completed_at"]),
                },
            );
        }
        for (course, w) in want {
            t.checked += 1;
            let Some(g) = got.remove(course) else {
                t.lost += 1;
                t.example(format!("{tenant}/{learner}/{course}: missing"));
                continue;
            };
            let counts = t.count(u64::from(g.lessons_completed), u64::from(w.lessons_completed))
                & t.count(g.time_spent_ms.max(0) as u64, w.time_spent_ms.max(0) as u64);
            if !counts {
                t.example(format!("{tenant}/{learner}/{course}: got {g:?}, want {w:?}"));
            } else if &g != w {
                t.wrong += 1;
                t.example(format!("{tenant}/{learner}/{course}: got {g:?}, want {w:?}"));
            }
        }
        for course in got.keys() {
            t.doubled += 1;
            t.example(format!("{tenant}/{learner}/{course}: not expected"));
        }
    }
    Ok(t)
}

/// How long the in-app deliveries may take after the groups caught up: the dispatcher
/// performs them after the decisions commit.
const NOTIFICATIONS_DELIVERED: Duration = Duration::from_secs(60);

/// Compares every learner's inbox with the oracle, re-reading the learners that differ
/// until they match or `within` passes (the dispatcher may still be delivering).
pub(crate) async fn compare_notifications(
    http: &reqwest::Client,
    base: &str,
    reader: &impl Fn(&str) -> String,
    o: &notifications::Oracle,
    within: Duration,
) -> anyhow::Result<Tally> {
    let deadline = Instant::now() + within;
    // Each learner's latest comparison; the learners that differ are read again.
    let mut latest: BTreeMap<&LearnerKey, Tally> = BTreeMap::new();
    let mut pending: Vec<&LearnerKey> = o.inboxes.keys().collect();
    loop {
        for key in pending {
            let (tenant, learner) = key;
            let body = get_json(http, &format!("{base}/v1/learners/{learner}/notifications"), &reader(tenant)).await?;
            let got: Vec<(String, String)> = body
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| (n["id"].as_str().unwrap_or_default().to_owned(), n["category"].as_str().unwrap_or_default().to_owned()))
                .collect();
            let mut t = Tally::default();
            compare_inbox(&mut t, &format!("{tenant}/{learner}"), &got, &o.inboxes[key]);
            latest.insert(key, t);
        }
        pending = latest.iter().filter(|(_, t)| !t.clean()).map(|(k, _)| *k).collect();
        if pending.is_empty() || Instant::now() >= deadline {
            let mut tally = Tally::new("GET /v1/learners/{id}/notifications");
            for t in latest.into_values() {
                tally.add(t);
            }
            return Ok(tally);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One learner's inbox `got` (id, category) against the oracle's `want`.
fn compare_inbox(t: &mut Tally, who: &str, got: &[(String, String)], want: &notifications::Expected) {
    t.checked += want.required() as u64;
    let milestones: BTreeSet<&str> = want.milestones.values().flat_map(|m| m.reached.keys().map(String::as_str)).collect();
    let mut seen: BTreeSet<&str> = BTreeSet::new();
    for (id, category) in got {
        if !seen.insert(id.as_str()) {
            t.doubled += 1;
            t.example(format!("{who}: {id} listed twice"));
        } else if let Some(c) = want.exact.get(id) {
            if c != category {
                t.wrong += 1;
                t.example(format!("{who}: {id} in category {category}, want {c}"));
            }
        } else if !(category == "milestone" && milestones.contains(id.as_str())) {
            t.doubled += 1;
            t.example(format!("{who}: {category} notification {id} not expected"));
        }
    }
    for (id, category) in &want.exact {
        if !seen.contains(id.as_str()) {
            t.lost += 1;
            t.example(format!("{who}: {category} notification {id} missing"));
        }
    }
    for (course, m) in &want.milestones {
        if let Some(id) = m.required.as_deref().filter(|id| !seen.contains(id)) {
            t.lost += 1;
            t.example(format!("{who}: milestone {} % of {course} ({id}) missing", m.reached[id]));
        }
    }
}

pub(crate) async fn compare_achievements(
    http: &reqwest::Client,
    base: &str,
    reader: &impl Fn(&str) -> String,
    o: &progress::Oracle,
) -> anyhow::Result<Tally> {
    let mut t = Tally::new("GET /v1/learners/{id}/achievements");
    let empty = BTreeSet::new();
    for (tenant, learner) in o.progress.keys() {
        let want = o.achievements.get(&(tenant.clone(), learner.clone())).unwrap_or(&empty);
        let body = get_json(http, &format!("{base}/v1/learners/{learner}/achievements"), &reader(tenant)).await?;
        let got: Vec<(String, String, Option<DateTime<Utc>>)> = body
            .as_array()
            .into_iter()
            .flatten()
            .map(|a| {
                (
                    a["achievement_id"].as_str().unwrap_or_default().to_owned(),
                    a["course_id"].as_str().unwrap_or_default().to_owned(),
                    time(&a["unlocked_at"]),
                )
            })
            .collect();
        t.checked += want.len() as u64;
        let want_keys: BTreeMap<(&str, &str), DateTime<Utc>> = want.iter().map(|(a, c, at)| ((a.as_str(), c.as_str()), *at)).collect();
        let mut seen: BTreeSet<(&str, &str)> = BTreeSet::new();
        for (a, c, at) in &got {
            let key = (a.as_str(), c.as_str());
            if !seen.insert(key) || !want_keys.contains_key(&key) {
                t.doubled += 1;
                t.example(format!("{tenant}/{learner}: extra {a} {c}"));
            } else if Some(want_keys[&key]) != *at {
                t.wrong += 1;
                t.example(format!("{tenant}/{learner}: {a} {c} at {at:?}, want {}", want_keys[&key]));
            }
        }
        for key in want_keys.keys().filter(|k| !seen.contains(*k)) {
            t.lost += 1;
            t.example(format!("{tenant}/{learner}: missing {} {}", key.0, key.1));
        }
    }
    Ok(t)
}

/// Compares two series keyed by bucket, field by field (a missing bucket counts 0).
fn series<K: Ord + Clone + fmt::Debug>(t: &mut Tally, what: &str, got: BTreeMap<K, Vec<u64>>, want: BTreeMap<K, Vec<u64>>) {
    let keys: BTreeSet<K> = got.keys().chain(want.keys()).cloned().collect();
    for k in keys {
        t.checked += 1;
        let (g, w) = (got.get(&k).cloned().unwrap_or_default(), want.get(&k).cloned().unwrap_or_default());
        let n = g.len().max(w.len());
        let mut same = true;
        for i in 0..n {
            same &= t.count(g.get(i).copied().unwrap_or(0), w.get(i).copied().unwrap_or(0));
        }
        if !same {
            t.example(format!("{what} {k:?}: got {g:?}, want {w:?}"));
        }
    }
}

async fn compare_analytics(
    http: &reqwest::Client,
    base: &str,
    reader: &impl Fn(&str) -> String,
    o: &analytics::Oracle,
    tenants: &[Tenant],
    cfg: &ChaosConfig,
) -> anyhow::Result<Vec<Tally>> {
    let mut active = Tally::new("GET /v1/analytics/active-learners");
    let mut enrollments = Tally::new("GET /v1/analytics/enrollments");
    let mut completions = Tally::new("GET /v1/analytics/completions");
    let mut revenue = Tally::new("GET /v1/analytics/revenue");
    let mut funnel = Tally::new("GET /v1/analytics/courses/{id}/funnel");
    let mut scores = Tally::new("GET /v1/analytics/assessments/{id}/scores");
    let mut at_risk = Tally::new("GET /v1/analytics/courses/{id}/at-risk");
    let from: NaiveDate = (cfg.now - chrono::Duration::weeks(i64::from(cfg.weeks)) - chrono::Duration::days(7)).date_naive();
    let to: NaiveDate = cfg.now.date_naive();
    for tenant in tenants {
        let token = reader(&tenant.name);
        let first_course = tenant.courses.first().map(|c| c.course_id.clone());
        for granularity in [Granularity::Day, Granularity::Week, Granularity::Month] {
            for course_id in [None, first_course.clone()] {
                let p = SeriesParams { tenant: tenant.name.clone(), from, to, granularity, course_id: course_id.clone() };
                let g = match granularity {
                    Granularity::Day => "day",
                    Granularity::Week => "week",
                    Granularity::Month => "month",
                };
                let mut q = format!("from={from}&to={to}&granularity={g}");
                if let Some(c) = &course_id {
                    q += &format!("&course_id={c}");
                }
                let what = format!("{} {q}", tenant.name);
                let got: Vec<ActiveLearnersPoint> =
                    serde_json::from_value(get_json(http, &format!("{base}/v1/analytics/active-learners?{q}"), &token).await?)?;
                series(
                    &mut active,
                    &what,
                    got.iter().filter(|x| x.active_learners > 0).map(|x| (x.bucket, vec![x.active_learners])).collect(),
                    o.active_learners(&p).iter().map(|x| (x.bucket, vec![x.active_learners])).collect(),
                );
                let got: Vec<EnrollmentsPoint> =
                    serde_json::from_value(get_json(http, &format!("{base}/v1/analytics/enrollments?{q}"), &token).await?)?;
                series(
                    &mut enrollments,
                    &what,
                    got.iter().map(|x| (x.bucket, vec![x.enrollments, x.drops])).collect(),
                    o.enrollments(&p).iter().map(|x| (x.bucket, vec![x.enrollments, x.drops])).collect(),
                );
                let got: Vec<CompletionsPoint> =
                    serde_json::from_value(get_json(http, &format!("{base}/v1/analytics/completions?{q}"), &token).await?)?;
                series(
                    &mut completions,
                    &what,
                    got.iter().map(|x| (x.bucket, vec![x.completions])).collect(),
                    o.completions(&p).iter().map(|x| (x.bucket, vec![x.completions])).collect(),
                );
                let got: Vec<RevenuePoint> =
                    serde_json::from_value(get_json(http, &format!("{base}/v1/analytics/revenue?{q}"), &token).await?)?;
                let money = |v: &[RevenuePoint]| -> BTreeMap<(NaiveDate, String), Vec<u64>> {
                    v.iter()
                        .map(|x| ((x.bucket, x.currency.clone()), vec![x.gross_minor.max(0) as u64, x.refunds_minor.max(0) as u64]))
                        .collect()
                };
                let want = o.revenue(&RevenueParams { series: p.clone(), currency: None });
                series(&mut revenue, &what, money(&got), money(&want));
            }
        }
        for course in &tenant.courses {
            let got: Funnel =
                serde_json::from_value(get_json(http, &format!("{base}/v1/analytics/courses/{}/funnel", course.course_id), &token).await?)?;
            let want = o.funnel(&FunnelParams { tenant: tenant.name.clone(), course_id: course.course_id.clone() });
            let v = |f: &Funnel| vec![f.enrolled, f.started, f.reached_25, f.reached_50, f.reached_75, f.completed];
            series(
                &mut funnel,
                &tenant.name,
                BTreeMap::from([(course.course_id.clone(), v(&got))]),
                BTreeMap::from([(course.course_id.clone(), v(&want))]),
            );
            // At risk a week before the cohort's end, so that the list is not empty.
            let p = AtRiskParams {
                tenant: tenant.name.clone(),
                course_id: course.course_id.clone(),
                inactive_days: 7,
                as_of: cfg.now,
                limit: MAX_AT_RISK_LIMIT,
            };
            let url = format!(
                "{base}/v1/analytics/courses/{}/at-risk?inactive_days={}&limit={}&as_of={}",
                course.course_id,
                p.inactive_days,
                p.limit,
                p.as_of.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            );
            let got: Vec<AtRiskLearner> = serde_json::from_value(get_json(http, &url, &token).await?)?;
            compare_at_risk(&mut at_risk, &format!("{}/{}", tenant.name, course.course_id), &got, &o.at_risk(&p));
            for assessment in course.assessment_ids() {
                let got: Scores =
                    serde_json::from_value(get_json(http, &format!("{base}/v1/analytics/assessments/{assessment}/scores"), &token).await?)?;
                let want = o.scores(&ScoresParams {
                    tenant: tenant.name.clone(),
                    assessment_id: assessment.clone(),
                    range: None,
                    course_id: None,
                });
                let v = |s: &Scores| {
                    let mut v = vec![s.attempts, s.learners];
                    v.extend(s.histogram.iter().map(|b| b.count));
                    v
                };
                series(
                    &mut scores,
                    &tenant.name,
                    BTreeMap::from([(assessment.clone(), v(&got))]),
                    BTreeMap::from([(assessment.clone(), v(&want))]),
                );
                if (got.mean_pct, got.p50_pct, got.p90_pct) != (want.mean_pct, want.p50_pct, want.p90_pct) {
                    scores.wrong += 1;
                    scores.example(format!("{assessment}: got {got:?}, want {want:?}"));
                }
            }
        }
    }
    Ok(vec![active, enrollments, completions, revenue, funnel, scores, at_risk])
}

/// Compares an at-risk list with the oracle's: a learner missing is lost, one listed twice
/// or not expected is doubled, a different percent, last activity or order is wrong.
fn compare_at_risk(t: &mut Tally, what: &str, got: &[AtRiskLearner], want: &[AtRiskLearner]) {
    let wanted: BTreeMap<&str, &AtRiskLearner> = want.iter().map(|l| (l.learner_id.as_str(), l)).collect();
    let mut seen = BTreeSet::new();
    // The list itself (its order), and each learner on it.
    t.checked += 1 + want.len() as u64;
    // Differences in membership of this list (the tally adds up every list).
    let mut members_differ = false;
    for g in got {
        if !seen.insert(g.learner_id.as_str()) || !wanted.contains_key(g.learner_id.as_str()) {
            t.doubled += 1;
            members_differ = true;
            t.example(format!("{what}: {} listed but not at risk (or twice)", g.learner_id));
        } else if wanted[g.learner_id.as_str()] != g {
            t.wrong += 1;
            t.example(format!("{what}: got {g:?}, want {:?}", wanted[g.learner_id.as_str()]));
        }
    }
    for w in want.iter().filter(|w| !seen.contains(w.learner_id.as_str())) {
        t.lost += 1;
        members_differ = true;
        t.example(format!("{what}: {} at risk but not listed", w.learner_id));
    }
    // The order is judged only where the members agree (else it differs necessarily).
    let order = |v: &[AtRiskLearner]| v.iter().map(|l| l.learner_id.clone()).collect::<Vec<_>>();
    if !members_differ && order(got) != order(want) {
        t.wrong += 1;
        t.example(format!("{what}: not oldest first: got {:?}, want {:?}", order(got), order(want)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inbox(got: &[(&str, &str)]) -> Vec<(String, String)> {
        got.iter().map(|(id, c)| ((*id).to_owned(), (*c).to_owned())).collect()
    }

    #[test]
    fn inbox_comparison_counts_each_kind_of_difference() {
        let want = notifications::Expected {
            exact: [("e1".to_owned(), "enrollment"), ("p1".to_owned(), "payment")].into_iter().collect(),
            milestones: [(
                "c1".to_owned(),
                notifications::Milestones {
                    reached: [("m25".to_owned(), 25), ("m50".to_owned(), 50)].into_iter().collect(),
                    required: Some("m50".to_owned()),
                },
            )]
            .into_iter()
            .collect(),
        };
        let mut t = Tally::default();
        compare_inbox(&mut t, "a/l", &inbox(&[("e1", "enrollment"), ("p1", "payment"), ("m50", "milestone"), ("m25", "milestone")]), &want);
        assert!(t.clean() && t.checked == 3, "a superseded-or-not lower milestone may be listed: {t:?}");
        let mut t = Tally::default();
        compare_inbox(&mut t, "a/l", &inbox(&[("e1", "enrollment"), ("p1", "payment")]), &want);
        assert_eq!((t.lost, t.doubled, t.wrong), (1, 0, 0), "the required milestone is missing");
        let mut t = Tally::default();
        compare_inbox(&mut t, "a/l", &inbox(&[("e1", "enrollment"), ("e1", "enrollment"), ("m50", "milestone"), ("d", "digest")]), &want);
        assert_eq!((t.lost, t.doubled, t.wrong), (1, 2, 0), "p1 lost, e1 twice and a digest extra");
        let mut t = Tally::default();
        compare_inbox(&mut t, "a/l", &inbox(&[("e1", "payment"), ("p1", "payment"), ("m50", "milestone"), ("m75", "milestone")]), &want);
        assert_eq!((t.lost, t.doubled, t.wrong), (0, 1, 1), "a wrong category and a milestone not reached");
    }
}
