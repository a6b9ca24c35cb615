//! A Converse reply, as an OpenAI chat completion.
//!
//! - the text is `output.message.content[].text` joined (reasoning blocks are not the
//!   answer); `toolUse` blocks become `tool_calls`;
//! - `stopReason` becomes `finish_reason` ([`finish_reason`]); `model_context_window_exceeded`
//!   is a `context_overflow` error, and a guardrail or filter stop with no text a
//!   `content_filter` error, so the cascade escalates;
//! - `usage`: `inputTokens` counts only uncached input, so the input is `inputTokens +
//!   cacheReadInputTokens + cacheWriteInputTokens`, with the reads reported as
//!   `prompt_tokens_details.cached_tokens` and the writes as `cache_write_tokens`.

use reqwest::header::HeaderMap;
use serde_json::{Value, json};

use super::super::{Completion, ProviderError, ProviderErrorKind};
use super::tools;
use crate::provider::http::{self, header_str};
use crate::provider::shape;

/// `stopReason` as an OpenAI `finish_reason`; unknown reasons pass through.
pub fn finish_reason(reason: &str) -> String {
    match reason {
        "end_turn" | "stop_sequence" => "stop".to_owned(),
        "max_tokens" => "length".to_owned(),
        "guardrail_intervened" | "content_filtered" => "content_filter".to_owned(),
        "tool_use" => "tool_calls".to_owned(),
        other => other.to_owned(),
    }
}

fn failed(kind: ProviderErrorKind, status: u16, message: String) -> ProviderError {
    ProviderError {
        kind,
        message,
        status: Some(status),
        retry_after: None,
    }
}

/// Reads a 2xx reply. `model` is the model id the call was made with.
pub fn parse_success(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
    model: &str,
) -> Result<Completion, ProviderError> {
    let body = http::json_body(
        status,
        bytes,
        "the Bedrock runtime (bedrock-runtime.REGION...)",
    )?;
    let Some(blocks) = body
        .get("output")
        .and_then(|o| o.get("message"))
        .and_then(|m| m.get("content"))
        .and_then(Value::as_array)
    else {
        return Err(http::malformed(
            status,
            format!(
                "the provider answered {status} without output.message.content: check that \
                 base_url points at the Bedrock runtime"
            ),
        ));
    };
    let text: String = blocks
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    let tool_calls = tools::tool_calls(blocks);
    let raw_stop = body.get("stopReason").and_then(Value::as_str);
    if raw_stop == Some("model_context_window_exceeded") {
        return Err(failed(
            ProviderErrorKind::ContextOverflow,
            status,
            "the model ran out of context window while answering \
             (stopReason model_context_window_exceeded); shorten the input or route it to a \
             model with a larger context"
                .to_owned(),
        ));
    }
    let finish = raw_stop.map(finish_reason);
    if finish.as_deref() == Some("content_filter") && text.is_empty() && tool_calls.is_empty() {
        return Err(failed(
            ProviderErrorKind::ContentFilter,
            status,
            format!(
                "the provider stopped the answer (stopReason {}); rephrase the input or use \
                 another model",
                raw_stop.unwrap_or("")
            ),
        ));
    }

    let usage = body.get("usage");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
    let cache_read = count("cacheReadInputTokens").unwrap_or(0);
    let cache_write = count("cacheWriteInputTokens").unwrap_or(0);
    let input_tokens = count("inputTokens").unwrap_or(0) + cache_read + cache_write;
    let output_tokens =
        count("outputTokens").unwrap_or_else(|| (text.chars().count() as u64).div_ceil(4));

    let request_id = header_str(headers, "x-amzn-requestid")
        .unwrap_or("")
        .to_owned();
    let mut openai = shape::chat_completion(shape::Answer {
        id: &request_id,
        model: json!(model),
        text,
        tool_calls,
        finish: finish.as_deref(),
        input_tokens,
        output_tokens,
        cached_tokens: cache_read,
    });
    if cache_write > 0 {
        openai["usage"]["prompt_tokens_details"]["cache_write_tokens"] = json!(cache_write);
    }
    Ok(Completion {
        body: openai,
        request_id,
        input_tokens,
        output_tokens,
        cached_input_tokens: cache_read,
        cache_write_input_tokens: cache_write,
        finish_reason: finish,
        simulated: false,
        rate_limits: None,
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Completion, ProviderError> {
        let mut headers = HeaderMap::new();
        headers.insert("x-amzn-requestid", "req-1".parse().unwrap());
        parse_success(200, &headers, body.as_bytes(), "us.anthropic.claude-x-v1:0")
    }

    #[test]
    fn text_stop_reason_and_usage_with_cache_counts_are_mapped() {
        let done = parse(
            r#"{"output":{"message":{"role":"assistant","content":[
                  {"reasoningContent":{"reasoningText":{"text":"hmm"}}},{"text":"Hel"},{"text":"lo"}]}},
              "stopReason":"end_turn",
              "usage":{"inputTokens":20,"outputTokens":3,"totalTokens":2523,
                "cacheReadInputTokens":2000,"cacheWriteInputTokens":500},
              "metrics":{"latencyMs":120}}"#,
        )
        .unwrap();
        assert_eq!(done.request_id, "req-1");
        assert_eq!(done.input_tokens, 2520);
        assert_eq!(done.cached_input_tokens, 2000);
        assert_eq!(done.cache_write_input_tokens, 500);
        assert_eq!(done.output_tokens, 3);
        assert_eq!(done.finish_reason.as_deref(), Some("stop"));
        let body = &done.body;
        assert_eq!(body["choices"][0]["message"]["content"], "Hello");
        assert_eq!(body["usage"]["prompt_tokens"], 2520);
        assert_eq!(
            body["usage"]["prompt_tokens_details"]["cached_tokens"],
            2000
        );
        assert_eq!(
            body["usage"]["prompt_tokens_details"]["cache_write_tokens"],
            500
        );
        assert_eq!(body["model"], "us.anthropic.claude-x-v1:0");
    }

    #[test]
    fn stop_reasons_map_to_openai_ones() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("guardrail_intervened"), "content_filter");
        assert_eq!(finish_reason("content_filtered"), "content_filter");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
        let cut = parse(
            r#"{"output":{"message":{"content":[{"text":"Hal"}]}},"stopReason":"max_tokens",
              "usage":{"inputTokens":5,"outputTokens":1}}"#,
        )
        .unwrap();
        assert_eq!(cut.finish_reason.as_deref(), Some("length"));
        assert_eq!(cut.cached_input_tokens, 0);
        let called = parse(
            r#"{"output":{"message":{"content":[{"toolUse":{"toolUseId":"t1","name":"f",
                "input":{"a":1}}}]}},"stopReason":"tool_use","usage":{"inputTokens":5,"outputTokens":9}}"#,
        )
        .unwrap();
        assert_eq!(called.finish_reason.as_deref(), Some("tool_calls"));
        let message = &called.body["choices"][0]["message"];
        assert_eq!(message["content"], Value::Null);
        assert_eq!(message["tool_calls"][0]["id"], "t1");
    }

    #[test]
    fn overflow_filters_and_garbage_are_typed() {
        let kind = |body: &str| parse(body).unwrap_err().kind;
        assert_eq!(
            kind(
                r#"{"output":{"message":{"content":[{"text":"par"}]}},
                  "stopReason":"model_context_window_exceeded"}"#
            ),
            ProviderErrorKind::ContextOverflow
        );
        assert_eq!(
            kind(r#"{"output":{"message":{"content":[]}},"stopReason":"guardrail_intervened"}"#),
            ProviderErrorKind::ContentFilter
        );
        assert_eq!(
            kind(r#"{"output":{}}"#),
            ProviderErrorKind::MalformedResponse
        );
        assert_eq!(kind("<html>"), ProviderErrorKind::MalformedResponse);
        let partial = parse(
            r#"{"output":{"message":{"content":[{"text":"Some"}]}},"stopReason":"content_filtered"}"#,
        )
        .unwrap();
        assert_eq!(partial.finish_reason.as_deref(), Some("content_filter"));
        assert_eq!(partial.output_tokens, 1, "estimated without usage");
    }
}
