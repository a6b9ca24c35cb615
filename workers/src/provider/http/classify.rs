//! The generic error classification of an HTTP provider: what an error response (status,
//! headers, body) means, as a typed [`ProviderError`], and the provider's retry hint
//! (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`). OpenAI-compatible servers use it
//! as it is; other kinds refine it with their own error types.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use super::time::parse_http_date;
use crate::provider::{ProviderError, ProviderErrorKind};

/// The longest retry hint we believe; anything longer is a broken header.
pub(crate) const MAX_HINT: Duration = Duration::from_secs(24 * 60 * 60);

/// How much of a provider's error text goes into our message.
pub(crate) const MAX_PROVIDER_MESSAGE_CHARS: usize = 300;

/// What an error body says, in whichever of the common shapes it came.
#[derive(Debug, Default)]
pub(crate) struct ErrorInfo {
    pub(crate) message: Option<String>,
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

    pub(crate) fn from_value(value: &Value) -> Self {
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

pub(crate) fn header_str<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
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

/// At most `max` characters of `text` on one line.
pub(crate) fn snippet(text: &str, max: usize) -> String {
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
