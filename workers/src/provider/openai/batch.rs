//! OpenAI's Batch API on the same endpoint as the real-time calls: the requests uploaded as a
//! JSONL file (`POST /files`, purpose `batch`), one batch over it (`POST /batches`, window
//! `24h`, `metadata.batchyard_tag` naming it), its state (`GET /batches/{id}`), its output and
//! error files (`GET /files/{id}/content`), cancel, and deleting the files afterwards.

use reqwest::Method;
use serde_json::{Value, json};

use super::{OpenAiProvider, classify, request_body};
use crate::provider::batch::{
    BatchItem, EndedAs, ItemResult, RemoteState, RemoteStatus, ResultLines, str_field,
};
use crate::provider::http::json_body;
use crate::provider::{ProviderError, ProviderErrorKind};

/// The metadata key a batchyard-made batch carries its tag under.
pub const TAG_KEY: &str = "batchyard_tag";
const ENDPOINT: &str = "/v1/chat/completions";
/// How far back `find` looks, in pages of 100 batches.
const FIND_PAGES: usize = 10;

fn malformed(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::MalformedResponse, message)
}

impl OpenAiProvider {
    /// `{base}/{path}`, the base being where `/chat/completions` hangs.
    fn api_url(&self, path: &str) -> Result<reqwest::Url, ProviderError> {
        let mut url = self.endpoint.url().clone();
        {
            let mut segments = url
                .path_segments_mut()
                .map_err(|()| malformed("the provider base_url cannot take a path"))?;
            segments.pop(); // completions
            segments.pop(); // chat
            segments.extend(path.split('/'));
        }
        Ok(url)
    }

    async fn call_json(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        self.call_json_query(method, path, &[], body).await
    }

    async fn call_json_query(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let mut url = self.api_url(path)?;
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let mut request = self.endpoint.request(method, url.clone());
        if let Some(body) = body {
            request = request.json(body);
        }
        let (status, _, bytes) = self.endpoint.execute(request, &url, classify).await?;
        json_body(status, &bytes, "OpenAI's batch API").map_err(|mut e| {
            self.endpoint.scrub(&mut e);
            e
        })
    }

    pub(crate) async fn batch_submit(
        &self,
        tag: &str,
        items: &[BatchItem],
    ) -> Result<String, ProviderError> {
        let mut jsonl = Vec::new();
        for item in items {
            let body = request_body(item.call());
            let line = json!({"custom_id": item.custom_id, "method": "POST", "url": ENDPOINT, "body": body});
            serde_json::to_writer(&mut jsonl, &line)
                .map_err(|e| malformed(format!("cannot write the batch file: {e}")))?;
            jsonl.push(b'\n');
        }
        let file_id = self.upload(tag, jsonl).await?;
        let created = self
            .call_json(
                Method::POST,
                "batches",
                Some(&json!({
                    "input_file_id": file_id,
                    "endpoint": ENDPOINT,
                    "completion_window": "24h",
                    "metadata": {TAG_KEY: tag},
                })),
            )
            .await?;
        str_field(&created, "id")
    }

    /// Uploads `jsonl` as a `batch` file; its id.
    async fn upload(&self, tag: &str, jsonl: Vec<u8>) -> Result<String, ProviderError> {
        let boundary = format!("batchyard-{}", uuid_like(tag));
        let mut body = Vec::with_capacity(jsonl.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
                 --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"{tag}.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&jsonl);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let url = self.api_url("files")?;
        let request = self
            .endpoint
            .request(Method::POST, url.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(body);
        let (status, _, bytes) = self.endpoint.execute(request, &url, classify).await?;
        let file = json_body(status, &bytes, "OpenAI's files API")?;
        str_field(&file, "id")
    }

    pub(crate) async fn batch_find(
        &self,
        tag: &str,
        since_unix: u64,
    ) -> Result<Option<String>, ProviderError> {
        let mut after: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let mut query = vec![("limit", "100")];
            if let Some(a) = &after {
                query.push(("after", a.as_str()));
            }
            let page = self
                .call_json_query(Method::GET, "batches", &query, None)
                .await?;
            let data = page
                .get("data")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for batch in &data {
                if batch["metadata"][TAG_KEY].as_str() == Some(tag) {
                    return Ok(batch["id"].as_str().map(str::to_owned));
                }
            }
            let older = data
                .last()
                .and_then(|b| b["created_at"].as_u64())
                .is_some_and(|t| t + 60 < since_unix);
            if older || page["has_more"] != Value::Bool(true) {
                return Ok(None);
            }
            after = data
                .last()
                .and_then(|b| b["id"].as_str())
                .map(str::to_owned);
        }
        Ok(None)
    }

    pub(crate) async fn batch_status(&self, id: &str) -> Result<RemoteStatus, ProviderError> {
        let batch = self
            .call_json(Method::GET, &format!("batches/{id}"), None)
            .await?;
        Ok(status_of(&batch))
    }

    pub(crate) async fn batch_cancel(&self, id: &str) -> Result<(), ProviderError> {
        self.call_json(Method::POST, &format!("batches/{id}/cancel"), None)
            .await
            .map(|_| ())
    }

    pub(crate) async fn batch_results(&self, id: &str) -> Result<ResultLines, ProviderError> {
        let batch = self
            .call_json(Method::GET, &format!("batches/{id}"), None)
            .await?;
        let mut bodies = Vec::new();
        for field in ["output_file_id", "error_file_id"] {
            if let Some(file) = batch[field].as_str() {
                let url = self.api_url(&format!("files/{file}/content"))?;
                let request = self.endpoint.request(Method::GET, url.clone());
                bodies.push(self.endpoint.open(request, &url, classify).await?);
            }
        }
        Ok(ResultLines::new(
            bodies,
            parse_line,
            self.endpoint.timeout(),
        ))
    }

    pub(crate) async fn batch_forget(&self, id: &str) -> Result<(), ProviderError> {
        let batch = self
            .call_json(Method::GET, &format!("batches/{id}"), None)
            .await?;
        for field in ["input_file_id", "output_file_id", "error_file_id"] {
            if let Some(file) = batch[field].as_str() {
                self.call_json(Method::DELETE, &format!("files/{file}"), None)
                    .await?;
            }
        }
        Ok(())
    }
}

/// A boundary that cannot occur in the JSONL (which holds no `batchyard-` followed by this).
fn uuid_like(tag: &str) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(format!("{tag}:{}", std::process::id()).as_bytes());
    hex::encode(&digest[..12])
}

fn status_of(batch: &Value) -> RemoteStatus {
    let counts = &batch["request_counts"];
    let n = |f: &str| counts[f].as_u64().unwrap_or(0);
    let state = match batch["status"].as_str().unwrap_or("") {
        "completed" => RemoteState::Ended(EndedAs::Completed),
        "expired" => RemoteState::Ended(EndedAs::Expired),
        "cancelled" => RemoteState::Ended(EndedAs::Cancelled),
        "failed" => {
            let first = &batch["errors"]["data"][0];
            RemoteState::Ended(EndedAs::Failed {
                code: first["code"].as_str().unwrap_or("failed").to_owned(),
                message: first["message"]
                    .as_str()
                    .unwrap_or("the provider refused the batch")
                    .to_owned(),
            })
        }
        "cancelling" => RemoteState::Cancelling,
        _ => RemoteState::Running,
    };
    RemoteStatus {
        state,
        total: n("total"),
        completed: n("completed"),
        failed: n("failed"),
    }
}

/// One output or error file line: an answer, a classified error, or nothing (a line never
/// run, or one that does not read: its item runs again).
fn parse_line(line: &[u8]) -> Option<(String, ItemResult)> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let custom_id = value["custom_id"].as_str()?.to_owned();
    let response = &value["response"];
    let status = response["status_code"].as_u64();
    match status {
        Some(200..=299) => {
            let body = response.get("body")?.clone();
            Some((custom_id, ItemResult::Answer(body)))
        }
        Some(code) => {
            let body = serde_json::to_vec(&response["body"]).unwrap_or_default();
            let err = classify(
                u16::try_from(code).unwrap_or(500),
                &reqwest::header::HeaderMap::new(),
                &body,
            );
            Some((custom_id, ItemResult::Error(err)))
        }
        // `batch_expired`, `batch_cancelled`: never run, so not this item's fault.
        None => None,
    }
}
