//! One batch item answered exactly as the real-time endpoint answers the same body (the same
//! parse, skill mode, `--reply`, prompt-cache usage, `max_tokens` cut and magic-text faults),
//! without auth (the batch request was checked), limits or latency.

use axum::http::HeaderMap;
use axum::response::Response;
use serde_json::{Value, json};

use crate::AppState;
use crate::flow::{self, Fault, Reply};

/// Which real-time endpoint the item stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api<'a> {
    OpenAi,
    Anthropic,
    /// Bedrock's Converse shape (Nova's `messages-v1` is close enough once renamed).
    Bedrock,
    /// `generateContent` of this model (Gemini's body names none).
    Gemini(&'a str),
}

impl Api<'_> {
    fn parse(self, body: &[u8]) -> Result<flow::Parsed, Box<Response>> {
        match self {
            Api::OpenAi => crate::openai::parse(body),
            Api::Anthropic => crate::anthropic::parse(body),
            Api::Bedrock => crate::bedrock::parse(body, "bedrock"),
            Api::Gemini(model) => crate::gemini::parse(body, model),
        }
    }
}

/// What the real-time endpoint would have answered.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    /// The answer's JSON, serialized: a `Value` per item would cost several times more memory.
    pub body: String,
    pub request_id: String,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
}

impl Answer {
    pub fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }

    /// The `--batch-item-fail-rate` error: a 500, as a provider's own failure.
    pub fn server_error(api: Api<'_>, request_id: String) -> Self {
        let body = match api {
            Api::OpenAi => json!({"error": {
                "message": "The server had an error processing your request (fake batch item).",
                "type": "server_error", "param": null, "code": null}}),
            Api::Anthropic => json!({"type": "error", "error": {
                "type": "api_error", "message": "Internal server error (fake batch item)"}}),
            Api::Bedrock => json!({"__type": "InternalServerException",
                "message": "Internal server error (fake batch item)"}),
            Api::Gemini(_) => json!({"error": {"code": 500, "status": "INTERNAL",
                "message": "An internal error has occurred (fake batch item)."}}),
        };
        Self {
            status: 500,
            body: body.to_string(),
            request_id,
            input_tokens: 0,
            output_tokens: 0,
            cached_tokens: 0,
        }
    }

    /// The stored size, for the store's byte cap.
    pub fn bytes(&self) -> u64 {
        (self.body.len() + self.request_id.len() + 64) as u64
    }
}

/// Every request of a batch answered, `(custom_id, body)` each; `--batch-item-fail-rate`
/// picks the ones that fail as the provider's own error.
pub async fn answer_all(
    state: &AppState,
    api: Api<'_>,
    requests: Vec<(String, Vec<u8>)>,
) -> Vec<super::store::Item> {
    let mut items = Vec::with_capacity(requests.len());
    for (i, (custom_id, body)) in requests.into_iter().enumerate() {
        // A big batch takes a while to answer: let the other requests through meanwhile.
        if i % 256 == 255 {
            tokio::task::yield_now().await;
        }
        let answer = if state.options.batch.item_fails(&custom_id) {
            let n = state
                .next_id
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Answer::server_error(api, format!("req_fake{n}"))
        } else {
            answer(state, api, &body).await
        };
        items.push(super::store::Item { custom_id, answer });
    }
    items
}

/// The estimated input tokens of a body (the quota counts these), without answering it.
pub fn input_tokens(api: Api<'_>, body: &[u8]) -> Option<(String, u64)> {
    let parsed = api.parse(body).ok()?;
    Some((parsed.model, parsed.prompt_tokens))
}

/// Answers one item's body.
pub async fn answer(state: &AppState, api: Api<'_>, body: &[u8]) -> Answer {
    let Some(response) = respond(state, api, body) else {
        let n = state
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        return Answer::server_error(api, format!("req_fake_batch{n}"));
    };
    let status = response.status();
    let request_id = response
        .headers()
        .get(match api {
            Api::OpenAi => "x-request-id",
            Api::Anthropic | Api::Gemini(_) => "request-id",
            Api::Bedrock => "x-amzn-requestid",
        })
        .and_then(|v| v.to_str().ok())
        .map_or_else(|| "req_fake_batch".to_owned(), str::to_owned);
    // These bodies are built in memory, never streamed: only the connection faults
    // (mapped away in `respond`) are not.
    let bytes = axum::body::to_bytes(response.into_body(), 16 * 1024 * 1024).await;
    let Some(body) = bytes
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
    else {
        // A batch has no connection to drop or page to mangle: a non-JSON answer (the
        // malformed and html faults) is the provider's own failure.
        return Answer::server_error(api, request_id);
    };
    let usage = |key: &str| body.pointer(key).and_then(Value::as_u64).unwrap_or(0);
    let (input_tokens, output_tokens, cached_tokens) = match api {
        Api::OpenAi => (
            usage("/usage/prompt_tokens"),
            usage("/usage/completion_tokens"),
            usage("/usage/prompt_tokens_details/cached_tokens"),
        ),
        Api::Anthropic => (
            usage("/usage/input_tokens")
                + usage("/usage/cache_read_input_tokens")
                + usage("/usage/cache_creation_input_tokens"),
            usage("/usage/output_tokens"),
            usage("/usage/cache_read_input_tokens"),
        ),
        Api::Bedrock => (
            usage("/usage/inputTokens")
                + usage("/usage/cacheReadInputTokens")
                + usage("/usage/cacheWriteInputTokens"),
            usage("/usage/outputTokens"),
            usage("/usage/cacheReadInputTokens"),
        ),
        Api::Gemini(_) => (
            usage("/usageMetadata/promptTokenCount"),
            usage("/usageMetadata/candidatesTokenCount"),
            usage("/usageMetadata/cachedContentTokenCount"),
        ),
    };
    Answer {
        status: status.as_u16(),
        body: body.to_string(),
        request_id,
        input_tokens,
        output_tokens,
        cached_tokens,
    }
}

/// The real-time answer, or `None` for a fault that has no answer (drop, hang, huge).
fn respond(state: &AppState, api: Api<'_>, body: &[u8]) -> Option<Response> {
    let mut parsed = match api.parse(body) {
        Ok(p) => p,
        Err(refused) => return Some(*refused),
    };
    flow::fill(state, &HeaderMap::new(), &mut parsed);
    let n = state
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let fault = flow::magic(state, &parsed.last_user);
    Some(match fault {
        None | Some(Fault::Length) => {
            let reply = Reply::new(&parsed, fault.is_some());
            match api {
                Api::OpenAi => crate::openai::success(n, &parsed, &reply),
                Api::Anthropic => crate::anthropic::success(n, &parsed, &reply),
                Api::Bedrock => crate::bedrock::success(n, &parsed, &reply),
                Api::Gemini(_) => crate::gemini::success(n, &parsed, &reply),
            }
        }
        // Nothing to hang up on in a batch: the item fails as the provider's own error.
        Some(Fault::Drop | Fault::Hang | Fault::Huge(_)) => return None,
        Some(fault) => match api {
            Api::OpenAi => crate::openai::fault(fault, &state.shutdown),
            Api::Anthropic => crate::anthropic::fault(fault, &state.shutdown),
            Api::Bedrock => crate::bedrock::fault(fault, &state.shutdown),
            Api::Gemini(_) => crate::gemini::fault(fault, &state.shutdown),
        },
    })
}
