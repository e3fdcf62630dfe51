//! The analytics component: lms-analytics's sink (`lms_analytics::AnalyticsSink`) with its
//! store, opened and migrated from the `analytics` configuration section.

use std::sync::Arc;

use lms_analytics::{AnalyticsConfig, AnalyticsStore};

use crate::{Check, Context};

/// Opens and migrates the analytics store of the `analytics` section, unless the process
/// already shares one (`lms demo`: the API reads the same twin); its readiness is a ping.
pub async fn prepare(ctx: &mut Context) -> Result<Vec<Check>, String> {
    let store = match ctx.extensions.get::<Arc<dyn AnalyticsStore>>() {
        Some(store) => Arc::clone(store),
        None => {
            let Some(Some(config)) = ctx.extensions.get::<Option<AnalyticsConfig>>() else {
                return Err("the analytics processor needs an analytics store: set `analytics.store` in the config file or \
                            LMS_ANALYTICS__STORE in the environment, to `clickhouse` (with LMS_ANALYTICS__URL and \
                            LMS_ANALYTICS__DATABASE) or `parquet` (with LMS_ANALYTICS__DIR)"
                    .to_owned());
            };
            let store = config.open().await.map_err(|e| format!("cannot open the analytics store: {e}"))?;
            let report = store.migrate().await.map_err(|e| format!("cannot migrate the analytics store: {e}"))?;
            if !report.applied.is_empty() {
                tracing::info!(applied = ?report.applied, "analytics store migrated");
            }
            ctx.extensions.insert(Arc::clone(&store));
            store
        }
    };
    Ok(vec![Check {
        name: "analytics",
        probe: Box::new(move || {
            let store = Arc::clone(&store);
            Box::pin(async move { store.ping().await.map_err(|e| e.to_string()) })
        }),
    }])
}
