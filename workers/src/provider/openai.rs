//! Any OpenAI-compatible chat completions endpoint: OpenAI, vLLM, Ollama, llama.cpp server,
//! Together, Groq, OpenRouter.
//!
//! - [`OpenAiProvider`] holds one pooled `reqwest::Client` and POSTs `{base_url}/chat/completions`.
//! - [`classify`] turns an error response (status, headers, body) into a typed [`ProviderError`],
//!   with the provider's retry hint (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`) in
//!   `retry_after`. The retry module decides what to do with it.
//! - The API key is sent only in the `Authorization` header (marked sensitive), is redacted from
//!   every error message, and never appears in `Debug` output.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, USER_AGENT};
use serde_json::{Map, Value};

use super::{ChatCall, Completion, ProviderError, ProviderErrorKind, Secret};

/// The longest retry hint we believe; anything longer is a broken header.
const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// How much of a provider's error text goes into our message.
const MAX_PROVIDER_MESSAGE_CHARS: usize = 300;

/// How to reach one OpenAI-compatible endpoint.
#[derive(Clone)]
pub struct OpenAiConfig {
    /// Up to and including the version, e.g. `https://api.openai.com/v1` or
    /// `http://127.0.0.1:8000/v1`; `/chat/completions` is appended.
    pub base_url: String,
    /// Sent as `Authorization: Bearer <key>` when set.
    pub api_key: Option<Secret>,
    /// Extra headers sent with every request (e.g. `OpenAI-Organization`). Their values are
    /// treated as secrets: never printed.
    pub headers: Vec<(String, String)>,
    /// The whole request, from connect to the last byte of the reply.
    pub timeout: Duration,
    pub connect_timeout: Duration,
}

impl Default for OpenAiConfig {
    fn default() -> Self {
        Self {
            base_url: "https://api.openai.com/v1".to_owned(),
            api_key: None,
            headers: Vec::new(),
            timeout: Duration::from_secs(120),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl fmt::Debug for OpenAiConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let header_names: Vec<&str> = self.headers.iter().map(|(k, _)| k.as_str()).collect();
        f.debug_struct("OpenAiConfig")
            .field("base_url", &self.base_url)
            .field("api_key", &self.api_key)
            .field("headers", &header_names)
            .field("timeout", &self.timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

/// A client for one OpenAI-compatible endpoint. Cheap to share; clone the `Provider` around it.
pub struct OpenAiProvider {
    client: reqwest::Client,
    url: reqwest::Url,
    /// `url` without user info or query, for messages.
    display_url: String,
    timeout: Duration,
    /// Strings to scrub from every error message: the key and secret-looking header values.
    secrets: Vec<Secret>,
}

impl fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("url", &self.display_url)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

fn config_error(message: impl Into<String>) -> ProviderError {
    ProviderError::new(ProviderErrorKind::InvalidRequest, message)
}

impl OpenAiProvider {
    /// Checks the config and builds the pooled client. Fails on a bad URL or header.
    pub fn new(config: OpenAiConfig) -> Result<Self, ProviderError> {
        let base = config.base_url.trim().trim_end_matches('/');
        let url = reqwest::Url::parse(&format!("{base}/chat/completions")).map_err(|e| {
            config_error(format!(
                "the provider base_url is not a valid url ({e}): use e.g. https://api.openai.com/v1"
            ))
        })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(config_error(format!(
                "the provider base_url must start with http:// or https://, not {}://",
                url.scheme()
            )));
        }
        let display_url = {
            let mut shown = url.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            shown.set_query(None);
            shown.to_string()
        };

        let mut headers = HeaderMap::new();
        let mut secrets = Vec::new();
        headers.insert(USER_AGENT, HeaderValue::from_static("batchyard"));
        for (name, value) in &config.headers {
            let header_name = HeaderName::from_bytes(name.trim().as_bytes()).map_err(|_| {
                config_error(format!(
                    "the provider header name {name:?} is not a valid http header name"
                ))
            })?;
            let mut header_value = HeaderValue::from_str(value.trim()).map_err(|_| {
                config_error(format!(
                    "the value of provider header {name:?} has characters not allowed in http \
                     headers: check for newlines or quotes"
                ))
            })?;
            header_value.set_sensitive(true);
            if looks_secret(name) && value.trim().len() >= 4 {
                secrets.push(Secret::new(value.trim().to_owned()));
            }
            headers.insert(header_name, header_value);
        }
        if let Some(key) = &config.api_key {
            let key_text = key.expose().trim();
            if key_text.is_empty() {
                return Err(ProviderError::new(
                    ProviderErrorKind::Auth,
                    "the provider api key is empty: set the key's environment variable or remove \
                     it from the config",
                ));
            }
            let mut value = HeaderValue::from_str(&format!("Bearer {key_text}")).map_err(|_| {
                ProviderError::new(
                    ProviderErrorKind::Auth,
                    "the provider api key has characters not allowed in http headers: check for \
                     stray newlines or quotes",
                )
            })?;
            value.set_sensitive(true);
            headers.insert(AUTHORIZATION, value);
            secrets.push(Secret::new(key_text.to_owned()));
        }

        let client = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .build()
            .map_err(|e| config_error(format!("could not build the http client: {e}")))?;

        Ok(Self {
            client,
            url,
            display_url,
            timeout: config.timeout,
            secrets,
        })
    }

    /// The endpoint, without credentials.
    pub fn url(&self) -> &str {
        &self.display_url
    }

    /// One POST to `/chat/completions`. Does not retry: that is the retry module's job.
    pub async fn complete(&self, call: ChatCall<'_>) -> Result<Completion, ProviderError> {
        let body = request_body(call);
        let result = self.send(&body).await;
        result.map_err(|mut err| {
            self.scrub(&mut err);
            err
        })
    }

    async fn send(&self, body: &Map<String, Value>) -> Result<Completion, ProviderError> {
        let mut response = self
            .client
            .post(self.url.clone())
            .json(body)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let headers = std::mem::take(response.headers_mut());
        let bytes = response
            .bytes()
            .await
            .map_err(|e| self.transport_error(&e))?;
        if !(200..300).contains(&status) {
            return Err(classify(status, &headers, &bytes));
        }
        parse_success(status, &headers, &bytes, body)
    }

    fn transport_error(&self, err: &reqwest::Error) -> ProviderError {
        let url = &self.display_url;
        let message = if err.is_timeout() {
            format!(
                "request to {url} timed out after {:?}: the provider is slow or overloaded; raise \
                 the provider timeout if replies are long",
                self.timeout
            )
        } else if err.is_connect() {
            format!(
                "could not connect to {url} ({}): check base_url and that the server is up",
                error_chain(err)
            )
        } else {
            format!("request to {url} failed: {}", error_chain(err))
        };
        ProviderError::new(ProviderErrorKind::Transient, message)
    }

    fn scrub(&self, err: &mut ProviderError) {
        for secret in &self.secrets {
            let text = secret.expose();
            if !text.is_empty() && err.message.contains(text) {
                err.message = err.message.replace(text, "***");
            }
        }
    }
}

fn looks_secret(header_name: &str) -> bool {
    let name = header_name.to_ascii_lowercase();
    ["key", "token", "auth", "secret", "cookie", "password"]
        .iter()
        .any(|word| name.contains(word))
}

/// The error and its sources, without the URL (we print our own, credential-free one).
fn error_chain(err: &reqwest::Error) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    if let Some(url) = err.url() {
        // reqwest appends " for url (...)"; drop it.
        text = text.replace(&format!(" for url ({url})"), "");
    }
    let mut source = err.source();
    // Error chains are short; the bound guards against a cyclic one.
    for _ in 0..8 {
        let Some(cause) = source else { break };
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The body sent: the caller's, with `model` set and `max_tokens` defaulted.
fn request_body(call: ChatCall<'_>) -> Map<String, Value> {
    let mut body = call.body.clone();
    body.insert(
        "model".to_owned(),
        Value::String(call.model_name.to_owned()),
    );
    if let Some(n) = call.default_max_tokens
        && !body.contains_key("max_tokens")
        && !body.contains_key("max_completion_tokens")
    {
        body.insert("max_tokens".to_owned(), Value::from(n));
    }
    // We read one JSON reply, never a stream.
    if body.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
        body.remove("stream");
        body.remove("stream_options");
    }
    body
}

/// Reads a 2xx reply.
fn parse_success(
    status: u16,
    headers: &HeaderMap,
    bytes: &[u8],
    request: &Map<String, Value>,
) -> Result<Completion, ProviderError> {
    let malformed = |message: String| ProviderError {
        kind: ProviderErrorKind::MalformedResponse,
        message,
        status: Some(status),
        retry_after: None,
    };
    let body: Value = serde_json::from_slice(bytes).map_err(|e| {
        malformed(format!(
            "the provider answered {status} with a body that is not json ({e}): check that \
             base_url points at an openai-compatible /v1 endpoint; body starts {:?}",
            snippet(&String::from_utf8_lossy(bytes), 80)
        ))
    })?;
    let Some(first) = body
        .get("choices")
        .and_then(Value::as_array)
        .and_then(|c| c.first())
    else {
        let detail = ErrorInfo::from_value(&body)
            .message
            .map(|m| {
                format!(
                    " (provider says: {})",
                    snippet(&m, MAX_PROVIDER_MESSAGE_CHARS)
                )
            })
            .unwrap_or_default();
        return Err(malformed(format!(
            "the provider answered {status} without any choices{detail}"
        )));
    };
    let finish_reason = first
        .get("finish_reason")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let content = first.get("message").and_then(|m| m.get("content"));
    let empty = match content {
        None | Some(Value::Null) => true,
        Some(Value::String(s)) => s.is_empty(),
        Some(_) => false,
    };
    if finish_reason.as_deref() == Some("content_filter") && empty {
        return Err(ProviderError {
            kind: ProviderErrorKind::ContentFilter,
            message: "the provider's content filter withheld the reply: rephrase the input or \
                      use another model"
                .to_owned(),
            status: Some(status),
            retry_after: None,
        });
    }

    let usage = body.get("usage");
    let count = |field: &str| usage.and_then(|u| u.get(field)).and_then(Value::as_u64);
    let input_tokens = count("prompt_tokens").unwrap_or_else(|| estimate_input_tokens(request));
    let output_tokens = count("completion_tokens").unwrap_or_else(|| match content {
        Some(Value::String(s)) => (s.chars().count() as u64).div_ceil(4),
        _ => 0,
    });
    let request_id = header_str(headers, "x-request-id")
        .map(str::to_owned)
        .or_else(|| body.get("id").and_then(Value::as_str).map(str::to_owned))
        .unwrap_or_default();
    Ok(Completion {
        body,
        request_id,
        input_tokens,
        output_tokens,
        finish_reason,
        simulated: false,
    })
}

/// For providers that omit `usage`: about four characters a token, four tokens a message.
fn estimate_input_tokens(request: &Map<String, Value>) -> u64 {
    let Some(Value::Array(messages)) = request.get("messages") else {
        return 0;
    };
    let chars: u64 = messages
        .iter()
        .map(|m| match m.get("content") {
            Some(Value::String(s)) => s.chars().count() as u64,
            Some(Value::Array(parts)) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .map(|t| t.chars().count() as u64)
                .sum(),
            _ => 0,
        })
        .sum();
    chars / 4 + 4 * messages.len() as u64
}

// ---- classification ----

/// What an error body says, in whichever of the common shapes it came.
#[derive(Debug, Default)]
struct ErrorInfo {
    message: Option<String>,
    code: Option<String>,
    kind: Option<String>,
}

impl ErrorInfo {
    fn parse(body: &[u8]) -> Self {
        match serde_json::from_slice::<Value>(body) {
            Ok(value) => Self::from_value(&value),
            Err(_) => {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                Self {
                    message: (!text.is_empty()).then(|| text.to_owned()),
                    ..Self::default()
                }
            }
        }
    }

    fn from_value(value: &Value) -> Self {
        fn text(v: Option<&Value>) -> Option<String> {
            match v? {
                Value::String(s) if !s.is_empty() => Some(s.clone()),
                Value::Number(n) => Some(n.to_string()),
                _ => None,
            }
        }
        // OpenAI: {"error": {"message", "type", "code"}}; some: {"error": "text"};
        // vLLM: {"object": "error", "message", "type", "code"}; FastAPI: {"detail": ...}.
        let inner = match value.get("error") {
            Some(Value::String(s)) => {
                return Self {
                    message: Some(s.clone()),
                    ..Self::default()
                };
            }
            Some(obj @ Value::Object(_)) => obj,
            _ => value,
        };
        let mut info = Self {
            message: text(inner.get("message")).or_else(|| match inner.get("detail") {
                Some(Value::String(s)) => Some(s.clone()),
                Some(other @ (Value::Array(_) | Value::Object(_))) => Some(other.to_string()),
                _ => None,
            }),
            code: text(inner.get("code")),
            kind: text(inner.get("type")),
        };
        // Azure puts the content filter verdict in innererror.
        if text(inner.get("innererror").and_then(|i| i.get("code"))).as_deref()
            == Some("ResponsibleAIPolicyViolation")
        {
            info.code = Some("content_filter".to_owned());
        }
        info
    }

    fn is(&self, word: &str) -> bool {
        self.code.as_deref() == Some(word) || self.kind.as_deref() == Some(word)
    }

    fn message_mentions(&self, needle: &str) -> bool {
        self.message
            .as_deref()
            .is_some_and(|m| m.to_ascii_lowercase().contains(needle))
    }
}

/// Turns an error response into a typed error, with the provider's retry hint.
///
/// - 429: `rate_limited`, or `quota_exhausted` when the body says `insufficient_quota`;
/// - 408, 500, 502, 503, 504, 520–529 (and other 5xx but 501/505): `transient`;
/// - a body with code `content_filter` / `content_policy_violation`: `content_filter`;
/// - a 4xx whose body says `context_length_exceeded` (code or message): `context_overflow`;
/// - 401, 403: `auth`;
/// - other 4xx (400, 404, 422, ...): `invalid_request`;
/// - a 2xx (the body did not parse as a completion): `malformed_response`.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    use ProviderErrorKind as K;
    let info = ErrorInfo::parse(body);
    let said = info
        .message
        .as_deref()
        .map(|m| snippet(m, MAX_PROVIDER_MESSAGE_CHARS))
        .unwrap_or_else(|| "no message".to_owned());
    let content_filter = info.is("content_filter") || info.is("content_policy_violation");
    let context = info.is("context_length_exceeded")
        || info.message_mentions("context_length_exceeded")
        || info.message_mentions("maximum context length")
        || info.message_mentions("context window");

    let (kind, message) = match status {
        429 if info.is("insufficient_quota") => (
            K::QuotaExhausted,
            format!(
                "the provider account is out of quota (429): {said}; add credits or raise the \
                 account's limit, retrying will not help"
            ),
        ),
        429 => (
            K::RateLimited,
            format!(
                "rate limited by the provider (429): {said}; lower this model's rpm/tpm in the \
                 catalog if it keeps happening"
            ),
        ),
        _ if content_filter => (
            K::ContentFilter,
            format!(
                "the provider's content filter blocked the request ({status}): {said}; rephrase \
                 the input or use another model"
            ),
        ),
        401 | 403 => (
            K::Auth,
            format!(
                "the provider rejected the credentials ({status}): {said}; check the api key \
                 environment variable for this provider"
            ),
        ),
        400..=499 if status != 408 && context => (
            K::ContextOverflow,
            format!(
                "the request does not fit the model's context window ({status}): {said}; shorten \
                 the input or route it to a model with a larger context"
            ),
        ),
        404 => (
            K::InvalidRequest,
            format!(
                "the provider does not know this model or endpoint (404): {said}; check the \
                 model name and base_url"
            ),
        ),
        408 | 500 | 502..=504 | 506..=599 => (
            K::Transient,
            format!("the provider failed temporarily ({status}): {said}"),
        ),
        400..=499 | 501 | 505 => (
            K::InvalidRequest,
            format!("the provider rejected the request ({status}): {said}; check the request body"),
        ),
        200..=299 => (
            K::MalformedResponse,
            format!("the provider answered {status} with an unreadable reply: {said}"),
        ),
        _ => (
            K::InvalidRequest,
            format!(
                "the provider answered with unexpected status {status}: {said}; check base_url"
            ),
        ),
    };
    ProviderError {
        kind,
        message,
        status: Some(status),
        retry_after: retry_hint(status, headers),
    }
}

fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
}

/// The longest of the provider's hints: `retry-after-ms`, `Retry-After` (seconds or HTTP date),
/// and on a 429 the `x-ratelimit-reset-*` of each limit that is used up (or whose remaining
/// count is not given).
pub fn retry_hint(status: u16, headers: &HeaderMap) -> Option<Duration> {
    let mut hints: [Option<Duration>; 4] = [None; 4];
    hints[0] = header_str(headers, "retry-after-ms")
        .and_then(|v| v.parse::<f64>().ok())
        .and_then(|ms| Duration::try_from_secs_f64(ms / 1000.0).ok());
    hints[1] = header_str(headers, "retry-after").and_then(parse_retry_after);
    if status == 429 {
        for (slot, limit) in [(2, "requests"), (3, "tokens")] {
            let remaining = header_str(headers, &format!("x-ratelimit-remaining-{limit}"))
                .and_then(|v| v.parse::<u64>().ok());
            if remaining.is_some_and(|n| n > 0) {
                continue;
            }
            hints[slot] = header_str(headers, &format!("x-ratelimit-reset-{limit}"))
                .and_then(parse_go_duration);
        }
    }
    hints.into_iter().flatten().map(|d| d.min(MAX_HINT)).max()
}

/// `Retry-After`: delay-seconds (fractions tolerated) or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = parse_http_date(value)?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// A Go-style duration as OpenAI's `x-ratelimit-reset-*` send them: `1s`, `6m0s`, `20ms`,
/// `1m30.5s`, `1h2m3s`, `500us`. A bare number is seconds.
pub fn parse_go_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if let Ok(secs) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let mut total = 0.0f64;
    let mut rest = value;
    // Each round consumes at least one character.
    while !rest.is_empty() {
        let number_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if number_end == 0 {
            return None;
        }
        let number: f64 = rest[..number_end].parse().ok()?;
        rest = &rest[number_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_end..];
        total += number * scale;
    }
    Duration::try_from_secs_f64(total).ok()
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// An HTTP date: IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`) or the obsolete RFC 850 form
/// (`Sunday, 06-Nov-94 08:49:37 GMT`).
pub fn parse_http_date(value: &str) -> Option<SystemTime> {
    let (_weekday, rest) = value.trim().split_once(", ")?;
    let mut parts = rest.split_whitespace();
    let first = parts.next()?;
    let (day, month, year) = if first.contains('-') {
        let mut dmy = first.split('-');
        let (d, m, y) = (dmy.next()?, dmy.next()?, dmy.next()?);
        let y: i64 = y.parse().ok()?;
        let y = if y < 100 {
            y + if y >= 70 { 1900 } else { 2000 }
        } else {
            y
        };
        (d, m, y)
    } else {
        let m = parts.next()?;
        let y: i64 = parts.next()?.parse().ok()?;
        (first, m, y)
    };
    let time = parts.next()?;
    if parts.next()? != "GMT" || parts.next().is_some() {
        return None;
    }
    let day: u32 = day.parse().ok()?;
    let month = u32::try_from(MONTHS.iter().position(|m| *m == month)? + 1).ok()?;
    let mut hms = time.split(':');
    let (h, mi, s): (u64, u64, u64) = (
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
        hms.next()?.parse().ok()?,
    );
    if hms.next().is_some() || !(1..=31).contains(&day) || h > 23 || mi > 59 || s > 60 {
        return None;
    }
    let days = days_from_civil(year, month, day);
    let secs = u64::try_from(days).ok()?.checked_mul(86_400)? + h * 3600 + mi * 60 + s;
    UNIX_EPOCH.checked_add(Duration::from_secs(secs))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// At most `max` characters of `text` on one line.
fn snippet(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .take(max)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(max).is_some() {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        let ms = Duration::from_millis;
        assert_eq!(parse_go_duration("1s"), Some(ms(1000)));
        assert_eq!(parse_go_duration("6m0s"), Some(ms(360_000)));
        assert_eq!(parse_go_duration("20ms"), Some(ms(20)));
        assert_eq!(parse_go_duration("1m30.5s"), Some(ms(90_500)));
        assert_eq!(parse_go_duration("1h2m3s"), Some(ms(3_723_000)));
        assert_eq!(parse_go_duration("0.5"), Some(ms(500)));
        assert_eq!(parse_go_duration("500us"), Some(Duration::from_micros(500)));
        assert_eq!(parse_go_duration(""), None);
        assert_eq!(parse_go_duration("soon"), None);
        assert_eq!(parse_go_duration("5x"), None);
        assert_eq!(parse_go_duration("-1s"), None);
    }

    #[test]
    fn http_dates() {
        let t = parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        let t = parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT").unwrap();
        assert_eq!(t.duration_since(UNIX_EPOCH).unwrap().as_secs(), 784_111_777);
        let t = parse_http_date("Thu, 01 Jan 1970 00:00:00 GMT").unwrap();
        assert_eq!(t, UNIX_EPOCH);
        assert!(parse_http_date("Sun, 06 Nov 1994 08:49:37 PST").is_none());
        assert!(parse_http_date("yesterday").is_none());
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
    }

    #[test]
    fn request_body_sets_model_and_default_max_tokens() {
        let body: Map<String, Value> = serde_json::from_str(
            r#"{"model":"ignored","stream":true,"messages":[{"role":"user","content":"hi"}]}"#,
        )
        .unwrap();
        let out = request_body(ChatCall {
            model_name: "gpt-x",
            body: &body,
            default_max_tokens: Some(64),
        });
        assert_eq!(out["model"], "gpt-x");
        assert_eq!(out["max_tokens"], 64);
        assert!(!out.contains_key("stream"));

        let body: Map<String, Value> =
            serde_json::from_str(r#"{"max_completion_tokens":9,"messages":[]}"#).unwrap();
        let out = request_body(ChatCall {
            model_name: "gpt-x",
            body: &body,
            default_max_tokens: Some(64),
        });
        assert!(!out.contains_key("max_tokens"));
    }

    #[test]
    fn debug_output_hides_the_key_and_header_values() {
        let config = OpenAiConfig {
            api_key: Some(Secret::new("sk-verysecret123".to_owned())),
            headers: vec![("X-Api-Token".to_owned(), "tok-hidden-456".to_owned())],
            ..OpenAiConfig::default()
        };
        let shown = format!("{config:?}");
        assert!(!shown.contains("sk-verysecret123"));
        assert!(!shown.contains("tok-hidden-456"));
        let provider = OpenAiProvider::new(config).unwrap();
        let shown = format!("{provider:?}");
        assert!(!shown.contains("sk-verysecret123"));
        assert!(!shown.contains("tok-hidden-456"));

        let mut err = ProviderError::new(
            ProviderErrorKind::Auth,
            "bad key sk-verysecret123 and tok-hidden-456",
        );
        provider.scrub(&mut err);
        assert_eq!(err.message, "bad key *** and ***");
    }

    #[test]
    fn bad_config_is_refused_without_echoing_the_key() {
        let err = OpenAiProvider::new(OpenAiConfig {
            base_url: "not a url".to_owned(),
            ..OpenAiConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::InvalidRequest);
        let err = OpenAiProvider::new(OpenAiConfig {
            api_key: Some(Secret::new("sk-bad\nkey".to_owned())),
            ..OpenAiConfig::default()
        })
        .unwrap_err();
        assert_eq!(err.kind, ProviderErrorKind::Auth);
        assert!(!err.to_string().contains("sk-bad"));
    }

    #[test]
    fn azure_content_filter_and_vllm_context_shapes() {
        let headers = HeaderMap::new();
        let azure = br#"{"error":{"message":"filtered","code":"content_filter","innererror":{"code":"ResponsibleAIPolicyViolation"}}}"#;
        assert_eq!(
            classify(400, &headers, azure).kind,
            ProviderErrorKind::ContentFilter
        );
        let vllm = br#"{"object":"error","message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens","type":"BadRequestError","code":400}"#;
        assert_eq!(
            classify(400, &headers, vllm).kind,
            ProviderErrorKind::ContextOverflow
        );
        assert_eq!(
            classify(502, &headers, b"<html>bad gateway</html>").kind,
            ProviderErrorKind::Transient
        );
    }
}
