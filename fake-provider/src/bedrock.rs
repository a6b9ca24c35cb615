//! The Bedrock dialect: `POST /model/{modelId}/converse`, with Converse's reply, `usage`
//! (cache reads and writes included), `stopReason`, and AWS error shapes (the name in
//! `x-amzn-ErrorType` and in the body's `__type`, the text in `message`).
//!
//! - auth, when `--bedrock-secret` is set: a SigV4 signature (service `bedrock`) recomputed
//!   with that secret (and the access key id `--bedrock-key-id`, default `AKIDFAKE`): a
//!   mismatch is 403 `InvalidSignatureException`, another key id 403
//!   `UnrecognizedClientException`, none 403 `MissingAuthenticationTokenException`; or
//!   `Authorization: Bearer KEY` when `--require-key KEY` is set (a Bedrock API key; a wrong
//!   one is 403 `AccessDeniedException` echoing it, so tests can prove clients scrub it);
//! - a model id starting with `missing.` is 404 `ResourceNotFoundException`;
//! - over `--rpm` / `--tpm` and the 429 fault: 429 `ThrottlingException` (no retry hint, as
//!   AWS sends none); 500 `InternalServerException`; 502/503/529
//!   `ServiceUnavailableException`; `context`: 400 `ValidationException` "Input is too long";
//!   `quota`: 400 `ServiceQuotaExceededException`; `filter`: 200 with `stopReason`
//!   `guardrail_intervened` and no content;
//! - `[[stop_reason=R]]` in the last user message makes a successful reply end with
//!   `stopReason` R (e.g. `model_context_window_exceeded`, `content_filtered`).

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::flow::{Fault, Parsed, PromptCache, Reply};
use crate::limits::Admission;
use crate::options::Options;
use crate::prompt_cache::Probe;
use crate::sigv4::{self, Refusal};
use crate::{html, huge, json_response, malformed};

/// The access key id the fake knows when `--bedrock-key-id` is not given.
pub const DEFAULT_KEY_ID: &str = "AKIDFAKE";

/// An AWS error reply: the name in `x-amzn-ErrorType` and `__type`, the text in `message`.
pub fn aws_error(status: StatusCode, name: &str, message: &str) -> Response {
    let mut response = json_response(status, json!({"__type": name, "message": message}));
    if let Ok(value) = HeaderValue::from_str(&format!(
        "{name}:http://internal.amazon.com/coral/com.amazon.bedrock/"
    )) {
        response.headers_mut().insert("x-amzn-errortype", value);
    }
    response
}

fn invalid(message: &str) -> Response {
    aws_error(StatusCode::BAD_REQUEST, "ValidationException", message)
}

/// The request's credentials: a bearer key or a SigV4 signature, as configured; `None` when
/// they pass (or the fake checks none).
pub fn check_auth(
    options: &Options,
    headers: &HeaderMap,
    raw_path: &str,
    query: &str,
    body: &[u8],
) -> Option<Response> {
    check_auth_method(options, "POST", headers, raw_path, query, body)
}

/// [`check_auth`] for any method (the batch control plane reads with GET).
pub fn check_auth_method(
    options: &Options,
    method: &str,
    headers: &HeaderMap,
    raw_path: &str,
    query: &str,
    body: &[u8],
) -> Option<Response> {
    let forbidden = |name: &str, message: &str| aws_error(StatusCode::FORBIDDEN, name, message);
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok());
    if let Some(given) = authorization.and_then(|v| v.strip_prefix("Bearer ")) {
        return match &options.require_key {
            Some(key) if given == key => None,
            _ => Some(forbidden(
                "AccessDeniedException",
                &format!("Authentication failed: the API key {given} is not valid (fake)."),
            )),
        };
    }
    let secret = match (&options.bedrock_secret, &options.require_key) {
        (Some(secret), _) => secret,
        (None, None) => return None,
        (None, Some(_)) => {
            return Some(forbidden(
                "MissingAuthenticationTokenException",
                "Missing Authentication Token",
            ));
        }
    };
    let key_id = options.bedrock_key_id.as_deref().unwrap_or(DEFAULT_KEY_ID);
    let request = sigv4::Signed {
        method,
        raw_path,
        query,
        headers,
        body,
    };
    let refused = sigv4::verify(&request, "bedrock", key_id, secret).err()?;
    Some(match refused {
        Refusal::Missing => forbidden(
            "MissingAuthenticationTokenException",
            "Missing Authentication Token",
        ),
        Refusal::UnknownKey(id) => forbidden(
            "UnrecognizedClientException",
            &format!("The security token included in the request is invalid (key id {id})."),
        ),
        Refusal::Invalid(why) => forbidden(
            "InvalidSignatureException",
            &format!(
                "The request signature we calculated does not match the signature you provided. \
                 Check your AWS Secret Access Key and signing method. ({why})"
            ),
        ),
    })
}

/// A model the fake does not have, as Bedrock answers it.
pub fn check_model(model: &str) -> Option<Response> {
    model.starts_with("missing.").then(|| {
        aws_error(
            StatusCode::NOT_FOUND,
            "ResourceNotFoundException",
            "Model not found (fake).",
        )
    })
}

fn text_of(content: &Value) -> String {
    content
        .as_array()
        .map(|blocks| {
            blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                // Text cut at a cache point is one text in two blocks: joined back as it was.
                .join(if blocks.iter().any(|b| b.get("cachePoint").is_some()) {
                    ""
                } else {
                    "\n"
                })
        })
        .unwrap_or_default()
}

/// The text blocks of a `system` or `content` array, each with whether a `cachePoint` block
/// follows it.
fn cache_segments(content: Option<&Value>) -> Vec<(&str, bool)> {
    let Some(blocks) = content.and_then(Value::as_array) else {
        return Vec::new();
    };
    let mut out: Vec<(&str, bool)> = Vec::new();
    for block in blocks {
        if let Some(text) = block.get("text").and_then(Value::as_str) {
            out.push((text, false));
        } else if block.get("cachePoint").is_some()
            && let Some(last) = out.last_mut()
        {
            last.1 = true;
        }
    }
    out
}

/// The request, or the 400 that refuses it.
pub fn parse(body: &[u8], model: &str) -> Result<Parsed, Box<Response>> {
    let Ok(request @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(invalid(
            "Malformed input request, please reformat your input and try again.",
        )));
    };
    let messages = match request.get("messages").and_then(Value::as_array) {
        Some(m) if !m.is_empty() => m.as_slice(),
        _ => {
            return Err(Box::new(invalid(
                "A conversation must start with a user message.",
            )));
        }
    };
    fn role(m: &Value) -> &str {
        m.get("role").and_then(Value::as_str).unwrap_or("")
    }
    if messages
        .iter()
        .any(|m| !matches!(role(m), "user" | "assistant") || m.get("content").is_none())
    {
        return Err(Box::new(invalid(
            "Malformed input request: messages need a role (user or assistant) and content.",
        )));
    }
    let last_user = messages
        .iter()
        .rev()
        .find(|m| role(m) == "user")
        .and_then(|m| m.get("content"))
        .map(text_of)
        .unwrap_or_default();
    let system_chars = request
        .get("system")
        .map(|s| text_of(s).chars().count())
        .unwrap_or(0);
    let prompt_chars: usize = messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(|c| text_of(c).chars().count())
        .sum();
    let max_tokens = request
        .get("inferenceConfig")
        .and_then(|c| c.get("maxTokens"))
        .and_then(Value::as_u64);
    Ok(Parsed {
        choices: 1,
        model: model.to_owned(),
        last_user,
        prompt_tokens: ((system_chars + prompt_chars) / 4 + 4 * messages.len()).max(1) as u64,
        max_tokens,
        answer: None,
        cache: PromptCache::default(),
        // Bedrock caches at explicit cache points: system first, then the messages.
        probe: Probe::explicit(
            cache_segments(request.get("system")).into_iter().chain(
                messages
                    .iter()
                    .flat_map(|m| cache_segments(m.get("content"))),
            ),
        ),
    })
}

fn throttled() -> Response {
    aws_error(
        StatusCode::TOO_MANY_REQUESTS,
        "ThrottlingException",
        "Too many requests, please wait before trying again. (fake)",
    )
}

/// Over `--rpm` / `--tpm`.
pub fn over_limit(_admission: &Admission) -> Response {
    throttled()
}

pub fn fault(fault: Fault, shutdown: &tokio_util::sync::CancellationToken) -> Response {
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match fault {
        Fault::Status(429) => throttled(),
        Fault::Status(500) => aws_error(
            status(500),
            "InternalServerException",
            "The server encountered an internal error (fake).",
        ),
        Fault::Status(_) => aws_error(
            status(503),
            "ServiceUnavailableException",
            "Bedrock is unable to process your request (fake).",
        ),
        Fault::Context => invalid("Input is too long for requested model."),
        Fault::Quota => aws_error(
            StatusCode::BAD_REQUEST,
            "ServiceQuotaExceededException",
            "Your request exceeds the service quota for your account (fake).",
        ),
        Fault::Filter => json_response(
            StatusCode::OK,
            json!({
                "output": {"message": {"role": "assistant", "content": []}},
                "stopReason": "guardrail_intervened",
                "usage": {"inputTokens": 10, "outputTokens": 0, "totalTokens": 10},
            }),
        ),
        Fault::NoChoices => json_response(StatusCode::OK, json!({"output": {}})),
        Fault::Huge(size) => huge(
            r#"{"output":{"message":{"role":"assistant","content":[{"text":""#,
            size,
            shutdown.clone(),
        ),
        Fault::Error200 => json_response(
            StatusCode::OK,
            json!({"__type": "ServiceUnavailableException", "message": "unavailable (fake)"}),
        ),
        Fault::Html => html(),
        // Drop, hang and length are handled before the dialect is asked.
        Fault::Malformed | Fault::Drop | Fault::Hang | Fault::Length => malformed(),
    }
}

/// `[[stop_reason=R]]` in the last user message.
fn asked_stop_reason(text: &str) -> Option<&str> {
    let (_, rest) = text.split_once("[[stop_reason=")?;
    let (reason, _) = rest.split_once("]]")?;
    Some(reason.trim())
}

pub fn success(n: u64, parsed: &Parsed, reply: &Reply) -> Response {
    let cache = parsed.cache;
    let uncached = parsed
        .prompt_tokens
        .saturating_sub(cache.read + cache.write);
    let output = reply.completion_tokens;
    let stop = asked_stop_reason(&parsed.last_user).unwrap_or(if reply.truncated {
        "max_tokens"
    } else {
        "end_turn"
    });
    let mut response = json_response(
        StatusCode::OK,
        json!({
            "output": {"message": {"role": "assistant", "content": [{"text": reply.content}]}},
            "stopReason": stop,
            "usage": {
                "inputTokens": uncached,
                "outputTokens": output,
                "totalTokens": parsed.prompt_tokens + output,
                "cacheReadInputTokens": cache.read,
                "cacheWriteInputTokens": cache.write,
            },
            "metrics": {"latencyMs": 1},
        }),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("fake-bedrock-{n}")) {
        response.headers_mut().insert("x-amzn-requestid", value);
    }
    response
}
