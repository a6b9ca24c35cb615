//! Any OpenAI-compatible chat completions endpoint: OpenAI, vLLM, Ollama, llama.cpp server,
//! Together, Groq, OpenRouter.
//!
//! - [`OpenAiProvider`] holds one pooled `reqwest::Client` and POSTs `{base_url}/chat/completions`.
//! - [`classify`] turns an error response (status, headers, body) into a typed [`ProviderError`],
//!   with the provider's retry hint (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`) in
//!   `retry_after`. The retry module decides what to do with it.
//! - The API key is sent only in the `Authorization` header (marked sensitive), is redacted from
//!   every error message, and never appears in `Debug` output.
//! - [`batch`]: OpenAI's Batch API (files, batches, results) on the same endpoint and key.

pub mod batch;

use std::fmt;
use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::{Map, Value};

use super::{ChatCall, Completion, ProviderError, ProviderErrorKind, RateLimitReport, Secret};

use super::http::{
    self, Endpoint, EndpointConfig, ErrorInfo, HeaderNames, KeyHeader, MAX_PROVIDER_MESSAGE_CHARS,
    base_url, header_str, snippet,
};
pub use super::http::{
    classify, parse_go_duration, parse_http_date, parse_retry_after, retry_hint,
};

/// What an `openai` base_url should point at, for messages.
const OPENAI_API: &str = "an openai-compatible /v1 endpoint";

/// How to reach one OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Up to and including the version, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8000/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<Secret>,
    /// Extra headers sent with every request (e.g. `OpenAI-Organization`). Their values are
    /// treated as secrets: never printed.
    pub headers: Vec<(String, String)>,
    /// The whole request, from connect to the last byte of the reply.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// The largest answer read; a larger one fails as `response_too_large`.
    pub max_response_bytes: usize,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
            max_response_bytes: super::http::DEFAULT_MAX_RESPONSE_BYTES,
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("headers", &HeaderNames(&self.headers))
            .finish_non_exhaustive()
    }
}

/// A client for one OpenAI-compatible endpoint. Cheap to share; clone the `Provider` around it.
#[derive(Debug)]
pub struct OpenAiProvider {
    endpoint: Endpoint,
}

impl OpenAiProvider {
    /// Checks the config and builds the pooled client. Fails on a bad URL or header.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let base = config.base_url.trim().trim_end_matches('/');
        let url = base_url(base, "/chat/completions", "https://api.openai.com/v1")?;
        let endpoint = Endpoint::new(EndpointConfig {
            url,
            fixed_headers: HeaderMap::new(),
            headers: &config.headers,
            api_key: config.api_key.as_ref(),
            key_header: KeyHeader::Bearer,
            timeout: config.timeout,
            connect_timeout: config.connect_timeout,
            max_response_bytes: config.max_response_bytes,
        })?;
        Ok(Self { endpoint })
    }

    /// The endpoint, without credentials.
    pub fn url(&self) -> &str {
        self.endpoint.display_url()
    }

    /// One POST to `/chat/completions`. Does not retry: that is the retry module's job.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        let body = request_body(call);
        let result = match self.endpoint.post(&body, classify).await {
            Ok((status, headers, bytes)) => {
                parse_success(status, &headers, &bytes, &body, OPENAI_API)
            }
            Err(e) => Err(e),
        };
        result.map_err(|mut err| {
            self.endpoint.scrub(&mut err);
            err
        })
    }
}

/// The body sent: the caller's, with `model` set and `max_tokens` defaulted. Also the body
/// of the `azure_openai` kind.
pub(super) fn request_body(call: ChatCall<'_>) -> Map<String, Value> {
    // OpenAI caches long prefixes by itself: cache points go, their parts joined back.
    let mut body = crate::provider::cache_point::flattened_body(call.body)
        .unwrap_or_else(|| call.body.clone());
    body.insert(
        "model".to_owned(),
        Value::String(call.model_name.to_owned()),
    );
    if let Some(n) = call.default_max_tokens
        && !body.contains_key("max_tokens")
        && !body.contains_key("max_completion_tokens")
    {
        body.insert("max_tokens".to_owned(), Value::from(n));
    }
    // We read one JSON reply, never a stream.
    if body.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
        body.remove("stream");
        body.remove("stream_options");
    }
    body
}

/// Reads a 2xx reply; `expected` names the API base_url should point at, for the message
/// when the body is not JSON. Also the reader of the `azure_openai` kind.
pub(super) fn parse_success(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
    request: &Map<String, Value>,
    expected: &str,
) -> Result<Completion, ProviderError> {
    let malformed = |message: String| http::malformed(status, message);
    let body = http::json_body(status, bytes, expected)?;
    let Some(first) = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        let detail = ErrorInfo::from_value(&body)
            .message
            .map(|m| {
                format!(
                    " (provider says: {})",
                    snippet(&m, MAX_PROVIDER_MESSAGE_CHARS)
                )
            })
            .unwrap_or_default();
        return Err(malformed(format!(
            "the provider answered {status} without any choices{detail}"
        )));
    };
    let finish_reason = first
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let content = first.get("message").and_then(|m| m.get("content"));
    let empty = match content {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    if finish_reason.as_deref() == Some("content_filter") && empty {
        return Err(ProviderError {
            kind: ProviderErrorKind::ContentFilter,
            message: "the provider's content filter withheld the reply: rephrase the input or \
                      use another model"
                .to_owned(),
            status: Some(status),
            retry_after: None,
        });
    }

    let usage = body.get("usage");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
    let input_tokens = count("prompt_tokens").unwrap_or_else(|| estimate_input_tokens(request));
    // Parts of `prompt_tokens`: OpenAI's `cached_tokens` (cache reads), and the
    // `cache_write_tokens` that OpenRouter and other gateways add for providers that bill
    // cache writes.
    let detail = |field: &str| {
        usage
            .and_then(|u| u.get("prompt_tokens_details"))
            .and_then(|d| d.get(field))
            .and_then(Value::as_u64)
            .unwrap_or(0)
    };
    let cached_input_tokens = detail("cached_tokens");
    let cache_write_input_tokens = detail("cache_write_tokens");
    let output_tokens = count("completion_tokens").unwrap_or_else(|| match content {
        Some(Value::String(s)) => (s.chars().count() as u64).div_ceil(4),
        _ => 0,
    });
    let request_id = header_str(headers, "x-request-id")
        .map(str::to_owned)
        .or_else(|| body.get("id").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    Ok(Completion {
        body,
        request_id,
        input_tokens,
        cached_input_tokens,
        cache_write_input_tokens,
        output_tokens,
        finish_reason,
        simulated: false,
        rate_limits: rate_limit_report(headers),
    })
}

/// An OpenAI chat completion that came another way than a call (a provider batch's output),
/// read as a call's reply is: usage, finish reason, an empty filtered answer as
/// `content_filter`.
pub fn completion_from_body(
    body: &Value,
    request: &Map<String, Value>,
) -> Result<Completion, ProviderError> {
    let bytes = serde_json::to_vec(body).map_err(|e| {
        ProviderError::new(
            ProviderErrorKind::MalformedResponse,
            format!("cannot read the batch answer: {e}"),
        )
    })?;
    parse_success(
        200,
        &HeaderMap::new(),
        &bytes,
        request,
        "an openai chat completion",
    )
}

/// `x-ratelimit-remaining-*` and `x-ratelimit-reset-*`, as OpenAI and many compatible servers
/// send them on every response.
fn rate_limit_report(headers: &reqwest::header::HeaderMap) -> Option<RateLimitReport> {
    let number = |name: &str| header_str(headers, name).and_then(|v| v.trim().parse::<u64>().ok());
    let reset = |name: &str| header_str(headers, name).and_then(parse_go_duration);
    let report = RateLimitReport {
        remaining_requests: number("x-ratelimit-remaining-requests"),
        remaining_tokens: number("x-ratelimit-remaining-tokens"),
        reset: match (
            reset("x-ratelimit-reset-requests"),
            reset("x-ratelimit-reset-tokens"),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        },
    };
    (report.remaining_requests.is_some() || report.remaining_tokens.is_some()).then_some(report)
}

/// For providers that omit `usage`: about four characters a token, four tokens a message.
fn estimate_input_tokens(request: &Map<String, Value>) -> u64 {
    let Some(Value::Array(messages)) = request.get("messages") else {
        return 0;
    };
    let chars: u64 = messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.chars().count() as u64,
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(|t| t.chars().count() as u64)
                .sum(),
            _ => 0,
        })
        .sum();
    chars / 4 + 4 * messages.len() as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn request_body_sets_model_and_default_max_tokens() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"model":"ignored","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let out = request_body(ChatCall {
            model_name: "gpt-x",
            body: &body,
            default_max_tokens: Some(64),
        });
        assert_eq!(out["model"], "gpt-x");
        assert_eq!(out["max_tokens"], 64);
        assert!(!out.contains_key("stream"));

        let body: Map<String, Value> =
            serde_json::from_str(r#"{"max_completion_tokens":9,"messages":[]}"#).unwrap();
        let out = request_body(ChatCall {
            model_name: "gpt-x",
            body: &body,
            default_max_tokens: Some(64),
        });
        assert!(!out.contains_key("max_tokens"));
    }

    #[test]
    fn cache_points_are_flattened_away() {
        let body: Map<String, Value> = serde_json::from_value(serde_json::json!({"messages": [
            {"role": "system", "content": [
                {"type": "text", "text": "Rules.", "cache_control": {"type": "ephemeral"}}]},
            {"role": "user", "content": [
                {"type": "text", "text": "Head: ", "cache_control": {"type": "ephemeral"}},
                {"type": "text", "text": "doc"}]}]}))
        .unwrap();
        let out = request_body(ChatCall {
            model_name: "gpt-x",
            body: &body,
            default_max_tokens: None,
        });
        assert_eq!(out["messages"][0]["content"], "Rules.");
        assert_eq!(out["messages"][1]["content"], "Head: doc");
        assert!(
            !serde_json::to_string(&out)
                .unwrap()
                .contains("cache_control")
        );
    }

    #[test]
    fn debug_output_hides_the_key_and_header_values() {
        let config = OpenAiConfig {
            api_key: Some(Secret::new("sk-verysecret123".to_owned())),
            headers: vec![("X-Api-Token".to_owned(), "tok-hidden-456".to_owned())],
            ..OpenAiConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk-verysecret123"));
        assert!(!shown.contains("tok-hidden-456"));
        let provider = OpenAiProvider::new(config).unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("sk-verysecret123"));
        assert!(!shown.contains("tok-hidden-456"));

        let mut err = ProviderError::new(
            ProviderErrorKind::Auth,
            "bad key sk-verysecret123 and tok-hidden-456",
        );
        provider.endpoint.scrub(&mut err);
        assert_eq!(err.message, "bad key *** and ***");
    }

    #[test]
    fn bad_config_is_refused_without_echoing_the_key() {
        let err = OpenAiProvider::new(OpenAiConfig {
            base_url: "not a url".to_owned(),
            ..OpenAiConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::InvalidRequest);
        let err = OpenAiProvider::new(OpenAiConfig {
            api_key: Some(Secret::new("sk-bad\nkey".to_owned())),
            ..OpenAiConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Auth);
        assert!(!err.to_string().contains("sk-bad"));
    }

    fn parse(body: &str) -> Completion {
        parse_success(
            200,
            &HeaderMap::new(),
            body.as_bytes(),
            &Map::new(),
            OPENAI_API,
        )
        .unwrap()
    }

    #[test]
    fn cache_reads_and_writes_are_parts_of_the_prompt_tokens() {
        // OpenAI: cache reads in prompt_tokens_details.cached_tokens.
        let done = parse(
            r#"{"id":"c","choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],
              "usage":{"prompt_tokens":2006,"completion_tokens":300,"total_tokens":2306,
                "prompt_tokens_details":{"cached_tokens":1920,"audio_tokens":0}}}"#,
        );
        assert_eq!(done.input_tokens, 2006);
        assert_eq!(done.cached_input_tokens, 1920);
        assert_eq!(done.cache_write_input_tokens, 0);
        assert_eq!(done.output_tokens, 300);
        // A gateway (OpenRouter) that also reports cache writes.
        let done = parse(
            r#"{"choices":[{"message":{"content":"hi"}}],
              "usage":{"prompt_tokens":194,"completion_tokens":2,
                "prompt_tokens_details":{"cached_tokens":0,"cache_write_tokens":100}}}"#,
        );
        assert_eq!(
            (
                done.input_tokens,
                done.cached_input_tokens,
                done.cache_write_input_tokens
            ),
            (194, 0, 100)
        );
        // No details at all (vLLM, Ollama): nothing cached.
        let done = parse(
            r#"{"choices":[{"message":{"content":"hi"}}],
              "usage":{"prompt_tokens":10,"completion_tokens":2}}"#,
        );
        assert_eq!(
            (
                done.input_tokens,
                done.cached_input_tokens,
                done.cache_write_input_tokens
            ),
            (10, 0, 0)
        );
    }
}
