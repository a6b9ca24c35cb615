//! Bedrock batch inference on the control plane: `POST /model-invocation-job`
//! (CreateModelInvocationJob), `GET /model-invocation-job/{jobIdentifier}`,
//! `POST /model-invocation-job/{jobIdentifier}/stop`, `GET /model-invocation-jobs`
//! (`nameContains`, `maxResults`, `nextToken`, newest first). SigV4-checked as the runtime is
//! (`--bedrock-secret`).
//!
//! The input is read from the S3 server `--bedrock-batch-s3-endpoint` (keys
//! `--bedrock-batch-s3-key-id` / `--bedrock-batch-s3-secret`) at create: one
//! `{"recordId", "modelInput"}` line per record, Claude bodies (`anthropic_version`
//! `bedrock-2023-05-31`) for `anthropic` model ids, `messages-v1` bodies for `amazon.nova`.
//! Each record is answered then, as the runtime would, and revealed on the batch clock
//! (`batch::clock`): once the job has ended (Completed, PartiallyCompleted when a record
//! errored, Expired, Stopped), `<output>/<jobId>/<input file>.out` (records in no particular
//! order, `modelOutput` or `error`) and `manifest.json.out` are written back before the state
//! is shown. The same `clientRequestToken` is the same job. Fewer records than
//! `--bedrock-batch-min-records` fail validation, as Bedrock's minimum does.

use std::error::Error;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{FromRequest, Path, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt as _, PutPayload};
use serde_json::{Value, json};

use super::clock::{Phase, Timeline};
use super::now_ms;
use crate::bedrock::aws_error;
use crate::{AppState, json_response};

/// The `--bedrock-batch-*` flags.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub key_id: Option<String>,
    pub secret: Option<String>,
    pub min_records: usize,
}

impl S3Options {
    pub fn take(&mut self, name: &str, value: &str) -> Option<Result<(), Box<dyn Error>>> {
        match name {
            "--bedrock-batch-s3-endpoint" => self.endpoint = Some(value.to_owned()),
            "--bedrock-batch-s3-key-id" => self.key_id = Some(value.to_owned()),
            "--bedrock-batch-s3-secret" => self.secret = Some(value.to_owned()),
            "--bedrock-batch-min-records" => {
                return Some(
                    value
                        .parse()
                        .map(|n| self.min_records = n)
                        .map_err(|_| format!("{name} takes a number, not {value:?}").into()),
                );
            }
            _ => return None,
        }
        Some(Ok(()))
    }
}

/// One job, its records answered at create.
#[derive(Debug)]
pub struct Job {
    arn: String,
    name: String,
    token: String,
    model: String,
    role: String,
    input_uri: String,
    output_uri: String,
    timeline: Timeline,
    failure: Option<String>,
    /// Output lines in input order, and whether each is an error.
    lines: Vec<(String, bool)>,
    written: bool,
}

/// The jobs, newest last.
#[derive(Debug, Default)]
pub struct Jobs {
    jobs: Vec<Job>,
}

impl Jobs {
    /// Jobs created (a create repeated with its token is not a new one).
    pub fn created(&self) -> usize {
        self.jobs.len()
    }
}

fn invalid(message: &str) -> Response {
    aws_error(StatusCode::BAD_REQUEST, "ValidationException", message)
}

fn not_found(id: &str) -> Response {
    aws_error(
        StatusCode::NOT_FOUND,
        "ResourceNotFoundException",
        &format!("The job {id} was not found (fake)."),
    )
}

/// A request whose SigV4 signature checked out, and its body: the last extractor of every
/// handler here.
pub struct Signed(Bytes);

impl FromRequest<Arc<AppState>> for Signed {
    type Rejection = Response;

    async fn from_request(request: Request, state: &Arc<AppState>) -> Result<Self, Response> {
        let (parts, body) = request.into_parts();
        let (method, uri, headers) = (
            parts.method.clone(),
            parts.uri.clone(),
            parts.headers.clone(),
        );
        let body = Bytes::from_request(Request::from_parts(parts, body), state)
            .await
            .map_err(IntoResponse::into_response)?;
        let refused = crate::bedrock::check_auth_method(
            &state.options,
            method.as_str(),
            &headers,
            uri.path(),
            uri.query().unwrap_or(""),
            &body,
        );
        refused.map_or(Ok(Self(body)), Err)
    }
}

/// `s3://bucket/key` as the bucket's store and the key.
fn open(options: &S3Options, uri: &str) -> Result<(Arc<dyn ObjectStore>, ObjectPath), String> {
    let rest = uri
        .strip_prefix("s3://")
        .ok_or_else(|| format!("{uri} is not an s3:// uri"))?;
    let (bucket, key) = rest.split_once('/').unwrap_or((rest, ""));
    let endpoint = options
        .endpoint
        .as_deref()
        .ok_or("the fake has no --bedrock-batch-s3-endpoint")?;
    let store = AmazonS3Builder::new()
        .with_endpoint(endpoint)
        .with_bucket_name(bucket)
        .with_region("us-east-1")
        .with_allow_http(true)
        .with_access_key_id(options.key_id.clone().unwrap_or_default())
        .with_secret_access_key(options.secret.clone().unwrap_or_default())
        .build()
        .map_err(|e| e.to_string())?;
    Ok((Arc::new(store), ObjectPath::from(key.trim_end_matches('/'))))
}

fn name_ok(name: &str) -> bool {
    let mut chars = name.chars();
    (1..=63).contains(&name.len())
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'))
}

pub async fn create(State(state): State<Arc<AppState>>, Signed(body): Signed) -> Response {
    let Ok(request) = serde_json::from_slice::<Value>(&body) else {
        return invalid("The request body is not valid JSON.");
    };
    let s = |f: &str| request[f].as_str().unwrap_or_default().to_owned();
    let (name, token, model, role) = (
        s("jobName"),
        s("clientRequestToken"),
        s("modelId"),
        s("roleArn"),
    );
    let input_uri = request
        .pointer("/inputDataConfig/s3InputDataConfig/s3Uri")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let output_uri = request
        .pointer("/outputDataConfig/s3OutputDataConfig/s3Uri")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    if !name_ok(&name) {
        return invalid(&format!("jobName {name:?} does not match the pattern"));
    }
    if !role.starts_with("arn:aws:iam::") || model.is_empty() || input_uri.is_empty() {
        return invalid("roleArn, modelId and inputDataConfig are required");
    }
    let _serial = state.batches.creating.lock().await;
    {
        let jobs = crate::lock(&state.batches.bedrock);
        if !token.is_empty()
            && let Some(job) = jobs.jobs.iter().find(|j| j.token == token)
        {
            return json_response(StatusCode::OK, json!({"jobArn": job.arn}));
        }
        if jobs.jobs.iter().any(|j| j.name == name) {
            return invalid(&format!("a job named {name} already exists"));
        }
    }
    let options = &state.options.batch.bedrock;
    let records = match read_input(options, &input_uri).await {
        Ok(r) => r,
        Err(e) => return invalid(&format!("cannot read the input: {e}")),
    };
    let mut failure = None;
    if records.len() < options.min_records.max(1) {
        failure = Some(format!(
            "the input has {} records; a job needs at least {}",
            records.len(),
            options.min_records.max(1)
        ));
    }
    let mut lines = Vec::with_capacity(records.len());
    for (i, record) in records.iter().enumerate() {
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
        lines.push(super::bedrock_records::answer_record(&state, &model, record).await);
    }
    let n = state
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let arn = format!("arn:aws:bedrock:us-east-1:123456789012:model-invocation-job/fakejob{n:06}");
    let timeline = Timeline::new(
        &state.options.batch,
        now_ms(),
        lines.len(),
        failure.is_some(),
    );
    let mut jobs = crate::lock(&state.batches.bedrock);
    jobs.jobs.push(Job {
        arn: arn.clone(),
        name,
        token,
        model,
        role,
        input_uri,
        output_uri,
        timeline,
        failure,
        lines,
        written: false,
    });
    json_response(StatusCode::OK, json!({"jobArn": arn}))
}

async fn read_input(options: &S3Options, uri: &str) -> Result<Vec<Value>, String> {
    let (store, key) = open(options, uri)?;
    let bytes = store
        .get(&key)
        .await
        .map_err(|e| e.to_string())?
        .bytes()
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    for (i, line) in bytes.split(|b| *b == b'\n').enumerate() {
        if line.trim_ascii().is_empty() {
            continue;
        }
        let value: Value =
            serde_json::from_slice(line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if !value["recordId"].is_string() || !value["modelInput"].is_object() {
            return Err(format!(
                "line {}: recordId and modelInput are required",
                i + 1
            ));
        }
        out.push(value);
    }
    Ok(out)
}

/// Bedrock's name for where a job stands, and whether a record errored.
fn status_name(job: &Job, phase: Phase, done: usize) -> &'static str {
    match phase {
        Phase::Validating => "Validating",
        Phase::Failed(_) => "Failed",
        Phase::InProgress | Phase::Finalizing => "InProgress",
        Phase::Completed(_) if job.lines[..done].iter().any(|(_, e)| *e) => "PartiallyCompleted",
        Phase::Completed(_) => "Completed",
        Phase::Expired(_) => "Expired",
        Phase::Cancelling => "Stopping",
        Phase::Cancelled(_) => "Stopped",
    }
}

/// The job as GetModelInvocationJob shows it, writing its output first once it has ended.
async fn shown(state: &AppState, index: usize) -> Result<Value, String> {
    let now = now_ms();
    let (view, write) = {
        let jobs = crate::lock(&state.batches.bedrock);
        let job = &jobs.jobs[index];
        let (phase, done) = job.timeline.at(now);
        let status = status_name(job, phase, done);
        let errors = job.lines[..done].iter().filter(|(_, e)| *e).count();
        let view = json!({
            "jobArn": job.arn, "jobName": job.name, "modelId": job.model, "roleArn": job.role,
            "clientRequestToken": job.token, "status": status,
            "message": job.failure,
            "submitTime": crate::limits::rfc3339(since_epoch(job.timeline.created_ms)),
            "inputDataConfig": {"s3InputDataConfig": {"s3Uri": job.input_uri, "s3InputFormat": "JSONL"}},
            "outputDataConfig": {"s3OutputDataConfig": {"s3Uri": job.output_uri}},
            "totalRecordCount": job.lines.len(), "processedRecordCount": done,
            "successRecordCount": done - errors, "errorRecordCount": errors,
        });
        let ended = phase.ended_at().is_some() && !matches!(phase, Phase::Failed(_));
        let write = (ended && !job.written).then(|| {
            // Records come back in no particular order: every other one first.
            let mut order: Vec<&(String, bool)> = job.lines[..done].iter().step_by(2).collect();
            order.extend(job.lines[..done].iter().skip(1).step_by(2));
            let mut out = String::new();
            for (line, _) in order {
                out.push_str(line);
                out.push('\n');
            }
            let manifest = json!({"totalRecordCount": job.lines.len(),
                "processedRecordCount": done, "successRecordCount": done - errors,
                "errorRecordCount": errors});
            (
                job.input_uri.clone(),
                job.output_uri.clone(),
                job.arn.clone(),
                out,
                manifest,
            )
        });
        (view, write)
    };
    if let Some((input, output, arn, out, manifest)) = write {
        let file = input.rsplit('/').next().unwrap_or("input.jsonl");
        let job_id = arn.rsplit('/').next().unwrap_or_default();
        let (store, dir) = open(&state.options.batch.bedrock, &output)?;
        let dir = dir.clone().join(job_id);
        let put = |name: String, bytes: String| {
            let store = Arc::clone(&store);
            let path = dir.clone().join(name);
            async move { store.put(&path, PutPayload::from(bytes)).await }
        };
        put(format!("{file}.out"), out)
            .await
            .map_err(|e| e.to_string())?;
        put("manifest.json.out".into(), manifest.to_string())
            .await
            .map_err(|e| e.to_string())?;
        if let Some(job) = crate::lock(&state.batches.bedrock).jobs.get_mut(index) {
            job.written = true;
        }
    }
    Ok(view)
}

fn find(state: &AppState, id: &str) -> Option<usize> {
    let jobs = crate::lock(&state.batches.bedrock);
    jobs.jobs
        .iter()
        .position(|j| j.arn == id || j.arn.rsplit('/').next() == Some(id))
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    _: Signed,
) -> Response {
    let Some(index) = find(&state, &id) else {
        return not_found(&id);
    };
    match shown(&state, index).await {
        Ok(view) => json_response(StatusCode::OK, view),
        Err(e) => aws_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "InternalServerException",
            &format!("cannot write the output: {e}"),
        ),
    }
}

pub async fn stop(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    _: Signed,
) -> Response {
    let now = now_ms();
    let mut jobs = crate::lock(&state.batches.bedrock);
    let Some(job) = jobs
        .jobs
        .iter_mut()
        .find(|j| j.arn == id || j.arn.rsplit('/').next() == Some(id.as_str()))
    else {
        return not_found(&id);
    };
    if job.timeline.at(now).0.ended_at().is_some() {
        return invalid("the job has ended and cannot be stopped");
    }
    job.timeline.cancel_at.get_or_insert(now);
    json_response(StatusCode::OK, json!({}))
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    _: Signed,
) -> Response {
    let contains = query.get("nameContains").cloned().unwrap_or_default();
    let max: usize = query
        .get("maxResults")
        .and_then(|v| v.parse().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let skip: usize = query
        .get("nextToken")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let now = now_ms();
    let jobs = crate::lock(&state.batches.bedrock);
    let matching: Vec<&Job> = jobs
        .jobs
        .iter()
        .rev()
        .filter(|j| j.name.contains(&contains))
        .collect();
    let page: Vec<Value> = matching
        .iter()
        .skip(skip)
        .take(max)
        .map(|j| {
            let (phase, done) = j.timeline.at(now);
            json!({"jobArn": j.arn, "jobName": j.name, "modelId": j.model,
                "status": status_name(j, phase, done),
                "submitTime": crate::limits::rfc3339(since_epoch(j.timeline.created_ms))})
        })
        .collect();
    let mut body = json!({"invocationJobSummaries": page});
    if skip + max < matching.len() {
        body["nextToken"] = json!((skip + max).to_string());
    }
    json_response(StatusCode::OK, body)
}

fn since_epoch(ms: u64) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms)
}
