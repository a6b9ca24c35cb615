//! `/api/*`: batchyard's own read-only views for dashboards, beside OpenAI's `/v1`.
//!
//! Every answer is built from what is cheap to read: the ledger record, the queue's counts,
//! the health store, and `manifest.json` once a batch is finished. Nothing here lists a
//! batch's result objects, so a dashboard polling every few seconds costs Redis and storage
//! a handful of reads per request.
//!
//! - [`history`]: the last hour of queue depth, sampled by `serve` (kept in Redis too).
//! - [`summary`]: a batch's progress, rate and ETA from its ledger record.

pub mod history;
pub mod summary;

use std::collections::BTreeMap;

use axum::extract::{Path as UrlPath, State};
use axum::{Extension, Json};
use batchyard_jobs::batch::now_secs;
use batchyard_jobs::queue::QueueDepth;
use batchyard_workers::call::health::ModelState;
use serde::Deserialize;
use serde_json::{Value, json};

use super::auth::Caller;
use super::http_error::{ApiError, ApiQuery};
use super::state::ApiState;

pub use history::QueueHistory;

/// Dead letters read per batch view: the newest ones, enough for a dashboard's counts
/// without reading a long-lived dead-letter set whole.
const DEAD_SCAN: usize = 500;
const DEFAULT_LIMIT: usize = 20;
const MAX_LIMIT: usize = 100;

fn queue_json(name: &str, d: QueueDepth) -> Value {
    json!({
        "name": name,
        "pending": d.pending,
        "in_flight": d.in_flight,
        "delayed": d.delayed,
        "dead": d.dead,
        // Everything still waiting to run, now or after a retry delay.
        "total_pending": d.pending + d.delayed,
    })
}

/// `GET /api/queues`: the exact counts of each queue, read now.
pub async fn queues(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
) -> Result<Json<Value>, ApiError> {
    let queue = &state.app.queue;
    let depth = queue.depth().await?;
    let shares = crate::share_view::read(&state.app).await;
    // A tenant sees its own share of the whole, not who else shares the deployment.
    let tenants: Vec<Value> = crate::share_view::tenants_json(&shares)
        .into_iter()
        .filter(|t| t["tenant"].as_str().is_some_and(|n| caller.may_see(n)))
        .collect();
    Ok(Json(json!({
        "queues": [queue_json(queue.name(), depth)],
        "tenants": tenants,
        "share_window_secs": shares.window_secs,
        "sampled_at": now_secs(),
    })))
}

/// `GET /api/queues/history`: the samples of the last hour, oldest first.
pub async fn queue_history(State(state): State<ApiState>) -> Json<Value> {
    Json(json!({
        "interval_secs": history::EVERY.as_secs(),
        "points": state.history.read().await,
    }))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    limit: Option<usize>,
}

/// `GET /api/batches?limit=N`: summaries of the newest batches, newest first.
pub async fn batches(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_LIMIT}, not {limit}"
        ))
        .with_param("limit"));
    }
    let now = now_secs();
    let (records, _) = super::tenancy::visible_records(&state, &caller, limit).await?;
    let data: Vec<Value> = records
        .iter()
        .take(limit)
        .map(|r| summary::summary(r, now))
        .collect();
    Ok(Json(json!({ "data": data })))
}

/// `GET /api/batches/{id}`: the summary, spend by model and errors by code (final from the
/// manifest once the batch is finished; `partial: true` and empty while it runs), the
/// batch's dead letters by code, and its offload lane (`offload`, with a deadline).
pub async fn batch(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    super::batches::check_batch_id(&id)?;
    let Some(record) = super::tenancy::visible_record(&state, &caller, &id).await? else {
        return Err(ApiError::not_found("batch", &id));
    };
    let manifest = if record.state.is_terminal() {
        super::batches::read_manifest(&state, &id).await?
    } else {
        None
    };
    // A batch without a manifest that has ended was refused before it ran (its input failed
    // validation): the API's record says why.
    let refusal = if record.state.is_terminal() && manifest.is_none() {
        super::batches::load_api(&state, &id)
            .await?
            .map(|a| a.errors)
            .unwrap_or_default()
    } else {
        Vec::new()
    };
    let (spend, errors) = manifest.as_ref().map_or_else(
        || (json!({}), json!(refusal_counts(&refusal))),
        |m| (m["spend_by_model"].clone(), m["errors_by_code"].clone()),
    );
    let letters = state.app.queue.dead_letters(DEAD_SCAN).await?;
    let mut dead: BTreeMap<&str, u64> = BTreeMap::new();
    for letter in letters.iter().filter(|l| l.job.batch_id == id) {
        *dead.entry(letter.code.as_str()).or_default() += 1;
    }
    let mut out = summary::summary(&record, now_secs());
    if let Value::Object(fields) = &mut out {
        fields.insert("spend_by_model".into(), spend);
        fields.insert("errors_by_code".into(), errors);
        // Partial only while the batch runs: an ended batch has nothing more to report.
        fields.insert(
            "partial".into(),
            Value::Bool(manifest.is_none() && !record.state.is_terminal()),
        );
        // Why it failed as a whole: a refused input, else the ledger's reason (a submit cut
        // off, results lost).
        let reason = refusal_reason(&refusal).or_else(|| {
            record
                .failure
                .as_ref()
                .map(|f| format!("{}: {}", f.code, f.message))
        });
        fields.insert("reason".into(), json!(reason));
        // What a running batch's queued items wait for (paused or cooling models).
        let waits = if record.state.is_terminal() {
            Vec::new()
        } else {
            crate::batch_view::waiting_for(&state.app).await
        };
        fields.insert("waiting_for".into(), json!(waits));
        fields.insert(
            "errors".into(),
            json!(refusal.iter().take(REFUSAL_ERRORS).collect::<Vec<_>>()),
        );
        // The offload lane of a batch with a deadline (`null` without one).
        fields.insert(
            "offload".into(),
            json!(crate::batch_view::lane(&state.app, &record).await),
        );
        // Its share of the workers (tenant, priority, dispatched in the last minute, target).
        let shares = crate::share_view::read(&state.app).await;
        fields.insert(
            "share".into(),
            crate::share_view::batch_json(&shares, &record),
        );
        fields.insert("dead_letters_by_code".into(), json!(dead));
        fields.insert("dead_letters_scanned".into(), json!(letters.len()));
    }
    Ok(Json(out))
}

/// Errors of a refused batch shown in its detail view.
const REFUSAL_ERRORS: usize = 20;

/// Refusal errors by code. The API keeps the first few bad lines and one "and N more" entry
/// (see `batches::create`), which stands for N lines.
fn refusal_counts(errors: &[super::batches::BatchErrorItem]) -> BTreeMap<String, u64> {
    let mut counts = BTreeMap::new();
    for e in errors {
        let more = e
            .message
            .strip_prefix("and ")
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse::<u64>().ok())
            .filter(|_| e.line.is_none());
        *counts.entry(e.code.clone()).or_default() += more.unwrap_or(1);
    }
    counts
}

/// One line saying why a batch was refused: the first error, and how many lines were bad.
fn refusal_reason(errors: &[super::batches::BatchErrorItem]) -> Option<String> {
    let first = errors.first()?;
    let total: u64 = refusal_counts(errors).values().sum();
    let at = first
        .line
        .map(|l| format!("line {l}: "))
        .unwrap_or_default();
    let more = if total > 1 {
        format!(" (and {} more)", total - 1)
    } else {
        String::new()
    };
    Some(format!(
        "the input was refused ({}): {at}{}{more}",
        first.code, first.message
    ))
}

/// The three states a dashboard shows, the reason, and until when (Unix milliseconds).
/// Half-open (the cooldown is over and one probe call is testing the model) still keeps
/// other calls away, so it shows as cooling down.
fn health_view(state: &ModelState) -> (&'static str, Option<String>, Option<u64>) {
    match state {
        ModelState::Healthy => ("healthy", None, None),
        ModelState::CoolingDown { until_ms } => (
            "cooling_down",
            Some("repeated transient failures opened the breaker".into()),
            Some(*until_ms),
        ),
        ModelState::HalfOpen => (
            "cooling_down",
            Some("cooldown over; one probe call is testing the model".into()),
            None,
        ),
        ModelState::Paused { reason, .. } => ("paused", Some(reason.clone()), None),
    }
}

/// `GET /api/models`: every configured model with its live health and prices, by tier.
pub async fn models(State(state): State<ApiState>) -> Result<Json<Value>, ApiError> {
    let mut specs: Vec<_> = state.app.settings.catalog.models().collect();
    specs.sort_by(|a, b| a.tier.cmp(&b.tier).then(a.key.cmp(&b.key)));
    let mut out = Vec::with_capacity(specs.len());
    for m in specs {
        let health = state
            .app
            .health
            .state(&m.key)
            .await
            .map_err(|e| ApiError::internal("the model health store failed", &e))?;
        let (name, reason, until_ms) = health_view(&health);
        out.push(json!({
            "model": m.key,
            "provider": m.provider,
            "name": m.name,
            "tier": m.tier,
            "state": name,
            "breaker": health.name(),
            "reason": reason,
            "until_ms": until_ms,
            "input_usd_per_mtok": m.input_usd_per_mtok,
            "output_usd_per_mtok": m.output_usd_per_mtok,
            "cached_input_usd_per_mtok": m.cached_input_usd_per_mtok,
            "cache_write_usd_per_mtok": m.cache_write_usd_per_mtok,
        }));
    }
    Ok(Json(Value::Array(out)))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn queue_counts_and_health_views() {
        let q = queue_json(
            "default",
            QueueDepth {
                pending: 2,
                in_flight: 1,
                delayed: 3,
                dead: 4,
            },
        );
        assert_eq!(q["total_pending"], 5);
        assert_eq!(q["name"], "default");
        assert_eq!(health_view(&ModelState::Healthy), ("healthy", None, None));
        let cooling = health_view(&ModelState::CoolingDown { until_ms: 9 });
        assert_eq!((cooling.0, cooling.2), ("cooling_down", Some(9)));
        assert_eq!(health_view(&ModelState::HalfOpen).0, "cooling_down");
        let paused = health_view(&ModelState::Paused {
            reason: "auth: 401".into(),
            since_ms: 1,
        });
        assert_eq!(paused.0, "paused");
        assert_eq!(paused.1.as_deref(), Some("auth: 401"));
    }
}
