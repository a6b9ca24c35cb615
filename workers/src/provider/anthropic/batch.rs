//! Anthropic's Message Batches API on the same endpoint (and `x-api-key`) as the real-time
//! calls: `POST /v1/messages/batches` with `requests: [{custom_id, params}]` (each `params` the
//! Messages request the real-time mapping makes of the item), its state
//! (`GET /v1/messages/batches/{id}`), its results (`results_url`, JSONL in no order, once
//! ended), cancel, and `DELETE` once ingested.
//!
//! - `custom_id` is the job id as it is: job ids are 24 hex digits, inside Anthropic's
//!   `^[a-zA-Z0-9_-]{1,64}$`, so no mapping is needed (one that is not is refused before
//!   anything is sent, rather than renamed).
//! - Results: `succeeded` → the message through the real-time reply mapping (so `usage`,
//!   cache reads and writes included, reads as a call's would); `errored` → the real-time
//!   error classification; `canceled` / `expired` → no result (the item runs again).
//! - An ended batch is `Cancelled` when any of its requests were canceled, else `Expired` when
//!   any expired, else `Completed` (its errored requests are per-item errors).
//!
//! ## Finding a batch whose id was never recorded
//!
//! A Message Batch carries no metadata, so `find` cannot look for
//! batchyard's tag. It lists the account's batches (newest first, at most
//! [`FIND_PAGES`] pages of 100) and keeps those created from `since − 2 min` (clock skew) to
//! `since + request timeout + 2 min` (the create was sent after the record was written and
//! took at most one timeout) whose `request_counts` add up to the recorded item count. None
//! means the create never reached Anthropic; otherwise the answer is [`Found::Maybe`]: which
//! of them (if any) is the lane's shows only in their results, whose custom ids are its job
//! ids, and results exist only once a batch has ended. The lane
//! (`offload::recover`) therefore never adopts a candidate unseen: it waits for each to end,
//! reads its first result lines, and adopts the one whose custom ids are all its own jobs; a
//! candidate that proves someone else's is left alone (never cancelled, never deleted). So a
//! worker killed between create and recording the id never causes a second paid batch, and
//! each item is answered once. Money: while the lane waits nothing more is bought; if the
//! deadline comes first, the items run real-time and the candidate, once proven the lane's, is
//! ingested as paid and unused (it cannot be cancelled before it is known to be ours). More
//! than [`FIND_PAGES`] × 100 batches made since the record is an error, not "none": the lane
//! tries again next tick rather than risk paying twice.

use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value};

use super::{AnthropicProvider, classify, request, response};
use crate::provider::batch::{
    BatchItem, EndedAs, Found, ItemResult, RemoteState, RemoteStatus, ResultLines, call_json,
    str_field,
};
use crate::provider::http::parse_rfc3339;
use crate::provider::{ProviderError, ProviderErrorKind};

/// How far back `find` looks, in pages of 100 batches.
pub const FIND_PAGES: usize = 20;
/// Clock skew allowed between this worker and Anthropic when matching creation times.
const SKEW_SECS: u64 = 120;

fn malformed(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::MalformedResponse, message)
}

/// Whether Anthropic takes `id` as a `custom_id`.
pub fn custom_id_ok(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

impl AnthropicProvider {
    /// `{base}/v1/messages/batches[/{path}]`.
    fn batches_url(&self, path: &[&str]) -> Result<reqwest::Url, ProviderError> {
        let mut url = self.endpoint.url().clone();
        url.path_segments_mut()
            .map_err(|()| malformed("the provider base_url cannot take a path"))?
            .push("batches")
            .extend(path);
        Ok(url)
    }

    async fn batches_call(
        &self,
        method: Method,
        url: reqwest::Url,
        body: Option<Vec<u8>>,
    ) -> Result<Value, ProviderError> {
        call_json(
            &self.endpoint,
            method,
            url,
            body,
            classify,
            "Anthropic's batch API",
        )
        .await
    }

    async fn batch_get(&self, id: &str) -> Result<Value, ProviderError> {
        let url = self.batches_url(&[id])?;
        self.batches_call(Method::GET, url, None).await
    }

    /// Whether one item can go into a Message Batch (its custom_id and its mapped body).
    pub(crate) fn batch_check(item: &BatchItem) -> Result<(), ProviderError> {
        if !custom_id_ok(&item.custom_id) {
            return Err(ProviderError::new(
                ProviderErrorKind::InvalidRequest,
                format!(
                    "job id {:?} is not a valid Anthropic custom_id",
                    item.custom_id
                ),
            ));
        }
        request::messages_body(item.call()).map(|_| ())
    }

    pub(crate) async fn batch_submit(&self, items: &[BatchItem]) -> Result<String, ProviderError> {
        let mut body = b"{\"requests\":[".to_vec();
        for (i, item) in items.iter().enumerate() {
            if !custom_id_ok(&item.custom_id) {
                return Err(ProviderError::new(
                    ProviderErrorKind::InvalidRequest,
                    format!(
                        "job id {:?} is not a valid Anthropic custom_id (^[a-zA-Z0-9_-]{{1,64}}$)",
                        item.custom_id
                    ),
                ));
            }
            let params = request::messages_body(item.call()).map_err(|e| {
                ProviderError::new(e.kind, format!("job {}: {}", item.custom_id, e.message))
            })?;
            if i > 0 {
                body.push(b',');
            }
            let mut line = Map::new();
            line.insert("custom_id".into(), Value::String(item.custom_id.clone()));
            line.insert("params".into(), Value::Object(params));
            serde_json::to_writer(&mut body, &line)
                .map_err(|e| malformed(format!("cannot write the batch request: {e}")))?;
        }
        body.extend_from_slice(b"]}");
        let url = self.batches_url(&[])?;
        let created = self.batches_call(Method::POST, url, Some(body)).await?;
        str_field(&created, "id")
    }

    pub(crate) async fn batch_find(
        &self,
        since_unix: u64,
        items: u64,
    ) -> Result<Found, ProviderError> {
        let earliest = since_unix.saturating_sub(SKEW_SECS);
        let latest = since_unix + self.endpoint.timeout().as_secs() + SKEW_SECS;
        let mut candidates = Vec::new();
        let mut after: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let mut url = self.batches_url(&[])?;
            url.query_pairs_mut().append_pair("limit", "100");
            if let Some(a) = &after {
                url.query_pairs_mut().append_pair("after_id", a);
            }
            let page = self.batches_call(Method::GET, url, None).await?;
            let data = page["data"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            let mut past = false;
            for batch in data {
                let Some(created) = batch["created_at"].as_str().and_then(unix_of) else {
                    continue;
                };
                past |= created < earliest;
                if (earliest..=latest).contains(&created) && status_of(batch).total == items {
                    candidates.extend(batch["id"].as_str().map(str::to_owned));
                }
            }
            after = page["last_id"]
                .as_str()
                .or_else(|| data.last().and_then(|b| b["id"].as_str()))
                .map(str::to_owned);
            if past || page["has_more"] != Value::Bool(true) || after.is_none() {
                return Ok(if candidates.is_empty() {
                    Found::None
                } else {
                    Found::Maybe(candidates)
                });
            }
        }
        // Not having seen back to `since` means ours could be further on: saying "none" here
        // would pay for the items twice.
        Err(ProviderError::new(
            ProviderErrorKind::Transient,
            format!(
                "more than {} message batches were created since this provider batch was \
                 recorded; cannot tell whether it was sent (cancel unneeded batches, or let the \
                 deadline take its items real-time)",
                FIND_PAGES * 100
            ),
        ))
    }

    pub(crate) async fn batch_status(&self, id: &str) -> Result<RemoteStatus, ProviderError> {
        Ok(status_of(&self.batch_get(id).await?))
    }

    pub(crate) async fn batch_cancel(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.batches_url(&[id, "cancel"])?;
        self.batches_call(Method::POST, url, None).await.map(|_| ())
    }

    pub(crate) async fn batch_results(&self, id: &str) -> Result<ResultLines, ProviderError> {
        let batch = self.batch_get(id).await?;
        let own = self.batches_url(&[id, "results"])?;
        // The key goes with the request: only to the endpoint's own host.
        let url = batch["results_url"]
            .as_str()
            .and_then(|u| reqwest::Url::parse(u).ok())
            .filter(|u| u.origin() == own.origin())
            .unwrap_or(own);
        if batch["processing_status"].as_str() != Some("ended") {
            return Err(ProviderError::new(
                ProviderErrorKind::Transient,
                format!("message batch {id} has not ended yet; its results come once it has"),
            ));
        }
        let request = self.endpoint.request(Method::GET, url.clone());
        let body = self
            .endpoint
            .open(request, &url, classify)
            .await
            .map_err(|mut e| {
                self.endpoint.scrub(&mut e);
                e
            })?;
        Ok(ResultLines::new(
            vec![body],
            parse_line,
            self.endpoint.timeout(),
        ))
    }

    /// Deletes the ended batch (its requests and results) at Anthropic.
    pub(crate) async fn batch_forget(&self, id: &str) -> Result<(), ProviderError> {
        let url = self.batches_url(&[id])?;
        self.batches_call(Method::DELETE, url, None)
            .await
            .map(|_| ())
    }
}

fn unix_of(time: &str) -> Option<u64> {
    parse_rfc3339(time)?
        .duration_since(std::time::UNIX_EPOCH)
        .ok()
        .map(|d| d.as_secs())
}

fn status_of(batch: &Value) -> RemoteStatus {
    let counts = &batch["request_counts"];
    let n = |f: &str| counts[f].as_u64().unwrap_or(0);
    let state = match batch["processing_status"].as_str().unwrap_or("") {
        "ended" if n("canceled") > 0 => RemoteState::Ended(EndedAs::Cancelled),
        "ended" if n("expired") > 0 => RemoteState::Ended(EndedAs::Expired),
        "ended" => RemoteState::Ended(EndedAs::Completed),
        "canceling" => RemoteState::Cancelling,
        _ => RemoteState::Running,
    };
    RemoteStatus {
        state,
        total: ["processing", "succeeded", "errored", "canceled", "expired"]
            .into_iter()
            .map(n)
            .sum(),
        completed: n("succeeded"),
        failed: n("errored"),
    }
}

/// The HTTP status an error type comes with in real time, for the shared classification.
fn status_of_error(kind: &str) -> u16 {
    match kind {
        "invalid_request_error" => 400,
        "authentication_error" => 401,
        "billing_error" => 402,
        "permission_error" => 403,
        "not_found_error" => 404,
        "request_too_large" => 413,
        "rate_limit_error" => 429,
        "timeout_error" => 504,
        "overloaded_error" => 529,
        _ => 500,
    }
}

/// One results line: an answer, a classified error, or nothing (canceled, expired, or a line
/// that does not read: its item runs again).
fn parse_line(line: &[u8]) -> Option<(String, ItemResult)> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let custom_id = value["custom_id"].as_str()?.to_owned();
    let result = &value["result"];
    match result["type"].as_str()? {
        "succeeded" => {
            let message = serde_json::to_vec(result.get("message")?).ok()?;
            let item = match response::parse_success(200, &HeaderMap::new(), &message, &Map::new())
            {
                Ok(done) => ItemResult::Answer(done.body),
                Err(e) => ItemResult::Error(e),
            };
            Some((custom_id, item))
        }
        "errored" => {
            // `{"type":"error","error":{type, message}}`, as a real-time error body; an error
            // object alone is taken too.
            let error = result.get("error")?;
            let body = if error.get("error").is_some() {
                error.clone()
            } else {
                serde_json::json!({"type": "error", "error": error})
            };
            let status = status_of_error(body["error"]["type"].as_str().unwrap_or(""));
            let bytes = body.to_string();
            Some((
                custom_id,
                ItemResult::Error(classify(status, &HeaderMap::new(), bytes.as_bytes())),
            ))
        }
        // Never run: not the item's fault.
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn batch(status: &str, counts: Value) -> Value {
        json!({"processing_status": status, "request_counts": counts})
    }

    #[test]
    fn an_ended_batch_says_how_it_ended() {
        let c = |s, e, c, x| json!({"processing": 0, "succeeded": s, "errored": e, "canceled": c, "expired": x});
        let s = status_of(&batch("ended", c(3, 1, 0, 0)));
        assert_eq!(s.state, RemoteState::Ended(EndedAs::Completed));
        assert_eq!((s.total, s.completed, s.failed), (4, 3, 1));
        let s = status_of(&batch("ended", c(2, 0, 0, 2)));
        assert_eq!(s.state, RemoteState::Ended(EndedAs::Expired));
        let s = status_of(&batch("ended", c(1, 0, 3, 0)));
        assert_eq!(s.state, RemoteState::Ended(EndedAs::Cancelled));
        let s = status_of(&batch("canceling", json!({"processing": 4})));
        assert_eq!((s.state, s.total), (RemoteState::Cancelling, 4));
        let s = status_of(&batch("in_progress", json!({"processing": 4})));
        assert_eq!(s.state, RemoteState::Running);
    }

    #[test]
    fn result_lines_map_to_answers_errors_and_nothing() {
        let line = br#"{"custom_id":"a1","result":{"type":"succeeded","message":{"id":"msg_1","type":"message","model":"claude-x","content":[{"type":"text","text":"hi"}],"stop_reason":"end_turn","usage":{"input_tokens":10,"cache_read_input_tokens":30,"cache_creation_input_tokens":5,"output_tokens":2}}}}"#;
        let (id, item) = parse_line(line).unwrap();
        assert_eq!(id, "a1");
        let ItemResult::Answer(body) = item else {
            panic!("{item:?}")
        };
        assert_eq!(body["choices"][0]["message"]["content"], "hi");
        assert_eq!(body["usage"]["prompt_tokens"], 45);
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 30);
        assert_eq!(
            body["usage"]["prompt_tokens_details"]["cache_write_tokens"],
            5
        );

        let errored = |e: &str| {
            let line = format!(r#"{{"custom_id":"b","result":{{"type":"errored","error":{e}}}}}"#);
            match parse_line(line.as_bytes()).unwrap().1 {
                ItemResult::Error(e) => e.kind,
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(
            errored(r#"{"type":"error","error":{"type":"invalid_request_error","message":"bad"}}"#),
            ProviderErrorKind::InvalidRequest
        );
        assert_eq!(
            errored(r#"{"type":"error","error":{"type":"overloaded_error","message":"busy"}}"#),
            ProviderErrorKind::Transient
        );
        assert_eq!(
            errored(r#"{"type":"invalid_request_error","message":"prompt is too long"}"#),
            ProviderErrorKind::ContextOverflow
        );
        for kind in ["canceled", "expired"] {
            let line = format!(r#"{{"custom_id":"c","result":{{"type":"{kind}"}}}}"#);
            assert!(parse_line(line.as_bytes()).is_none());
        }
        assert!(parse_line(b"not json").is_none());
    }

    #[test]
    fn job_ids_are_custom_ids() {
        let id = batchyard_jobs::job::job_id_for("batch_x", "../odd id");
        assert!(custom_id_ok(&id));
        assert!(!custom_id_ok("a.b"));
        assert!(!custom_id_ok(""));
        assert!(!custom_id_ok(&"a".repeat(65)));
    }
}
