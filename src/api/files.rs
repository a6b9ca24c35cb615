//! `/v1/files`: uploads for batch input, and the output and error files of batches.
//!
//! An upload lives at `files/<file_id>.jsonl` (the `.jsonl` suffix lets the submission path
//! read it as a JSONL object) beside `files/<file_id>.json`, its metadata. A batch's result
//! files are not copied: `file-<batch_id>-output` and `file-<batch_id>-errors` name its
//! `output.jsonl` and `errors.jsonl` where the finalizer wrote them.

use axum::body::Body;
use axum::extract::multipart::MultipartRejection;
use axum::extract::{Multipart, Path as UrlPath, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use batchyard_jobs::batch::now_secs;
use bytes::Bytes;
use object_store::path::Path;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::auth::Caller;
use super::http_error::ApiError;
use super::state::ApiState;

/// What we keep about an uploaded file, in `files/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FileMeta {
    pub id: String,
    pub bytes: u64,
    pub created_at: u64,
    pub filename: String,
    pub purpose: String,
    /// Whose upload it is: only that tenant's tokens (and the `default` tenant's) see it.
    /// Uploads from before tenants are the `default` tenant's.
    #[serde(default = "default_tenant")]
    pub tenant: String,
}

fn default_tenant() -> String {
    super::auth::DEFAULT_TENANT.to_string()
}

impl FileMeta {
    pub fn object(&self) -> Value {
        json!({
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": null,
        })
    }
}

/// Which of a batch's result files an id names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResultKind {
    Output,
    Errors,
}

/// What a file id names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileId {
    Upload(String),
    BatchResult(String, ResultKind),
}

/// Ids become object keys, so only key-safe characters pass (no `/`, no `..`).
pub fn key_safe(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

pub fn result_file_id(batch_id: &str, kind: ResultKind) -> String {
    match kind {
        ResultKind::Output => format!("file-{batch_id}-output"),
        ResultKind::Errors => format!("file-{batch_id}-errors"),
    }
}

impl FileId {
    pub fn parse(id: &str) -> Result<Self, ApiError> {
        let bad = || ApiError::not_found("file", id);
        if !key_safe(id) {
            return Err(bad());
        }
        let rest = id.strip_prefix("file-").ok_or_else(bad)?;
        if let Some(batch) = rest.strip_prefix("batch_") {
            let (ulid, kind) = if let Some(u) = batch.strip_suffix("-output") {
                (u, ResultKind::Output)
            } else if let Some(u) = batch.strip_suffix("-errors") {
                (u, ResultKind::Errors)
            } else if let Some(u) = batch.strip_suffix("-input") {
                // The `input_file_id` of a batch that did not come through `/v1/files`.
                return Err(ApiError::invalid(format!(
                    "file {id} names the input of batch batch_{u}, which was submitted from the CLI or a pipeline and is not kept as an uploaded file; read the input where it was submitted from"
                ))
                .with_status(StatusCode::NOT_FOUND));
            } else {
                return Err(bad());
            };
            return Ok(Self::BatchResult(format!("batch_{ulid}"), kind));
        }
        Ok(Self::Upload(id.to_string()))
    }
}

pub fn content_path(state: &ApiState, file_id: &str) -> Path {
    state
        .app
        .store
        .path_of(&batchyard_jobs::keys::upload_content(file_id))
}

fn meta_path(state: &ApiState, file_id: &str) -> Path {
    state
        .app
        .store
        .path_of(&batchyard_jobs::keys::upload_meta(file_id))
}

/// The metadata of an uploaded file `caller` may see, or `None`: another tenant's upload is
/// as absent as one that never was, so ids don't leak across tenants.
pub async fn upload_meta(
    state: &ApiState,
    caller: &Caller,
    file_id: &str,
) -> Result<Option<FileMeta>, ApiError> {
    match state.app.store.get(&meta_path(state, file_id)).await {
        Ok(bytes) => serde_json::from_slice::<FileMeta>(&bytes)
            .map(|meta| caller.may_see(&meta.tenant).then_some(meta))
            .map_err(|e| ApiError::internal("a file's metadata is not valid JSON", &e)),
        Err(batchyard_jobs::error::StoreError::NotFound { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The object behind a file id and its file object, or 404.
async fn resolve(state: &ApiState, caller: &Caller, id: &str) -> Result<(Path, Value), ApiError> {
    match FileId::parse(id)? {
        FileId::Upload(file_id) => {
            let meta = upload_meta(state, caller, &file_id)
                .await?
                .ok_or_else(|| ApiError::not_found("file", id))?;
            Ok((content_path(state, &file_id), meta.object()))
        }
        FileId::BatchResult(batch_id, kind) => {
            if !super::tenancy::may_see_batch(state, caller, &batch_id).await? {
                return Err(ApiError::not_found("file", id));
            }
            let store = &state.app.store;
            let (path, suffix) = match kind {
                ResultKind::Output => (store.output_path(&batch_id), "output"),
                ResultKind::Errors => (store.errors_path(&batch_id), "errors"),
            };
            let head = store
                .head(&path)
                .await?
                .ok_or_else(|| ApiError::not_found("file", id))?;
            let object = json!({
                "id": id,
                "object": "file",
                "bytes": head.size,
                "created_at": head.last_modified.timestamp().max(0),
                "filename": format!("{batch_id}_{suffix}.jsonl"),
                "purpose": "batch_output",
                "status": "processed",
                "status_details": null,
            });
            Ok((path, object))
        }
    }
}

pub async fn retrieve(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(resolve(&state, &caller, &id).await?.1))
}

/// Streams the bytes, so a large output never sits whole in memory.
pub async fn content(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Result<Response, ApiError> {
    let (path, _) = resolve(&state, &caller, &id).await?;
    let stream = state.app.store.get_stream(&path).await?;
    Ok((
        [(header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

pub async fn delete(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    UrlPath(id): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    match FileId::parse(&id)? {
        FileId::BatchResult(..) => Err(ApiError::invalid(
            "a batch's output and error files belong to the batch and can't be deleted on their own",
        )),
        FileId::Upload(file_id) => {
            if upload_meta(&state, &caller, &file_id).await?.is_none() {
                return Err(ApiError::not_found("file", &id));
            }
            // Metadata last: while it exists the file is listed, so a half-done delete can be
            // repeated.
            state
                .app
                .store
                .delete(&content_path(&state, &file_id))
                .await?;
            state.app.store.delete(&meta_path(&state, &file_id)).await?;
            Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
        }
    }
}

/// `POST /v1/files`: multipart `purpose=batch` and `file`. The file streams to storage.
pub async fn upload(
    State(state): State<ApiState>,
    Extension(caller): Extension<Caller>,
    multipart: Result<Multipart, MultipartRejection>,
) -> Result<Json<Value>, ApiError> {
    let mut multipart = multipart.map_err(|e| {
        ApiError::invalid(format!(
            "the body must be multipart/form-data with fields `purpose` and `file`: {}",
            e.body_text()
        ))
        .with_status(if e.status() == StatusCode::BAD_REQUEST {
            StatusCode::UNSUPPORTED_MEDIA_TYPE
        } else {
            e.status()
        })
    })?;
    // The same sortable, key-safe ULID as batch ids (ulid is not a dependency of this crate).
    let batch_style = batchyard_jobs::job::new_batch_id();
    let file_id = format!(
        "file-{}",
        batch_style.strip_prefix("batch_").unwrap_or(&batch_style)
    );
    let mut purpose: Option<String> = None;
    let mut stored: Option<(String, u64)> = None;
    let result = async {
        while let Some(mut field) = multipart.next_field().await.map_err(multipart_error)? {
            match field.name() {
                Some("purpose") => {
                    purpose = Some(field.text().await.map_err(multipart_error)?);
                }
                Some("file") if stored.is_none() => {
                    let filename = field.file_name().unwrap_or("upload.jsonl").to_string();
                    let path = content_path(&state, &file_id);
                    let mut writer = state.app.store.writer(&path);
                    let mut bytes = 0u64;
                    while let Some(chunk) = field.chunk().await.map_err(multipart_error)? {
                        bytes += chunk.len() as u64;
                        if bytes > state.max_file_bytes {
                            let _ = writer.abort().await;
                            return Err(too_large(state.max_file_bytes));
                        }
                        writer
                            .write_all(&chunk)
                            .await
                            .map_err(|e| ApiError::internal("storing the upload failed", &e))?;
                    }
                    writer
                        .shutdown()
                        .await
                        .map_err(|e| ApiError::internal("storing the upload failed", &e))?;
                    stored = Some((filename, bytes));
                }
                _ => {
                    // Unknown fields are drained and ignored, as OpenAI does.
                    while field.chunk().await.map_err(multipart_error)?.is_some() {}
                }
            }
        }
        Ok::<(), ApiError>(())
    }
    .await;
    let outcome = result.and_then(|()| match (purpose.as_deref(), &stored) {
        (Some("batch"), Some(_)) => Ok(()),
        (_, None) => Err(ApiError::invalid("the form has no `file` field").with_param("file")),
        (None, _) => Err(
            ApiError::invalid("the form has no `purpose` field; send purpose=batch")
                .with_param("purpose"),
        ),
        (Some(other), _) => Err(ApiError::invalid(format!(
            "purpose {other:?} is not supported; this server takes purpose=batch"
        ))
        .with_param("purpose")),
    });
    if let Err(e) = outcome {
        if stored.is_some() {
            let _ = state
                .app
                .store
                .delete(&content_path(&state, &file_id))
                .await;
        }
        return Err(e);
    }
    let (filename, bytes) = stored.unwrap_or_default();
    let meta = FileMeta {
        id: file_id.clone(),
        bytes,
        created_at: now_secs(),
        filename,
        purpose: "batch".into(),
        tenant: caller.tenant.to_string(),
    };
    let body = serde_json::to_vec(&meta)
        .map_err(|e| ApiError::internal("encoding a file's metadata failed", &e))?;
    state
        .app
        .store
        .put(&meta_path(&state, &file_id), Bytes::from(body))
        .await?;
    tracing::info!(file_id = %file_id, bytes, "file uploaded");
    Ok(Json(meta.object()))
}

fn too_large(max: u64) -> ApiError {
    ApiError::invalid(format!(
        "the file is larger than this server's limit of {max} bytes; split it, or raise BATCHYARD_API_MAX_FILE_BYTES"
    ))
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn multipart_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::invalid(
            "the upload is larger than this server's limit; split it, or raise BATCHYARD_API_MAX_FILE_BYTES",
        )
        .with_status(status);
    }
    ApiError::invalid(format!(
        "the multipart body is not valid: {}",
        e.body_text()
    ))
    .with_status(if status.is_client_error() {
        status
    } else {
        StatusCode::BAD_REQUEST
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn file_ids_parse_and_reject_unsafe_keys() {
        assert_eq!(
            FileId::parse("file-01abc").unwrap(),
            FileId::Upload("file-01abc".into())
        );
        assert_eq!(
            FileId::parse("file-batch_01abc-output").unwrap(),
            FileId::BatchResult("batch_01abc".into(), ResultKind::Output)
        );
        assert_eq!(
            FileId::parse(&result_file_id("batch_9", ResultKind::Errors)).unwrap(),
            FileId::BatchResult("batch_9".into(), ResultKind::Errors)
        );
        for bad in [
            "",
            "file-../x",
            "file-a/b",
            "nope",
            "file-batch_1-other",
            "file-a.b",
        ] {
            assert_eq!(
                FileId::parse(bad).unwrap_err().status,
                StatusCode::NOT_FOUND,
                "{bad}"
            );
        }
    }
}
