//! The well-behaved client of `POST /v1/events` (CONTRACT.md, "Writes"): one batch is sent
//! again with the same body (so the same event ids: a repeat changes nothing downstream)
//! after 429 and 503, waiting the `Retry-After` the API gives, and after connection errors,
//! with back-off. Used by `lms generate --to-api` and by the test harness.

use std::time::{Duration, Instant};

use axum::body::Bytes;
use reqwest::StatusCode;
use serde_json::Value;

/// How long one batch is retried before [`PostError::GaveUp`].
pub const GIVE_UP_AFTER: Duration = Duration::from_secs(300);
/// The first back-off (connection errors, or an answer without `Retry-After`); it doubles
/// up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Why a batch is about to be sent again.
#[derive(Debug, thiserror::Error)]
pub enum Retry {
    /// The API answered 429 or 503.
    #[error("the API answered {0}")]
    Answered(StatusCode),
    /// The API could not be reached (or the connection broke).
    #[error("the API is unreachable: {0}")]
    Unreachable(#[source] reqwest::Error),
}

/// Why a batch was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    /// The API accepted the request but rejected events of it (202 with `rejected`).
    #[error("the API rejected {count} event(s): {detail}")]
    Rejected {
        /// How many.
        count: usize,
        /// The `rejected` list of the answer.
        detail: Value,
    },
    /// The API answered something not worth retrying.
    #[error("the API answered {status} to POST {url}: {body}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Where the batch went.
        url: String,
        /// The answer's body (a problem document).
        body: String,
    },
    /// The API did not accept the batch within [`GIVE_UP_AFTER`]; the last reason to retry.
    #[error("the API did not accept a batch within {secs} s of retries; last: {0}", secs = GIVE_UP_AFTER.as_secs())]
    GaveUp(Retry),
    /// The 202 answer could not be read.
    #[error("reading the API's answer: {0}")]
    Answer(#[source] reqwest::Error),
}

/// Posts one batch (a JSON array of events) to `url` with `token` until the API accepts
/// every event of it; `on_retry` hears of each retry and its wait before the wait.
pub async fn post_events(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: impl Into<Bytes>,
    mut on_retry: impl FnMut(&Retry, Duration),
) -> Result<(), PostError> {
    let body: Bytes = body.into();
    let deadline = Instant::now() + GIVE_UP_AFTER;
    let mut backoff = FIRST_BACKOFF;
    loop {
        let sent =
            http.post(url).bearer_auth(token).header(reqwest::header::CONTENT_TYPE, "application/json").body(body.clone()).send().await;
        let (wait, retry) = match sent {
            Ok(r) if r.status() == StatusCode::ACCEPTED => {
                let answer: Value = r.json().await.map_err(PostError::Answer)?;
                let count = answer["rejected"].as_array().map_or(0, Vec::len);
                if count > 0 {
                    return Err(PostError::Rejected { count, detail: answer["rejected"].clone() });
                }
                return Ok(());
            }
            Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS || r.status() == StatusCode::SERVICE_UNAVAILABLE => {
                let wait = r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map_or(backoff, Duration::from_secs);
                (wait, Retry::Answered(r.status()))
            }
            Ok(r) => {
                let status = r.status();
                let body = r.text().await.unwrap_or_default();
                return Err(PostError::Refused { status, url: url.to_owned(), body });
            }
            Err(e) => (backoff, Retry::Unreachable(e)),
        };
        if Instant::now() + wait >= deadline {
            return Err(PostError::GaveUp(retry));
        }
        on_retry(&retry, wait);
        tokio::time::sleep(wait).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;
    use axum::routing::post;

    use super::*;

    /// A server whose `POST /` answers with `answer(n, body)` for the n-th request (from 0).
    async fn serve(answer: fn(usize, Bytes) -> axum::response::Response) -> (String, Arc<AtomicUsize>) {
        let calls = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&calls);
        let app = Router::new().route(
            "/",
            post(move |body: Bytes| {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                async move { answer(n, body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let url = format!("http://{}/", listener.local_addr().expect("addr"));
        tokio::spawn(async move { axum::serve(listener, app).await });
        (url, calls)
    }

    fn busy() -> axum::response::Response {
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::RETRY_AFTER, "0".parse().expect("header"));
        (StatusCode::SERVICE_UNAVAILABLE, h, "busy").into_response()
    }

    #[tokio::test]
    async fn a_batch_is_sent_again_with_the_same_body_until_accepted() {
        let (url, calls) = serve(|n, body| {
            assert_eq!(&body[..], b"[1]", "every attempt carries the same body");
            if n < 2 { busy() } else { (StatusCode::ACCEPTED, r#"{"accepted": 1, "rejected": []}"#).into_response() }
        })
        .await;
        let mut retries = Vec::new();
        post_events(&reqwest::Client::new(), &url, "t", b"[1]".to_vec(), |why, wait| retries.push((why.to_string(), wait)))
            .await
            .expect("accepted on the third attempt");
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let answered = ("the API answered 503 Service Unavailable".to_owned(), Duration::ZERO);
        assert_eq!(retries, vec![answered.clone(), answered], "each retry is reported with the Retry-After wait");
    }

    #[tokio::test]
    async fn rejected_events_and_other_answers_are_errors_at_once() {
        let (url, calls) = serve(|_, _| (StatusCode::ACCEPTED, r#"{"accepted": 0, "rejected": [{"index": 0}]}"#).into_response()).await;
        let err = post_events(&reqwest::Client::new(), &url, "t", b"[1]".to_vec(), |_, _| panic!("no retry")).await.unwrap_err();
        assert!(matches!(err, PostError::Rejected { count: 1, .. }), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let (url, calls) = serve(|_, _| (StatusCode::BAD_REQUEST, "malformed").into_response()).await;
        let err = post_events(&reqwest::Client::new(), &url, "t", b"[1]".to_vec(), |_, _| panic!("no retry")).await.unwrap_err();
        assert!(matches!(&err, PostError::Refused { status: StatusCode::BAD_REQUEST, body, .. } if body == "malformed"), "{err}");
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
