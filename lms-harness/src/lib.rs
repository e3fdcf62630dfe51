//! The harness of lms-pipeline: everything that deploys processes and services for the
//! integration tests (`tests/`) and the benchmarks and scenarios (`loadtest/`), and checks
//! what they answer.
//!
//! - Where the services are, unique names, polling with a deadline: this file and [`wait`].
//! - The bus: [`bus`] ([`BusFixture`]: every topic under a fresh prefix) and [`broker`]
//!   ([`OwnBroker`]: a tansu broker a test can kill and restart).
//! - Processes: [`process`] (the one way an `lms` process is started, by the tests' helpers
//!   and by [`deploy::Fleet`]), [`deploy`] (a whole deployment of a scenario: API, processors,
//!   topics, databases).
//! - Checking: [`client`] (tokens, retried POSTs, reads), [`oracle`] (what the read endpoints
//!   must answer, computed plainly from the events sent) and [`compare`] (the endpoints
//!   against the oracles).
//!
//! Service addresses come from the environment that `cargo xtask test` sets, with loopback
//! defaults for a developer who started the services by hand (`cargo xtask services` prints
//! the exports). xtask itself stays free of dependencies, so it starts the shared services
//! with its own code; the harness starts what a single test or run owns.

pub mod broker;
pub mod bus;
pub mod client;
pub mod compare;
pub mod deploy;
pub mod oracle;
pub mod process;
pub mod wait;

use std::net::TcpListener;
use std::path::PathBuf;

pub use broker::OwnBroker;
pub use bus::{BusFixture, create_topic, create_topics, durable_kafka_brokers, kafka_brokers, unique_prefix};
pub use compare::Tally;
pub use process::{LmsOutput, Proc, lms_bin, lms_env, run_lms, spawn_lms};
pub use wait::{eventually, poll_until};

/// The repository's root directory, from the `CARGO_MANIFEST_DIR` that cargo and nextest
/// set when they run a test. Not `env!`: clones sharing one `CARGO_TARGET_DIR` (CI's clone
/// and a developer's) reuse each other's unchanged test binaries, whose compiled-in path
/// names the other clone, which may be gone.
pub fn repo_root() -> PathBuf {
    let manifest = std::env::var_os("CARGO_MANIFEST_DIR").map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest.parent().expect("the package sits in the repository root").to_path_buf()
}

/// Logs of the code under test, shown when a test fails (`RUST_LOG` to tune).
pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,librdkafka=warn,rdkafka=warn")),
        )
        .with_test_writer()
        .try_init();
}

/// A free TCP port on loopback.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("free port")
}
