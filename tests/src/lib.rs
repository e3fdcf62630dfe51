//! The integration tests' own fixtures (a headless browser, a ClickHouse client, a TCP
//! proxy, TLS material); everything else they share with the benchmarks lives in the
//! harness crate (`lms-harness`), re-exported here so a test writes `tests::eventually`.

pub mod browser;
pub mod clickhouse;
pub mod proxy;
pub mod tls;

pub use lms_harness::*;
