//! The analytics read endpoints (`GET /v1/analytics/...` of CONTRACT.md) over an
//! [`AnalyticsStore`]: ClickHouse in production, the Parquet + DataFusion twin in the demo.
//!
//! Every endpoint needs `analytics:read` (or `admin`) and answers for the token's tenant only.
//! Parameters are parsed by [`params`] into the stores' typed queries; a refused parameter is a 400 whose
//! `errors` name each parameter and what is wrong with it. A store that cannot answer is a
//! 503 with `Retry-After`: the numbers are never guessed.

use std::sync::Arc;

use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use lms_analytics::{AnalyticsStore, StoreError};
use serde::Serialize;

pub mod params;

use crate::auth::{Claims, scope};
use crate::learners::InvalidParameter;
use crate::problem::{AccessProblems, PathParams, Problem};
use lms_analytics::{ActiveLearnersPoint, AtRiskLearner, CompletionsPoint, EnrollmentsPoint, Funnel, RevenuePoint, Scores};
use params::{ParamError, doc};

type Store = Arc<dyn AnalyticsStore>;
type Pairs = Query<Vec<(String, String)>>;
type Answer<T> = Result<Json<T>, Problem>;

/// The analytics routes over `store`, to [`crate::Api::merge`].
pub fn router(store: Store) -> Router {
    Router::new()
        .route("/v1/analytics/active-learners", get(active_learners))
        .route("/v1/analytics/enrollments", get(enrollments))
        .route("/v1/analytics/completions", get(completions))
        .route("/v1/analytics/revenue", get(revenue))
        .route("/v1/analytics/courses/{course_id}/funnel", get(funnel))
        .route("/v1/analytics/courses/{course_id}/at-risk", get(at_risk))
        .route("/v1/analytics/assessments/{assessment_id}/scores", get(scores))
        .with_state(store)
}

/// Distinct active learners per bucket (analytics:read)
#[utoipa::path(
    get,
    path = "/v1/analytics/active-learners",
    tag = "analytics",
    security(("bearer" = [])),
    params(doc::Series),
    responses((status = 200, description = "OK", body = Vec<ActiveLearnersPoint>), InvalidParameter, AccessProblems)
)]
pub(crate) async fn active_learners(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::series(&c.tenant, &q).map_err(|e| param_problem(e, &[]))?;
    s.active_learners(&p).await.map(Json).map_err(store_problem)
}

/// Enrollments and drops per bucket (analytics:read)
#[utoipa::path(
    get,
    path = "/v1/analytics/enrollments",
    tag = "analytics",
    security(("bearer" = [])),
    params(doc::Series),
    responses((status = 200, description = "OK", body = Vec<EnrollmentsPoint>), InvalidParameter, AccessProblems)
)]
pub(crate) async fn enrollments(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::series(&c.tenant, &q).map_err(|e| param_problem(e, &[]))?;
    s.enrollments(&p).await.map(Json).map_err(store_problem)
}

/// Course completions per bucket (analytics:read)
#[utoipa::path(
    get,
    path = "/v1/analytics/completions",
    tag = "analytics",
    security(("bearer" = [])),
    params(doc::Series),
    responses((status = 200, description = "OK", body = Vec<CompletionsPoint>), InvalidParameter, AccessProblems)
)]
pub(crate) async fn completions(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::series(&c.tenant, &q).map_err(|e| param_problem(e, &[]))?;
    s.completions(&p).await.map(Json).map_err(store_problem)
}

/// Gross, refunded and net revenue per bucket and currency (analytics:read)
#[utoipa::path(
    get,
    path = "/v1/analytics/revenue",
    tag = "analytics",
    security(("bearer" = [])),
    params(doc::Series, doc::Currency),
    responses((status = 200, description = "OK", body = Vec<RevenuePoint>), InvalidParameter, AccessProblems)
)]
pub(crate) async fn revenue(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::revenue(&c.tenant, &q).map_err(|e| param_problem(e, &[]))?;
    s.revenue(&p).await.map(Json).map_err(store_problem)
}

/// A course's funnel (analytics:read)
#[utoipa::path(
    get,
    path = "/v1/analytics/courses/{course_id}/funnel",
    tag = "analytics",
    security(("bearer" = [])),
    params(doc::CoursePath),
    responses((status = 200, description = "OK", body = Funnel), InvalidParameter, AccessProblems)
)]
pub(crate) async fn funnel(
    State(s): State<Store>,
    c: Claims,
    PathParams(course): PathParams<String>,
    Query(q): Pairs,
) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::funnel(&c.tenant, &course, &q).map_err(|e| param_problem(e, &["course_id"]))?;
    s.funnel(&p).await.map(Json).map_err(store_problem)
}

/// Inactive learners of a course, oldest activity first (analytics:read)
#[utoipa::path(
    get,
    path = "/v1/analytics/courses/{course_id}/at-risk",
    tag = "analytics",
    security(("bearer" = [])),
    params(doc::CoursePath, doc::AtRisk),
    responses((status = 200, description = "OK", body = Vec<AtRiskLearner>), InvalidParameter, AccessProblems)
)]
pub(crate) async fn at_risk(
    State(s): State<Store>,
    c: Claims,
    PathParams(course): PathParams<String>,
    Query(q): Pairs,
) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::at_risk(&c.tenant, &course, &q, chrono::Utc::now()).map_err(|e| param_problem(e, &["course_id"]))?;
    s.at_risk(&p).await.map(Json).map_err(store_problem)
}

/// Score statistics of an assessment (analytics:read)
#[utoipa::path(
    get,
    path = "/v1/analytics/assessments/{assessment_id}/scores",
    tag = "analytics",
    security(("bearer" = [])),
    params(doc::AssessmentPath, doc::Scores),
    responses((status = 200, description = "OK", body = Scores), InvalidParameter, AccessProblems)
)]
pub(crate) async fn scores(
    State(s): State<Store>,
    c: Claims,
    PathParams(assessment): PathParams<String>,
    Query(q): Pairs,
) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::scores(&c.tenant, &assessment, &q).map_err(|e| param_problem(e, &["assessment_id"]))?;
    s.scores(&p).await.map(Json).map_err(store_problem)
}

/// 400 listing every refused parameter: `errors: [{path, param, message}]`, where `path` is
/// the contract's JSON pointer, here into the request's parameters by where they are
/// (`/query/from`, `/path/course_id`; `/token/tenant` for the token's tenant), and `param`
/// the parameter's name.
fn param_problem(e: ParamError, path_params: &[&str]) -> Problem {
    let detail = e.to_string();
    let errors: Vec<serde_json::Value> = e
        .problems
        .into_iter()
        .map(|p| {
            let place = if p.param == "tenant" {
                "token"
            } else if path_params.contains(&p.param.as_str()) {
                "path"
            } else {
                "query"
            };
            let pointer = format!("/{place}/{}", p.param.replace('~', "~0").replace('/', "~1"));
            serde_json::json!({"path": pointer, "param": p.param, "message": p.message})
        })
        .collect();
    Problem::bad_request(detail).with("errors", errors)
}

/// 503 while the store cannot answer (it is retried by the client), 500 for a schema problem.
fn store_problem(e: StoreError) -> Problem {
    match e {
        StoreError::Schema(_) => {
            tracing::error!(error = %e, "analytics store schema problem");
            Problem::internal("the analytics store cannot answer")
        }
        _ => {
            tracing::warn!(error = %e, "analytics store unavailable for a read");
            Problem::unavailable("the analytics store is unavailable; retry shortly", 5)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::params::ParamProblem;

    use super::*;

    #[test]
    fn parameter_errors_carry_a_pointer_and_the_name() {
        let e = ParamError {
            problems: vec![
                ParamProblem { param: "course_id".into(), message: "too long".into() },
                ParamProblem { param: "a/b~c".into(), message: "unknown".into() },
            ],
        };
        let p = serde_json::to_value(param_problem(e, &["course_id"])).expect("json");
        assert_eq!(p["status"], 400);
        assert_eq!(
            p["errors"],
            serde_json::json!([
                {"path": "/path/course_id", "param": "course_id", "message": "too long"},
                {"path": "/query/a~1b~0c", "param": "a/b~c", "message": "unknown"}
            ])
        );
    }
}
