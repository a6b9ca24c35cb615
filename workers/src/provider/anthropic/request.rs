//! An OpenAI chat completions body, as a Messages API request.
//!
//! - `system` / `developer` messages are joined (blank line between) into the top-level `system`;
//! - `user` / `assistant` messages keep a string content, or become content blocks (text, images
//!   from `image_url`, `tool_use` from an assistant's `tool_calls`);
//! - `tool` messages become `tool_result` blocks in a user turn; consecutive turns of one role
//!   are merged, as the API wants roles to alternate;
//! - `max_tokens` comes from `max_tokens`, `max_completion_tokens`, the call's default, or 1024;
//! - `temperature`, `top_p`, `top_k` pass through, `stop` becomes `stop_sequences`, `user`
//!   becomes `metadata.user_id`, function `tools` and `tool_choice` are translated;
//! - `response_format` (JSON object or schema) becomes an instruction in `system`: the Messages
//!   API has no such field, and the validator checks the reply either way.

use serde_json::{Map, Value, json};

use super::super::{ChatCall, ProviderError, ProviderErrorKind};
use crate::provider::shape;
use crate::provider::shape::plain_text;

/// `max_tokens` when neither the body nor the catalog says.
pub const FALLBACK_MAX_TOKENS: u64 = 1024;

fn refuse(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// The Messages request for `call`, or why it cannot be expressed.
pub fn messages_body(call: ChatCall<'_>) -> Result<Map<String, Value>, ProviderError> {
    let body = call.body;
    let mut out = Map::new();
    out.insert("model".into(), Value::String(call.model_name.to_owned()));

    let max_tokens = ["max_tokens", "max_completion_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .or(call.default_max_tokens.map(u64::from))
        .unwrap_or(FALLBACK_MAX_TOKENS);
    out.insert("max_tokens".into(), Value::from(max_tokens));

    let mut system: Vec<Value> = Vec::new();
    if let Some(Value::String(s)) = body.get("system") {
        system.push(text_block(s));
    }
    let mut turns: Vec<(String, Value)> = Vec::new();
    let messages = match body.get("messages") {
        Some(Value::Array(m)) => m.as_slice(),
        _ => return Err(refuse("the request body has no `messages` array")),
    };
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content");
        match role {
            "system" | "developer" => system.extend(system_blocks(content)),
            "user" => push_turn(&mut turns, "user", user_content(content, i)?),
            "assistant" => push_turn(&mut turns, "assistant", assistant_content(message, i)?),
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| refuse(format!("messages[{i}] (tool) has no tool_call_id")))?;
                let block = json!({
                    "type": "tool_result",
                    "tool_use_id": id,
                    "content": plain_text(content),
                });
                push_turn(&mut turns, "user", Value::Array(vec![block]));
            }
            other => {
                return Err(refuse(format!(
                    "messages[{i}] has role {other:?}, which the anthropic provider cannot send; \
                     use system, user, assistant or tool"
                )));
            }
        }
    }
    if turns.is_empty() {
        return Err(refuse(
            "the request has no user or assistant message: the Messages API needs at least one",
        ));
    }
    if let Some(instruction) = response_format_instruction(body.get("response_format"))? {
        system.push(text_block(&instruction));
    }
    if let Some(system) = system_value(system) {
        out.insert("system".into(), system);
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    out.insert("messages".into(), Value::Array(turns));

    for key in [
        "temperature",
        "top_p",
        "top_k",
        "stop_sequences",
        "metadata",
    ] {
        if let Some(v) = body.get(key).filter(|v| !v.is_null()) {
            out.insert(key.into(), v.clone());
        }
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            out.insert("stop_sequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            out.insert("stop_sequences".into(), Value::Array(list.clone()));
        }
        _ => {}
    }
    if let Some(Value::String(user)) = body.get("user") {
        out.insert("metadata".into(), json!({"user_id": user}));
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(refuse(
            "n > 1 is not supported by the Messages API: send one request per reply",
        ));
    }
    if let Some(Value::Array(tools)) = body.get("tools") {
        let tools = tools.iter().map(tool).collect::<Result<Vec<_>, _>>()?;
        out.insert("tools".into(), Value::Array(tools));
        if let Some(choice) = tool_choice(body.get("tool_choice"), body.get("parallel_tool_calls"))
        {
            out.insert("tool_choice".into(), choice);
        }
    }
    Ok(out)
}

fn text_block(text: &str) -> Value {
    json!({"type": "text", "text": text})
}

/// A system message's text as blocks: with a cache point, one per text part, each keeping its
/// `cache_control`; else one block of its text (parts joined by a newline, as before).
fn system_blocks(content: Option<&Value>) -> Vec<Value> {
    let parts = match content {
        Some(Value::Array(parts)) if parts.iter().any(|p| p.get("cache_control").is_some()) => {
            parts.as_slice()
        }
        other => {
            let text = plain_text(other);
            return if text.is_empty() {
                Vec::new()
            } else {
                vec![text_block(&text)]
            };
        }
    };
    parts
        .iter()
        .filter_map(|p| {
            let text = p
                .get("text")
                .and_then(Value::as_str)
                .filter(|t| !t.is_empty())?;
            let mut block = text_block(text);
            if let Some(point) = p.get("cache_control") {
                block["cache_control"] = point.clone();
            }
            Some(block)
        })
        .collect()
}

/// The top-level `system`: one string (blank lines between the parts) unless a part carries
/// a cache point, which only an array of blocks can say where it goes.
fn system_value(blocks: Vec<Value>) -> Option<Value> {
    if blocks.is_empty() {
        return None;
    }
    if blocks.iter().any(|b| b.get("cache_control").is_some()) {
        return Some(Value::Array(blocks));
    }
    let texts: Vec<&str> = blocks
        .iter()
        .filter_map(|b| b.get("text").and_then(Value::as_str))
        .collect();
    Some(Value::String(texts.join("\n\n")))
}

/// Appends `content` as a turn of `role`, merging it into the previous turn of the same role.
fn push_turn(turns: &mut Vec<(String, Value)>, role: &str, content: Value) {
    if let Some((last_role, last)) = turns.last_mut()
        && last_role == role
    {
        let mut blocks = into_blocks(std::mem::take(last));
        blocks.extend(into_blocks(content));
        *last = Value::Array(blocks);
        return;
    }
    turns.push((role.to_owned(), content));
}

fn into_blocks(content: Value) -> Vec<Value> {
    match content {
        Value::String(s) if s.is_empty() => Vec::new(),
        Value::String(s) => vec![json!({"type": "text", "text": s})],
        Value::Array(blocks) => blocks,
        Value::Null => Vec::new(),
        other => vec![other],
    }
}

fn user_content(content: Option<&Value>, i: usize) -> Result<Value, ProviderError> {
    match content {
        Some(Value::String(s)) => Ok(Value::String(s.clone())),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|p| content_part(p, i))
            .collect::<Result<Vec<_>, _>>()
            .map(Value::Array),
        _ => Err(refuse(format!(
            "messages[{i}] (user) has no content: give a string or a list of parts"
        ))),
    }
}

fn content_part(part: &Value, i: usize) -> Result<Value, ProviderError> {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    match kind {
        "text" => {
            let mut block = text_block(part.get("text").and_then(Value::as_str).unwrap_or(""));
            // A cache point after this text (the shared convention), as the Messages API has it.
            if let Some(point) = part.get("cache_control") {
                block["cache_control"] = point.clone();
            }
            Ok(block)
        }
        "image_url" => {
            let url = part
                .get("image_url")
                .and_then(|u| u.get("url").or(Some(u)))
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    refuse(format!("messages[{i}] has an image_url part without url"))
                })?;
            Ok(image_block(url))
        }
        // Already in Anthropic's shape.
        "image" | "document" | "tool_result" | "tool_use" => Ok(part.clone()),
        other => Err(refuse(format!(
            "messages[{i}] has a content part of type {other:?}, which the anthropic provider \
             cannot send; use text or image_url"
        ))),
    }
}

/// `data:image/png;base64,...` becomes a base64 source, anything else a url source.
fn image_block(url: &str) -> Value {
    if let Some(rest) = url.strip_prefix("data:")
        && let Some((meta, data)) = rest.split_once(',')
        && let Some(media_type) = meta.strip_suffix(";base64")
    {
        return json!({
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        });
    }
    json!({"type": "image", "source": {"type": "url", "url": url}})
}

fn assistant_content(message: &Value, i: usize) -> Result<Value, ProviderError> {
    let calls = match message.get("tool_calls") {
        Some(Value::Array(calls)) if !calls.is_empty() => calls.as_slice(),
        _ => {
            return Ok(match message.get("content") {
                Some(Value::String(s)) => Value::String(s.clone()),
                other => Value::String(plain_text(other)),
            });
        }
    };
    let mut blocks = Vec::new();
    let text = plain_text(message.get("content"));
    if !text.is_empty() {
        blocks.push(json!({"type": "text", "text": text}));
    }
    for call in calls {
        let id = call.get("id").and_then(Value::as_str).unwrap_or("");
        let (name, input) = shape::tool_call_parts(call, i)?;
        blocks.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(Value::Array(blocks))
}

fn tool(spec: &Value) -> Result<Value, ProviderError> {
    let Some(function) = spec.get("function") else {
        // Already in Anthropic's shape (or a server tool): pass it on.
        return Ok(spec.clone());
    };
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse("a tool has no function name"))?;
    let mut out = json!({
        "name": name,
        "input_schema": function
            .get("parameters")
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}})),
    });
    if let Some(d) = function.get("description").and_then(Value::as_str) {
        out["description"] = Value::String(d.to_owned());
    }
    Ok(out)
}

fn tool_choice(choice: Option<&Value>, parallel: Option<&Value>) -> Option<Value> {
    let mut out = match choice {
        Some(Value::String(s)) if s == "none" => json!({"type": "none"}),
        Some(Value::String(s)) if s == "required" => json!({"type": "any"}),
        Some(Value::Object(o)) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => json!({"type": "tool", "name": name}),
            None => Value::Object(o.clone()),
        },
        _ => json!({"type": "auto"}),
    };
    if parallel == Some(&Value::Bool(false)) && out["type"] != "none" {
        out["disable_parallel_tool_use"] = Value::Bool(true);
    }
    Some(out)
}

fn response_format_instruction(format: Option<&Value>) -> Result<Option<String>, ProviderError> {
    let Some(format) = format.filter(|f| !f.is_null()) else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(
            "Reply with one JSON object and nothing else: no prose, no code fences.".to_owned(),
        )),
        Some("json_schema") => {
            let schema = format
                .get("json_schema")
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| refuse("response_format json_schema has no schema"))?;
            Ok(Some(format!(
                "Reply with one JSON object and nothing else (no prose, no code fences) that \
                 matches this JSON schema:\n{schema}"
            )))
        }
        other => Err(refuse(format!(
            "response_format type {other:?} is not supported by the anthropic provider; use \
             json_object or json_schema"
        ))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn map(text: &str, default_max: Option<u32>) -> Result<Map<String, Value>, ProviderError> {
        let body: Map<String, Value> = serde_json::from_str(text).unwrap();
        messages_body(ChatCall {
            model_name: "claude-x",
            body: &body,
            default_max_tokens: default_max,
        })
    }

    #[test]
    fn system_goes_top_level_and_max_tokens_is_always_set() {
        let out = map(
            r#"{"model":"ignored","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"developer","content":[{"type":"text","text":"No emoji."}]},
                {"role":"user","content":"hi"}],
              "temperature":0.2,"top_p":0.9,"stop":"END","seed":7,"user":"u1"}"#,
            None,
        )
        .unwrap();
        assert_eq!(out["model"], "claude-x");
        assert_eq!(out["system"], "Be brief.\n\nNo emoji.");
        assert_eq!(out["messages"], json!([{"role":"user","content":"hi"}]));
        assert_eq!(out["max_tokens"], FALLBACK_MAX_TOKENS);
        assert_eq!(out["temperature"], 0.2);
        assert_eq!(out["top_p"], 0.9);
        assert_eq!(out["stop_sequences"], json!(["END"]));
        assert_eq!(out["metadata"], json!({"user_id": "u1"}));
        assert!(!out.contains_key("seed"));

        let out = map(r#"{"messages":[{"role":"user","content":"x"}]}"#, Some(77)).unwrap();
        assert_eq!(out["max_tokens"], 77);
        let out = map(
            r#"{"max_completion_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
            Some(77),
        )
        .unwrap();
        assert_eq!(out["max_tokens"], 5);
    }

    #[test]
    fn tools_images_and_consecutive_turns() {
        let out = map(
            r#"{"messages":[
                {"role":"user","content":[{"type":"text","text":"look"},
                  {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
                {"role":"user","content":"and this"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function",
                  "function":{"name":"lookup","arguments":"{\"q\":\"x\"}"}}]},
                {"role":"tool","tool_call_id":"call_1","content":"42"}],
              "tools":[{"type":"function","function":{"name":"lookup","description":"find",
                "parameters":{"type":"object"}}}],
              "tool_choice":"required","parallel_tool_calls":false}"#,
            None,
        )
        .unwrap();
        let messages = out["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[0]["content"][1]["source"]["media_type"],
            "image/png"
        );
        assert_eq!(
            messages[0]["content"][2],
            json!({"type":"text","text":"and this"})
        );
        assert_eq!(messages[1]["content"][0]["type"], "tool_use");
        assert_eq!(messages[1]["content"][0]["input"], json!({"q":"x"}));
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(messages[2]["content"][0]["tool_use_id"], "call_1");
        assert_eq!(out["tools"][0]["input_schema"], json!({"type":"object"}));
        assert_eq!(
            out["tool_choice"],
            json!({"type":"any","disable_parallel_tool_use":true})
        );
    }

    #[test]
    fn json_schema_becomes_an_instruction_and_bad_requests_are_refused() {
        let out = map(
            r#"{"messages":[{"role":"user","content":"x"}],
              "response_format":{"type":"json_schema","json_schema":{"name":"s","schema":{"type":"object"}}}}"#,
            None,
        )
        .unwrap();
        assert!(
            out["system"]
                .as_str()
                .unwrap()
                .contains(r#"{"type":"object"}"#)
        );

        for bad in [
            r#"{"messages":[{"role":"system","content":"only system"}]}"#,
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#,
            r#"{"prompt":"x"}"#,
        ] {
            let err = map(bad, None).unwrap_err();
            assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{bad}");
        }
    }

    #[test]
    fn cache_points_become_blocks_with_cache_control() {
        let point = json!({"type": "ephemeral"});
        let out = map(
            r#"{"messages":[
                {"role":"system","content":[{"type":"text","text":"Long rules.","cache_control":{"type":"ephemeral"}}]},
                {"role":"user","content":[{"type":"text","text":"Head: ","cache_control":{"type":"ephemeral"}},
                                          {"type":"text","text":"the doc"}]}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            out["system"],
            json!([{"type": "text", "text": "Long rules.", "cache_control": point}])
        );
        let content = &out["messages"][0]["content"];
        assert_eq!(content[0]["cache_control"], point);
        assert_eq!(content[1], json!({"type": "text", "text": "the doc"}));
        // Without a point the system stays one string.
        let out = map(
            r#"{"messages":[{"role":"system","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},
                {"role":"user","content":"x"}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(out["system"], "a\nb");
    }
}
