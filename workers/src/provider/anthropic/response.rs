//! A Messages API reply, as an OpenAI chat completion.

use reqwest::header::HeaderMap;
use serde_json::{Map, Value, json};

use super::super::{Completion, ProviderError, ProviderErrorKind};
use super::errors::classify_value;
use crate::provider::http::{self, header_str};
use crate::provider::shape;

/// `stop_reason` as an OpenAI `finish_reason`; unknown reasons pass through unchanged.
pub fn finish_reason(stop_reason: &str) -> &str {
    match stop_reason {
        "end_turn" | "stop_sequence" | "pause_turn" => "stop",
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        other => other,
    }
}

/// Reads a 2xx reply.
pub fn parse_success(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
    request: &Map<String, Value>,
) -> Result<Completion, ProviderError> {
    let malformed = |message: String| http::malformed(status, message);
    let body = http::json_body(status, bytes, "the Messages API")?;
    // Some proxies answer 200 with an error object.
    if body.get("type").and_then(Value::as_str) == Some("error") || body.get("error").is_some() {
        return Err(classify_value(status, headers, &body));
    }
    let Some(blocks) = body.get("content").and_then(Value::as_array) else {
        return Err(malformed(format!(
            "the provider answered {status} without a content list: check that base_url points \
             at the Messages API"
        )));
    };

    let (text, tool_calls) = answer_blocks(blocks);
    let finish = body
        .get("stop_reason")
        .and_then(Value::as_str)
        .map(|r| finish_reason(r).to_owned());
    if finish.as_deref() == Some("content_filter") && text.is_empty() && tool_calls.is_empty() {
        return Err(ProviderError {
            kind: ProviderErrorKind::ContentFilter,
            message: "the model refused to answer (stop_reason refusal): rephrase the input or \
                      use another model"
                .to_owned(),
            status: Some(status),
            retry_after: None,
        });
    }

    let usage = body.get("usage");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
    // Anthropic counts cache reads and writes beside `input_tokens`; batchyard's
    // `input_tokens` is the total, with the two as parts of it (OpenAI's way).
    let cache_read = count("cache_read_input_tokens").unwrap_or(0);
    let cache_write = count("cache_creation_input_tokens").unwrap_or(0);
    let input_tokens = match count("input_tokens") {
        Some(n) => n + cache_read + cache_write,
        None => estimate_input_tokens(request),
    };
    let output_tokens =
        count("output_tokens").unwrap_or_else(|| (text.chars().count() as u64).div_ceil(4));

    let id = body.get("id").and_then(Value::as_str).unwrap_or("");
    let request_id = header_str(headers, "request-id").unwrap_or(id).to_owned();
    let model = body
        .get("model")
        .or_else(|| request.get("model"))
        .cloned()
        .unwrap_or(Value::Null);
    let mut openai = shape::chat_completion(shape::Answer {
        id,
        model,
        text,
        tool_calls,
        finish: finish.as_deref(),
        input_tokens,
        output_tokens,
        cached_tokens: cache_read,
    });
    if cache_write > 0 {
        // OpenRouter's name for it in the OpenAI shape; left out when 0, as before.
        openai["usage"]["prompt_tokens_details"]["cache_write_tokens"] = json!(cache_write);
    }
    Ok(Completion {
        body: openai,
        request_id,
        input_tokens,
        cached_input_tokens: cache_read,
        cache_write_input_tokens: cache_write,
        output_tokens,
        finish_reason: finish,
        simulated: false,
        rate_limits: None,
    })
}

/// The answer's text and its tool calls (as OpenAI `tool_calls`) from the content blocks.
fn answer_blocks(blocks: &[Value]) -> (String, Vec<Value>) {
    let mut text = String::new();
    let mut tool_calls = Vec::new();
    for block in blocks {
        match block.get("type").and_then(Value::as_str) {
            Some("text") => text.push_str(block.get("text").and_then(Value::as_str).unwrap_or("")),
            Some("tool_use") => tool_calls.push(json!({
                "id": block.get("id").cloned().unwrap_or(Value::Null),
                "type": "function",
                "function": {
                    "name": block.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": block.get("input").unwrap_or(&json!({})).to_string(),
                },
            })),
            // Thinking and server tool blocks are not part of the answer.
            _ => {}
        }
    }
    (text, tool_calls)
}

/// For replies without `usage`: about four characters a token, four tokens a message.
fn estimate_input_tokens(request: &Map<String, Value>) -> u64 {
    let text_chars = |content: &Value| -> u64 {
        match content {
            Value::String(s) => s.chars().count() as u64,
            Value::Array(blocks) => blocks
                .iter()
                .filter_map(|b| b.get("text").and_then(Value::as_str))
                .map(|t| t.chars().count() as u64)
                .sum(),
            _ => 0,
        }
    };
    let system = request.get("system").map(text_chars).unwrap_or(0);
    let messages = request
        .get("messages")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let chars: u64 = messages
        .iter()
        .filter_map(|m| m.get("content"))
        .map(text_chars)
        .sum();
    (system + chars) / 4 + 4 * messages.len() as u64
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Completion, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert("request-id", "req_123".parse().unwrap());
        parse_success(200, &headers, body.as_bytes(), &Map::new())
    }

    #[test]
    fn text_tool_use_and_usage_are_mapped() {
        let done = parse(
            r#"{"id":"msg_1","type":"message","role":"assistant","model":"claude-x",
              "content":[{"type":"thinking","thinking":"hmm"},{"type":"text","text":"Hel"},
                {"type":"text","text":"lo"},
                {"type":"tool_use","id":"tu_1","name":"lookup","input":{"q":"x"}}],
              "stop_reason":"tool_use",
              "usage":{"input_tokens":10,"cache_read_input_tokens":5,"output_tokens":3}}"#,
        )
        .unwrap();
        assert_eq!(done.request_id, "req_123");
        assert_eq!(done.input_tokens, 15);
        assert_eq!(done.output_tokens, 3);
        assert_eq!(done.finish_reason.as_deref(), Some("tool_calls"));
        let choice = &done.body["choices"][0];
        assert_eq!(choice["message"]["content"], "Hello");
        assert_eq!(
            choice["message"]["tool_calls"][0]["function"]["arguments"],
            r#"{"q":"x"}"#
        );
        assert_eq!(
            done.body["usage"]["prompt_tokens_details"]["cached_tokens"],
            5
        );
        assert_eq!(done.body["model"], "claude-x");
    }

    #[test]
    fn cache_reads_and_writes_are_counted_into_the_input_and_kept_apart() {
        let done = parse(
            r#"{"id":"msg_2","type":"message","content":[{"type":"text","text":"ok"}],
              "stop_reason":"end_turn",
              "usage":{"input_tokens":20,"cache_creation_input_tokens":2500,
                "cache_read_input_tokens":0,"output_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(done.input_tokens, 2520);
        assert_eq!(done.cached_input_tokens, 0);
        assert_eq!(done.cache_write_input_tokens, 2500);
        let usage = &done.body["usage"];
        assert_eq!(usage["prompt_tokens"], 2520);
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 0);
        assert_eq!(usage["prompt_tokens_details"]["cache_write_tokens"], 2500);

        let done = parse(
            r#"{"id":"msg_3","type":"message","content":[{"type":"text","text":"ok"}],
              "stop_reason":"end_turn",
              "usage":{"input_tokens":20,"cache_read_input_tokens":2500,"output_tokens":7}}"#,
        )
        .unwrap();
        assert_eq!(
            (
                done.input_tokens,
                done.cached_input_tokens,
                done.cache_write_input_tokens
            ),
            (2520, 2500, 0)
        );
        // No writes: the OpenAI shape keeps its old fields only.
        assert!(
            done.body["usage"]["prompt_tokens_details"]
                .get("cache_write_tokens")
                .is_none()
        );
    }

    #[test]
    fn stop_reasons_map_to_finish_reasons() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
        assert_eq!(finish_reason("refusal"), "content_filter");
        assert_eq!(finish_reason("something_new"), "something_new");
    }

    #[test]
    fn refusals_errors_and_garbage_are_typed() {
        let kind = |body: &str| parse(body).unwrap_err().kind;
        assert_eq!(
            kind(r#"{"type":"message","content":[],"stop_reason":"refusal"}"#),
            ProviderErrorKind::ContentFilter
        );
        assert_eq!(
            kind(r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#),
            ProviderErrorKind::Transient
        );
        assert_eq!(
            kind(r#"{"type":"message"}"#),
            ProviderErrorKind::MalformedResponse
        );
        assert_eq!(kind("<html>"), ProviderErrorKind::MalformedResponse);
        assert_eq!(kind("[1,2]"), ProviderErrorKind::MalformedResponse);
    }
}
