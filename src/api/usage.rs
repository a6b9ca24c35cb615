//! `GET /api/usage?since=&until=&tenant=`: batches, items and spend per tenant over a period
//! (see [`crate::usage`]). A tenant's token sees only its own line; the `default` tenant's see
//! every tenant, or one with `tenant=`.

use axum::extract::State;
use axum::{Extension, Json};
use batchyard_jobs::batch::now_secs;
use serde::Deserialize;
use serde_json::Value;

use super::auth::Caller;
use super::http_error::{ApiError, ApiQuery};
use super::state::ApiState;
use crate::usage::{MAX_RECORDS, Period, summarize};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    since: Option<String>,
    until: Option<String>,
    tenant: Option<String>,
}

pub async fn usage(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<UsageQuery>,
) -> Result<Json<Value>, ApiError> {
    let period =
        Period::parse(q.since.as_deref(), q.until.as_deref(), now_secs(), "").map_err(|e| {
            let param = if e.starts_with("until") {
                "until"
            } else {
                "since"
            };
            ApiError::invalid(e).with_param(param)
        })?;
    // One tenant's line (a tenant's token, or `tenant=`): read from that tenant's own index.
    let one = if caller.sees_all() {
        q.tenant.as_deref()
    } else {
        Some(&*caller.tenant)
    };
    let records = match one {
        Some(tenant) => state.app.ledger.list_tenant(tenant, MAX_RECORDS).await?,
        None => state.app.ledger.list(MAX_RECORDS).await?,
    };
    let truncated = records.len() >= MAX_RECORDS;
    let wanted = |t: &str| caller.may_see(t) && q.tenant.as_deref().is_none_or(|w| w == t);
    Ok(Json(summarize(&records, period, wanted, truncated).json()))
}
