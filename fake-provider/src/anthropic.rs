//! The Anthropic dialect: `POST /v1/messages`, with Anthropic's reply, error and rate-limit
//! shapes.

use std::time::{Duration, SystemTime};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::flow::{Fault, Parsed, PromptCache, Reply};
use crate::limits::{Admission, anthropic_headers, rfc3339};
use crate::options::Options;
use crate::prompt_cache::Probe;
use crate::{html, huge, json_response, malformed};

fn error_response(status: StatusCode, kind: &str, message: &str) -> Response {
    json_response(
        status,
        json!({"type": "error", "error": {"type": kind, "message": message}}),
    )
}

fn invalid(message: &str) -> Response {
    error_response(StatusCode::BAD_REQUEST, "invalid_request_error", message)
}

/// `x-api-key` (or `Authorization: Bearer`, which Anthropic's SDK 2.x sends) when
/// `--require-key` is set, and `anthropic-version` always, as the real API.
pub fn check_request(options: &Options, headers: &HeaderMap) -> Option<Response> {
    if let Some(key) = &options.require_key {
        let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
        let given = header("x-api-key").or_else(|| {
            header(axum::http::header::AUTHORIZATION.as_str())
                .and_then(|v| v.strip_prefix("Bearer "))
        });
        if given != Some(key.as_str()) {
            // Echoes what it was given, so tests can prove clients scrub it.
            let message = match given {
                Some(wrong) => format!("invalid x-api-key: {wrong}"),
                None => "x-api-key (or Authorization: Bearer) header is required".to_owned(),
            };
            return Some(error_response(
                StatusCode::UNAUTHORIZED,
                "authentication_error",
                &message,
            ));
        }
    }
    if headers.get("anthropic-version").is_none() {
        return Some(invalid("anthropic-version: header is required"));
    }
    None
}

fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| b.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            // Blocks split at a cache point are one text cut in two: joined back as they were.
            .join(if blocks.iter().any(|b| b.get("cache_control").is_some()) {
                ""
            } else {
                "\n"
            }),
        _ => String::new(),
    }
}

/// The text blocks of a content, each with whether a cache point follows it.
fn blocks_of(content: Option<&Value>) -> Vec<(&str, bool)> {
    match content {
        Some(Value::String(s)) => vec![(s.as_str(), false)],
        Some(Value::Array(blocks)) => blocks
            .iter()
            .filter_map(|b| {
                let text = b.get("text").and_then(Value::as_str)?;
                Some((text, b.get("cache_control").is_some()))
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// The request, or the 400 that refuses it.
pub fn parse(body: &[u8]) -> Result<Parsed, Box<Response>> {
    let Ok(request @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(invalid("The request body is not valid JSON.")));
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return Err(Box::new(invalid("model: Field required")));
    };
    let Some(max_tokens) = request.get("max_tokens").and_then(Value::as_u64) else {
        return Err(Box::new(invalid("max_tokens: Field required")));
    };
    let messages = match request.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m.as_slice(),
        _ => {
            return Err(Box::new(invalid(
                "messages: at least one message is required",
            )));
        }
    };
    if messages.iter().any(|m| {
        !matches!(
            m.get("role").and_then(Value::as_str),
            Some("user" | "assistant")
        )
    }) {
        return Err(Box::new(invalid(
            "messages: roles must be \"user\" or \"assistant\"; put system prompts in the \
             top-level system field",
        )));
    }
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
        .map(|m| text_of(m.get("content")))
        .unwrap_or_default();
    let system_chars = text_of(request.get("system")).chars().count();
    let prompt_chars: usize = messages
        .iter()
        .map(|m| text_of(m.get("content")).chars().count())
        .sum();
    Ok(Parsed {
        choices: 1,
        model: model.to_owned(),
        last_user,
        prompt_tokens: ((system_chars + prompt_chars) / 4 + 4 * messages.len()).max(1) as u64,
        max_tokens: Some(max_tokens),
        answer: None,
        cache: crate::flow::PromptCache::default(),
        // Anthropic caches explicitly: system first, then the messages, in order.
        probe: Probe::explicit(
            blocks_of(request.get("system"))
                .into_iter()
                .chain(messages.iter().flat_map(|m| blocks_of(m.get("content")))),
        ),
    })
}

/// Over `--rpm` / `--tpm`: 429 `rate_limit_error` with Anthropic's headers.
pub fn over_limit(admission: &Admission) -> Response {
    let message = format!(
        "This request would exceed the rate limit for your organization (fake) of {} {} per \
         minute. For details, refer to: https://docs.claude.com/en/api/rate-limits.",
        if admission.rejected_by == "tokens" {
            admission.tpm.unwrap_or(0)
        } else {
            admission.rpm.unwrap_or(0)
        },
        if admission.rejected_by == "tokens" {
            "input tokens"
        } else {
            "requests"
        },
    );
    let mut response = error_response(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", &message);
    anthropic_headers(admission, response.headers_mut());
    response
}

/// The `--fail-rate-429` / `x-fake-fault: 429` answer: a one-second hint.
fn rate_limited() -> Response {
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "rate_limit_error",
        "Number of request tokens has exceeded your per-minute rate limit (fake).",
    );
    let reset = rfc3339(SystemTime::now() + Duration::from_secs(1));
    let headers = response.headers_mut();
    headers.insert("retry-after", HeaderValue::from_static("1"));
    headers.insert(
        "anthropic-ratelimit-requests-remaining",
        HeaderValue::from_static("0"),
    );
    if let Ok(value) = HeaderValue::from_str(&reset) {
        headers.insert("anthropic-ratelimit-requests-reset", value);
    }
    response
}

fn message(id: &str, model: &str, content: Value, stop_reason: &str, usage: Value) -> Value {
    json!({
        "id": id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": null,
        "usage": usage,
    })
}

/// Anthropic's usage: `input_tokens` counts only what is neither read from nor written to
/// the cache; the two cache counts are always present, as the real API sends them.
fn usage(prompt_tokens: u64, cache: PromptCache, output_tokens: u64) -> Value {
    json!({
        "input_tokens": prompt_tokens.saturating_sub(cache.read + cache.write),
        "cache_creation_input_tokens": cache.write,
        "cache_read_input_tokens": cache.read,
        "output_tokens": output_tokens,
    })
}

pub fn fault(fault: Fault, shutdown: &tokio_util::sync::CancellationToken) -> Response {
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match fault {
        Fault::Status(429) => rate_limited(),
        Fault::Status(529) => error_response(status(529), "overloaded_error", "Overloaded"),
        Fault::Status(s) => error_response(status(s), "api_error", "Internal server error (fake)"),
        Fault::Context => invalid("prompt is too long: 210000 tokens > 200000 maximum"),
        Fault::Quota => invalid(
            "Your credit balance is too low to access the Anthropic API. Please go to Plans & \
             Billing to upgrade or purchase credits.",
        ),
        Fault::Filter => json_response(
            StatusCode::OK,
            message(
                "msg_fake_refusal",
                "fake",
                json!([]),
                "refusal",
                usage(10, PromptCache::default(), 0),
            ),
        ),
        Fault::NoChoices => json_response(
            StatusCode::OK,
            json!({"id": "msg_fake_empty", "type": "message", "role": "assistant"}),
        ),
        Fault::Huge(size) => huge(
            r#"{"id":"msg_fake_huge","type":"message","content":[{"type":"text","text":""#,
            size,
            shutdown.clone(),
        ),
        Fault::Error200 => json_response(
            StatusCode::OK,
            json!({"type": "error", "error": {"type": "api_error",
                "message": "Internal server error (fake)"}}),
        ),
        Fault::Html => html(),
        // Drop, hang and length are handled before the dialect is asked.
        Fault::Malformed | Fault::Drop | Fault::Hang | Fault::Length => malformed(),
    }
}

pub fn success(n: u64, parsed: &Parsed, reply: &Reply) -> Response {
    let mut response = json_response(
        StatusCode::OK,
        message(
            &format!("msg_fake{n}"),
            &parsed.model,
            json!([{"type": "text", "text": reply.content}]),
            if reply.truncated {
                "max_tokens"
            } else {
                "end_turn"
            },
            usage(parsed.prompt_tokens, parsed.cache, reply.completion_tokens),
        ),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("req_fake{n}")) {
        response.headers_mut().insert("request-id", value);
    }
    response
}
