//! The stream processors. Each is a module implementing [`lms_bus::Processor`]; the
//! [`REGISTRY`] is the one list of them (an unknown name fails with the known ones).
//!
//! Architecture invariant: processors do not depend on each other; they share only the
//! event contract (lms-events), the bus (lms-bus) and the stores (sinks).

pub mod noop;

use std::sync::Arc;

use lms_bus::Processor;
use lms_events::Domain;

/// A processor the binary can run by name.
pub struct Registered {
    /// Name used on the command line and in the consumer group id (`lms-<name>`).
    pub name: &'static str,
    /// What it does, for `--help` and listings.
    pub about: &'static str,
    /// The domains (topics) it consumes.
    pub domains: &'static [Domain],
    /// Builds an instance.
    pub build: fn() -> Arc<dyn Processor>,
}

/// Every processor, by name.
pub const REGISTRY: &[Registered] = &[Registered {
    name: "noop",
    about: "Consumes every client event and only counts it: the baseline rate for benchmarks.",
    domains: &[Domain::Learning, Domain::Enrollment, Domain::Payment, Domain::Catalog],
    build: || Arc::new(noop::Noop::default()),
}];

/// Looks a processor up by name; the error lists the known names.
pub fn lookup(name: &str) -> Result<&'static Registered, String> {
    REGISTRY.iter().find(|r| r.name == name).ok_or_else(|| {
        format!("unknown processor {name:?}; known: {}", REGISTRY.iter().map(|r| r.name).collect::<Vec<_>>().join(", "))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn unknown_names_list_the_known_ones() {
        let err = super::lookup("nope").err().unwrap_or_default();
        assert!(err.contains("noop"), "{err}");
        assert!(super::lookup("noop").is_ok());
    }
}
