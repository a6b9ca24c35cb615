//! The OpenAI dialect: `POST /v1/chat/completions`.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use serde_json::{Value, json};

use crate::flow::{Fault, Parsed, Reply};
use crate::limits::{Admission, go_duration, openai_headers};
use crate::options::Options;
use crate::prompt_cache::Probe;
use crate::{html, huge, json_response, malformed};

fn error_response(status: StatusCode, message: &str, kind: &str, code: Value) -> Response {
    json_response(
        status,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

/// `Authorization: Bearer KEY` when `--require-key` is set.
pub fn check_auth(options: &Options, headers: &HeaderMap) -> Option<Response> {
    let key = options.require_key.as_ref()?;
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given == Some(key.as_str()) {
        return None;
    }
    // Like the real thing, it echoes what it was given: clients must not pass it on.
    let message = match given {
        Some(wrong) => format!(
            "Incorrect API key provided: {wrong}. You can find your API key in your account \
             settings."
        ),
        None => "You didn't provide an API key.".to_owned(),
    };
    Some(error_response(
        StatusCode::UNAUTHORIZED,
        &message,
        "invalid_request_error",
        json!("invalid_api_key"),
    ))
}

/// A content's text: the string, or its text parts one after the other.
pub fn text_of(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

/// The request, or the 400 that refuses it.
pub fn parse(body: &[u8]) -> Result<Parsed, Box<Response>> {
    let request: Value = match serde_json::from_slice(body) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            return Err(Box::new(error_response(
                StatusCode::BAD_REQUEST,
                "We could not parse the JSON body of your request.",
                "invalid_request_error",
                Value::Null,
            )));
        }
    };
    let Some(model) = request.get("model").and_then(Value::as_str) else {
        return Err(Box::new(error_response(
            StatusCode::BAD_REQUEST,
            "you must provide a model parameter",
            "invalid_request_error",
            Value::Null,
        )));
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
        .unwrap_or_default();
    let texts: Vec<String> = messages.iter().map(|m| text_of(m.get("content"))).collect();
    let prompt_chars: usize = texts.iter().map(|t| t.chars().count()).sum();
    Ok(Parsed {
        // OpenAI caches every long prompt by itself, on its prefix.
        probe: Probe::automatic(&texts.concat()),
        model: model.to_owned(),
        last_user,
        prompt_tokens: (prompt_chars / 4 + 4 * messages.len()).max(1) as u64,
        max_tokens: ["max_completion_tokens", "max_tokens"]
            .iter()
            .find_map(|k| request.get(*k).and_then(Value::as_u64)),
        choices: request
            .get("n")
            .and_then(Value::as_u64)
            .unwrap_or(1)
            .clamp(1, crate::flow::MAX_CHOICES),
        answer: None,
        cache: crate::flow::PromptCache::default(),
    })
}

/// The `--fail-rate-429` / `x-fake-fault: 429` answer: a short, fixed hint.
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

/// Over `--rpm` / `--tpm`: 429 with OpenAI's message and headers.
pub fn over_limit(parsed: &Parsed, admission: &Admission) -> Response {
    let (what, short, limit, used, requested) = if admission.rejected_by == "tokens" {
        let tpm = admission.tpm.unwrap_or(0);
        ("tokens", "TPM", tpm, admission.tokens_used, admission.cost)
    } else {
        let rpm = admission.rpm.unwrap_or(0);
        ("requests", "RPM", rpm, admission.requests_used, 1)
    };
    let message = format!(
        "Rate limit reached for {} in organization org-fake on {what} per min ({short}): Limit \
         {limit}, Used {used}, Requested {requested}. Please try again in {}.",
        parsed.model,
        go_duration(admission.reset)
    );
    let mut response = error_response(
        StatusCode::TOO_MANY_REQUESTS,
        &message,
        what,
        json!("rate_limit_exceeded"),
    );
    openai_headers(admission, response.headers_mut());
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

pub fn fault(fault: Fault, shutdown: &tokio_util::sync::CancellationToken) -> Response {
    match fault {
        Fault::Status(429) => rate_limited(),
        Fault::Status(529) => error_response(
            StatusCode::from_u16(529).unwrap_or(StatusCode::SERVICE_UNAVAILABLE),
            "The engine is currently overloaded, please try again later (fake).",
            "server_error",
            json!("overloaded"),
        ),
        Fault::Status(s) => {
            server_error(StatusCode::from_u16(s).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
        }
        Fault::Context => error_response(
            StatusCode::BAD_REQUEST,
            "This model's maximum context length is 8192 tokens. However, your messages resulted \
             in 9001 tokens. Please reduce the length of the messages.",
            "invalid_request_error",
            json!("context_length_exceeded"),
        ),
        Fault::Quota => error_response(
            StatusCode::TOO_MANY_REQUESTS,
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
            json!("insufficient_quota"),
        ),
        Fault::Filter => error_response(
            StatusCode::BAD_REQUEST,
            "The response was filtered due to the prompt triggering the content management \
             policy (fake).",
            "invalid_request_error",
            json!("content_filter"),
        ),
        Fault::NoChoices => json_response(
            StatusCode::OK,
            json!({"id": "fakecmpl-empty", "object": "chat.completion", "choices": []}),
        ),
        Fault::Huge(size) => huge(
            r#"{"id":"fakecmpl-huge","object":"chat.completion","choices":[{"index":0,"message":{"role":"assistant","content":""#,
            size,
            shutdown.clone(),
        ),
        Fault::Error200 => json_response(
            StatusCode::OK,
            json!({"error": {
                "message": "The server had an error while processing your request (fake).",
                "type": "server_error", "param": null, "code": null,
            }}),
        ),
        Fault::Html => html(),
        // Drop, hang and length are handled before the dialect is asked.
        Fault::Malformed | Fault::Drop | Fault::Hang | Fault::Length => malformed(),
    }
}

pub fn success(n: u64, parsed: &Parsed, reply: &Reply) -> Response {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let prompt_tokens = parsed.prompt_tokens;
    let choices: Vec<Value> = (0..parsed.choices)
        .map(|index| {
            json!({
                "index": index,
                "message": {"role": "assistant", "content": reply.content},
                "finish_reason": if reply.truncated { "length" } else { "stop" },
            })
        })
        .collect();
    let completion_tokens = reply.completion_tokens * parsed.choices;
    // Like OpenAI, always; `cache_write_tokens` only when asked for, as gateways
    // (OpenRouter) report writes for providers that bill them.
    let mut details = json!({"cached_tokens": parsed.cache.read});
    if parsed.cache.write > 0 {
        details["cache_write_tokens"] = json!(parsed.cache.write);
    }
    let mut response = json_response(
        StatusCode::OK,
        json!({
            "id": format!("fakecmpl-{n}"),
            "object": "chat.completion",
            "created": created,
            "model": parsed.model,
            "choices": choices,
            "usage": {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": details,
            },
        }),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("fakereq-{n}")) {
        response.headers_mut().insert("x-request-id", value);
    }
    response
}
