//! One learner's way through one course, produced a chunk (an enrollment, a study session)
//! at a time so that the cohort can merge thousands of them in time order lazily.

use std::collections::VecDeque;

use chrono::{DateTime, Duration, Utc};
use lms_events::{
    AssessmentGraded, EnrollmentCreated, EnrollmentDropped, EnrollmentSource, Event, EventData, LessonRef, PaymentFailed, PaymentRefunded,
    PaymentSucceeded, SPEC_VERSION, VideoProgressed,
};
use rand::Rng;
use rand::rngs::StdRng;

use crate::catalog::{Course, Tenant};
use crate::rhythm::{event_id, exponential, millis, next_session, normal, secs, token, unit};

/// Why payments fail, as providers report it.
const FAILURE_REASONS: [&str; 4] = ["card_declined", "insufficient_funds", "expired_card", "authentication_required"];

/// Where the journey stands.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Phase {
    /// The enrollment (and its payment) is next, at `at`.
    Enroll,
    /// A study session at `at`, resuming `lesson` (and its video at `video_pos` seconds).
    Study { lesson: usize, video_pos: f64 },
    /// Nothing more happens.
    Done,
}

/// A learner's journey through one course.
#[derive(Debug)]
pub(crate) struct Journey {
    rng: StdRng,
    pub(crate) tenant: usize,
    pub(crate) course: usize,
    learner_id: String,
    /// When the next chunk happens.
    at: DateTime<Utc>,
    phase: Phase,
    /// The learner's typical quiz percentage.
    ability: f64,
    /// The probability of going on after each lesson.
    persistence: f64,
    /// The mean number of days between study sessions.
    gap_days: f64,
    /// The payment of the enrollment: id, amount, time.
    payment: Option<(String, i64, DateTime<Utc>)>,
    lessons_done: usize,
    /// Nothing after this time is produced.
    now: DateTime<Utc>,
    truncated: bool,
}

impl Journey {
    /// A learner who enrolls in a course at `at`.
    pub(crate) fn new(mut rng: StdRng, tenant: usize, course: usize, learner_id: String, at: DateTime<Utc>, now: DateTime<Utc>) -> Journey {
        let ability = normal(&mut rng, 72.0, 14.0).clamp(15.0, 99.0);
        // Most learners go on after a lesson; a minority give up quickly. The mix yields a
        // drop-off curve that is steep early and flattens out.
        let persistence = if unit(&mut rng) < 0.25 { 0.72 + 0.15 * unit(&mut rng) } else { 0.9 + 0.095 * unit(&mut rng).sqrt() };
        let gap_days = 0.6 + exponential(&mut rng, 2.2);
        Journey {
            rng,
            tenant,
            course,
            learner_id,
            at,
            phase: Phase::Enroll,
            ability,
            persistence,
            gap_days,
            payment: None,
            lessons_done: 0,
            now,
            truncated: false,
        }
    }

    /// Whether the journey has nothing more to produce.
    pub(crate) fn is_done(&self) -> bool {
        self.phase == Phase::Done
    }

    /// Appends the next chunk of events (in time order, all at or after the previous
    /// chunk's) to `out`; marks the journey done when it ends or reaches `now`.
    pub(crate) fn step(&mut self, tenants: &[Tenant], out: &mut VecDeque<Event>) {
        if self.at > self.now {
            self.phase = Phase::Done;
            return;
        }
        let tenant = &tenants[self.tenant];
        let course = &tenant.courses[self.course];
        match self.phase {
            Phase::Enroll => self.enroll(tenant, course, out),
            Phase::Study { lesson, video_pos } => self.study(tenant, course, lesson, video_pos, out),
            Phase::Done => {}
        }
        if self.truncated {
            self.phase = Phase::Done;
        }
    }

    fn emit(&mut self, tenant: &Tenant, time: DateTime<Utc>, source: &str, data: EventData, out: &mut VecDeque<Event>) {
        let time = millis(time);
        if self.truncated || time > self.now {
            self.truncated = true;
            return;
        }
        debug_assert!(out.back().is_none_or(|e| e.time <= time), "a journey's events are in time order");
        out.push_back(Event {
            specversion: SPEC_VERSION.to_owned(),
            id: event_id(&mut self.rng, time),
            source: source.to_owned(),
            time,
            subject: data.learner_id().map(str::to_owned),
            tenant: tenant.name.clone(),
            data,
        });
    }

    fn enroll(&mut self, tenant: &Tenant, course: &Course, out: &mut VecDeque<Event>) {
        let mut t = self.at;
        let source = if course.price_minor > 0 && unit(&mut self.rng) < 0.85 {
            EnrollmentSource::Purchase
        } else if unit(&mut self.rng) < 0.2 {
            EnrollmentSource::Admin
        } else {
            EnrollmentSource::SelfService
        };
        if source == EnrollmentSource::Purchase {
            t -= Duration::seconds(self.rng.random_range(60..600));
            if unit(&mut self.rng) < 0.09 {
                let failed = PaymentFailed {
                    payment_id: format!("pay_{}", token(&mut self.rng)),
                    learner_id: self.learner_id.clone(),
                    reason: FAILURE_REASONS[self.rng.random_range(0..FAILURE_REASONS.len())].to_owned(),
                };
                self.emit(tenant, t, "payments", EventData::PaymentFailed(failed), out);
                if unit(&mut self.rng) < 0.45 {
                    // Gave up after a failed payment: never enrolled.
                    self.phase = Phase::Done;
                    return;
                }
                t += Duration::seconds(self.rng.random_range(120..2400));
            }
            let payment_id = format!("pay_{}", token(&mut self.rng));
            let paid = PaymentSucceeded {
                payment_id: payment_id.clone(),
                learner_id: self.learner_id.clone(),
                course_id: Some(course.course_id.clone()),
                amount_minor: course.price_minor,
                currency: tenant.currency.clone(),
            };
            self.emit(tenant, t, "payments", EventData::PaymentSucceeded(paid), out);
            self.payment = Some((payment_id, course.price_minor, t));
            t += Duration::milliseconds(self.rng.random_range(800..4000));
        }
        let created = EnrollmentCreated { learner_id: self.learner_id.clone(), course_id: course.course_id.clone(), source };
        self.emit(tenant, t, "web-app", EventData::EnrollmentCreated(created), out);
        if unit(&mut self.rng) < 0.12 {
            // Enrolled and never started.
            self.quit(tenant, course, t, out);
            return;
        }
        self.at = next_session(&mut self.rng, t, 0.5);
        self.phase = Phase::Study { lesson: 0, video_pos: 0.0 };
    }

    /// One study session: a few lessons, each started, watched, completed, a quiz at the end
    /// of a module; the learner may stop for good after any lesson.
    fn study(&mut self, tenant: &Tenant, course: &Course, mut lesson: usize, mut video_pos: f64, out: &mut VecDeque<Event>) {
        let mut t = self.at;
        let app = if unit(&mut self.rng) < 0.3 { "mobile-app" } else { "web-app" };
        let planned = 1 + [0.5, 0.3, 0.15, 0.05].iter().take_while(|p| unit(&mut self.rng) >= **p).count().min(3);
        for _ in 0..planned {
            let count = course.lessons_at(t);
            if lesson >= count {
                self.completed(course, t, lesson);
                return;
            }
            let info = &course.lessons[lesson];
            let lesson_ref =
                LessonRef { learner_id: self.learner_id.clone(), course_id: course.course_id.clone(), lesson_id: info.lesson_id.clone() };
            if video_pos == 0.0 {
                self.emit(tenant, t, app, EventData::LessonStarted(lesson_ref.clone()), out);
                t += secs(f64::from(self.rng.random_range(3..25u32)));
            }
            if let Some(duration) = info.video_s {
                while video_pos < duration {
                    let mut watched = (normal(&mut self.rng, 60.0, 8.0).clamp(20.0, 120.0)).min(duration - video_pos);
                    let mut advance = watched;
                    if unit(&mut self.rng) < 0.04 {
                        // A seek forward: the position jumps, little is watched.
                        advance = (watched * 3.0).min(duration - video_pos);
                        watched = (watched * 0.2).round();
                    }
                    video_pos = ((video_pos + advance) * 10.0).round() / 10.0;
                    t += secs(watched.max(1.0));
                    let report = VideoProgressed {
                        learner_id: self.learner_id.clone(),
                        course_id: course.course_id.clone(),
                        lesson_id: info.lesson_id.clone(),
                        position_s: video_pos.min(duration),
                        duration_s: duration,
                        watched_s: (watched * 10.0).round() / 10.0,
                    };
                    self.emit(tenant, t, "video-player", EventData::VideoProgressed(report), out);
                    if video_pos < duration && unit(&mut self.rng) < (1.0 - self.persistence) * 0.25 {
                        // Interrupted mid-video: resume in a later session, or never.
                        if unit(&mut self.rng) < 0.3 {
                            self.quit(tenant, course, t, out);
                        } else {
                            self.at = next_session(&mut self.rng, t, self.gap_days);
                            self.phase = Phase::Study { lesson, video_pos };
                        }
                        return;
                    }
                }
                t += secs(f64::from(self.rng.random_range(5..90u32)));
            } else {
                t += secs(f64::from(self.rng.random_range(180..900u32)));
            }
            self.emit(tenant, t, app, EventData::LessonCompleted(lesson_ref), out);
            self.lessons_done += 1;
            if course.ends_module(lesson, count) {
                t = self.quiz(tenant, course, info.module, t, out);
            }
            lesson += 1;
            video_pos = 0.0;
            if lesson >= count {
                self.completed(course, t, lesson);
                return;
            }
            if unit(&mut self.rng) >= self.persistence {
                self.quit(tenant, course, t, out);
                return;
            }
            t += secs(f64::from(self.rng.random_range(30..300u32)));
        }
        self.at = next_session(&mut self.rng, t, self.gap_days);
        self.phase = Phase::Study { lesson, video_pos };
    }

    /// The quiz at the end of a module: graded attempts until a pass or the learner gives
    /// up (at most three). Returns the time after the last attempt.
    fn quiz(&mut self, tenant: &Tenant, course: &Course, module: usize, mut t: DateTime<Utc>, out: &mut VecDeque<Event>) -> DateTime<Utc> {
        let mut skill = self.ability;
        for attempt in 1..=3u32 {
            t += secs(f64::from(self.rng.random_range(120..900u32)));
            let pct = normal(&mut self.rng, skill, 12.0).clamp(0.0, 100.0);
            let score = (pct / 100.0 * course.max_score).round().clamp(0.0, course.max_score);
            let graded = AssessmentGraded {
                learner_id: self.learner_id.clone(),
                course_id: course.course_id.clone(),
                assessment_id: course.assessment_id(module),
                score,
                max_score: course.max_score,
                attempt,
            };
            self.emit(tenant, t, "web-app", EventData::AssessmentGraded(graded), out);
            if score / course.max_score >= 0.6 || unit(&mut self.rng) < 0.35 {
                break;
            }
            skill += 9.0;
            t += secs(f64::from(self.rng.random_range(300..3600u32)));
        }
        t
    }

    /// Every lesson of the current version is done. When a later version adds lessons, the
    /// learner may come back for them.
    fn completed(&mut self, course: &Course, t: DateTime<Utc>, lesson: usize) {
        let later = course.versions.iter().find(|v| v.published_at > t && v.lessons > lesson);
        match later {
            Some(v) if unit(&mut self.rng) < 0.6 => {
                self.at = next_session(&mut self.rng, v.published_at, self.gap_days);
                self.phase = Phase::Study { lesson, video_pos: 0.0 };
            }
            _ => self.phase = Phase::Done,
        }
    }

    /// The learner stops for good at `t`: some formally drop the course later, some of
    /// those who paid and did little ask for a refund first.
    fn quit(&mut self, tenant: &Tenant, course: &Course, t: DateTime<Utc>, out: &mut VecDeque<Event>) {
        self.phase = Phase::Done;
        if unit(&mut self.rng) >= 0.4 {
            return;
        }
        let dropped_at = t + secs(exponential(&mut self.rng, 6.0 * 86_400.0) + 3600.0);
        if let Some((payment_id, amount, paid_at)) = self.payment.clone()
            && self.lessons_done <= 3
            && dropped_at - paid_at < Duration::days(30)
            && unit(&mut self.rng) < 0.5
        {
            let refund = PaymentRefunded { payment_id, amount_minor: amount, currency: tenant.currency.clone() };
            self.emit(tenant, dropped_at - Duration::minutes(5), "payments", EventData::PaymentRefunded(refund), out);
        }
        let dropped = EnrollmentDropped { learner_id: self.learner_id.clone(), course_id: course.course_id.clone() };
        self.emit(tenant, dropped_at, "web-app", EventData::EnrollmentDropped(dropped), out);
    }
}
