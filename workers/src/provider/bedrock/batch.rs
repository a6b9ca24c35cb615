//! Bedrock batch inference on the control plane (`bedrock.{region}`, not the runtime): the
//! records written as one JSONL object to the user's bucket (`batch_s3_url`), one
//! `CreateModelInvocationJob` over it, its state, `StopModelInvocationJob`, and the
//! `<input>.jsonl.out` records Bedrock writes back under `<output>/<jobId>/`.
//!
//! - Each record is `{"recordId": <job id>, "modelInput": <the model's InvokeModel body>}`:
//!   Anthropic Messages (`anthropic_version: bedrock-2023-05-31`) for Claude models, the
//!   `messages-v1` schema for Amazon Nova. Other families have no batch body here
//!   ([`family`]); the config refuses `batch_api = true` on them.
//! - The job's name and `clientRequestToken` come from the tag and the records' ids, so a
//!   create sent again after a crash makes no second job, and two batchyard batches never
//!   share one. [`BedrockProvider::batch_find`] lists jobs by the name's tag part.
//! - Everything batchyard puts in the bucket sits under `batchyard/<job name>/`, deleted by
//!   `forget` once ingested.

use std::fmt;

use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;
use futures::TryStreamExt as _;
use reqwest::Method;
use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::{BedrockProvider, classify, encode_label, request, response};
use crate::provider::batch::{
    BatchItem, EndedAs, ItemResult, ObjectStream, RemoteState, RemoteStatus, ResultLines,
};
use crate::provider::http::json_body;
use crate::provider::{ChatCall, ProviderError, ProviderErrorKind};

/// What Claude's InvokeModel body on Bedrock names as its version.
pub const ANTHROPIC_VERSION: &str = "bedrock-2023-05-31";
/// How far back `find` looks, in pages of 100 jobs.
const FIND_PAGES: usize = 10;
/// Bedrock's limit on a job name.
const MAX_NAME: usize = 63;

/// Where a bedrock provider's batch jobs read and write.
#[derive(Clone)]
pub struct BedrockBatchConfig {
    /// The service role Bedrock assumes to read the input and write the output.
    pub role_arn: String,
    /// `s3://bucket/prefix`: batchyard's inputs and Bedrock's outputs go under it.
    pub s3_url: String,
    /// The control plane, e.g. `https://bedrock.us-east-1.amazonaws.com`.
    pub control_url: String,
    /// `s3_url` opened, with the credentials storage uses.
    pub store: ResultStore,
}

impl fmt::Debug for BedrockBatchConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BedrockBatchConfig")
            .field("role_arn", &self.role_arn)
            .field("s3_url", &self.s3_url)
            .field("control_url", &self.control_url)
            .finish_non_exhaustive()
    }
}

/// The body a model family takes in a Bedrock batch record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Anthropic Messages, as Claude's InvokeModel takes it.
    Anthropic,
    /// Amazon Nova's `messages-v1`.
    Nova,
}

/// The family of a model id or inference profile (`us.anthropic.claude-...`, an ARN ending
/// in one), or `None` when batchyard has no batch body for it.
pub fn family(model_id: &str) -> Option<Family> {
    let id = model_id.trim().rsplit('/').next().unwrap_or_default();
    let mut parts = id.split('.');
    let first = parts.next().unwrap_or_default();
    let second = parts.next().unwrap_or_default();
    let is = |vendor: &str, rest: &str| {
        (first == vendor && second.starts_with(rest))
            || id
                .split_once('.')
                .is_some_and(|(_, tail)| tail.starts_with(&format!("{vendor}.{rest}")))
    };
    if is("anthropic", "") {
        Some(Family::Anthropic)
    } else if is("amazon", "nova") {
        Some(Family::Nova)
    } else {
        None
    }
}

fn malformed(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::MalformedResponse, message)
}

fn refuse(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

fn store_error(e: impl fmt::Display) -> ProviderError {
    ProviderError::new(
        ProviderErrorKind::Transient,
        format!("the batch bucket (batch_s3_url) failed: {e}"),
    )
}

/// `by-<tag, made name-safe>-`: what every job name of this tag starts with.
fn name_prefix(tag: &str) -> String {
    let safe: String = tag
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(MAX_NAME - 3 - 1 - 16)
        .collect();
    format!("by-{safe}-")
}

/// The job's name and its create token: the same records under the same tag, the same job.
fn identity(tag: &str, items: &[BatchItem]) -> (String, String) {
    use sha2::Digest as _;
    let mut hash = sha2::Sha256::new();
    hash.update(tag.as_bytes());
    for item in items {
        hash.update(b"\n");
        hash.update(item.custom_id.as_bytes());
    }
    let token = hex::encode(hash.finalize());
    (format!("{}{}", name_prefix(tag), &token[..16]), token)
}

/// One record's `modelInput`.
fn model_input(
    family: Family,
    model: &str,
    body: &Map<String, Value>,
) -> Result<Value, ProviderError> {
    let call = ChatCall {
        model_name: model,
        body,
        default_max_tokens: None,
    };
    match family {
        Family::Anthropic => {
            let mut input = crate::provider::anthropic::messages_body(call)?;
            // The model is the job's; Bedrock's Claude body has no `metadata`.
            input.remove("model");
            input.remove("metadata");
            input.insert("anthropic_version".into(), json!(ANTHROPIC_VERSION));
            Ok(Value::Object(input))
        }
        Family::Nova => {
            let mut input = request::converse_body(call)?;
            if let Some(Value::Object(config)) = input.get_mut("inferenceConfig") {
                for (from, to) in [("maxTokens", "max_new_tokens"), ("topP", "top_p")] {
                    if let Some(v) = config.remove(from) {
                        config.insert(to.into(), v);
                    }
                }
            }
            input.insert("schemaVersion".into(), json!("messages-v1"));
            Ok(Value::Object(input))
        }
    }
}

impl BedrockProvider {
    fn batch_config(&self) -> Result<&BedrockBatchConfig, ProviderError> {
        self.batch.as_deref().ok_or_else(|| {
            refuse("this bedrock provider has no batch_role_arn and batch_s3_url: it cannot batch")
        })
    }

    /// One signed call to the control plane; `path` is already encoded.
    async fn control(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Value, ProviderError> {
        let config = self.batch_config()?;
        let mut url = reqwest::Url::parse(&config.control_url)
            .map_err(|e| refuse(format!("the bedrock control plane url is not valid: {e}")))?;
        let joined = format!("{}/{path}", url.path().trim_end_matches('/'));
        url.set_path(&joined);
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        let bytes = match body {
            Some(b) => serde_json::to_vec(b).map_err(|e| refuse(e.to_string()))?,
            None => Vec::new(),
        };
        let result = async {
            let headers = self.headers_for(method.as_str(), &url, &bytes).await?;
            let request = self
                .endpoint
                .request(method, url.clone())
                .headers(headers)
                .body(bytes);
            let (status, _, answer) = self.endpoint.execute(request, &url, classify).await?;
            json_body(status, &answer, "Bedrock's batch inference API")
        }
        .await;
        match result {
            Ok(v) => Ok(v),
            Err(mut err) => {
                self.scrub(&mut err).await;
                Err(err)
            }
        }
    }

    /// `GetModelInvocationJob`.
    async fn job(&self, id: &str) -> Result<Value, ProviderError> {
        let path = format!("model-invocation-job/{}", encode_label(id));
        self.control(Method::GET, &path, &[], None).await
    }

    /// The path in the batch bucket of an `s3://` URI under `batch_s3_url`.
    fn relative(&self, uri: &str) -> Result<String, ProviderError> {
        let base = self.batch_config()?.s3_url.trim_end_matches('/');
        uri.strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('/'))
            .map(|rest| rest.trim_end_matches('/').to_owned())
            .ok_or_else(|| malformed(format!("the job's s3 uri {uri} is not under batch_s3_url")))
    }

    pub(crate) async fn batch_submit(
        &self,
        tag: &str,
        items: &[BatchItem],
    ) -> Result<String, ProviderError> {
        let config = self.batch_config()?;
        let model = items
            .first()
            .and_then(|i| i.body.get("model"))
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned();
        let family = family(&model).ok_or_else(|| {
            refuse(format!(
                "model {model:?} has no batch body batchyard can write (Anthropic and Amazon \
                 Nova models batch on bedrock); set batch_api = false on it"
            ))
        })?;
        let mut jsonl = Vec::new();
        for item in items {
            let input = model_input(family, &model, &item.body)?;
            let line = json!({"recordId": item.custom_id, "modelInput": input});
            serde_json::to_writer(&mut jsonl, &line)
                .map_err(|e| malformed(format!("cannot write the batch file: {e}")))?;
            jsonl.push(b'\n');
        }
        let (name, token) = identity(tag, items);
        let dir = format!("batchyard/{name}");
        let input = config.store.path_of(&format!("{dir}/input.jsonl"));
        config
            .store
            .put(&input, Bytes::from(jsonl))
            .await
            .map_err(store_error)?;
        let base = config.s3_url.trim_end_matches('/');
        let created = self
            .control(
                Method::POST,
                "model-invocation-job",
                &[],
                Some(&json!({
                    "jobName": name,
                    "roleArn": config.role_arn,
                    "clientRequestToken": token,
                    "modelId": model,
                    "inputDataConfig": {"s3InputDataConfig": {
                        "s3Uri": format!("{base}/{dir}/input.jsonl"),
                        "s3InputFormat": "JSONL",
                    }},
                    "outputDataConfig": {"s3OutputDataConfig": {
                        "s3Uri": format!("{base}/{dir}/out/"),
                    }},
                    "timeoutDurationInHours": 24,
                })),
            )
            .await?;
        created
            .get("jobArn")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| malformed("CreateModelInvocationJob answered without a jobArn"))
    }

    pub(crate) async fn batch_find(
        &self,
        tag: &str,
        _since_unix: u64,
    ) -> Result<Option<String>, ProviderError> {
        let prefix = name_prefix(tag);
        let mut next: Option<String> = None;
        for _ in 0..FIND_PAGES {
            let mut query = vec![
                ("nameContains", prefix.as_str()),
                ("maxResults", "100"),
                ("sortOrder", "Descending"),
            ];
            if let Some(token) = &next {
                query.push(("nextToken", token.as_str()));
            }
            let page = self
                .control(Method::GET, "model-invocation-jobs", &query, None)
                .await?;
            let jobs = page["invocationJobSummaries"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            if let Some(job) = jobs.iter().find(|j| {
                j["jobName"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(&prefix))
            }) {
                return Ok(job["jobArn"].as_str().map(str::to_owned));
            }
            match page["nextToken"].as_str() {
                Some(t) if !t.is_empty() => next = Some(t.to_owned()),
                _ => return Ok(None),
            }
        }
        Ok(None)
    }

    pub(crate) async fn batch_status(&self, id: &str) -> Result<RemoteStatus, ProviderError> {
        Ok(status_of(&self.job(id).await?))
    }

    pub(crate) async fn batch_cancel(&self, id: &str) -> Result<(), ProviderError> {
        let path = format!("model-invocation-job/{}/stop", encode_label(id));
        self.control(Method::POST, &path, &[], None)
            .await
            .map(|_| ())
    }

    pub(crate) async fn batch_results(&self, id: &str) -> Result<ResultLines, ProviderError> {
        let job = self.job(id).await?;
        let out = self.relative(output_uri(&job)?)?;
        let job_id = id.rsplit('/').next().unwrap_or(id);
        let store = &self.batch_config()?.store;
        let listed: Vec<(String, _)> = store
            .list_relative(&format!("{out}/{job_id}"))
            .try_collect()
            .await
            .map_err(store_error)?;
        let mut streams: Vec<ObjectStream> = Vec::new();
        for (rel, _) in listed.iter().filter(|(rel, _)| rel.ends_with(".jsonl.out")) {
            let stream = store
                .get_stream(&store.path_of(rel))
                .await
                .map_err(store_error)?;
            streams.push(stream);
        }
        Ok(ResultLines::from_streams(
            streams,
            parse_line,
            self.endpoint.timeout(),
        ))
    }

    pub(crate) async fn batch_forget(&self, id: &str) -> Result<(), ProviderError> {
        let job = self.job(id).await?;
        let store = &self.batch_config()?.store;
        let input = job["inputDataConfig"]["s3InputDataConfig"]["s3Uri"]
            .as_str()
            .ok_or_else(|| malformed("the job has no input s3Uri"))?;
        store
            .delete(&store.path_of(&self.relative(input)?))
            .await
            .map_err(store_error)?;
        let out = self.relative(output_uri(&job)?)?;
        let listed: Vec<(String, _)> = store
            .list_relative(&out)
            .try_collect()
            .await
            .map_err(store_error)?;
        for (rel, _) in listed {
            store
                .delete(&store.path_of(&rel))
                .await
                .map_err(store_error)?;
        }
        Ok(())
    }
}

fn output_uri(job: &Value) -> Result<&str, ProviderError> {
    job["outputDataConfig"]["s3OutputDataConfig"]["s3Uri"]
        .as_str()
        .ok_or_else(|| malformed("the job has no output s3Uri"))
}

fn status_of(job: &Value) -> RemoteStatus {
    let n = |f: &str| job[f].as_u64().unwrap_or(0);
    let state = match job["status"].as_str().unwrap_or("") {
        // Some records errored: their errors are in the output with the answers.
        "Completed" | "PartiallyCompleted" => RemoteState::Ended(EndedAs::Completed),
        "Expired" => RemoteState::Ended(EndedAs::Expired),
        "Stopped" => RemoteState::Ended(EndedAs::Cancelled),
        "Failed" => RemoteState::Ended(EndedAs::Failed {
            code: "failed".to_owned(),
            message: job["message"]
                .as_str()
                .unwrap_or("bedrock failed the batch job")
                .to_owned(),
        }),
        "Stopping" => RemoteState::Cancelling,
        _ => RemoteState::Running,
    };
    RemoteStatus {
        state,
        total: n("totalRecordCount"),
        completed: n("successRecordCount"),
        failed: n("errorRecordCount"),
    }
}

/// One output record: an answer, a classified error, or nothing (a record that does not
/// read: its item runs again).
fn parse_line(line: &[u8]) -> Option<(String, ItemResult)> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let id = value["recordId"].as_str()?.to_owned();
    if let Some(error) = value.get("error").filter(|e| !e.is_null()) {
        let code = error["errorCode"]
            .as_u64()
            .or_else(|| error["errorCode"].as_str().and_then(|s| s.parse().ok()))
            .and_then(|c| u16::try_from(c).ok())
            .unwrap_or(500);
        let message = error["errorMessage"].as_str().unwrap_or("no message");
        // A record's error carries no AWS name; a 400 is the runtime's ValidationException.
        let body = if code == 400 {
            json!({"__type": "ValidationException", "message": message})
        } else {
            json!({"message": message})
        };
        let body = serde_json::to_vec(&body).unwrap_or_default();
        return Some((
            id,
            ItemResult::Error(classify(code, &HeaderMap::new(), &body)),
        ));
    }
    let output = value.get("modelOutput")?;
    let bytes = serde_json::to_vec(output).ok()?;
    let parsed = if output.get("content").is_some() {
        let input = value["modelInput"].as_object().cloned().unwrap_or_default();
        crate::provider::anthropic::parse_messages_reply(200, &HeaderMap::new(), &bytes, &input)
    } else {
        let model = value["modelInput"]["model"].as_str().unwrap_or("bedrock");
        response::parse_success(200, &HeaderMap::new(), &nova_usage(output, &bytes), model)
    };
    Some(match parsed {
        Ok(done) => (id, ItemResult::Answer(done.body)),
        Err(e) => (id, ItemResult::Error(e)),
    })
}

/// Nova's InvokeModel names its cache counts `...TokenCount`; Converse's reader wants
/// `...Tokens`.
fn nova_usage(output: &Value, bytes: &[u8]) -> Vec<u8> {
    let usage = &output["usage"];
    if usage.get("cacheReadInputTokenCount").is_none()
        && usage.get("cacheWriteInputTokenCount").is_none()
    {
        return bytes.to_vec();
    }
    let mut output = output.clone();
    if let Some(Value::Object(u)) = output.get_mut("usage") {
        for (from, to) in [
            ("cacheReadInputTokenCount", "cacheReadInputTokens"),
            ("cacheWriteInputTokenCount", "cacheWriteInputTokens"),
        ] {
            if let Some(v) = u.remove(from) {
                u.insert(to.into(), v);
            }
        }
    }
    serde_json::to_vec(&output).unwrap_or_default()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn families_come_from_the_model_id() {
        for id in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "us.anthropic.claude-3-5-haiku-20241022-v1:0",
            "arn:aws:bedrock:us-east-1:1:inference-profile/eu.anthropic.claude-x",
        ] {
            assert_eq!(family(id), Some(Family::Anthropic), "{id}");
        }
        assert_eq!(family("amazon.nova-lite-v1:0"), Some(Family::Nova));
        assert_eq!(family("us.amazon.nova-pro-v1:0"), Some(Family::Nova));
        for id in [
            "meta.llama3-8b-instruct-v1:0",
            "amazon.titan-text-v1",
            "",
            "anthropicx",
        ] {
            assert_eq!(family(id), None, "{id}");
        }
    }

    #[test]
    fn names_are_valid_bounded_and_tokens_stable() {
        let items: Vec<BatchItem> = (0..3)
            .map(|i| BatchItem {
                custom_id: format!("job{i}"),
                body: Map::new(),
            })
            .collect();
        let tag = format!("w1-{}-0", "very/long model:name".repeat(8));
        let (name, token) = identity(&tag, &items);
        assert!(name.len() <= MAX_NAME, "{name}");
        assert!(name.starts_with(&name_prefix(&tag)));
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'),
            "{name}"
        );
        assert_eq!(identity(&tag, &items), (name.clone(), token.clone()));
        let (other, other_token) = identity(&tag, &items[..2]);
        assert_ne!(other, name);
        assert_ne!(other_token, token);
    }

    #[test]
    fn claude_and_nova_records_are_their_native_bodies() {
        let body: Map<String, Value> = serde_json::from_value(json!({
            "model": "x", "max_tokens": 50, "top_p": 0.5, "user": "u",
            "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
        }))
        .unwrap();
        let claude = model_input(Family::Anthropic, "us.anthropic.claude", &body).unwrap();
        assert_eq!(claude["anthropic_version"], ANTHROPIC_VERSION);
        assert_eq!(claude["max_tokens"], 50);
        assert!(claude.get("model").is_none() && claude.get("metadata").is_none());
        let nova = model_input(Family::Nova, "amazon.nova-lite-v1:0", &body).unwrap();
        assert_eq!(nova["schemaVersion"], "messages-v1");
        assert_eq!(nova["inferenceConfig"]["max_new_tokens"], 50);
        assert_eq!(nova["inferenceConfig"]["top_p"], 0.5);
        assert_eq!(nova["system"][0]["text"], "be brief");
    }

    #[test]
    fn output_records_become_answers_or_classified_errors() {
        let claude = br#"{"recordId":"a","modelInput":{"max_tokens":5},"modelOutput":{"id":"m","type":"message","role":"assistant","model":"c","content":[{"type":"text","text":"hello"}],"stop_reason":"end_turn","usage":{"input_tokens":7,"output_tokens":2}}}"#;
        let (id, ItemResult::Answer(body)) = parse_line(claude).unwrap() else {
            panic!("an answer")
        };
        assert_eq!(id, "a");
        assert_eq!(body["choices"][0]["message"]["content"], "hello");
        assert_eq!(body["usage"]["prompt_tokens"], 7);
        assert_eq!(body["usage"]["completion_tokens"], 2);
        let nova = br#"{"recordId":"b","modelInput":{},"modelOutput":{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},"stopReason":"max_tokens","usage":{"inputTokens":3,"outputTokens":1,"cacheReadInputTokenCount":4}}}"#;
        let (_, ItemResult::Answer(body)) = parse_line(nova).unwrap() else {
            panic!("an answer")
        };
        assert_eq!(body["choices"][0]["finish_reason"], "length");
        assert_eq!(body["usage"]["prompt_tokens"], 7);
        let error = br#"{"recordId":"c","modelInput":{},"error":{"errorCode":400,"errorMessage":"Input is too long for requested model."}}"#;
        let (_, ItemResult::Error(e)) = parse_line(error).unwrap() else {
            panic!("an error")
        };
        assert_eq!(e.kind, ProviderErrorKind::ContextOverflow);
        assert!(parse_line(br#"{"recordId":"d","modelInput":{}}"#).is_none());
        assert!(parse_line(b"not json").is_none());
    }

    #[test]
    fn statuses_map_partial_and_stopped_jobs_to_ingestable_ends() {
        let s = |status: &str| status_of(&json!({"status": status})).state;
        assert_eq!(
            s("PartiallyCompleted"),
            RemoteState::Ended(EndedAs::Completed)
        );
        assert_eq!(s("Stopped"), RemoteState::Ended(EndedAs::Cancelled));
        assert_eq!(s("Expired"), RemoteState::Ended(EndedAs::Expired));
        assert_eq!(s("Stopping"), RemoteState::Cancelling);
        for running in ["Submitted", "Validating", "Scheduled", "InProgress"] {
            assert_eq!(s(running), RemoteState::Running);
        }
        assert!(matches!(
            s("Failed"),
            RemoteState::Ended(EndedAs::Failed { .. })
        ));
    }
}
