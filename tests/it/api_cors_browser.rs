//! Browser clients in a real browser: headless Chromium loads a page from another loopback
//! origin that posts an event and reads a learner's progress from `lms api` with a bearer
//! token, as learning content does. From an origin in `cors_allowed_origins` both calls
//! succeed (the preflight is answered); from another origin the browser refuses both.

use std::time::Duration;

use lms_events::{EventType, examples};
use serde_json::json;
use tests::browser::{Visit, inner_text};

use crate::api_support::{TENANT, token, token_with};
use crate::security_matrix::Pipeline;

/// The page: two cross-origin calls, their outcome written into `#result`.
fn page(api: &str, write: &str, read: &str) -> String {
    let mut event = examples::client_json(EventType::LessonCompleted);
    event["id"] = json!(uuid::Uuid::new_v4().to_string());
    format!(
        r#"<!doctype html><html><body><pre id="result">pending</pre><script>
(async () => {{
  const out = {{}};
  try {{
    const r = await fetch("{api}/v1/events", {{method: "POST", headers: {{"authorization": "Bearer {write}", "content-type": "application/json"}}, body: JSON.stringify({event})}});
    out.post = r.status;
  }} catch (e) {{ out.post = "refused"; }}
  try {{
    const r = await fetch("{api}/v1/learners/ada/progress", {{headers: {{"authorization": "Bearer {read}"}}}});
    out.read = r.status;
    out.request_id = r.headers.get("x-request-id") !== null;
  }} catch (e) {{ out.read = "refused"; }}
  document.getElementById("result").textContent = JSON.stringify(out);
}})();
</script></body></html>"#
    )
}

/// Serves `html` at `/` on a fresh loopback port; returns the origin.
async fn serve_page(html: String) -> String {
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(html) }));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let origin = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, app).await });
    origin
}

async fn visit(origin: &str) -> String {
    let url = format!("{origin}/");
    let dom = tokio::task::spawn_blocking(move || Visit::default().dump_dom(&url)).await.expect("chromium");
    inner_text(&dom, "id=\"result\"").unwrap_or_else(|| panic!("no #result in {dom}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_cors_a_page_of_a_configured_origin_posts_and_reads_in_chromium() {
    // The page's origin must be known before the API starts: bind it first.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let allowed_port = listener.local_addr().expect("address").port();
    drop(listener);
    let allowed = format!("http://127.0.0.1:{allowed_port}");
    let p = Pipeline::start("api_cors_browser", &[], &[("LMS_API__CORS_ALLOWED_ORIGINS", format!("[{allowed}]"))]).await;
    let html = page(&p.base, &token("events:write"), &token_with(TENANT, "ada", "learner:read", 3600));

    let app = axum::Router::new().route(
        "/",
        axum::routing::get({
            let html = html.clone();
            move || async move { axum::response::Html(html) }
        }),
    );
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", allowed_port)).await.expect("bind the allowed origin's port");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let other = serve_page(html).await;

    let result = tokio::time::timeout(Duration::from_secs(120), visit(&allowed)).await.expect("chromium in time");
    assert_eq!(result, r#"{"post":202,"read":200,"request_id":true}"#, "from the configured origin {allowed} (the request id exposed)");
    let result = tokio::time::timeout(Duration::from_secs(120), visit(&other)).await.expect("chromium in time");
    assert_eq!(result, r#"{"post":"refused","read":"refused"}"#, "from {other}, not configured");
}
