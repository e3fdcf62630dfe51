//! The soak run's load: rounds of cohorts sent through the API at the offered rate, the
//! freshness probes, and the counts the lag is computed from.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use chrono::{DateTime, Utc};
use lms_events::{Domain, Event, EventData};
use lms_generator::{Cohort, CohortConfig, Tenant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use std::collections::BTreeMap;

use super::SoakConfig;
use lms_harness::client::{get_json, post, time};
use lms_harness::oracle::progress;

/// A `lesson.completed` whose visibility is timed.
#[derive(Debug, Clone)]
pub(crate) struct Probe {
    pub(crate) tenant: String,
    pub(crate) learner: String,
    pub(crate) course: String,
    pub(crate) time: DateTime<Utc>,
}

/// The endless activity stream: rounds of cohorts with new learners; keeps what it handed
/// out for the oracle (the oracles of finished rounds, the events of the current one).
pub(crate) struct Source {
    pub(crate) config: CohortConfig,
    pub(crate) round: u32,
    pub(crate) cohort: Cohort,
    pub(crate) catalog: Vec<Event>,
    pub(crate) tenants: Vec<Tenant>,
    pub(crate) pending: BTreeMap<String, Vec<Event>>,
    pub(crate) sent: Vec<Event>,
    pub(crate) done: progress::Oracle,
    pub(crate) count: u64,
    pub(crate) next_probe: u64,
}

pub(crate) fn round_config(base: &CohortConfig, round: u32) -> CohortConfig {
    CohortConfig { learner_prefix: format!("r{round}-learner-"), ..base.clone() }
}

impl Source {
    pub(crate) fn new(cfg: &SoakConfig) -> anyhow::Result<Source> {
        let config = CohortConfig { learners: cfg.cohort.learners.max(1), ..cfg.cohort.clone() };
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

    pub(crate) fn merge(&mut self, o: progress::Oracle) {
        self.done.progress.extend(o.progress);
        self.done.achievements.extend(o.achievements);
    }

    /// The next batch of `n` events of one tenant, and the probes among them when `probe_every`.
    pub(crate) fn next_batch(&mut self, n: usize, probe_every: Option<u64>) -> anyhow::Result<(String, Vec<Event>, Vec<Probe>)> {
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
    pub(crate) fn hand_out(&mut self, tenant: String, batch: Vec<Event>, probe_every: Option<u64>) -> (String, Vec<Event>, Vec<Probe>) {
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
    pub(crate) fn oracle(&mut self) -> progress::Oracle {
        let sent = std::mem::take(&mut self.sent);
        let o = progress::Oracle::new(self.catalog.iter().chain(sent.iter()));
        self.merge(o);
        std::mem::take(&mut self.done)
    }
}

#[derive(Default)]
pub(crate) struct Probes {
    /// Every visible probe (ms).
    pub(crate) all: Vec<f64>,
    /// Since the last sample.
    pub(crate) window: Vec<f64>,
    pub(crate) late: u64,
    pub(crate) skipped: u64,
}

/// The index of `d` in `Domain::ALL`.
pub(crate) fn domain_index(d: Domain) -> usize {
    Domain::ALL.iter().position(|x| *x == d).unwrap_or(0)
}

/// What the feeder, the POSTs and the probes share with the run.
pub(crate) struct Shared {
    /// Accepted events per domain (index in `Domain::ALL`).
    pub(crate) accepted: [AtomicU64; Domain::ALL.len()],
    pub(crate) retries: AtomicU64,
    /// Offered events/s (f64 bits); 0 pauses the feeder.
    pub(crate) rate: AtomicU64,
    /// Events offered so far, and those of them shed because every client was busy.
    pub(crate) offers: StdMutex<(f64, f64)>,
    pub(crate) probing: AtomicBool,
    pub(crate) probes: StdMutex<Probes>,
    pub(crate) error: StdMutex<Option<String>>,
}

impl Shared {
    pub(crate) fn accepted_total(&self) -> u64 {
        self.accepted.iter().map(|a| a.load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn accepted_on(&self, domains: &[Domain]) -> u64 {
        domains.iter().map(|d| self.accepted[domain_index(*d)].load(Ordering::Relaxed)).sum()
    }

    pub(crate) fn offers(&self) -> (f64, f64) {
        *self.offers.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn set_rate(&self, rate: f64) {
        self.rate.store(rate.to_bits(), Ordering::Relaxed);
    }

    pub(crate) fn fail(&self, e: String) {
        let mut slot = self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        slot.get_or_insert(e);
    }

    pub(crate) fn check(&self) -> anyhow::Result<()> {
        match self.error.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            Some(e) => bail!("{e}"),
            None => Ok(()),
        }
    }
}

/// What the POST and probe tasks need.
#[derive(Clone)]
pub(crate) struct Client {
    pub(crate) http: reqwest::Client,
    pub(crate) base: String,
    pub(crate) writers: Arc<BTreeMap<String, String>>,
    pub(crate) readers: Arc<BTreeMap<String, String>>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) posts: Arc<Semaphore>,
    pub(crate) probes: Arc<Semaphore>,
    pub(crate) probe_timeout: Duration,
}

/// Offers batches at the shared rate until cancelled; returns the source (for the oracle)
/// once every POST it started is answered.
pub(crate) async fn feed(
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
    pub(crate) async fn post(&self, tenant: &str, batch: &[Event], probes: Vec<Probe>) -> anyhow::Result<()> {
        let body = serde_json::to_vec(batch)?;
        let token = self.writers.get(tenant).cloned().unwrap_or_default();
        post(&self.http, &format!("{}/v1/events", self.base), &token, body, &self.shared.retries).await?;
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
    pub(crate) async fn probe(&self, p: &Probe, accepted_at: Instant) -> Option<f64> {
        let url = format!("{}/v1/learners/{}/progress", self.base, p.learner);
        let token = self.readers.get(&p.tenant).cloned().unwrap_or_default();
        let want = p.time.timestamp_micros();
        let deadline = accepted_at + self.probe_timeout;
        let mut every = tokio::time::interval(Duration::from_millis(20));
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            if let Ok(body) = get_json(&self.http, &url, &token).await {
                let seen = body.as_array().into_iter().flatten().any(|c| {
                    c["course_id"].as_str() == Some(p.course.as_str())
                        && time(&c["last_activity_at"]).is_some_and(|t| t.timestamp_micros() >= want)
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
