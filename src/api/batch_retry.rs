//! `POST /api/batches/{id}/retry`: the dashboard's replay button, the same operation as
//! `batchyard retry` (failed items of a finished batch re-enqueued, files rewritten).

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::{Extension, Json};
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::http_error::{ApiError, ApiJson};
use super::state::ApiState;
use crate::error::{ReplayBusy, UsageError};
use crate::retry_cancel::{RetryFilter, retry};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryBody {
    /// Only failures with this error code.
    code: Option<String>,
    /// Pin the replayed items to this configured model.
    model: Option<String>,
    /// What the replay may spend on top of what the batch has spent.
    budget_usd: Option<f64>,
}

pub async fn retry_batch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
    ApiJson(body): ApiJson<RetryBody>,
) -> Result<Json<Value>, ApiError> {
    if !super::files::key_safe(&id) || !super::tenancy::may_see_batch(&state, &caller, &id).await? {
        return Err(ApiError::not_found("batch", &id));
    }
    let filter = RetryFilter {
        code: body.code,
        model: body.model,
        budget_usd: body.budget_usd,
    };
    match retry(&state.app, &id, &filter).await {
        Ok(replayed) => Ok(Json(json!({
            "id": id,
            "status": replayed.record.state.as_str(),
            "retried": replayed.retried,
            "not_replayable": replayed.not_replayable,
            "replay_id": replayed.replay_id,
        }))),
        Err(e) if e.downcast_ref::<ReplayBusy>().is_some() => {
            Err(ApiError::invalid(e.to_string()).with_status(StatusCode::CONFLICT))
        }
        Err(e) => match e.downcast_ref::<UsageError>() {
            Some(UsageError(message)) if message.contains("was not found") => {
                Err(ApiError::not_found("batch", &id))
            }
            Some(UsageError(message)) => {
                Err(ApiError::invalid(message.clone()).with_status(StatusCode::BAD_REQUEST))
            }
            None => Err(ApiError::internal("cannot replay the batch", &e)),
        },
    }
}
