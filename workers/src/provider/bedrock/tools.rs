//! Tool use, both ways: OpenAI `tools` / `tool_choice` / `tool_calls` / `tool` messages as
//! Converse `toolConfig`, `toolUse` and `toolResult` blocks, and `toolUse` blocks of an answer
//! back as OpenAI `tool_calls`.
//!
//! Converse pairs a result with its call by `toolUseId`, which is the OpenAI call id both
//! ways. It has no `tool_choice: "none"`: the tools are still declared (a conversation with
//! tool blocks needs them) and the model chooses.

use serde_json::{Value, json};

use super::super::{ProviderError, ProviderErrorKind};
use crate::provider::shape;

fn refuse(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// `toolConfig` from OpenAI function tools and `tool_choice`: `auto` (or none given) is
/// `auto`, `required` is `any`, a named function is `tool`.
pub fn tool_config(tools: &[Value], choice: Option<&Value>) -> Result<Value, ProviderError> {
    let specs = tools
        .iter()
        .map(|spec| {
            let function = spec
                .get("function")
                .ok_or_else(|| refuse("only function tools can be sent to the bedrock provider"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("a tool has no function name"))?;
            let schema = function
                .get("parameters")
                .filter(|p| !p.is_null())
                .cloned()
                .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
            let mut out = json!({"name": name, "inputSchema": {"json": schema}});
            if let Some(d) = function.get("description").and_then(Value::as_str) {
                out["description"] = json!(d);
            }
            Ok(json!({"toolSpec": out}))
        })
        .collect::<Result<Vec<_>, ProviderError>>()?;
    let mut config = json!({"tools": specs});
    let choice = match choice {
        Some(Value::String(s)) if s == "required" => Some(json!({"any": {}})),
        Some(Value::String(s)) if s == "auto" => Some(json!({"auto": {}})),
        Some(Value::Object(o)) => o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
            .map(|name| json!({"tool": {"name": name}})),
        _ => None,
    };
    if let Some(choice) = choice {
        config["toolChoice"] = choice;
    }
    Ok(config)
}

/// An assistant's `tool_calls` as `toolUse` blocks.
pub fn use_blocks(calls: &[Value], i: usize) -> Result<Vec<Value>, ProviderError> {
    calls
        .iter()
        .map(|call| {
            let (name, input) = shape::tool_call_parts(call, i)?;
            let id = call
                .get("id")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse(format!("messages[{i}] has a tool call without an id")))?;
            Ok(json!({"toolUse": {"toolUseId": id, "name": name, "input": input}}))
        })
        .collect()
}

/// A `tool` message as a `toolResult` block: a JSON object goes as `json`, anything else as
/// `text`.
pub fn result_block(message: &Value, text: String, i: usize) -> Result<Value, ProviderError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(format!("messages[{i}] (tool) has no tool_call_id")))?;
    let content = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => json!({"json": object}),
        _ => json!({"text": text}),
    };
    Ok(json!({"toolResult": {"toolUseId": id, "content": [content]}}))
}

/// The `toolUse` blocks of an answer as OpenAI `tool_calls`.
pub fn tool_calls(blocks: &[Value]) -> Vec<Value> {
    blocks
        .iter()
        .filter_map(|b| b.get("toolUse"))
        .enumerate()
        .map(|(n, call)| {
            let id = call
                .get("toolUseId")
                .and_then(Value::as_str)
                .map_or_else(|| format!("call_{n}"), str::to_owned);
            json!({
                "id": id,
                "type": "function",
                "function": {
                    "name": call.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": call.get("input").unwrap_or(&json!({})).to_string(),
                },
            })
        })
        .collect()
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn tools_and_choices_become_tool_config() {
        let tools = json!([{"type": "function", "function": {"name": "lookup",
            "description": "find", "parameters": {"type": "object",
            "properties": {"q": {"type": "string"}}}}}]);
        let list = tools.as_array().unwrap();
        let config = tool_config(list, None).unwrap();
        let spec = &config["tools"][0]["toolSpec"];
        assert_eq!(spec["name"], "lookup");
        assert_eq!(spec["description"], "find");
        assert_eq!(
            spec["inputSchema"]["json"]["properties"]["q"]["type"],
            "string"
        );
        assert!(config.get("toolChoice").is_none());
        let choice = |c: Value| tool_config(list, Some(&c)).unwrap()["toolChoice"].clone();
        assert_eq!(choice(json!("auto")), json!({"auto": {}}));
        assert_eq!(choice(json!("required")), json!({"any": {}}));
        assert_eq!(choice(json!("none")), Value::Null);
        assert_eq!(
            choice(json!({"type": "function", "function": {"name": "lookup"}})),
            json!({"tool": {"name": "lookup"}})
        );
        assert!(tool_config(&[json!({"type": "web_search"})], None).is_err());
    }

    #[test]
    fn calls_and_results_pair_by_id() {
        let calls = json!([{"id": "tooluse_1", "type": "function",
            "function": {"name": "lookup", "arguments": ""}}]);
        assert_eq!(
            use_blocks(calls.as_array().unwrap(), 1).unwrap()[0],
            json!({"toolUse": {"toolUseId": "tooluse_1", "name": "lookup", "input": {}}})
        );
        let no_id = json!([{"function": {"name": "f", "arguments": "{}"}}]);
        assert!(use_blocks(no_id.as_array().unwrap(), 1).is_err());
        let tool = json!({"role": "tool", "tool_call_id": "tooluse_1"});
        assert_eq!(
            result_block(&tool, r#"{"n":1}"#.into(), 2).unwrap()["toolResult"]["content"],
            json!([{"json": {"n": 1}}])
        );
        assert_eq!(
            result_block(&tool, "42".into(), 2).unwrap()["toolResult"]["content"],
            json!([{"text": "42"}])
        );
        assert!(result_block(&json!({"role": "tool"}), "x".into(), 2).is_err());
    }

    #[test]
    fn answer_tool_uses_become_openai_tool_calls() {
        let blocks = json!([{"text": "let me look"},
            {"toolUse": {"toolUseId": "tooluse_a", "name": "lookup", "input": {"q": "x"}}}]);
        let calls = tool_calls(blocks.as_array().unwrap());
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0]["id"], "tooluse_a");
        assert_eq!(calls[0]["function"]["name"], "lookup");
        assert_eq!(calls[0]["function"]["arguments"], r#"{"q":"x"}"#);
    }
}
