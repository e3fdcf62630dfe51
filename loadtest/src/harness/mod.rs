//! What deploys and checks the pipeline for the chaos and soak scenarios (and the
//! integration tests that run them): [`deploy`] (the `lms` processes of a run and their
//! services), [`client`] (tokens, retried POSTs, reads) and [`compare`] (the read endpoints
//! against the oracles of [`crate::oracle`]).

pub mod client;
pub mod compare;
pub mod deploy;

pub use compare::Tally;
