//! `/api/pipelines`: the scheduled pipelines as `batchyard pipelines` shows them, for the
//! dashboard. `GET /api/pipelines` lists them with next fire time and last run,
//! `GET /api/pipelines/{name}/runs` is the history, and `POST /api/pipelines/{name}/run`
//! triggers one now, with the same only-new rule and exactly-once claim as a tick. A
//! tenant's tokens see only the pipelines that submit as that tenant.

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::http_error::{ApiError, ApiQuery};
use super::state::ApiState;
use crate::config::pipeline_spec::Pipeline;
use crate::scheduler::state::PipelineState;
use crate::scheduler::view::{history_rows, pipeline_rows, run_row, trigger_now};

fn pipelines_state(state: &ApiState) -> Result<&PipelineState, ApiError> {
    state.pipelines.as_ref().ok_or_else(|| {
        ApiError::invalid(
            "pipelines need redis; set BATCHYARD_REDIS_URL or [queue] redis_url and restart serve",
        )
        .with_status(StatusCode::SERVICE_UNAVAILABLE)
    })
}

fn find<'a>(state: &'a ApiState, caller: &Caller, name: &str) -> Result<&'a Pipeline, ApiError> {
    state
        .app
        .settings
        .pipelines
        .get(name)
        .filter(|p| caller.may_see(pipeline_tenant(p)))
        .ok_or_else(|| ApiError::not_found("pipeline", name))
}

/// The tenant a pipeline's batches belong to.
fn pipeline_tenant(pipeline: &Pipeline) -> &str {
    pipeline
        .tenant
        .as_deref()
        .unwrap_or(super::auth::DEFAULT_TENANT)
}

pub async fn list(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    if state.app.settings.pipelines.is_empty() {
        return Ok(Json(json!({ "pipelines": [] })));
    }
    let ps = pipelines_state(&state)?;
    let rows = pipeline_rows(&state.app, ps)
        .await
        .map_err(|e| ApiError::internal("cannot read the pipelines", &e))?;
    let settings = &state.app.settings.pipelines;
    let rows: Vec<Value> = rows
        .into_iter()
        .filter(|row| {
            row["name"]
                .as_str()
                .and_then(|n| settings.get(n))
                .is_some_and(|p| caller.may_see(pipeline_tenant(p)))
        })
        .collect();
    Ok(Json(json!({ "pipelines": rows })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunsQuery {
    limit: Option<u32>,
}

pub async fn runs(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
    ApiQuery(query): ApiQuery<RunsQuery>,
) -> Result<Json<Value>, ApiError> {
    find(&state, &caller, &name)?;
    let ps = pipelines_state(&state)?;
    let limit = query.limit.map_or(20, |l| l.clamp(1, 100));
    let runs = history_rows(&state.app, ps, &name, limit as usize)
        .await
        .map_err(|e| ApiError::internal("cannot read the pipeline's runs", &e))?;
    Ok(Json(json!({ "pipeline": name, "runs": runs })))
}

pub async fn run_now(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(name): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let pipeline = find(&state, &caller, &name)?.clone();
    let ps = pipelines_state(&state)?;
    let row = match trigger_now(&state.app, ps, &pipeline).await {
        Ok(record) => run_row(&state.app, &record).await,
        Err(e) => Err(e),
    }
    .map_err(|e| ApiError::internal("cannot run the pipeline", &e))?;
    Ok(Json(row))
}
