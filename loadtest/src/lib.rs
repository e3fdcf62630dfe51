//! The library half of `loadtest`: the chaos run (also an integration test) and the soak
//! run (`soak`), scenarios on the harness crate (`lms-harness`: deployment, client, oracles,
//! comparisons).

pub mod chaos;
pub mod soak;
