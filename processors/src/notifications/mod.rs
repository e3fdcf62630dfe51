//! Notifications: enrollment, payment and derived events in; one decided notification per
//! source event and learner (or per milestone) out, with its delivery intents, in the
//! transaction that advances the offsets; a [`dispatcher`] performs the deliveries.
//!
//! Per batch, under exclusive locks on its learners (one learner's events come from three
//! topics whose partitions may belong to different members):
//! 1. Candidates: `enrollment.created`, `payment.*` (a refund's learner is the payment's,
//!    kept in `notification_payments`), `course.completed`, `achievement.unlocked`, and the
//!    25/50/75 % milestones a `progress.updated` reaches (each once per learner and course:
//!    its source key is the milestone, not the event; milestones below the highest one an
//!    event reaches, and all of them once the course is completed, are stored as
//!    superseded and not delivered).
//! 2. Dedupe: a candidate whose `(tenant, learner, source key)` is stored is dropped, so
//!    redelivery and replay notify nobody twice. It is the notifications' INSERT … ON
//!    CONFLICT DO NOTHING RETURNING (see [`apply`]), not a lookup first; the keys are kept
//!    `retention_days` ([`NotifyConfig::retention_days`]), milestones for ever.
//! 3. Render the title and body ([`templates`]) in the learner's locale. A template error
//!    fails the batch permanently; the runner isolates the event and dead-letters it with
//!    the reason.
//! 4. Decide ([`preferences`]): payments are transactional (never muted, never digested,
//!    never throttled). Otherwise a muted category is stored as muted; a learner with a
//!    digest preference gets the item in the hourly or daily digest; else at most
//!    `throttle_per_window` per learner, category and window are delivered and the rest go
//!    into that window's digest.
//! 5. Write: notifications, delivery intents (one per available channel, due at once or at
//!    the end of the learner's quiet hours), throttle counters, and digest timers (durable
//!    rows the dispatcher closes when due) — then the offsets commit with them.
//!
//! Each batch is a fixed number of statements whatever its size (up to 2000 rows each):
//! locks, preferences, counters, notifications, digests, deliveries, counters again.
//! [`metrics`] counts decisions and planned deliveries once the batch is committed.
//!
//! Times of decisions (quiet hours, windows) are the processing time of the [`Clock`].
//!
//! [`Notifications`] is a `Stage` run by `Stateful` like every store-backed processor: a
//! template error rejects its one event (`StageError::Reject`, which the runner isolates and
//! dead-letters with the reason), store errors keep their transient/permanent split, and the
//! counting of decisions and the dispatcher's wake-up happen in `after_commit`.

pub mod config;
#[cfg(feature = "delivery")]
mod decide;
#[cfg(feature = "delivery")]
pub mod dispatcher;
pub mod inbox;
pub mod metrics;
pub mod preferences;
pub mod state;
#[cfg(feature = "delivery")]
pub mod templates;

pub use self::config::{Clock, NotifyConfig};
#[cfg(feature = "delivery")]
pub use self::decide::{Notifications, NotifyError, Settings, notification_id, prepare, processor};

/// The `source` of the events the notifications processor emits.
pub const SOURCE: &str = "lms-notifications";

/// The template kinds.
pub const KINDS: &[&str] = &[
    "enrollment_created",
    "payment_succeeded",
    "payment_refunded",
    "payment_failed",
    "course_completed",
    "achievement_unlocked",
    "progress_milestone",
    "digest",
];

/// Progress milestones, in percent.
pub const MILESTONES: [u32; 3] = [25, 50, 75];

/// The category of payments: transactional.
pub const TRANSACTIONAL: &str = "payment";
