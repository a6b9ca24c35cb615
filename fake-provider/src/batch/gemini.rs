//! Gemini's batch mode with inline requests: `POST /v1beta/models/{model}:batchGenerateContent`
//! (`batch: {display_name, input_config: {requests: {requests: [{request, metadata: {key}}]}}}`)
//! answers an operation named `batches/{id}`; `GET /v1beta/batches/{id}` is its state
//! (`metadata.state`: `BATCH_STATE_PENDING`, `_RUNNING`, `_SUCCEEDED`, `_FAILED`,
//! `_CANCELLED`, `_EXPIRED`; `metadata.batchStats`) and, once `done`, its
//! `response.inlinedResponses.inlinedResponses[]` (each `{response | error, metadata}`, in no
//! particular order); `POST /v1beta/batches/{id}:cancel`; `DELETE /v1beta/batches/{id}` (ended
//! batches only); `GET /v1beta/batches?pageSize=&pageToken=` (newest first).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use super::answer::{self, Api};
use super::clock::Phase;
use super::now_ms;
use super::store::{GeminiBatch, MessageBatch, shuffled};
use crate::limits::rfc3339;
use crate::{AppState, json_response};

const MAX_REQUESTS: usize = 100_000;
const BATCH_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatch";
const OUTPUT_TYPE: &str =
    "type.googleapis.com/google.ai.generativelanguage.v1beta.GenerateContentBatchOutput";

fn google_error(status: StatusCode, name: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"error": {"code": status.as_u16(), "message": message, "status": name}}),
    )
}

fn invalid(message: &str) -> Response {
    google_error(StatusCode::BAD_REQUEST, "INVALID_ARGUMENT", message)
}

fn not_found(id: &str) -> Response {
    google_error(
        StatusCode::NOT_FOUND,
        "NOT_FOUND",
        &format!("batches/{id} is not found"),
    )
}

/// Each inline request's `(key, request bytes)`.
type Requests = Vec<(String, Vec<u8>)>;

/// The display name and the inline requests.
fn requests(body: &[u8]) -> Result<(String, Requests), Box<Response>> {
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(invalid("Invalid JSON payload received.")));
    };
    let batch = &request["batch"];
    let name = batch["display_name"]
        .as_str()
        .or_else(|| batch["displayName"].as_str())
        .unwrap_or("")
        .to_owned();
    let config = batch
        .get("input_config")
        .or_else(|| batch.get("inputConfig"));
    let list = match config.and_then(|c| c["requests"]["requests"].as_array()) {
        Some(list) if !list.is_empty() && list.len() <= MAX_REQUESTS => list,
        _ => {
            return Err(Box::new(invalid(
                "batch.input_config.requests.requests: between 1 and 100000 inline requests are \
                 required",
            )));
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let Some(request @ Value::Object(_)) = r.get("request") else {
            return Err(Box::new(invalid(&format!(
                "batch.input_config.requests.requests[{i}].request is required"
            ))));
        };
        let key = r["metadata"]["key"].as_str().unwrap_or("").to_owned();
        out.push((key, request.to_string().into_bytes()));
    }
    Ok((name, out))
}

/// `POST /v1beta/models/{model}:batchGenerateContent`, routed here by the generate handler.
pub async fn create(
    state: &Arc<AppState>,
    headers: &HeaderMap,
    model: &str,
    body: &Bytes,
) -> Response {
    if let Some(refused) = crate::gemini::check_auth(&state.options, headers) {
        return refused;
    }
    let (display_name, requests) = match requests(body) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let _serial = state.batches.creating.lock().await;
    let options = &state.options.batch;
    let items = answer::answer_all(state, Api::Gemini(model), requests).await;
    let bytes = items.iter().map(|i| i.answer.bytes()).sum();
    let now = now_ms();
    let mut store = state.batches.lock();
    if !store.reserve(bytes, options.max_bytes) {
        return google_error(
            StatusCode::TOO_MANY_REQUESTS,
            "RESOURCE_EXHAUSTED",
            "the fake's batch store is full (--batch-max-bytes): delete ended batches",
        );
    }
    let batch = GeminiBatch {
        batch: MessageBatch {
            id: format!("fake{}", store.next()),
            timeline: super::clock::Timeline::new(options, now, items.len(), false),
            items,
            tokens: BTreeMap::new(),
            bytes,
        },
        model: model.to_owned(),
        display_name,
    };
    let body = operation(&batch, now, false);
    store.gemini.push(batch);
    store.counts.gemini_created += 1;
    json_response(StatusCode::OK, body)
}

fn state_name(phase: Phase) -> &'static str {
    match phase {
        Phase::Validating => "BATCH_STATE_PENDING",
        Phase::Failed(_) => "BATCH_STATE_FAILED",
        Phase::Completed(_) => "BATCH_STATE_SUCCEEDED",
        Phase::Expired(_) => "BATCH_STATE_EXPIRED",
        Phase::Cancelled(_) => "BATCH_STATE_CANCELLED",
        Phase::InProgress | Phase::Finalizing | Phase::Cancelling => "BATCH_STATE_RUNNING",
    }
}

/// The batch as an operation; with `results`, an ended one carries its inline responses.
fn operation(batch: &GeminiBatch, now: u64, results: bool) -> Value {
    let b = &batch.batch;
    let (phase, done) = b.timeline.at(now);
    let ended = phase.ended_at();
    let done_items = &b.items[..done.min(b.items.len())];
    let ok = done_items.iter().filter(|i| i.answer.ok()).count();
    let time = |ms: u64| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
    let name = format!("batches/{}", b.id);
    let mut op = json!({
        "name": name,
        "metadata": {
            "@type": BATCH_TYPE,
            "name": name,
            "model": format!("models/{}", batch.model),
            "displayName": batch.display_name,
            "state": state_name(phase),
            "createTime": time(b.timeline.created_ms),
            "updateTime": time(ended.unwrap_or(now)),
            "endTime": ended.map(time),
            // int64 fields are strings in Google's JSON.
            "batchStats": {
                "requestCount": b.items.len().to_string(),
                "successfulRequestCount": if ended.is_some() { ok } else { 0 }.to_string(),
                "failedRequestCount": if ended.is_some() { done_items.len() - ok } else { 0 }.to_string(),
                "pendingRequestCount": if ended.is_some() { 0 } else { b.items.len() }.to_string(),
            },
        },
        "done": ended.is_some(),
    });
    if results && ended.is_some() {
        let mut lines = Vec::with_capacity(done_items.len());
        for i in shuffled(&b.items).into_iter().filter(|i| *i < done) {
            let item = &b.items[i];
            let body: Value = serde_json::from_str(&item.answer.body).unwrap_or(Value::Null);
            let key = if item.answer.ok() {
                "response"
            } else {
                "error"
            };
            let value = if item.answer.ok() {
                body
            } else {
                body["error"].clone()
            };
            lines.push(json!({key: value, "metadata": {"key": item.custom_id}}));
        }
        op["response"] = json!({"@type": OUTPUT_TYPE,
            "inlinedResponses": {"inlinedResponses": lines}});
    }
    op
}

/// A request with the key `generateContent` wants (`--require-key`): the first extractor of
/// every handler on `/v1beta/batches`.
pub struct GeminiAuth;

impl FromRequestParts<Arc<AppState>> for GeminiAuth {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        crate::gemini::check_auth(&state.options, &parts.headers).map_or(Ok(Self), Err)
    }
}

pub async fn get(
    _: GeminiAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let store = state.batches.lock();
    let Some(i) = store.gemini_index(&id) else {
        return not_found(&id);
    };
    json_response(StatusCode::OK, operation(&store.gemini[i], now_ms(), true))
}

/// `POST /v1beta/batches/{id}:cancel` (the only POST on a batch).
pub async fn cancel(
    _: GeminiAuth,
    State(state): State<Arc<AppState>>,
    Path(tail): Path<String>,
) -> Response {
    let Some(id) = tail.strip_suffix(":cancel") else {
        return google_error(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("no method batches/{tail}"),
        );
    };
    let now = now_ms();
    let mut store = state.batches.lock();
    let Some(i) = store.gemini_index(id) else {
        return not_found(id);
    };
    let phase = store.gemini[i].batch.timeline.at(now).0;
    if phase.ended_at().is_none() && phase != Phase::Cancelling {
        store.gemini[i].batch.timeline.cancel_at = Some(now);
        store.counts.gemini_cancelled += 1;
    }
    json_response(StatusCode::OK, json!({}))
}

pub async fn delete(
    _: GeminiAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let mut store = state.batches.lock();
    let Some(i) = store.gemini_index(&id) else {
        return not_found(&id);
    };
    if store.gemini[i]
        .batch
        .timeline
        .at(now_ms())
        .0
        .ended_at()
        .is_none()
    {
        return google_error(
            StatusCode::BAD_REQUEST,
            "FAILED_PRECONDITION",
            &format!("batches/{id} is still running: cancel it, and delete it once ended"),
        );
    }
    let batch = store.gemini.remove(i);
    store.release(batch.batch.bytes);
    store.counts.gemini_deleted += 1;
    json_response(StatusCode::OK, json!({}))
}

pub async fn list(
    _: GeminiAuth,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let size = query
        .get("pageSize")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(50)
        .clamp(1, 1000);
    let start = query
        .get("pageToken")
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let now = now_ms();
    let store = state.batches.lock();
    let newest_first: Vec<&GeminiBatch> = store.gemini.iter().rev().collect();
    let end = (start + size).min(newest_first.len());
    let page: Vec<Value> = newest_first
        .get(start..end)
        .unwrap_or_default()
        .iter()
        .map(|b| operation(b, now, false))
        .collect();
    let mut body = json!({"operations": page});
    if end < newest_first.len() {
        body["nextPageToken"] = json!(end.to_string());
    }
    json_response(StatusCode::OK, body)
}
