//! Gemini's batch mode with inline requests, on the same endpoint (and `x-goog-api-key`) as
//! the real-time calls: `POST {base}/models/{model}:batchGenerateContent` with
//! `batch: {display_name: <tag>, input_config: {requests: {requests: [{request, metadata:
//! {key: <job id>}}]}}}` (each `request` the `generateContent` body the real-time mapping
//! makes), its operation `GET {base}/batches/{id}` (`metadata.state`, `batchStats`, and once
//! done the inline responses), `POST {base}/batches/{id}:cancel`, `DELETE` once ingested.
//!
//! - One provider batch is one model (the lane groups by model), named in the URL.
//! - Results come inside the operation (inline batches are small: Google caps their requests
//!   at 20 MB), each `response` mapped as a real-time reply, each `error` classified as a
//!   real-time error; an item with neither runs again.
//! - `find` matches the tag kept as the batch's `displayName`, so a create whose id was never
//!   recorded is found for sure.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::{GeminiProvider, classify, request, response};
use crate::provider::batch::{
    BatchItem, EndedAs, Found, ItemResult, RemoteState, RemoteStatus, ResultLines, call_json,
    str_field,
};
use crate::provider::http::parse_rfc3339;
use crate::provider::{ProviderError, ProviderErrorKind};

/// How far back `find` looks, in pages of 100 batches.
const FIND_PAGES: usize = 10;
const API: &str = "Gemini's batch API";

fn malformed(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::MalformedResponse, message)
}

impl GeminiProvider {
    /// `{base}/batches`.
    fn batches_url(&self) -> Result<reqwest::Url, ProviderError> {
        let mut url = self.endpoint.url().clone();
        url.path_segments_mut()
            .map_err(|()| malformed("the gemini base_url cannot take a path"))?
            .pop_if_empty()
            .pop() // models
            .push("batches");
        Ok(url)
    }

    /// `{base}/batches/{id}[:method]`, for a batch named `batches/{id}` (or just `{id}`).
    fn batch_url(&self, name: &str, method: Option<&str>) -> Result<reqwest::Url, ProviderError> {
        let id = name.strip_prefix("batches/").unwrap_or(name);
        let last = match method {
            Some(m) => format!("{id}:{m}"),
            None => id.to_owned(),
        };
        let mut url = self.batches_url()?;
        url.path_segments_mut()
            .map_err(|()| malformed("the gemini base_url cannot take a path"))?
            .push(&last);
        Ok(url)
    }

    async fn operation(&self, name: &str) -> Result<Value, ProviderError> {
        let url = self.batch_url(name, None)?;
        call_json(&self.endpoint, Method::GET, url, None, classify, API).await
    }

    /// Whether one item's body maps to a `generateContent` request.
    pub(crate) fn batch_check(item: &BatchItem) -> Result<(), ProviderError> {
        request::generate_body(item.call()).map(|_| ())
    }

    pub(crate) async fn batch_submit(
        &self,
        tag: &str,
        items: &[BatchItem],
    ) -> Result<String, ProviderError> {
        let model = items
            .first()
            .map(|i| i.call().model_name.to_owned())
            .unwrap_or_default();
        let mut requests = Vec::with_capacity(items.len());
        for item in items {
            let body = request::generate_body(item.call()).map_err(|e| {
                ProviderError::new(e.kind, format!("job {}: {}", item.custom_id, e.message))
            })?;
            requests.push(json!({"request": body, "metadata": {"key": item.custom_id}}));
        }
        let body = json!({"batch": {"display_name": tag,
            "input_config": {"requests": {"requests": requests}}}});
        let bytes = serde_json::to_vec(&body)
            .map_err(|e| malformed(format!("cannot write the batch request: {e}")))?;
        let url = self.model_url(&model, "batchGenerateContent")?;
        let created = call_json(
            &self.endpoint,
            Method::POST,
            url,
            Some(bytes),
            classify,
            API,
        )
        .await?;
        str_field(&created, "name")
    }

    pub(crate) async fn batch_find(
        &self,
        tag: &str,
        since_unix: u64,
    ) -> Result<Found, ProviderError> {
        let mut token: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let mut url = self.batches_url()?;
            url.query_pairs_mut().append_pair("pageSize", "100");
            if let Some(t) = &token {
                url.query_pairs_mut().append_pair("pageToken", t);
            }
            let page = call_json(&self.endpoint, Method::GET, url, None, classify, API).await?;
            let ops = page["operations"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            if let Some(op) = ops.iter().find(|op| op["metadata"]["displayName"] == tag) {
                return str_field(op, "name").map(Found::Sure);
            }
            let older = ops
                .last()
                .and_then(|op| op["metadata"]["createTime"].as_str())
                .and_then(parse_rfc3339)
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .is_some_and(|t| t.as_secs() + 60 < since_unix);
            token = page["nextPageToken"].as_str().map(str::to_owned);
            if older || token.is_none() {
                return Ok(Found::None);
            }
        }
        Ok(Found::None)
    }

    pub(crate) async fn batch_status(&self, id: &str) -> Result<RemoteStatus, ProviderError> {
        Ok(status_of(&self.operation(id).await?))
    }

    pub(crate) async fn batch_cancel(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.batch_url(id, Some("cancel"))?;
        call_json(
            &self.endpoint,
            Method::POST,
            url,
            Some(b"{}".to_vec()),
            classify,
            API,
        )
        .await
        .map(|_| ())
    }

    pub(crate) async fn batch_results(&self, id: &str) -> Result<ResultLines, ProviderError> {
        let op = self.operation(id).await?;
        if op["done"] != Value::Bool(true) {
            return Err(ProviderError::new(
                ProviderErrorKind::Transient,
                format!("batch {id} has not ended yet; its results come once it has"),
            ));
        }
        let model = op["metadata"]["model"].as_str().unwrap_or("");
        let model = model.strip_prefix("models/").unwrap_or(model);
        let lines = op["response"]["inlinedResponses"]["inlinedResponses"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        let items = lines
            .iter()
            .filter_map(|l| parse_inline(l, model))
            .collect();
        Ok(ResultLines::ready(items, self.endpoint.timeout()))
    }

    pub(crate) async fn batch_forget(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.batch_url(id, None)?;
        call_json(&self.endpoint, Method::DELETE, url, None, classify, API)
            .await
            .map(|_| ())
    }
}

/// A count of `batchStats`: int64 fields come as strings in Google's JSON.
fn count(stats: &Value, field: &str) -> u64 {
    match &stats[field] {
        Value::String(s) => s.parse().unwrap_or(0),
        v => v.as_u64().unwrap_or(0),
    }
}

fn status_of(op: &Value) -> RemoteStatus {
    let meta = &op["metadata"];
    let state = match meta["state"].as_str().unwrap_or("") {
        "BATCH_STATE_SUCCEEDED" => RemoteState::Ended(EndedAs::Completed),
        "BATCH_STATE_EXPIRED" => RemoteState::Ended(EndedAs::Expired),
        "BATCH_STATE_CANCELLED" => RemoteState::Ended(EndedAs::Cancelled),
        "BATCH_STATE_FAILED" => RemoteState::Ended(EndedAs::Failed {
            code: op["error"]["status"]
                .as_str()
                .unwrap_or("failed")
                .to_owned(),
            message: op["error"]["message"]
                .as_str()
                .unwrap_or("the provider refused the batch")
                .to_owned(),
        }),
        _ => RemoteState::Running,
    };
    let stats = &meta["batchStats"];
    RemoteStatus {
        state,
        total: count(stats, "requestCount"),
        completed: count(stats, "successfulRequestCount"),
        failed: count(stats, "failedRequestCount"),
    }
}

/// One inline response: an answer, a classified error, or nothing (its item runs again).
fn parse_inline(line: &Value, model: &str) -> Option<(String, ItemResult)> {
    let key = line["metadata"]["key"].as_str()?.to_owned();
    if let Some(response) = line.get("response") {
        let bytes = serde_json::to_vec(response).ok()?;
        let item = match response::parse_success(200, &HeaderMap::new(), &bytes, model) {
            Ok(done) => ItemResult::Answer(done.body),
            Err(e) => ItemResult::Error(e),
        };
        return Some((key, item));
    }
    let error = line.get("error")?;
    let status = error["code"]
        .as_u64()
        .and_then(|c| u16::try_from(c).ok())
        .unwrap_or(500);
    let mut body = Map::new();
    body.insert("error".into(), error.clone());
    let bytes = Value::Object(body).to_string();
    Some((
        key,
        ItemResult::Error(classify(status, &HeaderMap::new(), bytes.as_bytes())),
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn states_and_string_counts_are_read() {
        let op = json!({"metadata": {"state": "BATCH_STATE_SUCCEEDED",
            "batchStats": {"requestCount": "3", "successfulRequestCount": "2",
                "failedRequestCount": "1"}}});
        let s = status_of(&op);
        assert_eq!(s.state, RemoteState::Ended(EndedAs::Completed));
        assert_eq!((s.total, s.completed, s.failed), (3, 2, 1));
        for (name, want) in [
            ("BATCH_STATE_EXPIRED", RemoteState::Ended(EndedAs::Expired)),
            (
                "BATCH_STATE_CANCELLED",
                RemoteState::Ended(EndedAs::Cancelled),
            ),
            ("BATCH_STATE_PENDING", RemoteState::Running),
            ("BATCH_STATE_RUNNING", RemoteState::Running),
        ] {
            assert_eq!(status_of(&json!({"metadata": {"state": name}})).state, want);
        }
        let failed = status_of(&json!({"metadata": {"state": "BATCH_STATE_FAILED"},
            "error": {"status": "INVALID_ARGUMENT", "message": "bad"}}));
        assert!(
            matches!(failed.state, RemoteState::Ended(EndedAs::Failed { ref code, .. }) if code == "INVALID_ARGUMENT")
        );
    }

    #[test]
    fn inline_responses_map_to_answers_and_errors() {
        let ok = json!({"metadata": {"key": "a"}, "response": {"candidates": [{"content":
            {"role": "model", "parts": [{"text": "hi"}]}, "finishReason": "STOP"}],
            "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": 1}}});
        let (key, item) = parse_inline(&ok, "gem").unwrap();
        assert_eq!(key, "a");
        let ItemResult::Answer(body) = item else {
            panic!("{item:?}")
        };
        assert_eq!(body["choices"][0]["message"]["content"], "hi");
        assert_eq!(body["usage"]["prompt_tokens"], 7);
        let bad = json!({"metadata": {"key": "b"}, "error": {"code": 400,
            "status": "INVALID_ARGUMENT", "message": "bad request"}});
        match parse_inline(&bad, "gem").unwrap().1 {
            ItemResult::Error(e) => assert_eq!(e.kind, ProviderErrorKind::InvalidRequest),
            other => panic!("{other:?}"),
        }
        assert!(parse_inline(&json!({"metadata": {"key": "c"}}), "gem").is_none());
    }
}
