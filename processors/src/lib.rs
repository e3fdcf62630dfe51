//! The stream processors. Each is a module implementing [`lms_bus::Processor`]; the
//! [`REGISTRY`] is the one list of them (an unknown name fails with the known ones).
//!
//! Architecture invariant: a component (one module the registry builds: `progress` with its
//! catalog, `achievements`, `notifications`, `erasure`, `analytics`, `noop`) imports no other component;
//! components share only the framework of this crate (`stateful`, `runtime`, `state`, `cost`), the
//! event contract (lms-events), the bus (lms-bus) and the state store (lms-state). A test
//! below checks it.

pub mod achievements;
pub mod analytics;
pub mod cost;
pub mod erasure;
pub mod noop;
pub mod notifications;
pub mod progress;
pub mod runtime;
pub mod state;
pub mod stateful;
#[cfg(test)]
mod testkit;

use std::sync::Arc;

use futures::future::BoxFuture;
use lms_bus::Processor;
use lms_events::{Domain, Event};
use lms_state::Store;
use tokio::sync::Notify;

pub use state::open_store;
pub use stateful::{Stage, Stateful};

/// What components are built from: what every one may use (the state store, the relay's
/// waker) and [`Context::extensions`], one value per type, which the framework never looks
/// into.
pub struct Context {
    /// The state store (PostgreSQL or SQLite); stateless processors ignore it.
    pub store: Store,
    /// Woken after commits that put events in the outbox (the relay's waker).
    pub relay: Arc<Notify>,
    /// The configuration sections the process loaded, typed by their components
    /// (`notifications::NotifyConfig`, `achievements::AchievementsConfig`,
    /// `Option<lms_analytics::AnalyticsConfig>`), and what a component's [`Registered::prepare`]
    /// made of them (`Arc<achievements::rules::Rules>`, `Arc<notifications::Settings>`,
    /// `Arc<dyn lms_analytics::AnalyticsStore>`). A value already there is used as is: tests
    /// and `lms demo` put in what they share.
    pub extensions: http::Extensions,
}

impl Context {
    /// The value of type `T` a component needs, or why it is missing.
    pub fn require<T: Clone + Send + Sync + 'static>(&self, component: &str) -> Result<T, String> {
        self.extensions
            .get::<T>()
            .cloned()
            .ok_or_else(|| format!("the {component} processor is missing its {} (its `prepare` was not run)", std::any::type_name::<T>()))
    }
}

/// A dependency `/readyz` checks besides the broker and the state store (the analytics
/// store, the SMTP server): a name for the report and a probe that answers `Err(reason)`
/// when it is down.
pub struct Check {
    /// Shown in the readiness report.
    pub name: &'static str,
    /// Asked on every readiness request.
    pub probe: Box<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>,
}

/// Prepares, once per process, what a component's instances share, from its configuration
/// section in [`Context::extensions`]; answers the readiness checks of what it depends on.
pub type Prepare = for<'a> fn(&'a mut Context) -> BoxFuture<'a, Result<Vec<Check>, String>>;

/// A processor the binary can run by name.
pub struct Registered {
    /// Name used on the command line and in the consumer group id (`lms-<name>`).
    pub name: &'static str,
    /// What it does, for `--help` and listings.
    pub about: &'static str,
    /// The domains (topics) it consumes.
    pub domains: &'static [Domain],
    /// Whether `all` (`lms processor run all`, `lms demo`) runs it: every processor of the
    /// pipeline, not the benchmark baseline.
    pub in_all: bool,
    /// Whether its instances keep their offsets in the state store (exactly-once
    /// processors) rather than in Kafka; `lms groups` and `lms replay` reset them there. A test
    /// checks it against the built processor.
    pub offsets_in_store: bool,
    /// Configuration sections it cannot run without (`analytics`: the analytics store), so
    /// the binary refuses to start before it opens anything when one is missing.
    pub requires: &'static [&'static str],
    /// Makes what its instances share from its configuration section (`None`: nothing).
    pub prepare: Option<Prepare>,
    /// Builds an instance; fails when the context lacks what it needs.
    pub build: fn(&Context) -> Result<Arc<dyn Processor>, String>,
    /// A background service the processor needs beside its members, started once per
    /// process that runs the processor and stopped after its members (the notification
    /// dispatcher); `None` for most.
    pub service: Option<StartService>,
}

/// Starts a processor's background service; it runs until the token is cancelled.
/// Fails, before anything started, when the context lacks what the service needs.
pub type StartService =
    fn(&Context, &runtime::Plumbing, tokio_util::sync::CancellationToken) -> Result<tokio::task::JoinHandle<()>, String>;

/// Every processor, by name.
pub const REGISTRY: &[Registered] = &[
    Registered {
        name: "catalog",
        about: "Keeps the course catalog (highest version wins) and recomputes the progress of a course's learners when it changes.",
        domains: &[Domain::Catalog],
        in_all: true,
        offsets_in_store: true,
        requires: &[],
        prepare: None,
        build: |c| Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), progress::catalog::Catalog))),
        service: None,
    },
    Registered {
        name: "progress",
        about: "Learner progress per course from learning and enrollment events; emits progress.updated and course.completed.",
        domains: &[Domain::Learning, Domain::Enrollment],
        in_all: true,
        offsets_in_store: true,
        requires: &[],
        prepare: None,
        build: |c| Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), progress::Progress))),
        service: None,
    },
    Registered {
        name: "achievements",
        about: "Unlocks the achievements of the rules file; emits achievement.unlocked.",
        domains: &[Domain::Learning, Domain::Enrollment, Domain::Derived],
        in_all: true,
        offsets_in_store: true,
        requires: &[],
        prepare: Some(|c| Box::pin(achievements::prepare(c))),
        build: |c| {
            let rules = c.require("achievements")?;
            Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), achievements::Achievements::new(rules))))
        },
        service: None,
    },
    #[cfg(feature = "delivery")]
    Registered {
        name: "notifications",
        about: "Decides notifications (templates, preferences, throttle, digests) and delivers them in-app, by e-mail and webhook; emits notification.sent/failed.",
        domains: &[Domain::Enrollment, Domain::Payment, Domain::Derived],
        in_all: true,
        offsets_in_store: true,
        requires: &[],
        prepare: Some(|c| Box::pin(notifications::prepare(c))),
        build: |c| Ok(Arc::new(notifications::processor(c.store.clone(), c.require("notifications")?))),
        service: Some(notifications::dispatcher::start),
    },
    Registered {
        name: "erasure",
        about: "Applies learner erasures (the erasure topic) to the state store, so a store rebuilt by replay forgets them again.",
        domains: &[Domain::Erasure],
        in_all: true,
        offsets_in_store: true,
        requires: &[],
        prepare: None,
        build: |c| Ok(Arc::new(Stateful::new(c.store.clone(), Arc::clone(&c.relay), erasure::Erasure))),
        service: None,
    },
    Registered {
        name: "noop",
        about: "Consumes every client event and only counts it: the baseline rate for benchmarks.",
        domains: &[Domain::Learning, Domain::Enrollment, Domain::Payment, Domain::Catalog],
        in_all: false,
        offsets_in_store: false,
        requires: &[],
        prepare: None,
        build: |_| Ok(Arc::new(noop::Noop::default())),
        service: None,
    },
    Registered {
        name: "analytics",
        about: "Writes every event to the analytics store (ClickHouse, or the Parquet twin) behind /v1/analytics.",
        domains: &lms_analytics::SINK_DOMAINS,
        in_all: true,
        offsets_in_store: false,
        requires: &["analytics"],
        prepare: Some(|c| Box::pin(analytics::prepare(c))),
        build: |c| Ok(Arc::new(lms_analytics::AnalyticsSink::new(c.require("analytics")?))),
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

/// The names of the processors `all` runs.
pub fn all() -> Vec<&'static str> {
    REGISTRY.iter().filter(|r| r.in_all).map(|r| r.name).collect()
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

    /// Every registered processor builds from what its `prepare` makes, and keeps its offsets
    /// where the registry says (`lms groups` and `lms replay` rely on it).
    #[tokio::test]
    async fn every_processor_builds_after_prepare_and_keeps_offsets_where_declared() {
        let store = super::open_store("sqlite::memory:", 1).await.expect("store");
        let kafka = lms_bus::KafkaConfig::new("127.0.0.1:9");
        let topics = lms_bus::TopicsFile::bundled().topic_map("");
        // Connects lazily and sends nothing here.
        let producer = std::sync::Arc::new(
            lms_bus::Producer::new(&kafka, topics, lms_bus::BusMetrics::standalone(), "registry-test").expect("producer"),
        );
        let (mut ctx, _relay) = super::runtime::context(store, producer);
        let err = (super::lookup("achievements").expect("registered").build)(&ctx).err().unwrap_or_default();
        assert!(err.contains("missing its"), "a build before prepare names what is missing: {err}");
        let dir = std::env::temp_dir().join(format!("lms-registry-{}", uuid::Uuid::new_v4().simple()));
        ctx.extensions.insert(Some(lms_analytics::AnalyticsConfig::Parquet(lms_analytics::ParquetConfig::new(&dir))));
        #[cfg(feature = "delivery")]
        ctx.extensions.insert(std::sync::Arc::new(super::notifications::Settings::default()));
        let checks = super::runtime::prepare(&mut ctx, &super::REGISTRY.iter().collect::<Vec<_>>()).await.expect("prepare");
        assert!(checks.iter().any(|c| c.name == "analytics"), "the analytics store is checked for readiness");
        for r in super::REGISTRY {
            let built = (r.build)(&ctx).unwrap_or_else(|e| panic!("{} does not build: {e}", r.name));
            assert_eq!(built.offset_store().is_some(), r.offsets_in_store, "{}: offsets_in_store", r.name);
            assert_eq!(built.name(), r.name);
        }
        let _ = std::fs::remove_dir_all(dir);
    }

    /// The invariant of the crate documentation: no component names another, neither as
    /// `crate::<component>` nor in a `crate::{…}` group.
    #[test]
    fn components_do_not_import_each_other() {
        let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let found = cross_imports(&src, |text| text);
        assert!(found.is_empty(), "components import each other: {found:#?}");
        // The check can fail: the progress component naming achievements is found.
        let planted = cross_imports(&src, |text| text.replace("use super::{SOURCE, db};", "use crate::achievements::Achievements;"));
        assert_eq!(planted.len(), 1, "{planted:?}");
    }

    /// Which component files name another component, after `edit` of their text.
    fn cross_imports(src: &std::path::Path, edit: impl Fn(String) -> String) -> Vec<String> {
        const FRAMEWORK: &[&str] = &["lib", "runtime", "state", "stateful", "cost", "testkit"];
        fn sources(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            if path.is_dir() {
                for entry in std::fs::read_dir(path).expect("a source folder") {
                    sources(&entry.expect("an entry").path(), out);
                }
            } else if path.is_file() && path.extension().is_some_and(|e| e == "rs") {
                out.push(path.to_owned());
            }
        }
        let mut components: Vec<String> = std::fs::read_dir(src)
            .expect("src")
            .map(|e| e.expect("an entry").path().file_stem().expect("a name").to_string_lossy().into_owned())
            .filter(|name| !FRAMEWORK.contains(&name.as_str()))
            .collect();
        components.sort();
        components.dedup();
        assert!(components.len() >= 5 && components.contains(&"progress".to_owned()), "{components:?}");
        let mut found = Vec::new();
        for component in &components {
            let mut files = Vec::new();
            sources(&src.join(component), &mut files);
            sources(&src.join(format!("{component}.rs")), &mut files);
            for file in files {
                let text = edit(std::fs::read_to_string(&file).expect("a source file"));
                // Every path that starts at the crate root: `crate::a::…` or `crate::{a, b::…}`.
                let mut named: Vec<&str> = Vec::new();
                for (at, _) in text.match_indices("crate::") {
                    let rest = &text[at + "crate::".len()..];
                    if let Some(group) = rest.strip_prefix('{') {
                        let group = &group[..group.find('}').unwrap_or(group.len())];
                        named.extend(group.split(',').map(|p| p.trim().split("::").next().unwrap_or_default()));
                    } else {
                        named.push(rest.split(|c: char| !(c.is_alphanumeric() || c == '_')).next().unwrap_or_default());
                    }
                }
                for other in components.iter().filter(|c| *c != component) {
                    if named.contains(&other.as_str()) {
                        found.push(format!("{} imports {other}", file.display()));
                    }
                }
            }
        }
        found
    }

    #[test]
    fn derived_ids_are_stable_and_distinct() {
        use super::derived_id;
        assert_eq!(derived_id("k", &["a", "b"]), derived_id("k", &["a", "b"]));
        assert_ne!(derived_id("k", &["ab", ""]), derived_id("k", &["a", "b"]));
    }
}
