//! The invariants every consumer relies on beyond what decoding checks: the ones a record
//! written straight to a topic (not through the API's schema validation) may break. The
//! processors and the analytics sink dead-letter a record that fails them.

use crate::{Event, EventData};

/// Ids of 1 to 128 characters, finite non-negative amounts, a positive `max_score`, course
/// versions from 1; `Err` says which field is wrong.
pub fn check(event: &Event) -> Result<(), String> {
    let id = |what: &str, v: &str| {
        if v.is_empty() || v.chars().count() > 128 { Err(format!("{what} must have 1 to 128 characters")) } else { Ok(()) }
    };
    let finite = |what: &str, v: f64| if v.is_finite() && v >= 0.0 { Ok(()) } else { Err(format!("{what} must be a finite number >= 0")) };
    id("tenant", &event.tenant)?;
    if let Some(l) = event.learner_id() {
        id("learner_id", l)?;
    }
    if let Some(c) = event.course_id() {
        id("course_id", c)?;
    }
    match &event.data {
        EventData::LessonStarted(d) | EventData::LessonCompleted(d) => id("lesson_id", &d.lesson_id),
        EventData::VideoProgressed(d) => {
            id("lesson_id", &d.lesson_id)?;
            finite("watched_s", d.watched_s)
        }
        EventData::AssessmentGraded(d) => {
            id("assessment_id", &d.assessment_id)?;
            finite("score", d.score)?;
            if d.max_score > 0.0 && d.max_score.is_finite() { Ok(()) } else { Err("max_score must be > 0".to_owned()) }
        }
        EventData::CoursePublished(d) => {
            if d.version == 0 {
                return Err("version must be >= 1".to_owned());
            }
            d.modules.iter().flat_map(|m| &m.lessons).try_for_each(|l| id("lesson_id", l))
        }
        _ => Ok(()),
    }
}
