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

use std::fmt::Write as _;
use std::time::Duration;

use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::{ChatCall, Completion, ProviderError};

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
            },
            "simulated": true,
        });
        Completion {
            body,
            request_id: id,
            input_tokens,
            output_tokens,
            finish_reason: Some(finish_reason.to_owned()),
            simulated: true,
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

// ---- hashing: FNV-1a over a canonical walk of the body, stable across Rust versions ----

struct Fnv(u64);

impl Fnv {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;

    fn bytes(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 ^= u64::from(*byte);
            self.0 = self.0.wrapping_mul(Self::PRIME);
        }
    }

    fn tag(&mut self, tag: u8) {
        self.bytes(&[tag]);
    }

    fn str(&mut self, s: &str) {
        self.bytes(&(s.len() as u64).to_le_bytes());
        self.bytes(s.as_bytes());
    }

    fn value(&mut self, value: &Value) {
        match value {
            Value::Null => self.tag(0),
            Value::Bool(b) => self.bytes(&[1, u8::from(*b)]),
            Value::Number(n) => {
                self.tag(2);
                if let Some(i) = n.as_i64() {
                    self.bytes(&i.to_le_bytes());
                } else if let Some(u) = n.as_u64() {
                    self.bytes(&u.to_le_bytes());
                } else if let Some(f) = n.as_f64() {
                    self.bytes(&f.to_bits().to_le_bytes());
                }
            }
            Value::String(s) => {
                self.tag(3);
                self.str(s);
            }
            Value::Array(items) => {
                self.tag(4);
                self.bytes(&(items.len() as u64).to_le_bytes());
                for item in items {
                    self.value(item);
                }
            }
            Value::Object(map) => self.map(map),
        }
    }

    /// Keys are hashed in sorted order, so key order in the input does not matter.
    fn map(&mut self, map: &Map<String, Value>) {
        self.tag(5);
        self.bytes(&(map.len() as u64).to_le_bytes());
        if map.keys().is_sorted() {
            // The usual case (serde_json's default map is sorted): no allocation.
            for (key, value) in map {
                self.entry(key, value);
            }
        } else {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.cmp(b.0));
            for (key, value) in entries {
                self.entry(key, value);
            }
        }
    }

    fn entry(&mut self, key: &str, value: &Value) {
        // The `model` field is replaced by the model name, so it does not count.
        if key == "model" {
            return;
        }
        self.str(key);
        self.value(value);
    }
}

fn request_hash(seed: u64, model: &str, body: &Map<String, Value>) -> u64 {
    let mut h = Fnv(Fnv::OFFSET);
    h.bytes(&seed.to_le_bytes());
    h.str(model);
    h.map(body);
    // A final avalanche (splitmix64), so near-identical inputs give unrelated streams.
    splitmix(h.0)
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A tiny deterministic generator for word choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = splitmix(self.0);
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        (self.next() % n as u64) as usize
    }
}

const FILLER: &[&str] = &[
    "the",
    "main",
    "point",
    "is",
    "that",
    "overall",
    "notably",
    "key",
    "result",
    "shows",
    "a",
    "clear",
    "trend",
    "in",
    "summary",
    "this",
    "suggests",
    "further",
    "review",
    "of",
    "data",
    "indicates",
    "important",
    "detail",
    "and",
    "context",
    "matters",
    "for",
    "next",
    "steps",
];

/// Up to `n` whitespace-separated words of `text`, joined by single spaces.
fn first_words(text: &str, n: usize, out: &mut String) {
    for (i, word) in text.split_whitespace().take(n).enumerate() {
        if i > 0 {
            out.push(' ');
        }
        out.push_str(word);
    }
}

/// A plausible, summary-shaped reply of about `tokens` tokens (four characters each).
fn reply_text(model: &str, last_user: &str, hash: u64, tokens: usize) -> String {
    let mut out = String::with_capacity(tokens.saturating_mul(4).min(8192) + model.len() + 16);
    let _ = write!(out, "[simulated {model}]");
    // The label is never cut, even when the limit is tiny.
    let budget = tokens.saturating_mul(4).max(out.len());
    let words: Vec<&str> = last_user.split_whitespace().take(64).collect();
    let mut rng = Rng(hash);
    let mut bullet = 0u32;
    // Each round adds at least one word, so this ends after at most `budget` rounds.
    for _ in 0..budget {
        if out.len() >= budget {
            break;
        }
        if bullet == 0 || rng.below(9) == 0 {
            bullet += 1;
            let _ = write!(out, "\n- point {bullet}:");
        }
        out.push(' ');
        if !words.is_empty() && rng.below(2) == 0 {
            out.push_str(words[rng.below(words.len())]);
        } else {
            out.push_str(FILLER[rng.below(FILLER.len())]);
        }
    }
    truncate_at_char_boundary(&mut out, budget);
    out
}

fn truncate_at_char_boundary(s: &mut String, max: usize) {
    if s.len() <= max {
        return;
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
}

fn json_object_reply(model: &str, last_user: &str, hash: u64) -> String {
    let mut summary = String::with_capacity(96);
    let _ = write!(summary, "[simulated {model}] ");
    first_words(last_user, 12, &mut summary);
    json!({"simulated": true, "summary": summary, "score": hash % 100}).to_string()
}

fn json_schema_reply(model: &str, last_user: &str, hash: u64, schema: &Value) -> String {
    let mut rng = Rng(hash);
    let label = format!("[simulated {model}]");
    let value = value_for_schema(schema, &label, last_user, &mut rng, 0);
    value.to_string()
}

/// A value that fits `schema` well enough for the common validators: objects with every
/// property, strings (or the first `enum` value), numbers within `minimum`/`maximum`.
fn value_for_schema(schema: &Value, label: &str, text: &str, rng: &mut Rng, depth: u32) -> Value {
    if depth > 6 {
        return Value::Null;
    }
    if let Some(first) = schema
        .get("enum")
        .and_then(Value::as_array)
        .and_then(|v| v.first())
    {
        return first.clone();
    }
    if let Some(constant) = schema.get("const") {
        return constant.clone();
    }
    let ty = match schema.get("type") {
        Some(Value::String(t)) => t.as_str(),
        Some(Value::Array(types)) => types
            .iter()
            .filter_map(Value::as_str)
            .find(|t| *t != "null")
            .unwrap_or("null"),
        _ if schema.get("properties").is_some() => "object",
        _ => "string",
    };
    match ty {
        "object" => {
            let mut out = Map::new();
            if let Some(props) = schema.get("properties").and_then(Value::as_object) {
                for (key, sub) in props {
                    out.insert(
                        key.clone(),
                        value_for_schema(sub, label, text, rng, depth + 1),
                    );
                }
            }
            Value::Object(out)
        }
        "array" => {
            let min = schema
                .get("minItems")
                .and_then(Value::as_u64)
                .unwrap_or(1)
                .min(8);
            let items = schema.get("items").unwrap_or(&Value::Null);
            Value::Array(
                (0..min.max(1))
                    .map(|_| value_for_schema(items, label, text, rng, depth + 1))
                    .collect(),
            )
        }
        "integer" | "number" => {
            let lo = schema.get("minimum").and_then(Value::as_i64).unwrap_or(0);
            let hi = schema
                .get("maximum")
                .and_then(Value::as_i64)
                .unwrap_or(lo.saturating_add(100));
            let span = hi.saturating_sub(lo).max(0) as u64 + 1;
            json!(lo.saturating_add((rng.next() % span) as i64))
        }
        "boolean" => Value::Bool(rng.next().is_multiple_of(2)),
        "null" => Value::Null,
        _ => {
            let mut s = String::with_capacity(label.len() + 64);
            s.push_str(label);
            s.push(' ');
            first_words(text, 8, &mut s);
            Value::String(s)
        }
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
