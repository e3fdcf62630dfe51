//! `lms generate`: a synthetic cohort (see `lms-generator`) sent to a running deployment —
//! through the HTTP API, straight to Kafka, or to an NDJSON file — with a progress bar and a
//! summary.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use api::auth::{Claims, scope, sign_hs256};
use chrono::{DateTime, Utc};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use lms_bus::{BusMetrics, OnQueueFull, Producer, TopicsFile};
use lms_events::Event;
use lms_generator::{Cohort, CohortConfig, Summary};
use serde_json::Value;

use crate::config::Config;

const EXAMPLES: &str = "\
Examples:
  # Eight weeks of one tenant (acme) through a local API, with a token minted from the secret:
  lms generate --api http://127.0.0.1:8080 --jwt-secret \"$LMS_JWT_SECRET\"

  # The same with a token you already have (events go to the token's tenant):
  lms generate --api http://127.0.0.1:8080 --token \"$TOKEN\" --learners 1000 --weeks 12

  # Three tenants straight onto the topics of the configured cluster (run `lms topics apply` first):
  lms generate --brokers kafka:9092 --tenants 3 --courses 8 --learners 2000 --seed 7

  # Look at the events without sending them:
  lms generate --ndjson - --learners 20 --weeks 2 | head

The same options and seed give the same events (ids included), so running a command twice
sends duplicates the pipeline recognises by id and ignores. Event times end at --now.";

/// Events generated at a time: one producer batch; the API gets them in requests of
/// `--batch-size` per tenant.
const CHUNK: usize = 5000;

/// Options of `lms generate`.
#[derive(Debug, Args)]
#[command(after_long_help = EXAMPLES)]
pub struct GenerateArgs {
    /// Seed of the generator: the same seed and options give the same events.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Tenants (organisations), each with its own courses and learners: acme, globex, …
    #[arg(long, default_value_t = 1)]
    tenants: usize,
    /// Tenant names instead of the built-in ones (comma-separated or repeated).
    #[arg(long = "tenant", value_delimiter = ',', value_name = "NAME")]
    tenant_names: Vec<String>,
    /// Courses per tenant.
    #[arg(long, default_value_t = 6)]
    courses: usize,
    /// Learners per tenant.
    #[arg(long, default_value_t = 300)]
    learners: usize,
    /// Length of the period in weeks; events spread over it.
    #[arg(long, default_value_t = 8)]
    weeks: u32,
    /// End of the period (RFC 3339, for example 2026-11-20T00:00:00Z); the current time when
    /// absent. Give it to make a run reproducible across days.
    #[arg(long)]
    now: Option<DateTime<Utc>>,
    /// Base URL of the HTTP API to POST /v1/events to (batches as JSON arrays).
    #[arg(long, value_name = "URL")]
    api: Option<String>,
    /// Bearer token for --api with scope events:write. Events go to the token's tenant, so
    /// only one tenant can be generated with it.
    #[arg(long, env = "LMS_TOKEN", hide_env_values = true, conflicts_with = "jwt_secret")]
    token: Option<String>,
    /// The API's JWT secret, to mint an events:write token per tenant for --api.
    #[arg(long, value_name = "SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Produce straight to Kafka at these bootstrap servers (topics by domain, from
    /// topics.yaml with the configured prefix).
    #[arg(long, value_name = "HOST:PORT,...")]
    brokers: Option<String>,
    /// Produce straight to the Kafka cluster of the configuration (`kafka.brokers`).
    #[arg(long)]
    kafka: bool,
    /// Topic prefix for --brokers/--kafka (default: `kafka.topic_prefix` of the configuration).
    #[arg(long, value_name = "PREFIX")]
    topic_prefix: Option<String>,
    /// Also write every event as one JSON line to this file (`-` for standard output).
    #[arg(long, value_name = "PATH")]
    ndjson: Option<PathBuf>,
    /// Events per request to the API (at most 1000).
    #[arg(long, default_value_t = 1000)]
    batch_size: usize,
}

/// Runs `lms generate`.
pub async fn run(args: GenerateArgs, config: &Config) -> anyhow::Result<()> {
    ensure!(
        args.api.is_some() || args.brokers.is_some() || args.kafka || args.ndjson.is_some(),
        "nowhere to send the events: give --api URL (with --token or --jwt-secret), --brokers HOST:PORT, --kafka or --ndjson PATH"
    );
    ensure!((1..=1000).contains(&args.batch_size), "--batch-size must be between 1 and 1000");
    let cohort_config = CohortConfig {
        seed: args.seed,
        tenants: args.tenants,
        tenant_names: args.tenant_names.clone(),
        courses: args.courses,
        learners: args.learners,
        weeks: args.weeks,
        now: args.now.unwrap_or_else(Utc::now),
        learner_prefix: "learner-".to_owned(),
    };
    let mut cohort = Cohort::new(cohort_config.clone())?;

    let mut api = match &args.api {
        None => None,
        Some(url) => Some(ApiTarget::new(url, &args, &cohort_config)?),
    };
    let producer = if args.brokers.is_some() || args.kafka {
        let mut kafka = config.kafka.clone();
        if let Some(b) = &args.brokers {
            kafka.brokers = b.clone();
        }
        if let Some(p) = &args.topic_prefix {
            kafka.topic_prefix = p.clone();
        }
        let topics = TopicsFile::bundled().topic_map(&kafka.topic_prefix);
        let producer = Producer::new(&kafka, topics, BusMetrics::standalone(), "lms-generate")?;
        ensure!(producer.broker_reachable(Duration::from_secs(10)), "the Kafka cluster at {} is not reachable", kafka.brokers);
        Some(producer)
    } else {
        None
    };
    let mut ndjson: Option<Box<dyn Write>> = match &args.ndjson {
        None => None,
        Some(p) if p.as_os_str() == "-" => Some(Box::new(std::io::BufWriter::new(std::io::stdout().lock()))),
        Some(p) => Some(Box::new(std::io::BufWriter::new(std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?))),
    };
    let to_stdout = args.ndjson.as_ref().is_some_and(|p| p.as_os_str() == "-");

    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {human_pos} events ({per_sec}) {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let started = Instant::now();
    loop {
        let chunk: Vec<Event> = cohort.by_ref().take(CHUNK).collect();
        let Some(last) = chunk.last() else { break };
        bar.set_message(format!("up to {}", last.time.format("%Y-%m-%d %H:%M")));
        if let Some(out) = ndjson.as_mut() {
            match write_lines(out, &chunk) {
                Ok(()) => {}
                // The reader went away (`lms generate --ndjson - | head`): stop quietly.
                Err(e) if to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe => {
                    bar.finish_and_clear();
                    return Ok(());
                }
                Err(e) => return Err(e).context("writing the NDJSON output"),
            }
        }
        if let Some(p) = &producer {
            let batch: Vec<_> = chunk.iter().map(|e| (e.clone(), None)).collect();
            let results = p.send_events(&batch, OnQueueFull::Wait(Duration::from_secs(60))).await;
            if let Some(Err(e)) = results.iter().find(|r| r.is_err()) {
                let failed = results.iter().filter(|r| r.is_err()).count();
                bail!("{failed} of {} events could not be produced: {e}", results.len());
            }
        }
        if let Some(a) = api.as_mut() {
            a.send(chunk.clone(), &bar).await?;
        }
        bar.inc(chunk.len() as u64);
    }
    if let Some(a) = api.as_mut() {
        a.flush(&bar).await?;
    }
    if let Some(out) = ndjson.as_mut() {
        match out.flush() {
            Err(e) if !(to_stdout && e.kind() == std::io::ErrorKind::BrokenPipe) => {
                return Err(e).context("writing the NDJSON output");
            }
            _ => {}
        }
    }
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let summary = cohort.summary().clone();
    let mut report = report(&cohort, &summary, elapsed, api.as_ref().map_or(0, |a| a.retries));
    if let (Some(url), Some(secret)) = (&args.api, &args.jwt_secret) {
        report += &dashboard_link(url, secret, &cohort);
    }
    // Keep standard output for the events when they go there.
    if to_stdout {
        eprint!("{report}");
    } else {
        print!("{report}");
    }
    Ok(())
}

/// A link to the API's dashboard for the first tenant, with an `analytics:read` token valid
/// for a day and its first course and quiz preselected.
fn dashboard_link(api: &str, secret: &str, cohort: &Cohort) -> String {
    let Some(tenant) = cohort.tenants().first() else { return String::new() };
    let exp = u64::try_from(Utc::now().timestamp()).unwrap_or(0) + 24 * 3600;
    let claims = Claims { sub: "lms-generate".to_owned(), tenant: tenant.name.clone(), scope: scope::ANALYTICS_READ.to_owned(), exp };
    let token = sign_hs256(secret.as_bytes(), &claims);
    let mut query = Vec::new();
    if let Some(course) = tenant.courses.first() {
        query.push(format!("course={}", course.course_id));
        if let Some(quiz) = course.assessment_ids().first() {
            query.push(format!("assessment={quiz}"));
        }
    }
    format!("dashboard ({}): {}/dashboard?{}#token={token}\n", tenant.name, api.trim_end_matches('/'), query.join("&"))
}

fn write_lines(out: &mut dyn Write, events: &[Event]) -> std::io::Result<()> {
    for e in events {
        serde_json::to_writer(&mut *out, e)?;
        out.write_all(b"\n")?;
    }
    Ok(())
}

fn report(cohort: &Cohort, s: &Summary, elapsed: Duration, retries: u64) -> String {
    let mut out = String::new();
    let rate = s.events as f64 / elapsed.as_secs_f64().max(1e-9);
    out += &format!(
        "generated {} events in {:.1}s ({rate:.0} events/s): {} tenant(s), {} learners, {} enrollment journeys\n",
        s.events,
        elapsed.as_secs_f64(),
        cohort.tenants().len(),
        cohort.learners(),
        cohort.journeys()
    );
    if let (Some(first), Some(last)) = (s.first, s.last) {
        out += &format!("event times {} .. {}\n", first.to_rfc3339(), last.to_rfc3339());
    }
    if retries > 0 {
        out +=
            &format!("{retries} retries of a batch (the API answered 429/503 or was unreachable); every batch was accepted in the end\n");
    }
    out += "by type:\n";
    for (t, n) in &s.by_type {
        out += &format!("  {t:<20} {n:>9}\n");
    }
    out += "by tenant:\n";
    let courses: BTreeMap<&str, Vec<&str>> =
        cohort.tenants().iter().map(|t| (t.name.as_str(), t.courses.iter().map(|c| c.course_id.as_str()).collect())).collect();
    for (t, n) in &s.by_tenant {
        out += &format!("  {t:<20} {n:>9}   courses: {}\n", courses.get(t.as_str()).map(|c| c.join(", ")).unwrap_or_default());
    }
    out
}

/// Sending to `POST /v1/events`, batched per tenant (also the live stream of `lms demo`).
pub(crate) struct ApiTarget {
    http: reqwest::Client,
    url: String,
    /// One token per tenant, or one token for all (then the events carry no tenant and the
    /// API assigns the token's).
    tokens: BTreeMap<String, String>,
    shared_token: Option<String>,
    pending: BTreeMap<String, Vec<Value>>,
    batch_size: usize,
    retries: u64,
}

impl ApiTarget {
    fn new(url: &str, args: &GenerateArgs, cohort: &CohortConfig) -> anyhow::Result<ApiTarget> {
        ApiTarget::with_credentials(url, args.token.as_deref(), args.jwt_secret.as_deref(), &cohort.tenant_names(), args.batch_size)
    }

    /// A target authenticating with `token` (one tenant) or with a token per tenant minted
    /// from `jwt_secret`.
    pub(crate) fn with_credentials(
        url: &str,
        token: Option<&str>,
        jwt_secret: Option<&str>,
        tenants: &[String],
        batch_size: usize,
    ) -> anyhow::Result<ApiTarget> {
        let (tokens, shared_token) = match (token, jwt_secret) {
            (Some(t), _) => {
                ensure!(
                    tenants.len() == 1,
                    "a --token is for one tenant: generate one tenant (--tenants 1), or give --jwt-secret to mint a token per tenant"
                );
                (BTreeMap::new(), Some(t.to_owned()))
            }
            (None, Some(secret)) => {
                let exp = u64::try_from(Utc::now().timestamp()).unwrap_or(0) + 24 * 3600;
                let tokens = tenants
                    .iter()
                    .map(|t| {
                        let claims =
                            Claims { sub: "lms-generate".to_owned(), tenant: t.clone(), scope: scope::EVENTS_WRITE.to_owned(), exp };
                        (t.clone(), sign_hs256(secret.as_bytes(), &claims))
                    })
                    .collect();
                (tokens, None)
            }
            (None, None) => bail!("--api needs credentials: --token TOKEN (scope events:write) or --jwt-secret SECRET"),
        };
        Ok(ApiTarget {
            http: reqwest::Client::builder().timeout(Duration::from_secs(60)).build()?,
            url: format!("{}/v1/events", url.trim_end_matches('/')),
            tokens,
            shared_token,
            pending: BTreeMap::new(),
            batch_size,
            retries: 0,
        })
    }

    /// Queues events; sends every tenant's batch that is full.
    pub(crate) async fn send(&mut self, events: Vec<Event>, bar: &ProgressBar) -> anyhow::Result<()> {
        for e in events {
            let tenant = e.tenant.clone();
            let mut json = serde_json::to_value(&e)?;
            if self.shared_token.is_some()
                && let Some(o) = json.as_object_mut()
            {
                o.remove("tenant");
            }
            let batch = self.pending.entry(tenant.clone()).or_default();
            batch.push(json);
            if batch.len() >= self.batch_size {
                let batch = std::mem::take(batch);
                self.post(&tenant, batch, bar).await?;
            }
        }
        Ok(())
    }

    /// Sends what is left.
    pub(crate) async fn flush(&mut self, bar: &ProgressBar) -> anyhow::Result<()> {
        for (tenant, batch) in std::mem::take(&mut self.pending) {
            if !batch.is_empty() {
                self.post(&tenant, batch, bar).await?;
            }
        }
        Ok(())
    }

    /// Posts one batch until the API accepts it ([`api::client::post_events`]: retried on 429,
    /// 503 and connection errors with the same body, so the same ids), showing each retry on
    /// the progress bar.
    async fn post(&mut self, tenant: &str, batch: Vec<Value>, bar: &ProgressBar) -> anyhow::Result<()> {
        let token = self.shared_token.as_ref().or_else(|| self.tokens.get(tenant)).cloned().unwrap_or_default();
        let body = serde_json::to_vec(&batch)?;
        let retries = &mut self.retries;
        api::client::post_events(&self.http, &self.url, &token, body, |why, wait| {
            *retries += 1;
            bar.set_message(format!("{why}; retrying in {:.1}s", wait.as_secs_f32()));
        })
        .await?;
        Ok(())
    }
}
