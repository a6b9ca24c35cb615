//! What happens to one request, for both API dialects: auth, parse, admission against the
//! RPM / TPM windows, latency, then a fault or a deterministic reply.

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::http::HeaderMap;
use axum::response::Response;

use crate::conn::Conn;
use crate::options::RandomFault;
use crate::{AppState, anthropic, azure, bedrock, gemini, openai};

/// A request, as far as the fake cares.
#[derive(Debug)]
pub struct Parsed {
    pub model: String,
    pub last_user: String,
    pub prompt_tokens: u64,
    pub max_tokens: Option<u64>,
    /// `n`: how many choices the OpenAI dialect answers with (each the same reply, each
    /// counted in `completion_tokens`), 1 to [`MAX_CHOICES`].
    pub choices: u64,
    /// Skill mode's `ANSWER: ok` / `ANSWER: wrong`, or a `--reply` text for this model, set
    /// after parsing when it applies.
    pub answer: Option<String>,
    /// The parts of `prompt_tokens` the answer reports as read from / written to a prompt
    /// cache, set after parsing (see [`prompt_cache`]).
    pub cache: PromptCache,
    /// What the request offers the TTL prompt cache (see [`crate::prompt_cache`]).
    pub probe: crate::prompt_cache::Probe,
}

/// What the answer's usage says about the prompt cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PromptCache {
    pub read: u64,
    pub write: u64,
}

/// `[[cached_tokens=N]]` / `[[cache_write_tokens=N]]` in the last user message, else the
/// `x-fake-cached-tokens` / `x-fake-cache-write-tokens` headers: the usage reports N prompt
/// tokens read from (written to) the cache. Capped so reads plus writes never exceed the
/// prompt, reads first, as a real cache would.
pub fn prompt_cache(headers: &HeaderMap, last_user: &str, prompt_tokens: u64) -> PromptCache {
    let ask = |marker: &str, header: &str| {
        marked(last_user, marker)
            .or_else(|| {
                headers
                    .get(header)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            })
            .unwrap_or(0)
    };
    let read = ask("[[cached_tokens=", "x-fake-cached-tokens").min(prompt_tokens);
    let write = ask("[[cache_write_tokens=", "x-fake-cache-write-tokens")
        .min(prompt_tokens.saturating_sub(read));
    PromptCache { read, write }
}

/// The number in the first `MARKERN]]` of `text`.
fn marked(text: &str, marker: &str) -> Option<u64> {
    let (_, rest) = text.split_once(marker)?;
    let (number, _) = rest.split_once("]]")?;
    number.trim().parse().ok()
}

/// The most choices one answer carries, so a silly `n` can't make the fake build a huge body.
pub const MAX_CHOICES: u64 = 128;

/// The reply the fake gives.
#[derive(Debug)]
pub struct Reply {
    pub content: String,
    pub completion_tokens: u64,
    /// Cut short: `finish_reason` `length` / `stop_reason` `max_tokens`.
    pub truncated: bool,
}

impl Reply {
    /// `fake reply from MODEL: <the first 40 characters of the last user message>` (or skill
    /// mode's answer), cut at `max_tokens` (four characters a token), or to half when
    /// `force_length`.
    pub fn new(parsed: &Parsed, force_length: bool) -> Self {
        let content = match &parsed.answer {
            Some(answer) => answer.clone(),
            None => {
                let first: String = parsed.last_user.chars().take(40).collect();
                format!("fake reply from {}: {first}", parsed.model)
            }
        };
        let tokens = (content.chars().count() as u64).div_ceil(4);
        let cut = match parsed.max_tokens.filter(|limit| *limit < tokens) {
            Some(limit) => Some(limit),
            None if force_length => Some((tokens / 2).max(1)),
            None => None,
        };
        match cut {
            Some(limit) => Self {
                content: content
                    .chars()
                    .take(usize::try_from(limit.saturating_mul(4)).unwrap_or(usize::MAX))
                    .collect(),
                completion_tokens: limit,
                truncated: true,
            },
            None => Self {
                content,
                completion_tokens: tokens,
                truncated: false,
            },
        }
    }
}

/// A fault, chosen by magic text, the `x-fake-fault` header, or at random.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// An error status: 429 (rate limited), 500, 502, 503, 529 (overloaded).
    Status(u16),
    Context,
    Malformed,
    Quota,
    Filter,
    NoChoices,
    Drop,
    Hang,
    Length,
    /// `size` bytes of unterminated JSON; an endless chunked body when `None`.
    Huge(Option<u64>),
    Error200,
    Html,
}

impl Fault {
    /// The key `/stats` counts this fault under (random faults only).
    pub fn name(self) -> String {
        match self {
            Self::Status(s) => s.to_string(),
            Self::Context => "context".into(),
            Self::Malformed => "malformed".into(),
            Self::Quota => "quota".into(),
            Self::Filter => "filter".into(),
            Self::NoChoices => "no_choices".into(),
            Self::Drop => "drop".into(),
            Self::Hang => "hang".into(),
            Self::Length => "length".into(),
            Self::Huge(Some(_)) => "huge".into(),
            Self::Huge(None) => "endless".into(),
            Self::Error200 => "error_200".into(),
            Self::Html => "html".into(),
        }
    }
}

/// Magic text in the last user message, and the fault it names.
const MAGIC: [(&str, &str); 10] = [
    ("FAKE:429_ONCE", "429_once"),
    ("FAKE:500_ONCE", "500_once"),
    ("FAKE:500_ALWAYS", "500"),
    ("FAKE:CONTEXT", "context"),
    ("FAKE:MALFORMED", "malformed"),
    ("FAKE:QUOTA", "quota"),
    ("FAKE:FILTER", "filter"),
    ("FAKE:HANG", "hang"),
    ("FAKE:DROP", "drop"),
    ("FAKE:LENGTH", "length"),
];

fn named(state: &AppState, headers: &HeaderMap, name: &str, text: &str) -> Option<Fault> {
    Some(match name {
        "429" => Fault::Status(429),
        "429_once" => {
            return state
                .first_time(format!("429\u{0}{text}"))
                .then_some(Fault::Status(429));
        }
        "500" => Fault::Status(500),
        "500_once" => {
            return state
                .first_time(format!("500\u{0}{text}"))
                .then_some(Fault::Status(500));
        }
        "502" => Fault::Status(502),
        "503" => Fault::Status(503),
        "529" => Fault::Status(529),
        "context" => Fault::Context,
        "malformed" => Fault::Malformed,
        "quota" => Fault::Quota,
        "filter" => Fault::Filter,
        "no_choices" => Fault::NoChoices,
        "drop" => Fault::Drop,
        "hang" => Fault::Hang,
        "length" => Fault::Length,
        "huge" => Fault::Huge(Some(
            headers
                .get("x-fake-body-mib")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map_or(crate::HUGE_BYTES, |mib| mib.saturating_mul(1024 * 1024)),
        )),
        "endless" => Fault::Huge(None),
        "error_200" => Fault::Error200,
        "html" => Fault::Html,
        _ => return None,
    })
}

/// The fault the magic text in `text` asks for, if any (no header, no random draw): what a
/// batch item gets, as it has no headers of its own.
pub fn magic(state: &AppState, text: &str) -> Option<Fault> {
    let (_, name) = MAGIC.iter().find(|(marker, _)| text.contains(marker))?;
    named(state, &HeaderMap::new(), name, text)
}

/// The request's own fault (magic text first, then the header), else a random one.
pub fn choose(state: &AppState, headers: &HeaderMap, text: &str) -> Option<Fault> {
    let header = headers
        .get("x-fake-fault")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let magic = MAGIC
        .iter()
        .find(|(marker, _)| text.contains(marker))
        .map(|(_, name)| *name);
    if let Some(fault) = magic
        .or(header.as_deref())
        .and_then(|name| named(state, headers, name, text))
    {
        return Some(fault);
    }
    let fault = match state.options.draw_fault()? {
        RandomFault::Status(s) => Fault::Status(s),
        RandomFault::Drop => Fault::Drop,
        RandomFault::Hang => Fault::Hang,
        RandomFault::Malformed => Fault::Malformed,
        RandomFault::Length => Fault::Length,
        RandomFault::Filter => Fault::Filter,
    };
    *crate::lock(&state.faults).entry(fault.name()).or_default() += 1;
    Some(fault)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    OpenAi,
    Anthropic,
    /// The model comes from the path (`models/{model}:generateContent`), not the body.
    Gemini,
    /// Azure OpenAI: the OpenAI body and reply; its query, key and deployment were checked
    /// (and the deployment put in the body as `model`) before [`handle`].
    Azure,
    /// Bedrock Converse: the model comes from the path; its signature was checked before
    /// [`handle_model`].
    Bedrock,
}

/// Answers one request (or drops its connection), and counts it.
pub async fn handle(
    state: &AppState,
    conn: &Conn,
    headers: &HeaderMap,
    body: &[u8],
    dialect: Dialect,
) -> Response {
    handle_model(state, conn, headers, body, dialect, "").await
}

/// [`handle`] for a dialect whose model is named by the path (Gemini).
pub async fn handle_model(
    state: &AppState,
    conn: &Conn,
    headers: &HeaderMap,
    body: &[u8],
    dialect: Dialect,
    model: &str,
) -> Response {
    let (response, delivered) = respond(state, conn, headers, body, dialect, model).await;
    if delivered {
        state.record(response.status());
    }
    response
}

/// The dialect's auth and header checks, then its parse: the request, or the answer that
/// refuses it.
fn accept(
    options: &crate::options::Options,
    headers: &HeaderMap,
    body: &[u8],
    dialect: Dialect,
    model: &str,
) -> Result<Parsed, Box<Response>> {
    let refused = match dialect {
        Dialect::OpenAi => openai::check_auth(options, headers),
        Dialect::Anthropic => anthropic::check_request(options, headers),
        Dialect::Gemini => gemini::check_auth(options, headers),
        // Its query, key and deployment (or signature) were checked before `handle`.
        Dialect::Azure | Dialect::Bedrock => None,
    };
    if let Some(response) = refused {
        return Err(Box::new(response));
    }
    match dialect {
        Dialect::OpenAi | Dialect::Azure => openai::parse(body),
        Dialect::Anthropic => anthropic::parse(body),
        Dialect::Gemini => gemini::parse(body, model),
        Dialect::Bedrock => bedrock::parse(body, model),
    }
}

/// What every answer path sets after parsing: skill mode's or `--reply`'s answer, and the
/// prompt-cache usage. Shared with the batch APIs, so their items answer as real-time does.
pub fn fill(state: &AppState, headers: &HeaderMap, parsed: &mut Parsed) {
    let options = &state.options;
    parsed.answer = crate::skill::answer(&options.skills, &parsed.model, &parsed.last_user)
        .map(str::to_owned)
        .or_else(|| {
            options
                .replies
                .iter()
                .find(|(model, _)| *model == parsed.model)
                .map(|(_, text)| text.clone())
        });
    parsed.cache = prompt_cache(headers, &parsed.last_user, parsed.prompt_tokens);
}

async fn respond(
    state: &AppState,
    conn: &Conn,
    headers: &HeaderMap,
    body: &[u8],
    dialect: Dialect,
    model: &str,
) -> (Response, bool) {
    use Dialect::{Anthropic, Azure, Bedrock, Gemini, OpenAi};
    let options = &state.options;
    let mut parsed = match accept(options, headers, body, dialect, model) {
        Ok(p) => p,
        Err(response) => return (*response, true),
    };
    fill(state, headers, &mut parsed);

    let full = Reply::new(&parsed, false);
    let admission = state
        .limiter
        .admit(parsed.prompt_tokens + full.completion_tokens * parsed.choices);
    if !admission.admitted {
        let response = match dialect {
            OpenAi => openai::over_limit(&parsed, &admission),
            Anthropic => anthropic::over_limit(&admission),
            Gemini => gemini::over_limit(&admission),
            Azure => azure::over_limit(&admission),
            Bedrock => bedrock::over_limit(&admission),
        };
        return (response, true);
    }

    let extra_ms = headers
        .get("x-fake-latency-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let latency = options.sample_latency() + Duration::from_millis(extra_ms);
    if parsed.cache == PromptCache::default() {
        // No marker or header: the TTL cache decides, on arrival; what this request writes
        // is readable once it is answered.
        parsed.cache =
            state
                .prompt_caches
                .serve(&parsed.model, &parsed.probe, parsed.prompt_tokens, latency);
    }
    if !latency.is_zero() {
        tokio::select! {
            () = tokio::time::sleep(latency) => {}
            () = state.shutdown.cancelled() => {}
        }
    }

    let fault = choose(state, headers, &parsed.last_user);
    let mut response = match fault {
        Some(Fault::Drop) => {
            state.dropped.fetch_add(1, Ordering::Relaxed);
            state.limiter.settle(&admission, parsed.prompt_tokens);
            conn.kill();
            return (crate::empty(), false);
        }
        Some(Fault::Hang) => {
            state.hung.fetch_add(1, Ordering::Relaxed);
            state.limiter.settle(&admission, parsed.prompt_tokens);
            tokio::select! {
                () = tokio::time::sleep(options.hang) => {}
                () = state.shutdown.cancelled() => {}
            }
            conn.kill();
            return (crate::empty(), false);
        }
        None | Some(Fault::Length) => {
            let reply = Reply::new(&parsed, fault == Some(Fault::Length));
            state.limiter.settle(
                &admission,
                parsed.prompt_tokens + reply.completion_tokens * parsed.choices,
            );
            let n = state.next_id.fetch_add(1, Ordering::Relaxed);
            match dialect {
                OpenAi | Azure => openai::success(n, &parsed, &reply),
                Anthropic => anthropic::success(n, &parsed, &reply),
                Gemini => gemini::success(n, &parsed, &reply),
                Bedrock => bedrock::success(n, &parsed, &reply),
            }
        }
        Some(fault) => {
            state.limiter.settle(&admission, parsed.prompt_tokens);
            let mut response = match dialect {
                OpenAi => openai::fault(fault, &state.shutdown),
                Anthropic => anthropic::fault(fault, &state.shutdown),
                Gemini => gemini::fault(fault, &state.shutdown),
                Azure => azure::fault(fault, &state.shutdown),
                Bedrock => bedrock::fault(fault, &state.shutdown),
            };
            // Opt-in, so the OpenAI dialect's default hint stays the short `retry-after-ms`.
            if let (Fault::Status(429), Some(secs)) = (fault, options.retry_after_secs)
                && let Ok(value) = axum::http::HeaderValue::from_str(&secs.to_string())
            {
                response.headers_mut().insert("retry-after", value);
            }
            response
        }
    };
    if response.status().is_success() {
        let headers = response.headers_mut();
        match dialect {
            OpenAi => crate::limits::openai_headers(&admission, headers),
            Anthropic => crate::limits::anthropic_headers(&admission, headers),
            // Google and AWS send no rate-limit headers.
            Gemini | Bedrock => {}
            Azure => azure::headers(&admission, headers),
        }
    }
    (response, true)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn prompt_cache_markers_win_over_headers_and_never_pass_the_prompt() {
        let mut headers = HeaderMap::new();
        headers.insert("x-fake-cached-tokens", "30".parse().unwrap());
        headers.insert("x-fake-cache-write-tokens", "20".parse().unwrap());
        let none = HeaderMap::new();
        assert_eq!(prompt_cache(&none, "plain", 100), PromptCache::default());
        assert_eq!(
            prompt_cache(&headers, "plain", 100),
            PromptCache {
                read: 30,
                write: 20
            }
        );
        assert_eq!(
            prompt_cache(&headers, "x [[cached_tokens=70]] y", 100),
            PromptCache {
                read: 70,
                write: 20
            }
        );
        // Reads first, then writes up to what is left.
        assert_eq!(
            prompt_cache(&none, "[[cache_write_tokens=50]][[cached_tokens=80]]", 100),
            PromptCache {
                read: 80,
                write: 20
            }
        );
        assert_eq!(
            prompt_cache(&none, "[[cached_tokens=500]]", 100),
            PromptCache {
                read: 100,
                write: 0
            }
        );
        assert_eq!(prompt_cache(&none, "[[cached_tokens=x]]", 100).read, 0);
    }
}
