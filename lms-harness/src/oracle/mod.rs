//! Oracles: what the read endpoints must answer, computed plainly from the events sent.
//! Shared by the integration tests (`tests/it`) and the chaos run.

pub mod analytics;
pub mod notifications;
pub mod progress;
