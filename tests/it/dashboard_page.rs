//! The built-in dashboard (`/dashboard`): self-contained (no other server referenced), and
//! in headless Chromium its charts show the data of a generated cohort, read through the
//! analytics endpoints (Parquet twin) and `/metrics` of a real write API.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use api::dashboard::{CourseHint, DashboardHints, TenantHints};
use chrono::Utc;
use lms_analytics::{AnalyticsStore, ParquetConfig, ParquetStore};
use lms_events::{CourseCompleted, Event, EventData, ProgressStatus, ProgressUpdated};
use lms_generator::{Cohort, CohortConfig, Tenant};
use tests::browser::{Visit, artifacts_dir, attribute_values, inner_text};
use tests::kafka_brokers;
use tokio_util::sync::CancellationToken;

use crate::api_support::{self, TestApi, answer};

const PANELS: [&str; 7] =
    ["panel-active-learners", "panel-enrollments", "panel-completions", "panel-funnel", "panel-revenue", "panel-scores", "panel-health"];

/// Serves `router` on a loopback port until the token is cancelled; returns its base URL.
async fn serve(router: axum::Router, shutdown: CancellationToken) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("address"));
    tokio::spawn(async move { axum::serve(listener, router).with_graceful_shutdown(shutdown.cancelled_owned()).await });
    url
}

#[tokio::test]
async fn the_page_is_self_contained_and_has_every_panel() {
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let url = serve(api::dashboard::router(), shutdown).await;
    let http = reqwest::Client::new();
    let page = http.get(format!("{url}/dashboard")).send().await.expect("GET /dashboard");
    assert_eq!(page.status(), 200);
    assert!(page.headers()["content-type"].to_str().unwrap_or("").starts_with("text/html"));
    let csp = page.headers()["content-security-policy"].to_str().unwrap_or("").to_owned();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let html = page.text().await.expect("body");
    for id in PANELS {
        assert!(html.contains(&format!("id=\"{id}\"")), "no panel {id}");
    }
    // Every referenced resource is on this server, and served.
    let mut refs = Vec::new();
    for attr in ["src=\"", "href=\""] {
        for part in html.split(attr).skip(1) {
            refs.push(part[..part.find('"').unwrap_or(part.len())].to_owned());
        }
    }
    assert!(refs.iter().any(|r| r.ends_with(".js")) && refs.iter().any(|r| r.ends_with(".css")), "{refs:?}");
    let mut bodies = vec![html.clone()];
    for r in &refs {
        assert!(r.starts_with('/') && !r.starts_with("//"), "{r} is not a local path");
        let resp = http.get(format!("{url}{r}")).send().await.expect("GET asset");
        if r.starts_with("/dashboard/") {
            assert_eq!(resp.status(), 200, "{r}");
            bodies.push(resp.text().await.expect("asset body"));
        }
    }
    for body in &bodies {
        assert!(!body.contains("http://") && !body.contains("https://"), "an asset names another server");
    }
}

/// `/dashboard/hints.json` names courses: like every read route it answers only a bearer
/// token with `analytics:read`, and only the hints of the token's tenant.
#[tokio::test]
async fn the_hints_answer_the_tokens_tenant_only() {
    let course = |id: &str| TenantHints {
        courses: vec![CourseHint { course_id: id.to_owned(), title: String::new(), assessments: vec![format!("{id}-quiz")] }],
    };
    let all = DashboardHints { tenants: [("acme".to_owned(), course("acme-101")), ("globex".to_owned(), course("globex-201"))].into() };
    let api = TestApi::start_with("hints", &kafka_brokers(), api_support::config(), {
        let all = all.clone();
        |a| a.merge(api::dashboard::router_with(all))
    })
    .await;
    let get = |token: Option<String>| {
        let mut r = api.http.get(format!("{}/dashboard/hints.json", api.url));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        r.send()
    };
    let (status, _, body) = answer(get(None).await.expect("GET")).await;
    assert_eq!(status, 401, "no token: {body}");
    let forged = api::auth::sign_hs256(
        b"another secret",
        &api::Claims {
            sub: "x".into(),
            tenant: "acme".into(),
            scope: "analytics:read".into(),
            exp: u64::try_from(Utc::now().timestamp() + 3600).unwrap_or(u64::MAX),
        },
    );
    let (status, _, body) = answer(get(Some(forged)).await.expect("GET")).await;
    assert_eq!(status, 401, "a token of another secret: {body}");
    let (status, _, body) = answer(get(Some(api_support::token("events:write"))).await.expect("GET")).await;
    assert_eq!(status, 403, "a token without analytics:read: {body}");
    for tenant in ["acme", "globex"] {
        let token = api_support::token_with(tenant, "viewer", "analytics:read", 3600);
        let (status, _, body) = answer(get(Some(token)).await.expect("GET")).await;
        assert_eq!(status, 200, "{body}");
        let hints: DashboardHints = serde_json::from_value(body).expect("hints JSON");
        assert_eq!(hints.tenants.keys().collect::<Vec<_>>(), [tenant], "only the token's tenant");
        assert_eq!(hints.tenants[tenant], all.tenants[tenant]);
    }
    let token = api_support::token_with("initech", "viewer", "analytics:read", 3600);
    let (status, _, body) = answer(get(Some(token)).await.expect("GET")).await;
    assert_eq!((status, body), (200, serde_json::json!({"tenants": {}})), "a tenant without hints gets none");
}

/// The selector hints for a generated catalog.
fn hints(tenants: &[Tenant]) -> DashboardHints {
    DashboardHints {
        tenants: tenants
            .iter()
            .map(|t| {
                let courses = t
                    .courses
                    .iter()
                    .map(|c| CourseHint { course_id: c.course_id.clone(), title: c.title.clone(), assessments: c.assessment_ids() })
                    .collect();
                (t.name.clone(), TenantHints { courses })
            })
            .collect(),
    }
}

/// What the progress processor would derive from the cohort, enough for the completions
/// and funnel endpoints: `progress.updated` after every lesson completion and
/// `course.completed` when a learner has every lesson of the highest version.
fn derived(events: &[Event]) -> Vec<Event> {
    let mut courses: HashMap<(&str, &str), (u32, HashSet<&str>)> = HashMap::new();
    let mut done: HashMap<(&str, &str, &str), HashSet<&str>> = HashMap::new();
    let mut completed = HashSet::new();
    let mut out = Vec::new();
    for e in events {
        match &e.data {
            EventData::CoursePublished(c) => {
                let entry = courses.entry((&e.tenant, &c.course_id)).or_insert((0, HashSet::new()));
                if c.version > entry.0 {
                    *entry = (c.version, c.lesson_ids().collect());
                }
            }
            EventData::LessonCompleted(l) => {
                let Some((version, lessons)) = courses.get(&(e.tenant.as_str(), l.course_id.as_str())) else { continue };
                let key = (e.tenant.as_str(), l.course_id.as_str(), l.learner_id.as_str());
                let mine = done.entry(key).or_default();
                mine.insert(&l.lesson_id);
                let n = mine.intersection(lessons).count() as u32;
                let total = lessons.len() as u32;
                let complete = n == total;
                let progress = ProgressUpdated {
                    learner_id: l.learner_id.clone(),
                    course_id: l.course_id.clone(),
                    course_version: *version,
                    lessons_completed: n,
                    lessons_total: total,
                    percent_complete: (1000.0 * f64::from(n) / f64::from(total)).round() / 10.0,
                    status: if complete { ProgressStatus::Completed } else { ProgressStatus::InProgress },
                    time_spent_s: 0.0,
                    last_activity_at: Some(e.time),
                    completed_at: complete.then_some(e.time),
                    revision: u64::try_from(e.time.timestamp_micros()).unwrap_or(1),
                };
                out.push(Event::derived(&e.tenant, "test-oracle", e.time, EventData::ProgressUpdated(progress)));
                if complete && completed.insert(key) {
                    let done = CourseCompleted {
                        learner_id: l.learner_id.clone(),
                        course_id: l.course_id.clone(),
                        course_version: *version,
                        completed_at: e.time,
                    };
                    out.push(Event::derived(&e.tenant, "test-oracle", e.time, EventData::CourseCompleted(done)));
                }
            }
            _ => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_dashboard_shows_a_generated_cohort_in_chromium() {
    // The analytics twin, filled with a cohort of the last four weeks and what the
    // processors would derive from it.
    let dir = std::env::temp_dir().join(format!("lms-dashboard-{}", uuid::Uuid::new_v4().simple()));
    let store = ParquetStore::open(ParquetConfig::new(&dir)).await.expect("open the twin");
    store.migrate().await.expect("migrate");
    let config = CohortConfig {
        tenant_names: vec![api_support::TENANT.to_owned()],
        courses: 3,
        learners: 80,
        weeks: 4,
        now: Utc::now(),
        ..CohortConfig::new(21)
    };
    let mut cohort = Cohort::new(config).expect("cohort");
    let events: Vec<Event> = cohort.by_ref().collect();
    let hints = hints(cohort.tenants());
    let derived = derived(&events);
    assert!(derived.iter().any(|e| matches!(e.data, EventData::CourseCompleted(_))), "the cohort has completions");
    let all: Vec<&Event> = events.iter().chain(&derived).collect();
    for chunk in all.chunks(5000) {
        store.insert(chunk).await.expect("insert");
    }
    let store: Arc<dyn AnalyticsStore> = Arc::new(store);

    // The write API with the dashboard and the analytics routes; the cohort goes through
    // its intake too, so that /metrics has figures.
    let api = TestApi::start_with("dashboard", &kafka_brokers(), api_support::config(), |a| {
        a.merge(api::dashboard::router_with(hints)).merge(api::analytics::router(store.clone()))
    })
    .await;
    let write = api_support::token("events:write");
    for chunk in events.chunks(1000) {
        let body = serde_json::to_value(chunk).expect("json");
        let (status, _, answer) = answer(api.post("/v1/events", Some(&write), &body).send().await.expect("POST")).await;
        assert_eq!(status, 202, "{answer}");
    }

    let read = api_support::token("analytics:read");
    let url = format!("{}/dashboard?refresh=2#token={read}", api.url);
    let visit = Visit::default();
    let dom = {
        let (visit, url) = (visit.clone(), url.clone());
        tokio::task::spawn_blocking(move || visit.dump_dom(&url)).await.expect("join")
    };
    let shot = artifacts_dir().join("dashboard.png");
    {
        let (visit, url, shot) = (visit.clone(), url.clone(), shot.clone());
        tokio::task::spawn_blocking(move || visit.screenshot(&url, &shot)).await.expect("join");
    }
    std::fs::write(artifacts_dir().join("dashboard.html"), &dom).expect("save the DOM");

    assert!(
        !attribute_values(&dom, "id=\"message\"", "hidden").is_empty(),
        "the page shows a message: {:?}",
        inner_text(&dom, "id=\"message\"")
    );
    for chart in [
        "chart-active-learners",
        "chart-enrollments",
        "chart-completions",
        "chart-revenue",
        "chart-funnel",
        "chart-scores",
        "health-rates",
        "health-lag",
    ] {
        let points = attribute_values(&dom, &format!("id=\"{chart}\""), "data-points");
        let n: u64 = points.first().and_then(|p| p.parse().ok()).unwrap_or(0);
        if chart == "health-lag" {
            // No consumer group runs in this process: the chart says so.
            assert_eq!(n, 0, "{chart}");
            continue;
        }
        assert!(n > 0, "chart {chart} has no data (data-points {points:?}); DOM saved in {}", artifacts_dir().display());
    }
    assert!(dom.matches("<title>").count() > 50, "charts carry a <title> per bar or point");
    let accepted = events.len().to_string();
    assert!(dom.replace(',', "").contains(&format!(">{accepted}<")), "the health table shows the {accepted} events accepted by the API");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_explains_a_missing_or_expired_token() {
    let shutdown = CancellationToken::new();
    let _stop = shutdown.clone().drop_guard();
    let url = serve(api::dashboard::router(), shutdown).await;
    let visit = Visit { virtual_time_budget_ms: 3000, ..Visit::default() };
    let expired = api_support::token_with(api_support::TENANT, "viewer", "analytics:read", -3600);
    for (fragment, expect) in
        [("", "No token"), (format!("#token={expired}").as_str(), "The token expired")].map(|(f, e)| (f.to_owned(), e))
    {
        let page = format!("{url}/dashboard{fragment}");
        let v = visit.clone();
        let dom = tokio::task::spawn_blocking(move || v.dump_dom(&page)).await.expect("join");
        let message = inner_text(&dom, "id=\"message\"").unwrap_or_default();
        assert!(attribute_values(&dom, "id=\"message\"", "hidden").is_empty(), "the message is hidden: {message}");
        assert!(message.contains(expect), "{fragment:?}: message {message:?} does not say {expect:?}");
    }
}
