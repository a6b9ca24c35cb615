//! Request bodies: refused early when `Content-Length` is over the limit of their route, and
//! failed when they stall (see [`super::listen`] for headers and connections).

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tower_http::timeout::TimeoutBody;

use super::http_error::ApiError;

/// How long a request body may go without sending a byte when `BATCHYARD_API_BODY_TIMEOUT_SECS`
/// is not set.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);
pub const BODY_TIMEOUT_ENV: &str = "BATCHYARD_API_BODY_TIMEOUT_SECS";
/// How long a client has to send a whole request head (`BATCHYARD_API_HEADER_TIMEOUT_SECS`).
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const HEADER_TIMEOUT_ENV: &str = "BATCHYARD_API_HEADER_TIMEOUT_SECS";
/// Open connections at most (`BATCHYARD_API_MAX_CONNECTIONS`), lowered to fit `ulimit -n`.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
pub const MAX_CONNECTIONS_ENV: &str = "BATCHYARD_API_MAX_CONNECTIONS";

#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    /// `POST /v1/files`: the upload limit plus room for the multipart framing.
    pub upload: u64,
    /// Every other route.
    pub json: u64,
    pub idle: Duration,
}

/// Answers 413 before reading a byte of a body announced over the limit, and fails a body that
/// sends nothing for `idle`.
pub async fn limit_bodies(
    State(limits): State<BodyLimits>,
    request: Request,
    next: Next,
) -> Response {
    let limit = if request.method() == Method::POST && request.uri().path() == "/v1/files" {
        limits.upload
    } else {
        limits.json
    };
    let announced = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    if let Some(length) = announced.filter(|n| *n > limit) {
        let mut response = ApiError::invalid(format!(
            "the request body of {length} bytes is over this endpoint's limit of {limit} bytes; send less (uploads: raise BATCHYARD_API_MAX_FILE_BYTES)"
        ))
        .with_status(axum::http::StatusCode::PAYLOAD_TOO_LARGE)
        .with_code("request_too_large")
        .into_response();
        // The body is never read, so the connection can't carry another request.
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    let request = request.map(|body| Body::new(TimeoutBody::new(limits.idle, body)));
    next.run(request).await
}
