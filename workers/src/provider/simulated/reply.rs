//! Reply generation: a summary-shaped text, or JSON for `json_object` / `json_schema` requests,
//! all drawn deterministically from the request hash.

use std::fmt::Write as _;

use serde_json::{Map, Value, json};

use super::hash::splitmix;

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
pub(super) fn reply_text(model: &str, last_user: &str, hash: u64, tokens: usize) -> String {
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

pub(super) fn json_object_reply(model: &str, last_user: &str, hash: u64) -> String {
    let mut summary = String::with_capacity(96);
    let _ = write!(summary, "[simulated {model}] ");
    first_words(last_user, 12, &mut summary);
    json!({"simulated": true, "summary": summary, "score": hash % 100}).to_string()
}

pub(super) fn json_schema_reply(model: &str, last_user: &str, hash: u64, schema: &Value) -> String {
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
