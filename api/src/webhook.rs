//! `POST /v1/payments/webhook`: payment-provider callbacks, authenticated by an HMAC
//! signature instead of a token.
//!
//! - `Lms-Tenant: <tenant>` names the tenant; it must have a secret in
//!   `webhook_secrets` (else 401).
//! - `Lms-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<raw body>">` (several
//!   `v1` entries are allowed during a secret rotation; one must match). A wrong signature,
//!   or a `t` more than `webhook_tolerance_s` away from now, is 401.
//! - The body `{"id", "type", "created", "data"}` becomes an event of that type with
//!   `time` = `created`; `data` is validated like a client event's. Other top-level
//!   members (providers add some) are ignored.
//! - The event id is a UUIDv5 of (tenant, webhook id), so a redelivery produces the same id
//!   whichever instance receives it, and the processors drop it as a duplicate. An instance
//!   remembers the webhook ids it accepted recently, and with [`crate::Api::webhook_store`]
//!   the state store remembers them for every instance and across restarts
//!   (`api.webhook_retention_days`): a redelivery is answered 200 without producing again.
//!   Two instances receiving the same delivery at the same moment may both produce it (the
//!   same event id); a store that cannot be read or written costs that too, never a refusal.

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, SecondsFormat, Utc};
use lms_events::{FieldError, Rejection, parse_client_event};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::AppState;
use crate::body;
use crate::problem::{Problem, ProblemDocument};
use crate::telemetry::RequestTrace;

/// The namespace of webhook event ids (UUIDv5 of `<tenant>\n<webhook id>`).
const NAMESPACE: Uuid = Uuid::from_u128(0x6c6d_735f_7765_6268_6f6f_6b5f_6964_7331);
/// The `source` attribute of webhook events.
const SOURCE: &str = "payment-webhook";

/// The event id of a webhook delivery.
pub fn event_id(tenant: &str, webhook_id: &str) -> String {
    Uuid::new_v5(&NAMESPACE, format!("{tenant}\n{webhook_id}").as_bytes()).to_string()
}

/// The signature header value of `body` sent at `t` with `secret`: what a payment provider
/// sends (for tests and tools; [`lms_events::signature::sign`]).
pub use lms_events::signature::{sign, verify};

/// A payment provider's callback.
#[derive(Debug, Deserialize, ToSchema)]
#[allow(dead_code)]
pub struct WebhookRequest {
    /// The provider's id of this notification; redeliveries repeat it.
    id: String,
    /// `payment.succeeded`, `payment.refunded` or `payment.failed`.
    #[serde(rename = "type")]
    #[schema(example = "payment.succeeded")]
    kind: String,
    /// When the payment event happened, Unix seconds: the event time.
    created: i64,
    /// The data of the event type, as in `POST /v1/events`.
    #[schema(value_type = Object)]
    data: Value,
}

/// The answer to a webhook.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct WebhookAccepted {
    /// The id of the event (UUIDv5 of tenant and webhook id).
    pub event_id: String,
    /// The provider's webhook id.
    pub webhook_id: String,
    /// True when this webhook id had already been accepted: nothing was produced.
    pub duplicate: bool,
}

/// (tenant, webhook id).
type Key = (String, String);

/// Webhook ids (with their tenant) this instance accepted, oldest first out.
pub(crate) struct Seen {
    capacity: usize,
    inner: Mutex<(HashSet<Key>, VecDeque<Key>)>,
}

impl Seen {
    pub(crate) fn new(capacity: usize) -> Seen {
        Seen { capacity: capacity.max(1), inner: Mutex::new((HashSet::new(), VecDeque::new())) }
    }

    fn contains(&self, tenant: &str, id: &str) -> bool {
        let guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        guard.0.contains(&(tenant.to_owned(), id.to_owned()))
    }

    fn insert(&self, tenant: &str, id: &str) {
        let mut guard = self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (tenant.to_owned(), id.to_owned());
        if guard.0.insert(key.clone()) {
            guard.1.push_back(key);
            while guard.1.len() > self.capacity {
                if let Some(old) = guard.1.pop_front() {
                    guard.0.remove(&old);
                }
            }
        }
    }
}

/// Receive a payment webhook
///
/// Authenticated by `Lms-Signature` (HMAC-SHA256 of `"<t>.<raw body>"` with the tenant's
/// webhook secret) and `Lms-Tenant`. Redelivery of the same `id` is answered 200 and
/// changes nothing.
#[utoipa::path(
    post,
    path = "/v1/payments/webhook",
    tag = "write",
    params(
        ("Lms-Tenant" = String, Header, description = "The tenant the webhook is for"),
        ("Lms-Signature" = String, Header, description = "`t=<unix seconds>,v1=<hex HMAC-SHA256 of \"<t>.<raw body>\">`"),
    ),
    request_body = WebhookRequest,
    responses(
        (status = 202, description = "The payment event is durably on the broker", body = WebhookAccepted),
        (status = 200, description = "A redelivery of an accepted webhook: nothing changed", body = WebhookAccepted),
        (status = 400, description = "Malformed JSON", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 401, description = "Unknown tenant, wrong or expired signature", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 413, description = "Body too large", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 415, description = "Unsupported content type", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 422, description = "Invalid webhook", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 429, description = "Tenant rate limit exhausted", body = ProblemDocument, content_type = "application/problem+json"),
        (status = 503, description = "Broker unavailable or backpressure", body = ProblemDocument, content_type = "application/problem+json"),
    )
)]
pub(crate) async fn post_webhook(
    State(state): State<Arc<AppState>>,
    RequestTrace(trace): RequestTrace,
    headers: HeaderMap,
    request_body: Body,
) -> Result<Response, Problem> {
    let tenant = headers.get("lms-tenant").and_then(|v| v.to_str().ok()).unwrap_or("").trim().to_owned();
    if tenant.is_empty() {
        return Err(Problem::bad_signature("missing Lms-Tenant header"));
    }
    let Some(secret) = state.config.webhook_secrets.get(&tenant) else {
        return Err(Problem::bad_signature(format!("no webhook secret is configured for tenant {tenant:?}")));
    };
    tracing::Span::current().record("tenant", tenant.as_str());
    body::format(&headers, false)?;
    let config = &state.config;
    let bytes = body::read(request_body, &headers, config.max_event_bytes, config.body_timeout()).await?;
    let signature = headers.get("lms-signature").and_then(|v| v.to_str().ok());
    verify(secret.expose().as_bytes(), signature, &bytes, Utc::now().timestamp(), config.webhook_tolerance_s)
        .map_err(Problem::bad_signature)?;
    state.admit(&tenant)?;

    let value: Value = serde_json::from_slice(&bytes).map_err(|e| Problem::bad_request(format!("malformed JSON: {e}")))?;
    let (webhook_id, event) = webhook_event(&value, &tenant).inspect_err(|_| state.metrics.count_events(0, 1, 0))?;
    if state.webhooks.contains(&tenant, &webhook_id) || accepted_before(&state, &tenant, &webhook_id).await {
        state.webhooks.insert(&tenant, &webhook_id);
        tracing::info!(webhook_id, event_id = %event.id, "webhook redelivered; already accepted");
        let body = WebhookAccepted { event_id: event.id, webhook_id, duplicate: true };
        return Ok((StatusCode::OK, Json(body)).into_response());
    }
    let event_id = event.id.clone();
    state.produce(vec![event], trace).await?;
    state.webhooks.insert(&tenant, &webhook_id);
    if let Some(store) = &state.webhook_store
        && let Err(error) = lms_state::webhooks::record(store, &tenant, &webhook_id, &event_id).await
    {
        tracing::warn!(%error, webhook_id, %event_id, "accepted webhook not recorded in the state store; another instance would produce a redelivery again");
    }
    let body = WebhookAccepted { event_id, webhook_id, duplicate: false };
    Ok((StatusCode::ACCEPTED, Json(body)).into_response())
}

/// Whether the state store knows this webhook as accepted (false without a store, and when
/// the store cannot answer: producing again is harmless, refusing the delivery is not).
async fn accepted_before(state: &AppState, tenant: &str, webhook_id: &str) -> bool {
    let Some(store) = &state.webhook_store else { return false };
    match lms_state::webhooks::accepted(store, tenant, webhook_id).await {
        Ok(known) => known,
        Err(error) => {
            tracing::warn!(%error, webhook_id, "cannot look the webhook up in the state store; producing it (same event id)");
            false
        }
    }
}

/// Deletes the state store's records of webhooks older than `webhook_retention_days`, at
/// start and then hourly, until the API's state is dropped.
pub(crate) async fn expire_hourly(state: std::sync::Weak<AppState>) {
    loop {
        let Some(s) = state.upgrade() else { return };
        if let Some(store) = &s.webhook_store {
            match lms_state::webhooks::expire(store, s.config.webhook_retention_days).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(deleted = n, "expired accepted-webhook records"),
                Err(error) => tracing::warn!(%error, "cannot expire accepted-webhook records; retrying in an hour"),
            }
        }
        drop(s);
        tokio::time::sleep(std::time::Duration::from_secs(3600)).await;
    }
}

/// Reads a webhook body into (webhook id, event); 422 with every error found.
fn webhook_event(value: &Value, tenant: &str) -> Result<(String, lms_events::Event), Problem> {
    let invalid = |errors: Vec<FieldError>| Problem::unprocessable("the webhook is invalid", errors);
    let Some(body) = value.as_object() else {
        return Err(invalid(vec![FieldError::new("", "must be an object")]));
    };
    let mut errors = Vec::new();
    let id = match body.get("id") {
        Some(Value::String(s)) if !s.is_empty() && s.chars().count() <= 128 => Some(s.clone()),
        Some(_) => {
            errors.push(FieldError::new("/id", "must be a string of 1 to 128 characters"));
            None
        }
        None => {
            errors.push(FieldError::new("/id", "the required field `id` is missing"));
            None
        }
    };
    const TYPES: [&str; 3] = ["payment.succeeded", "payment.refunded", "payment.failed"];
    match body.get("type").and_then(Value::as_str) {
        Some(t) if TYPES.contains(&t) => {}
        _ => errors.push(FieldError::new("/type", format!("must be one of {}", TYPES.map(|t| format!("{t:?}")).join(", ")))),
    }
    let created = match body.get("created").and_then(Value::as_i64).and_then(|s| DateTime::<Utc>::from_timestamp(s, 0)) {
        Some(t) => Some(t),
        None => {
            errors.push(FieldError::new("/created", "must be the event time as an integer of Unix seconds"));
            None
        }
    };
    if !body.get("data").is_some_and(Value::is_object) {
        errors.push(FieldError::new("/data", "must be an object"));
    }
    let (Some(id), Some(created), true) = (id, created, errors.is_empty()) else {
        return Err(invalid(errors));
    };
    let event = json!({
        "specversion": "1.0",
        "id": event_id(tenant, &id),
        "type": body["type"],
        "source": SOURCE,
        "time": created.to_rfc3339_opts(SecondsFormat::Secs, true),
        "data": body["data"],
    });
    match parse_client_event(&event, tenant) {
        Ok(event) => Ok((id, event)),
        Err(Rejection::Invalid(errors)) => Err(invalid(errors)),
        Err(Rejection::ForeignTenant { .. }) => Err(Problem::internal("unexpected tenant attribute")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures() {
        let body = br#"{"id":"evt_1"}"#;
        let now = 1_800_000_000;
        let header = sign(b"whsec", now, body);
        assert!(verify(b"whsec", Some(&header), body, now, 300).is_ok());
        assert!(verify(b"whsec", Some(&header), body, now + 300, 300).is_ok());
        assert!(verify(b"whsec", Some(&header), body, now + 301, 300).unwrap_err().contains("300 s"));
        assert!(verify(b"other", Some(&header), body, now, 300).unwrap_err().contains("does not match"));
        assert!(verify(b"whsec", Some(&header), br#"{"id":"evt_2"}"#, now, 300).is_err());
        assert!(verify(b"whsec", None, body, now, 300).is_err());
        assert!(verify(b"whsec", Some("v1=abcd"), body, now, 300).is_err());
        // A rotation: the second v1 matches.
        let (_, good) = header.split_once(",v1=").unwrap();
        let rotated = format!("t={now},v1={},v1={good}", "00".repeat(32));
        assert!(verify(b"whsec", Some(&rotated), body, now, 300).is_ok());
        // The timestamp is part of the signed message.
        let moved = header.replacen(&format!("t={now}"), &format!("t={}", now + 1), 1);
        assert!(verify(b"whsec", Some(&moved), body, now, 300).is_err());
    }

    #[test]
    fn bodies() {
        let good = json!({"id": "evt_1", "type": "payment.refunded", "created": 1_800_000_000, "livemode": true,
                          "data": {"payment_id": "pay_1", "amount_minor": 500, "currency": "EUR"}});
        let (id, event) = webhook_event(&good, "acme").unwrap();
        assert_eq!(id, "evt_1");
        assert_eq!(event.id, event_id("acme", "evt_1"));
        assert_ne!(event.id, event_id("globex", "evt_1"));
        assert_eq!(event.time.timestamp(), 1_800_000_000);
        assert_eq!(event.tenant, "acme");
        let bad = json!({"type": "payment.gifted", "created": "yesterday", "data": 1});
        let p = webhook_event(&bad, "acme").unwrap_err();
        let paths: Vec<_> = p.errors.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(paths, ["/id", "/type", "/created", "/data"]);
        let mut bad_data = good.clone();
        bad_data["data"]["amount_minor"] = json!(0);
        assert_eq!(webhook_event(&bad_data, "acme").unwrap_err().errors[0].path, "/data/amount_minor");
    }

    #[test]
    fn seen_is_bounded() {
        let seen = Seen::new(2);
        seen.insert("a", "1");
        seen.insert("a", "2");
        seen.insert("b", "1");
        assert!(!seen.contains("a", "1") && seen.contains("a", "2") && seen.contains("b", "1"));
    }
}
