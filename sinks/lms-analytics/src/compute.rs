//! The last step of the answers that both stores share: the stores fetch small per-learner
//! summaries with SQL, and this module turns them into the funnel, the at-risk list and the
//! score statistics, so the two stores cannot differ in these rules.

use std::collections::BTreeMap;

use crate::query::AtRiskParams;
use crate::response::{AtRiskLearner, Funnel, ScoreBucket, Scores};
use crate::rows::{EnrollmentRow, micros, time_of};

/// What a store knows about one learner in one course.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CourseLearner {
    /// The learner's latest enrollment event: whether it was a drop, and its time in µs.
    pub enrollment: Option<(bool, i64)>,
    /// The latest learning event's time in µs.
    pub last_activity_us: Option<i64>,
    /// `percent_complete` × 10 of the latest figures (the largest revision).
    pub pct_tenths: Option<i32>,
    /// Whether the latest figures say completed.
    pub completed: bool,
}

impl CourseLearner {
    /// Enrolled now: the latest enrollment event is a creation.
    pub fn enrolled_now(&self) -> bool {
        matches!(self.enrollment, Some((false, _)))
    }
}

/// The per-learner summaries of one course, as a store's four queries return them.
#[derive(Debug, Clone, Default)]
pub struct CourseLearners {
    /// Learner id → summary.
    pub learners: BTreeMap<String, CourseLearner>,
}

impl CourseLearners {
    /// Adds `max(order_key)` of a learner's enrollment events.
    pub fn enrollment(&mut self, learner: String, max_order_key: i64) {
        self.learners.entry(learner).or_default().enrollment = Some(EnrollmentRow::decode_key(max_order_key));
    }
    /// Adds the learner's latest learning event time.
    pub fn activity(&mut self, learner: String, last_us: i64) {
        self.learners.entry(learner).or_default().last_activity_us = Some(last_us);
    }
    /// Adds the learner's latest figures: percent × 10 and whether completed.
    pub fn progress(&mut self, learner: String, pct_tenths: i32, completed: bool) {
        let l = self.learners.entry(learner).or_default();
        l.pct_tenths = Some(pct_tenths);
        l.completed = completed;
    }

    /// The funnel over learners currently enrolled or completed.
    pub fn funnel(&self) -> Funnel {
        let mut f = Funnel::default();
        for l in self.learners.values().filter(|l| l.enrolled_now() || l.completed) {
            let pct = l.pct_tenths.unwrap_or(0);
            f.enrolled += 1;
            f.started += u64::from(l.last_activity_us.is_some());
            f.reached_25 += u64::from(pct >= 250);
            f.reached_50 += u64::from(pct >= 500);
            f.reached_75 += u64::from(pct >= 750);
            f.completed += u64::from(l.completed);
        }
        f
    }

    /// Learners enrolled now and not completed whose last learning event (or, without one,
    /// their enrollment) is before the threshold; oldest first, then by learner id.
    pub fn at_risk(&self, p: &AtRiskParams) -> Vec<AtRiskLearner> {
        let threshold = micros(p.threshold());
        let mut out: Vec<(i64, &String, &CourseLearner)> = self
            .learners
            .iter()
            .filter(|(_, l)| l.enrolled_now() && !l.completed)
            .filter_map(|(id, l)| {
                let enrolled_at = l.enrollment.map(|(_, t)| t)?;
                let reference = l.last_activity_us.unwrap_or(enrolled_at);
                (reference < threshold).then_some((reference, id, l))
            })
            .collect();
        out.sort_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        out.truncate(p.limit as usize);
        out.into_iter()
            .map(|(_, id, l)| AtRiskLearner {
                learner_id: id.clone(),
                percent_complete: f64::from(l.pct_tenths.unwrap_or(0)) / 10.0,
                last_activity_at: l.last_activity_us.map(time_of),
            })
            .collect()
    }
}

/// The nearest-rank percentile of ascending `sorted` values: the smallest value such that at
/// least `p` percent of the values are less than or equal to it, i.e. the value at 1-based rank
/// `⌈p/100 × n⌉` (rank 1 at least). `None` for no values.
pub fn nearest_rank(sorted: &[f64], p: u32) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let n = sorted.len() as u64;
    let rank = (u64::from(p) * n).div_ceil(100).max(1);
    sorted.get(rank as usize - 1).copied()
}

/// Rounds to two decimals, the precision of the score statistics.
pub fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The histogram bucket (0–9) of a percentage: `⌊pct/10⌋`, with 100 % (and anything above) in
/// the last bucket and anything below 0 in the first.
pub fn score_bucket(pct: f64) -> usize {
    if pct.is_nan() || pct < 0.0 { 0 } else { ((pct / 10.0).floor() as usize).min(9) }
}

/// The score statistics from the number of distinct attempts and every learner's best
/// percentage (in any order).
pub fn scores(attempts: u64, mut best: Vec<f64>) -> Scores {
    best.sort_by(f64::total_cmp);
    let mut histogram: Vec<ScoreBucket> = (0..10).map(|i| ScoreBucket { from_pct: i * 10, to_pct: i * 10 + 10, count: 0 }).collect();
    for pct in &best {
        histogram[score_bucket(*pct)].count += 1;
    }
    let mean = (!best.is_empty()).then(|| round2(best.iter().sum::<f64>() / best.len() as f64));
    Scores {
        attempts,
        learners: best.len() as u64,
        mean_pct: mean,
        p50_pct: nearest_rank(&best, 50).map(round2),
        p90_pct: nearest_rank(&best, 90).map(round2),
        histogram,
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};

    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(nearest_rank(&v, 50), Some(5.0));
        assert_eq!(nearest_rank(&v, 90), Some(9.0));
        assert_eq!(nearest_rank(&v, 91), Some(10.0));
        assert_eq!(nearest_rank(&v, 0), Some(1.0));
        assert_eq!(nearest_rank(&[7.0], 90), Some(7.0));
        assert_eq!(nearest_rank(&[], 50), None);
        assert_eq!(nearest_rank(&[1.0, 2.0, 3.0], 50), Some(2.0));
    }

    #[test]
    fn histogram_edges() {
        assert_eq!(score_bucket(0.0), 0);
        assert_eq!(score_bucket(9.99), 0);
        assert_eq!(score_bucket(10.0), 1);
        assert_eq!(score_bucket(99.9), 9);
        assert_eq!(score_bucket(100.0), 9);
        let s = scores(5, vec![100.0, 0.0, 55.0]);
        assert_eq!(s.learners, 3);
        assert_eq!(s.attempts, 5);
        assert_eq!(s.histogram.len(), 10);
        assert_eq!(s.histogram.iter().map(|b| b.count).collect::<Vec<_>>(), [1, 0, 0, 0, 0, 1, 0, 0, 0, 1]);
        assert_eq!(s.mean_pct, Some(51.67));
        assert_eq!(s.p50_pct, Some(55.0));
        let empty = scores(0, vec![]);
        assert_eq!((empty.mean_pct, empty.p50_pct, empty.learners), (None, None, 0));
    }

    #[test]
    fn funnel_and_at_risk() {
        let t = |s: &str| micros(DateTime::parse_from_rfc3339(s).expect("time").with_timezone(&Utc));
        let mut c = CourseLearners::default();
        // a: enrolled, active long ago, 30 %.
        c.enrollment("a".into(), EnrollmentRow::order_key(t("2026-01-01T00:00:00Z"), false));
        c.activity("a".into(), t("2026-01-02T00:00:00Z"));
        c.progress("a".into(), 300, false);
        // b: enrolled long ago, no activity.
        c.enrollment("b".into(), EnrollmentRow::order_key(t("2026-01-01T00:00:00Z"), false));
        // c: dropped.
        c.enrollment("c".into(), EnrollmentRow::order_key(t("2026-01-03T00:00:00Z"), true));
        c.activity("c".into(), t("2026-01-02T00:00:00Z"));
        // d: dropped but completed: in the funnel, not at risk.
        c.enrollment("d".into(), EnrollmentRow::order_key(t("2026-01-03T00:00:00Z"), true));
        c.progress("d".into(), 1000, true);
        c.activity("d".into(), t("2026-01-02T00:00:00Z"));
        // f: enrolled, had completed under version 1; version 2 added a lesson: 75 %, not
        // completed now, so at risk and not counted as completed.
        c.enrollment("f".into(), EnrollmentRow::order_key(t("2026-01-01T00:00:00Z"), false));
        c.activity("f".into(), t("2026-01-05T00:00:00Z"));
        c.progress("f".into(), 1000, true);
        c.progress("f".into(), 750, false);
        // e: recent activity.
        c.enrollment("e".into(), EnrollmentRow::order_key(t("2026-01-01T00:00:00Z"), false));
        c.activity("e".into(), t("2026-01-20T00:00:00Z"));
        assert_eq!(c.funnel(), Funnel { enrolled: 5, started: 4, reached_25: 3, reached_50: 2, reached_75: 2, completed: 1 });
        let p = AtRiskParams {
            tenant: "t".into(),
            course_id: "c".into(),
            inactive_days: 7,
            as_of: DateTime::parse_from_rfc3339("2026-01-21T00:00:00Z").expect("time").with_timezone(&Utc),
            limit: 10,
        };
        let risk = c.at_risk(&p);
        assert_eq!(risk.iter().map(|r| r.learner_id.as_str()).collect::<Vec<_>>(), ["b", "a", "f"], "oldest first");
        assert_eq!(risk[0].last_activity_at, None);
        assert_eq!(risk[1].percent_complete, 30.0);
        assert_eq!(risk[2].percent_complete, 75.0);
        let p = AtRiskParams { limit: 1, ..p };
        assert_eq!(c.at_risk(&p).len(), 1);
    }
}
