//! `/v1/batches`: create, list, retrieve and cancel, in the shape of OpenAI's Batch API.
//!
//! The ledger is the truth about a batch's state, counts and spend. What only the API knows
//! (input file, endpoint, window, metadata, validation errors) is kept beside it in
//! `api/batches/<batch_id>.json`, written before validation starts, so a batch whose input
//! fails validation still exists: the ledger gets a `failed` record for it with no jobs.
//!
//! - [`object`]: OpenAI's batch object, the API's own record of a batch, and the metadata rules.

use std::collections::BTreeMap;

use axum::extract::{Path as UrlPath, State};
use axum::{Extension, Json};
use batchyard_jobs::batch::{BatchRecord, BatchState, RequestCounts, now_secs};
use batchyard_jobs::job::new_batch_id;
use futures::future::join_all;
use serde::Deserialize;
use serde_json::{Value, json};

mod object;

pub use object::{ApiBatch, BatchErrorItem, ENDPOINT, WINDOW, WINDOW_SECS, batch_object};
use object::{check_metadata, forget_api, save_api};
pub(in crate::api) use object::{load_api, read_manifest};

use super::auth::Caller;
use super::files::{FileId, content_path, key_safe, upload_meta};
use super::http_error::{ApiError, ApiJson, ApiQuery};
use super::state::ApiState;
use super::tenancy;
use crate::error::{DeadlineUnreachable, InvalidInput, UsageError};
use crate::gc::uploads::HoldError;
use crate::submission::{SubmitRequest, submit_with_id};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<BTreeMap<String, String>>,
}

/// `POST /v1/batches`: validates the input file and enqueues it, or records why it failed.
pub async fn create(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
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
    let meta = check_metadata(req.metadata.as_ref(), &state)?;
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
    if upload_meta(&state, &caller, &file_id).await?.is_none() {
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
        tenant: tenancy::tenant_of(&caller),
    };
    save_api(&state, &api).await?;
    // Retention may be deleting the file this very moment: register as its reader, then
    // look again. A collector that deleted its metadata first sees the registration and puts
    // it back; one that had not yet is seen here.
    let held = crate::gc::uploads::hold_upload(
        state.app.ledger.as_ref(),
        &state.app.store,
        &file_id,
        &batch_id,
    )
    .await
    .map_err(|e| match e {
        HoldError::Ledger(e) => ApiError::from(e),
        HoldError::Store(e) => ApiError::from(e),
    })?;
    if !held {
        forget_api(&state, &batch_id).await;
        return Err(no_file());
    }
    let submit = SubmitRequest {
        input: state
            .app
            .store
            .display_location(&content_path(&state, &file_id)),
        task: meta.task,
        budget_usd: meta.budget_usd,
        skip_invalid: false,
        no_cache: false,
        completion_window: Some(state.completion_window),
        resume: None,
        follow_symlinks: false,
        deadline_at: meta.deadline_at,
        notify_url: meta.notify_url,
        tenant: Some(api.tenant.clone()),
        priority: meta.priority,
    };
    // A task of its own: a client that hangs up must not stop a submission half-way.
    let app = std::sync::Arc::clone(&state.app);
    let (id, file) = (batch_id.clone(), file_id.clone());
    let joined = state
        .tasks
        .spawn(async move {
            let submitted = submit_with_id(&app, &submit, id.clone()).await;
            // The input is read (its jobs are staged, or it was refused): retention may
            // take the file now.
            release_upload(&app, &file, &id).await;
            submitted
        })
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
    if let Some(d) = failure.downcast_ref::<DeadlineUnreachable>() {
        // Refused as the CLI refuses it: nothing was enqueued, so no batch is left behind.
        forget_api(&state, &batch_id).await;
        return Err(ApiError::invalid(format!(
            "metadata.batchyard_deadline leaves {} s, but the file's {} items take about {} s \
             real-time ({}); give a later deadline",
            d.left_secs, d.items, d.needed_secs, d.basis
        ))
        .with_param("metadata"));
    }
    api.errors = match failure_errors(&failure, &file_id) {
        Some(errors) => errors,
        None => return Err(ApiError::internal("submitting the batch failed", &failure)),
    };
    tracing::info!(batch_id = %batch_id, errors = api.errors.len(), "batch input failed validation");
    save_api(&state, &api).await?;
    let record = record_failed(&state, &batch_id, &api).await?;
    Ok(Json(batch_object(&batch_id, Some(&record), Some(&api))))
}

/// Best effort: a registration left behind lapses after `UPLOAD_READ_SECS`.
async fn release_upload(app: &crate::app::App, file_id: &str, batch_id: &str) {
    if let Err(e) = app.ledger.release_upload(file_id, batch_id).await {
        tracing::warn!(batch_id, error = %e, "cannot end a creation's hold on its input file; it lapses by itself");
    }
}

/// A submission's failure as the batch's `errors.data`: bad lines, or a file that can't be
/// read as input. `None` for a failure that is not the input's fault.
fn failure_errors(failure: &anyhow::Error, file_id: &str) -> Option<Vec<BatchErrorItem>> {
    if let Some(invalid) = failure.downcast_ref::<InvalidInput>() {
        let mut items: Vec<BatchErrorItem> = invalid
            .errors
            .iter()
            .map(|e| BatchErrorItem {
                code: batchyard_jobs::codes::INVALID_INPUT.into(),
                message: e.reason.clone(),
                param: None,
                line: e.line,
            })
            .collect();
        // Submission lists the first few bad lines; say how many more there are.
        let more = invalid.total_bad.saturating_sub(items.len() as u64);
        if more > 0 {
            items.push(BatchErrorItem {
                code: batchyard_jobs::codes::INVALID_INPUT.into(),
                message: format!(
                    "and {more} more invalid line(s); fix the file and upload it again"
                ),
                param: None,
                line: None,
            });
        }
        Some(items)
    } else if let Some(usage) = failure.downcast_ref::<UsageError>() {
        // The message starts with where the file is stored; the client knows it by its id.
        let marker = format!("{file_id}.jsonl: ");
        let message = usage
            .0
            .find(&marker)
            .map_or(usage.0.as_str(), |i| &usage.0[i + marker.len()..]);
        Some(vec![BatchErrorItem {
            code: batchyard_jobs::codes::INVALID_FILE.into(),
            message: message.to_string(),
            param: None,
            line: None,
        }])
    } else {
        None
    }
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
        state: BatchState::Failed,
        counts: RequestCounts::default(),
        expires_at: Some(
            api.created_at
                .saturating_add(state.completion_window.as_secs()),
        ),
        tenant: api.tenant.clone(),
        ..BatchRecord::new(
            batch_id.to_string(),
            0,
            state.app.store.url().to_string(),
            api.created_at,
        )
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
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    check_batch_id(&id)?;
    let (record, api) = tokio::try_join!(
        async { state.app.ledger.get(&id).await.map_err(ApiError::from) },
        load_api(&state, &id)
    )?;
    let owner = record
        .as_ref()
        .map(|r| tenancy::owner(r).to_string())
        .or_else(|| api.as_ref().map(|a| a.tenant.clone()));
    if !owner.is_some_and(|o| caller.may_see(&o)) {
        return Err(ApiError::not_found("batch", &id));
    }
    let mut object = batch_object(&id, record.as_ref(), api.as_ref());
    if let Some(r) = record.as_ref().filter(|r| r.state.is_terminal()) {
        let manifest = read_manifest(&state, &r.id).await?;
        object::add_usage(&mut object, manifest.as_ref());
    }
    // batchyard's own, beside OpenAI's fields as `cost_usd` is: the offload lane of a batch
    // that opted in. Only here: a list stays one read per batch.
    if let Some(r) = &record
        && let Some(lane) = crate::batch_view::lane(&state.app, r).await
    {
        object["offload"] = json!(lane);
    }
    Ok(Json(object))
}

pub async fn cancel(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    check_batch_id(&id)?;
    let Some(before) = tenancy::visible_record(&state, &caller, &id).await? else {
        return Err(ApiError::not_found("batch", &id));
    };
    if before.state.is_terminal() || before.state == BatchState::Finalizing {
        return Err(ApiError::invalid(format!(
            "batch {id} is already {}; only a batch in progress can be cancelled",
            before.state.as_str()
        )));
    }
    let record = state.app.ledger.request_cancel(&id).await?;
    let record = crate::retry_cancel::settle_cancel(&state.app, &before, record)
        .await
        .map_err(|e| ApiError::internal("ending the cancelled batch's unrun items failed", &e))?;
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
    Extension(caller): Extension<Caller>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(
            ApiError::invalid(format!("limit must be between 1 and 100, not {limit}"))
                .with_param("limit"),
        );
    }
    // Read more of the caller's newest until the page after `after` is full.
    let mut want = limit + 1;
    let (records, start) = loop {
        let (records, more) = tenancy::visible_records(&state, &caller, want).await?;
        let start = match &q.after {
            None => Some(0),
            Some(a) => records.iter().position(|r| &r.id == a).map(|i| i + 1),
        };
        match start {
            Some(s) if records.len() - s > limit || !more => break (records, s),
            None if !more || want >= tenancy::MAX_SCAN => break (Vec::new(), 0),
            _ => want = want.saturating_mul(4).min(tenancy::MAX_SCAN),
        }
    };
    let page: Vec<&BatchRecord> = records.iter().skip(start).take(limit).collect();
    let has_more = records.len() > start + page.len();
    let apis = join_all(page.iter().map(|r| load_api(&state, &r.id))).await;
    let manifests = join_all(page.iter().map(|r| async {
        if r.state.is_terminal() {
            read_manifest(&state, &r.id).await
        } else {
            Ok(None)
        }
    }))
    .await;
    let mut data = Vec::with_capacity(page.len());
    for ((record, api), manifest) in page.iter().zip(apis).zip(manifests) {
        let mut object = batch_object(&record.id, Some(record), api?.as_ref());
        object::add_usage(&mut object, manifest?.as_ref());
        data.push(object);
    }
    Ok(Json(json!({
        "object": "list",
        "data": data,
        "first_id": page.first().map(|r| r.id.as_str()),
        "last_id": page.last().map(|r| r.id.as_str()),
        "has_more": has_more,
    })))
}
