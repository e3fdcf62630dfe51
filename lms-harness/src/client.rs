//! The HTTP client side of a run: tokens minted from the JWT secret, POSTs retried with the
//! same body on 429, 503 and connection errors, and JSON reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context as _, ensure};
use api::auth::{Claims, sign_hs256};
use chrono::{DateTime, Utc};
use futures::StreamExt as _;
use lms_events::Event;
use reqwest::StatusCode;
use serde_json::Value;

/// A token signed with `secret`, valid for a day.
pub fn mint(secret: &str, sub: &str, tenant: &str, scope: &str) -> String {
    let exp = (Utc::now().timestamp() + 24 * 3600) as u64;
    sign_hs256(secret.as_bytes(), &Claims { sub: sub.to_owned(), tenant: tenant.to_owned(), scope: scope.to_owned(), exp })
}

/// POSTs `events` in batches of one tenant each, `concurrency` at a time.
pub async fn post_all(
    http: &reqwest::Client,
    base: &str,
    tokens: &BTreeMap<String, String>,
    events: &[&Event],
    batch_size: usize,
    concurrency: usize,
    retries: &AtomicU64,
) -> anyhow::Result<()> {
    let mut pending: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut batches: Vec<(String, Vec<u8>)> = Vec::new();
    for e in events {
        let batch = pending.entry(e.tenant.as_str()).or_default();
        batch.push(serde_json::to_value(e)?);
        if batch.len() >= batch_size {
            batches.push((e.tenant.clone(), serde_json::to_vec(&std::mem::take(batch))?));
        }
    }
    for (tenant, batch) in pending {
        if !batch.is_empty() {
            batches.push((tenant.to_owned(), serde_json::to_vec(&batch)?));
        }
    }
    let url = format!("{base}/v1/events");
    let mut sends = futures::stream::iter(batches)
        .map(|(tenant, body)| {
            let token = tokens.get(&tenant).cloned().unwrap_or_default();
            let url = url.clone();
            async move { post(http, &url, &token, body, retries).await }
        })
        .buffer_unordered(concurrency.max(1));
    while let Some(r) = sends.next().await {
        r?;
    }
    Ok(())
}

/// Posts one batch until the API accepts it ([`api::client::post_events`]), counting the
/// retries in `retries`.
pub async fn post(http: &reqwest::Client, url: &str, token: &str, body: Vec<u8>, retries: &AtomicU64) -> anyhow::Result<()> {
    api::client::post_events(http, url, token, body, |_, _| {
        retries.fetch_add(1, Ordering::Relaxed);
    })
    .await?;
    Ok(())
}

/// `GET url` with `token`; the JSON answer, or an error unless it is 200.
pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    json_answer(http.get(url), "GET", url, token).await
}

pub fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.to_utc())
}

/// `DELETE url` with `token`; the JSON answer, or an error unless it is 200.
pub async fn delete_json(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    json_answer(http.delete(url), "DELETE", url, token).await
}

async fn json_answer(request: reqwest::RequestBuilder, method: &str, url: &str, token: &str) -> anyhow::Result<Value> {
    let r = request.bearer_auth(token).send().await.with_context(|| format!("{method} {url}"))?;
    let status = r.status();
    // The text first: an answer that is not JSON (a proxy's error page) still shows its status.
    let text = r.text().await.with_context(|| format!("{method} {url}: reading the answer"))?;
    ensure!(status == StatusCode::OK, "{method} {url} answered {status}: {text}");
    serde_json::from_str(&text).with_context(|| format!("{method} {url}: the answer is not JSON: {text}"))
}
