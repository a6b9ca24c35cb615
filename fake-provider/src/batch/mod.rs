//! The providers' batch APIs, on the fake's sped-up clock: OpenAI's Files and Batch APIs,
//! Anthropic's Message Batches, Gemini's batch mode and Bedrock's
//! batch inference. Each item is answered exactly as the real-time endpoint answers
//! the same body, at creation, and revealed as the batch's clock says (state is computed on
//! read: no task per batch). Everything lives in memory under `--batch-max-bytes`.
//!
//! Modules: `clock` (the `--batch-*` flags and the phase of a batch at a moment), `answer`
//! (one item answered by the real-time code), `store` (files, batches, byte cap, `/stats`
//! counts), `files` (OpenAI `/v1/files`), `input` (OpenAI input-file validation), `openai`
//! (OpenAI `/v1/batches`), `anthropic` (`/v1/messages/batches`), `gemini` (Gemini's
//! `batchGenerateContent` with inline requests, `/v1beta/batches`), `bedrock` (Bedrock's
//! batch inference jobs over an S3 server), `bedrock_records` (one Bedrock record answered).

pub mod answer;
pub mod anthropic;
pub mod bedrock;
pub mod bedrock_records;
pub mod clock;
pub mod files;
pub mod gemini;
pub mod input;
pub mod openai;
pub mod store;

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::extract::{DefaultBodyLimit, FromRequestParts};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};

use crate::AppState;
use clock::BatchOptions;
use store::Store;

/// The largest request body the batch routes read: Anthropic's 256 MB create (OpenAI's files
/// are at most 200 MB), or the store's cap when that is smaller.
const MAX_REQUEST_BYTES: u64 = 256 * 1024 * 1024;

#[derive(Debug, Default)]
pub struct Batches {
    store: Mutex<Store>,
    /// Held across a create, so its quota check and the batch it admits are one step.
    pub creating: tokio::sync::Mutex<()>,
    /// Bedrock's batch inference jobs.
    pub bedrock: Mutex<bedrock::Jobs>,
}

impl Batches {
    pub fn lock(&self) -> MutexGuard<'_, Store> {
        crate::lock(&self.store)
    }

    /// `/stats`' `batches` object.
    pub fn stats(&self) -> Value {
        let mut stats = self.lock().stats(now_ms());
        let bedrock = crate::lock(&self.bedrock).created() as u64;
        stats["bedrock_jobs_created"] = json!(bedrock);
        // `created` counts every API's accepted creates.
        stats["created"] = json!(stats["created"].as_u64().unwrap_or(0) + bedrock);
        stats
    }
}

/// The batch routes, their bodies allowed up to the store's cap.
pub fn routes(options: &BatchOptions) -> Router<Arc<AppState>> {
    let limit = options.max_bytes.min(MAX_REQUEST_BYTES) + 1024 * 1024;
    Router::new()
        .route("/v1/files", post(files::upload).get(files::list))
        .route("/v1/files/{id}", get(files::get).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(openai::create).get(openai::list))
        .route("/v1/batches/{id}", get(openai::get))
        .route("/v1/batches/{id}/cancel", post(openai::cancel))
        .route(
            "/v1/messages/batches",
            post(anthropic::create).get(anthropic::list),
        )
        .route(
            "/v1/messages/batches/{id}",
            get(anthropic::get).delete(anthropic::delete),
        )
        .route("/v1/messages/batches/{id}/results", get(anthropic::results))
        .route("/v1/messages/batches/{id}/cancel", post(anthropic::cancel))
        .route("/model-invocation-job", post(bedrock::create))
        .route("/model-invocation-job/{id}", get(bedrock::get))
        .route("/model-invocation-job/{id}/stop", post(bedrock::stop))
        .route("/model-invocation-jobs", get(bedrock::list))
        .route("/v1beta/batches", get(gemini::list))
        .route(
            "/v1beta/batches/{id}",
            get(gemini::get).delete(gemini::delete).post(gemini::cancel),
        )
        .layer(DefaultBodyLimit::max(
            usize::try_from(limit).unwrap_or(usize::MAX),
        ))
}

/// A request that passed the OpenAI dialect's key check (`--require-key`): the first
/// extractor of every OpenAI batch and files handler.
pub struct OpenAiAuth;

impl FromRequestParts<Arc<AppState>> for OpenAiAuth {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        crate::openai::check_auth(&state.options, &parts.headers).map_or(Ok(Self), Err)
    }
}

/// A request that passed the Anthropic dialect's checks (`x-api-key` with `--require-key`,
/// `anthropic-version` always).
pub struct AnthropicAuth;

impl FromRequestParts<Arc<AppState>> for AnthropicAuth {
    type Rejection = Response;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Response> {
        crate::anthropic::check_request(&state.options, &parts.headers).map_or(Ok(Self), Err)
    }
}

pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// OpenAI's error shape.
pub fn openai_error(status: StatusCode, message: &str, code: Option<&str>) -> Response {
    let kind = if status == StatusCode::INTERNAL_SERVER_ERROR {
        "server_error"
    } else {
        "invalid_request_error"
    };
    crate::json_response(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

/// Anthropic's error shape.
pub fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    crate::json_response(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

/// `limit` from a list query: 1 to 100, 20 when absent.
pub fn page_limit(query: &std::collections::HashMap<String, String>) -> Result<usize, String> {
    match query.get("limit") {
        None => Ok(20),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=100).contains(&n) => Ok(n),
            _ => Err(format!("limit must be between 1 and 100, not {v:?}")),
        },
    }
}
