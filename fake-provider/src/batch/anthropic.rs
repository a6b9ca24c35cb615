//! Anthropic's Message Batches API: `POST /v1/messages/batches` (`requests: [{custom_id,
//! params}]`, up to 100,000 or 256 MB), `GET /v1/messages/batches/{id}`,
//! `GET /v1/messages/batches/{id}/results` (JSONL in no particular order, once ended),
//! `POST /v1/messages/batches/{id}/cancel`, `DELETE /v1/messages/batches/{id}` (ended batches
//! only), `GET /v1/messages/batches?limit=&after_id=&before_id=` (newest first).
//!
//! Like the real API, `request_counts` stay all `processing` until the batch has ended, each
//! item's `params` is validated as it is processed (a bad one is an `errored` result), and
//! over the enqueued-token limit the create is refused with 429 `rate_limit_error`.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

use super::answer::{self, Api};
use super::clock::{Phase, Timeline};
use super::store::{MessageBatch, Store, processing_status, quoted, shuffled};
use super::{AnthropicAuth, anthropic_error, now_ms};
use crate::limits::rfc3339;
use crate::{AppState, json_response};

/// Anthropic's limits on one batch.
const MAX_REQUESTS: usize = 100_000;
const MAX_BYTES: usize = 256 * 1024 * 1024;

fn invalid(message: &str) -> Response {
    anthropic_error(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

fn not_found(id: &str) -> Response {
    anthropic_error(
        StatusCode::NOT_FOUND,
        "not_found_error",
        &format!("message batch {id} not found"),
    )
}

fn custom_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// The requests as `(custom_id, params as bytes)`, or the 400 / 413 refusing them.
fn requests(body: &[u8]) -> Result<Vec<(String, Vec<u8>)>, Box<Response>> {
    if body.len() > MAX_BYTES {
        return Err(Box::new(anthropic_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "A message batch can be at most 256 MB.",
        )));
    }
    let Ok(request) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(invalid("The request body is not valid JSON.")));
    };
    let list = match request.get("requests").and_then(Value::as_array) {
        Some(list) if !list.is_empty() && list.len() <= MAX_REQUESTS => list,
        _ => {
            return Err(Box::new(invalid(
                "requests: between 1 and 100000 requests are required",
            )));
        }
    };
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, r) in list.iter().enumerate() {
        let id = r.get("custom_id").and_then(Value::as_str).unwrap_or("");
        if !custom_id_ok(id) {
            return Err(Box::new(invalid(&format!(
                "requests.{i}.custom_id: must match ^[a-zA-Z0-9_-]{{1,64}}$, not {id:?}"
            ))));
        }
        if !seen.insert(id) {
            return Err(Box::new(invalid(&format!(
                "requests.{i}.custom_id: {id:?} is used by more than one request"
            ))));
        }
        let Some(params @ Value::Object(_)) = r.get("params") else {
            return Err(Box::new(invalid(&format!(
                "requests.{i}.params: Field required"
            ))));
        };
        out.push((id.to_owned(), params.to_string().into_bytes()));
    }
    Ok(out)
}

pub async fn create(
    _: AnthropicAuth,
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let requests = match requests(&body) {
        Ok(r) => r,
        Err(refused) => return *refused,
    };
    let _serial = state.batches.creating.lock().await;
    let now = now_ms();
    let options = &state.options.batch;
    let mut tokens: BTreeMap<String, u64> = BTreeMap::new();
    for (_, params) in &requests {
        if let Some((model, n)) = answer::input_tokens(Api::Anthropic, params) {
            *tokens.entry(model).or_default() += n;
        }
    }
    if let Some(limit) = options.enqueued_token_limit {
        let mut store = state.batches.lock();
        if let Some((model, _)) = tokens
            .iter()
            .find(|(model, n)| store.anthropic_enqueued(model, now) + **n > limit)
        {
            store.counts.anthropic_refused += 1;
            return anthropic_error(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limit_error",
                &format!(
                    "This batch would exceed the enqueued-token limit of {limit} tokens for \
                     {model} (fake). Wait for batches in progress to end."
                ),
            );
        }
    }
    let items = answer::answer_all(&state, Api::Anthropic, requests).await;
    let bytes = items.iter().map(|i| i.answer.bytes()).sum();
    // The clock starts once every item has its answer, however long that took.
    let now = now_ms();
    let mut store = state.batches.lock();
    if !store.reserve(bytes, options.max_bytes) {
        return anthropic_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_too_large",
            "the fake's batch store is full (--batch-max-bytes): delete ended batches",
        );
    }
    let batch = MessageBatch {
        id: format!("msgbatch_fake{}", store.next()),
        timeline: Timeline::new(options, now, items.len(), false),
        items,
        tokens,
        bytes,
    };
    let body = batch_json(&batch, now, &headers);
    store.anthropic.push(batch);
    store.counts.anthropic_created += 1;
    json_response(StatusCode::OK, body)
}

fn batch_json(batch: &MessageBatch, now: u64, headers: &HeaderMap) -> Value {
    let t = &batch.timeline;
    let (phase, done) = t.at(now);
    let ended = phase.ended_at();
    let n = t.items as u64;
    let done_items = &batch.items[..done.min(batch.items.len())];
    let succeeded = done_items.iter().filter(|i| i.answer.ok()).count() as u64;
    let never_run = n - done_items.len() as u64;
    let counts = match phase {
        _ if ended.is_none() => json!({"processing": n, "succeeded": 0, "errored": 0,
            "canceled": 0, "expired": 0}),
        _ => json!({"processing": 0, "succeeded": succeeded,
            "errored": done_items.len() as u64 - succeeded,
            "canceled": if matches!(phase, Phase::Cancelled(_)) { never_run } else { 0 },
            "expired": if matches!(phase, Phase::Expired(_)) { never_run } else { 0 }}),
    };
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("127.0.0.1");
    let time = |ms: u64| rfc3339(std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms));
    json!({
        "id": batch.id,
        "type": "message_batch",
        "processing_status": processing_status(phase),
        "request_counts": counts,
        "ended_at": ended.map(time),
        "created_at": time(t.created_ms),
        "expires_at": time(t.expires_at()),
        "archived_at": null,
        "cancel_initiated_at": t.cancel_at.filter(|c| *c <= now).map(time),
        "results_url": ended.map(|_| format!(
            "http://{host}/v1/messages/batches/{}/results", batch.id)),
    })
}

/// The batch at `id`, or the 404.
fn find(store: &Store, id: &str) -> Result<usize, Box<Response>> {
    store
        .anthropic_index(id)
        .ok_or_else(|| Box::new(not_found(id)))
}

pub async fn get(
    _: AnthropicAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let store = state.batches.lock();
    match find(&store, &id) {
        Ok(i) => json_response(
            StatusCode::OK,
            batch_json(&store.anthropic[i], now_ms(), &headers),
        ),
        Err(refused) => *refused,
    }
}

pub async fn results(
    _: AnthropicAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let store = state.batches.lock();
    let batch = match find(&store, &id) {
        Ok(i) => &store.anthropic[i],
        Err(refused) => return *refused,
    };
    let (phase, done) = batch.timeline.at(now_ms());
    if phase.ended_at().is_none() {
        return invalid(&format!(
            "message batch {id} has not ended yet: its results are available once \
             processing_status is ended"
        ));
    }
    let mut out = String::new();
    for i in shuffled(&batch.items) {
        let item = &batch.items[i];
        // Built as text: the answers are stored serialized.
        let result = match (i < done, phase) {
            (true, _) if item.answer.ok() => {
                format!(r#"{{"type":"succeeded","message":{}}}"#, item.answer.body)
            }
            (true, _) => format!(r#"{{"type":"errored","error":{}}}"#, item.answer.body),
            (false, Phase::Expired(_)) => r#"{"type":"expired"}"#.to_owned(),
            (false, _) => r#"{"type":"canceled"}"#.to_owned(),
        };
        let _ = writeln!(
            out,
            r#"{{"custom_id":{},"result":{result}}}"#,
            quoted(&item.custom_id)
        );
    }
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/x-jsonl")],
        out,
    )
        .into_response()
}

pub async fn cancel(
    _: AnthropicAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    let now = now_ms();
    let mut store = state.batches.lock();
    let i = match find(&store, &id) {
        Ok(i) => i,
        Err(refused) => return *refused,
    };
    match store.anthropic[i].timeline.at(now).0 {
        Phase::Cancelling => {}
        phase if phase.ended_at().is_some() => {
            return invalid(&format!(
                "message batch {id} has already ended and cannot be canceled"
            ));
        }
        _ => {
            store.anthropic[i].timeline.cancel_at = Some(now);
            store.counts.anthropic_cancelled += 1;
        }
    }
    json_response(
        StatusCode::OK,
        batch_json(&store.anthropic[i], now, &headers),
    )
}

pub async fn delete(
    _: AnthropicAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let mut store = state.batches.lock();
    let i = match find(&store, &id) {
        Ok(i) => i,
        Err(refused) => return *refused,
    };
    if store.anthropic[i]
        .timeline
        .at(now_ms())
        .0
        .ended_at()
        .is_none()
    {
        return invalid(&format!(
            "message batch {id} is still processing: cancel it, and delete it once ended"
        ));
    }
    let batch = store.anthropic.remove(i);
    store.release(batch.bytes);
    store.counts.anthropic_deleted += 1;
    json_response(
        StatusCode::OK,
        json!({"id": id, "type": "message_batch_deleted"}),
    )
}

pub async fn list(
    _: AnthropicAuth,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let limit = match super::page_limit(&query) {
        Ok(n) => n,
        Err(message) => return invalid(&message),
    };
    let now = now_ms();
    let store = state.batches.lock();
    let newest_first: Vec<&MessageBatch> = store.anthropic.iter().rev().collect();
    let position = |id: &String| newest_first.iter().position(|b| b.id == *id);
    // after_id: the page after it (older); before_id: the page just before it (newer).
    let (page, has_more) = if let Some(before) = query.get("before_id") {
        let end = position(before).unwrap_or(0);
        let start = end.saturating_sub(limit);
        (&newest_first[start..end], start > 0)
    } else {
        let start = query.get("after_id").map_or(0, |after| {
            position(after).map_or(newest_first.len(), |p| p + 1)
        });
        let end = (start + limit).min(newest_first.len());
        (&newest_first[start..end], end < newest_first.len())
    };
    let data: Vec<Value> = page.iter().map(|b| batch_json(b, now, &headers)).collect();
    json_response(
        StatusCode::OK,
        json!({"data": data, "has_more": has_more,
            "first_id": page.first().map(|b| b.id.clone()),
            "last_id": page.last().map(|b| b.id.clone())}),
    )
}
