//! The notification endpoints served by the API over a real PostgreSQL store: the inbox
//! (list, unread filter, mark read), preferences GET/PUT, and learner isolation.

use std::time::Duration;

use lms_state::Store;
use serde_json::{Value, json};
use tests::kafka_brokers;

use crate::api_support::{TENANT, TestApi, answer, config, token_with};
use crate::support::fresh_postgres_db;

async fn serve(test: &str) -> (TestApi, Store) {
    let store = processors::open_store(&fresh_postgres_db(test).await, 4).await.expect("store");
    let router = api::notifications::router(store.clone());
    let api = TestApi::start_with(test, &kafka_brokers(), config(), |a| a.merge(router)).await;
    (api, store)
}

/// An inbox row as the dispatcher leaves it after the in-app delivery (`visible`), or
/// before it.
async fn notification(store: &Store, learner: &str, id: &str, created_at_us: i64, visible: bool) {
    sqlx::query(
        "INSERT INTO notifications (tenant, id, learner_id, category, source_key, source_event_id, title, body, state, event_at_us, created_at_us, visible_at_us) \
         VALUES ($1, $2, $3, 'achievement', $2, $2, $4, 'body', 'direct', $5, $5, $6)",
    )
    .bind(TENANT)
    .bind(id)
    .bind(learner)
    .bind(format!("title {id}"))
    .bind(created_at_us)
    .bind(visible.then_some(created_at_us + 1))
    .execute(store.pool())
    .await
    .expect("insert");
}

fn learner_token(learner: &str) -> String {
    token_with(TENANT, learner, "learner:read", 3600)
}

async fn get(api: &TestApi, path: &str, token: &str) -> (u16, Value) {
    let r = api.http.get(format!("{}{path}", api.url)).bearer_auth(token).send().await.expect("GET");
    let (status, _, body) = answer(r).await;
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_api_lists_filters_unread_and_marks_read() {
    let (api, store) = serve("notify-api-inbox").await;
    notification(&store, "ada", "n1", 1_790_000_000_000_000, true).await;
    notification(&store, "ada", "n2", 1_790_000_100_000_000, true).await;
    notification(&store, "ada", "n3", 1_790_000_200_000_000, false).await;
    notification(&store, "bob", "n4", 1_790_000_000_000_000, true).await;
    let ada = learner_token("ada");

    let (status, list) = get(&api, "/v1/learners/ada/notifications", &ada).await;
    assert_eq!(status, 200, "{list}");
    let ids: Vec<&str> = list.as_array().expect("array").iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["n2", "n1"], "newest first, only delivered ones");
    assert_eq!(list[0]["category"], "achievement");
    assert_eq!(list[0]["title"], "title n2");
    assert_eq!(list[0]["body"], "body");
    assert_eq!(list[0]["read_at"], Value::Null);
    assert!(list[0]["created_at"].as_str().is_some_and(|t| t.starts_with("2026-")), "{}", list[0]["created_at"]);

    let read = |id: &str, token: &str| api.post(&format!("/v1/learners/ada/notifications/{id}/read"), Some(token), &json!({}));
    assert_eq!(read("n1", &ada).send().await.expect("POST").status().as_u16(), 204);
    assert_eq!(read("n1", &ada).send().await.expect("POST").status().as_u16(), 204, "idempotent");
    let (status, _, problem) = answer(read("n4", &ada).send().await.expect("POST")).await;
    assert_eq!((status, problem["type"].as_str()), (404, Some("urn:lms:problem:not-found")), "bob's notification");
    let (_, unread) = get(&api, "/v1/learners/ada/notifications?unread_only=true", &ada).await;
    let ids: Vec<&str> = unread.as_array().expect("array").iter().filter_map(|n| n["id"].as_str()).collect();
    assert_eq!(ids, ["n2"]);
    let (_, all) = get(&api, "/v1/learners/ada/notifications", &ada).await;
    assert!(all[1]["read_at"].as_str().is_some(), "read_at is set: {all}");

    // Another learner: 403, reading or marking; an analyst may read, not mark.
    let bob = learner_token("bob");
    let (status, problem) = get(&api, "/v1/learners/ada/notifications", &bob).await;
    assert_eq!((status, problem["type"].as_str()), (403, Some("urn:lms:problem:forbidden")));
    assert_eq!(read("n2", &bob).send().await.expect("POST").status().as_u16(), 403);
    let analyst = token_with(TENANT, "svc", "analytics:read", 3600);
    assert_eq!(get(&api, "/v1/learners/ada/notifications", &analyst).await.0, 200);
    assert_eq!(read("n2", &analyst).send().await.expect("POST").status().as_u16(), 403);
    // Another tenant's token sees nothing of acme.
    let other = token_with("globex", "ada", "learner:read", 3600);
    assert_eq!(get(&api, "/v1/learners/ada/notifications", &other).await.1, json!([]));
    let r = api.http.get(format!("{}/v1/learners/ada/notifications", api.url)).send().await.expect("GET");
    assert_eq!(r.status().as_u16(), 401);
    store.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_api_reads_and_writes_preferences() {
    let (api, store) = serve("notify-api-prefs").await;
    let ada = learner_token("ada");
    let (status, defaults) = get(&api, "/v1/learners/ada/notification-preferences", &ada).await;
    assert_eq!(status, 200);
    assert_eq!(
        defaults,
        json!({"email": null, "locale": "en", "timezone": "UTC", "channels": {"in_app": true, "email": true, "webhook": true},
               "muted_categories": [], "quiet_hours": null, "digest": "off"})
    );

    let prefs = json!({"email": "ada@example.org", "locale": "de", "timezone": "Europe/Berlin",
                       "channels": {"in_app": true, "email": true, "webhook": false}, "muted_categories": ["milestone"],
                       "quiet_hours": {"start": "22:00", "end": "07:00"}, "digest": "daily"});
    let put = |body: &Value, token: &str| {
        api.http
            .put(format!("{}/v1/learners/ada/notification-preferences", api.url))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
    };
    let (status, _, echoed) = answer(put(&prefs, &ada).send().await.expect("PUT")).await;
    assert_eq!((status, &echoed), (200, &prefs));
    assert_eq!(get(&api, "/v1/learners/ada/notification-preferences", &ada).await.1, prefs);
    let tz: Option<String> = sqlx::query_scalar("SELECT timezone FROM learner_preferences WHERE tenant = $1 AND learner_id = 'ada'")
        .bind(TENANT)
        .fetch_one(store.pool())
        .await
        .expect("row");
    assert_eq!(tz.as_deref(), Some("Europe/Berlin"), "the time zone the achievements processor reads");

    let bad = json!({"timezone": "Mars/Olympus", "quiet_hours": {"start": "25:00", "end": "07:00"}, "email": "nope"});
    let (status, ct, problem) = answer(put(&bad, &ada).send().await.expect("PUT")).await;
    assert_eq!((status, ct.as_str()), (422, "application/problem+json"));
    let paths: Vec<&str> = problem["errors"].as_array().expect("errors").iter().filter_map(|e| e["path"].as_str()).collect();
    assert_eq!(paths, ["/email", "/timezone", "/quiet_hours/start"]);
    let (status, _, _) = answer(put(&json!({"digest": "weekly"}), &ada).send().await.expect("PUT")).await;
    assert_eq!(status, 422);
    let r = api
        .http
        .put(format!("{}/v1/learners/ada/notification-preferences", api.url))
        .bearer_auth(&ada)
        .body("{not json")
        .send()
        .await
        .expect("PUT");
    assert_eq!(r.status().as_u16(), 400);
    assert_eq!(get(&api, "/v1/learners/ada/notification-preferences", &ada).await.1, prefs, "refused writes change nothing");

    let bob = learner_token("bob");
    assert_eq!(get(&api, "/v1/learners/ada/notification-preferences", &bob).await.0, 403);
    assert_eq!(put(&prefs, &bob).send().await.expect("PUT").status().as_u16(), 403);
    tokio::time::timeout(Duration::from_secs(10), store.close()).await.expect("close");
}
