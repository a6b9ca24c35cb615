//! `/v1/batches`: create, list, retrieve and cancel, in the shape of OpenAI's Batch API.
//!
//! The ledger is the truth about a batch's state, counts and spend. What only the API knows
//! (input file, endpoint, window, metadata, validation errors) is kept beside it in
//! `api/batches/<batch_id>.json`, written before validation starts, so a batch whose input
//! fails validation still exists: the ledger gets a `failed` record for it with no jobs.

use std::collections::BTreeMap;

use axum::Json;
use axum::extract::{Path as UrlPath, State};
use batchyard_jobs::batch::{BatchRecord, BatchState, RequestCounts, now_secs};
use batchyard_jobs::job::new_batch_id;
use bytes::Bytes;
use futures::future::join_all;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::ApiState;
use super::error::{ApiError, ApiJson, ApiQuery};
use super::files::{FileId, ResultKind, content_path, key_safe, result_file_id, upload_meta};
use crate::exit::UsageError;
use crate::submission::{InvalidInput, SubmitRequest, submit_with_id};

pub const ENDPOINT: &str = "/v1/chat/completions";
pub const WINDOW: &str = "24h";
pub const WINDOW_SECS: u64 = 24 * 3600;
/// OpenAI's metadata rules: at most 16 pairs, keys up to 64 and values up to 512 characters.
const MAX_METADATA_KEYS: usize = 16;
const MAX_KEY_CHARS: usize = 64;
const MAX_VALUE_CHARS: usize = 512;
/// Enough list entries to page deep without reading the whole ledger in one go.
const MAX_SCAN: usize = 100_000;

/// One entry of a batch's `errors.data`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BatchErrorItem {
    pub code: String,
    pub message: String,
    pub param: Option<String>,
    pub line: Option<u64>,
}

/// What the API keeps about a batch beside the ledger record.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiBatch {
    pub id: String,
    pub input_file_id: String,
    pub endpoint: String,
    pub completion_window: String,
    pub metadata: Option<BTreeMap<String, String>>,
    pub created_at: u64,
    #[serde(default)]
    pub errors: Vec<BatchErrorItem>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

fn record_path(state: &ApiState, batch_id: &str) -> object_store::path::Path {
    state
        .app
        .store
        .path_of(&format!("api/batches/{batch_id}.json"))
}

async fn load_api(state: &ApiState, batch_id: &str) -> Result<Option<ApiBatch>, ApiError> {
    match state.app.store.get(&record_path(state, batch_id)).await {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| ApiError::internal("a batch's API record is not valid JSON", &e)),
        Err(batchyard_jobs::error::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn save_api(state: &ApiState, api: &ApiBatch) -> Result<(), ApiError> {
    let body = serde_json::to_vec(api)
        .map_err(|e| ApiError::internal("encoding a batch's API record failed", &e))?;
    Ok(state
        .app
        .store
        .put(&record_path(state, &api.id), Bytes::from(body))
        .await?)
}

/// The OpenAI batch object, merged from the ledger record and the API's own record.
pub fn batch_object(id: &str, record: Option<&BatchRecord>, api: Option<&ApiBatch>) -> Value {
    let state = record.map_or(BatchState::Validating, |r| r.state);
    let created_at = api
        .map(|a| a.created_at)
        .or(record.map(|r| r.created_at))
        .unwrap_or(0);
    let ended = record.and_then(|r| r.completed_at);
    let stamp = |s: BatchState| if state == s { ended } else { None };
    let counts = record.map(|r| r.counts).unwrap_or_default();
    let finished = state.is_terminal();
    let file = |kind, n: u64| (finished && n > 0).then(|| result_file_id(id, kind));
    let errors = api
        .filter(|a| !a.errors.is_empty())
        .map(|a| json!({"object": "list", "data": a.errors}));
    json!({
        "id": id,
        "object": "batch",
        "endpoint": api.map_or(ENDPOINT, |a| a.endpoint.as_str()),
        "errors": errors,
        "input_file_id": api.map(|a| a.input_file_id.as_str()),
        "completion_window": api.map_or(WINDOW, |a| a.completion_window.as_str()),
        "status": state.as_str(),
        "output_file_id": file(ResultKind::Output, counts.completed),
        "error_file_id": file(ResultKind::Errors, counts.failed),
        "created_at": created_at,
        "in_progress_at": record.and_then(|r| r.in_progress_at),
        // Batches of the CLI have no window; API records from before windows were stored
        // had OpenAI's 24 h.
        "expires_at": record
            .and_then(|r| r.expires_at)
            .or(api.map(|_| created_at + WINDOW_SECS)),
        "finalizing_at": record.and_then(|r| r.finalizing_at),
        "completed_at": stamp(BatchState::Completed),
        "failed_at": stamp(BatchState::Failed),
        "expired_at": stamp(BatchState::Expired),
        "cancelling_at": record.and_then(|r| r.cancel_requested_at),
        "cancelled_at": stamp(BatchState::Cancelled),
        "request_counts": counts,
        "metadata": api.and_then(|a| a.metadata.as_ref()),
        // batchyard's own, beside OpenAI's fields.
        "cost_usd": record.map(BatchRecord::cost_usd),
        "budget_usd": record.and_then(|r| r.budget_usd),
        "task": record.and_then(|r| r.task.as_deref()),
    })
}

fn check_metadata(
    metadata: Option<&BTreeMap<String, String>>,
    state: &ApiState,
) -> Result<(Option<String>, Option<f64>), ApiError> {
    let Some(m) = metadata else {
        return Ok((None, None));
    };
    let bad = |msg: String| ApiError::invalid(msg).with_param("metadata");
    if m.len() > MAX_METADATA_KEYS {
        return Err(bad(format!(
            "metadata has {} keys; at most {MAX_METADATA_KEYS} are allowed",
            m.len()
        )));
    }
    if let Some((k, _)) = m
        .iter()
        .find(|(k, v)| k.chars().count() > MAX_KEY_CHARS || v.chars().count() > MAX_VALUE_CHARS)
    {
        return Err(bad(format!(
            "metadata key {k:?} or its value is too long (keys up to {MAX_KEY_CHARS}, values up to {MAX_VALUE_CHARS} characters)"
        )));
    }
    let task = m.get("batchyard_task").cloned();
    if let Some(t) = &task
        && state.app.settings.catalog.task(t).is_none()
    {
        let known: Vec<String> = state.app.settings.catalog.task_keys().into_iter().collect();
        return Err(bad(format!(
            "unknown task {t:?} in metadata.batchyard_task; configured tasks: {}",
            known.join(", ")
        )));
    }
    let budget = match m.get("batchyard_budget_usd") {
        None => None,
        Some(s) => match s.trim().parse::<f64>() {
            Ok(b) if b.is_finite() && b >= 0.0 => Some(b),
            _ => {
                return Err(bad(format!(
                    "metadata.batchyard_budget_usd must be a number of dollars, 0 or more, as a string (e.g. \"2.50\"), not {s:?}"
                )));
            }
        },
    };
    Ok((task, budget))
}

/// `POST /v1/batches`: validates the input file and enqueues it, or records why it failed.
pub async fn create(
    State(state): State<ApiState>,
    ApiJson(req): ApiJson<CreateBatch>,
) -> Result<Json<Value>, ApiError> {
    if req.endpoint != ENDPOINT {
        return Err(ApiError::invalid(format!(
            "endpoint {:?} is not supported; use {ENDPOINT:?}",
            req.endpoint
        ))
        .with_param("endpoint"));
    }
    if req.completion_window != WINDOW {
        return Err(ApiError::invalid(format!(
            "completion_window {:?} is not supported; use {WINDOW:?}",
            req.completion_window
        ))
        .with_param("completion_window"));
    }
    let (task, budget_usd) = check_metadata(req.metadata.as_ref(), &state)?;
    let no_file = || {
        ApiError::invalid(format!(
            "no uploaded file with id {:?}; upload the input with POST /v1/files (purpose=batch) first",
            req.input_file_id
        ))
        .with_param("input_file_id")
    };
    let file_id = match FileId::parse(&req.input_file_id) {
        Ok(FileId::Upload(id)) => id,
        _ => return Err(no_file()),
    };
    if upload_meta(&state, &file_id).await?.is_none() {
        return Err(no_file());
    }
    let batch_id = new_batch_id();
    let mut api = ApiBatch {
        id: batch_id.clone(),
        input_file_id: file_id.clone(),
        endpoint: req.endpoint,
        completion_window: req.completion_window,
        metadata: req.metadata,
        created_at: now_secs(),
        errors: Vec::new(),
    };
    save_api(&state, &api).await?;
    let submit = SubmitRequest {
        input: state
            .app
            .store
            .display_location(&content_path(&state, &file_id)),
        task,
        budget_usd,
        skip_invalid: false,
        no_cache: false,
        completion_window: Some(state.completion_window),
    };
    // A task of its own: a client that hangs up must not stop a submission half-way.
    let app = std::sync::Arc::clone(&state.app);
    let id = batch_id.clone();
    let joined = state
        .tasks
        .spawn(async move { submit_with_id(&app, &submit, id).await })
        .await;
    let failure = match joined {
        Ok(Ok(submitted)) => {
            tracing::info!(batch_id = %batch_id, file_id = %file_id, "batch created");
            return Ok(Json(batch_object(
                &batch_id,
                Some(&submitted.record),
                Some(&api),
            )));
        }
        Ok(Err(e)) => e,
        Err(e) => return Err(ApiError::internal("the submission task failed", &e)),
    };
    api.errors = if let Some(invalid) = failure.downcast_ref::<InvalidInput>() {
        let mut items: Vec<BatchErrorItem> = invalid
            .errors
            .iter()
            .map(|e| BatchErrorItem {
                code: "invalid_input".into(),
                message: e.reason.clone(),
                param: None,
                line: e.line,
            })
            .collect();
        // Submission lists the first few bad lines; say how many more there are.
        let more = invalid.total_bad.saturating_sub(items.len() as u64);
        if more > 0 {
            items.push(BatchErrorItem {
                code: "invalid_input".into(),
                message: format!(
                    "and {more} more invalid line(s); fix the file and upload it again"
                ),
                param: None,
                line: None,
            });
        }
        items
    } else if let Some(usage) = failure.downcast_ref::<UsageError>() {
        // The message starts with where the file is stored; the client knows it by its id.
        let marker = format!("{file_id}.jsonl: ");
        let message = usage
            .0
            .find(&marker)
            .map_or(usage.0.as_str(), |i| &usage.0[i + marker.len()..]);
        vec![BatchErrorItem {
            code: "invalid_file".into(),
            message: message.to_string(),
            param: None,
            line: None,
        }]
    } else {
        return Err(ApiError::internal("submitting the batch failed", &failure));
    };
    tracing::info!(batch_id = %batch_id, errors = api.errors.len(), "batch input failed validation");
    save_api(&state, &api).await?;
    let record = record_failed(&state, &batch_id, &api).await?;
    Ok(Json(batch_object(&batch_id, Some(&record), Some(&api))))
}

/// A ledger record for a batch whose input failed validation, so it is listed like any other.
async fn record_failed(
    state: &ApiState,
    batch_id: &str,
    api: &ApiBatch,
) -> Result<BatchRecord, ApiError> {
    let ledger = &state.app.ledger;
    if let Some(existing) = ledger.get(batch_id).await? {
        return Ok(existing);
    }
    let record = BatchRecord {
        id: batch_id.to_string(),
        state: BatchState::Failed,
        counts: RequestCounts::default(),
        spent_nanos: 0,
        budget_usd: None,
        task: None,
        storage_url: state.app.store.url().to_string(),
        created_at: api.created_at,
        in_progress_at: None,
        finalizing_at: None,
        completed_at: None,
        cancel_requested_at: None,
        reserved_nanos: 0,
        budget_exhausted_at: None,
        no_cache: false,
        expires_at: Some(
            api.created_at
                .saturating_add(state.completion_window.as_secs()),
        ),
    };
    ledger.create(&record).await?;
    // Stamps the end time, which `create` does not store.
    ledger.set_state(batch_id, BatchState::Failed).await?;
    Ok(ledger.get(batch_id).await?.unwrap_or(record))
}

pub(super) fn check_batch_id(id: &str) -> Result<(), ApiError> {
    if key_safe(id) && id.starts_with("batch_") {
        Ok(())
    } else {
        Err(ApiError::not_found("batch", id))
    }
}

pub async fn retrieve(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    check_batch_id(&id)?;
    let (record, api) = tokio::try_join!(
        async { state.app.ledger.get(&id).await.map_err(ApiError::from) },
        load_api(&state, &id)
    )?;
    if record.is_none() && api.is_none() {
        return Err(ApiError::not_found("batch", &id));
    }
    Ok(Json(batch_object(&id, record.as_ref(), api.as_ref())))
}

pub async fn cancel(
    State(state): State<ApiState>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    check_batch_id(&id)?;
    let Some(before) = state.app.ledger.get(&id).await? else {
        return Err(ApiError::not_found("batch", &id));
    };
    if before.state.is_terminal() || before.state == BatchState::Finalizing {
        return Err(ApiError::invalid(format!(
            "batch {id} is already {}; only a batch in progress can be cancelled",
            before.state.as_str()
        )));
    }
    let record = state.app.ledger.request_cancel(&id).await?;
    tracing::info!(batch_id = %id, "batch cancel requested");
    let api = load_api(&state, &id).await?;
    Ok(Json(batch_object(&id, Some(&record), api.as_ref())))
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    limit: Option<usize>,
    after: Option<String>,
}

/// `GET /v1/batches?limit&after`: newest first, as OpenAI pages them.
pub async fn list(
    State(state): State<ApiState>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(
            ApiError::invalid(format!("limit must be between 1 and 100, not {limit}"))
                .with_param("limit"),
        );
    }
    // The ledger lists the newest N; read more until the page after `after` is full.
    let mut fetch = limit + 1;
    let (records, start) = loop {
        let records = state.app.ledger.list(fetch).await?;
        let exhausted = records.len() < fetch || fetch >= MAX_SCAN;
        let start = match &q.after {
            None => Some(0),
            Some(a) => records.iter().position(|r| &r.id == a).map(|i| i + 1),
        };
        match start {
            Some(s) if records.len() - s > limit || exhausted => break (records, s),
            None if exhausted => break (Vec::new(), 0),
            _ => fetch = (fetch * 4).min(MAX_SCAN),
        }
    };
    let page: Vec<&BatchRecord> = records.iter().skip(start).take(limit).collect();
    let has_more = records.len() > start + page.len();
    let apis = join_all(page.iter().map(|r| load_api(&state, &r.id))).await;
    let mut data = Vec::with_capacity(page.len());
    for (record, api) in page.iter().zip(apis) {
        data.push(batch_object(&record.id, Some(record), api?.as_ref()));
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": page.first().map(|r| r.id.as_str()),
        "last_id": page.last().map(|r| r.id.as_str()),
        "has_more": has_more,
    })))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn record(state: BatchState) -> BatchRecord {
        BatchRecord {
            id: "batch_1".into(),
            state,
            counts: RequestCounts {
                total: 3,
                completed: 2,
                failed: 1,
            },
            spent_nanos: 1_500_000_000,
            budget_usd: Some(5.0),
            task: None,
            storage_url: "memory://".into(),
            created_at: 100,
            in_progress_at: Some(101),
            finalizing_at: Some(110),
            completed_at: Some(120),
            cancel_requested_at: None,
            reserved_nanos: 0,
            budget_exhausted_at: None,
            no_cache: false,
            expires_at: Some(100 + WINDOW_SECS),
        }
    }

    #[test]
    fn terminal_times_follow_the_state() {
        let done = batch_object("batch_1", Some(&record(BatchState::Completed)), None);
        assert_eq!(done["completed_at"], 120);
        assert!(done["cancelled_at"].is_null() && done["failed_at"].is_null());
        assert_eq!(done["output_file_id"], "file-batch_1-output");
        assert_eq!(done["error_file_id"], "file-batch_1-errors");
        assert_eq!(done["expires_at"], 100 + WINDOW_SECS);
        assert_eq!(done["cost_usd"], 1.5);
        assert_eq!(done["endpoint"], ENDPOINT);
        let cancelled = batch_object("batch_1", Some(&record(BatchState::Cancelled)), None);
        assert_eq!(cancelled["cancelled_at"], 120);
        assert!(cancelled["completed_at"].is_null());
        let running = batch_object("batch_1", Some(&record(BatchState::InProgress)), None);
        assert!(running["output_file_id"].is_null() && running["completed_at"].is_null());
        let mut cli = record(BatchState::InProgress);
        cli.expires_at = None;
        assert!(batch_object("batch_1", Some(&cli), None)["expires_at"].is_null());
        let api = ApiBatch {
            id: "batch_1".into(),
            input_file_id: "f".into(),
            endpoint: ENDPOINT.into(),
            completion_window: WINDOW.into(),
            metadata: None,
            created_at: 100,
            errors: Vec::new(),
        };
        let old = batch_object("batch_1", Some(&cli), Some(&api));
        assert_eq!(old["expires_at"], 100 + WINDOW_SECS);
        let validating = batch_object("batch_1", None, None);
        assert_eq!(validating["status"], "validating");
    }
}
