//! The analytics oracle: every analytics answer computed plainly over the distinct events
//! (the first copy of each tenant and id), as the contract words it. The analytics tests
//! compare the stores with it, and the chaos run compares the running API with it.
//!
//! Completions, the funnel and the at-risk list follow the learners' own progress, computed
//! by the progress oracle from the catalog and the activity (never from the derived events
//! the stores read): under the highest course version, whenever it arrived (CONTRACT.md,
//! "Meanings"). Derived events given to [`Oracle::new`] are ignored.

use std::collections::{BTreeMap, HashMap, HashSet};

use chrono::{DateTime, Datelike, Duration as Days, NaiveDate, Utc};
use lms_analytics::{
    ActiveLearnersPoint, AtRiskLearner, AtRiskParams, CompletionsPoint, EnrollmentsPoint, Funnel, FunnelParams, Granularity, RevenueParams,
    RevenuePoint, ScoreBucket, Scores, ScoresParams, SeriesParams,
};
use lms_events::{Domain, Event, EventData};

use super::progress;

fn bucket_of(g: Granularity, d: NaiveDate) -> NaiveDate {
    match g {
        Granularity::Day => d,
        Granularity::Week => {
            let mut d = d;
            while d.weekday() != chrono::Weekday::Mon {
                d = d.pred_opt().expect("a day before");
            }
            d
        }
        Granularity::Month => NaiveDate::from_ymd_opt(d.year(), d.month(), 1).expect("first of month"),
    }
}

/// A learner in a course, as the oracle sees it.
#[derive(Default)]
struct InCourse {
    /// The latest enrollment event: its time and whether it was a drop.
    enrollment: Option<(DateTime<Utc>, bool)>,
    /// The latest learning event.
    last: Option<DateTime<Utc>>,
    /// The learner's percent_complete.
    percent: f64,
    /// When the learner completed the course, if they have.
    completed_at: Option<DateTime<Utc>>,
}

/// The oracle over a stream's distinct events.
pub struct Oracle {
    events: Vec<Event>,
    /// Every learner's progress, from the catalog and the activity.
    progress: progress::Oracle,
}

fn is_learning(d: &EventData) -> bool {
    matches!(
        d,
        EventData::LessonStarted(_) | EventData::LessonCompleted(_) | EventData::VideoProgressed(_) | EventData::AssessmentGraded(_)
    )
}

fn in_range(t: DateTime<Utc>, from: NaiveDate, to: NaiveDate) -> bool {
    let d = t.date_naive();
    from <= d && d <= to
}

impl Oracle {
    /// Keeps the first copy of each id.
    pub fn new<'a>(events: impl IntoIterator<Item = &'a Event>) -> Oracle {
        let mut seen = HashSet::new();
        let events: Vec<Event> = events
            .into_iter()
            .filter(|e| e.domain() != Domain::Derived && seen.insert((e.tenant.clone(), e.id.clone())))
            .cloned()
            .collect();
        let progress = progress::Oracle::new(&events);
        Oracle { events, progress }
    }

    fn of<'a>(&'a self, tenant: &'a str) -> impl Iterator<Item = &'a Event> + 'a {
        self.events.iter().filter(move |e| e.tenant == tenant)
    }

    pub fn active_learners(&self, p: &SeriesParams) -> Vec<ActiveLearnersPoint> {
        let mut sets: BTreeMap<NaiveDate, HashSet<&str>> = BTreeMap::new();
        for e in self.of(&p.tenant) {
            if is_learning(&e.data) && in_range(e.time, p.from, p.to) && course_matches(e.course_id(), &p.course_id) {
                sets.entry(bucket_of(p.granularity, e.time.date_naive())).or_default().insert(e.learner_id().expect("learner"));
            }
        }
        sets.into_iter().map(|(bucket, s)| ActiveLearnersPoint { bucket, active_learners: s.len() as u64 }).collect()
    }

    pub fn enrollments(&self, p: &SeriesParams) -> Vec<EnrollmentsPoint> {
        let mut counts: BTreeMap<NaiveDate, (u64, u64)> = BTreeMap::new();
        for e in self.of(&p.tenant) {
            if !in_range(e.time, p.from, p.to) || !course_matches(e.course_id(), &p.course_id) {
                continue;
            }
            let b = bucket_of(p.granularity, e.time.date_naive());
            match e.data {
                EventData::EnrollmentCreated(_) => counts.entry(b).or_default().0 += 1,
                EventData::EnrollmentDropped(_) => counts.entry(b).or_default().1 += 1,
                _ => {}
            }
        }
        counts.into_iter().map(|(bucket, (enrollments, drops))| EnrollmentsPoint { bucket, enrollments, drops }).collect()
    }

    pub fn completions(&self, p: &SeriesParams) -> Vec<CompletionsPoint> {
        let mut counts: BTreeMap<NaiveDate, u64> = BTreeMap::new();
        for ((tenant, _), courses) in &self.progress.progress {
            if *tenant != p.tenant {
                continue;
            }
            for (course, e) in courses {
                if let Some(at) = e.completed_at.filter(|at| in_range(*at, p.from, p.to))
                    && course_matches(Some(course), &p.course_id)
                {
                    *counts.entry(bucket_of(p.granularity, at.date_naive())).or_default() += 1;
                }
            }
        }
        counts.into_iter().map(|(bucket, completions)| CompletionsPoint { bucket, completions }).collect()
    }

    /// What the oracle knows of each learner of a course.
    fn course_learners(&self, tenant: &str, course: &str) -> BTreeMap<String, InCourse> {
        let mut m: BTreeMap<String, InCourse> = BTreeMap::new();
        for e in self.of(tenant).filter(|e| e.course_id() == Some(course)) {
            let Some(learner) = e.learner_id() else { continue };
            let entry = m.entry(learner.to_owned()).or_default();
            match &e.data {
                EventData::EnrollmentCreated(_) | EventData::EnrollmentDropped(_) => {
                    let this = (e.time, matches!(e.data, EventData::EnrollmentDropped(_)));
                    // The latest by event time; at equal times a drop wins.
                    if entry.enrollment.is_none_or(|prev| this > prev) {
                        entry.enrollment = Some(this);
                    }
                }
                d if is_learning(d) => entry.last = Some(entry.last.map_or(e.time, |t| t.max(e.time))),
                _ => {}
            }
        }
        for ((t, learner), courses) in &self.progress.progress {
            if t != tenant {
                continue;
            }
            if let Some(x) = courses.get(course) {
                let entry = m.entry(learner.clone()).or_default();
                entry.percent = x.percent_complete;
                entry.completed_at = x.completed_at;
            }
        }
        m
    }

    pub fn funnel(&self, p: &FunnelParams) -> Funnel {
        let mut f = Funnel::default();
        for l in self.course_learners(&p.tenant, &p.course_id).values() {
            let completed = l.completed_at.is_some();
            let enrolled_now = matches!(l.enrollment, Some((_, false)));
            if !(enrolled_now || completed) {
                continue;
            }
            f.enrolled += 1;
            f.started += u64::from(l.last.is_some());
            f.reached_25 += u64::from(l.percent >= 25.0);
            f.reached_50 += u64::from(l.percent >= 50.0);
            f.reached_75 += u64::from(l.percent >= 75.0);
            f.completed += u64::from(completed);
        }
        f
    }

    pub fn at_risk(&self, p: &AtRiskParams) -> Vec<AtRiskLearner> {
        let threshold = p.as_of - Days::days(i64::from(p.inactive_days));
        let mut out: Vec<(DateTime<Utc>, AtRiskLearner)> = Vec::new();
        for (learner_id, l) in self.course_learners(&p.tenant, &p.course_id) {
            let Some((enrolled_at, false)) = l.enrollment else { continue };
            if l.completed_at.is_some() {
                continue;
            }
            let reference = l.last.unwrap_or(enrolled_at);
            if reference < threshold {
                out.push((reference, AtRiskLearner { learner_id, percent_complete: l.percent, last_activity_at: l.last }));
            }
        }
        out.sort_by(|a, b| (a.0, &a.1.learner_id).cmp(&(b.0, &b.1.learner_id)));
        out.truncate(p.limit as usize);
        out.into_iter().map(|(_, l)| l).collect()
    }

    pub fn revenue(&self, p: &RevenueParams) -> Vec<RevenuePoint> {
        let s = &p.series;
        let mut paid: HashMap<&str, (&str, Option<&str>)> = HashMap::new();
        for e in self.of(&s.tenant) {
            if let EventData::PaymentSucceeded(d) = &e.data {
                paid.insert(&d.payment_id, (&d.currency, d.course_id.as_deref()));
            }
        }
        let wanted = |currency: &str, course: Option<&str>| {
            p.currency.as_deref().is_none_or(|c| c == currency) && s.course_id.as_deref().is_none_or(|c| Some(c) == course)
        };
        let mut sums: BTreeMap<(NaiveDate, String), (i64, i64)> = BTreeMap::new();
        for e in self.of(&s.tenant).filter(|e| in_range(e.time, s.from, s.to)) {
            let b = bucket_of(s.granularity, e.time.date_naive());
            match &e.data {
                EventData::PaymentSucceeded(d) if wanted(&d.currency, d.course_id.as_deref()) => {
                    sums.entry((b, d.currency.clone())).or_default().0 += d.amount_minor;
                }
                EventData::PaymentRefunded(d) => {
                    if let Some((currency, course)) = paid.get(d.payment_id.as_str())
                        && wanted(currency, *course)
                    {
                        sums.entry((b, (*currency).to_owned())).or_default().1 += d.amount_minor;
                    }
                }
                _ => {}
            }
        }
        sums.into_iter()
            .map(|((bucket, currency), (gross, refunds))| RevenuePoint {
                bucket,
                currency,
                gross_minor: gross,
                refunds_minor: refunds,
                net_minor: gross - refunds,
            })
            .collect()
    }

    pub fn scores(&self, p: &ScoresParams) -> Scores {
        let mut attempts = 0;
        let mut best: HashMap<&str, f64> = HashMap::new();
        for e in self.of(&p.tenant) {
            let EventData::AssessmentGraded(a) = &e.data else { continue };
            if a.assessment_id != p.assessment_id
                || p.range.is_some_and(|(from, to)| !in_range(e.time, from, to))
                || !course_matches(Some(&a.course_id), &p.course_id)
            {
                continue;
            }
            attempts += 1;
            let pct = 100.0 * a.score / a.max_score;
            let b = best.entry(&a.learner_id).or_insert(pct);
            *b = b.max(pct);
        }
        let mut values: Vec<f64> = best.into_values().collect();
        values.sort_by(f64::total_cmp);
        let n = values.len();
        let round2 = |v: f64| (v * 100.0).round() / 100.0;
        let percentile = |q: usize| (n > 0).then(|| round2(values[((q * n).div_ceil(100)).max(1) - 1]));
        let mut histogram: Vec<ScoreBucket> = (0..10).map(|i| ScoreBucket { from_pct: i * 10, to_pct: i * 10 + 10, count: 0 }).collect();
        for v in &values {
            let i = if *v >= 100.0 { 9 } else { (*v / 10.0).floor() as usize };
            histogram[i].count += 1;
        }
        Scores {
            attempts,
            learners: n as u64,
            mean_pct: (n > 0).then(|| round2(values.iter().sum::<f64>() / n as f64)),
            p50_pct: percentile(50),
            p90_pct: percentile(90),
            histogram,
        }
    }
}

fn course_matches(course: Option<&str>, filter: &Option<String>) -> bool {
    filter.as_deref().is_none_or(|f| Some(f) == course)
}
