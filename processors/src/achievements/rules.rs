//! Achievement rules, read from YAML (`config/achievements.yaml` ships the defaults), and
//! their evaluation over a learner's facts.
//!
//! Evaluation is a pure function of the facts, which are order-insensitive (earliest time
//! per fact), so the unlock time of an achievement does not depend on arrival order, and
//! a rule added later unlocks for past activity when the group is replayed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use chrono::{DateTime, Duration, NaiveDate, TimeZone as _, Utc};
use serde::{Deserialize, Serialize};

/// The rules file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rules {
    /// Every achievement.
    pub achievements: Vec<Achievement>,
}

/// One achievement. (Unknown keys are refused by [`Rule`]: serde cannot deny them on a
/// struct with a flattened field.)
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Achievement {
    /// Stable id (`achievement_id` in the API and events).
    pub id: String,
    /// Title shown to learners.
    pub title: String,
    /// What it stands for, in the learner's words (the Open Badges credential's achievement
    /// description; the title when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How it is earned (the credential's criteria narrative; said from the rule when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub criteria: Option<String>,
    /// When it unlocks.
    #[serde(flatten)]
    pub rule: Rule,
}

/// When an achievement unlocks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "rule", rename_all = "snake_case", deny_unknown_fields)]
pub enum Rule {
    /// The first lesson completed, in any course (once per learner).
    FirstLessonCompleted,
    /// A course completed (once per learner and course).
    CourseCompleted,
    /// `count` distinct courses completed (once per learner).
    CoursesCompleted {
        /// How many.
        count: u32,
    },
    /// Learning events on `days` consecutive days, days cut in the learner's time zone
    /// when known, else UTC (once per learner).
    LearningStreak {
        /// How many days.
        days: u32,
    },
    /// An assessment graded with the full score (once per learner and course).
    PerfectAssessment,
    /// A course completed at most `days` days after the first enrolment in it (once per
    /// learner and course).
    CompletedWithinDaysOfEnrollment {
        /// Days.
        days: u32,
    },
}

impl Achievement {
    /// How it is earned, in words: `criteria` or what the rule says.
    pub fn criteria_narrative(&self) -> String {
        if let Some(c) = &self.criteria {
            return c.clone();
        }
        match &self.rule {
            Rule::FirstLessonCompleted => "Complete a first lesson in any course.".to_owned(),
            Rule::CourseCompleted => "Complete every lesson of a course.".to_owned(),
            Rule::CoursesCompleted { count } => format!("Complete {count} different courses."),
            Rule::LearningStreak { days } => format!("Learn on {days} consecutive days."),
            Rule::PerfectAssessment => "Get the full score in an assessment.".to_owned(),
            Rule::CompletedWithinDaysOfEnrollment { days } => format!("Complete a course within {days} days of enrolling in it."),
        }
    }
}

impl Rule {
    /// True when the achievement is per course.
    pub fn per_course(&self) -> bool {
        matches!(self, Rule::CourseCompleted | Rule::PerfectAssessment | Rule::CompletedWithinDaysOfEnrollment { .. })
    }
}

/// The rules shipped with the repository.
pub const DEFAULT_RULES: &str = include_str!("../../../config/achievements.yaml");

/// Errors reading rules.
#[derive(Debug, thiserror::Error)]
pub enum RulesError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// Path.
        path: String,
        /// Cause.
        source: std::io::Error,
    },
    /// The YAML is invalid.
    #[error("invalid achievement rules: {0}")]
    Yaml(#[from] serde_yaml::Error),
    /// Two achievements share an id, or a rule is meaningless.
    #[error("invalid achievement rules: {0}")]
    Invalid(String),
}

impl Rules {
    /// Parses and checks rules.
    pub fn parse(yaml: &str) -> Result<Rules, RulesError> {
        let rules: Rules = serde_yaml::from_str(yaml)?;
        let mut ids = BTreeSet::new();
        for a in &rules.achievements {
            if !ids.insert(a.id.as_str()) {
                return Err(RulesError::Invalid(format!("achievement id {:?} appears twice", a.id)));
            }
            if a.id.is_empty() || a.id.len() > 128 {
                return Err(RulesError::Invalid(format!("achievement id {:?} must have 1 to 128 characters", a.id)));
            }
            match a.rule {
                Rule::CoursesCompleted { count: 0 } | Rule::LearningStreak { days: 0 } => {
                    return Err(RulesError::Invalid(format!("{}: count and days must be at least 1", a.id)));
                }
                _ => {}
            }
        }
        Ok(rules)
    }

    /// Reads rules from a file, or the shipped defaults without one.
    pub fn load(path: Option<&Path>) -> Result<Rules, RulesError> {
        match path {
            None => Rules::parse(DEFAULT_RULES),
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| RulesError::Io { path: p.display().to_string(), source })?;
                Rules::parse(&text)
            }
        }
    }
}

/// What is known of one learner, for evaluation.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LearnerFacts {
    /// Earliest lesson completion per course.
    pub lesson_completed: BTreeMap<String, DateTime<Utc>>,
    /// Completion time per course.
    pub course_completed: BTreeMap<String, DateTime<Utc>>,
    /// Every enrolment per course.
    pub enrolled: BTreeMap<String, BTreeSet<DateTime<Utc>>>,
    /// Earliest perfect assessment per course.
    pub perfect_score: BTreeMap<String, DateTime<Utc>>,
    /// Earliest learning event per 15-minute UTC slot.
    pub activity: BTreeMap<i64, DateTime<Utc>>,
    /// IANA time zone of the learner, if known and valid.
    pub timezone: Option<chrono_tz::Tz>,
}

/// An unlocked achievement: (achievement id, course id or "", unlock time).
pub type Unlock = (String, String, DateTime<Utc>);

/// Every achievement `facts` unlock, with its time.
pub fn evaluate(rules: &Rules, facts: &LearnerFacts) -> Vec<Unlock> {
    let mut out = Vec::new();
    for a in &rules.achievements {
        let id = || a.id.clone();
        match &a.rule {
            Rule::FirstLessonCompleted => {
                if let Some(t) = facts.lesson_completed.values().min() {
                    out.push((id(), String::new(), *t));
                }
            }
            Rule::CourseCompleted => {
                out.extend(facts.course_completed.iter().map(|(c, t)| (id(), c.clone(), *t)));
            }
            Rule::CoursesCompleted { count } => {
                let mut times: Vec<_> = facts.course_completed.values().copied().collect();
                times.sort_unstable();
                if let Some(t) = times.get(*count as usize - 1) {
                    out.push((id(), String::new(), *t));
                }
            }
            Rule::LearningStreak { days } => {
                if let Some(t) = streak(facts, *days) {
                    out.push((id(), String::new(), t));
                }
            }
            Rule::PerfectAssessment => {
                out.extend(facts.perfect_score.iter().map(|(c, t)| (id(), c.clone(), *t)));
            }
            Rule::CompletedWithinDaysOfEnrollment { days } => {
                // The last enrolment at or before the completion counts: some enrolment
                // within `days` before it is a condition that more enrolments, in any order,
                // can only make true, so the unlock is the one time order gives.
                for (course, done) in &facts.course_completed {
                    let last = facts.enrolled.get(course).and_then(|e| e.range(..=*done).next_back());
                    if last.is_some_and(|enrolled| *done - *enrolled <= Duration::days(i64::from(*days))) {
                        out.push((id(), course.clone(), *done));
                    }
                }
            }
        }
    }
    out
}

/// The first moment `days` consecutive local days with learning activity are reached:
/// the earliest activity on the last day of the first such run.
fn streak(facts: &LearnerFacts, days: u32) -> Option<DateTime<Utc>> {
    let mut by_day: BTreeMap<NaiveDate, DateTime<Utc>> = BTreeMap::new();
    for t in facts.activity.values() {
        let day = match facts.timezone {
            Some(tz) => tz.from_utc_datetime(&t.naive_utc()).date_naive(),
            None => t.date_naive(),
        };
        let first = by_day.entry(day).or_insert(*t);
        *first = (*first).min(*t);
    }
    let mut run = 0u32;
    let mut previous: Option<NaiveDate> = None;
    for (day, first) in by_day {
        run = if previous.and_then(|p| p.succ_opt()) == Some(day) { run + 1 } else { 1 };
        if run >= days {
            return Some(first);
        }
        previous = Some(day);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_shipped_rules_parse_and_bad_ones_are_explained() {
        let rules = Rules::parse(DEFAULT_RULES).unwrap();
        assert!(rules.achievements.len() >= 6);
        let err = Rules::parse("achievements:\n- {id: a, title: A, rule: learning_streak, days: 0}\n").unwrap_err();
        assert!(err.to_string().contains("at least 1"), "{err}");
        let err = Rules::parse("achievements:\n- {id: a, title: A, rule: nope}\n").unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }

    #[test]
    fn streaks_use_the_learner_time_zone() {
        let rules = Rules::parse("achievements:\n- {id: s2, title: S, rule: learning_streak, days: 2}\n").unwrap();
        let mut facts = LearnerFacts::default();
        // 23:30 UTC and 00:30 UTC the next day: two UTC days, one day in Los Angeles.
        for at in ["2026-03-01T23:30:00Z", "2026-03-02T00:30:00Z"] {
            facts.activity.insert(t(at).timestamp_micros() / 900_000_000, t(at));
        }
        assert_eq!(evaluate(&rules, &facts), vec![("s2".into(), String::new(), t("2026-03-02T00:30:00Z"))]);
        facts.timezone = Some(chrono_tz::America::Los_Angeles);
        assert_eq!(evaluate(&rules, &facts), vec![]);
    }

    #[test]
    fn counts_and_windows() {
        let rules = Rules::parse(
            "achievements:\n- {id: two, title: T, rule: courses_completed, count: 2}\n- {id: fast, title: F, rule: completed_within_days_of_enrollment, days: 7}\n",
        )
        .unwrap();
        let mut facts = LearnerFacts::default();
        facts.course_completed.insert("b".into(), t("2026-01-20T00:00:00Z"));
        facts.course_completed.insert("a".into(), t("2026-01-10T00:00:00Z"));
        facts.enrolled.insert("a".into(), [t("2026-01-05T00:00:00Z")].into());
        facts.enrolled.insert("b".into(), [t("2026-01-01T00:00:00Z")].into());
        let got = evaluate(&rules, &facts);
        assert_eq!(
            got,
            vec![("two".into(), String::new(), t("2026-01-20T00:00:00Z")), ("fast".into(), "a".into(), t("2026-01-10T00:00:00Z")),]
        );
        // An enrolment after the completion does not count; a re-enrolment before it does.
        facts.enrolled.get_mut("b").unwrap().insert(t("2026-01-21T00:00:00Z"));
        assert!(!evaluate(&rules, &facts).iter().any(|(id, c, _)| id == "fast" && c == "b"));
        facts.enrolled.get_mut("b").unwrap().insert(t("2026-01-15T00:00:00Z"));
        assert!(evaluate(&rules, &facts).contains(&("fast".into(), "b".into(), t("2026-01-20T00:00:00Z"))));
    }
}
