//! The built-in simulated provider: deterministic, free, and clearly labelled.
//!
//! It lets the quick start and the demos run with no accounts. Every reply is a pure function of
//! (seed, model name, request body): the same input always gives the same output, and a different
//! model gives a different text. Replies carry `"simulated": true` at the top level, their text
//! starts with `[simulated <model>]`, and [`Completion::simulated`] is set, so no one mistakes them
//! for a model's work.
//!
//! Token counts are estimates (about four characters per token, plus four per message). When the
//! request asks for JSON (`response_format` `json_object` or `json_schema`), the reply is a JSON
//! object; for a schema it has the schema's properties, filled by type.
//!
//! - `hash`: a stable hash of the request body; every reply is a pure function of it.
//! - `reply`: the summary-shaped text, or JSON for `json_object` / `json_schema` requests.

use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ChatCall, Completion, ProviderError};

mod hash;
mod reply;

use hash::request_hash;
use reply::{json_object_reply, json_schema_reply, reply_text};

/// Replies never grow past this many tokens, whatever the input.
const MAX_NATURAL_OUTPUT_TOKENS: u32 = 1024;

/// How the simulated provider behaves.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(from = "SimulatedConfigFile")]
pub struct SimulatedConfig {
    /// Time to wait before answering. Zero (the default) answers at once, without a timer.
    pub latency: Duration,
    /// A fixed reply length in tokens. `None` (the default) derives it from the input:
    /// `20 + input_tokens / 8`, at most 1024.
    pub output_tokens: Option<u32>,
    /// Mixed into every reply, so two deployments can give different (still deterministic) texts.
    pub seed: u64,
}

impl Default for SimulatedConfig {
    fn default() -> Self {
        Self {
            latency: Duration::ZERO,
            output_tokens: None,
            seed: 0,
        }
    }
}

/// The config file's shape: `latency_ms`, `output_tokens`, `seed`, all optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct SimulatedConfigFile {
    latency_ms: u64,
    output_tokens: Option<u32>,
    seed: u64,
}

impl From<SimulatedConfigFile> for SimulatedConfig {
    fn from(file: SimulatedConfigFile) -> Self {
        Self {
            latency: Duration::from_millis(file.latency_ms),
            output_tokens: file.output_tokens,
            seed: file.seed,
        }
    }
}

/// The built-in simulated provider.
#[derive(Debug, Clone)]
pub struct SimulatedProvider {
    config: SimulatedConfig,
}

impl SimulatedProvider {
    pub fn new(config: SimulatedConfig) -> Self {
        Self { config }
    }

    pub fn config(&self) -> &SimulatedConfig {
        &self.config
    }

    /// Answers one call. Never fails.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        if !self.config.latency.is_zero() {
            tokio::time::sleep(self.config.latency).await;
        }
        Ok(self.complete_now(call))
    }

    /// The synchronous core of [`Self::complete`], without the latency.
    pub fn complete_now(&self, call: ChatCall<'_>) -> Completion {
        // No prompt cache here: a body with cache points answers as the same body without.
        let flat = crate::provider::cache_point::flattened_body(call.body);
        let call = ChatCall {
            body: flat.as_ref().unwrap_or(call.body),
            ..call
        };
        let hash = request_hash(self.config.seed, call.model_name, call.body);
        let input = InputStats::of(call.body);
        let natural = self
            .config
            .output_tokens
            .unwrap_or_else(|| {
                let derived = 20u64.saturating_add(input.tokens / 8);
                u32::try_from(derived.min(u64::from(MAX_NATURAL_OUTPUT_TOKENS)))
                    .unwrap_or(MAX_NATURAL_OUTPUT_TOKENS)
            })
            .max(1);
        let limit = max_tokens(call.body).or(call.default_max_tokens);
        let (output_tokens, finish_reason) = match limit {
            Some(limit) if limit < natural => (limit, "length"),
            _ => (natural, "stop"),
        };

        let content = match json_mode(call.body) {
            JsonMode::None => reply_text(
                call.model_name,
                input.last_user,
                hash,
                output_tokens as usize,
            ),
            JsonMode::Object => json_object_reply(call.model_name, input.last_user, hash),
            JsonMode::Schema(schema) => {
                json_schema_reply(call.model_name, input.last_user, hash, schema)
            }
        };

        let id = format!("simcmpl-{hash:016x}");
        let input_tokens = input.tokens;
        let output_tokens = u64::from(output_tokens);
        let body = json!({
            "id": id,
            "object": "chat.completion",
            "created": 0,
            "model": call.model_name,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish_reason,
            }],
            "usage": {
                "prompt_tokens": input_tokens,
                "completion_tokens": output_tokens,
                "total_tokens": input_tokens + output_tokens,
                "prompt_tokens_details": {"cached_tokens": 0},
            },
            "simulated": true,
        });
        Completion {
            body,
            request_id: id,
            input_tokens,
            // The simulated provider keeps no prompt cache.
            cached_input_tokens: 0,
            cache_write_input_tokens: 0,
            output_tokens,
            finish_reason: Some(finish_reason.to_owned()),
            simulated: true,
            rate_limits: None,
        }
    }
}

/// Estimated input size and the text the reply is "about".
struct InputStats<'a> {
    tokens: u64,
    last_user: &'a str,
}

impl<'a> InputStats<'a> {
    fn of(body: &'a Map<String, Value>) -> Self {
        let mut chars: u64 = 0;
        let mut messages: u64 = 0;
        let mut last_user = "";
        if let Some(Value::Array(list)) = body.get("messages") {
            for message in list {
                messages += 1;
                let content = message.get("content");
                chars = chars.saturating_add(content_chars(content));
                if message.get("role").and_then(Value::as_str) == Some("user") {
                    last_user = first_text(content);
                }
            }
        } else if let Some(Value::String(prompt)) = body.get("prompt") {
            chars = prompt.chars().count() as u64;
            last_user = prompt;
        }
        Self {
            tokens: (chars / 4 + messages * 4).max(1),
            last_user,
        }
    }
}

/// Characters of a message's content: a string, or an array of parts with `text`.
fn content_chars(content: Option<&Value>) -> u64 {
    match content {
        Some(Value::String(text)) => text.chars().count() as u64,
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|part| part.get("text").and_then(Value::as_str))
            .map(|text| text.chars().count() as u64)
            .sum(),
        _ => 0,
    }
}

fn first_text(content: Option<&Value>) -> &str {
    match content {
        Some(Value::String(text)) => text,
        Some(Value::Array(parts)) => parts
            .iter()
            .find_map(|part| part.get("text").and_then(Value::as_str))
            .unwrap_or(""),
        _ => "",
    }
}

/// The body's own output limit: `max_completion_tokens` first, then `max_tokens`.
fn max_tokens(body: &Map<String, Value>) -> Option<u32> {
    ["max_completion_tokens", "max_tokens"]
        .iter()
        .find_map(|key| body.get(*key).and_then(Value::as_u64))
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX).max(1))
}

enum JsonMode<'a> {
    None,
    Object,
    Schema(&'a Value),
}

fn json_mode(body: &Map<String, Value>) -> JsonMode<'_> {
    let Some(format) = body.get("response_format") else {
        return JsonMode::None;
    };
    match format.get("type").and_then(Value::as_str) {
        Some("json_object") => JsonMode::Object,
        Some("json_schema") => match format.get("json_schema").and_then(|s| s.get("schema")) {
            Some(schema) => JsonMode::Schema(schema),
            None => JsonMode::Object,
        },
        _ => JsonMode::None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn body(v: Value) -> Map<String, Value> {
        match v {
            Value::Object(m) => m,
            _ => Map::new(),
        }
    }

    fn call<'a>(model: &'a str, body: &'a Map<String, Value>) -> ChatCall<'a> {
        ChatCall {
            model_name: model,
            body,
            default_max_tokens: None,
        }
    }

    #[test]
    fn cache_points_answer_as_the_plain_body() {
        let p = SimulatedProvider::new(SimulatedConfig::default());
        let plain = p.complete_now(ChatCall {
            model_name: "m",
            body: &body(json!({"messages":[{"role":"user","content":"Head: the doc"}]})),
            default_max_tokens: None,
        });
        let parts = p.complete_now(ChatCall {
            model_name: "m",
            body: &body(json!({"messages":[{"role":"user","content":[
                {"type":"text","text":"Head: ","cache_control":{"type":"ephemeral"}},
                {"type":"text","text":"the doc"}]}]})),
            default_max_tokens: None,
        });
        assert_eq!(plain.body, parts.body);
        assert_eq!(plain.input_tokens, parts.input_tokens);
    }

    #[test]
    fn config_reads_simple_field_names_and_rejects_unknown_ones() {
        let cfg: SimulatedConfig =
            serde_json::from_str(r#"{"latency_ms": 5, "output_tokens": 30}"#).unwrap();
        assert_eq!(cfg.latency, Duration::from_millis(5));
        assert_eq!(cfg.output_tokens, Some(30));
        let cfg: SimulatedConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, SimulatedConfig::default());
        assert!(serde_json::from_str::<SimulatedConfig>(r#"{"latency": 5}"#).is_err());
    }

    #[test]
    fn key_order_does_not_change_the_reply() {
        let p = SimulatedProvider::new(SimulatedConfig::default());
        let a: Map<String, Value> = serde_json::from_str(
            r#"{"temperature":0,"messages":[{"role":"user","content":"hi there"}]}"#,
        )
        .unwrap();
        let b: Map<String, Value> = serde_json::from_str(
            r#"{"messages":[{"role":"user","content":"hi there"}],"temperature":0}"#,
        )
        .unwrap();
        assert_eq!(
            p.complete_now(call("m", &a)).body,
            p.complete_now(call("m", &b)).body
        );
    }

    #[test]
    fn output_length_tracks_the_token_count() {
        let p = SimulatedProvider::new(SimulatedConfig {
            output_tokens: Some(50),
            ..SimulatedConfig::default()
        });
        let b = body(
            json!({"messages":[{"role":"user","content":"Summarise the quarterly report on widgets"}]}),
        );
        let c = p.complete_now(call("small-1", &b));
        let text = c.body["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(text.starts_with("[simulated small-1]\n- point 1: "));
        assert!((150..=200).contains(&text.len()), "{} chars", text.len());
        assert_eq!(c.output_tokens, 50);
    }

    #[test]
    fn seed_changes_the_reply() {
        let b = body(json!({"messages":[{"role":"user","content":"one two three four five six"}]}));
        let a = SimulatedProvider::new(SimulatedConfig::default()).complete_now(call("m", &b));
        let c = SimulatedProvider::new(SimulatedConfig {
            seed: 7,
            ..SimulatedConfig::default()
        })
        .complete_now(call("m", &b));
        assert_ne!(a.body["id"], c.body["id"]);
    }

    #[test]
    fn json_modes_give_json() {
        let p = SimulatedProvider::new(SimulatedConfig::default());
        let b = body(json!({
            "messages":[{"role":"user","content":"classify this"}],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {
                "type": "object",
                "properties": {
                    "label": {"type": "string", "enum": ["good", "bad"]},
                    "score": {"type": "integer", "minimum": 1, "maximum": 5},
                    "tags": {"type": "array", "items": {"type": "string"}},
                    "ok": {"type": "boolean"}
                },
                "required": ["label", "score"]
            }}}
        }));
        let c = p.complete_now(call("m", &b));
        let text = c.body["choices"][0]["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["label"], "good");
        let score = v["score"].as_i64().unwrap();
        assert!((1..=5).contains(&score));
        assert!(v["tags"].is_array());

        let b = body(json!({
            "messages":[{"role":"user","content":"classify this"}],
            "response_format": {"type": "json_object"}
        }));
        let c = p.complete_now(call("m", &b));
        let text = c.body["choices"][0]["message"]["content"].as_str().unwrap();
        let v: Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["simulated"], true);
    }

    #[test]
    fn multibyte_input_is_cut_on_char_boundaries() {
        let p = SimulatedProvider::new(SimulatedConfig::default());
        let b = body(
            json!({"max_tokens": 3, "messages":[{"role":"user","content":"日本語のテキスト 요약 ✓✓✓ émigré"}]}),
        );
        for model in ["a", "bb", "ccc", "dddd", "eeeee"] {
            let c = p.complete_now(call(model, &b));
            assert_eq!(c.finish_reason.as_deref(), Some("length"));
        }
    }
}
