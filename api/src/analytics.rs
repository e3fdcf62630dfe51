//! The analytics read endpoints (`GET /v1/analytics/...` of CONTRACT.md) over an
//! [`AnalyticsStore`]: ClickHouse in production, the Parquet + DataFusion twin in the demo.
//!
//! Every endpoint needs `analytics:read` (or `admin`) and answers for the token's tenant only.
//! Parameters are parsed by [`lms_analytics::params`]; a refused parameter is a 400 whose
//! `errors` name each parameter and what is wrong with it. A store that cannot answer is a
//! 503 with `Retry-After`: the numbers are never guessed.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use lms_analytics::{AnalyticsStore, ParamError, StoreError, params};
use serde::Serialize;

use crate::auth::{Claims, scope};
use crate::problem::Problem;

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

async fn active_learners(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::series(&c.tenant, &q).map_err(param_problem)?;
    s.active_learners(&p).await.map(Json).map_err(store_problem)
}

async fn enrollments(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::series(&c.tenant, &q).map_err(param_problem)?;
    s.enrollments(&p).await.map(Json).map_err(store_problem)
}

async fn completions(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::series(&c.tenant, &q).map_err(param_problem)?;
    s.completions(&p).await.map(Json).map_err(store_problem)
}

async fn revenue(State(s): State<Store>, c: Claims, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::revenue(&c.tenant, &q).map_err(param_problem)?;
    s.revenue(&p).await.map(Json).map_err(store_problem)
}

async fn funnel(State(s): State<Store>, c: Claims, Path(course): Path<String>, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::funnel(&c.tenant, &course, &q).map_err(param_problem)?;
    s.funnel(&p).await.map(Json).map_err(store_problem)
}

async fn at_risk(State(s): State<Store>, c: Claims, Path(course): Path<String>, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::at_risk(&c.tenant, &course, &q, chrono::Utc::now()).map_err(param_problem)?;
    s.at_risk(&p).await.map(Json).map_err(store_problem)
}

async fn scores(State(s): State<Store>, c: Claims, Path(assessment): Path<String>, Query(q): Pairs) -> Answer<impl Serialize> {
    c.require(scope::ANALYTICS_READ)?;
    let p = params::scores(&c.tenant, &assessment, &q).map_err(param_problem)?;
    s.scores(&p).await.map(Json).map_err(store_problem)
}

/// 400 listing every refused parameter (`errors: [{param, message}]`).
fn param_problem(e: ParamError) -> Problem {
    let detail = e.to_string();
    Problem::bad_request(detail).with("errors", serde_json::to_value(&e.problems).unwrap_or_default())
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
