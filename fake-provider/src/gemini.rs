//! The Gemini dialect: `POST /v1beta/models/{model}:generateContent` (also without `/v1beta`),
//! with Google's reply, `usageMetadata`, `finishReason` and `google.rpc.Status` error shapes.
//!
//! - a wrong `x-goog-api-key` gets Google's 400 `INVALID_ARGUMENT` / `API_KEY_INVALID` (and,
//!   unlike Google, echoes the key, so tests can prove clients scrub it); none gets 403
//!   `PERMISSION_DENIED`;
//! - over `--rpm` / `--tpm`, and the 429 fault: 429 `RESOURCE_EXHAUSTED` with a per-minute
//!   `QuotaFailure` and `RetryInfo.retryDelay` (the seconds to the window's end, or `1s`);
//!   no rate-limit headers, as Google sends none;
//! - the `quota` fault is a per-day `QuotaFailure`; `filter` is a candidate stopped with
//!   `finishReason: SAFETY` and no content; 500 is `INTERNAL`, 502/503/529 `UNAVAILABLE`.

use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use serde_json::{Value, json};

use crate::flow::{Fault, Parsed, Reply};
use crate::limits::{Admission, retry_after_secs};
use crate::options::Options;
use crate::{html, huge, json_response, malformed};

const TYPES: &str = "type.googleapis.com/google.rpc.";

fn error_response(status: StatusCode, google: &str, message: &str, details: Value) -> Response {
    json_response(
        status,
        json!({"error": {
            "code": status.as_u16(),
            "message": message,
            "status": google,
            "details": details,
        }}),
    )
}

fn invalid(message: &str) -> Response {
    error_response(
        StatusCode::BAD_REQUEST,
        "INVALID_ARGUMENT",
        message,
        json!([]),
    )
}

/// The model of a `{model}:generateContent` path tail, or Google's 404 for another method.
pub fn model_of(tail: &str) -> Result<String, Box<Response>> {
    match tail.strip_suffix(":generateContent") {
        Some(model) if !model.is_empty() && !model.contains('/') => Ok(model.to_owned()),
        _ => Err(Box::new(error_response(
            StatusCode::NOT_FOUND,
            "NOT_FOUND",
            &format!("models/{tail} is not found for API version v1beta, or is not supported"),
            json!([]),
        ))),
    }
}

/// `x-goog-api-key` when `--require-key` is set.
pub fn check_auth(options: &Options, headers: &HeaderMap) -> Option<Response> {
    let key = options.require_key.as_ref()?;
    let given = headers.get("x-goog-api-key").and_then(|v| v.to_str().ok());
    match given {
        Some(given) if given == key => None,
        Some(wrong) => Some(error_response(
            StatusCode::BAD_REQUEST,
            "INVALID_ARGUMENT",
            &format!("API key not valid. Please pass a valid API key. (fake, given {wrong})"),
            json!([{"@type": format!("{TYPES}ErrorInfo"), "reason": "API_KEY_INVALID",
                "domain": "googleapis.com"}]),
        )),
        None => Some(error_response(
            StatusCode::FORBIDDEN,
            "PERMISSION_DENIED",
            "Method doesn't allow unregistered callers (callers without established identity). \
             Please use API Key or other form of API consumer identity to call this API.",
            json!([]),
        )),
    }
}

fn text_of(content: &Value) -> String {
    content
        .get("parts")
        .and_then(Value::as_array)
        .map(|parts| {
            parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join("\n")
        })
        .unwrap_or_default()
}

/// The request, or the 400 that refuses it.
pub fn parse(body: &[u8], model: &str) -> Result<Parsed, Box<Response>> {
    let Ok(request @ Value::Object(_)) = serde_json::from_slice::<Value>(body) else {
        return Err(Box::new(invalid("Invalid JSON payload received.")));
    };
    let contents = match request.get("contents").and_then(Value::as_array) {
        Some(c) if !c.is_empty() => c.as_slice(),
        _ => {
            return Err(Box::new(invalid(
                "* GenerateContentRequest.contents: contents is not specified",
            )));
        }
    };
    if contents.iter().any(|c| {
        !matches!(
            c.get("role").and_then(Value::as_str),
            Some("user" | "model")
        )
    }) {
        return Err(Box::new(invalid("Please use a valid role: user, model.")));
    }
    let last_user = contents
        .iter()
        .rev()
        .find(|c| c.get("role").and_then(Value::as_str) == Some("user"))
        .map(text_of)
        .unwrap_or_default();
    let system_chars = request
        .get("systemInstruction")
        .map(|s| text_of(s).chars().count())
        .unwrap_or(0);
    let prompt_chars: usize = contents.iter().map(|c| text_of(c).chars().count()).sum();
    let max_tokens = request
        .get("generationConfig")
        .and_then(|g| g.get("maxOutputTokens"))
        .and_then(Value::as_u64);
    Ok(Parsed {
        choices: 1,
        model: model.to_owned(),
        last_user,
        prompt_tokens: ((system_chars + prompt_chars) / 4 + 4 * contents.len()).max(1) as u64,
        max_tokens,
        answer: None,
        cache: crate::flow::PromptCache::default(),
        probe: crate::prompt_cache::Probe::None,
    })
}

/// A 429 `RESOURCE_EXHAUSTED` with a per-minute (or per-day) quota and a retry delay.
fn exhausted(quota_id: &str, delay_secs: Option<u64>) -> Response {
    let mut details = vec![
        json!({"@type": format!("{TYPES}QuotaFailure"), "violations": [
        {"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
         "quotaId": quota_id}]}),
    ];
    if let Some(secs) = delay_secs {
        details
            .push(json!({"@type": format!("{TYPES}RetryInfo"), "retryDelay": format!("{secs}s")}));
    }
    error_response(
        StatusCode::TOO_MANY_REQUESTS,
        "RESOURCE_EXHAUSTED",
        "You exceeded your current quota, please check your plan and billing details (fake).",
        Value::Array(details),
    )
}

/// Over `--rpm` / `--tpm`: Google's 429 with the time to the window's end as `retryDelay`.
pub fn over_limit(admission: &Admission) -> Response {
    let quota = if admission.rejected_by == "tokens" {
        "GenerateContentInputTokensPerModelPerMinute"
    } else {
        "GenerateRequestsPerMinutePerProjectPerModel"
    };
    exhausted(quota, Some(retry_after_secs(admission)))
}

pub fn fault(fault: Fault, shutdown: &tokio_util::sync::CancellationToken) -> Response {
    let status = |s: u16| StatusCode::from_u16(s).unwrap_or(StatusCode::SERVICE_UNAVAILABLE);
    match fault {
        Fault::Status(429) => exhausted("GenerateRequestsPerMinutePerProjectPerModel", Some(1)),
        Fault::Status(500) => error_response(
            status(500),
            "INTERNAL",
            "An internal error has occurred (fake).",
            json!([]),
        ),
        Fault::Status(s) => error_response(
            status(s),
            "UNAVAILABLE",
            "The model is overloaded. Please try again later. (fake)",
            json!([]),
        ),
        Fault::Context => invalid(
            "The input token count (1200000) exceeds the maximum number of tokens allowed \
             (1048576).",
        ),
        Fault::Quota => exhausted("GenerateRequestsPerDayPerProjectPerModel-FreeTier", None),
        Fault::Filter => json_response(
            StatusCode::OK,
            json!({
                "candidates": [{"finishReason": "SAFETY", "index": 0, "safetyRatings": [
                    {"category": "HARM_CATEGORY_DANGEROUS_CONTENT", "probability": "HIGH",
                     "blocked": true}]}],
                "usageMetadata": {"promptTokenCount": 10, "totalTokenCount": 10},
                "responseId": "fake-filtered",
            }),
        ),
        Fault::NoChoices => json_response(
            StatusCode::OK,
            json!({"usageMetadata": {"promptTokenCount": 10}, "responseId": "fake-empty"}),
        ),
        Fault::Huge(size) => huge(
            r#"{"candidates":[{"content":{"role":"model","parts":[{"text":""#,
            size,
            shutdown.clone(),
        ),
        Fault::Error200 => json_response(
            StatusCode::OK,
            json!({"error": {"code": 503, "status": "UNAVAILABLE",
                "message": "The model is overloaded. Please try again later. (fake)"}}),
        ),
        Fault::Html => html(),
        // Drop, hang and length are handled before the dialect is asked.
        Fault::Malformed | Fault::Drop | Fault::Hang | Fault::Length => malformed(),
    }
}

pub fn success(n: u64, parsed: &Parsed, reply: &Reply) -> Response {
    let prompt = parsed.prompt_tokens;
    let output = reply.completion_tokens;
    json_response(
        StatusCode::OK,
        json!({
            "candidates": [{
                "content": {"role": "model", "parts": [{"text": reply.content}]},
                "finishReason": if reply.truncated { "MAX_TOKENS" } else { "STOP" },
                "index": 0,
            }],
            "usageMetadata": {
                "promptTokenCount": prompt,
                "candidatesTokenCount": output,
                "totalTokenCount": prompt + output,
            },
            "modelVersion": parsed.model,
            "responseId": format!("fakegen-{n}"),
        }),
    )
}
