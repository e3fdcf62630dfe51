//! Integration tests against real services. Run them with `cargo xtask test`, which
//! starts tansu, PostgreSQL and ClickHouse and exports their addresses.

mod bus_dead_letters;
mod bus_producer_faults;
mod bus_takeover;
mod progress_kill;
mod progress_oracle;
mod support;
mod topics_apply;
mod tansu_probe;
