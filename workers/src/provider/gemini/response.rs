//! A `generateContent` reply, as an OpenAI chat completion.
//!
//! - the text is the first candidate's `content.parts[].text` joined, leaving out thought
//!   summaries (`thought: true`), which are not the answer; `functionCall` parts become
//!   `tool_calls` (and `finish_reason` `tool_calls`);
//! - `finishReason` becomes `finish_reason` ([`finish_reason`]);
//! - a prompt blocked before any candidate (`promptFeedback.blockReason`), or a candidate
//!   stopped by a filter with no text, is a `content_filter` error, so the cascade escalates;
//! - `usageMetadata`: `promptTokenCount` (which already holds the cached tokens, and
//!   `toolUsePromptTokenCount`) is input; `candidatesTokenCount` + `thoughtsTokenCount` is
//!   output, as thinking is billed as output; `cachedContentTokenCount` is reported as
//!   `prompt_tokens_details.cached_tokens`.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::super::{Completion, ProviderError, ProviderErrorKind};
use super::errors::classify_value;
use super::tools;
use crate::provider::http::{self, header_str, snippet};
use crate::provider::shape;

/// `finishReason` as an OpenAI `finish_reason`; unknown reasons pass through lowercased.
pub fn finish_reason(reason: &str) -> String {
    match reason {
        "STOP" => "stop".to_owned(),
        "MAX_TOKENS" => "length".to_owned(),
        "SAFETY"
        | "RECITATION"
        | "BLOCKLIST"
        | "PROHIBITED_CONTENT"
        | "SPII"
        | "IMAGE_SAFETY"
        | "IMAGE_PROHIBITED_CONTENT" => "content_filter".to_owned(),
        other => other.to_ascii_lowercase(),
    }
}

fn filtered(status: u16, message: String) -> ProviderError {
    ProviderError {
        kind: ProviderErrorKind::ContentFilter,
        message,
        status: Some(status),
        retry_after: None,
    }
}

/// Reads a 2xx reply. `model` is the name the call was made with.
pub fn parse_success(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
    model: &str,
) -> Result<Completion, ProviderError> {
    let body = http::json_body(status, bytes, "the Gemini API (.../v1beta)")?;
    // Some proxies answer 200 with an error object.
    if body.get("error").is_some() {
        return Err(classify_value(status, headers, &body));
    }
    let candidate = body
        .get("candidates")
        .and_then(Value::as_array)
        .and_then(|c| c.first());
    let Some(candidate) = candidate else {
        return Err(no_candidate(status, &body));
    };

    let parts = candidate
        .get("content")
        .and_then(|c| c.get("parts"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let text = answer_text(parts);
    let tool_calls = tools::tool_calls(parts);
    let raw_finish = candidate.get("finishReason").and_then(Value::as_str);
    let mut finish = raw_finish.map(finish_reason);
    // Gemini ends a turn of function calls with STOP; OpenAI readers expect `tool_calls`.
    if !tool_calls.is_empty() && matches!(finish.as_deref(), None | Some("stop")) {
        finish = Some("tool_calls".to_owned());
    }
    if finish.as_deref() == Some("content_filter") && text.is_empty() && tool_calls.is_empty() {
        return Err(filtered(
            status,
            format!(
                "the provider stopped the answer (finishReason {}); rephrase the input or use \
                 another model",
                raw_finish.unwrap_or("")
            ),
        ));
    }

    let usage = body.get("usageMetadata");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
    let cached = count("cachedContentTokenCount").unwrap_or(0);
    let input_tokens = count("promptTokenCount").unwrap_or(0);
    let output_tokens = match (count("candidatesTokenCount"), count("thoughtsTokenCount")) {
        (None, None) => (text.chars().count() as u64).div_ceil(4),
        (answer, thoughts) => answer.unwrap_or(0) + thoughts.unwrap_or(0),
    };

    let id = body
        .get("responseId")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_owned();
    let request_id = header_str(headers, "x-request-id")
        .map(str::to_owned)
        .unwrap_or_else(|| id.clone());
    let model = body
        .get("modelVersion")
        .and_then(Value::as_str)
        .unwrap_or(model);
    let mut openai = shape::chat_completion(shape::Answer {
        id: &id,
        model: json!(model),
        text,
        tool_calls,
        finish: finish.as_deref(),
        input_tokens,
        output_tokens,
        cached_tokens: cached,
    });
    openai["usage"]["completion_tokens_details"] =
        json!({"reasoning_tokens": count("thoughtsTokenCount").unwrap_or(0)});
    Ok(Completion {
        body: openai,
        request_id,
        input_tokens,
        output_tokens,
        cached_input_tokens: cached,
        cache_write_input_tokens: 0,
        finish_reason: finish,
        simulated: false,
        rate_limits: None,
    })
}

/// A reply without candidates: a blocked prompt (`content_filter`), or not Gemini's answer.
fn no_candidate(status: u16, body: &Value) -> ProviderError {
    let feedback = body.get("promptFeedback");
    let Some(reason) = feedback
        .and_then(|f| f.get("blockReason"))
        .and_then(Value::as_str)
    else {
        return http::malformed(
            status,
            format!(
                "the provider answered {status} without candidates: check that base_url points \
                 at the Gemini API"
            ),
        );
    };
    let said = feedback
        .and_then(|f| f.get("blockReasonMessage"))
        .and_then(Value::as_str)
        .map(|m| format!(": {}", snippet(m, 200)))
        .unwrap_or_default();
    filtered(
        status,
        format!(
            "the provider blocked the prompt (blockReason {reason}){said}; rephrase the input or \
             use another model"
        ),
    )
}

/// The candidate's answer text: its text parts, without thoughts.
fn answer_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter(|p| p.get("thought") != Some(&Value::Bool(true)))
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Completion, ProviderError> {
        parse_success(200, &HeaderMap::new(), body.as_bytes(), "gemini-x")
    }

    #[test]
    fn text_finish_reason_and_usage_are_mapped() {
        let done = parse(
            r#"{"candidates":[{"content":{"role":"model","parts":[
                  {"text":"thinking...","thought":true},{"text":"Hel"},{"text":"lo"}]},
                "finishReason":"STOP","index":0}],
              "usageMetadata":{"promptTokenCount":120,"candidatesTokenCount":3,
                "thoughtsTokenCount":40,"cachedContentTokenCount":100,"totalTokenCount":163},
              "modelVersion":"gemini-2.5-flash","responseId":"resp_1"}"#,
        )
        .unwrap();
        assert_eq!(done.request_id, "resp_1");
        assert_eq!(done.input_tokens, 120);
        assert_eq!(done.output_tokens, 43, "thoughts are billed as output");
        assert_eq!(done.finish_reason.as_deref(), Some("stop"));
        let body = &done.body;
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["choices"][0]["finish_reason"], "stop");
        assert_eq!(body["usage"]["prompt_tokens_details"]["cached_tokens"], 100);
        assert_eq!(
            body["usage"]["completion_tokens_details"]["reasoning_tokens"],
            40
        );
        assert_eq!(body["usage"]["total_tokens"], 163);
        assert_eq!(body["model"], "gemini-2.5-flash");
        assert!(!done.simulated);
    }

    #[test]
    fn finish_reasons_map_to_openai_ones() {
        assert_eq!(finish_reason("STOP"), "stop");
        assert_eq!(finish_reason("MAX_TOKENS"), "length");
        for filter in [
            "SAFETY",
            "RECITATION",
            "BLOCKLIST",
            "PROHIBITED_CONTENT",
            "SPII",
        ] {
            assert_eq!(finish_reason(filter), "content_filter", "{filter}");
        }
        assert_eq!(finish_reason("OTHER"), "other");

        let cut = parse(
            r#"{"candidates":[{"content":{"parts":[{"text":"Hal"}]},"finishReason":"MAX_TOKENS"}],
              "usageMetadata":{"promptTokenCount":5,"candidatesTokenCount":1}}"#,
        )
        .unwrap();
        assert_eq!(cut.finish_reason.as_deref(), Some("length"));
        assert_eq!(cut.output_tokens, 1);
        let partial = parse(
            r#"{"candidates":[{"content":{"parts":[{"text":"Some"}]},"finishReason":"SAFETY"}]}"#,
        )
        .unwrap();
        assert_eq!(partial.finish_reason.as_deref(), Some("content_filter"));
        assert_eq!(partial.output_tokens, 1, "estimated without usage");
    }

    #[test]
    fn blocks_errors_and_garbage_are_typed() {
        let kind = |body: &str| parse(body).unwrap_err().kind;
        assert_eq!(
            kind(r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{}}"#),
            ProviderErrorKind::ContentFilter
        );
        assert_eq!(
            kind(r#"{"candidates":[{"finishReason":"SAFETY","safetyRatings":[]}]}"#),
            ProviderErrorKind::ContentFilter
        );
        assert_eq!(
            kind(r#"{"error":{"code":503,"message":"overloaded","status":"UNAVAILABLE"}}"#),
            ProviderErrorKind::Transient
        );
        assert_eq!(
            kind(r#"{"candidates":[]}"#),
            ProviderErrorKind::MalformedResponse
        );
        assert_eq!(kind("<html>"), ProviderErrorKind::MalformedResponse);
        // Function calls are an answer even without text.
        let called = parse(
            r#"{"candidates":[{"content":{"parts":[{"functionCall":{"name":"f","args":{}}}]},
                "finishReason":"STOP"}]}"#,
        )
        .unwrap();
        assert_eq!(called.finish_reason.as_deref(), Some("tool_calls"));
        let message = &called.body["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["tool_calls"][0]["function"]["name"], "f");
    }
}
