//! `classify()`: error responses (status, headers, body) to typed provider errors with the
//! provider's retry hint.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use batchyard_jobs::retry::Retryable as _;
use batchyard_workers::provider::ProviderErrorKind;
use batchyard_workers::provider::openai::classify;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::json;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for (name, value) in pairs {
        map.insert(*name, HeaderValue::from_str(value).expect("header value"));
    }
    map
}

fn openai_error(code: &str, kind: &str, message: &str) -> Vec<u8> {
    json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
        .to_string()
        .into_bytes()
}

#[test]
fn classify_insufficient_quota_is_quota_exhausted_not_rate_limited() {
    let none = HeaderMap::new();
    let quota = openai_error(
        "insufficient_quota",
        "insufficient_quota",
        "You exceeded your current quota",
    );
    let err = classify(429, &none, &quota);
    assert_eq!(err.kind, ProviderErrorKind::QuotaExhausted);
    assert!(!err.is_retryable());
    // Some providers put it only in `type`.
    let quota = openai_error("", "insufficient_quota", "out of credit");
    assert_eq!(
        classify(429, &none, &quota).kind,
        ProviderErrorKind::QuotaExhausted
    );
    let limited = openai_error("rate_limit_exceeded", "requests", "slow down");
    let err = classify(429, &none, &limited);
    assert_eq!(err.kind, ProviderErrorKind::RateLimited);
    assert!(err.is_retryable());
}

#[test]
fn classify_maps_statuses_and_codes_to_kinds() {
    use ProviderErrorKind as K;
    let none = HeaderMap::new();
    let plain = openai_error("", "invalid_request_error", "bad");
    for (status, kind) in [
        (500, K::Transient),
        (502, K::Transient),
        (503, K::Transient),
        (504, K::Transient),
        (529, K::Transient),
        (408, K::Transient),
        (400, K::InvalidRequest),
        (404, K::InvalidRequest),
        (422, K::InvalidRequest),
        (401, K::Auth),
        (403, K::Auth),
    ] {
        let err = classify(status, &none, &plain);
        assert_eq!(err.kind, kind, "status {status}");
        assert_eq!(err.status, Some(status));
    }
    let context = openai_error(
        "context_length_exceeded",
        "invalid_request_error",
        "too long",
    );
    assert_eq!(classify(400, &none, &context).kind, K::ContextOverflow);
    let context_in_message = openai_error(
        "",
        "invalid_request_error",
        "error code: context_length_exceeded",
    );
    assert_eq!(
        classify(400, &none, &context_in_message).kind,
        K::ContextOverflow
    );
    for code in ["content_filter", "content_policy_violation"] {
        let filtered = openai_error(code, "invalid_request_error", "blocked");
        assert_eq!(classify(400, &none, &filtered).kind, K::ContentFilter);
    }
    // Not JSON at all (a proxy's HTML page) still classifies by status.
    assert_eq!(
        classify(503, &none, b"<html>503 Service Unavailable</html>").kind,
        K::Transient
    );
    // Messages are lowercase-led and one line.
    let err = classify(
        404,
        &none,
        &openai_error("model_not_found", "x", "no\nsuch model"),
    );
    assert!(err.message.starts_with("the provider"), "{}", err.message);
    assert!(!err.message.contains('\n'));
    assert!(err.message.contains("check the model name"));
}

/// An IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).expect("after 1970").as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let weekday = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
    // Howard Hinnant's civil_from_days.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let months = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{weekday}, {day:02} {} {year} {:02}:{:02}:{:02} GMT",
        months[(month - 1) as usize],
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[test]
fn classify_reads_retry_after_as_seconds_or_http_date() {
    let busy = openai_error("", "server_error", "overloaded");
    let err = classify(503, &headers(&[("retry-after", "7")]), &busy);
    assert_eq!(err.retry_after, Some(Duration::from_secs(7)));

    assert_eq!(
        http_date(UNIX_EPOCH + Duration::from_secs(784_111_777)),
        "Sun, 06 Nov 1994 08:49:37 GMT"
    );
    let in_two_minutes = http_date(SystemTime::now() + Duration::from_secs(120));
    let err = classify(429, &headers(&[("retry-after", &in_two_minutes)]), &busy);
    let hint = err.retry_after.expect("a hint from the date");
    assert!(
        hint > Duration::from_secs(115) && hint <= Duration::from_secs(120),
        "{hint:?}"
    );
    // A date in the past means "now".
    let err = classify(
        429,
        &headers(&[("retry-after", "Sun, 06 Nov 1994 08:49:37 GMT")]),
        &busy,
    );
    assert_eq!(err.retry_after, Some(Duration::ZERO));
    // Garbage is ignored, not fatal.
    let err = classify(429, &headers(&[("retry-after", "whenever")]), &busy);
    assert_eq!(err.retry_after, None);
    // retry-after-ms, and the larger of two hints.
    let err = classify(
        429,
        &headers(&[("retry-after-ms", "1500"), ("retry-after", "1")]),
        &busy,
    );
    assert_eq!(err.retry_after, Some(Duration::from_millis(1500)));
}

#[test]
fn classify_reads_ratelimit_reset_durations() {
    let limited = openai_error("rate_limit_exceeded", "requests", "slow down");
    let ms = Duration::from_millis;
    for (value, expected) in [
        ("1s", ms(1000)),
        ("6m0s", ms(360_000)),
        ("20ms", ms(20)),
        ("1m30.5s", ms(90_500)),
        ("0.25s", ms(250)),
    ] {
        let err = classify(
            429,
            &headers(&[("x-ratelimit-reset-requests", value)]),
            &limited,
        );
        assert_eq!(err.retry_after, Some(expected), "{value}");
        let err = classify(
            429,
            &headers(&[("x-ratelimit-reset-tokens", value)]),
            &limited,
        );
        assert_eq!(err.retry_after, Some(expected), "{value}");
    }
    // Both present: the longer wins.
    let both = headers(&[
        ("x-ratelimit-reset-requests", "20ms"),
        ("x-ratelimit-reset-tokens", "6m0s"),
    ]);
    assert_eq!(
        classify(429, &both, &limited).retry_after,
        Some(ms(360_000))
    );
    // A limit that still has room does not hold the retry back.
    let room = headers(&[
        ("x-ratelimit-reset-requests", "20ms"),
        ("x-ratelimit-remaining-requests", "0"),
        ("x-ratelimit-reset-tokens", "6m0s"),
        ("x-ratelimit-remaining-tokens", "15000"),
    ]);
    assert_eq!(classify(429, &room, &limited).retry_after, Some(ms(20)));
}
