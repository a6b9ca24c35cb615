//! Gemini error replies as typed errors.
//!
//! Bodies look like `{"error":{"code":429,"message":"...","status":"RESOURCE_EXHAUSTED",
//! "details":[{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"12s"}, ...]}}`
//! (Google's `google.rpc.Status`). The HTTP status decides first, through the shared
//! classification ([`http::classify`]); the `status` string and the details then refine it:
//! - `RESOURCE_EXHAUSTED` (429): `rate_limited`, with `RetryInfo.retryDelay` as the retry hint.
//!   Google words per-minute limits as "You exceeded your current quota, please check your
//!   plan and billing details", so that wording alone means nothing; only a per-day quota
//!   (`QuotaFailure` ids with `PerDay`) or depleted credits / disabled billing is
//!   `quota_exhausted`, which pauses the model;
//! - `UNAUTHENTICATED`, `PERMISSION_DENIED`, and the 400 `API_KEY_INVALID` Google answers to a
//!   wrong key: `auth`;
//! - `INVALID_ARGUMENT` saying the input has too many tokens: `context_overflow`;
//! - `FAILED_PRECONDITION` about billing (free tier unavailable in a region): `quota_exhausted`;
//! - `UNAVAILABLE`, `INTERNAL`, `DEADLINE_EXCEEDED`: `transient`.

use std::time::Duration;

use reqwest::header::HeaderMap;
use serde_json::Value;

use crate::provider::http::{
    self, MAX_HINT, MAX_PROVIDER_MESSAGE_CHARS, parse_go_duration, snippet,
};
use crate::provider::{ProviderError, ProviderErrorKind};

/// Turns an error response into a typed error, with the provider's retry hint.
pub fn classify(status: u16, headers: &HeaderMap, body: &[u8]) -> ProviderError {
    let value = serde_json::from_slice::<Value>(body).unwrap_or(Value::Null);
    // The streaming endpoint (and some proxies) wrap the error in a one-element array.
    let value = match value {
        Value::Array(mut list) if !list.is_empty() => list.swap_remove(0),
        other => other,
    };
    let bytes = value.to_string();
    let shared = if value.is_null() {
        http::classify(status, headers, body)
    } else {
        http::classify(status, headers, bytes.as_bytes())
    };
    refine(shared, status, &value)
}

/// [`classify`] for a body already parsed (a 2xx that carried an error object).
pub(super) fn classify_value(status: u16, headers: &HeaderMap, body: &Value) -> ProviderError {
    let mut err = classify(status, headers, body.to_string().as_bytes());
    if (200..300).contains(&status) && err.kind == ProviderErrorKind::MalformedResponse {
        err.message = format!(
            "the provider answered {status} with an error object instead of an answer: {}",
            said(body)
        );
    }
    err
}

fn said(body: &Value) -> String {
    let message = body
        .get("error")
        .and_then(|e| e.get("message"))
        .and_then(Value::as_str)
        .unwrap_or("no message");
    snippet(message, MAX_PROVIDER_MESSAGE_CHARS)
}

/// The `details[]` entries of one `@type` (matched by its last path part, e.g. `RetryInfo`).
fn details<'a>(body: &'a Value, kind: &'a str) -> impl Iterator<Item = &'a Value> + 'a {
    body.get("error")
        .and_then(|e| e.get("details"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .filter(move |d| {
            d.get("@type")
                .and_then(Value::as_str)
                .is_some_and(|t| t.rsplit(['/', '.']).next() == Some(kind))
        })
}

/// `RetryInfo.retryDelay` (a protobuf duration such as `"12s"` or `"0.5s"`).
pub fn retry_delay(body: &Value) -> Option<Duration> {
    details(body, "RetryInfo")
        .filter_map(|d| d.get("retryDelay").and_then(Value::as_str))
        .filter_map(parse_go_duration)
        .map(|d| d.min(MAX_HINT))
        .max()
}

/// A `QuotaFailure` whose every violated quota is a daily one: waiting minutes will not help.
fn daily_quota(body: &Value) -> bool {
    let ids: Vec<&str> = details(body, "QuotaFailure")
        .filter_map(|d| d.get("violations").and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.get("quotaId").and_then(Value::as_str))
        .collect();
    !ids.is_empty() && ids.iter().all(|id| id.contains("PerDay"))
}

fn reason(body: &Value) -> Option<&str> {
    details(body, "ErrorInfo")
        .find_map(|d| d.get("reason"))
        .and_then(Value::as_str)
}

fn refine(mut err: ProviderError, status: u16, body: &Value) -> ProviderError {
    use ProviderErrorKind as K;
    let google = body
        .get("error")
        .and_then(|e| e.get("status"))
        .and_then(Value::as_str)
        .unwrap_or("");
    let said = said(body);
    let lower = said.to_ascii_lowercase();
    let billing = lower.contains("prepayment credits")
        || lower.contains("credits are depleted")
        || lower.contains("billing account")
        || lower.contains("enable billing");
    let too_long = lower.contains("token count")
        || lower.contains("exceeds the maximum number of tokens")
        || lower.contains("too many tokens")
        || lower.contains("context window");
    let bad_key = matches!(reason(body), Some("API_KEY_INVALID" | "API_KEY_EXPIRED"))
        || lower.contains("api key not valid")
        || lower.contains("api key expired");
    let rate_limited = google == "RESOURCE_EXHAUSTED" || status == 429;
    let refined = if rate_limited && (billing || daily_quota(body)) {
        Some((K::QuotaExhausted, quota_message(status, &said)))
    } else if rate_limited && err.kind == K::QuotaExhausted {
        // The shared reading already saw an OpenAI-style `insufficient_quota` (a proxy).
        None
    } else if rate_limited {
        Some((
            K::RateLimited,
            format!(
                "rate limited by the provider ({status}): {said}; lower this model's rpm/tpm in \
                 the catalog if it keeps happening"
            ),
        ))
    } else if bad_key || matches!(google, "UNAUTHENTICATED" | "PERMISSION_DENIED") {
        Some((
            K::Auth,
            format!(
                "the provider rejected the credentials ({status}): {said}; check the api key \
                 environment variable for this provider"
            ),
        ))
    } else if google == "FAILED_PRECONDITION" && billing {
        Some((K::QuotaExhausted, quota_message(status, &said)))
    } else if google == "INVALID_ARGUMENT" && too_long {
        Some((
            K::ContextOverflow,
            format!(
                "the request does not fit the model's context window ({status}): {said}; shorten \
                 the input or route it to a model with a larger context"
            ),
        ))
    } else if matches!(google, "UNAVAILABLE" | "INTERNAL" | "DEADLINE_EXCEEDED") {
        Some((
            K::Transient,
            format!("the provider failed temporarily ({status} {google}): {said}"),
        ))
    } else {
        None
    };
    if let Some((kind, message)) = refined
        && kind != err.kind
    {
        err.kind = kind;
        err.message = message;
    }
    if err.kind == K::RateLimited {
        err.retry_after = err.retry_after.max(retry_delay(body));
    }
    err
}

fn quota_message(status: u16, said: &str) -> String {
    format!(
        "the provider account is out of quota or credit ({status}): {said}; raise the quota or \
         add billing, then `batchyard models resume` the model; retrying will not help"
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use serde_json::json;

    use super::*;

    fn google(code: u16, status: &str, message: &str, details: Value) -> Vec<u8> {
        json!({"error": {"code": code, "message": message, "status": status, "details": details}})
            .to_string()
            .into_bytes()
    }

    fn kind(code: u16, status: &str, message: &str, details: Value) -> ProviderErrorKind {
        classify(
            code,
            &HeaderMap::new(),
            &google(code, status, message, details),
        )
        .kind
    }

    #[test]
    fn resource_exhausted_is_rate_limited_with_the_retry_delay() {
        let body = google(
            429,
            "RESOURCE_EXHAUSTED",
            "You exceeded your current quota, please check your plan and billing details.",
            json!([
                {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [
                    {"quotaId": "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"}]},
                {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "12s"}
            ]),
        );
        let err = classify(429, &HeaderMap::new(), &body);
        assert_eq!(err.kind, ProviderErrorKind::RateLimited);
        assert_eq!(err.retry_after, Some(Duration::from_secs(12)));

        // A longer retry-after header wins; a fractional delay is read.
        let mut h = HeaderMap::new();
        h.insert("retry-after", "30".parse().unwrap());
        assert_eq!(
            classify(429, &h, &body).retry_after,
            Some(Duration::from_secs(30))
        );
        let body = google(
            429,
            "RESOURCE_EXHAUSTED",
            "slow down",
            json!([{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "0.25s"}]),
        );
        assert_eq!(
            classify(429, &HeaderMap::new(), &body).retry_after,
            Some(Duration::from_millis(250))
        );
        // Wrapped in an array, as the streaming endpoint sends it.
        let wrapped = format!("[{}]", String::from_utf8(body).unwrap());
        let err = classify(429, &HeaderMap::new(), wrapped.as_bytes());
        assert_eq!(err.retry_after, Some(Duration::from_millis(250)));
    }

    #[test]
    fn daily_quotas_and_billing_are_quota_exhausted() {
        use ProviderErrorKind as K;
        let daily = json!([{"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaId": "GenerateRequestsPerDayPerProjectPerModel-FreeTier"}]}]);
        assert_eq!(
            kind(429, "RESOURCE_EXHAUSTED", "quota", daily),
            K::QuotaExhausted
        );
        assert_eq!(
            kind(
                429,
                "RESOURCE_EXHAUSTED",
                "Your prepayment credits are depleted. Please go to AI Studio to manage billing.",
                json!([])
            ),
            K::QuotaExhausted
        );
        assert_eq!(
            kind(
                400,
                "FAILED_PRECONDITION",
                "Gemini API free tier is not available in your country. Please enable billing \
                 on your project in Google AI Studio.",
                json!([])
            ),
            K::QuotaExhausted
        );
    }

    #[test]
    fn google_statuses_are_typed() {
        use ProviderErrorKind as K;
        let none = json!([]);
        assert_eq!(
            kind(
                400,
                "INVALID_ARGUMENT",
                "API key not valid. Please pass a valid API key.",
                json!([{"@type": "type.googleapis.com/google.rpc.ErrorInfo",
                    "reason": "API_KEY_INVALID", "domain": "googleapis.com"}])
            ),
            K::Auth
        );
        assert_eq!(
            kind(403, "PERMISSION_DENIED", "denied", none.clone()),
            K::Auth
        );
        assert_eq!(
            kind(401, "UNAUTHENTICATED", "no key", none.clone()),
            K::Auth
        );
        assert_eq!(
            kind(
                400,
                "INVALID_ARGUMENT",
                "The input token count (1200000) exceeds the maximum number of tokens allowed \
                 (1048576).",
                none.clone()
            ),
            K::ContextOverflow
        );
        assert_eq!(
            kind(
                400,
                "INVALID_ARGUMENT",
                "Invalid value at 'generation_config.temperature'",
                none.clone()
            ),
            K::InvalidRequest
        );
        assert_eq!(
            kind(503, "UNAVAILABLE", "The model is overloaded.", none.clone()),
            K::Transient
        );
        assert_eq!(kind(500, "INTERNAL", "oops", none.clone()), K::Transient);
        assert_eq!(
            kind(504, "DEADLINE_EXCEEDED", "late", none.clone()),
            K::Transient
        );
        assert_eq!(
            kind(404, "NOT_FOUND", "models/x is not found", none.clone()),
            K::InvalidRequest
        );
        // A proxy's OpenAI-style quota error keeps its meaning.
        let proxy = br#"{"error":{"message":"out","type":"insufficient_quota","code":"insufficient_quota"}}"#;
        assert_eq!(
            classify(429, &HeaderMap::new(), proxy).kind,
            K::QuotaExhausted
        );
        // A 200 carrying an error object.
        assert_eq!(kind(200, "UNAVAILABLE", "overloaded", none), K::Transient);
        assert_eq!(
            classify(502, &HeaderMap::new(), b"<html>").kind,
            K::Transient
        );
    }
}
