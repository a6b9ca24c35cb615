//! A prompt cache with a TTL, per (model, prefix): what real providers bill as cache reads and
//! writes, so benchmarks and tests see what ordering and cache points are worth.
//!
//! - Explicit (the Anthropic dialect, and Bedrock's): only prefixes ending at a block with
//!   `cache_control` (a `cachePoint` block) are cached. A request reads the longest of its cached points (refreshing its TTL, as
//!   Anthropic does) and writes its last point when that one is longer.
//! - Automatic (the OpenAI and Azure dialects): every request's prompt is cached in prefixes
//!   of 1024 tokens and then 128-token steps, as OpenAI does; a request reads the longest
//!   cached one and writes nothing billable.
//!
//! A prefix shorter than the minimum (`--prompt-cache-min-tokens`, 1024) is never cached. Tokens
//! are four characters, as the fake's usage counts them. The map is bounded: past
//! [`MAX_ENTRIES`] the expired entries go, then the older half.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::flow::PromptCache;
use crate::lock;

/// The most prefixes the fake remembers.
pub const MAX_ENTRIES: usize = 100_000;

/// OpenAI's automatic caching: the first cacheable prefix, then the step.
const AUTO_FIRST_TOKENS: u64 = 1024;
const AUTO_STEP_TOKENS: u64 = 128;
/// Characters per token, as the fake's usage counts them.
const CHARS_PER_TOKEN: u64 = 4;
/// At most this many automatic prefixes per request (about 33k tokens at 128-token steps).
const MAX_AUTO_PREFIXES: usize = 256;

/// One prefix of a request: its hash and its length in tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub hash: u64,
    pub tokens: u64,
}

/// What a request offers the cache.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Probe {
    /// No caching for this dialect.
    #[default]
    None,
    /// The prefixes ending at each cache point, shortest first.
    Explicit(Vec<Prefix>),
    /// The prompt's prefixes at 1024 tokens and each 128-token step after, shortest first.
    Automatic(Vec<Prefix>),
}

impl Probe {
    /// Explicit cache points: `segments` in prompt order, each text with whether a cache
    /// point follows it.
    pub fn explicit<'a>(segments: impl IntoIterator<Item = (&'a str, bool)>) -> Self {
        let mut hasher = DefaultHasher::new();
        let mut chars = 0u64;
        let mut points = Vec::new();
        for (text, point) in segments {
            hasher.write(text.as_bytes());
            chars += text.chars().count() as u64;
            if point {
                points.push(Prefix {
                    hash: hasher.clone().finish(),
                    tokens: chars / CHARS_PER_TOKEN,
                });
            }
        }
        if points.is_empty() {
            Self::None
        } else {
            Self::Explicit(points)
        }
    }

    /// Automatic caching of `text` (the whole prompt, in order).
    pub fn automatic(text: &str) -> Self {
        let mut hasher = DefaultHasher::new();
        let mut prefixes = Vec::new();
        let mut next = AUTO_FIRST_TOKENS * CHARS_PER_TOKEN;
        let mut from = 0;
        for (count, (at, _)) in text.char_indices().enumerate() {
            if count as u64 == next {
                hasher.write(&text.as_bytes()[from..at]);
                from = at;
                prefixes.push(Prefix {
                    hash: hasher.clone().finish(),
                    tokens: next / CHARS_PER_TOKEN,
                });
                if prefixes.len() == MAX_AUTO_PREFIXES {
                    break;
                }
                next += AUTO_STEP_TOKENS * CHARS_PER_TOKEN;
            }
        }
        // The whole prompt when it ends right on a step.
        if text.chars().count() as u64 == next && prefixes.len() < MAX_AUTO_PREFIXES {
            hasher.write(&text.as_bytes()[from..]);
            prefixes.push(Prefix {
                hash: hasher.finish(),
                tokens: next / CHARS_PER_TOKEN,
            });
        }
        if prefixes.is_empty() {
            Self::None
        } else {
            Self::Automatic(prefixes)
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    /// Requests that read from the cache / wrote to it.
    hits: u64,
    writes: u64,
    read_tokens: u64,
    write_tokens: u64,
    /// Requests that offered a cacheable prefix.
    eligible: u64,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    from: Instant,
    until: Instant,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.from <= now && now < self.until
    }
}

pub struct PromptCaches {
    ttl: Duration,
    min_tokens: u64,
    /// Key: hash of (model, prefix hash); value: from when it can be read (a prefix is
    /// cached once its request is answered) and when it expires.
    entries: Mutex<HashMap<u64, Entry>>,
    counts: Mutex<Counts>,
}

impl PromptCaches {
    /// A zero `ttl` turns the model off.
    pub fn new(ttl: Duration, min_tokens: u64) -> Self {
        Self {
            ttl,
            min_tokens,
            entries: Mutex::new(HashMap::new()),
            counts: Mutex::new(Counts::default()),
        }
    }

    /// Per `--prompt-cache-ttl-secs` and `--prompt-cache-min-tokens`.
    pub fn of(options: &crate::options::Options) -> Self {
        Self::new(options.prompt_cache_ttl, options.prompt_cache_min_tokens)
    }

    /// What `probe` reads and writes for `model` now, at most `prompt_tokens` in all. What it
    /// writes can be read `answered_in` from now (when its answer is complete), as a real
    /// cache: requests that arrive while the first is in flight miss too.
    pub fn serve(
        &self,
        model: &str,
        probe: &Probe,
        prompt_tokens: u64,
        answered_in: Duration,
    ) -> PromptCache {
        let (prefixes, explicit) = match probe {
            Probe::None => return PromptCache::default(),
            Probe::Explicit(p) => (p, true),
            Probe::Automatic(p) => (p, false),
        };
        if self.ttl.is_zero() {
            return PromptCache::default();
        }
        let key = |p: &Prefix| {
            let mut h = DefaultHasher::new();
            (model, p.hash).hash(&mut h);
            h.finish()
        };
        let eligible: Vec<(u64, u64)> = prefixes
            .iter()
            .filter(|p| p.tokens >= self.min_tokens && p.tokens > 0)
            .map(|p| (key(p), p.tokens.min(prompt_tokens)))
            .collect();
        let Some(&(_, longest)) = eligible.iter().max_by_key(|(_, t)| *t) else {
            return PromptCache::default();
        };
        let now = Instant::now();
        let from = now + answered_in;
        let mut entries = lock(&self.entries);
        let read = eligible
            .iter()
            .filter(|(k, _)| entries.get(k).is_some_and(|e| e.live(now)))
            .map(|(_, t)| *t)
            .max()
            .unwrap_or(0);
        if entries.len() + eligible.len() > MAX_ENTRIES {
            evict(&mut entries, now);
        }
        for (k, _) in &eligible {
            let entry = entries.entry(*k).or_insert(Entry { from, until: from });
            // A live entry is refreshed; a pending one keeps its earlier start.
            if !entry.live(now) && entry.from > from {
                entry.from = from;
            }
            if entry.until < now {
                entry.from = from;
            }
            entry.until = entry.from.max(now) + self.ttl;
        }
        drop(entries);
        // Anthropic bills the part past the longest hit up to the last point as a write;
        // OpenAI bills no write.
        let write = if explicit {
            longest.saturating_sub(read)
        } else {
            0
        };
        let mut counts = lock(&self.counts);
        counts.eligible += 1;
        counts.hits += u64::from(read > 0);
        counts.writes += u64::from(write > 0);
        counts.read_tokens += read;
        counts.write_tokens += write;
        PromptCache { read, write }
    }

    /// `/stats`' `prompt_cache` object.
    pub fn stats(&self) -> Value {
        let entries = lock(&self.entries).len();
        let c = lock(&self.counts);
        json!({
            "ttl_secs": self.ttl.as_secs_f64(),
            "min_tokens": self.min_tokens,
            "entries": entries,
            "eligible": c.eligible,
            "hits": c.hits,
            "writes": c.writes,
            "read_tokens": c.read_tokens,
            "write_tokens": c.write_tokens,
        })
    }
}

/// The expired entries go; if still too many, those expiring first (the older half).
fn evict(entries: &mut HashMap<u64, Entry>, now: Instant) {
    entries.retain(|_, e| e.until > now);
    if entries.len() < MAX_ENTRIES / 2 {
        return;
    }
    let mut expiries: Vec<Instant> = entries.values().map(|e| e.until).collect();
    let mid = expiries.len() / 2;
    let (_, median, _) = expiries.select_nth_unstable(mid);
    let median = *median;
    entries.retain(|_, e| e.until > median);
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn text(tokens: usize, fill: char) -> String {
        std::iter::repeat_n(fill, tokens * 4).collect()
    }

    #[test]
    fn explicit_points_write_once_then_read_within_the_ttl() {
        let caches = PromptCaches::new(Duration::from_millis(300), 1024);
        let system = text(2500, 's');
        let probe = |doc: &str| Probe::explicit([(system.as_str(), true), (doc, false)]);
        let first = caches.serve("claude", &probe("doc one"), 2600, Duration::ZERO);
        assert_eq!(
            first,
            PromptCache {
                read: 0,
                write: 2500
            }
        );
        let second = caches.serve("claude", &probe("doc two"), 2600, Duration::ZERO);
        assert_eq!(
            second,
            PromptCache {
                read: 2500,
                write: 0
            }
        );
        // Another model has its own cache.
        assert_eq!(
            caches
                .serve("opus", &probe("x"), 2600, Duration::ZERO)
                .write,
            2500
        );
        // Without a point nothing is cached; a short point is ignored.
        assert_eq!(Probe::explicit([(system.as_str(), false)]), Probe::None);
        let short = Probe::explicit([("short", true)]);
        assert_eq!(
            caches.serve("claude", &short, 10, Duration::ZERO),
            PromptCache::default()
        );
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(
            caches
                .serve("claude", &probe("doc three"), 2600, Duration::ZERO)
                .write,
            2500
        );
        let stats = caches.stats();
        assert_eq!(stats["hits"], 1);
        assert_eq!(stats["writes"], 3);
    }

    #[test]
    fn automatic_caching_reads_the_common_prefix_in_128_token_steps() {
        let caches = PromptCaches::new(Duration::from_secs(300), 1024);
        let shared = text(1300, 'p');
        let a = format!("{shared}{}", text(400, 'a'));
        let b = format!("{shared}{}", text(400, 'b'));
        let first = caches.serve("gpt", &Probe::automatic(&a), 1700, Duration::ZERO);
        assert_eq!(first, PromptCache::default());
        // 1300 shared tokens: 1024 + 2 * 128 = 1280 of them are read.
        let second = caches.serve("gpt", &Probe::automatic(&b), 1700, Duration::ZERO);
        assert_eq!(
            second,
            PromptCache {
                read: 1280,
                write: 0
            }
        );
        // The same prompt again: every step of it.
        assert_eq!(
            caches
                .serve("gpt", &Probe::automatic(&b), 1700, Duration::ZERO)
                .read,
            1664
        );
        // Below 1024 tokens nothing is cached.
        assert_eq!(Probe::automatic(&text(1000, 'q')), Probe::None);
    }

    #[test]
    fn the_map_stays_bounded() {
        let caches = PromptCaches::new(Duration::from_secs(300), 1);
        for i in 0..(MAX_ENTRIES + 10) {
            let t = format!("{i:08}");
            caches.serve(
                "m",
                &Probe::explicit([(t.as_str(), true)]),
                100,
                Duration::ZERO,
            );
        }
        assert!(lock(&caches.entries).len() <= MAX_ENTRIES);
    }

    #[test]
    fn a_prefix_is_readable_only_once_its_first_request_is_answered() {
        let caches = PromptCaches::new(Duration::from_secs(300), 1024);
        let system = text(2000, 's');
        let probe = Probe::explicit([(system.as_str(), true)]);
        let slow = Duration::from_millis(200);
        assert_eq!(caches.serve("c", &probe, 2000, slow).write, 2000);
        // Arrives while the first is in flight: misses and writes too.
        assert_eq!(caches.serve("c", &probe, 2000, slow).write, 2000);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(caches.serve("c", &probe, 2000, slow).read, 2000);
    }
}
