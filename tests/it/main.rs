//! Integration tests against real services. Run them with `cargo xtask test`, which
//! starts tansu, PostgreSQL and ClickHouse and exports their addresses.

mod api_enrollments;
mod api_events;
mod api_ops;
mod api_outage;
mod api_support;
mod api_webhook;
mod api_xapi;
mod analytics_clickhouse;
mod analytics_common;
mod analytics_oracle;
mod analytics_outage;
mod analytics_parity;
mod analytics_replay;
mod bus_dead_letters;
mod bus_producer_faults;
mod bus_takeover;
mod dashboards;
mod progress_kill;
mod progress_oracle;
mod support;
mod topics_apply;
mod tansu_probe;
