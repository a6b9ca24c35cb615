//! OpenAI's Files API, as far as batches use it: `POST /v1/files` (multipart: `purpose`
//! `batch`, `file`), `GET /v1/files` (`purpose`, `limit`, `after`, `order`),
//! `GET /v1/files/{id}`, `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::store::File;
use super::{OpenAiAuth, openai_error};
use crate::{AppState, json_response};

/// OpenAI's limit on a batch input file.
pub const MAX_BATCH_FILE_BYTES: usize = 200 * 1024 * 1024;

fn not_found(id: &str) -> Response {
    openai_error(
        StatusCode::NOT_FOUND,
        &format!("No such File object: {id}"),
        None,
    )
}

pub async fn upload(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Response {
    let mut multipart = match multipart {
        Ok(m) => m,
        Err(e) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                &format!("the body must be multipart/form-data with purpose and file: {e}"),
                None,
            );
        }
    };
    let (mut purpose, mut file) = (None, None);
    loop {
        let field = match multipart.next_field().await {
            Ok(Some(field)) => field,
            Ok(None) => break,
            Err(e) => return openai_error(e.status(), &e.body_text(), None),
        };
        let name = field.name().unwrap_or("").to_owned();
        let filename = field.file_name().unwrap_or("upload.jsonl").to_owned();
        let bytes = match field.bytes().await {
            Ok(b) => b,
            Err(e) => return openai_error(e.status(), &e.body_text(), None),
        };
        match name.as_str() {
            "purpose" => purpose = Some(String::from_utf8_lossy(&bytes).trim().to_owned()),
            "file" => file = Some((filename, bytes)),
            _ => {}
        }
    }
    let (Some(purpose), Some((filename, content))) = (purpose, file) else {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "purpose and file are both required",
            None,
        );
    };
    if purpose != "batch" {
        return openai_error(
            StatusCode::BAD_REQUEST,
            &format!("the fake stores batch inputs only: purpose must be batch, not {purpose:?}"),
            None,
        );
    }
    if content.len() > MAX_BATCH_FILE_BYTES {
        return openai_error(
            StatusCode::BAD_REQUEST,
            "File is too large: batch input files can be at most 200 MB",
            None,
        );
    }
    let mut store = state.batches.lock();
    if !store.reserve(content.len() as u64, state.options.batch.max_bytes) {
        return openai_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "the fake's batch store is full (--batch-max-bytes): delete files you no longer need",
            None,
        );
    }
    let id = store.add_file(&filename, &purpose, content);
    store.counts.files_uploaded += 1;
    match store.files.get(&id) {
        Some(file) => json_response(StatusCode::OK, file.json()),
        None => not_found(&id),
    }
}

/// `GET /v1/files?purpose=&limit=&after=&order=`: newest first unless `order=asc`, up to
/// 10,000 a page, as OpenAI's.
pub async fn list(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    Query(query): Query<HashMap<String, String>>,
) -> Response {
    let limit = match query.get("limit").map(|v| v.parse::<usize>()) {
        None => 10_000,
        Some(Ok(n)) if (1..=10_000).contains(&n) => n,
        Some(_) => {
            return openai_error(
                StatusCode::BAD_REQUEST,
                "limit must be between 1 and 10000",
                None,
            );
        }
    };
    let store = state.batches.lock();
    let mut files: Vec<&File> = store
        .files
        .values()
        .filter(|f| query.get("purpose").is_none_or(|p| *p == f.purpose))
        .collect();
    files.sort_by_key(|f| f.seq);
    if query.get("order").map(String::as_str) != Some("asc") {
        files.reverse();
    }
    if let Some(after) = query.get("after") {
        let start = files
            .iter()
            .position(|f| f.id == *after)
            .map_or(files.len(), |p| p + 1);
        files.drain(..start);
    }
    let has_more = files.len() > limit;
    files.truncate(limit);
    json_response(
        StatusCode::OK,
        json!({"object": "list", "data": files.iter().map(|f| f.json()).collect::<Vec<_>>(),
            "first_id": files.first().map(|f| &f.id), "last_id": files.last().map(|f| &f.id),
            "has_more": has_more}),
    )
}

pub async fn get(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    match state.batches.lock().files.get(&id) {
        Some(file) => json_response(StatusCode::OK, file.json()),
        None => not_found(&id),
    }
}

pub async fn content(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let content = state
        .batches
        .lock()
        .files
        .get(&id)
        .map(|f| f.content.clone());
    match content {
        Some(bytes) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/octet-stream")],
            bytes,
        )
            .into_response(),
        None => not_found(&id),
    }
}

pub async fn delete(
    _: OpenAiAuth,
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Response {
    let mut store = state.batches.lock();
    let Some(file) = store.files.remove(&id) else {
        return not_found(&id);
    };
    store.release(file.content.len() as u64);
    store.counts.files_deleted += 1;
    json_response(
        StatusCode::OK,
        json!({"id": id, "object": "file", "deleted": true}),
    )
}
