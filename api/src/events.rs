//! `POST /v1/events`: client events, one object, a JSON array or NDJSON.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};

use crate::AppState;
use crate::auth::{Claims, scope};
use crate::body;
use crate::ingest::{Accepted, Validated, foreign_tenant, nothing_valid, validate_events};
use crate::problem::{Problem, ProblemDocument};
use crate::telemetry::RequestTrace;

/// Batches larger than this are validated on the blocking pool, off the async workers.
const INLINE_VALIDATION_MAX: usize = 16;

/// Send events
///
/// One event (a CloudEvents 1.0 envelope), a JSON array of at most 1000, or NDJSON (one
/// event per line). The valid events of a batch are accepted even when others are
/// rejected; each rejected item is reported with its index and JSON-pointer errors. A 202
/// means every accepted event is durably on the broker (`acks=all`). `id` is the
/// idempotency key: kept when sent, else a UUIDv7 is assigned; resending an event with its
/// id changes nothing. An item naming another tenant refuses the whole request (403).
#[utoipa::path(
    post,
    path = "/v1/events",
    tag = "write",
    security(("bearer" = ["events:write"])),
    request_body(
        description = "One event, an array of events, or NDJSON",
        content(
            (ref("#/components/schemas/ClientEventOrBatch") = "application/json"),
            (ref("#/components/schemas/ClientEvent") = "application/cloudevents+json"),
            (ref("#/components/schemas/ClientEventBatch") = "application/cloudevents-batch+json"),
            (String = "application/x-ndjson")
        )
    ),
    params(("traceparent" = Option<String>, Header, description = "W3C trace context to continue")),
    responses(
        (status = 202, description = "Every accepted event is durably on the broker", body = Accepted),
        (status = 400, description = "Malformed JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Missing, invalid or expired token", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 403, description = "Scope missing, or an event names another tenant", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 408, description = "Body not received in time", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body or batch too large", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "The event, or every event of the batch, is invalid", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Tenant rate limit exhausted (see Retry-After)", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable or backpressure (see Retry-After); `accepted` lists ids already durable", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn post_events(
    State(state): State<Arc<AppState>>,
    claims: Claims,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, Problem> {
    claims.require(scope::EVENTS_WRITE)?;
    state.admit_claims(&claims)?;
    let format = body::format(&headers, true)?;
    let config = &state.config;
    let bytes = body::read(request_body, &headers, config.max_body_bytes, config.body_timeout()).await?;
    let items = body::parse(&bytes, format, config.max_batch_events, config.max_event_bytes)?;
    drop(bytes);
    let single = items.single;
    let tenant = claims.tenant.clone();
    let validated = if items.items.len() <= INLINE_VALIDATION_MAX {
        validate_events(items.items, &tenant)
    } else {
        tokio::task::spawn_blocking(move || validate_events(items.items, &tenant))
            .await
            .map_err(|_| Problem::internal("validation failed unexpectedly"))?
    };
    let Validated { events, rejected, foreign } = validated;
    if let Some((index, named)) = foreign {
        state.metrics.count_events(0, events.len() + rejected.len() + 1, 0);
        return Err(foreign_tenant((!single).then_some(index), &named, &claims.tenant));
    }
    state.metrics.count_events(0, rejected.len(), 0);
    if events.is_empty() {
        return Err(if single {
            let errors = rejected.into_iter().flat_map(|r| r.errors).collect();
            Problem::unprocessable("the event is invalid", errors)
        } else {
            nothing_valid(rejected, "items")
        });
    }
    let accepted = state.produce(events.into_iter().map(|(_, e)| e).collect(), trace).await?;
    Ok(Accepted { accepted, rejected }.into_response())
}
