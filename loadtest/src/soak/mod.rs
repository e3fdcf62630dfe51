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
//!    processor runs) is compared with [`lms_harness::oracle::progress`], computed per round from
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
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use api::auth::scope;
use chrono::{DateTime, Utc};
use lms_bus::TopicMap;
use lms_events::{Domain, Event};
use lms_generator::CohortConfig;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use lms_harness::client::post;
use lms_harness::compare::{Tally, compare_achievements, compare_progress};
use lms_harness::deploy::{DeploySpec, Deployment, PROCESSORS, Services, group_of};
use lms_harness::oracle::progress;

mod load;
mod procs;
mod report;

use load::{Client, Probes, Shared, Source, domain_index, feed};
use procs::{lag, processes, rss_kib};
pub use report::{Report, Sample, Step};
use report::{quantile, sorted};

/// What to run.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// The services and the processes deployed on them.
    pub services: Services,
    /// The cohort sent through the API (`learner_prefix` is set per round by soak).
    pub cohort: CohortConfig,
    /// What the processor process runs (must include `catalog` and `progress`).
    pub processors: Vec<String>,
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
    /// How long the lag may take to drain (after the ramp, and at the end).
    pub catch_up_timeout: Duration,
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
            services: Services {
                instances: 1,
                partitions: 4,
                one_record_per_batch: false,
                ..Services::new(lms_bin, brokers, postgres_url, clickhouse_url)
            },
            cohort: CohortConfig {
                tenants: 2,
                courses: 4,
                learners: 100,
                weeks: 6,
                now: DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z").map(|t| t.to_utc()).unwrap_or_else(|_| Utc::now()),
                ..CohortConfig::new(42)
            },
            processors: PROCESSORS.iter().map(|p| (*p).to_owned()).collect(),
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
            catch_up_timeout: Duration::from_secs(300),
            kafka_properties: Vec::new(),
            verbose: false,
        }
    }
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
    ensure!(cfg.batch_size >= 1 && cfg.concurrency >= 1 && cfg.services.instances >= 1, "batch size, concurrency and instances ≥ 1");
    ensure!(cfg.start_rate > 0.0 && cfg.step_factor > 1.0, "a positive start rate and a step factor > 1");
    let verbose = cfg.verbose;
    let say = move |s: String| {
        if verbose {
            println!("[soak] {s}");
        }
    };
    let spec = DeploySpec {
        name: "soak",
        services: cfg.services.clone(),
        kafka_properties: cfg.kafka_properties.clone(),
        processors: cfg.processors.clone(),
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
    let progress_group = group_of(&deployment.prefix, "progress");
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
                post(&client.http, &format!("{}/v1/events", client.base), &token, body, &shared.retries).await?;
                shared.accepted[domain_index(Domain::Catalog)].fetch_add(chunk.len() as u64, Ordering::Relaxed);
            }
        }
    }
    let catalog_group = group_of(&deployment.prefix, "catalog");
    wait_drained(store, &shared, &catalog_group, &topics, &[Domain::Catalog], false, cfg.catch_up_timeout)
        .await
        .context("the catalog group did not catch up")?;
    say(format!(
        "catalog of {} events processed; {} tenants × {} learners per round",
        catalog.len(),
        cfg.cohort.tenants,
        cfg.cohort.learners
    ));

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
                    Endpoint::Progress => compare_progress(&client.http, &client.base, reader, part).await?,
                    Endpoint::Achievements => compare_achievements(&client.http, &client.base, reader, part).await?,
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
