//! `batchyard-fake-provider`: an OpenAI-compatible chat completions server with fault injection,
//! for tests and demos. It binds loopback only.
//!
//! ```text
//! batchyard-fake-provider [--addr 127.0.0.1:0] [--fail-rate-429 F] [--fail-rate-500 F]
//!                         [--latency-ms N] [--require-key KEY]
//! ```
//!
//! It prints one line, `listening on http://127.0.0.1:PORT`, then serves:
//! - `POST /v1/chat/completions`: a deterministic reply echoing the model and the first 40
//!   characters of the last user message, with usage counts and `finish_reason` `stop` (or
//!   `length` when `max_tokens` is smaller than the reply);
//! - `GET /stats`: `{"requests": N, "by_status": {"200": N, "429": N, ...}}`;
//! - `GET /health`: `ok`.
//!
//! Faults, per request:
//! - magic text in the last user message: `FAKE:429_ONCE` (the first call for that exact text
//!   gets 429 with `retry-after-ms: 50`, later ones succeed), `FAKE:500_ONCE`,
//!   `FAKE:500_ALWAYS`, `FAKE:CONTEXT` (400 `context_length_exceeded`), `FAKE:MALFORMED` (200 with
//!   body `not json`), `FAKE:QUOTA` (429 `insufficient_quota`), `FAKE:FILTER` (400
//!   `content_filter`);
//! - the header `x-fake-fault` with one of `429`, `429_once`, `500`, `500_once`, `503`,
//!   `context`, `malformed`, `quota`, `filter`, `no_choices`;
//! - the header `x-fake-latency-ms: N`, added to `--latency-ms`.
//!
//! The `--fail-rate-*` flags fail that fraction of otherwise good requests at random.

use std::collections::{BTreeMap, HashSet};
use std::error::Error;
use std::io::Write as _;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::{Value, json};

const USAGE: &str = "usage: batchyard-fake-provider [--addr 127.0.0.1:0] [--fail-rate-429 F] \
                     [--fail-rate-500 F] [--latency-ms N] [--require-key KEY]";

#[derive(Debug, Clone)]
struct Options {
    addr: SocketAddr,
    fail_rate_429: f64,
    fail_rate_500: f64,
    latency: Duration,
    require_key: Option<String>,
}

impl Options {
    fn parse(mut args: impl Iterator<Item = String>) -> Result<Self, Box<dyn Error>> {
        let mut options = Self {
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            fail_rate_429: 0.0,
            fail_rate_500: 0.0,
            latency: Duration::ZERO,
            require_key: None,
        };
        while let Some(flag) = args.next() {
            if flag == "--help" || flag == "-h" {
                println!("{USAGE}");
                std::process::exit(0);
            }
            let (name, inline) = match flag.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (flag.clone(), None),
            };
            let value = match inline.or_else(|| args.next()) {
                Some(v) => v,
                None => return Err(format!("{name} needs a value\n{USAGE}").into()),
            };
            match name.as_str() {
                "--addr" => options.addr = value.parse()?,
                "--fail-rate-429" => options.fail_rate_429 = rate(&name, &value)?,
                "--fail-rate-500" => options.fail_rate_500 = rate(&name, &value)?,
                "--latency-ms" => options.latency = Duration::from_millis(value.parse()?),
                "--require-key" => options.require_key = Some(value),
                _ => return Err(format!("unknown flag {name}\n{USAGE}").into()),
            }
        }
        if !options.addr.ip().is_loopback() {
            return Err(format!(
                "--addr {} is not a loopback address: the fake provider only binds 127.0.0.1 or ::1",
                options.addr
            )
            .into());
        }
        Ok(options)
    }
}

fn rate(name: &str, value: &str) -> Result<f64, Box<dyn Error>> {
    let rate: f64 = value.parse()?;
    if !(0.0..=1.0).contains(&rate) {
        return Err(format!("{name} must be between 0 and 1, not {value}").into());
    }
    Ok(rate)
}

struct AppState {
    options: Options,
    next_id: AtomicU64,
    by_status: Mutex<BTreeMap<u16, u64>>,
    /// Texts (with their fault) that already had their one failure.
    failed_once: Mutex<HashSet<String>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
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
        .route("/v1/chat/completions", post(chat))
        .route("/chat/completions", post(chat))
        .route("/stats", get(stats))
        .route("/health", get(|| async { "ok" }))
        .with_state(state)
}

async fn stats(State(state): State<Arc<AppState>>) -> Response {
    let by_status = lock(&state.by_status).clone();
    let total: u64 = by_status.values().sum();
    let by_status: serde_json::Map<String, Value> = by_status
        .into_iter()
        .map(|(status, n)| (status.to_string(), Value::from(n)))
        .collect();
    json_response(
        StatusCode::OK,
        json!({"requests": total, "by_status": by_status}),
    )
}

async fn chat(State(state): State<Arc<AppState>>, headers: HeaderMap, body: Bytes) -> Response {
    let extra_ms = headers
        .get("x-fake-latency-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let latency = state.options.latency + Duration::from_millis(extra_ms);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = answer(&state, &headers, &body);
    state.record(response.status());
    response
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (status, axum::Json(body)).into_response()
}

fn error_response(status: StatusCode, message: &str, kind: &str, code: Value) -> Response {
    json_response(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

fn rate_limited() -> Response {
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "Rate limit reached for requests (fake). Please try again in 50ms.",
        "requests",
        json!("rate_limit_exceeded"),
    );
    response
        .headers_mut()
        .insert("retry-after-ms", HeaderValue::from_static("50"));
    response
}

fn server_error(status: StatusCode) -> Response {
    error_response(
        status,
        "The server had an error while processing your request (fake).",
        "server_error",
        Value::Null,
    )
}

/// A fault chosen by the request, if any.
fn fault(state: &AppState, headers: &HeaderMap, text: &str) -> Option<Response> {
    let header_fault = headers
        .get("x-fake-fault")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let magic = [
        ("FAKE:429_ONCE", "429_once"),
        ("FAKE:500_ONCE", "500_once"),
        ("FAKE:500_ALWAYS", "500"),
        ("FAKE:CONTEXT", "context"),
        ("FAKE:MALFORMED", "malformed"),
        ("FAKE:QUOTA", "quota"),
        ("FAKE:FILTER", "filter"),
    ]
    .iter()
    .find(|(marker, _)| text.contains(marker))
    .map(|(_, fault)| (*fault).to_owned());
    let fault = magic.or(header_fault)?;
    match fault.as_str() {
        "429" => Some(rate_limited()),
        "429_once" => state
            .first_time(format!("429\u{0}{text}"))
            .then(rate_limited),
        "500" => Some(server_error(StatusCode::INTERNAL_SERVER_ERROR)),
        "500_once" => state
            .first_time(format!("500\u{0}{text}"))
            .then(|| server_error(StatusCode::INTERNAL_SERVER_ERROR)),
        "503" => Some(server_error(StatusCode::SERVICE_UNAVAILABLE)),
        "context" => Some(error_response(
            StatusCode::BAD_REQUEST,
            "This model's maximum context length is 8192 tokens. However, your messages resulted \
             in 9001 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            json!("context_length_exceeded"),
        )),
        "malformed" => Some(
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "text/plain")],
                "not json",
            )
                .into_response(),
        ),
        "quota" => Some(error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            json!("insufficient_quota"),
        )),
        "filter" => Some(error_response(
            StatusCode::BAD_REQUEST,
            "The response was filtered due to the prompt triggering the content management \
             policy (fake).",
            "invalid_request_error",
            json!("content_filter"),
        )),
        "no_choices" => Some(json_response(
            StatusCode::OK,
            json!({"id": "fakecmpl-empty", "object": "chat.completion", "choices": []}),
        )),
        _ => None,
    }
}

fn text_of(content: Option<&Value>) -> &str {
    match content {
        Some(Value::String(s)) => s,
        Some(Value::Array(parts)) => parts
            .iter()
            .find_map(|p| p.get("text").and_then(Value::as_str))
            .unwrap_or(""),
        _ => "",
    }
}

fn answer(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Response {
    if let Some(key) = &state.options.require_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            // Like the real thing, it echoes what it was given: clients must not pass it on.
            let message = match given {
                Some(wrong) => format!(
                    "Incorrect API key provided: {wrong}. You can find your API key in your \
                     account settings."
                ),
                None => "You didn't provide an API key.".to_owned(),
            };
            return error_response(
                StatusCode::UNAUTHORIZED,
                &message,
                "invalid_request_error",
                json!("invalid_api_key"),
            );
        }
    }

    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return error_response(
                StatusCode::BAD_REQUEST,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                Value::Null,
            );
        }
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return error_response(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            Value::Null,
        );
    };
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| text_of(m.get("content")))
        .unwrap_or("");

    if let Some(response) = fault(state, headers, last_user) {
        return response;
    }
    if state.options.fail_rate_429 > 0.0 && rand::random::<f64>() < state.options.fail_rate_429 {
        return rate_limited();
    }
    if state.options.fail_rate_500 > 0.0 && rand::random::<f64>() < state.options.fail_rate_500 {
        return server_error(StatusCode::INTERNAL_SERVER_ERROR);
    }

    let prompt_chars: usize = messages
        .iter()
        .map(|m| text_of(m.get("content")).chars().count())
        .sum();
    let prompt_tokens = (prompt_chars / 4 + 4 * messages.len()).max(1) as u64;
    let first: String = last_user.chars().take(40).collect();
    let mut content = format!("fake reply from {model}: {first}");
    let mut completion_tokens = (content.chars().count() as u64).div_ceil(4);
    let limit = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| request.get(*k).and_then(Value::as_u64));
    let mut finish_reason = "stop";
    if let Some(limit) = limit.filter(|l| *l < completion_tokens) {
        finish_reason = "length";
        completion_tokens = limit;
        content = content
            .chars()
            .take(usize::try_from(limit.saturating_mul(4)).unwrap_or(usize::MAX))
            .collect();
    }
    let n = state.next_id.fetch_add(1, Ordering::Relaxed);
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut response = json_response(
        StatusCode::OK,
        json!({
            "id": format!("fakecmpl-{n}"),
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            },
        }),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("fakereq-{n}")) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}

async fn run(options: Options) -> Result<(), Box<dyn Error>> {
    let listener = tokio::net::TcpListener::bind(options.addr).await?;
    let local = listener.local_addr()?;
    let state = Arc::new(AppState {
        options,
        next_id: AtomicU64::new(1),
        by_status: Mutex::new(BTreeMap::new()),
        failed_once: Mutex::new(HashSet::new()),
    });
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{local}")?;
        stdout.flush()?;
    }
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}

fn main() -> ExitCode {
    let result = Options::parse(std::env::args().skip(1)).and_then(|options| {
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
