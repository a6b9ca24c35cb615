//! The HTTP API of `batchyard serve`.
//!
//! - [`auth`]: bearer tokens for `/v1/*` and `/api/*`, compared in constant time, and the
//!   tenant each belongs to ([`auth::Caller`]).
//! - [`files`]: `/v1/files`, uploads and batch result files.
//! - [`batches`]: `/v1/batches`, OpenAI's Batch API over the ledger and the submission path.
//! - [`dashboard`]: the dashboard page at `/` and its `/assets/*` (public; reads `/api/*`).
//! - [`http_error`]: OpenAI-shaped errors, and extractors that reject in that shape.
//! - [`native`]: `/api/*`, batchyard's own read-only views for dashboards (same tokens).
//! - [`batch_retry`]: `POST /api/batches/{id}/retry`, the dashboard's replay button.
//! - [`pipeline_routes`]: `/api/pipelines`, scheduled pipelines, their runs, and run-now.
//! - [`state`]: [`ApiState`], what every handler shares.
//! - [`tenancy`]: which batches a caller's tenant may see (its own; `default` sees all).
//! - [`usage`]: `GET /api/usage`, batches, items and spend per tenant over a period.
//! - [`limits`] and [`listen`]: body and header timeouts, early 413s, a bound on connections.
//!
//! [`router`] builds the whole tree. Other faces (metrics, dashboard, native API) can be
//! merged into it with `router(state).merge(other)`: `other` must have no fallback of its own
//! (axum refuses to merge two), and the token layer covers only `/v1/*`, so a merged router
//! brings its own authentication if it needs any.

pub mod auth;
pub mod batch_retry;
pub mod batches;
pub mod dashboard;
pub mod files;
pub mod http_error;
pub mod limits;
pub mod listen;
pub mod native;
pub mod pipeline_routes;
pub mod state;
pub mod tenancy;
pub mod usage;

use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, middleware};
use serde_json::{Value, json};

pub use auth::{TOKENS_ENV, Tokens};
pub use state::ApiState;

/// The upload limit when `BATCHYARD_API_MAX_FILE_BYTES` is not set: OpenAI's 200 MB.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 200 * 1024 * 1024;
pub const MAX_FILE_BYTES_ENV: &str = "BATCHYARD_API_MAX_FILE_BYTES";
/// For tests: the length in seconds that the API gives `completion_window: "24h"`, so that
/// expiry can be seen without waiting a day. Clients still send (and see) `"24h"`.
pub const WINDOW_SECS_ENV: &str = "BATCHYARD_API_WINDOW_SECS";
/// JSON bodies are small; this only stops abuse.
const MAX_JSON_BYTES: usize = 1024 * 1024;
/// How long a readiness probe waits on Redis or storage.
const READY_TIMEOUT: Duration = Duration::from_secs(3);

/// The whole API: `/v1/*` and `/api/*` behind the token check, probes and the fallback
/// outside it.
pub fn router(state: ApiState) -> Router {
    // Room for the multipart framing around the file itself.
    let upload_limit =
        usize::try_from(state.max_file_bytes.saturating_add(64 * 1024)).unwrap_or(usize::MAX);
    let body_limits = limits::BodyLimits {
        upload: u64::try_from(upload_limit).unwrap_or(u64::MAX),
        json: MAX_JSON_BYTES as u64,
        idle: state.body_timeout,
    };
    let v1 = Router::new()
        .route(
            "/v1/files",
            post(files::upload).layer(DefaultBodyLimit::max(upload_limit)),
        )
        .route("/v1/files/{id}", get(files::retrieve).delete(files::delete))
        .route("/v1/files/{id}/content", get(files::content))
        .route("/v1/batches", post(batches::create).get(batches::list))
        .route("/v1/batches/{id}", get(batches::retrieve))
        .route("/v1/batches/{id}/cancel", post(batches::cancel))
        .route("/api/queues", get(native::queues))
        .route("/api/queues/history", get(native::queue_history))
        .route("/api/batches", get(native::batches))
        .route("/api/batches/{id}", get(native::batch))
        .route("/api/batches/{id}/retry", post(batch_retry::retry_batch))
        .route("/api/models", get(native::models))
        .route("/api/usage", get(usage::usage))
        .route("/api/pipelines", get(pipeline_routes::list))
        .route("/api/pipelines/{name}/runs", get(pipeline_routes::runs))
        .route("/api/pipelines/{name}/run", post(pipeline_routes::run_now))
        .layer(DefaultBodyLimit::max(MAX_JSON_BYTES))
        .route_layer(middleware::from_fn_with_state(
            state.tokens.clone(),
            auth::require_token,
        ));
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .merge(v1)
        // The dashboard page and its assets are public: the data comes from `/api/*`.
        .merge(dashboard::router())
        .fallback(http_error::not_found)
        .method_not_allowed_fallback(http_error::method_not_allowed)
        .layer(middleware::from_fn_with_state(
            body_limits,
            limits::limit_bodies,
        ))
        .with_state(state)
}

/// The process is up.
async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// Redis and object storage answer: one cheap read of each.
async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    let redis = tokio::time::timeout(READY_TIMEOUT, state.app.ledger.list(1)).await;
    let probe = state.app.store.path_of(batchyard_jobs::keys::API_READYZ);
    let storage = tokio::time::timeout(READY_TIMEOUT, state.app.store.exists(&probe)).await;
    let redis_ok = matches!(redis, Ok(Ok(_)));
    let storage_ok = matches!(storage, Ok(Ok(_)));
    let status = if redis_ok && storage_ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    (
        status,
        Json(json!({
            "status": word(redis_ok && storage_ok),
            "redis": word(redis_ok),
            "storage": word(storage_ok),
        })),
    )
}
