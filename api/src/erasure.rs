//! `DELETE /v1/learners/{learner_id}`: erases a learner of the token's tenant everywhere
//! (CONTRACT.md, "Learner data lifecycle").
//!
//! In order: the erasure goes on the erasure topic (`learner.erased`, acknowledged by the
//! broker; every processor and every replica learns it from there, also after a replay), then
//! the state store and the analytics store are erased at once, and the answer says what each
//! held. When the analytics store is unreachable the answer says so: the analytics processor
//! erases the learner there when it reads the topic. [`erase_stores`] is shared with
//! `lms learners erase`.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, SecondsFormat, Utc};
use lms_analytics::AnalyticsStore;
use lms_events::data::LearnerErased;
use lms_events::{Event, EventData};
use lms_state::Store;
use processors::state::ErasedState;
use serde::Serialize;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::{Claims, scope};
use crate::learners::{check_learner, store_problem};
use crate::problem::{PathParams, Problem, ProblemDocument};
use crate::telemetry::RequestTrace;

/// The stores an erasure removes data from.
#[derive(Clone)]
pub struct ErasureStores {
    /// The processors' state store.
    pub store: Store,
    /// The analytics store.
    pub analytics: Arc<dyn AnalyticsStore>,
}

/// What an erasure removed.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErasureReport {
    /// The erased learner.
    pub learner_id: String,
    /// When the learner was first erased.
    pub erased_at: String,
    /// True when the learner had been erased before.
    pub already_erased: bool,
    /// The id of the `learner.erased` event on the erasure topic.
    pub event_id: String,
    /// Rows removed from the processors' state store.
    pub state: ErasedState,
    /// Rows removed from the analytics store.
    pub analytics: AnalyticsErasure,
}

/// The analytics store's part of an erasure.
#[derive(Debug, Serialize, ToSchema)]
pub struct AnalyticsErasure {
    /// `erased`, or `pending` when the store could not be reached: the analytics processor
    /// erases the learner when it reads the erasure topic.
    pub status: String,
    /// Rows the learner had per analytics table (payments are kept without a learner).
    pub rows: BTreeMap<String, u64>,
    /// Why the erasure is pending.
    #[schema(nullable = false)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// The `learner.erased` event of an erasure: its id is derived from tenant and learner, so a
/// repeated request writes the same event.
pub fn erasure_event(tenant: &str, learner: &str, at: DateTime<Utc>) -> Event {
    let data = EventData::LearnerErased(LearnerErased { learner_id: learner.to_owned() });
    Event::derived(tenant, "lms-api", at, data).with_id(processors::derived_id("learner.erased", &[tenant, learner]))
}

/// Erases `learner` of `tenant` in both stores, after its event is on the erasure topic.
/// A state store failure is an error (nothing half-done: one transaction); an analytics
/// failure is reported as pending.
pub async fn erase_stores(stores: &ErasureStores, event: &Event) -> Result<ErasureReport, lms_state::StoreError> {
    let EventData::LearnerErased(d) = &event.data else {
        return Err(lms_state::StoreError::Corrupt(format!("event {} is not a learner.erased", event.id)));
    };
    let (tenant, learner) = (event.tenant.as_str(), d.learner_id.as_str());
    let mut tx = stores.store.begin().await?;
    let erased = processors::erasure::erase(&mut tx, stores.store.backend(), tenant, learner, lms_state::sql::to_us(event.time)).await?;
    tx.commit().await?;
    let analytics = match stores.analytics.erase(tenant, learner).await {
        Ok(rows) => AnalyticsErasure { status: "erased".to_owned(), rows, reason: None },
        Err(e) => {
            tracing::warn!(error = %e, event_id = %event.id, "analytics erasure pending: the analytics processor applies it from the topic");
            AnalyticsErasure { status: "pending".to_owned(), rows: BTreeMap::new(), reason: Some(e.to_string()) }
        }
    };
    let erased_at = lms_state::sql::from_us(erased.erased_at_us)?.to_rfc3339_opts(SecondsFormat::Micros, true);
    Ok(ErasureReport {
        learner_id: learner.to_owned(),
        erased_at,
        already_erased: erased.already_erased,
        event_id: event.id.clone(),
        state: erased.state,
        analytics,
    })
}

/// Erase a learner
///
/// Erases the learner of the token's tenant everywhere: contact data and preferences, the
/// inbox and deliveries, progress, achievements (issued credentials are revoked), dedupe
/// rows and the analytics rows. Revenue keeps its totals: payments stay in the analytics
/// without the learner. The learner never reappears: their events that arrive later, are
/// redelivered or replayed are dropped where events enter processing. Repeating the request
/// is harmless (`already_erased`).
#[utoipa::path(
    delete,
    path = "/v1/learners/{learner_id}",
    tag = "write",
    security(("bearer" = ["admin"])),
    params(("learner_id" = String, Path, description = "The learner", min_length = 1, max_length = 128)),
    responses(
        (status = 200, description = "The learner is erased; what each store held", body = ErasureReport),
        (status = 400, description = "Malformed learner id", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "Scope missing (admin)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Tenant rate limit exhausted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Broker or state store unavailable: nothing was erased, retry", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn delete_learner(
    State(state): State<Arc<AppState>>,
    claims: Claims,
    RequestTrace(trace): RequestTrace,
    PathParams(learner_id): PathParams<String>,
) -> Result<Json<ErasureReport>, Problem> {
    claims.require(scope::ADMIN)?;
    state.admit_claims(&claims)?;
    check_learner(&claims, &learner_id)?;
    let Some(stores) = &state.erasure else {
        return Err(Problem::not_found("erasure is not offered by this server (no stores configured)"));
    };
    let event = erasure_event(&claims.tenant, &learner_id, Utc::now());
    state.produce(vec![event.clone()], trace).await?;
    let report = erase_stores(stores, &event).await.map_err(store_problem)?;
    tracing::info!(event_id = %event.id, already = report.already_erased, analytics = %report.analytics.status, "learner erased");
    Ok(Json(report))
}
