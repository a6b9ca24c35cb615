//! An OpenAI chat completions body, as a Bedrock Converse request.
//!
//! - `system` / `developer` messages become `system[]` text blocks;
//! - `user` / `assistant` messages become `messages[]` with `content[]` blocks (text, and
//!   images from `data:` URLs as `image` blocks); consecutive turns of one role are merged, as
//!   Converse wants roles to alternate;
//! - a text part carrying `cache_control` (the shared prompt-cache convention) is followed by
//!   a `{"cachePoint": {"type": "default"}}` block, in `system[]` or in the message;
//! - `inferenceConfig`: `maxTokens` from `max_tokens`, `max_completion_tokens` or the call's
//!   default; `temperature`, `topP`; `stop` becomes `stopSequences`; `seed`, `top_k` and the
//!   penalties have no common Converse field (models differ) and are left out;
//! - function `tools`, `tool_choice`, assistant `tool_calls` and `tool` messages go through
//!   [`super::tools`];
//! - what Converse cannot take (`n` > 1, `response_format`, other roles, audio, images by
//!   URL) is refused with a message saying what to do, rather than silently dropped.

use serde_json::{Map, Value, json};

use super::super::{ChatCall, ProviderError, ProviderErrorKind};
use super::tools;
use crate::provider::shape::{self, plain_text, push_turn};

fn refuse(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// The block that asks Bedrock to cache everything before it.
fn cache_point() -> Value {
    json!({"cachePoint": {"type": "default"}})
}

/// The Converse request for `call`, or why it cannot be expressed.
pub fn converse_body(call: ChatCall<'_>) -> Result<Map<String, Value>, ProviderError> {
    let body = call.body;
    let messages = match body.get("messages") {
        Some(Value::Array(m)) => m.as_slice(),
        _ => return Err(refuse("the request body has no `messages` array")),
    };
    let mut system: Vec<Value> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content");
        match role {
            "system" | "developer" => system.extend(blocks(content, i, false, true)?),
            "user" => push_turn(&mut turns, "user", blocks(content, i, true, false)?),
            "assistant" => {
                let mut said = blocks(content, i, false, false)?;
                if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                    said.extend(tools::use_blocks(calls, i)?);
                }
                push_turn(&mut turns, "assistant", said);
            }
            "tool" => {
                let block = tools::result_block(message, plain_text(content), i)?;
                push_turn(&mut turns, "user", vec![block]);
            }
            other => {
                return Err(refuse(format!(
                    "messages[{i}] has role {other:?}, which the bedrock provider cannot send; \
                     use system, user or assistant"
                )));
            }
        }
    }
    if !turns.iter().any(|(role, _)| *role == "user") {
        return Err(refuse(
            "the request has no user message: the Converse API needs at least one",
        ));
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(refuse(
            "n > 1 is not supported by the bedrock provider: send one request per reply",
        ));
    }
    if let Some(text) = json_instruction(body.get("response_format"))? {
        system.push(json!({"text": text}));
    }

    let mut out = Map::new();
    if !system.is_empty() {
        out.insert("system".into(), Value::Array(system));
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    out.insert("messages".into(), Value::Array(messages));
    let config = inference_config(call);
    if !config.is_empty() {
        out.insert("inferenceConfig".into(), Value::Object(config));
    }
    if let Some(Value::Array(list)) = body.get("tools")
        && !list.is_empty()
    {
        out.insert(
            "toolConfig".into(),
            tools::tool_config(list, body.get("tool_choice"))?,
        );
    }
    Ok(out)
}

/// Converse has no JSON mode: a JSON task's `response_format` becomes a last system
/// instruction (with the schema, if any), and the task's checks hold the answer to it.
fn json_instruction(format: Option<&Value>) -> Result<Option<String>, ProviderError> {
    let format = format.filter(|f| !f.is_null());
    match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => Ok(None),
        Some("json_object") => Ok(Some(
            "Answer with one JSON object only, no prose and no code fences.".to_owned(),
        )),
        Some("json_schema") => {
            let schema = format
                .and_then(|f| f.get("json_schema"))
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| refuse("response_format json_schema has no schema"))?;
            Ok(Some(format!(
                "Answer with one JSON object only, no prose and no code fences, matching this \
                 JSON Schema: {schema}"
            )))
        }
        Some(other) => Err(refuse(format!(
            "response_format type {other:?} is not supported by the bedrock provider; use \
             json_object or json_schema"
        ))),
    }
}

fn inference_config(call: ChatCall<'_>) -> Map<String, Value> {
    let body = call.body;
    let mut config = Map::new();
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .or(call.default_max_tokens.map(u64::from));
    if let Some(n) = max_tokens {
        config.insert("maxTokens".into(), Value::from(n));
    }
    for (from, to) in [("temperature", "temperature"), ("top_p", "topP")] {
        if let Some(v) = body.get(from).filter(|v| !v.is_null()) {
            config.insert(to.into(), v.clone());
        }
    }
    match body.get("stop") {
        Some(Value::String(s)) => {
            config.insert("stopSequences".into(), json!([s]));
        }
        Some(Value::Array(list)) if !list.is_empty() => {
            config.insert("stopSequences".into(), Value::Array(list.clone()));
        }
        _ => {}
    }
    config
}

/// A message's content as Converse blocks, each cache-marked part followed by a cache point.
/// A user message must have some; system blocks take text only.
fn blocks(
    content: Option<&Value>,
    i: usize,
    user: bool,
    system: bool,
) -> Result<Vec<Value>, ProviderError> {
    match content {
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        Some(Value::Array(list)) => {
            let mut out = Vec::with_capacity(list.len());
            for part in list {
                out.push(block(part, i, system)?);
                if part.get("cache_control").is_some_and(|c| !c.is_null()) {
                    out.push(cache_point());
                }
            }
            Ok(out)
        }
        None | Some(Value::Null) if !user => Ok(Vec::new()),
        _ => Err(refuse(format!(
            "messages[{i}] has no content: give a string or a list of parts"
        ))),
    }
}

fn block(part: &Value, i: usize, system: bool) -> Result<Value, ProviderError> {
    match part.get("type").and_then(Value::as_str).unwrap_or("") {
        "text" => Ok(json!({"text": part.get("text").and_then(Value::as_str).unwrap_or("")})),
        "image_url" if !system => {
            let url = shape::image_url(part, i)?;
            inline_image(url).ok_or_else(|| {
                refuse(format!(
                    "messages[{i}] has an image the bedrock provider cannot send: give it as a \
                     data:image/png (or jpeg, gif, webp);base64, url"
                ))
            })
        }
        other => Err(refuse(format!(
            "messages[{i}] has a content part of type {other:?}, which the bedrock provider \
             cannot send here; use text (or image_url in user messages)"
        ))),
    }
}

/// `data:image/png;base64,...` as an `image` block (Converse takes png, jpeg, gif, webp).
fn inline_image(url: &str) -> Option<Value> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let format = meta.strip_suffix(";base64")?.strip_prefix("image/")?;
    let format = match format {
        "jpg" => "jpeg",
        f @ ("png" | "jpeg" | "gif" | "webp") => f,
        _ => return None,
    };
    Some(json!({"image": {"format": format, "source": {"bytes": data}}}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn map(text: &str, default_max: Option<u32>) -> Result<Map<String, Value>, ProviderError> {
        let body: Map<String, Value> = serde_json::from_str(text).unwrap();
        converse_body(ChatCall {
            model_name: "anthropic.claude-x",
            body: &body,
            default_max_tokens: default_max,
        })
    }

    #[test]
    fn system_messages_and_inference_config_are_mapped() {
        let out = map(
            r#"{"model":"ignored","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"developer","content":[{"type":"text","text":"No emoji."}]},
                {"role":"user","content":"hi"},
                {"role":"assistant","content":"hello"},
                {"role":"user","content":[{"type":"text","text":"look"},
                  {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
                {"role":"user","content":"and this"}],
              "temperature":0.2,"top_p":0.9,"stop":["END","STOP"],"max_tokens":64}"#,
            Some(500),
        )
        .unwrap();
        assert!(!out.contains_key("model"), "the model goes in the url");
        assert_eq!(
            out["system"],
            json!([{"text": "Be brief."}, {"text": "No emoji."}])
        );
        let messages = out["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[0],
            json!({"role":"user","content":[{"text":"hi"}]})
        );
        assert_eq!(
            messages[1],
            json!({"role":"assistant","content":[{"text":"hello"}]})
        );
        assert_eq!(
            messages[2]["content"][1],
            json!({"image":{"format":"png","source":{"bytes":"AAAA"}}})
        );
        assert_eq!(messages[2]["content"][2], json!({"text":"and this"}));
        assert_eq!(
            out["inferenceConfig"],
            json!({"maxTokens": 64, "temperature": 0.2, "topP": 0.9,
                   "stopSequences": ["END", "STOP"]})
        );
        let out = map(r#"{"messages":[{"role":"user","content":"x"}]}"#, Some(77)).unwrap();
        assert_eq!(out["inferenceConfig"]["maxTokens"], 77);
        let out = map(r#"{"messages":[{"role":"user","content":"x"}]}"#, None).unwrap();
        assert!(out.get("inferenceConfig").is_none());
    }

    #[test]
    fn cache_marked_parts_are_followed_by_a_cache_point() {
        let out = map(
            r#"{"messages":[
                {"role":"system","content":[{"type":"text","text":"long rules",
                  "cache_control":{"type":"ephemeral"}}]},
                {"role":"user","content":[
                  {"type":"text","text":"template head","cache_control":{"type":"ephemeral"}},
                  {"type":"text","text":"the item"}]}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            out["system"],
            json!([{"text": "long rules"}, {"cachePoint": {"type": "default"}}])
        );
        assert_eq!(
            out["messages"][0]["content"],
            json!([{"text": "template head"}, {"cachePoint": {"type": "default"}},
                   {"text": "the item"}])
        );
        let plain = map(r#"{"messages":[{"role":"user","content":"x"}]}"#, None).unwrap();
        assert!(!Value::Object(plain).to_string().contains("cachePoint"));
    }

    #[test]
    fn json_tasks_get_a_system_instruction_with_the_schema() {
        let out = map(
            r#"{"messages":[{"role":"system","content":"Extract."},{"role":"user","content":"x"}],
              "response_format":{"type":"json_schema","json_schema":{"name":"s",
                "schema":{"type":"object","required":["a"]}}}}"#,
            None,
        )
        .unwrap();
        let system = out["system"].as_array().unwrap();
        assert_eq!(system.len(), 2);
        let last = system[1]["text"].as_str().unwrap();
        assert!(
            last.contains(r#"{"required":["a"],"type":"object"}"#),
            "{last}"
        );
        let out = map(
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
            None,
        )
        .unwrap();
        assert!(
            out["system"][0]["text"]
                .as_str()
                .unwrap()
                .contains("JSON object")
        );
    }

    #[test]
    fn a_tool_round_trip_is_sent_as_tool_blocks() {
        let out = map(
            r#"{"messages":[
                {"role":"user","content":"find x"},
                {"role":"assistant","content":null,"tool_calls":[{"id":"c1","type":"function",
                  "function":{"name":"lookup","arguments":"{\"q\":\"x\"}"}}]},
                {"role":"tool","tool_call_id":"c1","content":"42"}],
              "tools":[{"type":"function","function":{"name":"lookup","parameters":{"type":"object"}}}],
              "tool_choice":"required"}"#,
            None,
        )
        .unwrap();
        let messages = out["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 3);
        assert_eq!(
            messages[1]["content"][0],
            json!({"toolUse": {"toolUseId": "c1", "name": "lookup", "input": {"q": "x"}}})
        );
        assert_eq!(messages[2]["role"], "user");
        assert_eq!(
            messages[2]["content"][0]["toolResult"]["toolUseId"],
            json!("c1")
        );
        assert_eq!(
            out["toolConfig"]["tools"][0]["toolSpec"]["name"],
            json!("lookup")
        );
        assert_eq!(out["toolConfig"]["toolChoice"], json!({"any": {}}));
    }

    #[test]
    fn what_converse_cannot_take_is_refused() {
        for bad in [
            r#"{"messages":[{"role":"system","content":"only system"}]}"#,
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"data:image/tiff;base64,AA"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search"}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"grammar"}}"#,
            r#"{"prompt":"x"}"#,
        ] {
            let err = map(bad, None).unwrap_err();
            assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{bad}");
        }
    }
}
