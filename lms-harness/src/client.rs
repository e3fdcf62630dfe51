//! The HTTP client side of a run: tokens minted from the JWT secret, POSTs retried with the
//! same body on 429, 503 and connection errors, and JSON reads.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
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

/// Posts one batch until the API accepts it: 429 and 503 after `Retry-After`, connection
/// errors with back-off; the body (so the ids) stays the same.
pub async fn post(http: &reqwest::Client, url: &str, token: &str, body: Vec<u8>, retries: &AtomicU64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut backoff = Duration::from_millis(100);
    loop {
        let sent = http.post(url).bearer_auth(token).header("content-type", "application/json").body(body.clone()).send().await;
        let wait = match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                let answer: Value = r.json().await.context("reading the API's answer")?;
                let rejected = answer["rejected"].as_array().map_or(0, Vec::len);
                ensure!(rejected == 0, "the API rejected {rejected} generated event(s): {}", answer["rejected"]);
                return Ok(());
            }
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status() == StatusCode::SERVICE_UNAVAILABLE => r
                .headers()
                .get(reqwest::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(backoff, Duration::from_secs),
            Ok(r) => {
                let status = r.status();
                bail!("the API answered {status} to a POST: {}", r.text().await.unwrap_or_default());
            }
            Err(_) => backoff,
        };
        ensure!(Instant::now() + wait < deadline, "the API did not accept a batch within 5 minutes of retries");
        retries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

pub async fn get_json(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let r = http.get(url).bearer_auth(token).send().await.with_context(|| format!("GET {url}"))?;
    let status = r.status();
    let body: Value = r.json().await.with_context(|| format!("GET {url}: reading the answer"))?;
    ensure!(status == StatusCode::OK, "GET {url} answered {status}: {body}");
    Ok(body)
}

pub fn time(v: &Value) -> Option<DateTime<Utc>> {
    v.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok()).map(|t| t.to_utc())
}

pub async fn delete_json(http: &reqwest::Client, url: &str, token: &str) -> anyhow::Result<Value> {
    let r = http.delete(url).bearer_auth(token).send().await.with_context(|| format!("DELETE {url}"))?;
    let status = r.status();
    let body: Value = r.json().await.with_context(|| format!("DELETE {url}: reading the answer"))?;
    ensure!(status == StatusCode::OK, "DELETE {url} answered {status}: {body}");
    Ok(body)
}
