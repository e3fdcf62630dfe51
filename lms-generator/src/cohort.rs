//! The cohort: every tenant's catalog stream and every learner's journeys, merged lazily in
//! time order.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};

use chrono::{DateTime, Datelike, Duration, Utc};
use lms_events::Event;
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use crate::catalog::{self, Tenant};
use crate::journey::Journey;
use crate::rhythm::{at_time_of_day, day_weight, exponential, hash_str, mix, secs, unit, weighted};
use crate::{CohortConfig, ConfigError};

/// What a cohort has produced so far (all of it once the iterator is exhausted).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Events produced.
    pub events: u64,
    /// Events by type (`lesson.completed`, …).
    pub by_type: BTreeMap<&'static str, u64>,
    /// Events by domain (`learning`, `enrollment`, `payment`, `catalog`), one topic each.
    pub by_domain: BTreeMap<&'static str, u64>,
    /// Events by tenant.
    pub by_tenant: BTreeMap<String, u64>,
    /// The earliest event time.
    pub first: Option<DateTime<Utc>>,
    /// The latest event time.
    pub last: Option<DateTime<Utc>>,
}

impl Summary {
    fn add(&mut self, event: &Event) {
        self.events += 1;
        *self.by_type.entry(event.event_type().as_str()).or_default() += 1;
        *self.by_domain.entry(event.domain().as_str()).or_default() += 1;
        if let Some(n) = self.by_tenant.get_mut(&event.tenant) {
            *n += 1;
        } else {
            self.by_tenant.insert(event.tenant.clone(), 1);
        }
        self.first = Some(self.first.map_or(event.time, |f| f.min(event.time)));
        self.last = Some(self.last.map_or(event.time, |l| l.max(event.time)));
    }

    /// The count of one event type (`"lesson.completed"`), 0 when none.
    pub fn count(&self, event_type: &str) -> u64 {
        self.by_type.get(event_type).copied().unwrap_or(0)
    }
}

/// Where events come from: a tenant's catalog or a learner's journey.
enum Source {
    Catalog,
    Journey(Box<Journey>),
}

/// A synthetic cohort: an iterator of valid events in time order (ties broken
/// deterministically), the same for the same configuration.
///
/// ```
/// use lms_generator::{Cohort, CohortConfig};
/// let mut cohort = Cohort::new(CohortConfig { learners: 20, weeks: 2, ..CohortConfig::new(7) })?;
/// let events: Vec<_> = cohort.by_ref().collect();
/// assert!(events.windows(2).all(|w| w[0].time <= w[1].time));
/// assert_eq!(cohort.summary().events, events.len() as u64);
/// # Ok::<(), lms_generator::ConfigError>(())
/// ```
pub struct Cohort {
    config: CohortConfig,
    tenants: Vec<Tenant>,
    sources: Vec<Source>,
    buffers: Vec<VecDeque<Event>>,
    heap: BinaryHeap<Reverse<(DateTime<Utc>, usize)>>,
    summary: Summary,
    learners: usize,
    journeys: usize,
}

impl Cohort {
    /// Plans the cohort: the catalogs, every learner's enrollments. Events are produced as
    /// the iterator advances.
    pub fn new(config: CohortConfig) -> Result<Cohort, ConfigError> {
        config.validate()?;
        let now = config.now;
        let start = config.start();
        let names: Vec<String> = if config.tenant_names.is_empty() {
            (0..config.tenants).map(catalog::tenant_name).collect()
        } else {
            config.tenant_names.clone()
        };
        let tenants: Vec<Tenant> =
            names.into_iter().enumerate().map(|(i, name)| catalog::tenant(config.seed, i, name, config.courses, start, now)).collect();
        let mut sources = Vec::new();
        let mut buffers = Vec::new();
        for t in &tenants {
            sources.push(Source::Catalog);
            buffers.push(catalog::catalog_events(config.seed, t, now).into());
        }
        let salt = hash_str(&config.learner_prefix);
        let period = (now - start).num_seconds() as f64;
        let mut learners = 0;
        for (ti, tenant) in tenants.iter().enumerate() {
            let popularity: Vec<f64> = tenant.courses.iter().map(|c| c.popularity).collect();
            for l in 0..config.learners {
                let learner_seed = mix(mix(mix(config.seed, salt), ti as u64), l as u64);
                let mut rng = StdRng::seed_from_u64(learner_seed);
                learners += 1;
                let learner_id = format!("{}{:05}", config.learner_prefix, l + 1);
                // Arrivals grow over the period: half uniform, half with a rising density.
                let u = unit(&mut rng);
                let share = if unit(&mut rng) < 0.5 { u } else { u.sqrt() };
                let mut arrival = start + Duration::days(1) + secs((period - 86_400.0).max(0.0) * share);
                arrival = on_a_study_day(&mut rng, arrival);
                let wanted = 1 + [0.35, 0.3].iter().take_while(|p| unit(&mut rng) < **p).count();
                let mut taken: Vec<usize> = Vec::new();
                let mut at = arrival;
                for k in 0..wanted.min(tenant.courses.len()) {
                    let mut weights = popularity.clone();
                    for c in &taken {
                        weights[*c] = 0.0;
                    }
                    for (c, course) in tenant.courses.iter().enumerate() {
                        if course.retired_at.is_some_and(|r| r <= at) {
                            weights[c] = 0.0;
                        }
                    }
                    if weights.iter().all(|w| *w == 0.0) || at > now {
                        break;
                    }
                    let course = weighted(&mut rng, &weights);
                    taken.push(course);
                    let journey_rng = StdRng::seed_from_u64(mix(learner_seed, 0x1000 + k as u64));
                    let journey = Journey::new(journey_rng, ti, course, learner_id.clone(), at, now);
                    sources.push(Source::Journey(Box::new(journey)));
                    buffers.push(VecDeque::new());
                    let gap = secs(exponential(&mut rng, 12.0 * 86_400.0) + 3600.0);
                    at = on_a_study_day(&mut rng, at + gap);
                }
            }
        }
        let journeys = sources.len() - tenants.len();
        let mut cohort =
            Cohort { config, tenants, sources, buffers, heap: BinaryHeap::new(), summary: Summary::default(), learners, journeys };
        for i in 0..cohort.sources.len() {
            cohort.schedule(i);
        }
        Ok(cohort)
    }

    /// The configuration the cohort was built from.
    pub fn config(&self) -> &CohortConfig {
        &self.config
    }

    /// The tenants and their catalogs (course ids, lessons, quiz ids, prices).
    pub fn tenants(&self) -> &[Tenant] {
        &self.tenants
    }

    /// The number of learners across tenants.
    pub fn learners(&self) -> usize {
        self.learners
    }

    /// The number of enrollment journeys (a learner may take several courses).
    pub fn journeys(&self) -> usize {
        self.journeys
    }

    /// What has been produced so far.
    pub fn summary(&self) -> &Summary {
        &self.summary
    }

    /// Fills source `i`'s buffer if needed and puts it on the heap by its next event time.
    fn schedule(&mut self, i: usize) {
        if self.buffers[i].is_empty()
            && let Source::Journey(journey) = &mut self.sources[i]
        {
            while self.buffers[i].is_empty() && !journey.is_done() {
                journey.step(&self.tenants, &mut self.buffers[i]);
            }
        }
        if let Some(front) = self.buffers[i].front() {
            self.heap.push(Reverse((front.time, i)));
        }
    }
}

impl Iterator for Cohort {
    type Item = Event;

    fn next(&mut self) -> Option<Event> {
        let Reverse((_, i)) = self.heap.pop()?;
        let event = self.buffers[i].pop_front()?;
        self.schedule(i);
        self.summary.add(&event);
        Some(event)
    }
}

/// `t`'s day, or a later one when the weekly rhythm rejects it, at an hour of the daily
/// rhythm (not before `t`).
fn on_a_study_day(rng: &mut StdRng, t: DateTime<Utc>) -> DateTime<Utc> {
    let mut day = t.date_naive();
    for _ in 0..7 {
        if unit(rng) < day_weight(day.weekday()) {
            break;
        }
        day = day.succ_opt().unwrap_or(day);
    }
    let candidate = at_time_of_day(rng, day);
    if candidate < t { t + secs(unit(rng) * 3600.0) } else { candidate }
}
