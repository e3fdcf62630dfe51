//! The built-in dashboard page: `GET /dashboard`, plain HTML, CSS and JavaScript compiled
//! into the binary (`api/assets/`), charts drawn as SVG by the page itself. No build step,
//! no external resource, no network beyond this server.
//!
//! | route | what |
//! |---|---|
//! | `GET /dashboard` | the page |
//! | `GET /dashboard/dashboard.js`, `GET /dashboard/dashboard.css` | its script and style |
//! | `GET /dashboard/hints.json` | the course and assessment ids of the token's tenant to offer in the selectors (bearer token with `analytics:read`) |
//!
//! The page reads the analytics endpoints (`/v1/analytics/...`, scope `analytics:read`) with
//! the token given in the URL fragment, `/dashboard#token=<JWT>` (the fragment never reaches
//! a server; the page keeps it in `sessionStorage`), and the pipeline's health from
//! `/metrics` (`lms_api_events_total`, `lms_bus_produced_records_total`,
//! `lms_bus_processed_events_total`, `lms_bus_consumer_lag_records`). It refreshes every five
//! seconds (`?refresh=<s>`). The analytics API has no list of courses, so the course and
//! assessment selectors offer the ids of [`DashboardHints`] (the demo passes its generated
//! catalog), those of `?course=<id>&assessment=<id>` query parameters, and any id typed in.
//!
//! The page and its assets need no token: they hold no data, every figure comes from
//! authenticated endpoints. `hints.json` is one of them: it names courses, so it takes the
//! bearer token of the analytics endpoints (scope `analytics:read`) and answers the token's
//! tenant's hints only, like every read route scoped by the token's tenant. Responses forbid
//! loading anything from elsewhere (`Content-Security-Policy`).

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde::{Deserialize, Serialize};

use crate::auth::{Claims, scope};
use crate::problem::Problem;

const HTML: &str = include_str!("../assets/dashboard.html");
const JS: &str = include_str!("../assets/dashboard.js");
const CSS: &str = include_str!("../assets/dashboard.css");

/// Nothing but this server: scripts, styles, images and requests.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Course and assessment ids the page offers in its selectors, per tenant (the page shows
/// the token's tenant's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardHints {
    /// Tenant name → what to offer.
    pub tenants: BTreeMap<String, TenantHints>,
}

/// What the selectors offer for one tenant.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TenantHints {
    /// Courses, in the order to offer them (the first is selected).
    pub courses: Vec<CourseHint>,
}

/// One course of the selector.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CourseHint {
    /// The course id.
    pub course_id: String,
    /// The title to show next to the id (empty: the id alone).
    pub title: String,
    /// Assessment ids of the course, for the score-distribution selector.
    pub assessments: Vec<String>,
}

/// The dashboard routes, without hints: the selectors offer only ids from the query string
/// and ids typed in.
pub fn router() -> Router {
    router_with(DashboardHints::default())
}

/// The dashboard routes, offering `hints` in the course and assessment selectors.
///
/// `hints.json` authenticates with [`Claims`], so the router must be merged into the
/// [`crate::Api`] (which provides the authenticator).
pub fn router_with(hints: DashboardHints) -> Router {
    Router::new()
        .route("/dashboard", get(|| async { asset("text/html; charset=utf-8", HTML) }))
        .route("/dashboard/", get(|| async { asset("text/html; charset=utf-8", HTML) }))
        .route("/dashboard/dashboard.js", get(|| async { asset("text/javascript; charset=utf-8", JS) }))
        .route("/dashboard/dashboard.css", get(|| async { asset("text/css; charset=utf-8", CSS) }))
        .route("/dashboard/hints.json", get(hints_json))
        .with_state(Arc::new(hints))
}

/// The hints of the token's tenant only (an empty map when it has none).
async fn hints_json(State(hints): State<Arc<DashboardHints>>, claims: Claims) -> Result<Response, Problem> {
    claims.require(scope::ANALYTICS_READ)?;
    let tenants = hints.tenants.get(&claims.tenant).map(|t| (claims.tenant.clone(), t.clone())).into_iter().collect();
    let mut r = axum::Json(DashboardHints { tenants }).into_response();
    r.headers_mut().insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(r)
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    let mut r = body.into_response();
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(HeaderName::from_static("content-security-policy"), HeaderValue::from_static(CSP));
    h.insert(HeaderName::from_static("x-content-type-options"), HeaderValue::from_static("nosniff"));
    h.insert(HeaderName::from_static("referrer-policy"), HeaderValue::from_static("no-referrer"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_assets_are_local_and_name_every_panel() {
        for text in [HTML, JS, CSS] {
            assert!(!text.contains("http://") && !text.contains("https://"), "an asset refers to another server");
        }
        for id in [
            "panel-active-learners",
            "panel-enrollments",
            "panel-completions",
            "panel-funnel",
            "panel-revenue",
            "panel-scores",
            "panel-health",
        ] {
            assert!(HTML.contains(&format!("id=\"{id}\"")), "no panel {id}");
        }
    }
}
