//! The stream processors. Each is a module implementing [`lms_bus::Processor`]; the
//! [`REGISTRY`] is the one list of them (an unknown name fails with the known ones).
//!
//! Architecture invariant: processors do not depend on each other; they share only the
//! event contract (lms-events), the bus (lms-bus) and the stores (sinks).

pub mod achievements;
pub mod catalog;
pub mod cost;
pub mod erasure;
pub mod noop;
pub mod notifications;
pub mod progress;
pub mod runtime;
pub mod stateful;

use std::sync::Arc;

use lms_bus::Processor;
use lms_events::{Domain, Event};
use lms_state::Store;
use tokio::sync::Notify;

pub use stateful::{Stage, Stateful};

/// What processors are built from.
pub struct Context {
    /// The state store (PostgreSQL or SQLite); stateless processors ignore it.
    pub store: Store,
    /// Woken after commits that put events in the outbox (the relay's waker).
    pub relay: Arc<Notify>,
    /// Achievement rules.
    pub rules: Arc<achievements::rules::Rules>,
    /// Configuration, templates and clock of the notifications processor and its dispatcher.
    pub notifications: Arc<notifications::Settings>,
    /// The analytics store (ClickHouse or the Parquet twin); only the `analytics` processor
    /// needs it, so the binary opens it only then. `None` by [`runtime::context`].
    pub analytics: Option<Arc<dyn lms_analytics::AnalyticsStore>>,
}

/// A processor the binary can run by name.
pub struct Registered {
    /// Name used on the command line and in the consumer group id (`lms-<name>`).
    pub name: &'static str,
    /// What it does, for `--help` and listings.
    pub about: &'static str,
    /// The domains (topics) it consumes.
    pub domains: &'static [Domain],
    /// Builds an instance; fails when the context lacks what it needs.
    pub build: fn(&Context) -> Result<Arc<dyn Processor>, String>,
    /// A background service the processor needs beside its members, started once per
    /// process that runs the processor and stopped after its members (the notification
    /// dispatcher); `None` for most.
    pub service: Option<StartService>,
}

/// Starts a processor's background service; it runs until the token is cancelled.
pub type StartService = fn(&Context, &runtime::Plumbing, tokio_util::sync::CancellationToken) -> tokio::task::JoinHandle<()>;

/// Every processor, by name.
pub const REGISTRY: &[Registered] = &[
    Registered {
        name: "catalog",
        about: "Keeps the course catalog (highest version wins) and recomputes the progress of a course's learners when it changes.",
        domains: &[Domain::Catalog],
        build: |c| Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), catalog::Catalog))),
        service: None,
    },
    Registered {
        name: "progress",
        about: "Learner progress per course from learning and enrollment events; emits progress.updated and course.completed.",
        domains: &[Domain::Learning, Domain::Enrollment],
        build: |c| Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), progress::Progress))),
        service: None,
    },
    Registered {
        name: "achievements",
        about: "Unlocks the achievements of the rules file; emits achievement.unlocked.",
        domains: &[Domain::Learning, Domain::Enrollment, Domain::Derived],
        build: |c| {
            Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), achievements::Achievements::new(Arc::clone(&c.rules)))))
        },
        service: None,
    },
    Registered {
        name: "notifications",
        about: "Decides notifications (templates, preferences, throttle, digests) and delivers them in-app, by e-mail and webhook; emits notification.sent/failed.",
        domains: &[Domain::Enrollment, Domain::Payment, Domain::Derived],
        build: |c| Ok(Arc::new(notifications::processor(c.store.clone(), Arc::clone(&c.notifications)))),
        service: Some(|c, plumbing, stop| {
            let dispatcher = notifications::dispatcher::Dispatcher::new(
                c.store.clone(),
                Arc::clone(&c.notifications),
                Arc::clone(&plumbing.producer),
                Arc::clone(&c.relay),
                plumbing.kafka.group_id("notifications"),
            );
            tokio::spawn(dispatcher.run(stop))
        }),
    },
    Registered {
        name: "erasure",
        about: "Applies learner erasures (the erasure topic) to the state store, so a store rebuilt by replay forgets them again.",
        domains: &[Domain::Erasure],
        build: |c| Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), erasure::Erasure))),
        service: None,
    },
    Registered {
        name: "noop",
        about: "Consumes every client event and only counts it: the baseline rate for benchmarks.",
        domains: &[Domain::Learning, Domain::Enrollment, Domain::Payment, Domain::Catalog],
        build: |_| Ok(Arc::new(noop::Noop::default())),
        service: None,
    },
    Registered {
        name: "analytics",
        about: "Writes every event to the analytics store (ClickHouse, or the Parquet twin) behind /v1/analytics.",
        domains: &lms_analytics::SINK_DOMAINS,
        build: |c| match &c.analytics {
            Some(store) => Ok(Arc::new(lms_analytics::AnalyticsSink::new(Arc::clone(store)))),
            None => Err("the analytics processor needs the analytics store (the `analytics` configuration section)".to_owned()),
        },
        service: None,
    },
];

/// The id of a derived event that must exist once per subject (a completion, an unlock):
/// a UUIDv5 of its kind and parts, so a re-emission (relay retry, replay) has the same id
/// and consumers dedupe it.
pub fn derived_id(kind: &str, parts: &[&str]) -> String {
    const NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x6c6d_7370_6970_656c_696e_6500_0000_0001);
    let name = std::iter::once(kind).chain(parts.iter().copied()).collect::<Vec<_>>().join("\u{0}");
    uuid::Uuid::new_v5(&NAMESPACE, name.as_bytes()).to_string()
}

/// The invariants processors rely on that a record written straight to a topic (not
/// through the API's validation) may break; a failure dead-letters the record. See
/// [`lms_events::invariants::check`].
pub fn check_ids(event: &Event) -> Result<(), String> {
    lms_events::invariants::check(event)
}

/// Looks a processor up by name; the error lists the known names.
pub fn lookup(name: &str) -> Result<&'static Registered, String> {
    REGISTRY
        .iter()
        .find(|r| r.name == name)
        .ok_or_else(|| format!("unknown processor {name:?}; known: {}", REGISTRY.iter().map(|r| r.name).collect::<Vec<_>>().join(", ")))
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = super::lookup("nope").err().unwrap_or_default();
        assert!(err.contains("noop") && err.contains("progress"), "{err}");
        assert!(super::lookup("noop").is_ok());
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        use super::derived_id;
        assert_eq!(derived_id("k", &["a", "b"]), derived_id("k", &["a", "b"]));
        assert_ne!(derived_id("k", &["ab", ""]), derived_id("k", &["a", "b"]));
    }
}
