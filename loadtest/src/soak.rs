//! The load-and-soak run: ramp the write API to saturation, then hold half of that rate
//! for a long time while sampling the processes' memory, the progress group's lag and the
//! end-to-end freshness (accepted by the API → visible in `GET /v1/learners/{id}/progress`).
//!
//! 1. A deployment as the chaos run's ([`crate::chaos`]): fresh topics, PostgreSQL and
//!    ClickHouse databases, `lms api` and one `lms processor run catalog progress
//!    achievements notifications analytics` process.
//! 2. The catalog of the cohort first (the oracle assumes the final catalog), then an
//!    endless stream of learner activity: rounds of [`Cohort`]s of the same seed (so the
//!    same catalog, whose events are sent once) with new learners each round
//!    (`r<round>-learner-…`). Events go through `POST /v1/events` in batches of one tenant,
//!    `concurrency` POSTs at a time, paced to the offered rate; 429/503 are retried with
//!    the same body.
//! 3. **Ramp** (unless a rate is given): offered rates `start_rate × step_factor^k`, each
//!    for `step`. A step holds when the API took at least 90 % of the offered events (the
//!    feeder sheds the offers it cannot send because every client is still waiting for an
//!    answer: the exact shortfall of the accepted rate, which itself trails the offers by
//!    the batches in flight) and the progress group's lag did not grow over the second
//!    half of the step by more than 10 % of the events offered meanwhile (and 500
//!    records). The max sustainable rate is the offered rate of the last step that held;
//!    the run then waits for the lag to drain.
//! 4. **Steady** at half of it (or the given rate) for `steady`, sampling every `sample`:
//!    RSS (`VmRSS` of `/proc/<pid>/status`) of every `lms` process, the progress group's
//!    lag, and freshness: one accepted `lesson.completed` in `probe_every` is followed
//!    from the 202 of its POST until that learner's progress shows a `last_activity_at`
//!    of the course at or after the lesson's time (polled every 20 ms, at most
//!    `probe_concurrency` probes at a time; the others are counted as skipped).
//! 5. The load stops; once the progress group has stored offsets covering every accepted
//!    record and the outbox is empty, every learner's progress (and achievements, when that
//!    processor runs) is compared with [`crate::oracle::progress`], computed per round from
//!    the events actually sent.
//!
//! Lag is counted, not read from watermarks (tansu's memory engine answers wrong high
//! watermarks): records accepted by the API on the group's topics (every event of a 202,
//! by domain) minus the sum of the next offsets the group stored with its effects.
//!
//! Goals (issue 9): RSS growth < 10 % per process from the first to the last steady sample,
//! lag bounded (the mean over the last sixth of the steady phase is not above the mean
//! over the sixth before it by more than one second of traffic), freshness p99 ≤ 1 s (a
//! probe that never became visible counts as late).

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use api::auth::scope;
use chrono::{DateTime, Utc};
use lms_bus::TopicMap;
use lms_events::{Domain, Event, EventData};
use lms_generator::{Cohort, CohortConfig, Tenant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::chaos::{self, DeploySpec, Deployment, PROCESSORS, Tally};
use crate::oracle::progress;

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The `lms` binary.
    pub lms_bin: PathBuf,
    /// Bootstrap servers.
    pub brokers: String,
    /// A PostgreSQL URL allowed to `CREATE DATABASE`.
    pub postgres_url: String,
    /// ClickHouse HTTP URL (for the analytics processor).
    pub clickhouse_url: String,
    /// What the processor process runs (must include `catalog` and `progress`).
    pub processors: Vec<String>,
    /// Processor processes.
    pub instances: usize,
    /// The steady rate (events/s); `None` ramps to saturation and takes half of it.
    pub rate: Option<f64>,
    /// The ramp's first offered rate (events/s).
    pub start_rate: f64,
    /// Each ramp step offers this times the previous rate.
    pub step_factor: f64,
    /// How long each ramp step lasts.
    pub step: Duration,
    /// The ramp stops after this many steps even if every one held.
    pub max_steps: usize,
    /// How long the steady phase lasts.
    pub steady: Duration,
    /// Sampling period of the steady phase.
    pub sample: Duration,
    /// Events per POST.
    pub batch_size: usize,
    /// Concurrent POSTs.
    pub concurrency: usize,
    /// One `lesson.completed` in this many accepted events is a freshness probe.
    pub probe_every: u64,
    /// Probes polling at the same time (more are skipped).
    pub probe_concurrency: usize,
    /// A probe not visible after this counts as late (and at this value).
    pub probe_timeout: Duration,
    /// Cohort of each round: seed, tenants, courses per tenant, learners per tenant, weeks.
    pub seed: u64,
    /// See `seed`.
    pub tenants: usize,
    /// See `seed`.
    pub courses: usize,
    /// See `seed`.
    pub learners: usize,
    /// See `seed`.
    pub weeks: u32,
    /// The end of every round's period.
    pub now: DateTime<Utc>,
    /// Partitions of each topic.
    pub partitions: i32,
    /// How long the lag may take to drain (after the ramp, and at the end).
    pub catch_up_timeout: Duration,
    /// Where the processes' logs go.
    pub log_dir: PathBuf,
    /// Every process produces one record per batch (not needed without restarts).
    pub one_record_per_batch: bool,
    /// Extra librdkafka properties of every `lms` process (for example `fetch.wait.max.ms`).
    pub kafka_properties: Vec<(String, String)>,
    /// Print what happens.
    pub verbose: bool,
}

impl SoakConfig {
    /// Defaults around the given services: ramp from 200 events/s ×1.5 every 15 s, 30
    /// minutes steady, a sample every 10 s.
    pub fn new(lms_bin: PathBuf, brokers: String, postgres_url: String, clickhouse_url: String) -> SoakConfig {
        SoakConfig {
            lms_bin,
            brokers,
            postgres_url,
            clickhouse_url,
            processors: PROCESSORS.iter().map(|p| (*p).to_owned()).collect(),
            instances: 1,
            rate: None,
            start_rate: 200.0,
            step_factor: 1.5,
            step: Duration::from_secs(15),
            max_steps: 30,
            steady: Duration::from_secs(30 * 60),
            sample: Duration::from_secs(10),
            batch_size: 100,
            concurrency: 4,
            probe_every: 50,
            probe_concurrency: 8,
            probe_timeout: Duration::from_secs(30),
            seed: 42,
            tenants: 2,
            courses: 4,
            learners: 100,
            weeks: 6,
            now: DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z").map(|t| t.to_utc()).unwrap_or_else(|_| Utc::now()),
            partitions: 4,
            catch_up_timeout: Duration::from_secs(300),
            log_dir: std::env::temp_dir(),
            one_record_per_batch: false,
            kafka_properties: Vec::new(),
            verbose: false,
        }
    }
}

/// One ramp step.
#[derive(Debug, Clone)]
pub struct Step {
    /// Offered events/s.
    pub offered: f64,
    /// Accepted events/s (202s during the step).
    pub accepted: f64,
    /// Offered events/s the clients could not send (all busy): the shortfall.
    pub shed: f64,
    /// Progress lag (records) at the middle and at the end of the step.
    pub lag_mid: i64,
    /// See `lag_mid`.
    pub lag_end: i64,
    /// Whether the pipeline sustained it.
    pub held: bool,
}

/// One sample of the steady phase.
#[derive(Debug, Clone)]
pub struct Sample {
    /// Since the start of the steady phase.
    pub at: Duration,
    /// Accepted events/s since the previous sample.
    pub rate: f64,
    /// Progress group lag (records).
    pub lag: i64,
    /// RSS in KiB per process, in the order of [`Report::processes`] (0 when unreadable).
    pub rss_kib: Vec<u64>,
    /// Freshness probes completed since the previous sample, and their p50/p95/p99 (ms).
    pub probes: usize,
    /// See `probes`.
    pub p50_ms: f64,
    /// See `probes`.
    pub p95_ms: f64,
    /// See `probes`.
    pub p99_ms: f64,
}

/// The outcome of a soak run.
#[derive(Debug, Clone)]
pub struct Report {
    /// The ramp (empty when the rate was given).
    pub steps: Vec<Step>,
    /// The offered rate of the last step that held (`None` without a ramp or when none held).
    pub max_rate: Option<f64>,
    /// The steady phase's offered rate.
    pub steady_rate: f64,
    /// The accepted rate over the steady phase.
    pub steady_accepted_rate: f64,
    /// The steady phase's samples.
    pub samples: Vec<Sample>,
    /// The processes whose RSS was sampled (`api`, `processor-0`, …).
    pub processes: Vec<String>,
    /// Freshness of every probe that became visible (ms), in completion order.
    pub freshness_ms: Vec<f64>,
    /// Probes that did not become visible within the probe timeout.
    pub probes_late: u64,
    /// Probes skipped because `probe_concurrency` were polling.
    pub probes_skipped: u64,
    /// Events accepted in all (ramp and steady).
    pub events: u64,
    /// Cohort rounds the events came from (each with new learners).
    pub rounds: u32,
    /// Retried POSTs (429/503/connection errors).
    pub retries: u64,
    /// From the end of the load to caught up.
    pub catch_up: Duration,
    /// Progress (and achievements) against the oracle.
    pub tallies: Vec<Tally>,
}

/// The `p`-quantile (0..=1) of sorted values (0 when empty).
fn quantile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v
}

impl Report {
    /// Freshness p50, p95, p99 over the whole steady phase (ms); late probes count at the
    /// probe timeout, so they push the tail up.
    pub fn freshness(&self, timeout: Duration) -> (f64, f64, f64) {
        let mut all = self.freshness_ms.clone();
        all.extend(std::iter::repeat_n(timeout.as_secs_f64() * 1000.0, self.probes_late as usize));
        let s = sorted(&all);
        (quantile(&s, 0.5), quantile(&s, 0.95), quantile(&s, 0.99))
    }

    /// Per process: first, last and largest RSS (KiB) and growth from first to last (%).
    pub fn rss(&self) -> Vec<(String, u64, u64, u64, f64)> {
        self.processes
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let v: Vec<u64> = self.samples.iter().map(|s| s.rss_kib.get(i).copied().unwrap_or(0)).collect();
                let first = v.first().copied().unwrap_or(0);
                let last = v.last().copied().unwrap_or(0);
                let max = v.iter().copied().max().unwrap_or(0);
                let growth = if first > 0 { (last as f64 - first as f64) * 100.0 / first as f64 } else { f64::INFINITY };
                (name.clone(), first, last, max, growth)
            })
            .collect()
    }

    /// Lag of the last sample, and the largest sampled.
    pub fn lag(&self) -> (i64, i64) {
        (self.samples.last().map_or(0, |s| s.lag), self.samples.iter().map(|s| s.lag).max().unwrap_or(0))
    }

    /// Whether the lag is bounded: over the last third of the samples, the mean of its
    /// second half is not above the mean of its first half by more than one second of
    /// traffic at the steady rate.
    pub fn lag_bounded(&self) -> bool {
        let n = self.samples.len();
        let third = &self.samples[n - n / 3..];
        if third.len() < 2 {
            return true;
        }
        let mean = |s: &[Sample]| s.iter().map(|x| x.lag as f64).sum::<f64>() / s.len().max(1) as f64;
        let (a, b) = third.split_at(third.len() / 2);
        mean(b) <= mean(a) + self.steady_rate.max(1.0)
    }

    /// The goals and whether each holds: RSS growth < 10 %, lag bounded, freshness p99 ≤ 1 s,
    /// nothing lost or doubled.
    pub fn goals(&self, probe_timeout: Duration) -> Vec<(String, bool)> {
        let rss = self.rss();
        let worst = rss.iter().map(|r| r.4).fold(f64::NEG_INFINITY, f64::max);
        let (_, _, p99) = self.freshness(probe_timeout);
        let measured = !self.freshness_ms.is_empty() || self.probes_late > 0;
        vec![
            (format!("RSS growth < 10 % (largest {worst:+.1} %)"), !rss.is_empty() && worst < 10.0),
            ("lag bounded (not growing over the last third)".to_owned(), self.lag_bounded()),
            (format!("freshness p99 ≤ 1000 ms ({p99:.0} ms)"), measured && p99 <= 1000.0),
            ("progress equals the oracle (nothing lost / doubled)".to_owned(), self.tallies.iter().all(Tally::clean)),
        ]
    }

    /// Every goal holds.
    pub fn ok(&self, probe_timeout: Duration) -> bool {
        self.goals(probe_timeout).iter().all(|g| g.1)
    }

    /// The report, with the goals judged against `probe_timeout`.
    pub fn display(&self, probe_timeout: Duration) -> impl fmt::Display + '_ {
        ReportDisplay { r: self, probe_timeout }
    }
}

struct ReportDisplay<'a> {
    r: &'a Report,
    probe_timeout: Duration,
}

impl fmt::Display for ReportDisplay<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = self.r;
        if !r.steps.is_empty() {
            writeln!(f, "ramp:")?;
            for (i, s) in r.steps.iter().enumerate() {
                writeln!(
                    f,
                    "  step {:>2}: offered {:>7.0} ev/s, accepted {:>7.0} ev/s, shed {:>6.0} ev/s, progress lag {} → {} ({})",
                    i + 1,
                    s.offered,
                    s.accepted,
                    s.shed,
                    s.lag_mid,
                    s.lag_end,
                    if s.held { "held" } else { "not sustained" }
                )?;
            }
        }
        match r.max_rate {
            Some(m) => writeln!(f, "max sustainable rate: {m:.0} events/s")?,
            None if r.steps.is_empty() => writeln!(f, "max sustainable rate: not measured (rate given)")?,
            None => writeln!(f, "max sustainable rate: no step held")?,
        }
        writeln!(
            f,
            "steady rate: {:.0} events/s offered, {:.0} accepted, {} samples",
            r.steady_rate,
            r.steady_accepted_rate,
            r.samples.len()
        )?;
        let (p50, p95, p99) = r.freshness(self.probe_timeout);
        writeln!(
            f,
            "freshness (202 → visible in /progress): p50 {p50:.0} ms, p95 {p95:.0} ms, p99 {p99:.0} ms over {} probes ({} late, {} skipped)",
            r.freshness_ms.len() + r.probes_late as usize,
            r.probes_late,
            r.probes_skipped
        )?;
        let (end, max) = r.lag();
        writeln!(f, "progress lag: max {max} records, at the end {end} records")?;
        for (name, first, last, max, growth) in r.rss() {
            writeln!(
                f,
                "RSS {name:<12} first {:>7.1} MiB, last {:>7.1} MiB, max {:>7.1} MiB, growth {growth:+.1} %",
                first as f64 / 1024.0,
                last as f64 / 1024.0,
                max as f64 / 1024.0
            )?;
        }
        writeln!(
            f,
            "{} events accepted ({} cohort rounds), {} retried POSTs, caught up {:.1} s after the load stopped",
            r.events,
            r.rounds,
            r.retries,
            r.catch_up.as_secs_f64()
        )?;
        writeln!(f, "{:<42} {:>8} {:>6} {:>8} {:>6}", "endpoint", "checked", "lost", "doubled", "wrong")?;
        for t in &r.tallies {
            writeln!(f, "{:<42} {:>8} {:>6} {:>8} {:>6}", t.endpoint, t.checked, t.lost, t.doubled, t.wrong)?;
            for e in &t.examples {
                writeln!(f, "    {e}")?;
            }
        }
        write!(f, "goals:")?;
        for (goal, held) in r.goals(self.probe_timeout) {
            write!(f, "\n  [{}] {goal}", if held { "ok" } else { "FAILED" })?;
        }
        Ok(())
    }
}

/// A `lesson.completed` whose visibility is timed.
#[derive(Debug, Clone)]
struct Probe {
    tenant: String,
    learner: String,
    course: String,
    time: DateTime<Utc>,
}

/// The endless activity stream: rounds of cohorts with new learners; keeps what it handed
/// out for the oracle (the oracles of finished rounds, the events of the current one).
struct Source {
    config: CohortConfig,
    round: u32,
    cohort: Cohort,
    catalog: Vec<Event>,
    tenants: Vec<Tenant>,
    pending: BTreeMap<String, Vec<Event>>,
    sent: Vec<Event>,
    done: progress::Oracle,
    count: u64,
    next_probe: u64,
}

fn round_config(base: &CohortConfig, round: u32) -> CohortConfig {
    CohortConfig { learner_prefix: format!("r{round}-learner-"), ..base.clone() }
}

impl Source {
    fn new(cfg: &SoakConfig) -> anyhow::Result<Source> {
        let config = CohortConfig {
            tenants: cfg.tenants,
            courses: cfg.courses,
            learners: cfg.learners.max(1),
            weeks: cfg.weeks,
            now: cfg.now,
            ..CohortConfig::new(cfg.seed)
        };
        let mut first = Cohort::new(round_config(&config, 1)).context("invalid cohort options")?;
        let tenants = first.tenants().to_vec();
        let catalog: Vec<Event> = first.by_ref().filter(|e| e.domain() == Domain::Catalog).collect();
        let cohort = Cohort::new(round_config(&config, 1))?;
        Ok(Source {
            config,
            round: 1,
            cohort,
            catalog,
            tenants,
            pending: BTreeMap::new(),
            sent: Vec::new(),
            done: progress::Oracle::default(),
            count: 0,
            next_probe: 0,
        })
    }

    fn merge(&mut self, o: progress::Oracle) {
        self.done.progress.extend(o.progress);
        self.done.achievements.extend(o.achievements);
    }

    /// The next batch of `n` events of one tenant, and the probes among them when `probe_every`.
    fn next_batch(&mut self, n: usize, probe_every: Option<u64>) -> anyhow::Result<(String, Vec<Event>, Vec<Probe>)> {
        loop {
            let Some(e) = self.cohort.next() else {
                // The round's last events go out before its oracle is computed.
                let left = self.pending.iter().find(|(_, v)| !v.is_empty()).map(|(t, _)| t.clone());
                if let Some(tenant) = left {
                    let batch = self.pending.remove(&tenant).unwrap_or_default();
                    return Ok(self.hand_out(tenant, batch, probe_every));
                }
                // Learners of different rounds are different people: the oracle of the
                // union is the union of the rounds' oracles.
                let sent = std::mem::take(&mut self.sent);
                let o = progress::Oracle::new(self.catalog.iter().chain(sent.iter()));
                self.merge(o);
                self.round += 1;
                self.cohort = Cohort::new(round_config(&self.config, self.round))?;
                continue;
            };
            if e.domain() == Domain::Catalog {
                continue;
            }
            let tenant = e.tenant.clone();
            let buffer = self.pending.entry(tenant.clone()).or_default();
            buffer.push(e);
            if buffer.len() < n {
                continue;
            }
            let batch = std::mem::take(buffer);
            return Ok(self.hand_out(tenant, batch, probe_every));
        }
    }

    /// Counts a batch out, picks its probes and keeps it for the oracle.
    fn hand_out(&mut self, tenant: String, batch: Vec<Event>, probe_every: Option<u64>) -> (String, Vec<Event>, Vec<Probe>) {
        let mut probes = Vec::new();
        for e in &batch {
            self.count += 1;
            match probe_every {
                None => self.next_probe = self.count,
                Some(every) => {
                    if let (true, EventData::LessonCompleted(l)) = (self.count >= self.next_probe, &e.data) {
                        probes.push(Probe {
                            tenant: tenant.clone(),
                            learner: l.learner_id.clone(),
                            course: l.course_id.clone(),
                            time: e.time,
                        });
                        self.next_probe = self.count + every.max(1);
                    }
                }
            }
        }
        self.sent.extend(batch.iter().cloned());
        (tenant, batch, probes)
    }

    /// The oracle of everything handed out.
    fn oracle(&mut self) -> progress::Oracle {
        let sent = std::mem::take(&mut self.sent);
        let o = progress::Oracle::new(self.catalog.iter().chain(sent.iter()));
        self.merge(o);
        std::mem::take(&mut self.done)
    }
}

#[derive(Default)]
struct Probes {
    /// Every visible probe (ms).
    all: Vec<f64>,
    /// Since the last sample.
    window: Vec<f64>,
    late: u64,
    skipped: u64,
}

/// The index of `d` in `Domain::ALL`.
fn domain_index(d: Domain) -> usize {
    Domain::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

/// What the feeder, the POSTs and the probes share with the run.
struct Shared {
    /// Accepted events per domain (index in `Domain::ALL`).
    accepted: [AtomicU64; Domain::ALL.len()],
    retries: AtomicU64,
    /// Offered events/s (f64 bits); 0 pauses the feeder.
    rate: AtomicU64,
    /// Events offered so far, and those of them shed because every client was busy.
    offers: StdMutex<(f64, f64)>,
    probing: AtomicBool,
    probes: StdMutex<Probes>,
    error: StdMutex<Option<String>>,
}

impl Shared {
    fn accepted_total(&self) -> u64 {
        self.accepted.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    fn accepted_on(&self, domains: &[Domain]) -> u64 {
        domains.iter().map(|d| self.accepted[domain_index(*d)].load(Ordering::Relaxed)).sum()
    }

    fn offers(&self) -> (f64, f64) {
        *self.offers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn set_rate(&self, rate: f64) {
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    fn fail(&self, e: String) {
        let mut slot = self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(e);
    }

    fn check(&self) -> anyhow::Result<()> {
        match self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }
}

/// What the POST and probe tasks need.
#[derive(Clone)]
struct Client {
    http: reqwest::Client,
    base: String,
    writers: Arc<BTreeMap<String, String>>,
    readers: Arc<BTreeMap<String, String>>,
    shared: Arc<Shared>,
    posts: Arc<Semaphore>,
    probes: Arc<Semaphore>,
    probe_timeout: Duration,
}

/// Offers batches at the shared rate until cancelled; returns the source (for the oracle)
/// once every POST it started is answered.
async fn feed(
    mut source: Source,
    client: Client,
    batch_size: usize,
    concurrency: usize,
    probe_every: u64,
    stop: CancellationToken,
) -> anyhow::Result<Source> {
    let tick = Duration::from_millis(10);
    let mut ticks = tokio::time::interval(tick);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut owed = 0.0f64;
    let mut last = Instant::now();
    let cap = (batch_size * (concurrency + 1)) as f64;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = ticks.tick() => {}
        }
        let now = Instant::now();
        let rate = f64::from_bits(client.shared.rate.load(Ordering::Relaxed));
        // Offers not taken because every client was busy are not made up later: the
        // accepted rate then falls short of the offered one.
        let offer = rate.max(0.0) * (now - last).as_secs_f64();
        let shed = (owed + offer - cap).max(0.0);
        owed = (owed + offer - shed).max(0.0);
        last = now;
        if rate <= 0.0 {
            owed = 0.0;
        }
        {
            let mut o = client.shared.offers.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            o.0 += offer;
            o.1 += shed;
        }
        while owed >= batch_size as f64 {
            let Ok(permit) = Arc::clone(&client.posts).try_acquire_owned() else { break };
            let probing = client.shared.probing.load(Ordering::Relaxed).then_some(probe_every);
            let (tenant, batch, probes) = source.next_batch(batch_size, probing)?;
            owed -= batch.len() as f64;
            let c = client.clone();
            tokio::spawn(async move {
                let _permit = permit;
                if let Err(e) = c.post(&tenant, &batch, probes).await {
                    c.shared.fail(format!("{e:#}"));
                }
            });
        }
    }
    // Every POST started is answered before the oracle is computed.
    let _all = client.posts.acquire_many(concurrency as u32).await.context("the POST semaphore closed")?;
    Ok(source)
}

impl Client {
    async fn post(&self, tenant: &str, batch: &[Event], probes: Vec<Probe>) -> anyhow::Result<()> {
        let body = serde_json::to_vec(batch)?;
        let token = self.writers.get(tenant).cloned().unwrap_or_default();
        chaos::post(&self.http, &format!("{}/v1/events", self.base), &token, body, &self.shared.retries).await?;
        let accepted_at = Instant::now();
        for e in batch {
            self.shared.accepted[domain_index(e.domain())].fetch_add(1, Ordering::Relaxed);
        }
        for p in probes {
            let Ok(permit) = Arc::clone(&self.probes).try_acquire_owned() else {
                self.shared.probes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).skipped += 1;
                continue;
            };
            let c = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let visible = c.probe(&p, accepted_at).await;
                let mut probes = c.shared.probes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                match visible {
                    Some(ms) => {
                        probes.all.push(ms);
                        probes.window.push(ms);
                    }
                    None => probes.late += 1,
                }
            });
        }
        Ok(())
    }

    /// Milliseconds from `accepted_at` until the probe's lesson shows in the learner's
    /// progress (`None` after the probe timeout).
    async fn probe(&self, p: &Probe, accepted_at: Instant) -> Option<f64> {
        let url = format!("{}/v1/learners/{}/progress", self.base, p.learner);
        let token = self.readers.get(&p.tenant).cloned().unwrap_or_default();
        let want = p.time.timestamp_micros();
        let deadline = accepted_at + self.probe_timeout;
        let mut every = tokio::time::interval(Duration::from_millis(20));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Ok(body) = chaos::get_json(&self.http, &url, &token).await {
                let seen = body.as_array().into_iter().flatten().any(|c| {
                    c["course_id"].as_str() == Some(p.course.as_str())
                        && chaos::time(&c["last_activity_at"]).is_some_and(|t| t.timestamp_micros() >= want)
                });
                if seen {
                    return Some(accepted_at.elapsed().as_secs_f64() * 1000.0);
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }
}

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Records accepted on `domains` not yet covered by the offsets `group` stored.
async fn lag(store: &lms_state::Store, shared: &Shared, group: &str, topics: &TopicMap, domains: &[Domain]) -> anyhow::Result<i64> {
    let names: Vec<&str> = domains.iter().map(|d| topics.topic(*d)).collect();
    let stored: i64 =
        lms_state::offsets::load(store, group).await?.iter().filter(|(tp, _)| names.contains(&&*tp.topic)).map(|(_, o)| *o).sum();
    Ok((shared.accepted_on(domains) as i64 - stored).max(0))
}

/// The `lms` processes, by name and pid; fails if one has exited.
fn processes(fleet: &mut chaos::Fleet) -> anyhow::Result<Vec<(String, u32)>> {
    let mut out = Vec::new();
    if let Some(api) = fleet.api.as_mut() {
        if let Some(status) = api.try_wait()? {
            bail!("lms api exited ({status}); see its log");
        }
        out.push(("api".to_owned(), api.id()));
    }
    for (i, p) in fleet.processors.iter_mut().enumerate() {
        if let Some(status) = p.try_wait()? {
            bail!("processor process {i} exited ({status}); see its log");
        }
        out.push((format!("processor-{i}"), p.id()));
    }
    Ok(out)
}

/// Runs the soak scenario.
pub async fn run(cfg: &SoakConfig) -> anyhow::Result<Report> {
    ensure!(
        cfg.processors.iter().any(|p| p == "catalog") && cfg.processors.iter().any(|p| p == "progress"),
        "the processors must include catalog and progress (freshness and lag are the progress group's)"
    );
    for p in &cfg.processors {
        processors::lookup(p).map_err(anyhow::Error::msg)?;
    }
    ensure!(cfg.batch_size >= 1 && cfg.concurrency >= 1 && cfg.instances >= 1, "batch size, concurrency and instances ≥ 1");
    ensure!(cfg.start_rate > 0.0 && cfg.step_factor > 1.0, "a positive start rate and a step factor > 1");
    let verbose = cfg.verbose;
    let say = move |s: String| {
        if verbose {
            println!("[soak] {s}");
        }
    };
    let spec = DeploySpec {
        name: "soak",
        lms_bin: cfg.lms_bin.clone(),
        brokers: cfg.brokers.clone(),
        postgres_url: cfg.postgres_url.clone(),
        clickhouse_url: cfg.clickhouse_url.clone(),
        partitions: cfg.partitions,
        log_dir: cfg.log_dir.clone(),
        one_record_per_batch: cfg.one_record_per_batch,
        kafka_properties: cfg.kafka_properties.clone(),
        processors: cfg.processors.clone(),
        instances: cfg.instances,
        env: Vec::new(),
    };
    let mut deployment = Deployment::start(&spec, say).await?;
    let source = Source::new(cfg)?;
    let tenants = source.tenants.clone();
    let writers: BTreeMap<String, String> =
        tenants.iter().map(|t| (t.name.clone(), deployment.token("loadtest-soak", &t.name, scope::EVENTS_WRITE))).collect();
    let readers: BTreeMap<String, String> =
        tenants.iter().map(|t| (t.name.clone(), deployment.token("loadtest-soak", &t.name, scope::ANALYTICS_READ))).collect();
    let shared = Arc::new(Shared {
        accepted: Default::default(),
        retries: AtomicU64::new(0),
        rate: AtomicU64::new(0f64.to_bits()),
        offers: StdMutex::new((0.0, 0.0)),
        probing: AtomicBool::new(false),
        probes: StdMutex::new(Probes::default()),
        error: StdMutex::new(None),
    });
    let client = Client {
        http: deployment.http.clone(),
        base: deployment.base.clone(),
        writers: Arc::new(writers),
        readers: Arc::new(readers),
        shared: Arc::clone(&shared),
        posts: Arc::new(Semaphore::new(cfg.concurrency)),
        probes: Arc::new(Semaphore::new(cfg.probe_concurrency.max(1))),
        probe_timeout: cfg.probe_timeout,
    };
    let store = &deployment.store;
    let topics = deployment.topics.clone();
    let progress_group = chaos::group_of(&deployment.prefix, "progress");
    let progress_domains = processors::lookup("progress").map_err(anyhow::Error::msg)?.domains;

    // The catalog first, and the catalog group at its end.
    let catalog: Vec<&Event> = source.catalog.iter().collect();
    {
        let mut by_tenant: BTreeMap<&str, Vec<&Event>> = BTreeMap::new();
        for e in &catalog {
            by_tenant.entry(e.tenant.as_str()).or_default().push(e);
        }
        for (tenant, events) in by_tenant {
            for chunk in events.chunks(cfg.batch_size) {
                let body = serde_json::to_vec(chunk)?;
                let token = client.writers.get(tenant).cloned().unwrap_or_default();
                chaos::post(&client.http, &format!("{}/v1/events", client.base), &token, body, &shared.retries).await?;
                shared.accepted[domain_index(Domain::Catalog)].fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
    let catalog_group = chaos::group_of(&deployment.prefix, "catalog");
    wait_drained(store, &shared, &catalog_group, &topics, &[Domain::Catalog], false, cfg.catch_up_timeout)
        .await
        .context("the catalog group did not catch up")?;
    say(format!("catalog of {} events processed; {} tenants × {} learners per round", catalog.len(), cfg.tenants, cfg.learners));

    let stop = CancellationToken::new();
    // An early return (an error) stops the feeder too.
    let _stop_on_return = stop.clone().drop_guard();
    let feeder = tokio::spawn(feed(source, client.clone(), cfg.batch_size, cfg.concurrency, cfg.probe_every, stop.clone()));

    // Ramp.
    let mut steps = Vec::new();
    let mut max_rate = None;
    if cfg.rate.is_none() {
        let mut offered = cfg.start_rate;
        for k in 0..cfg.max_steps.max(1) {
            shared.set_rate(offered);
            let before = shared.accepted_total();
            let offers_before = shared.offers();
            let started = Instant::now();
            let mid = started + cfg.step / 2;
            let end = started + cfg.step;
            let mut ticks = tokio::time::interval(Duration::from_millis(250));
            let mut lag_mid = None;
            loop {
                ticks.tick().await;
                shared.check()?;
                processes(&mut deployment.fleet)?;
                if lag_mid.is_none() && Instant::now() >= mid {
                    lag_mid = Some(lag(store, &shared, &progress_group, &topics, progress_domains).await?);
                }
                if Instant::now() >= end {
                    break;
                }
            }
            let secs = started.elapsed().as_secs_f64();
            let accepted = (shared.accepted_total() - before) as f64 / secs;
            let offers = shared.offers();
            let (offered_events, shed_events) = (offers.0 - offers_before.0, offers.1 - offers_before.1);
            let lag_end = lag(store, &shared, &progress_group, &topics, progress_domains).await?;
            let lag_mid = lag_mid.unwrap_or(0);
            let growth_allowed = (0.1 * offered * cfg.step.as_secs_f64() / 2.0).max(500.0);
            // The accepted count trails the offers by the batches in flight (quantised in
            // batches); what the clients could not take at all is exact.
            let kept_up = shed_events <= 0.1 * offered_events;
            let drained = (lag_end - lag_mid) as f64 <= growth_allowed;
            let held = kept_up && drained;
            say(format!(
                "ramp step {}: offered {offered:.0} ev/s, accepted {accepted:.0} ev/s ({:.1} % of the offers shed: clients busy), progress lag {lag_mid} → {lag_end} records: {}",
                k + 1,
                shed_events * 100.0 / offered_events.max(1.0),
                match (kept_up, drained) {
                    (true, true) => "held",
                    (false, _) => "not sustained (the API fell behind)",
                    (true, false) => "not sustained (the progress lag grew)",
                }
            ));
            steps.push(Step { offered, accepted, shed: shed_events / secs, lag_mid, lag_end, held });
            if !held {
                break;
            }
            max_rate = Some(offered);
            offered *= cfg.step_factor;
        }
        shared.set_rate(0.0);
        let drain = Instant::now();
        wait_drained(store, &shared, &progress_group, &topics, progress_domains, false, cfg.catch_up_timeout)
            .await
            .context("the progress group did not drain after the ramp")?;
        say(format!("ramp done; the progress lag drained in {:.1} s", drain.elapsed().as_secs_f64()));
    }
    let steady_rate = match (cfg.rate, max_rate, steps.first()) {
        (Some(r), _, _) => r,
        (None, Some(m), _) => m / 2.0,
        (None, None, Some(first)) => (first.accepted / 2.0).max(1.0),
        (None, None, None) => bail!("no ramp step ran"),
    };

    // Steady.
    say(format!(
        "steady at {steady_rate:.0} events/s for {:.0} s, a sample every {:.0} s",
        cfg.steady.as_secs_f64(),
        cfg.sample.as_secs_f64()
    ));
    shared.probing.store(true, Ordering::Relaxed);
    shared.set_rate(steady_rate);
    let names: Vec<String> = processes(&mut deployment.fleet)?.into_iter().map(|(n, _)| n).collect();
    let steady_started = Instant::now();
    let steady_before = shared.accepted_total();
    let mut samples = Vec::new();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + cfg.sample, cfg.sample);
    let mut last_total = steady_before;
    let mut last_at = Instant::now();
    while steady_started.elapsed() < cfg.steady {
        ticks.tick().await;
        shared.check()?;
        let procs = processes(&mut deployment.fleet)?;
        let rss_kib: Vec<u64> = procs.iter().map(|(_, pid)| rss_kib(*pid).unwrap_or(0)).collect();
        let lag = lag(store, &shared, &progress_group, &topics, progress_domains).await?;
        let total = shared.accepted_total();
        let rate = (total - last_total) as f64 / last_at.elapsed().as_secs_f64();
        (last_total, last_at) = (total, Instant::now());
        let window = {
            let mut p = shared.probes.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            sorted(&std::mem::take(&mut p.window))
        };
        let sample = Sample {
            at: steady_started.elapsed(),
            rate,
            lag,
            rss_kib,
            probes: window.len(),
            p50_ms: quantile(&window, 0.5),
            p95_ms: quantile(&window, 0.95),
            p99_ms: quantile(&window, 0.99),
        };
        let rss: Vec<String> =
            procs.iter().zip(&sample.rss_kib).map(|((n, _), kib)| format!("{n} {:.1} MiB", *kib as f64 / 1024.0)).collect();
        say(format!(
            "t={:>5.0} s  accepted {:>6.0} ev/s  progress lag {:>6}  freshness p50/p95/p99 {:.0}/{:.0}/{:.0} ms (n={})  RSS {}",
            sample.at.as_secs_f64(),
            sample.rate,
            sample.lag,
            sample.p50_ms,
            sample.p95_ms,
            sample.p99_ms,
            sample.probes,
            rss.join(", ")
        ));
        samples.push(sample);
    }
    let steady_accepted_rate = (shared.accepted_total() - steady_before) as f64 / steady_started.elapsed().as_secs_f64();

    // Stop, catch up, compare.
    shared.set_rate(0.0);
    shared.probing.store(false, Ordering::Relaxed);
    stop.cancel();
    let mut source = feeder.await.context("the feeder panicked")??;
    // Probes still polling end within the probe timeout.
    let _probes = client.probes.acquire_many(cfg.probe_concurrency.max(1) as u32).await.context("the probe semaphore closed")?;
    shared.check()?;
    let stopped = Instant::now();
    say(format!("load stopped after {} events; waiting for the pipeline to catch up", shared.accepted_total()));
    wait_drained(store, &shared, &progress_group, &topics, progress_domains, true, cfg.catch_up_timeout).await?;
    let catch_up = stopped.elapsed();
    say(format!("caught up in {:.1} s; comparing with the oracle", catch_up.as_secs_f64()));
    let oracle = source.oracle();
    let rounds = source.round;
    let parts = split(oracle, 250);
    let mut tallies = vec![compare(&client, &parts, Endpoint::Progress, &say).await?];
    if cfg.processors.iter().any(|p| p == "achievements") {
        // The achievements group also reads derived events, whose count is not known here:
        // compare until equal or the deadline (it only gets closer as the group catches up).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let t = compare(&client, &parts, Endpoint::Achievements, &say).await?;
            if t.clean() || Instant::now() >= deadline {
                tallies.push(t);
                break;
            }
            say("achievements differ from the oracle; comparing again".to_owned());
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    let probes = std::mem::take(&mut *shared.probes.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
    let report = Report {
        steps,
        max_rate,
        steady_rate,
        steady_accepted_rate,
        samples,
        processes: names,
        freshness_ms: probes.all,
        probes_late: probes.late,
        probes_skipped: probes.skipped,
        events: shared.accepted_total(),
        rounds,
        retries: shared.retries.load(Ordering::Relaxed),
        catch_up,
        tallies,
    };
    let Deployment { store, fleet, .. } = deployment;
    drop(fleet);
    store.close().await;
    Ok(report)
}

/// The oracle in parts of `n` learners.
fn split(oracle: progress::Oracle, n: usize) -> Vec<progress::Oracle> {
    let progress::Oracle { progress, mut achievements, .. } = oracle;
    let mut parts: Vec<progress::Oracle> = Vec::new();
    for (learner, courses) in progress {
        if parts.last().is_none_or(|p| p.progress.len() >= n) {
            parts.push(progress::Oracle::default());
        }
        if let Some(part) = parts.last_mut() {
            if let Some(a) = achievements.remove(&learner) {
                part.achievements.insert(learner.clone(), a);
            }
            part.progress.insert(learner, courses);
        }
    }
    parts
}

#[derive(Clone, Copy)]
enum Endpoint {
    Progress,
    Achievements,
}

/// Compares one endpoint for every learner of `parts`, four parts at a time, printing
/// how far it got.
async fn compare(client: &Client, parts: &[progress::Oracle], endpoint: Endpoint, say: &impl Fn(String)) -> anyhow::Result<Tally> {
    use futures::StreamExt as _;
    let reader = |tenant: &str| client.readers.get(tenant).cloned().unwrap_or_default();
    let learners: usize = parts.iter().map(|p| p.progress.len()).sum();
    let mut all = Tally::default();
    let mut done = 0;
    let mut last_said = Instant::now();
    let mut compared = futures::stream::iter(parts)
        .map(|part| {
            let reader = &reader;
            async move {
                let t = match endpoint {
                    Endpoint::Progress => chaos::compare_progress(&client.http, &client.base, reader, part).await?,
                    Endpoint::Achievements => chaos::compare_achievements(&client.http, &client.base, reader, part).await?,
                };
                anyhow::Ok((part.progress.len(), t))
            }
        })
        .buffer_unordered(4);
    while let Some(r) = compared.next().await {
        let (n, t) = r?;
        done += n;
        all.endpoint = t.endpoint;
        all.checked += t.checked;
        all.lost += t.lost;
        all.doubled += t.doubled;
        all.wrong += t.wrong;
        all.examples.extend(t.examples.into_iter().take(5usize.saturating_sub(all.examples.len())));
        if last_said.elapsed() >= Duration::from_secs(5) || done == learners {
            say(format!("{}: compared {done}/{learners} learners", all.endpoint));
            last_said = Instant::now();
        }
    }
    Ok(all)
}

/// Waits until `group` has stored offsets covering every record accepted on `domains` (and,
/// with `outbox`, the outbox is empty), twice in a row.
async fn wait_drained(
    store: &lms_state::Store,
    shared: &Shared,
    group: &str,
    topics: &TopicMap,
    domains: &[Domain],
    outbox: bool,
    timeout: Duration,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    let mut streak = 0;
    loop {
        shared.check()?;
        let lag = lag(store, shared, group, topics, domains).await?;
        let pending = if outbox { lms_state::outbox::pending(store).await.unwrap_or(1) } else { 0 };
        streak = if lag == 0 && pending == 0 { streak + 1 } else { 0 };
        if streak >= 2 {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "group {group} not caught up after {timeout:?}: lag {lag} records, outbox {pending} rows");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
