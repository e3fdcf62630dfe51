//! Every read endpoint compared with the oracles: a [`Tally`] per endpoint of what is
//! missing, counted twice or otherwise different.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::time::{Duration, Instant};

use api::analytics::params::MAX_AT_RISK_LIMIT;
use chrono::{DateTime, NaiveDate, Utc};
use lms_analytics::{
    ActiveLearnersPoint, AtRiskLearner, AtRiskParams, CompletionsPoint, EnrollmentsPoint, Funnel, FunnelParams, Granularity, RevenueParams,
    RevenuePoint, Scores, ScoresParams, SeriesParams,
};
use lms_generator::Tenant;

use crate::client::{get_json, time};
use crate::oracle::progress::LearnerKey;
use crate::oracle::{analytics, notifications, progress};

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
    pub fn new(endpoint: &str) -> Tally {
        Tally { endpoint: endpoint.to_owned(), ..Tally::default() }
    }

    /// Compares a count; returns whether it matched.
    pub fn count(&mut self, got: u64, want: u64) -> bool {
        if got < want {
            self.lost += want - got;
        } else {
            self.doubled += got - want;
        }
        got == want
    }

    /// Adds `other`'s counts and as many of its examples as fit.
    pub fn add(&mut self, other: Tally) {
        self.checked += other.checked;
        self.lost += other.lost;
        self.doubled += other.doubled;
        self.wrong += other.wrong;
        for e in other.examples {
            self.example(e);
        }
    }

    pub fn example(&mut self, what: String) {
        if self.examples.len() < 5 {
            self.examples.push(what);
        }
    }

    /// No difference at all.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.doubled == 0 && self.wrong == 0
    }
}

pub async fn compare_progress(
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
pub const NOTIFICATIONS_DELIVERED: Duration = Duration::from_secs(60);

/// Compares every learner's inbox with the oracle, re-reading the learners that differ
/// until they match or `within` passes (the dispatcher may still be delivering).
pub async fn compare_notifications(
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
pub fn compare_inbox(t: &mut Tally, who: &str, got: &[(String, String)], want: &notifications::Expected) {
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

pub async fn compare_achievements(
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
pub fn series<K: Ord + Clone + fmt::Debug>(t: &mut Tally, what: &str, got: BTreeMap<K, Vec<u64>>, want: BTreeMap<K, Vec<u64>>) {
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

pub async fn compare_analytics(
    http: &reqwest::Client,
    base: &str,
    reader: &impl Fn(&str) -> String,
    o: &analytics::Oracle,
    tenants: &[Tenant],
    (now, weeks): (DateTime<Utc>, u32),
) -> anyhow::Result<Vec<Tally>> {
    let mut active = Tally::new("GET /v1/analytics/active-learners");
    let mut enrollments = Tally::new("GET /v1/analytics/enrollments");
    let mut completions = Tally::new("GET /v1/analytics/completions");
    let mut revenue = Tally::new("GET /v1/analytics/revenue");
    let mut funnel = Tally::new("GET /v1/analytics/courses/{id}/funnel");
    let mut scores = Tally::new("GET /v1/analytics/assessments/{id}/scores");
    let mut at_risk = Tally::new("GET /v1/analytics/courses/{id}/at-risk");
    let from: NaiveDate = (now - chrono::Duration::weeks(i64::from(weeks)) - chrono::Duration::days(7)).date_naive();
    let to: NaiveDate = now.date_naive();
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
                as_of: now,
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
pub fn compare_at_risk(t: &mut Tally, what: &str, got: &[AtRiskLearner], want: &[AtRiskLearner]) {
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

    pub fn inbox(got: &[(&str, &str)]) -> Vec<(String, String)> {
        got.iter().map(|(id, c)| ((*id).to_owned(), (*c).to_owned())).collect()
    }

    #[test]
    pub fn inbox_comparison_counts_each_kind_of_difference() {
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
