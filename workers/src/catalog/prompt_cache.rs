//! Cache points: where a task's rendered body marks the end of its static prefix, so providers
//! with explicit prompt caching (Anthropic, Bedrock) reuse it across a batch's items.
//!
//! The static prefix of a task is its system prompt when the system template has no tag,
//! followed by the prompt template's text before its first `{{` / `{%` / `{#` (or the system
//! template's head, when the system itself has a tag). With `prompt_cache = "auto"` and a
//! static prefix of at least [`MIN_CACHED_PREFIX_TOKENS`] estimated tokens, the message
//! holding its end gets an array content of text parts, the first carrying
//! `"cache_control": {"type": "ephemeral"}` (the LiteLLM / Anthropic-compatible convention);
//! the parts concatenate to exactly the text rendered without a cache point, so kinds that
//! cache automatically (openai, azure_openai, gemini) flatten them back.

use serde::Deserialize;
use serde_json::{Value, json};

pub use crate::provider::cache_point::{flatten, has_cache_point};

/// `[tasks.X] prompt_cache`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PromptCacheMode {
    /// A cache point after a long enough static prefix.
    #[default]
    Auto,
    /// No cache point (and no cache-warm dispatch).
    Off,
}

/// The shortest static prefix worth a cache point, in estimated tokens (four characters a
/// token): Anthropic's minimum for Sonnet and Opus, and OpenAI's for automatic caching.
/// Haiku's minimum is 2048; a shorter cache point is ignored there, never refused.
pub const MIN_CACHED_PREFIX_TOKENS: u64 = 1024;

/// The literal text a template starts with, before its first tag.
pub fn static_head(template: &str) -> &str {
    let end = ["{{", "{%", "{#"]
        .iter()
        .filter_map(|tag| template.find(tag))
        .min()
        .unwrap_or(template.len());
    &template[..end]
}

/// Whether a template renders the same text for every document.
pub fn is_static(template: &str) -> bool {
    static_head(template).len() == template.len()
}

/// Rough token estimate of a text, as the fake provider and the router's rough counts have it.
pub fn estimated_tokens(text: &str) -> u64 {
    (text.chars().count() / 4) as u64
}

/// What a task's templates say about its static prefix, computed once.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CachePlan {
    /// The system template has no tag: all of the rendered system prompt is static.
    pub system_static: bool,
    /// The literal head of the system template (when it has a tag).
    pub system_head: String,
    /// The literal head of the prompt template.
    pub prompt_head: String,
}

impl CachePlan {
    pub fn of(system: Option<&str>, prompt: &str) -> Self {
        Self {
            system_static: system.is_some_and(is_static),
            system_head: system.map(static_head).unwrap_or_default().to_owned(),
            prompt_head: static_head(prompt).to_owned(),
        }
    }

    /// The contents of the system and user messages for one rendered document: plain strings,
    /// or, when the static prefix is long enough, part arrays with a cache point at its end.
    pub fn contents(&self, system: Option<String>, prompt: String) -> (Option<Value>, Value) {
        let plain = |system: Option<String>, prompt: String| {
            (system.map(Value::String), Value::String(prompt))
        };
        let Some(system) = system else {
            // No system prompt: the prompt's head alone is the static prefix.
            return match split(&prompt, &self.prompt_head) {
                Some(n) if long_enough(&prompt[..n]) => (None, marked(&prompt, n)),
                _ => plain(None, prompt),
            };
        };
        if !self.system_static {
            return match split(&system, &self.system_head) {
                Some(n) if long_enough(&system[..n]) => (Some(marked(&system, n)), prompt.into()),
                _ => plain(Some(system), prompt),
            };
        }
        let head = split(&prompt, &self.prompt_head).unwrap_or(0);
        let prefix_tokens = estimated_tokens(&system) + estimated_tokens(&prompt[..head]);
        if prefix_tokens < MIN_CACHED_PREFIX_TOKENS {
            return plain(Some(system), prompt);
        }
        if head == 0 {
            // The cache point closes the system prompt.
            return (Some(marked(&system, system.len())), prompt.into());
        }
        // One point at the end of the prompt's head covers the system prompt before it.
        (Some(Value::String(system)), marked(&prompt, head))
    }
}

fn long_enough(text: &str) -> bool {
    estimated_tokens(text) >= MIN_CACHED_PREFIX_TOKENS
}

/// Where the static head ends in a rendered text: its byte length when the text starts with
/// it. A `{{-` tag trims the whitespace before it, so a head is also tried without its
/// trailing whitespace.
fn split(rendered: &str, head: &str) -> Option<usize> {
    [head, head.trim_end()]
        .into_iter()
        .find(|h| !h.is_empty() && rendered.starts_with(h))
        .map(str::len)
}

/// `text` as parts: its first `at` bytes with a cache point, then the rest (when any).
fn marked(text: &str, at: usize) -> Value {
    let (head, rest) = text.split_at(at);
    let mut parts = vec![json!({
        "type": "text",
        "text": head,
        "cache_control": {"type": "ephemeral"},
    })];
    if !rest.is_empty() {
        parts.push(json!({"type": "text", "text": rest}));
    }
    Value::Array(parts)
}

/// The static prefix a body's last cache point closes: its length in characters, and a hash
/// of its text (equal prefixes hit the same provider cache entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CachedPrefix {
    pub chars: u64,
    pub hash: u64,
}

impl CachedPrefix {
    /// Estimated tokens, four characters a token.
    pub fn tokens(&self) -> u64 {
        self.chars / 4
    }
}

/// The prefix up to a body's last cache point, if it has one.
pub fn cached_prefix(body: &serde_json::Map<String, Value>) -> Option<CachedPrefix> {
    use std::hash::Hasher as _;
    let messages = body.get("messages")?.as_array()?;
    let mut hasher = std::hash::DefaultHasher::new();
    let mut chars = 0u64;
    let mut last = None;
    for message in messages {
        let parts = match message.get("content") {
            Some(Value::String(s)) => {
                hasher.write(s.as_bytes());
                chars += s.chars().count() as u64;
                continue;
            }
            Some(Value::Array(parts)) => parts,
            _ => continue,
        };
        for part in parts {
            let text = part.get("text").and_then(Value::as_str).unwrap_or("");
            hasher.write(text.as_bytes());
            chars += text.chars().count() as u64;
            if part.get("cache_control").is_some() {
                last = Some(CachedPrefix {
                    chars,
                    hash: hasher.clone().finish(),
                });
            }
        }
    }
    last
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn long(n_tokens: usize) -> String {
        "abcd".repeat(n_tokens)
    }

    #[test]
    fn heads_stop_at_the_first_tag() {
        assert_eq!(static_head("Doc: {{ text }} and {% if x %}"), "Doc: ");
        assert_eq!(static_head("{# c #}x"), "");
        assert_eq!(static_head("plain"), "plain");
        assert!(is_static("plain") && !is_static("a {{ b }}"));
    }

    #[test]
    fn a_long_static_system_gets_the_point_itself() {
        let system = long(1100);
        let plan = CachePlan::of(Some(&system), "{{ text }}");
        let (s, p) = plan.contents(Some(system.clone()), "the doc".into());
        let s = s.unwrap();
        assert_eq!(s[0]["cache_control"], json!({"type": "ephemeral"}));
        assert_eq!(s[0]["text"], system.as_str());
        assert_eq!(s.as_array().unwrap().len(), 1);
        assert_eq!(p, json!("the doc"));
    }

    #[test]
    fn a_prompt_head_takes_the_point_and_the_parts_concatenate_back() {
        let system = long(600);
        let head = format!("Rules: {}\nDocument: ", long(500));
        let template = format!("{head}{{{{ text }}}}");
        let plan = CachePlan::of(Some(&system), &template);
        let prompt = format!("{head}the doc");
        let (s, p) = plan.contents(Some(system.clone()), prompt.clone());
        assert_eq!(s, Some(json!(system)));
        assert_eq!(p[0]["text"], head.as_str());
        assert_eq!(p[0]["cache_control"]["type"], "ephemeral");
        assert_eq!(p[1], json!({"type": "text", "text": "the doc"}));
        assert_eq!(flatten(&p), json!(prompt));
    }

    #[test]
    fn short_prefixes_and_templated_systems_stay_plain_or_split_right() {
        let plan = CachePlan::of(Some("Be brief."), "Doc: {{ text }}");
        let (s, p) = plan.contents(Some("Be brief.".into()), "Doc: x".into());
        assert_eq!((s, p), (Some(json!("Be brief.")), json!("Doc: x")));

        let head = long(1100);
        let system_template = format!("{head}{{{{ lang }}}}");
        let plan = CachePlan::of(Some(&system_template), "{{ text }}");
        let (s, p) = plan.contents(Some(format!("{head}fr")), "x".into());
        let s = s.unwrap();
        assert_eq!(s[0]["text"], head.as_str());
        assert_eq!(s[1]["text"], "fr");
        assert_eq!(p, json!("x"));

        // No system: the prompt's head alone.
        let plan = CachePlan::of(None, &format!("{head}{{{{ text }}}}"));
        let (s, p) = plan.contents(None, format!("{head}doc"));
        assert!(s.is_none());
        assert!(has_cache_point(&p));
    }

    #[test]
    fn a_trimming_tag_still_splits_on_the_head() {
        let head = format!("{}\n\n", long(1100));
        let plan = CachePlan::of(None, &format!("{head}{{{{- text }}}}"));
        let rendered = format!("{}doc", head.trim_end());
        let (_, p) = plan.contents(None, rendered.clone());
        assert_eq!(p[0]["text"], head.trim_end());
        assert_eq!(flatten(&p), json!(rendered));
    }

    #[test]
    fn the_cached_prefix_ends_at_the_last_point_and_hashes_its_text() {
        let system = long(1100);
        let plan = CachePlan::of(Some(&system), "{{ text }}");
        let body = |doc: &str| {
            let (s, p) = plan.contents(Some(system.clone()), doc.into());
            let m = json!({"messages": [
                {"role": "system", "content": s.unwrap()},
                {"role": "user", "content": p}]});
            m.as_object().unwrap().clone()
        };
        let a = cached_prefix(&body("one")).unwrap();
        assert_eq!(a.tokens(), 1100);
        assert_eq!(Some(a), cached_prefix(&body("two")));
        let plain = json!({"messages": [{"role": "user", "content": "x"}]});
        assert!(cached_prefix(plain.as_object().unwrap()).is_none());
    }
}
