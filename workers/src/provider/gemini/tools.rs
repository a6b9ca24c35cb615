//! Function calling, both ways: OpenAI `tools` / `tool_choice` / `tool_calls` / `tool` messages
//! as Gemini `functionDeclarations`, `toolConfig`, `functionCall` and `functionResponse` parts,
//! and `functionCall` parts of an answer back as OpenAI `tool_calls`.
//!
//! Gemini matches a function's response to its call by name, not id, so a `tool` message's
//! name is looked up from the `tool_call_id` of an earlier assistant call. The parameters go
//! as `parametersJsonSchema` (plain JSON Schema, as OpenAI tools carry it).
//!
//! Gemini 3 models sign their function calls (`thoughtSignature`, next to the `functionCall`)
//! and refuse a next turn that drops the signature. The OpenAI shape has no field for it, so
//! it rides in the tool call's id (`call_0~ts~SIGNATURE`), which OpenAI clients send back
//! unchanged, and goes back next to its `functionCall`.

/// Between a tool call id and the thought signature it carries; not in any base64 alphabet.
const SIGNATURE_MARK: &str = "~ts~";

use serde_json::{Map, Value, json};

use super::super::{ProviderError, ProviderErrorKind};
use crate::provider::shape;

fn refuse(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

/// `tools: [{functionDeclarations: [...]}]` from OpenAI function tools.
pub fn declarations(tools: &[Value]) -> Result<Value, ProviderError> {
    let declared = tools
        .iter()
        .map(|spec| {
            let function = spec
                .get("function")
                .ok_or_else(|| refuse("only function tools can be sent to the gemini provider"))?;
            let name = function
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| refuse("a tool has no function name"))?;
            let mut out = json!({"name": name});
            if let Some(d) = function.get("description").and_then(Value::as_str) {
                out["description"] = json!(d);
            }
            if let Some(p) = function.get("parameters").filter(|p| !p.is_null()) {
                out["parametersJsonSchema"] = p.clone();
            }
            Ok(out)
        })
        .collect::<Result<Vec<_>, ProviderError>>()?;
    Ok(json!([{"functionDeclarations": declared}]))
}

/// `toolConfig` from `tool_choice`: `auto` (or none given) is AUTO, `required` ANY, `none`
/// NONE, a named function ANY restricted to it.
pub fn tool_config(choice: Option<&Value>) -> Option<Value> {
    let (mode, only) = match choice? {
        Value::String(s) if s == "none" => ("NONE", None),
        Value::String(s) if s == "required" => ("ANY", None),
        Value::Object(o) => match o
            .get("function")
            .and_then(|f| f.get("name"))
            .and_then(Value::as_str)
        {
            Some(name) => ("ANY", Some(name)),
            None => ("AUTO", None),
        },
        _ => ("AUTO", None),
    };
    let mut config = json!({"mode": mode});
    if let Some(name) = only {
        config["allowedFunctionNames"] = json!([name]);
    }
    Some(json!({"functionCallingConfig": config}))
}

/// An assistant's `tool_calls` as `functionCall` parts; records each id's function name in
/// `names` for the `tool` messages that answer them.
pub fn call_parts(
    calls: &[Value],
    i: usize,
    names: &mut Map<String, Value>,
) -> Result<Vec<Value>, ProviderError> {
    calls
        .iter()
        .map(|call| {
            let (name, args) = shape::tool_call_parts(call, i)?;
            let id = call.get("id").and_then(Value::as_str);
            if let Some(id) = id {
                names.insert(id.to_owned(), json!(name));
            }
            let mut part = json!({"functionCall": {"name": name, "args": args}});
            if let Some((_, signature)) = id.and_then(|id| id.split_once(SIGNATURE_MARK)) {
                part["thoughtSignature"] = json!(signature);
            }
            Ok(part)
        })
        .collect()
}

/// A `tool` message as a `functionResponse` part. Its content is the response object when it
/// is a JSON object, else `{"content": text}` (Gemini wants an object).
pub fn response_part(
    message: &Value,
    text: String,
    i: usize,
    names: &Map<String, Value>,
) -> Result<Value, ProviderError> {
    let id = message
        .get("tool_call_id")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(format!("messages[{i}] (tool) has no tool_call_id")))?;
    let name = names.get(id).and_then(Value::as_str).ok_or_else(|| {
        refuse(format!(
            "messages[{i}] (tool) answers call {id:?}, which no earlier assistant message made"
        ))
    })?;
    let response = match serde_json::from_str::<Value>(&text) {
        Ok(object @ Value::Object(_)) => object,
        _ => json!({"content": text}),
    };
    Ok(json!({"functionResponse": {"name": name, "response": response}}))
}

/// The `functionCall` parts of an answer as OpenAI `tool_calls`, with ids `call_0`,
/// `call_1`, ... (Gemini gives none), each carrying its part's thought signature.
pub fn tool_calls(parts: &[Value]) -> Vec<Value> {
    parts
        .iter()
        .filter_map(|p| Some((p.get("functionCall")?, p.get("thoughtSignature"))))
        .enumerate()
        .map(|(n, (call, signature))| {
            let id = match signature.and_then(Value::as_str) {
                Some(sig) => format!("call_{n}{SIGNATURE_MARK}{sig}"),
                None => format!("call_{n}"),
            };
            json!({
                "id": id,
                "type": "function",
                "function": {
                    "name": call.get("name").cloned().unwrap_or(Value::Null),
                    "arguments": call.get("args").unwrap_or(&json!({})).to_string(),
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
    fn tools_and_choices_become_declarations_and_config() {
        let tools = json!([{"type": "function", "function": {"name": "lookup",
            "description": "find", "parameters": {"type": "object",
            "properties": {"q": {"type": "string"}}, "additionalProperties": false}}}]);
        let out = declarations(tools.as_array().unwrap()).unwrap();
        let f = &out[0]["functionDeclarations"][0];
        assert_eq!(f["name"], "lookup");
        assert_eq!(f["description"], "find");
        assert_eq!(f["parametersJsonSchema"]["additionalProperties"], false);
        assert!(declarations(&[json!({"type": "web_search"})]).is_err());

        assert_eq!(tool_config(None), None);
        let mode = |c: Value| tool_config(Some(&c)).unwrap()["functionCallingConfig"].clone();
        assert_eq!(mode(json!("auto")), json!({"mode": "AUTO"}));
        assert_eq!(mode(json!("required")), json!({"mode": "ANY"}));
        assert_eq!(mode(json!("none")), json!({"mode": "NONE"}));
        assert_eq!(
            mode(json!({"type": "function", "function": {"name": "lookup"}})),
            json!({"mode": "ANY", "allowedFunctionNames": ["lookup"]})
        );
    }

    #[test]
    fn calls_and_responses_pair_by_name() {
        let mut names = Map::new();
        let calls = json!([{"id": "c1", "type": "function",
            "function": {"name": "lookup", "arguments": "{\"q\":\"x\"}"}}]);
        let parts = call_parts(calls.as_array().unwrap(), 1, &mut names).unwrap();
        assert_eq!(
            parts[0],
            json!({"functionCall": {"name": "lookup", "args": {"q": "x"}}})
        );
        let tool = json!({"role": "tool", "tool_call_id": "c1"});
        assert_eq!(
            response_part(&tool, "42".into(), 2, &names).unwrap(),
            json!({"functionResponse": {"name": "lookup", "response": {"content": "42"}}})
        );
        assert_eq!(
            response_part(&tool, r#"{"n":42}"#.into(), 2, &names).unwrap()["functionResponse"]["response"],
            json!({"n": 42})
        );
        let stray = json!({"role": "tool", "tool_call_id": "nope"});
        assert!(response_part(&stray, "x".into(), 3, &names).is_err());
        let bad = json!([{"function": {"name": "f", "arguments": "{not json"}}]);
        assert!(call_parts(bad.as_array().unwrap(), 1, &mut names).is_err());
    }

    #[test]
    fn answer_calls_become_openai_tool_calls() {
        let parts = json!([{"text": "let me look"},
            {"functionCall": {"name": "lookup", "args": {"q": "x"}}},
            {"functionCall": {"name": "other"}}]);
        let calls = tool_calls(parts.as_array().unwrap());
        assert_eq!(calls.len(), 2);
        assert_eq!(calls[0]["id"], "call_0");
        assert_eq!(calls[0]["function"]["name"], "lookup");
        assert_eq!(calls[0]["function"]["arguments"], r#"{"q":"x"}"#);
        assert_eq!(calls[1]["function"]["arguments"], "{}");
    }

    #[test]
    fn thought_signatures_ride_in_the_id_and_go_back() {
        let parts = json!([{"functionCall": {"name": "lookup", "args": {}},
            "thoughtSignature": "CiQB0e2Kb+/Q=="}]);
        let calls = tool_calls(parts.as_array().unwrap());
        assert_eq!(calls[0]["id"], "call_0~ts~CiQB0e2Kb+/Q==");
        let mut names = Map::new();
        let sent = call_parts(calls.as_slice(), 1, &mut names).unwrap();
        assert_eq!(sent[0]["thoughtSignature"], "CiQB0e2Kb+/Q==");
        assert_eq!(sent[0]["functionCall"]["name"], "lookup");
        let tool = json!({"role": "tool", "tool_call_id": "call_0~ts~CiQB0e2Kb+/Q=="});
        assert!(response_part(&tool, "ok".into(), 2, &names).is_ok());
        // Ids of other providers carry none.
        let other = json!([{"id": "call_abc", "function": {"name": "f", "arguments": "{}"}}]);
        let sent = call_parts(other.as_array().unwrap(), 1, &mut names).unwrap();
        assert!(sent[0].get("thoughtSignature").is_none());
    }
}
