//! The lag of every consumer group of the pipeline, exported by `lms api` on its
//! `/metrics` as `lms_group_lag_records{group, topic, partition}`.
//!
//! The members report their own lag (`lms_bus_consumer_lag_records`), so when every
//! member of a group is dead that series is gone and no alert on it can fire. This one is
//! computed outside the group, the way `lms groups` does ([`Admin::group_status`]): from
//! the offset each partition resumes from (the state store's for store-backed groups,
//! Kafka's committed offset otherwise, the log start when there is neither) and the log
//! end. It is refreshed every `api.lag_refresh_s` seconds (15 by default; 0 turns it off);
//! `lms_group_lag_refreshed_timestamp_seconds` says when it last succeeded and
//! `lms_group_lag_refresh_failures_total` counts the looks that failed (broker or store
//! unreachable), during which the last values stay.
//!
//! Every `lms api` replica exports the same values; alert on `max by (group, ...)`.

use std::time::Duration;

use anyhow::Context as _;
use lms_bus::admin::Admin;
use lms_bus::admin::groups::{GroupSpec, OffsetsKeptIn};
use lms_state::Store;
use prometheus::{IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// The exported series.
#[derive(Clone)]
struct Gauges {
    lag: IntGaugeVec,
    refreshed: IntGauge,
    failures: IntCounter,
}

impl Gauges {
    fn register(registry: &Registry) -> anyhow::Result<Gauges> {
        let lag = IntGaugeVec::new(
            Opts::new(
                "lms_group_lag_records",
                "Records between the offset a consumer group resumes a partition from (state store or Kafka) and the log end, computed without the group's members",
            ),
            &["group", "topic", "partition"],
        )?;
        let refreshed = IntGauge::new(
            "lms_group_lag_refreshed_timestamp_seconds",
            "Unix time of the last successful computation of lms_group_lag_records",
        )?;
        let failures = IntCounter::new(
            "lms_group_lag_refresh_failures_total",
            "Computations of lms_group_lag_records that failed (broker or state store unreachable)",
        )?;
        registry.register(Box::new(lag.clone()))?;
        registry.register(Box::new(refreshed.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        Ok(Gauges { lag, refreshed, failures })
    }
}

/// Registers the series in `registry` and refreshes them every `interval` until
/// `shutdown`. The group list is the processors' registry ([`super::group_specs`]).
///
/// The looks run on a thread of their own with its own runtime and state-store
/// connection: the Kafka admin calls block (`block_in_place`) for up to their timeout,
/// which must not hold the HTTP server's workers.
pub fn spawn(
    config: &Config,
    registry: &Registry,
    interval: Duration,
    shutdown: CancellationToken,
) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let gauges = Gauges::register(registry)?;
    let config = config.clone();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    Ok(std::thread::Builder::new().name("lms-group-lag".into()).spawn(move || {
        rt.block_on(async move {
            let admin = match Admin::new(&config.kafka) {
                Ok(a) => a,
                Err(e) => return tracing::error!(error = %e, "the lag exporter cannot create its Kafka client"),
            };
            let mut store: Option<Store> = None;
            let mut specs: Option<Vec<GroupSpec>> = None;
            let mut tick = tokio::time::interval(interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    () = shutdown.cancelled() => break,
                }
                let look = async {
                    if store.is_none() {
                        store = Some(processors::open_store(&config.store.url, 1).await.context("opening the state store")?);
                    }
                    let s = store.as_ref().context("no store")?;
                    refresh(&config, s, &admin, &mut specs, &gauges).await
                };
                if let Err(e) = look.await {
                    gauges.failures.inc();
                    tracing::warn!(error = %format!("{e:#}"), "the group lag could not be computed; the last values stay");
                }
            }
            if let Some(s) = store {
                s.close().await;
            }
        });
    })?)
}

/// One look at every group. Nothing is set unless every group was read.
async fn refresh(config: &Config, store: &Store, admin: &Admin, specs: &mut Option<Vec<GroupSpec>>, gauges: &Gauges) -> anyhow::Result<()> {
    if specs.is_none() {
        *specs = Some(super::group_specs(config));
    }
    let mut statuses = Vec::new();
    for spec in specs.iter().flatten() {
        let mut spec = spec.clone();
        // A processor that could not be built here (the analytics sink) counts as
        // store-backed once the store holds offsets for its group.
        if spec.offsets == OffsetsKeptIn::Kafka && !lms_state::offsets::load(store, &spec.group).await?.is_empty() {
            spec.offsets = OffsetsKeptIn::Store;
        }
        statuses.push(admin.group_status(&spec, Some(store)).await.with_context(|| format!("reading group {}", spec.group))?);
    }
    for g in &statuses {
        for p in &g.partitions {
            gauges.lag.with_label_values(&[&g.group, &p.topic, &p.partition.to_string()]).set(p.lag);
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    gauges.refreshed.set(i64::try_from(now).unwrap_or(i64::MAX));
    Ok(())
}
