//! `batchyard-fake-provider`: an OpenAI-, Anthropic-, Gemini- and Azure-OpenAI-compatible server
//! with fault injection, for tests and benchmarks. It binds loopback only. Run with `--help` for the flags.
//!
//! It prints one line, `listening on http://127.0.0.1:PORT`, and never writes to stdout again.
//! It serves:
//! - `POST /v1/chat/completions` (also `/chat/completions`): a deterministic reply echoing the
//!   model and the first 40 characters of the last user message, with usage counts and
//!   `finish_reason` `stop` (or `length` when `max_tokens` is smaller than the reply); `n` (up
//!   to 128) repeats the choice, and `completion_tokens` counts every choice;
//! - `POST /v1/messages`: the same reply in Anthropic's shape (`stop_reason` `end_turn` or
//!   `max_tokens`); needs `anthropic-version` and `max_tokens`, and `x-api-key` when
//!   `--require-key` is set;
//! - `POST /v1beta/models/{model}:generateContent` (also `/models/...`): the same reply in
//!   Gemini's shape (`finishReason` `STOP` or `MAX_TOKENS`, `usageMetadata`), checking
//!   `x-goog-api-key` when `--require-key` is set; its errors are Google's (see `gemini`);
//! - `POST /openai/deployments/{deployment}/chat/completions?api-version=V`: Azure OpenAI,
//!   the OpenAI reply with the deployment as `model` (the body needs none); a missing
//!   `api-version` is 404 and one not shaped `YYYY-MM-DD[-preview]` 400, as Azure answers;
//!   with `--require-key`, the `api-key` header or `Authorization: Bearer` must carry it
//!   (401 otherwise). Limits and faults apply in Azure's shapes: 429s carry `retry-after-ms`
//!   (over a limit also `retry-after` and `x-ratelimit-remaining-*`; a fault 429 only
//!   `retry-after-ms: 300`), the content filter is a 400 with `innererror.code =
//!   ResponsibleAIPolicyViolation`;
//! - `POST /model/{modelId}/converse`: AWS Bedrock's Converse API, the same reply with
//!   `stopReason` `end_turn` or `max_tokens` and `usage` (cache reads and writes included);
//!   with `--bedrock-secret`, each request's SigV4 signature is recomputed and checked (403
//!   `InvalidSignatureException` when it differs), or a Bedrock API key is taken as
//!   `Authorization: Bearer` (`--require-key`); its errors are AWS's (see `bedrock`);
//! - the AWS credential chain's cloud sources (instance metadata, the container agent, STS
//!   `AssumeRoleWithWebIdentity` at `POST /`), handing out the Bedrock dialect's keys (see
//!   `aws_creds`);
//! - `GET /stats`: `{"requests", "by_status": {"200": N, ...}, "dropped", "hung", "faults":
//!   {"429": N, "hang": N, "malformed": N, "length": N, ...} (the random faults served, by kind),
//!   "rpm", "tpm",
//!   "max_requests_per_window", "max_tokens_per_window", "windows": [{"start", "requests",
//!   "tokens", "rejected"}]}` (windows are the 60 s rate-limit windows, `start` in unix seconds;
//!   `requests` / `tokens` count admitted requests only; batch API calls are not counted
//!   there), and `"batches": {"created", "by_status", "cancelled", "files_uploaded",
//!   "files_deleted", "stored_bytes", "openai": {"created", "by_status", "cancelled"},
//!   "anthropic": {"created", "by_status", "cancelled", "refused", "deleted"},
//!   "gemini": {"created", "cancelled", "deleted"}, "bedrock_jobs_created"}` (`created`
//!   counts every API's accepted creates, Bedrock's jobs included, `cancelled` the
//!   accepted cancels of OpenAI, Anthropic and Gemini; `by_status` is each OpenAI and
//!   Anthropic batch's state now, OpenAI's `status` or Anthropic's `processing_status`);
//! - `POST /{tenant}/oauth2/v2.0/token` and `GET /msi/token`: Microsoft Entra ID tokens for
//!   the Azure route (see `entra`; `/stats` counts them as `entra_tokens_issued`);
//! - `GET /health`: `ok`.
//!
//! Batch APIs (module `batch`), on a clock sped up by flags, in memory:
//! - OpenAI: `POST /v1/files` (multipart `purpose=batch`, `file`; 200 MB at most),
//!   `GET /v1/files` (`purpose`, `limit`, `after`, `order`; newest first), `GET /v1/files/{id}`,
//!   `GET /v1/files/{id}/content`, `DELETE /v1/files/{id}`;
//!   `POST /v1/batches` (`input_file_id`, `endpoint` `/v1/chat/completions`,
//!   `completion_window` `24h`, `metadata` up to 16 pairs), `GET /v1/batches/{id}`,
//!   `POST /v1/batches/{id}/cancel`, `GET /v1/batches?limit=&after=` (newest first,
//!   `first_id`, `last_id`, `has_more`). Status `validating → in_progress → finalizing →
//!   completed`, or `failed` (bad JSON line, wrong `url`/`method`, missing `custom_id` or
//!   `body`, duplicate `custom_id`, mixed models, more than 50,000 lines, or the enqueued-token
//!   quota: `errors.data[]` with `code`, `message`, `param`, `line`), `expired`, `cancelling →
//!   cancelled`. Output file: the 2xx answers; error file: the error answers and, for an
//!   expired or cancelled batch, the lines never run (`error.code` `batch_expired` /
//!   `batch_cancelled`); lines in no particular order. Cancelling an ended batch is a 400.
//! - Anthropic: `POST /v1/messages/batches` (`requests: [{custom_id, params}]`, up to 100,000,
//!   custom_ids `^[a-zA-Z0-9_-]{1,64}$` and unique, else 400), `GET /v1/messages/batches/{id}`
//!   (`processing_status` `in_progress | canceling | ended`, `request_counts` all `processing`
//!   until ended, `results_url` once ended), `GET .../{id}/results` (JSONL, unordered,
//!   `succeeded | errored | canceled | expired`; 400 before the end),
//!   `POST .../{id}/cancel` (400 once ended), `DELETE .../{id}` (ended only),
//!   `GET /v1/messages/batches?limit=&after_id=&before_id=` (newest first). Same auth as
//!   `/v1/messages`.
//! - Bedrock batch inference (module `batch::bedrock`): `POST /model-invocation-job`,
//!   `GET /model-invocation-job/{id}`, `POST .../{id}/stop`, `GET /model-invocation-jobs`,
//!   SigV4-checked as Converse; records read from and `.jsonl.out` / `manifest.json.out`
//!   written to the S3 server `--bedrock-batch-s3-endpoint` (keys `--bedrock-batch-s3-key-id`,
//!   `--bedrock-batch-s3-secret`).
//! - Gemini: `POST /v1beta/models/{model}:batchGenerateContent` (inline requests, each with
//!   `metadata.key`; `display_name`), `GET /v1beta/batches/{id}` (an operation: `metadata.state`
//!   `BATCH_STATE_*`, `batchStats`, and once `done` the unordered `inlinedResponses`),
//!   `POST /v1beta/batches/{id}:cancel`, `DELETE /v1beta/batches/{id}` (ended only),
//!   `GET /v1beta/batches?pageSize=&pageToken=` (newest first). Same auth as `generateContent`.
//! - Every item is answered, when the batch is created, exactly as the real-time endpoint
//!   answers its body (skill mode, `--reply`, prompt-cache markers, `max_tokens`, magic text;
//!   `FAKE:DROP`/`FAKE:HANG` and non-JSON faults become 500 items), with no limits, faults
//!   drawn at random or latency, and revealed as the clock says: with `step = turnaround / 10`,
//!   validating for one step, items done one by one (in input order) over the next eight,
//!   finalizing for the last. Flags: `--batch-window-secs` (what "24h" means, 86400),
//!   `--batch-turnaround-ms` (2000), `--batch-item-fail-rate F` (that fraction of items errors
//!   with a 500 / `api_error`, chosen by a hash of the custom_id, the same in both APIs),
//!   `--batch-expire[=F]` (batches never complete: at the window they expire with the first F of
//!   their items done, 0.5), `--batch-enqueued-token-limit N` (per model, estimated input
//!   tokens over batches not yet ended: OpenAI's batch fails with `token_limit_exceeded`,
//!   Anthropic's create is a 429 `rate_limit_error`), `--batch-max-bytes N` (what the store
//!   holds: uploads, answers, result files; past it 413, 512 MiB). See `batch::clock`.
//!
//! Limits (`--rpm`, `--tpm`): fixed 60 s windows aligned to the minute. Over a limit: 429 with
//! `retry-after` (seconds to the window's end) and `x-ratelimit-{limit,remaining,reset}-
//! {requests,tokens}` (resets as Go durations, `12.5s`), or Anthropic's
//! `anthropic-ratelimit-*` (resets as RFC 3339). Successful replies carry the same headers.
//!
//! Faults, per request (magic text wins over the header; then the random rates apply):
//! - magic text in the last user message: `FAKE:429_ONCE` (the first call for that exact text
//!   gets 429 with `retry-after-ms: 50`, later ones succeed), `FAKE:500_ONCE`,
//!   `FAKE:500_ALWAYS`, `FAKE:CONTEXT` (400 context overflow), `FAKE:MALFORMED` (200 with body
//!   `not json`), `FAKE:QUOTA` (429 `insufficient_quota`), `FAKE:FILTER` (content filter),
//!   `FAKE:HANG`, `FAKE:DROP`, `FAKE:LENGTH`;
//! - the header `x-fake-fault` with one of `429`, `429_once`, `500`, `500_once`, `502`, `503`,
//!   `529`, `context`, `malformed`, `quota`, `filter`, `no_choices`, `drop` (close the connection
//!   without a response), `hang` (answer nothing for `--hang-secs`, then close), `length` (a
//!   reply cut short), `huge` (a 5 MiB unterminated JSON body with `Content-Length`; the header
//!   `x-fake-body-mib: N` sets its size, streamed, so the fake itself stays small), `endless`
//!   (200 with a chunked JSON body that never ends), `error_200` (200 with an error object),
//!   `html` (200 `text/html`);
//! - the header `x-fake-latency-ms: N`, added to the drawn latency;
//! - `--fail-rate-{429,500,502,503,529}`, `--drop-rate`, `--hang-rate`, `--malformed-rate`,
//!   `--length-rate`, `--filter-rate`: that fraction of requests, at random (one draw each);
//! - `--retry-after-secs N`: fault 429s (random, header or magic text) also carry
//!   `retry-after: N`, besides the OpenAI dialect's `retry-after-ms: 50`.
//!
//! Skill mode (`--skills MODEL=SKILL,...`, for routing benchmarks): when the last user message
//! contains `[[difficulty=D]]` and the requested model has a skill, the reply is `ANSWER: ok`
//! or `ANSWER: wrong`, decided deterministically by a hash of the model and the text against
//! `1 / (1 + exp(-12 (skill - D)))`; see the `skill` module for the exact rule and usage.
//! OpenAI-dialect usage is always `prompt_tokens = floor(chars of all message contents / 4) +
//! 4 per message` (at least 1) and `completion_tokens = ceil(reply chars / 4)`.
//!
//! Prompt cache: a TTL cache per (model, prefix) (`prompt_cache`), counted in `/stats`.
//!
//! Modules: `options` (the flags), `flow` (one request for every dialect: auth, parse,
//! admission, latency, a fault or the reply), `openai`, `anthropic`, `gemini`, `azure` and
//! `bedrock` (the dialects), `sigv4` (checking AWS signatures), `aws_creds` (AWS credential
//! sources), `entra` (Entra ID tokens for the Azure route),
//! `limits` (the RPM / TPM windows and `/stats` counts), `conn` (a listener whose connections a
//! handler can drop), `skill` (skill mode's rule), `batch` (the batch APIs), `respond` (the
//! shared answers and fault bodies). Its own crate
//! (`fake-provider/`), so the library crates do not depend on axum for it.

mod anthropic;
mod aws_creds;
mod azure;
mod batch;
mod bedrock;
mod conn;
mod entra;
mod flow;
mod gemini;
mod limits;
mod openai;
mod options;
mod prompt_cache;
mod respond;
mod sigv4;
mod skill;

use std::collections::{BTreeMap, HashSet};
use std::error::Error;
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use axum::routing::{get, post};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use conn::{Conn, KillableListener};
use flow::Dialect;
use limits::Limiter;
use options::Options;
pub use respond::{empty, html, huge, json_response, malformed};

/// The size of the `huge` fault's body, unless `x-fake-body-mib` says otherwise.
pub const HUGE_BYTES: u64 = 5 * 1024 * 1024;

pub struct AppState {
    options: Options,
    next_id: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    /// Texts (with their fault) that already had their one failure.
    failed_once: Mutex<HashSet<String>>,
    limiter: Limiter,
    dropped: AtomicU64,
    hung: AtomicU64,
    /// Credentials handed out by the AWS chain stand-ins.
    credentials_served: AtomicU64,
    /// The random faults served (not those asked for by magic text or header), by
    /// [`flow::Fault::name`].
    faults: Mutex<BTreeMap<String, u64>>,
    /// Entra ID tokens issued by the token endpoints.
    entra: entra::Tokens,
    /// Cancelled on shutdown, so hung requests let go.
    shutdown: CancellationToken,
    /// The TTL prompt cache (`--prompt-cache-ttl-secs`, `--prompt-cache-min-tokens`).
    prompt_caches: prompt_cache::PromptCaches,
    /// The batch APIs' files and batches.
    batches: batch::Batches,
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AppState {
    fn record(&self, status: StatusCode) {
        *lock(&self.by_status).entry(status.as_u16()).or_default() += 1;
    }

    /// True the first time only, for this key.
    fn first_time(&self, key: String) -> bool {
        lock(&self.failed_once).insert(key)
    }
}

fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .merge(batch::routes(&state.options.batch))
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/v1/messages", post(messages))
        .route("/v1beta/models/{*tail}", post(generate))
        .route("/models/{*tail}", post(generate))
        .route(
            "/openai/deployments/{deployment}/chat/completions",
            post(azure_chat),
        )
        .route("/{tenant}/oauth2/v2.0/token", post(entra_token))
        .route("/msi/token", get(entra_managed_identity))
        .route("/model/{model}/converse", post(converse))
        .route("/", post(sts))
        .route(
            "/latest/api/token",
            axum::routing::put(|| async { aws_creds::imds_token() }),
        )
        .route("/latest/meta-data/iam/security-credentials/", get(imds))
        .route(
            "/latest/meta-data/iam/security-credentials/{role}",
            get(imds_role),
        )
        .route("/container-credentials", get(container_credentials))
        .route("/stats", get(stats))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

async fn chat(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    flow::handle(&state, &conn, &headers, &body, Dialect::OpenAi).await
}

async fn messages(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    flow::handle(&state, &conn, &headers, &body, Dialect::Anthropic).await
}

async fn generate(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(tail): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(model) = tail.strip_suffix(":batchGenerateContent") {
        return batch::gemini::create(&state, &headers, model, &body).await;
    }
    match gemini::model_of(&tail) {
        Ok(model) => {
            flow::handle_model(&state, &conn, &headers, &body, Dialect::Gemini, &model).await
        }
        Err(response) => *response,
    }
}

async fn azure_chat(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(deployment): Path<String>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Some(refused) = azure::check_request(
        &state.options,
        &state.entra,
        &headers,
        query.as_deref().unwrap_or(""),
    ) {
        state.record(refused.status());
        return refused;
    }
    let body = azure::with_deployment(&body, &deployment);
    flow::handle(&state, &conn, &headers, &body, Dialect::Azure).await
}

async fn entra_token(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    let response = entra::token(
        &state.options,
        &state.entra,
        &String::from_utf8_lossy(&body),
    );
    state.record(response.status());
    response
}

async fn entra_managed_identity(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
) -> Response {
    let query = query.unwrap_or_default();
    let response = entra::managed_identity(&state.options, &state.entra, &headers, &query);
    state.record(response.status());
    response
}

async fn converse(
    State(state): State<Arc<AppState>>,
    ConnectInfo(conn): ConnectInfo<Conn>,
    Path(model): Path<String>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let query = uri.query().unwrap_or("");
    let refused = bedrock::check_auth(&state.options, &headers, uri.path(), query, &body)
        .or_else(|| bedrock::check_model(&model));
    if let Some(refused) = refused {
        state.record(refused.status());
        return refused;
    }
    flow::handle_model(&state, &conn, &headers, &body, Dialect::Bedrock, &model).await
}

async fn sts(State(state): State<Arc<AppState>>, body: Bytes) -> Response {
    aws_creds::assume_role_with_web_identity(&state, &body)
}

async fn imds(State(state): State<Arc<AppState>>, headers: HeaderMap) -> Response {
    aws_creds::imds_credentials(&state, &headers, None)
}

async fn imds_role(
    State(state): State<Arc<AppState>>,
    Path(role): Path<String>,
    headers: HeaderMap,
) -> Response {
    aws_creds::imds_credentials(&state, &headers, Some(&role))
}

async fn container_credentials(State(state): State<Arc<AppState>>) -> Response {
    aws_creds::container_credentials(&state)
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    let by_status = lock(&state.by_status).clone();
    let total: u64 = by_status.values().sum();
    let by_status: serde_json::Map<String, Value> = by_status
        .into_iter()
        .map(|(status, n)| (status.to_string(), Value::from(n)))
        .collect();
    let mut body = json!({
        "requests": total,
        "by_status": by_status,
        "dropped": state.dropped.load(Ordering::Relaxed),
        "hung": state.hung.load(Ordering::Relaxed),
        "faults": lock(&state.faults).clone(),
        "prompt_cache": state.prompt_caches.stats(),
        "entra_tokens_issued": state.entra.count(),
        "credentials_served": state.credentials_served.load(Ordering::Relaxed),
        "batches": state.batches.stats(),
    });
    if let (Value::Object(out), Value::Object(limits)) = (&mut body, state.limiter.stats()) {
        out.extend(limits);
    }
    json_response(StatusCode::OK, body)
}

async fn run(options: Options) -> Result<(), Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    let local = listener.local_addr()?;
    let shutdown = CancellationToken::new();
    let state = Arc::new(AppState {
        limiter: Limiter::new(options.rpm, options.tpm, options.window_secs),
        prompt_caches: prompt_cache::PromptCaches::of(&options),
        options,
        next_id: AtomicU64::new(1),
        by_status: Mutex::new(BTreeMap::new()),
        failed_once: Mutex::new(HashSet::new()),
        dropped: AtomicU64::new(0),
        hung: AtomicU64::new(0),
        credentials_served: AtomicU64::new(0),
        faults: Mutex::new(BTreeMap::new()),
        entra: entra::Tokens::default(),
        shutdown: shutdown.clone(),
        batches: batch::Batches::default(),
    });
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{local}")?;
        stdout.flush()?;
    }
    let app = router(state).into_make_service_with_connect_info::<Conn>();
    axum::serve(KillableListener(listener), app)
        .with_graceful_shutdown(async move {
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
        })
        .await?;
    Ok(())
}

fn main() -> ExitCode {
    let result = Options::parse(std::env::args().skip(1)).and_then(|options| {
        let Some(options) = options else {
            return Ok(());
        };
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?
            .block_on(run(options))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("batchyard-fake-provider: {e}");
            ExitCode::FAILURE
        }
    }
}
