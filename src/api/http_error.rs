//! Errors in OpenAI's shape, and extractors whose rejections take that shape too.
//!
//! Clients such as the official `openai` package read `error.message` and `error.code` from
//! every non-2xx answer, so nothing here ever answers in plain text or with an empty body.

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use batchyard_jobs::error::{QueueError, StoreError};
use serde::de::DeserializeOwned;
use serde_json::json;

/// One failed request, as OpenAI's `{"error": {message, type, param, code}}`.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct ApiError {
    pub status: StatusCode,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<&'static str>,
    pub code: Option<&'static str>,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
            kind: "invalid_request_error",
            param: None,
            code: None,
        }
    }

    pub fn with_param(mut self, param: &'static str) -> Self {
        self.param = Some(param);
        self
    }

    pub fn with_code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = status;
        self
    }

    pub fn not_found(what: &str, id: &str) -> Self {
        Self::invalid(format!("no {what} with id {id:?}; check the id"))
            .with_status(StatusCode::NOT_FOUND)
    }

    pub fn unauthorized() -> Self {
        Self::invalid(
            "missing or invalid api key; send `Authorization: Bearer TOKEN` with a token from BATCHYARD_API_TOKENS",
        )
        .with_status(StatusCode::UNAUTHORIZED)
        .with_code("invalid_api_key")
    }

    /// A failure on our side: the details go to the log, not to the client, since they may
    /// name internal hosts.
    pub fn internal(context: &str, err: &dyn std::fmt::Display) -> Self {
        tracing::error!(error = %err, "{context}");
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            message: format!("{context}; the server logged the cause, try again later"),
            kind: "server_error",
            param: None,
            code: None,
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        Self::internal("object storage failed", &e)
    }
}

impl From<QueueError> for ApiError {
    fn from(e: QueueError) -> Self {
        Self::internal("redis failed", &e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({"error": {
            "message": self.message,
            "type": self.kind,
            "param": self.param,
            "code": self.code,
        }});
        (self.status, Json(body)).into_response()
    }
}

/// A JSON body whose rejections (wrong content type, bad JSON, unknown fields) are
/// OpenAI-shaped: 415 for the content type, 400 for the rest.
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(Self(v)),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::invalid(
                "the body must be JSON; send `Content-Type: application/json`",
            )
            .with_status(StatusCode::UNSUPPORTED_MEDIA_TYPE)),
            Err(e) => Err(ApiError::invalid(format!(
                "the JSON body is not valid: {}",
                e.body_text()
            ))
            .with_status(if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
                StatusCode::PAYLOAD_TOO_LARGE
            } else {
                StatusCode::BAD_REQUEST
            })),
        }
    }
}

/// Query parameters whose rejections are OpenAI-shaped 400s.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<T>::from_request_parts(parts, state)
            .await
            .map(|q| Self(q.0))
            .map_err(|e: QueryRejection| {
                ApiError::invalid(format!("bad query parameters: {}", e.body_text()))
            })
    }
}

pub async fn not_found() -> ApiError {
    ApiError::invalid("no such route; see the Batch API reference for the supported paths")
        .with_status(StatusCode::NOT_FOUND)
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::invalid("this method is not allowed on this path")
        .with_status(StatusCode::METHOD_NOT_ALLOWED)
}
