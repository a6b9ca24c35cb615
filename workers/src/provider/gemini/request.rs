//! An OpenAI chat completions body, as a Gemini `generateContent` request.
//!
//! - `system` / `developer` messages are joined (blank line between) into `systemInstruction`;
//! - `user` / `assistant` messages become `contents` with roles `user` / `model`, each a list
//!   of `parts` (text, and images from `data:` URLs as `inlineData`); consecutive turns of one
//!   role are merged, as the API wants roles to alternate;
//! - `generationConfig`: `maxOutputTokens` from `max_tokens`, `max_completion_tokens` or the
//!   call's default; `temperature`, `topP`, `topK`, `seed`, `presencePenalty`,
//!   `frequencyPenalty` pass through; `stop` becomes `stopSequences`;
//! - `response_format` `json_object` sets `responseMimeType: application/json`, and
//!   `json_schema` adds the schema as `responseJsonSchema` (plain JSON Schema, unlike the
//!   OpenAPI subset `responseSchema` takes), so the model is held to it;
//! - function `tools`, `tool_choice`, assistant `tool_calls` and `tool` messages go through
//!   [`super::tools`];
//! - what Gemini cannot take (`n` > 1, other roles, audio parts, images by URL) is refused
//!   with a message saying what to do, rather than silently dropped.

use serde_json::{Map, Value, json};

use super::super::{ChatCall, ProviderError, ProviderErrorKind};
use super::tools;
use crate::provider::shape::{self, plain_text, push_turn};

fn refuse(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// The `generateContent` request for `call`, or why it cannot be expressed.
pub fn generate_body(call: ChatCall<'_>) -> Result<Map<String, Value>, ProviderError> {
    // Gemini caches long prefixes by itself: cache points go, their parts joined back.
    let flat = crate::provider::cache_point::flattened_body(call.body);
    let body = flat.as_ref().unwrap_or(call.body);
    let messages = match body.get("messages") {
        Some(Value::Array(m)) => m.as_slice(),
        _ => return Err(refuse("the request body has no `messages` array")),
    };
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    // Tool call ids to function names, for the `tool` messages that answer them.
    let mut names = Map::new();
    for (i, message) in messages.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).unwrap_or("");
        let content = message.get("content");
        match role {
            "system" | "developer" => {
                let text = plain_text(content);
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => push_turn(&mut turns, "user", parts(content, i, true)?),
            "assistant" => {
                let mut said = parts(content, i, false)?;
                if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
                    said.extend(tools::call_parts(calls, i, &mut names)?);
                }
                push_turn(&mut turns, "model", said);
            }
            "tool" => {
                let part = tools::response_part(message, plain_text(content), i, &names)?;
                push_turn(&mut turns, "user", vec![part]);
            }
            other => {
                return Err(refuse(format!(
                    "messages[{i}] has role {other:?}, which the gemini provider cannot send; \
                     use system, user or assistant"
                )));
            }
        }
    }
    if !turns.iter().any(|(role, _)| *role == "user") {
        return Err(refuse(
            "the request has no user message: the Gemini API needs at least one",
        ));
    }
    if body.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
        return Err(refuse(
            "n > 1 is not supported by the gemini provider: send one request per reply",
        ));
    }

    let mut out = Map::new();
    if !system.is_empty() {
        out.insert(
            "systemInstruction".into(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    let contents = turns
        .into_iter()
        .map(|(role, parts)| json!({"role": role, "parts": parts}))
        .collect();
    out.insert("contents".into(), Value::Array(contents));
    if let Some(Value::Array(list)) = body.get("tools")
        && !list.is_empty()
    {
        out.insert("tools".into(), tools::declarations(list)?);
        if let Some(config) = tools::tool_config(body.get("tool_choice")) {
            out.insert("toolConfig".into(), config);
        }
    }
    out.insert(
        "generationConfig".into(),
        Value::Object(generation_config(call)?),
    );
    Ok(out)
}

fn generation_config(call: ChatCall<'_>) -> Result<Map<String, Value>, ProviderError> {
    let body = call.body;
    let mut config = Map::new();
    let max_tokens = ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|k| body.get(*k).and_then(Value::as_u64))
        .or(call.default_max_tokens.map(u64::from));
    if let Some(n) = max_tokens {
        config.insert("maxOutputTokens".into(), Value::from(n));
    }
    for (from, to) in [
        ("temperature", "temperature"),
        ("top_p", "topP"),
        ("top_k", "topK"),
        ("seed", "seed"),
        ("presence_penalty", "presencePenalty"),
        ("frequency_penalty", "frequencyPenalty"),
    ] {
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
    let format = body.get("response_format").filter(|f| !f.is_null());
    match format.and_then(|f| f.get("type")).and_then(Value::as_str) {
        None | Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".into(), json!("application/json"));
        }
        Some("json_schema") => {
            let schema = format
                .and_then(|f| f.get("json_schema"))
                .and_then(|s| s.get("schema"))
                .ok_or_else(|| refuse("response_format json_schema has no schema"))?;
            config.insert("responseMimeType".into(), json!("application/json"));
            config.insert("responseJsonSchema".into(), schema.clone());
        }
        Some(other) => {
            return Err(refuse(format!(
                "response_format type {other:?} is not supported by the gemini provider; use \
                 json_object or json_schema"
            )));
        }
    }
    Ok(config)
}

/// A message's content as Gemini parts. A user message must have some.
fn parts(content: Option<&Value>, i: usize, user: bool) -> Result<Vec<Value>, ProviderError> {
    match content {
        Some(Value::String(s)) if s.is_empty() => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(vec![json!({"text": s})]),
        Some(Value::Array(list)) => list.iter().map(|p| part(p, i)).collect(),
        None | Some(Value::Null) if !user => Ok(Vec::new()),
        _ => Err(refuse(format!(
            "messages[{i}] has no content: give a string or a list of parts"
        ))),
    }
}

fn part(part: &Value, i: usize) -> Result<Value, ProviderError> {
    match part.get("type").and_then(Value::as_str).unwrap_or("") {
        "text" => Ok(json!({"text": part.get("text").and_then(Value::as_str).unwrap_or("")})),
        "image_url" => {
            let url = shape::image_url(part, i)?;
            inline_image(url).ok_or_else(|| {
                refuse(format!(
                    "messages[{i}] has an image by url; the gemini provider sends images inline \
                     only: give it as a data:image/...;base64, url"
                ))
            })
        }
        other => Err(refuse(format!(
            "messages[{i}] has a content part of type {other:?}, which the gemini provider \
             cannot send; use text or image_url"
        ))),
    }
}

/// `data:image/png;base64,...` as an `inlineData` part.
fn inline_image(url: &str) -> Option<Value> {
    let rest = url.strip_prefix("data:")?;
    let (meta, data) = rest.split_once(',')?;
    let mime_type = meta.strip_suffix(";base64")?;
    Some(json!({"inlineData": {"mimeType": mime_type, "data": data}}))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn map(text: &str, default_max: Option<u32>) -> Result<Map<String, Value>, ProviderError> {
        let body: Map<String, Value> = serde_json::from_str(text).unwrap();
        generate_body(ChatCall {
            model_name: "gemini-x",
            body: &body,
            default_max_tokens: default_max,
        })
    }

    #[test]
    fn cache_points_are_flattened_away() {
        let out = map(
            r#"{"messages":[
                {"role":"system","content":[{"type":"text","text":"Rules ","cache_control":{"type":"ephemeral"}},
                  {"type":"text","text":"in fr"}]},
                {"role":"user","content":[{"type":"text","text":"Head: ","cache_control":{"type":"ephemeral"}},
                  {"type":"text","text":"doc"}]}]}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Rules in fr"}]})
        );
        assert_eq!(
            out["contents"][0],
            json!({"role":"user","parts":[{"text":"Head: doc"}]})
        );
        assert!(
            !serde_json::to_string(&out)
                .unwrap()
                .contains("cache_control")
        );
    }

    #[test]
    fn system_contents_and_generation_config_are_mapped() {
        let out = map(
            r#"{"model":"ignored","messages":[
                {"role":"system","content":"Be brief."},
                {"role":"developer","content":[{"type":"text","text":"No emoji."}]},
                {"role":"user","content":"hi"},
                {"role":"assistant","content":"hello"},
                {"role":"user","content":[{"type":"text","text":"look"},
                  {"type":"image_url","image_url":{"url":"data:image/png;base64,AAAA"}}]},
                {"role":"user","content":"and this"}],
              "temperature":0.2,"top_p":0.9,"stop":"END","seed":7,"max_tokens":64}"#,
            Some(500),
        )
        .unwrap();
        assert!(!out.contains_key("model"), "the model goes in the url");
        assert_eq!(
            out["systemInstruction"],
            json!({"parts": [{"text": "Be brief.\n\nNo emoji."}]})
        );
        let contents = out["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3);
        assert_eq!(contents[0], json!({"role":"user","parts":[{"text":"hi"}]}));
        assert_eq!(
            contents[1],
            json!({"role":"model","parts":[{"text":"hello"}]})
        );
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(
            contents[2]["parts"][1],
            json!({"inlineData":{"mimeType":"image/png","data":"AAAA"}})
        );
        assert_eq!(contents[2]["parts"][2], json!({"text":"and this"}));
        let config = &out["generationConfig"];
        assert_eq!(config["maxOutputTokens"], 64);
        assert_eq!(config["temperature"], 0.2);
        assert_eq!(config["topP"], 0.9);
        assert_eq!(config["seed"], 7);
        assert_eq!(config["stopSequences"], json!(["END"]));
        assert!(config.get("responseMimeType").is_none());
    }

    #[test]
    fn max_tokens_come_from_either_field_or_the_default() {
        let out = map(r#"{"messages":[{"role":"user","content":"x"}]}"#, Some(77)).unwrap();
        assert_eq!(out["generationConfig"]["maxOutputTokens"], 77);
        let out = map(
            r#"{"max_completion_tokens":5,"messages":[{"role":"user","content":"x"}]}"#,
            Some(77),
        )
        .unwrap();
        assert_eq!(out["generationConfig"]["maxOutputTokens"], 5);
        let out = map(r#"{"messages":[{"role":"user","content":"x"}]}"#, None).unwrap();
        assert!(out["generationConfig"].get("maxOutputTokens").is_none());
    }

    #[test]
    fn json_tasks_ask_for_json_with_the_schema() {
        let out = map(
            r#"{"messages":[{"role":"user","content":"x"}],
              "response_format":{"type":"json_schema","json_schema":{"name":"s",
                "schema":{"type":"object","properties":{"a":{"type":"integer"}}}}}}"#,
            None,
        )
        .unwrap();
        let config = &out["generationConfig"];
        assert_eq!(config["responseMimeType"], "application/json");
        assert_eq!(
            config["responseJsonSchema"],
            json!({"type":"object","properties":{"a":{"type":"integer"}}})
        );
        let out = map(
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_object"}}"#,
            None,
        )
        .unwrap();
        assert_eq!(
            out["generationConfig"]["responseMimeType"],
            "application/json"
        );
        assert!(out["generationConfig"].get("responseJsonSchema").is_none());
    }

    #[test]
    fn a_tool_round_trip_is_sent_as_function_parts() {
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
        let contents = out["contents"].as_array().unwrap();
        assert_eq!(contents.len(), 3);
        assert_eq!(contents[1]["role"], "model");
        assert_eq!(contents[1]["parts"][0]["functionCall"]["name"], "lookup");
        assert_eq!(contents[2]["role"], "user");
        assert_eq!(
            contents[2]["parts"][0]["functionResponse"],
            json!({"name": "lookup", "response": {"content": "42"}})
        );
        assert_eq!(out["tools"][0]["functionDeclarations"][0]["name"], "lookup");
        assert_eq!(out["toolConfig"]["functionCallingConfig"]["mode"], "ANY");
    }

    #[test]
    fn what_gemini_cannot_take_is_refused() {
        for bad in [
            r#"{"messages":[{"role":"system","content":"only system"}]}"#,
            r#"{"messages":[{"role":"wizard","content":"x"}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"n":2}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"input_audio"}]}]}"#,
            r#"{"messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://x/y.png"}}]}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"tools":[{"type":"web_search"}]}"#,
            r#"{"messages":[{"role":"user","content":"x"},{"role":"tool","tool_call_id":"c9","content":"1"}]}"#,
            r#"{"messages":[{"role":"user","content":"x"}],"response_format":{"type":"json_schema","json_schema":{}}}"#,
            r#"{"prompt":"x"}"#,
        ] {
            let err = map(bad, None).unwrap_err();
            assert_eq!(err.kind, ProviderErrorKind::InvalidRequest, "{bad}");
        }
    }
}
