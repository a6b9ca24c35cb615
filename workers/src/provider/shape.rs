//! The OpenAI shapes the non-OpenAI kinds translate to and from: the chat completion every
//! kind answers with, the parts of an OpenAI tool call they send on, and the pieces of a
//! message (its plain text, an image part's URL, turns merged by role) they all read.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

use super::{ProviderError, ProviderErrorKind};

/// What a kind read from its provider's answer.
pub(crate) struct Answer<'a> {
    pub(crate) id: &'a str,
    pub(crate) model: Value,
    pub(crate) text: String,
    /// OpenAI `tool_calls` entries.
    pub(crate) tool_calls: Vec<Value>,
    pub(crate) finish: Option<&'a str>,
    pub(crate) input_tokens: u64,
    pub(crate) output_tokens: u64,
    /// Input tokens read from the provider's prompt cache (a part of `input_tokens`).
    pub(crate) cached_tokens: u64,
}

/// `answer` as an OpenAI chat completion object (one choice, `usage` with the cached part).
pub(crate) fn chat_completion(answer: Answer<'_>) -> Value {
    let created = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let mut message = json!({"role": "assistant", "content": answer.text});
    if !answer.tool_calls.is_empty() {
        if answer.text.is_empty() {
            message["content"] = Value::Null;
        }
        message["tool_calls"] = Value::Array(answer.tool_calls);
    }
    json!({
        "id": answer.id,
        "object": "chat.completion",
        "created": created,
        "model": answer.model,
        "choices": [{
            "index": 0,
            "message": message,
            "finish_reason": answer.finish,
            "logprobs": null,
        }],
        "usage": {
            "prompt_tokens": answer.input_tokens,
            "completion_tokens": answer.output_tokens,
            "total_tokens": answer.input_tokens + answer.output_tokens,
            "prompt_tokens_details": {"cached_tokens": answer.cached_tokens},
        },
    })
}

/// The function name and arguments (a JSON object) of the OpenAI tool call in `messages[i]`;
/// arguments that are empty or missing are `{}`.
pub(crate) fn tool_call_parts(call: &Value, i: usize) -> Result<(&str, Value), ProviderError> {
    let refuse = |message: String| ProviderError::new(ProviderErrorKind::InvalidRequest, message);
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(format!("messages[{i}] has a tool call without a name")))?;
    let arguments = match function.and_then(|f| f.get("arguments")) {
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => serde_json::from_str(s).map_err(|e| {
            refuse(format!(
                "messages[{i}] has tool call arguments that are not json ({e})"
            ))
        })?,
        Some(v @ Value::Object(_)) => v.clone(),
        _ => json!({}),
    };
    Ok((name, arguments))
}

/// The text of a message's content: the string, or its text parts joined by newlines.
pub(crate) fn plain_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect::<Vec<_>>()
            .join("\n"),
        _ => String::new(),
    }
}

/// The URL of an `image_url` part of `messages[i]` (`{"image_url": {"url"}}` or a bare string).
pub(crate) fn image_url(part: &Value, i: usize) -> Result<&str, ProviderError> {
    part.get("image_url")
        .and_then(|u| u.get("url").or(Some(u)))
        .and_then(Value::as_str)
        .ok_or_else(|| {
            ProviderError::new(
                ProviderErrorKind::InvalidRequest,
                format!("messages[{i}] has an image_url part without url"),
            )
        })
}

/// Appends `items` as a turn of `role`, merging it into the previous turn of the same role
/// (the APIs that want roles to alternate).
pub(crate) fn push_turn(
    turns: &mut Vec<(&'static str, Vec<Value>)>,
    role: &'static str,
    items: Vec<Value>,
) {
    if items.is_empty() {
        return;
    }
    if let Some((last_role, last)) = turns.last_mut()
        && *last_role == role
    {
        last.extend(items);
        return;
    }
    turns.push((role, items));
}
