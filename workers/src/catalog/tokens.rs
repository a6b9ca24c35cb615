//! Prompt token estimates: tiktoken for OpenAI model families, a calibrated fallback for others.
//!
//! The tokenizers load on first use (o200k takes a few hundred milliseconds and ~45 MB) and are
//! shared by the whole process. Models without a known tokenizer never touch them: their
//! estimate is [`rough_prompt_tokens`] times a ratio learned from the provider's reported usage.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

use serde_json::{Map, Value};
use tiktoken_rs::CoreBPE;

use crate::catalog::ModelSpec;

/// How a model's prompts are counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Encoding {
    /// `o200k_base`: gpt-4o, gpt-4.1, gpt-5, o1/o3/o4 families.
    O200k,
    /// `cl100k_base`: gpt-4, gpt-3.5 families and OpenAI embeddings.
    Cl100k,
    /// Characters / 4, corrected by the ratio of actual to estimated tokens seen so far.
    Calibrated,
}

impl Encoding {
    pub fn name(self) -> &'static str {
        match self {
            Self::O200k => "o200k_base",
            Self::Cl100k => "cl100k_base",
            Self::Calibrated => "calibrated",
        }
    }
}

/// Name prefixes of the `o200k_base` families.
const O200K_PREFIXES: [&str; 8] = [
    "gpt-4o",
    "gpt-4.1",
    "gpt-4.5",
    "gpt-5",
    "o1",
    "o3",
    "o4",
    "chatgpt-4o",
];

/// The encoding for a provider-side model name.
///
/// Case-insensitive; a provider prefix (`openai/gpt-4o`) and a fine-tune prefix
/// (`ft:gpt-4o-mini:org::id`) are ignored.
pub fn encoding_for(model_name: &str) -> Encoding {
    let base = model_name.rsplit('/').next().unwrap_or(model_name);
    let base = strip_prefix_ci(base, "ft:").unwrap_or(base);
    if O200K_PREFIXES
        .iter()
        .any(|p| strip_prefix_ci(base, p).is_some())
    {
        return Encoding::O200k;
    }
    // Only `gpt-4` itself and its dated/sized variants: an unknown `gpt-4.x` is more likely a
    // newer o200k model, and calibration is safer than a wrong exact count.
    let gpt4 =
        strip_prefix_ci(base, "gpt-4").is_some_and(|rest| rest.is_empty() || rest.starts_with('-'));
    if gpt4
        || strip_prefix_ci(base, "gpt-3.5").is_some()
        || strip_prefix_ci(base, "text-embedding-").is_some()
    {
        return Encoding::Cl100k;
    }
    Encoding::Calibrated
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    if head.eq_ignore_ascii_case(prefix) {
        s.get(prefix.len()..)
    } else {
        None
    }
}

/// Framing tokens per message, and once to prime the reply (OpenAI's published counting).
const TOKENS_PER_MESSAGE: u64 = 3;
const REPLY_PRIMING: u64 = 3;
const TOKENS_PER_NAME: u64 = 1;
const TOKENS_PER_TOOL_CALL: u64 = 1;
/// OpenAI bills a low-detail image at 85 tokens; high detail needs the image size, unknown here.
const TOKENS_PER_IMAGE: u64 = 85;

/// EWMA weight of one observation, and the bounds of a learned ratio.
const CALIBRATION_ALPHA: f64 = 0.1;
const MIN_RATIO: f64 = 0.25;
const MAX_RATIO: f64 = 4.0;

/// Texts are encoded in pieces of at most this many bytes: fancy-regex gives up (and
/// tiktoken-rs panics) on runs of ~1M whitespace characters, and byte-pair merging of one huge
/// letter run is quadratic.
const CHUNK_BYTES: usize = 16 * 1024;
/// Texts at least this long have their counts remembered: the router counts the same prompt for
/// every model of a family, twice.
const MEMO_MIN_BYTES: usize = 2048;
const MEMO_CAPACITY: usize = 512;

/// Counts prompt tokens per model; shared by all jobs of a process.
#[derive(Debug, Default)]
pub struct TokenEstimator {
    calibration: Mutex<HashMap<String, f64>>,
    /// Token counts of long texts by (encoding, text hash, text length).
    memo: Mutex<HashMap<(Encoding, u64, usize), u64>>,
}

impl TokenEstimator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Prompt tokens of a chat completions body as `model` would count them.
    pub fn prompt_tokens(&self, model: &ModelSpec, body: &Map<String, Value>) -> u64 {
        let encoding = encoding_for(&model.name);
        match bpe(encoding) {
            Some(bpe) => self.exact_prompt_tokens(encoding, bpe, body),
            None => {
                let raw = rough_prompt_tokens(body) + rough_extra_tokens(body);
                (raw as f64 * self.ratio(&model.key)).ceil() as u64
            }
        }
    }

    /// Feeds back the input tokens a provider reported for a call estimated at `estimated`.
    ///
    /// `estimated` is what [`Self::prompt_tokens`] returned, so already scaled by the current
    /// ratio: the sample is `actual / (estimated / ratio)`. Models with a tokenizer are counted
    /// exactly and learn nothing.
    pub fn observe(&self, model: &ModelSpec, estimated: u64, actual: u64) {
        if estimated == 0 || actual == 0 || encoding_for(&model.name) != Encoding::Calibrated {
            return;
        }
        let mut ratios = lock(&self.calibration);
        let current = ratios.get(&model.key).copied().unwrap_or(1.0);
        let sample = (current * actual as f64 / estimated as f64).clamp(MIN_RATIO, MAX_RATIO);
        let next = (1.0 - CALIBRATION_ALPHA) * current + CALIBRATION_ALPHA * sample;
        if next.is_finite() {
            ratios.insert(model.key.clone(), next.clamp(MIN_RATIO, MAX_RATIO));
        }
    }

    /// The learned ratio of actual to rough tokens for a catalog key (1 until observed).
    pub fn ratio(&self, model_key: &str) -> f64 {
        lock(&self.calibration)
            .get(model_key)
            .copied()
            .unwrap_or(1.0)
    }

    fn exact_prompt_tokens(
        &self,
        encoding: Encoding,
        bpe: &CoreBPE,
        body: &Map<String, Value>,
    ) -> u64 {
        let count = |text: &str| self.count_text(encoding, bpe, text);
        let mut total = 0;
        if let Some(Value::Array(messages)) = body.get("messages") {
            total += REPLY_PRIMING;
            for message in messages {
                total += TOKENS_PER_MESSAGE;
                if let Some(role) = message.get("role").and_then(Value::as_str) {
                    total += count(role);
                }
                total += match message.get("content") {
                    Some(Value::String(s)) => count(s),
                    Some(Value::Array(parts)) => parts.iter().map(|p| part_tokens(p, &count)).sum(),
                    Some(Value::Null) | None => 0,
                    Some(other) => count(&other.to_string()),
                };
                if let Some(name) = message.get("name").and_then(Value::as_str) {
                    total += count(name) + TOKENS_PER_NAME;
                }
                if let Some(Value::Array(calls)) = message.get("tool_calls") {
                    for call in calls {
                        let function = call.get("function");
                        for field in ["name", "arguments"] {
                            if let Some(s) =
                                function.and_then(|f| f.get(field)).and_then(Value::as_str)
                            {
                                total += count(s);
                            }
                        }
                        total += TOKENS_PER_TOOL_CALL;
                    }
                }
            }
        }
        for key in EXTRA_KEYS {
            if let Some(value) = body.get(key).filter(|v| !v.is_null()) {
                total += count(&value.to_string());
            }
        }
        total
    }

    fn count_text(&self, encoding: Encoding, bpe: &CoreBPE, text: &str) -> u64 {
        if text.len() < MEMO_MIN_BYTES {
            return encode_count(bpe, text);
        }
        let mut hasher = DefaultHasher::new();
        text.hash(&mut hasher);
        let key = (encoding, hasher.finish(), text.len());
        if let Some(n) = lock(&self.memo).get(&key) {
            return *n;
        }
        // Counted outside the lock: a long text takes milliseconds.
        let n = encode_count(bpe, text);
        let mut memo = lock(&self.memo);
        if memo.len() >= MEMO_CAPACITY {
            memo.clear();
        }
        memo.insert(key, n);
        n
    }
}

/// Body fields sent to the model besides the messages.
const EXTRA_KEYS: [&str; 3] = ["tools", "functions", "response_format"];

/// One part of an array content: text parts by their text, images at a flat rate. Audio and
/// files are billed by rules this cannot see, so they count nothing.
fn part_tokens(part: &Value, count: &impl Fn(&str) -> u64) -> u64 {
    let kind = part.get("type").and_then(Value::as_str).unwrap_or("");
    if kind == "image_url" || kind == "image" {
        return TOKENS_PER_IMAGE;
    }
    ["text", "refusal"]
        .iter()
        .find_map(|f| part.get(*f).and_then(Value::as_str))
        .map_or(0, count)
}

/// The process-wide tokenizer of an encoding; `None` for [`Encoding::Calibrated`] or if the
/// tokenizer cannot be built (the estimate then falls back to calibration).
fn bpe(encoding: Encoding) -> Option<&'static CoreBPE> {
    // Built here rather than with tiktoken-rs's singletons, which panic on a failed build.
    static O200K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    static CL100K: OnceLock<Option<CoreBPE>> = OnceLock::new();
    match encoding {
        Encoding::O200k => O200K
            .get_or_init(|| tiktoken_rs::o200k_base().ok())
            .as_ref(),
        Encoding::Cl100k => CL100K
            .get_or_init(|| tiktoken_rs::cl100k_base().ok())
            .as_ref(),
        Encoding::Calibrated => None,
    }
}

/// Tokens of `text` without special tokens (`<|endoftext|>` in user text is plain text).
fn encode_count(bpe: &CoreBPE, text: &str) -> u64 {
    let mut total = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let (head, tail) = rest.split_at_checked(chunk_end(rest)).unwrap_or((rest, ""));
        // Chunking keeps fancy-regex within its limits; should it still fail, tiktoken-rs
        // unwraps the error, and a rough count beats a dead worker.
        let n = std::panic::catch_unwind(AssertUnwindSafe(|| bpe.encode_ordinary(head).len()))
            .unwrap_or(head.len().div_ceil(4));
        total += n as u64;
        rest = tail;
    }
    total
}

/// Where the first chunk of `text` ends: before a space that starts a word, so the pieces
/// tokenize as the whole would; at a character boundary if there is no such space.
fn chunk_end(text: &str) -> usize {
    if text.len() <= CHUNK_BYTES {
        return text.len();
    }
    let bytes = text.as_bytes();
    let word_start = (CHUNK_BYTES / 2..CHUNK_BYTES).rev().find(|&i| {
        matches!(bytes.get(i - 1..=i + 1), Some(&[prev, b' ', next])
            if prev.is_ascii_alphanumeric() && !next.is_ascii_whitespace())
    });
    if let Some(i) = word_start {
        return i;
    }
    let mut end = CHUNK_BYTES;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    end
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Rough tokens of the fields besides the messages, for the calibrated path.
fn rough_extra_tokens(body: &Map<String, Value>) -> u64 {
    EXTRA_KEYS
        .iter()
        .filter_map(|k| body.get(*k).filter(|v| !v.is_null()))
        .map(|v| v.to_string().len().div_ceil(4) as u64)
        .sum()
}

/// A token count or choice count as a request body may write it: an integer, a float (rounded
/// up; some servers accept `100.0`) or a numeric string. `None` for anything else, or for a
/// negative or non-finite number.
pub fn count_value(value: &Value) -> Option<u64> {
    match value {
        Value::Number(n) => n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                // Saturates at u64::MAX, which is what a budget must assume of a huge number.
                .map(|f| f.ceil() as u64)
        }),
        Value::String(s) => s
            .trim()
            .parse::<f64>()
            .ok()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f.ceil() as u64),
        _ => None,
    }
}

/// How many completions one call asks for: `n` choices, or `best_of` where a server accepts
/// it (each candidate is generated and billed). A budget's worst case multiplies the output
/// allowance by this. At least 1.
pub fn completions_per_call(body: &Map<String, Value>) -> u64 {
    ["n", "best_of"]
        .iter()
        .filter_map(|k| body.get(*k).and_then(count_value))
        .max()
        .unwrap_or(1)
        .max(1)
}

/// A model-independent estimate (about four characters a token), for feature buckets and for
/// places where no model is chosen yet.
pub fn rough_prompt_tokens(body: &Map<String, Value>) -> u64 {
    let Some(Value::Array(messages)) = body.get("messages") else {
        return 0;
    };
    messages
        .iter()
        .map(|m| {
            let (chars, images) = match m.get("content") {
                Some(Value::String(s)) => (s.chars().count(), 0),
                Some(Value::Array(parts)) => rough_parts(parts),
                Some(other) => (other.to_string().len(), 0),
                None => (0, 0),
            };
            4 + chars.div_ceil(4) as u64 + images * TOKENS_PER_IMAGE
        })
        .sum()
}

/// Characters and images of an array content; an image's base64 data URL is not its size.
fn rough_parts(parts: &[Value]) -> (usize, u64) {
    let mut chars = 0;
    let mut images = 0;
    for part in parts {
        match part.get("type").and_then(Value::as_str) {
            Some("image_url" | "image") => images += 1,
            _ => match part.get("text").and_then(Value::as_str) {
                Some(text) => chars += text.chars().count(),
                None => chars += part.to_string().len(),
            },
        }
    }
    (chars, images)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_end_before_a_word() {
        let text = "word ".repeat(10_000);
        let end = chunk_end(&text);
        assert!((CHUNK_BYTES / 2..CHUNK_BYTES).contains(&end));
        assert!(text[end..].starts_with(" word"));
        assert!(text[..end].ends_with("word"));
        assert_eq!(chunk_end("short text"), "short text".len());
    }

    #[test]
    fn chunks_without_spaces_end_on_a_char_boundary() {
        let text = "é".repeat(CHUNK_BYTES);
        let end = chunk_end(&text);
        assert!(text.is_char_boundary(end) && end <= CHUNK_BYTES && end > 0);
        let spaces = " ".repeat(CHUNK_BYTES * 3);
        assert_eq!(chunk_end(&spaces), CHUNK_BYTES);
    }

    #[test]
    fn every_way_of_writing_n_multiplies_the_output() {
        let body = |text: &str| -> Map<String, Value> { serde_json::from_str(text).unwrap() };
        assert_eq!(completions_per_call(&body(r#"{}"#)), 1);
        assert_eq!(completions_per_call(&body(r#"{"n":8}"#)), 8);
        assert_eq!(completions_per_call(&body(r#"{"n":7.2}"#)), 8);
        assert_eq!(completions_per_call(&body(r#"{"n":"8"}"#)), 8);
        assert_eq!(completions_per_call(&body(r#"{"n":0}"#)), 1);
        assert_eq!(completions_per_call(&body(r#"{"n":-3}"#)), 1);
        assert_eq!(completions_per_call(&body(r#"{"n":null}"#)), 1);
        assert_eq!(completions_per_call(&body(r#"{"n":2,"best_of":5}"#)), 5);
        assert_eq!(completions_per_call(&body(r#"{"n":1e30}"#)), u64::MAX);
        assert_eq!(count_value(&Value::from("eight")), None);
    }

    #[test]
    fn memo_is_bounded() {
        let est = TokenEstimator::new();
        let Some(bpe) = bpe(Encoding::O200k) else {
            panic!("o200k did not load");
        };
        for i in 0..MEMO_CAPACITY + 10 {
            let text = format!("{i} {}", "lorem ipsum ".repeat(200));
            assert!(est.count_text(Encoding::O200k, bpe, &text) > 0);
        }
        assert!(lock(&est.memo).len() <= MEMO_CAPACITY);
    }
}
