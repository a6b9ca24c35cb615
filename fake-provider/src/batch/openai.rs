//! OpenAI's Batch API: `POST /v1/batches`, `GET /v1/batches/{id}`,
//! `POST /v1/batches/{id}/cancel`, `GET /v1/batches?limit=&after=` (newest first).
//!
//! A batch ends with an output file (the lines whose answer was a 2xx: `{id, custom_id,
//! response: {status_code, request_id, body}, error: null}`) and an error file (the lines
//! answered with an error status, same shape; and, for an expired or cancelled batch, the
//! lines never run: `response: null, error: {code: batch_expired | batch_cancelled}`), each
//! in no particular order and absent (`null`) when it would be empty. `request_counts`:
//! `completed` counts 2xx answers, `failed` error answers; lines never run are in neither.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::answer::{self, Answer, Api};
use super::clock::{Phase, Timeline};
use super::input::{self, Line};
use super::store::{Item, OpenAiBatch, Store, quoted, shuffled};
use super::{OpenAiAuth, now_ms, openai_error};
use crate::{AppState, json_response};

const ENDPOINT: &str = "/v1/chat/completions";

fn bad(message: &str) -> Response {
    openai_error(StatusCode::BAD_REQUEST, message, None)
}

/// `metadata`: at most 16 pairs, keys up to 64 characters, string values up to 512.
fn check_metadata(metadata: Option<&Value>) -> Result<Value, Box<Response>> {
    match metadata {
        None | Some(Value::Null) => Ok(Value::Null),
        Some(Value::Object(m))
            if m.len() <= 16
                && m.iter().all(|(k, v)| {
                    k.chars().count() <= 64 && v.as_str().is_some_and(|v| v.chars().count() <= 512)
                }) =>
        {
            Ok(Value::Object(m.clone()))
        }
        Some(_) => Err(Box::new(bad(
            "metadata must be an object of at most 16 string pairs (keys up to 64 characters, \
             values up to 512)",
        ))),
    }
}

pub async fn create(_: OpenAiAuth, State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let Ok(Value::Object(request)) = serde_json::from_slice::<Value>(&body) else {
        return bad("We could not parse the JSON body of your request.");
    };
    let field = |k: &str| request.get(k).and_then(Value::as_str).unwrap_or("");
    let (input_file_id, endpoint, window) = (
        field("input_file_id"),
        field("endpoint"),
        field("completion_window"),
    );
    if endpoint != ENDPOINT {
        return bad(&format!(
            "the fake batches {ENDPOINT} only: endpoint {endpoint:?} is not supported"
        ));
    }
    if window != "24h" {
        return bad(&format!(
            "completion_window must be 24h, not {window:?} (the fake's --batch-window-secs says \
             what 24h means)"
        ));
    }
    let metadata = match check_metadata(request.get("metadata")) {
        Ok(m) => m,
        Err(refused) => return *refused,
    };
    let content = match state.batches.lock().files.get(input_file_id) {
        Some(file) if file.purpose == "batch" => file.content.clone(),
        Some(_) => return bad("the input file's purpose must be batch"),
        None => return bad(&format!("Invalid input_file_id: no file {input_file_id:?}")),
    };
    // One create at a time, so the quota check and the batch it admits are one step.
    let _serial = state.batches.creating.lock().await;
    let now = now_ms();
    let options = &state.options.batch;
    let mut batch = OpenAiBatch {
        id: String::new(),
        input_file_id: input_file_id.to_owned(),
        endpoint: endpoint.to_owned(),
        completion_window: window.to_owned(),
        metadata,
        model: None,
        timeline: Timeline::new(options, now, 0, false),
        items: Vec::new(),
        errors: Vec::new(),
        tokens: BTreeMap::new(),
        output_file_id: None,
        error_file_id: None,
        files_written: false,
        bytes: 0,
    };
    match input::validate(&content, endpoint) {
        Ok(lines) => {
            tally(&mut batch, &lines);
            batch.errors = over_quota(&state, &batch.tokens, now);
            if batch.errors.is_empty() {
                batch.items = answer_all(&state, &lines).await;
            }
        }
        Err(errors) => batch.errors = errors,
    }
    let failed = !batch.errors.is_empty();
    // The clock starts once every item has its answer, however long that took.
    let now = now_ms();
    batch.timeline = Timeline::new(options, now, batch.items.len(), failed);
    batch.bytes = batch.items.iter().map(|i| i.answer.bytes()).sum();
    let mut store = state.batches.lock();
    if !store.reserve(batch.bytes, options.max_bytes) {
        return openai_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the fake's batch store is full (--batch-max-bytes): delete files and let batches end",
            None,
        );
    }
    batch.id = format!("batch_fake{}", store.next());
    let body = batch_json(&batch, now);
    store.openai.push(batch);
    store.counts.openai_created += 1;
    json_response(StatusCode::OK, body)
}

/// The model and the estimated input tokens per model.
fn tally(batch: &mut OpenAiBatch, lines: &[Line]) {
    for line in lines {
        if let Some((model, tokens)) = answer::input_tokens(Api::OpenAi, &line.body) {
            *batch.tokens.entry(model.clone()).or_default() += tokens;
            batch.model.get_or_insert(model);
        }
    }
}

/// `token_limit_exceeded` when a model's enqueued tokens would pass the limit.
fn over_quota(state: &AppState, tokens: &BTreeMap<String, u64>, now: u64) -> Vec<Value> {
    let Some(limit) = state.options.batch.enqueued_token_limit else {
        return Vec::new();
    };
    let store = state.batches.lock();
    tokens
        .iter()
        .filter(|(model, n)| store.openai_enqueued(model, now) + **n > limit)
        .map(|(model, _)| {
            json!({"code": "token_limit_exceeded", "line": null, "param": null,
            "message": format!("Enqueued token limit reached for {model} in organization \
                org-fake. Limit: {limit} enqueued tokens. Please try again once some \
                in_progress batches have been completed.")})
        })
        .take(1)
        .collect()
}

async fn answer_all(state: &AppState, lines: &[Line]) -> Vec<Item> {
    let mut items = Vec::with_capacity(lines.len());
    for (i, line) in lines.iter().enumerate() {
        // A big batch takes a while to answer: let the other requests through meanwhile.
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
        let answer = if state.options.batch.item_fails(&line.custom_id) {
            let n = state
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Answer::server_error(Api::OpenAi, format!("fakereq-{n}"))
        } else {
            answer::answer(state, Api::OpenAi, &line.body).await
        };
        items.push(Item {
            custom_id: line.custom_id.clone(),
            answer,
        });
    }
    items
}

/// Once the batch has completed, expired or been cancelled: its output and error files.
fn write_files(store: &mut Store, index: usize, now: u64) {
    let Some(batch) = store.openai.get(index) else {
        return;
    };
    let (phase, done) = batch.timeline.at(now);
    let never_run = match phase {
        _ if batch.files_written => return,
        Phase::Completed(_) => ("", ""),
        Phase::Expired(_) => (
            "batch_expired",
            "This request could not be executed before the completion window expired.",
        ),
        Phase::Cancelled(_) => (
            "batch_cancelled",
            "This request could not be executed before the batch was cancelled.",
        ),
        _ => return,
    };
    let never_run = json!({"code": never_run.0, "message": never_run.1});
    let (mut output, mut errors) = (String::new(), String::new());
    for i in shuffled(&batch.items) {
        let item = &batch.items[i];
        let head = format!(
            r#"{{"id":"batch_req_{}_{i}","custom_id":{}"#,
            batch.id,
            quoted(&item.custom_id)
        );
        // Built as text: the answers are stored serialized.
        let _ = match (i < done, item.answer.ok()) {
            (true, ok) => writeln!(
                if ok { &mut output } else { &mut errors },
                r#"{head},"response":{{"status_code":{},"request_id":{},"body":{}}},"error":null}}"#,
                item.answer.status,
                quoted(&item.answer.request_id),
                item.answer.body
            ),
            (false, _) => writeln!(errors, r#"{head},"response":null,"error":{never_run}}}"#),
        };
    }
    let output_id = add_file(
        store,
        &format!("{}_output.jsonl", store.openai[index].id),
        output,
    );
    let error_id = add_file(
        store,
        &format!("{}_error.jsonl", store.openai[index].id),
        errors,
    );
    let batch = &mut store.openai[index];
    batch.output_file_id = output_id;
    batch.error_file_id = error_id;
    batch.files_written = true;
    // The answers now live in the files (deleting them frees the bytes); the batch keeps
    // only what its counts and usage need.
    for item in &mut batch.items {
        item.answer.body = String::new();
    }
    let freed = std::mem::take(&mut batch.bytes);
    store.release(freed);
}

/// A result file (none when empty). Counted in the store's bytes, past the cap if need be:
/// the answers it holds were admitted when the batch was.
fn add_file(store: &mut Store, filename: &str, content: String) -> Option<String> {
    if content.is_empty() {
        return None;
    }
    store.bytes += content.len() as u64;
    Some(store.add_file(filename, "batch_output", Bytes::from(content)))
}

fn batch_json(batch: &OpenAiBatch, now: u64) -> Value {
    let t = &batch.timeline;
    let (phase, done) = t.at(now);
    // A milestone shows once passed, unless the batch was cancelled or expired before it.
    let cut = t.cancel_at.unwrap_or(u64::MAX).min(if t.expires() {
        t.expires_at()
    } else {
        u64::MAX
    });
    let passed = |ms: u64| (ms <= now && ms <= cut).then_some(ms / 1000);
    let ended =
        |status: &str| (phase.name() == status).then(|| phase.ended_at().unwrap_or(0) / 1000);
    let done_items = &batch.items[..done.min(batch.items.len())];
    let completed = done_items.iter().filter(|i| i.answer.ok()).count();
    let sum = |f: fn(&Answer) -> u64| done_items.iter().map(|i| f(&i.answer)).sum::<u64>();
    let (input, output) = (sum(|a| a.input_tokens), sum(|a| a.output_tokens));
    let total = if t.failed || phase == Phase::Validating {
        0
    } else {
        t.items
    };
    let errors =
        (!batch.errors.is_empty()).then(|| json!({"object": "list", "data": batch.errors}));
    let mut body = Map::new();
    for (k, v) in [
        ("id", json!(batch.id)),
        ("object", json!("batch")),
        ("endpoint", json!(batch.endpoint)),
        ("model", json!(batch.model)),
        ("errors", json!(errors)),
        ("input_file_id", json!(batch.input_file_id)),
        ("completion_window", json!(batch.completion_window)),
        ("status", json!(phase.name())),
        ("output_file_id", json!(batch.output_file_id)),
        ("error_file_id", json!(batch.error_file_id)),
        ("created_at", json!(t.created_ms / 1000)),
        (
            "in_progress_at",
            json!(passed(t.validated_at()).filter(|_| !t.failed)),
        ),
        ("expires_at", json!(t.expires_at() / 1000)),
        (
            "finalizing_at",
            json!(passed(t.processed_at()).filter(|_| !t.failed && !t.expires())),
        ),
        ("completed_at", json!(ended("completed"))),
        ("failed_at", json!(ended("failed"))),
        ("expired_at", json!(ended("expired"))),
        (
            "cancelling_at",
            json!(t.cancel_at.filter(|c| *c <= now).map(|c| c / 1000)),
        ),
        ("cancelled_at", json!(ended("cancelled"))),
        (
            "request_counts",
            json!({"total": total, "completed": completed,
            "failed": done_items.len() - completed}),
        ),
        (
            "usage",
            json!({"input_tokens": input,
            "input_tokens_details": {"cached_tokens": sum(|a| a.cached_tokens)},
            "output_tokens": output, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": input + output}),
        ),
        ("metadata", batch.metadata.clone()),
    ] {
        body.insert(k.to_owned(), v);
    }
    Value::Object(body)
}

fn not_found(id: &str) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        &format!("No batch found with id '{id}'."),
        None,
    )
}

/// The batch as it stands now (its files written if it has ended).
fn view(store: &mut Store, index: usize, now: u64) -> Value {
    write_files(store, index, now);
    batch_json(&store.openai[index], now)
}

pub async fn get(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let mut store = state.batches.lock();
    match store.openai_index(&id) {
        Some(index) => json_response(StatusCode::OK, view(&mut store, index, now_ms())),
        None => not_found(&id),
    }
}

pub async fn cancel(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let now = now_ms();
    let mut store = state.batches.lock();
    let Some(index) = store.openai_index(&id) else {
        return not_found(&id);
    };
    let phase = store.openai[index].timeline.at(now).0;
    match phase {
        Phase::Validating | Phase::InProgress | Phase::Finalizing => {
            store.openai[index].timeline.cancel_at = Some(now);
            store.counts.openai_cancelled += 1;
        }
        Phase::Cancelling => {}
        ended => {
            return bad(&format!(
                "Cannot cancel a batch with status '{}'.",
                ended.name()
            ));
        }
    }
    json_response(StatusCode::OK, view(&mut store, index, now))
}

pub async fn list(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = match super::page_limit(&query) {
        Ok(n) => n,
        Err(message) => return bad(&message),
    };
    let now = now_ms();
    let mut store = state.batches.lock();
    // Newest first; `after` is the last id of the previous page.
    let mut newest_first: Vec<usize> = (0..store.openai.len()).rev().collect();
    if let Some(after) = query.get("after") {
        let start = newest_first
            .iter()
            .position(|i| store.openai[*i].id == *after)
            .map_or(newest_first.len(), |p| p + 1);
        newest_first.drain(..start);
    }
    let has_more = newest_first.len() > limit;
    newest_first.truncate(limit);
    let data: Vec<Value> = newest_first
        .into_iter()
        .map(|i| view(&mut store, i, now))
        .collect();
    let first_id = data.first().map(|b| b["id"].clone());
    let last_id = data.last().map(|b| b["id"].clone());
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": data, "first_id": first_id, "last_id": last_id,
            "has_more": has_more}),
    )
}
