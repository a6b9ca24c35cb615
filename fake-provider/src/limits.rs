//! RPM / TPM enforcement in fixed 60 s windows aligned to the minute on the wall clock, and the
//! per-window counts `/stats` reports.
//!
//! A request is admitted when one more request, and its prompt tokens plus its reply's tokens,
//! fit the current window; it is then counted. When the answer is not a completion (a fault),
//! the window keeps only its prompt tokens ([`Limiter::settle`]). Rejected requests are counted
//! apart and never enter `requests` / `tokens`, so `max_*_per_window` is what admitted requests
//! used.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

use crate::lock;

/// Windows kept for `/stats`: a day.
const KEEP_WINDOWS: usize = 24 * 60;

#[derive(Debug, Clone, Copy)]
struct Window {
    start: u64,
    requests: u64,
    tokens: u64,
    rejected: u64,
}

pub struct Limiter {
    /// Seconds per window (60 unless a test shortens it); windows align to multiples of it.
    window_secs: u64,
    rpm: Option<u64>,
    tpm: Option<u64>,
    windows: Mutex<VecDeque<Window>>,
}

/// The verdict on one request, with what the rate-limit headers need.
#[derive(Debug, Clone)]
pub struct Admission {
    pub admitted: bool,
    /// `requests` or `tokens`, for a rejection.
    pub rejected_by: &'static str,
    pub rpm: Option<u64>,
    pub tpm: Option<u64>,
    /// The window's counts, including this request when admitted.
    pub requests_used: u64,
    pub tokens_used: u64,
    /// Tokens this request asked for.
    pub cost: u64,
    window_start: u64,
    /// Until the window ends.
    pub reset: Duration,
    pub window_end: SystemTime,
}

impl Limiter {
    pub fn new(rpm: Option<u64>, tpm: Option<u64>, window_secs: u64) -> Self {
        Self {
            window_secs: window_secs.max(1),
            rpm,
            tpm,
            windows: Mutex::new(VecDeque::new()),
        }
    }

    pub fn admit(&self, cost: u64) -> Admission {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        let start = now.as_secs() / self.window_secs * self.window_secs;
        let end = Duration::from_secs(start + self.window_secs);
        let mut windows = lock(&self.windows);
        if windows.back().is_none_or(|w| w.start != start) {
            windows.push_back(Window {
                start,
                requests: 0,
                tokens: 0,
                rejected: 0,
            });
            while windows.len() > KEEP_WINDOWS {
                windows.pop_front();
            }
        }
        let mut admission = Admission {
            admitted: true,
            rejected_by: "",
            rpm: self.rpm,
            tpm: self.tpm,
            requests_used: 0,
            tokens_used: 0,
            cost,
            window_start: start,
            reset: end.saturating_sub(now),
            window_end: UNIX_EPOCH + end,
        };
        let Some(window) = windows.back_mut() else {
            return admission;
        };
        if self.rpm.is_some_and(|rpm| window.requests + 1 > rpm) {
            admission.rejected_by = "requests";
        } else if self.tpm.is_some_and(|tpm| window.tokens + cost > tpm) {
            admission.rejected_by = "tokens";
        }
        if admission.rejected_by.is_empty() {
            window.requests += 1;
            window.tokens += cost;
        } else {
            admission.admitted = false;
            window.rejected += 1;
        }
        admission.requests_used = window.requests;
        admission.tokens_used = window.tokens;
        admission
    }

    /// Corrects an admitted request's tokens to what it used (never more than it reserved).
    pub fn settle(&self, admission: &Admission, used: u64) {
        let refund = admission.cost.saturating_sub(used);
        if !admission.admitted || refund == 0 {
            return;
        }
        let mut windows = lock(&self.windows);
        if let Some(w) = windows
            .iter_mut()
            .rev()
            .find(|w| w.start == admission.window_start)
        {
            w.tokens = w.tokens.saturating_sub(refund);
        }
    }

    pub fn stats(&self) -> Value {
        let windows = lock(&self.windows);
        let max_requests = windows.iter().map(|w| w.requests).max().unwrap_or(0);
        let max_tokens = windows.iter().map(|w| w.tokens).max().unwrap_or(0);
        let list: Vec<Value> = windows
            .iter()
            .map(|w| {
                json!({
                    "start": w.start,
                    "requests": w.requests,
                    "tokens": w.tokens,
                    "rejected": w.rejected,
                })
            })
            .collect();
        json!({
            "rpm": self.rpm,
            "tpm": self.tpm,
            "max_requests_per_window": max_requests,
            "max_tokens_per_window": max_tokens,
            "windows": list,
        })
    }
}

fn insert(headers: &mut HeaderMap, name: &'static str, value: String) {
    if let Ok(value) = HeaderValue::from_str(&value) {
        headers.insert(name, value);
    }
}

/// Whole seconds until the window ends, at least 1: what `retry-after` says.
pub fn retry_after_secs(admission: &Admission) -> u64 {
    admission.reset.as_secs_f64().ceil().max(1.0) as u64
}

/// OpenAI's `x-ratelimit-*` headers, and `retry-after` on a rejection.
pub fn openai_headers(admission: &Admission, headers: &mut HeaderMap) {
    let reset = go_duration(admission.reset);
    if let Some(rpm) = admission.rpm {
        let left = rpm.saturating_sub(admission.requests_used);
        insert(headers, "x-ratelimit-limit-requests", rpm.to_string());
        insert(headers, "x-ratelimit-remaining-requests", left.to_string());
        insert(headers, "x-ratelimit-reset-requests", reset.clone());
    }
    if let Some(tpm) = admission.tpm {
        let left = tpm.saturating_sub(admission.tokens_used);
        insert(headers, "x-ratelimit-limit-tokens", tpm.to_string());
        insert(headers, "x-ratelimit-remaining-tokens", left.to_string());
        insert(headers, "x-ratelimit-reset-tokens", reset);
    }
    if !admission.admitted {
        insert(
            headers,
            "retry-after",
            retry_after_secs(admission).to_string(),
        );
    }
}

/// Anthropic's `anthropic-ratelimit-*` headers (resets as RFC 3339), and `retry-after` on a
/// rejection.
pub fn anthropic_headers(admission: &Admission, headers: &mut HeaderMap) {
    let reset = rfc3339(admission.window_end);
    if let Some(rpm) = admission.rpm {
        let left = rpm.saturating_sub(admission.requests_used);
        insert(
            headers,
            "anthropic-ratelimit-requests-limit",
            rpm.to_string(),
        );
        insert(
            headers,
            "anthropic-ratelimit-requests-remaining",
            left.to_string(),
        );
        insert(headers, "anthropic-ratelimit-requests-reset", reset.clone());
    }
    if let Some(tpm) = admission.tpm {
        let left = tpm.saturating_sub(admission.tokens_used);
        insert(headers, "anthropic-ratelimit-tokens-limit", tpm.to_string());
        insert(
            headers,
            "anthropic-ratelimit-tokens-remaining",
            left.to_string(),
        );
        insert(headers, "anthropic-ratelimit-tokens-reset", reset);
    }
    if !admission.admitted {
        insert(
            headers,
            "retry-after",
            retry_after_secs(admission).to_string(),
        );
    }
}

/// A duration as Go prints it, the way OpenAI's reset headers do: `20ms`, `12.5s`, `1m0s`.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let minutes = ms / 60_000;
    let rest_ms = ms % 60_000;
    let secs = format!("{}.{:03}", rest_ms / 1000, rest_ms % 1000);
    let secs = secs.trim_end_matches('0').trim_end_matches('.');
    if minutes > 0 {
        format!("{minutes}m{secs}s")
    } else {
        format!("{secs}s")
    }
}

/// `2025-01-02T03:04:05Z` (whole seconds, UTC).
pub fn rfc3339(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

/// The date of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn go_durations_and_rfc3339() {
        let ms = Duration::from_millis;
        assert_eq!(go_duration(ms(20)), "20ms");
        assert_eq!(go_duration(ms(12_500)), "12.5s");
        assert_eq!(go_duration(ms(1_000)), "1s");
        assert_eq!(go_duration(ms(60_000)), "1m0s");
        assert_eq!(go_duration(ms(61_250)), "1m1.25s");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(784_111_777);
        assert_eq!(rfc3339(t), "1994-11-06T08:49:37Z");
    }

    #[test]
    fn windows_admit_up_to_the_limits_and_settle_refunds() {
        let limiter = Limiter::new(Some(3), Some(100), 60);
        let first = limiter.admit(40);
        assert!(first.admitted);
        assert!(limiter.admit(40).admitted);
        let over = limiter.admit(40);
        assert!(!over.admitted);
        assert_eq!(over.rejected_by, "tokens");
        limiter.settle(&first, 10);
        assert!(limiter.admit(40).admitted);
        let over = limiter.admit(1);
        assert_eq!(over.rejected_by, "requests");
        let stats = limiter.stats();
        // Unless the minute turned during the test.
        if stats["windows"].as_array().unwrap().len() == 1 {
            assert_eq!(stats["max_requests_per_window"], 3);
            assert_eq!(stats["max_tokens_per_window"], 90);
            assert_eq!(stats["windows"][0]["rejected"], 2);
        }
    }
}
