//! What the in-app inbox (`GET /v1/learners/{id}/notifications`) must list once every
//! notification is decided and delivered, for learners with the default preferences (in-app
//! on, no quiet hours, no digest) and a throttle no learner reaches.
//!
//! One notification per source event and learner, whose id the processor derives from its
//! source key ([`notification_id`]):
//! - `enrollment.created`, `payment.succeeded`, `payment.failed`, and `payment.refunded`
//!   (the learner of the refunded payment): keyed by the event id;
//! - `course.completed` and `achievement.unlocked`: keyed by the derived event's id, which
//!   the progress and achievements processors derive from what they are about;
//! - progress milestones (25/50/75 %): keyed by course and milestone. Which of the reached
//!   milestones are listed depends on how the records fell into batches (a milestone an
//!   update jumps past, or reaches while completing the course, is superseded, not listed),
//!   so the oracle fixes only what every batching gives: no milestone above the highest
//!   percentage reached, and, for a course not completed, the highest one reached. The
//!   latter holds while the percentage only grows; where a course version that arrived
//!   late lowered it ([`progress::Oracle::lowered`]), which milestones were decided before
//!   depends on the batching too, and only the upper bound is checked.
//! - `course.completed` once per learner-course that was complete at the end of some phase
//!   ([`progress::Oracle::completed_once`]), even if a later version took it back.

use std::collections::{BTreeMap, HashMap};

use lms_events::{Event, EventData};
use processors::derived_id;
use processors::notifications::{MILESTONES, notification_id};

use super::progress::{self, LearnerKey};

/// The milestones of one learner-course.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Milestones {
    /// Notification id → milestone, for every milestone the final percentage reaches.
    pub reached: BTreeMap<String, u32>,
    /// The notification id that must be listed (the highest milestone of a course not
    /// completed).
    pub required: Option<String>,
}

/// One learner's inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    /// Notification id → category, for the notifications every run lists.
    pub exact: BTreeMap<String, &'static str>,
    /// Course id → its milestones.
    pub milestones: BTreeMap<String, Milestones>,
}

impl Expected {
    /// The entries the inbox must list: the exact ones and the required milestones.
    pub fn required(&self) -> usize {
        self.exact.len() + self.milestones.values().filter(|m| m.required.is_some()).count()
    }
}

/// Learner → expected inbox.
pub struct Oracle {
    /// Every learner with at least one notification.
    pub inboxes: BTreeMap<LearnerKey, Expected>,
}

impl Oracle {
    /// The inboxes that `events` (the events sent, duplicates included) and their derived
    /// events (from `progress`, the progress oracle of the same events) give.
    pub fn new(events: &[Event], progress: &progress::Oracle) -> Oracle {
        let mut inboxes: BTreeMap<LearnerKey, Expected> = BTreeMap::new();
        fn exact(inboxes: &mut BTreeMap<LearnerKey, Expected>, tenant: &str, learner: &str, source_key: &str, category: &'static str) {
            let id = notification_id(tenant, learner, source_key);
            inboxes.entry((tenant.to_owned(), learner.to_owned())).or_default().exact.insert(id, category);
        }
        let payers: HashMap<(&str, &str), &str> = events
            .iter()
            .filter_map(|e| match &e.data {
                EventData::PaymentSucceeded(d) => Some(((e.tenant.as_str(), d.payment_id.as_str()), d.learner_id.as_str())),
                _ => None,
            })
            .collect();
        for e in events {
            match &e.data {
                EventData::EnrollmentCreated(d) => exact(&mut inboxes, &e.tenant, &d.learner_id, &e.id, "enrollment"),
                EventData::PaymentSucceeded(d) => exact(&mut inboxes, &e.tenant, &d.learner_id, &e.id, "payment"),
                EventData::PaymentFailed(d) => exact(&mut inboxes, &e.tenant, &d.learner_id, &e.id, "payment"),
                EventData::PaymentRefunded(d) => {
                    if let Some(learner) = payers.get(&(e.tenant.as_str(), d.payment_id.as_str())) {
                        exact(&mut inboxes, &e.tenant, learner, &e.id, "payment");
                    }
                }
                _ => {}
            }
        }
        for ((tenant, learner), unlocked) in &progress.achievements {
            for (achievement, course, _) in unlocked {
                let source = derived_id("achievement.unlocked", &[tenant, learner, achievement, course]);
                exact(&mut inboxes, tenant, learner, &source, "achievement");
            }
        }
        for (tenant, learner, course) in progress.completed_once.keys() {
            let source = derived_id("course.completed", &[tenant, learner, course]);
            exact(&mut inboxes, tenant, learner, &source, "completion");
        }
        for ((tenant, learner), courses) in &progress.progress {
            for (course, p) in courses {
                let key = (tenant.clone(), learner.clone(), course.clone());
                let furthest = progress.furthest.get(&key).copied().unwrap_or(p.percent_complete).max(p.percent_complete);
                let reached: BTreeMap<u32, String> = MILESTONES
                    .iter()
                    .filter(|m| furthest >= f64::from(**m))
                    .map(|m| (*m, notification_id(tenant, learner, &format!("milestone:{course}:{m}"))))
                    .collect();
                if reached.is_empty() {
                    continue;
                }
                let settled = p.completed_at.is_none() && !progress.completed_once.contains_key(&key) && !progress.lowered.contains(&key);
                let required = if settled { reached.values().next_back().cloned() } else { None };
                let milestones = Milestones { reached: reached.into_iter().map(|(m, id)| (id, m)).collect(), required };
                inboxes.entry((tenant.clone(), learner.clone())).or_default().milestones.insert(course.clone(), milestones);
            }
        }
        Oracle { inboxes }
    }
}
