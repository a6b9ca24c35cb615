//! Cache points in an OpenAI-shaped body (the shared convention): a message's `content` may
//! be an array of text parts, one carrying `"cache_control": {"type": "ephemeral"}`, meaning
//! "a cache point right after this text". The kinds with explicit caching (anthropic, bedrock)
//! map them; the kinds that cache by themselves (openai, azure_openai, gemini, simulated) take
//! the body through [`flattened_body`].

use serde_json::{Map, Value};

/// Whether a content carries a cache point.
pub fn has_cache_point(content: &Value) -> bool {
    content
        .as_array()
        .is_some_and(|parts| parts.iter().any(|p| p.get("cache_control").is_some()))
}

/// The providers that cache automatically: a content carrying a cache point, back as what
/// they take. All-text parts become one string (the parts concatenate to the rendered text);
/// other parts keep their shape without `cache_control`.
pub fn flatten(content: &Value) -> Value {
    let Some(parts) = content.as_array().filter(|_| has_cache_point(content)) else {
        return content.clone();
    };
    let texts: Option<Vec<&str>> = parts
        .iter()
        .map(|p| match p.get("type").and_then(Value::as_str) {
            Some("text") => p.get("text").and_then(Value::as_str),
            _ => None,
        })
        .collect();
    if let Some(texts) = texts {
        return Value::String(texts.concat());
    }
    Value::Array(
        parts
            .iter()
            .map(|p| {
                let mut p = p.clone();
                if let Some(o) = p.as_object_mut() {
                    o.remove("cache_control");
                }
                p
            })
            .collect(),
    )
}

/// [`flatten`] on every message of an OpenAI-shaped body; `None` when none carries a point.
pub fn flattened_body(body: &Map<String, Value>) -> Option<Map<String, Value>> {
    let messages = body.get("messages")?.as_array()?;
    if !messages
        .iter()
        .any(|m| m.get("content").is_some_and(has_cache_point))
    {
        return None;
    }
    let mut out = body.clone();
    let flat: Vec<Value> = messages
        .iter()
        .map(|m| {
            let mut m = m.clone();
            if let Some(content) = m.get("content").filter(|c| has_cache_point(c)) {
                m["content"] = flatten(content);
            }
            m
        })
        .collect();
    out.insert("messages".into(), Value::Array(flat));
    Some(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flatten_keeps_images_and_drops_only_cache_control() {
        let content = json!([
            {"type": "text", "text": "a", "cache_control": {"type": "ephemeral"}},
            {"type": "image_url", "image_url": {"url": "data:image/png;base64,AA"}}
        ]);
        let out = flatten(&content);
        assert_eq!(out[0], json!({"type": "text", "text": "a"}));
        assert_eq!(out[1]["type"], "image_url");
        // Without a point, untouched (two text parts stay two parts).
        let two = json!([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]);
        assert_eq!(flatten(&two), two);
        let body: serde_json::Map<String, Value> =
            serde_json::from_value(json!({"messages": [{"role": "user", "content": two}]}))
                .unwrap();
        assert!(flattened_body(&body).is_none());
    }
}
