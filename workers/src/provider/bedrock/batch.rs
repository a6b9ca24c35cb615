//! Bedrock batch inference on the control plane (`bedrock.{region}`, not the runtime): the
//! records written as one JSONL object to the user's bucket (`batch_s3_url`), one
//! `CreateModelInvocationJob` over it, its state, `StopModelInvocationJob`, and the
//! `<input>.jsonl.out` records Bedrock writes back under `<output>/<jobId>/`.
//!
//! - Each record is `{"recordId": <job id>, "modelInput": <the model's InvokeModel body>}`
//!   (module `records`); families other than Claude and Nova have no batch body here
//!   ([`family`]), and the config refuses `batch_api = true` on them.
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
use serde_json::{Value, json};

pub use super::records::{ANTHROPIC_VERSION, Family, family};
use super::records::{model_input, parse_line, status_of};
use super::{BedrockProvider, classify, encode_label};
use crate::provider::batch::{BatchItem, ObjectStream, RemoteStatus, ResultLines};
use crate::provider::http::json_body;
use crate::provider::{ProviderError, ProviderErrorKind};

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

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::Map;

    use super::*;

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
}
