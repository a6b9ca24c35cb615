//! Anthropic error replies as typed errors.
//!
//! Bodies look like `{"type":"error","error":{"type":"overloaded_error","message":"..."}}`. The
//! status decides first, through the shared HTTP classification ([`http::classify`]); the
//! error type then refines it:
//! - `overloaded_error` (529), `api_error`, `timeout_error`: `transient`;
//! - `rate_limit_error`: `rate_limited`; `billing_error` or "credit balance is too low":
//!   `quota_exhausted`; `authentication_error`, `permission_error`: `auth`;
//! - "prompt is too long" / "exceed context limit": `context_overflow`.
//!
//! The retry hint is the longest of `retry-after` (and the other hints the OpenAI classification
//! reads) and, on a 429, the `anthropic-ratelimit-*-reset` time (RFC 3339) of each limit that is
//! used up.

use std::time::{Duration, SystemTime};

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::provider::http::{self, MAX_HINT, header_str, parse_rfc3339, snippet};
use crate::provider::{ProviderError, ProviderErrorKind};

/// The limits Anthropic reports, as they appear in `anthropic-ratelimit-{limit}-reset`.
const LIMITS: [&str; 4] = ["requests", "tokens", "input-tokens", "output-tokens"];

/// Turns an error response into a typed error, with the provider's retry hint.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    refine(
        http::classify(status, headers, body),
        status,
        headers,
        &value,
    )
}

/// [`classify`] for a body already parsed (a 2xx that carried an error object).
pub(super) fn classify_value(status: u16, headers: &HeaderMap, body: &Value) -> ProviderError {
    let bytes = body.to_string();
    let mut err = classify(status, headers, bytes.as_bytes());
    if (200..300).contains(&status) && err.kind == ProviderErrorKind::MalformedResponse {
        err.message = format!(
            "the provider answered {status} with an error object instead of a message: {}",
            said(body)
        );
    }
    err
}

fn said(body: &Value) -> String {
    let message = body
        .get("error")
        .and_then(|e| e.get("message").or(Some(e)))
        .and_then(Value::as_str)
        .or_else(|| body.get("message").and_then(Value::as_str))
        .unwrap_or("no message");
    snippet(message, 300)
}

fn refine(mut err: ProviderError, status: u16, headers: &HeaderMap, body: &Value) -> ProviderError {
    use ProviderErrorKind as K;
    let kind = body
        .get("error")
        .and_then(|e| e.get("type"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let said = said(body);
    let lower = said.to_ascii_lowercase();
    let context = lower.contains("prompt is too long") || lower.contains("exceed context limit");
    let out_of_credit = lower.contains("credit balance is too low");
    let refined = match kind {
        "overloaded_error" => Some((
            K::Transient,
            format!("the provider is overloaded ({status}): {said}; it will be retried later"),
        )),
        "api_error" | "timeout_error" => Some((
            K::Transient,
            format!("the provider failed temporarily ({status}): {said}"),
        )),
        "rate_limit_error" => Some((
            K::RateLimited,
            format!(
                "rate limited by the provider ({status}): {said}; lower this model's rpm/tpm in \
                 the catalog if it keeps happening"
            ),
        )),
        "billing_error" => Some((K::QuotaExhausted, quota_message(status, &said))),
        _ if out_of_credit => Some((K::QuotaExhausted, quota_message(status, &said))),
        "authentication_error" | "permission_error" => Some((
            K::Auth,
            format!(
                "the provider rejected the credentials ({status}): {said}; check the api key \
                 environment variable for this provider"
            ),
        )),
        _ if context && ((400..500).contains(&status) || kind.ends_with("_error")) => Some((
            K::ContextOverflow,
            format!(
                "the request does not fit the model's context window ({status}): {said}; \
                     shorten the input, lower max_tokens, or route it to a model with a larger \
                     context"
            ),
        )),
        "invalid_request_error" | "not_found_error" | "request_too_large"
            if (200..300).contains(&status) =>
        {
            Some((
                K::InvalidRequest,
                format!("the provider rejected the request ({status}): {said}"),
            ))
        }
        _ => None,
    };
    if let Some((kind, message)) = refined
        && kind != err.kind
    {
        err.kind = kind;
        err.message = message;
    }
    if status == 429 || err.kind == K::RateLimited {
        let resets = reset_hints(headers).max();
        err.retry_after = err.retry_after.max(resets);
    }
    err
}

fn quota_message(status: u16, said: &str) -> String {
    format!(
        "the provider account is out of credit ({status}): {said}; add credits, retrying will \
         not help"
    )
}

/// The time until each used-up limit resets (a limit without a remaining count counts as used
/// up).
fn reset_hints(headers: &HeaderMap) -> impl Iterator<Item = Duration> + '_ {
    let now = SystemTime::now();
    LIMITS.iter().filter_map(move |limit| {
        let remaining = header_str(headers, &format!("anthropic-ratelimit-{limit}-remaining"))
            .and_then(|v| v.parse::<u64>().ok());
        if remaining.is_some_and(|n| n > 0) {
            return None;
        }
        let reset = header_str(headers, &format!("anthropic-ratelimit-{limit}-reset"))
            .and_then(parse_rfc3339)?;
        Some(
            reset
                .duration_since(now)
                .unwrap_or(Duration::ZERO)
                .min(MAX_HINT),
        )
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::UNIX_EPOCH;

    use super::*;

    fn error_body(kind: &str, message: &str) -> Vec<u8> {
        serde_json::json!({"type": "error", "error": {"type": kind, "message": message}})
            .to_string()
            .into_bytes()
    }

    #[test]
    fn anthropic_error_types_are_typed() {
        use ProviderErrorKind as K;
        let h = HeaderMap::new();
        let kind = |status, kind: &str, message: &str| {
            classify(status, &h, &error_body(kind, message)).kind
        };
        assert_eq!(kind(529, "overloaded_error", "Overloaded"), K::Transient);
        assert_eq!(kind(500, "api_error", "Internal"), K::Transient);
        assert_eq!(kind(429, "rate_limit_error", "slow down"), K::RateLimited);
        assert_eq!(
            kind(401, "authentication_error", "invalid x-api-key"),
            K::Auth
        );
        assert_eq!(kind(403, "permission_error", "no"), K::Auth);
        assert_eq!(
            kind(
                400,
                "invalid_request_error",
                "prompt is too long: 210000 tokens > 200000 maximum"
            ),
            K::ContextOverflow
        );
        assert_eq!(
            kind(
                400,
                "invalid_request_error",
                "input length and `max_tokens` exceed context limit: 197000 + 8192 > 200000"
            ),
            K::ContextOverflow
        );
        assert_eq!(
            kind(
                400,
                "invalid_request_error",
                "Your credit balance is too low to access the Anthropic API."
            ),
            K::QuotaExhausted
        );
        assert_eq!(
            kind(400, "invalid_request_error", "max_tokens: required"),
            K::InvalidRequest
        );
        assert_eq!(
            kind(404, "not_found_error", "model: claude-x"),
            K::InvalidRequest
        );
        assert_eq!(kind(200, "overloaded_error", "Overloaded"), K::Transient);
        assert_eq!(classify(529, &h, b"").kind, K::Transient);
    }

    #[test]
    fn rate_limit_hints_come_from_retry_after_and_reset_times() {
        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let later = |secs: u64| {
            let t = SystemTime::now() + Duration::from_secs(secs);
            let unix = t.duration_since(UNIX_EPOCH).unwrap().as_secs();
            let days = unix / 86_400;
            // Only the time of day matters for a few seconds ahead: build today's date.
            let (y, m, d) = civil_from_days(days as i64);
            let s = unix % 86_400;
            format!(
                "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
                s / 3600,
                s / 60 % 60,
                s % 60
            )
        };
        h.insert("anthropic-ratelimit-tokens-remaining", "0".parse().unwrap());
        h.insert(
            "anthropic-ratelimit-tokens-reset",
            later(20).parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-remaining",
            "7".parse().unwrap(),
        );
        h.insert(
            "anthropic-ratelimit-requests-reset",
            later(50).parse().unwrap(),
        );
        let err = classify(429, &h, &error_body("rate_limit_error", "tokens"));
        assert_eq!(err.kind, ProviderErrorKind::RateLimited);
        let hint = err.retry_after.unwrap();
        assert!(
            hint > Duration::from_secs(17) && hint <= Duration::from_secs(20),
            "{hint:?}"
        );

        let mut h = HeaderMap::new();
        h.insert("retry-after", "3".parse().unwrap());
        let err = classify(429, &h, &error_body("rate_limit_error", "requests"));
        assert_eq!(err.retry_after, Some(Duration::from_secs(3)));
    }

    /// The inverse of `days_from_civil`, for the test above.
    fn civil_from_days(z: i64) -> (i64, u64, u64) {
        let z = z + 719_468;
        let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = (doy - (153 * mp + 2) / 5 + 1) as u64;
        let m = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
        (yoe + era * 400 + i64::from(m <= 2), m, d)
    }
}
