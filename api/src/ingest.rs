//! What every write route shares: admission (rate limit), validation of client events,
//! and producing with "durable before 202" semantics.

use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lms_bus::{OnQueueFull, ProduceError};
use lms_events::{Event, FieldError, Rejection, TraceContext, parse_client_event_owned};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::AppState;
use crate::auth::Claims;
use crate::problem::Problem;

/// The answer to an accepted write: the ids of the events now durably on the broker, and
/// the items that were refused, by their index in the request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Accepted {
    /// Ids of the accepted events, in request order: the ids the client sent, or the UUIDv7s
    /// assigned to events without one.
    pub accepted: Vec<String>,
    /// Items not accepted, each with every error found.
    pub rejected: Vec<Rejected>,
}

/// An item of a batch that was not accepted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Rejected {
    /// Position of the item in the request (array index, or NDJSON line among non-empty lines).
    pub index: usize,
    /// What is wrong, each at a JSON pointer relative to the item.
    #[schema(value_type = Vec<crate::problem::FieldErrorDoc>)]
    pub errors: Vec<FieldError>,
}

impl IntoResponse for Accepted {
    fn into_response(self) -> Response {
        (StatusCode::ACCEPTED, Json(self)).into_response()
    }
}

/// Validated items of one request.
pub(crate) struct Validated {
    /// The valid events, in request order, with their indexes.
    pub events: Vec<(usize, Event)>,
    /// The invalid items.
    pub rejected: Vec<Rejected>,
    /// The first item naming another tenant: (index, named tenant).
    pub foreign: Option<(usize, String)>,
}

/// Validates client events (`POST /v1/events` items) for `tenant`.
pub(crate) fn validate_events(items: Vec<Result<Value, FieldError>>, tenant: &str) -> Validated {
    let mut out = Validated { events: Vec::with_capacity(items.len()), rejected: Vec::new(), foreign: None };
    for (index, item) in items.into_iter().enumerate() {
        match item.map_err(|e| Rejection::Invalid(vec![e])).and_then(|v| parse_client_event_owned(v, tenant)) {
            Ok(event) => out.events.push((index, event)),
            Err(Rejection::Invalid(errors)) => out.rejected.push(Rejected { index, errors }),
            Err(Rejection::ForeignTenant { named, .. }) => {
                out.foreign.get_or_insert((index, named));
            }
        }
    }
    out
}

/// The 403 of a request with an item naming another tenant: nothing of it is accepted.
pub(crate) fn foreign_tenant(index: Option<usize>, named: &str, tenant: &str) -> Problem {
    let what = index.map_or_else(|| "the event".to_owned(), |i| format!("item {i}"));
    Problem::forbidden(format!(
        "{what} names tenant {named:?} but the credentials are for tenant {tenant:?}; nothing of this request was accepted"
    ))
}

/// The 422 of a batch in which no item is valid: every item's errors, also flattened into
/// `errors` with pointers relative to the request body.
pub(crate) fn nothing_valid(rejected: Vec<Rejected>, what: &str) -> Problem {
    let errors = rejected
        .iter()
        .flat_map(|r| r.errors.iter().map(move |e| FieldError::new(format!("/{}{}", r.index, e.path), e.message.clone())))
        .collect();
    let n = rejected.len();
    Problem::unprocessable(format!("none of the {n} {what} is valid; nothing was accepted"), errors)
        .with("rejected", serde_json::to_value(&rejected).unwrap_or_default())
}

impl AppState {
    /// Takes a token of the tenant's rate-limit bucket, or 429.
    pub(crate) fn admit(&self, tenant: &str) -> Result<(), Problem> {
        self.limiter.check(tenant).map_err(|wait| {
            tracing::debug!(tenant, "rate limited");
            Problem::rate_limited(wait.as_secs_f64().ceil() as u64)
        })
    }

    /// [`AppState::admit`] for a token's tenant.
    pub(crate) fn admit_claims(&self, claims: &Claims) -> Result<(), Problem> {
        self.admit(&claims.tenant)
    }

    /// Produces the events with the request's trace context and waits for the broker's
    /// acknowledgements (`acks=all`). Ok with the ids when every event is acknowledged;
    /// otherwise 503 with `Retry-After`, listing the ids that were acknowledged anyway.
    pub(crate) async fn produce(self: &Arc<Self>, events: Vec<Event>, trace: TraceContext) -> Result<Vec<String>, Problem> {
        let retry = self.config.retry_after_s;
        if self.readiness.broker_down() {
            self.metrics.count_events(0, 0, events.len());
            return Err(Problem::unavailable("the broker is unreachable; nothing was accepted, retry later", retry));
        }
        if self.readiness.broker_up() {
            self.producer.renew_if_suspect();
        }
        let records: Vec<(Event, Option<TraceContext>)> = events.into_iter().map(|e| (e, Some(trace.clone()))).collect();
        let results = self.producer.get().send_events(&records, OnQueueFull::Fail).await;
        let mut accepted = Vec::with_capacity(records.len());
        let mut failed = 0;
        let mut first_error: Option<ProduceError> = None;
        for ((event, _), result) in records.iter().zip(results) {
            match result {
                Ok(_) => accepted.push(event.id.clone()),
                Err(e) => {
                    failed += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
        self.metrics.count_events(accepted.len(), 0, failed);
        let Some(error) = first_error else { return Ok(accepted) };
        if matches!(error, ProduceError::Delivery(_)) {
            self.producer.mark_suspect();
        }
        tracing::warn!(error = %error, failed, acknowledged = accepted.len(), "events not acknowledged by the broker");
        let cause = match error {
            ProduceError::QueueFull => "the producer queue is full (backpressure)",
            ProduceError::Delivery(_) => "the broker did not acknowledge them in time",
        };
        let detail = format!(
            "{failed} of {} events were not accepted: {cause}. Retry the whole request: the events listed in \
             `accepted` are already durable and keep their ids, so resending them changes nothing",
            records.len()
        );
        Err(Problem::unavailable(detail, retry).with("accepted", accepted))
    }
}
