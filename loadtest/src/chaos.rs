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
//!    what each phase showed, and stay ([`lms_harness::oracle::progress::Oracle::phased`]).
//! 4. Meanwhile a schedule kills a random processor process with SIGKILL after a random
//!    delay, `kills` times, restarting each at once.
//! 5. Once the kills are done: wait until every group has committed the end of every
//!    partition it reads and the outbox is empty (twice in a row), then compare progress
//!    and achievements of every learner and the analytics endpoints (active learners,
//!    enrollments, completions, revenue per granularity, with and without a course filter;
//!    funnel per course; scores per assessment) with [`lms_harness::oracle`], and every learner's
//!    in-app inbox with [`lms_harness::oracle::notifications`] (the processes run with a
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
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use api::auth::scope;
use chrono::{DateTime, Utc};
use lms_events::{Domain, Event, EventData};
use lms_generator::{Cohort, CohortConfig, Tenant};
use rand::{Rng, SeedableRng};
use tokio::sync::Mutex;

use lms_harness::client::{delete_json, get_json, mint, post_all};
use lms_harness::compare::{
    NOTIFICATIONS_DELIVERED, Tally, compare_achievements, compare_analytics, compare_notifications, compare_progress,
};
use lms_harness::deploy::{DeploySpec, Deployment, PROCESSORS, Services, group_of, wait_caught_up};
use lms_harness::oracle::{analytics, notifications, progress};

/// What to run.
#[derive(Debug, Clone)]
pub struct ChaosConfig {
    /// The services and the processes deployed on them.
    pub services: Services,
    /// The cohort sent through the API (`learner_prefix` is set per round by soak).
    pub cohort: CohortConfig,
    /// SIGKILLs to deliver.
    pub kills: usize,
    /// Random delay between two kills, milliseconds (uniform in the range).
    pub kill_delay_ms: (u64, u64),
    /// Events per POST.
    pub batch_size: usize,
    /// Concurrent POSTs.
    pub concurrency: usize,
    /// How long the groups may take to catch up after the last kill.
    pub catch_up_timeout: Duration,
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
            services: Services {
                instances: 2,
                partitions: 4,
                one_record_per_batch: true,
                ..Services::new(lms_bin, brokers, postgres_url, clickhouse_url)
            },
            cohort: CohortConfig {
                tenants: 2,
                courses: 4,
                learners: 150,
                weeks: 6,
                now: DateTime::parse_from_rfc3339("2026-11-20T00:00:00Z").map(|t| t.to_utc()).unwrap_or_else(|_| Utc::now()),
                ..CohortConfig::new(42)
            },
            kills: 20,
            kill_delay_ms: (500, 3000),
            batch_size: 200,
            concurrency: 4,
            catch_up_timeout: Duration::from_secs(300),
            erase: 0,
            replay: false,
            verbose: false,
        }
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

/// Runs the chaos scenario and compares the endpoints with the oracles.
pub async fn run(cfg: &ChaosConfig) -> anyhow::Result<Report> {
    ensure!(cfg.services.instances >= 1 && cfg.kill_delay_ms.0 <= cfg.kill_delay_ms.1, "instances ≥ 1 and a kill delay range min ≤ max");
    let say = |s: String| {
        if cfg.verbose {
            println!("[chaos] {s}");
        }
    };
    let spec = DeploySpec {
        name: "chaos",
        services: cfg.services.clone(),
        kafka_properties: Vec::new(),
        processors: PROCESSORS.iter().map(|p| (*p).to_owned()).collect(),
        // No learner reaches the throttle, so every notification is listed under its own id
        // (the inbox oracle does not model digests, whose windows run on processing time).
        env: vec![("LMS_NOTIFICATIONS__THROTTLE_PER_WINDOW".to_owned(), "1000000".to_owned())],
    };
    let Deployment { prefix, topics, store, secret, base, http, fleet } = Deployment::start(&spec, say).await?;

    let mut cohort = Cohort::new(cfg.cohort.clone()).context("invalid cohort options")?;
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
        cfg.cohort.tenants,
        cfg.cohort.learners
    ));

    let started = Instant::now();
    let retries = Arc::new(AtomicU64::new(0));
    let tokens: BTreeMap<String, String> = tenants.iter().map(|t| (t.name.clone(), token(&t.name, scope::EVENTS_WRITE))).collect();
    post_all(&http, &base, &tokens, &first_versions, cfg.batch_size, cfg.concurrency, &retries).await?;
    let catalog_group = vec![(group_of(&prefix, "catalog"), vec![topics.topic(Domain::Catalog).to_owned()])];
    wait_caught_up(&cfg.services.brokers, &catalog_group, None, Duration::from_secs(180))
        .await
        .context("the catalog group did not catch up")?;
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
            let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.cohort.seed ^ 0x5eed);
            let mut at = Vec::new();
            for kill in 0..cfg.kills {
                let delay = rng.random_range(cfg.kill_delay_ms.0..=cfg.kill_delay_ms.1);
                tokio::time::sleep(Duration::from_millis(delay)).await;
                let mut f = fleet.lock().await;
                let victim = rng.random_range(0..f.processors.len());
                let child = &mut f.processors[victim];
                let pid = child.id();
                child.kill().context("SIGKILL")?;
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
        let (brokers, groups, store) = (&cfg.services.brokers, &groups, &store);
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

    wait_caught_up(&cfg.services.brokers, &groups, Some(&store), cfg.catch_up_timeout).await?;
    let catch_up = last_kill.elapsed();
    say(format!("every group caught up {:.1} s after the last kill", catch_up.as_secs_f64()));
    if cfg.replay {
        let mut f = fleet.lock().await;
        f.stop_processors()?;
        for name in PROCESSORS {
            f.run_to_end(&["replay", "--group", name, "--to-earliest", "--yes", "--skip-member-check"])?;
        }
        for i in 0..cfg.services.instances {
            let c = f.spawn_processor()?;
            if i < f.processors.len() {
                f.processors[i] = c;
            } else {
                f.processors.push(c);
            }
        }
        drop(f);
        let replayed = Instant::now();
        wait_caught_up(&cfg.services.brokers, &groups, Some(&store), cfg.catch_up_timeout).await.context("caught up after the replay")?;
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
    tallies.extend(compare_analytics(&http, &base, &reader, &analytics_oracle, &tenants, (cfg.cohort.now, cfg.cohort.weeks)).await?);
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
