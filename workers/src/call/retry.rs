//! Retries, in exactly one place.
//!
//! - [`call_with_retry`] retries one provider call in place, with `backon`: exponential backoff
//!   with full jitter (a uniform delay in `[0, min(cap, base * 2^n)]`), only for errors that are
//!   [`ProviderError::is_retryable`] (rate limited, transient, and a malformed response at most
//!   once more). When the provider sends a hint (`Retry-After`, `retry-after-ms`,
//!   `x-ratelimit-reset-*`, parsed into [`ProviderError::retry_after`]), the wait is the longer of
//!   the hint and the jittered backoff, never more than [`MAX_HINTED_DELAY`].
//! - [`call_with_retry_gated`] asks a gate (the per-model retry budget) before each retry.
//! - [`backoff_delay`] is the same full-jitter delay, for the queue's job-level "retry later".
//!
//! backon's own `ExponentialBuilder::with_jitter` adds a random `[0, delay)` on top of the delay
//! (so between 1x and 2x); it is not full jitter, so the delays come from [`FullJitter`], an
//! iterator backon drives like any other backoff.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use backon::Retryable as _;
use serde::Deserialize;

use crate::provider::{Completion, ProviderError, ProviderErrorKind};

/// The longest wait a provider's hint can ask for in place. Longer hints are cut to this.
pub const MAX_HINTED_DELAY: Duration = Duration::from_secs(5 * 60);

/// How many times a malformed response is retried in place (after the first one).
const MALFORMED_RETRIES: u32 = 1;

/// In-place retries of one provider call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(from = "RetryPolicyFile")]
pub struct RetryPolicy {
    /// The first backoff ceiling; it doubles with each retry.
    pub base: Duration,
    /// The backoff ceiling never exceeds this.
    pub cap: Duration,
    /// Attempts in place, the first included. 1 means no retry; 0 is taken as 1.
    pub max_attempts: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_attempts: 4,
        }
    }
}

/// The config file's shape: `base_ms`, `cap_ms`, `max_attempts`, all optional.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RetryPolicyFile {
    base_ms: u64,
    cap_ms: u64,
    max_attempts: u32,
}

impl Default for RetryPolicyFile {
    fn default() -> Self {
        let policy = RetryPolicy::default();
        Self {
            base_ms: u64::try_from(policy.base.as_millis()).unwrap_or(u64::MAX),
            cap_ms: u64::try_from(policy.cap.as_millis()).unwrap_or(u64::MAX),
            max_attempts: policy.max_attempts,
        }
    }
}

impl From<RetryPolicyFile> for RetryPolicy {
    fn from(file: RetryPolicyFile) -> Self {
        Self {
            base: Duration::from_millis(file.base_ms),
            cap: Duration::from_millis(file.cap_ms),
            max_attempts: file.max_attempts,
        }
    }
}

impl RetryPolicy {
    /// The backoff ceiling for retry `n` (0 for the first retry): `min(cap, base * 2^n)`.
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 1u32.checked_shl(n.min(31)).unwrap_or(u32::MAX);
        self.base.saturating_mul(factor).min(self.cap)
    }
}

/// A full-jitter delay for retry `n` (0 for the first retry): uniform in
/// `[0, min(cap, base * 2^n)]`. Also the job-level retry-later delay.
pub fn backoff_delay(policy: &RetryPolicy, n: u32) -> Duration {
    let ceiling = policy.ceiling(n);
    let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
    if nanos == 0 {
        return Duration::ZERO;
    }
    Duration::from_nanos(rand::random_range(0..=nanos))
}

/// Full-jitter exponential delays, `max_retries` of them, as a backon backoff.
#[derive(Debug, Clone)]
pub struct FullJitter {
    policy: RetryPolicy,
    next: u32,
    max_retries: u32,
}

impl FullJitter {
    pub fn new(policy: &RetryPolicy) -> Self {
        Self {
            policy: *policy,
            next: 0,
            max_retries: policy.max_attempts.max(1) - 1,
        }
    }
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.next >= self.max_retries {
            return None;
        }
        let delay = backoff_delay(&self.policy, self.next);
        self.next += 1;
        Some(delay)
    }
}

/// The wait before the next attempt: the backoff, or the provider's hint when that is longer.
fn adjusted_delay(err: &ProviderError, backoff: Duration) -> Duration {
    match err.retry_after {
        Some(hint) => hint.min(MAX_HINTED_DELAY).max(backoff),
        None => backoff,
    }
}

/// Calls `f` until it succeeds, fails with an error not worth retrying, or runs out of attempts.
/// Returns the last result and the number of attempts made (at least 1).
pub async fn call_with_retry<F, Fut>(
    policy: &RetryPolicy,
    f: F,
) -> (Result<Completion, ProviderError>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Completion, ProviderError>>,
{
    call_with_retry_gated(policy, |_| async { true }, f).await
}

/// As [`call_with_retry`], but asks `gate` before every retry (the per-model retry budget, or
/// a provider hint too long to wait out in place). It is asked right after the failure, before
/// any backoff sleep; a retry it refuses is not made and the last error is returned as it is.
pub async fn call_with_retry_gated<F, Fut, G, GFut>(
    policy: &RetryPolicy,
    gate: G,
    mut f: F,
) -> (Result<Completion, ProviderError>, u32)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<Completion, ProviderError>>,
    G: Fn(&ProviderError) -> GFut,
    GFut: Future<Output = bool>,
{
    let attempts = AtomicU32::new(0);
    let malformed = AtomicU32::new(0);
    let refused = AtomicBool::new(false);
    let max_attempts = policy.max_attempts.max(1);
    let result = (|| {
        // Futures are lazy: building this sends nothing until it is awaited.
        let call = f();
        let (attempts, refused, gate) = (&attempts, &refused, &gate);
        async move {
            let made = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let result = call.await;
            // Ask the gate now, before backon sleeps: a refused retry costs no wait.
            if let Err(e) = &result
                && e.is_retryable()
                && made < max_attempts
                && !gate(e).await
            {
                refused.store(true, Ordering::Relaxed);
                tracing::warn!(
                    kind = e.kind.code(),
                    "retry refused by the gate (retry budget or long wait)"
                );
            }
            result
        }
    })
    .retry(FullJitter::new(policy))
    .when(|err: &ProviderError| {
        if refused.load(Ordering::Relaxed) || !err.is_retryable() {
            return false;
        }
        if err.kind == ProviderErrorKind::MalformedResponse {
            return malformed.fetch_add(1, Ordering::Relaxed) < MALFORMED_RETRIES;
        }
        true
    })
    .adjust(|err, backoff| backoff.map(|d| adjusted_delay(err, d)))
    .notify(|err, delay| {
        crate::metrics::retried(err.kind.code());
        // The backoff sleep that follows is policy, not orchestration overhead.
        crate::metrics::overhead::exclude(delay);
        tracing::warn!(
            attempt = attempts.load(Ordering::Relaxed),
            kind = err.kind.code(),
            status = err.status,
            delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
            error = %err.message,
            "provider call failed, retrying"
        );
    })
    .await;
    (result, attempts.load(Ordering::Relaxed).max(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::Instant;

    use super::*;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            max_attempts: 4,
        }
    }

    fn ok() -> Completion {
        Completion {
            body: serde_json::json!({"choices": []}),
            request_id: "r".to_owned(),
            input_tokens: 1,
            output_tokens: 1,
            finish_reason: Some("stop".to_owned()),
            simulated: false,
            rate_limits: None,
        }
    }

    fn err(kind: ProviderErrorKind) -> ProviderError {
        ProviderError::new(kind, "boom")
    }

    /// Runs `call_with_retry` over a scripted list of results (the last one repeats).
    async fn scripted(
        policy: &RetryPolicy,
        script: Vec<Result<Completion, ProviderError>>,
    ) -> (Result<Completion, ProviderError>, u32) {
        let calls = AtomicU32::new(0);
        let script = &script;
        call_with_retry(policy, || {
            let i = calls.fetch_add(1, Ordering::Relaxed) as usize;
            let result = script[i.min(script.len() - 1)].clone();
            async move { result }
        })
        .await
    }

    #[test]
    fn policy_defaults_and_config_names() {
        let p: RetryPolicy = serde_json::from_str("{}").unwrap();
        assert_eq!(p, RetryPolicy::default());
        assert_eq!(p.base, Duration::from_millis(500));
        assert_eq!(p.cap, Duration::from_secs(30));
        assert_eq!(p.max_attempts, 4);
        let p: RetryPolicy =
            serde_json::from_str(r#"{"base_ms": 10, "cap_ms": 100, "max_attempts": 2}"#).unwrap();
        assert_eq!(p.base, Duration::from_millis(10));
        assert!(serde_json::from_str::<RetryPolicy>(r#"{"base": 10}"#).is_err());
    }

    #[test]
    fn backoff_is_full_jitter_under_a_doubling_capped_ceiling() {
        let p = RetryPolicy::default();
        assert_eq!(p.ceiling(0), Duration::from_millis(500));
        assert_eq!(p.ceiling(1), Duration::from_secs(1));
        assert_eq!(p.ceiling(3), Duration::from_secs(4));
        assert_eq!(p.ceiling(10), Duration::from_secs(30));
        assert_eq!(p.ceiling(u32::MAX), Duration::from_secs(30));
        let mut below_half = 0;
        for _ in 0..2000 {
            let d = backoff_delay(&p, 2);
            assert!(d <= Duration::from_secs(2));
            if d < Duration::from_secs(1) {
                below_half += 1;
            }
        }
        // Uniform on [0, 2s]: about half fall below 1 s (full jitter, not "delay + jitter").
        assert!((700..1300).contains(&below_half), "{below_half}");
        let zero = RetryPolicy {
            base: Duration::ZERO,
            ..p
        };
        assert_eq!(backoff_delay(&zero, 3), Duration::ZERO);
    }

    #[test]
    fn full_jitter_yields_max_attempts_minus_one_delays() {
        assert_eq!(FullJitter::new(&fast()).count(), 3);
        let once = RetryPolicy {
            max_attempts: 0,
            ..fast()
        };
        assert_eq!(FullJitter::new(&once).count(), 0);
    }

    #[test]
    fn a_hint_longer_than_the_backoff_wins_and_is_capped() {
        let mut e = err(ProviderErrorKind::RateLimited);
        assert_eq!(
            adjusted_delay(&e, Duration::from_millis(7)),
            Duration::from_millis(7)
        );
        e.retry_after = Some(Duration::from_millis(50));
        assert_eq!(
            adjusted_delay(&e, Duration::from_millis(7)),
            Duration::from_millis(50)
        );
        assert_eq!(
            adjusted_delay(&e, Duration::from_millis(70)),
            Duration::from_millis(70)
        );
        e.retry_after = Some(Duration::from_secs(3600));
        assert_eq!(adjusted_delay(&e, Duration::ZERO), MAX_HINTED_DELAY);
    }

    #[tokio::test]
    async fn success_first_time_is_one_attempt() {
        let (result, attempts) = scripted(&fast(), vec![Ok(ok())]).await;
        assert!(result.is_ok());
        assert_eq!(attempts, 1);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_until_success() {
        let script = vec![
            Err(err(ProviderErrorKind::Transient)),
            Err(err(ProviderErrorKind::RateLimited)),
            Ok(ok()),
        ];
        let (result, attempts) = scripted(&fast(), script).await;
        assert!(result.is_ok());
        assert_eq!(attempts, 3);
    }

    #[tokio::test]
    async fn retries_stop_at_max_attempts() {
        let (result, attempts) =
            scripted(&fast(), vec![Err(err(ProviderErrorKind::Transient))]).await;
        assert_eq!(result.unwrap_err().kind, ProviderErrorKind::Transient);
        assert_eq!(attempts, 4);
    }

    #[tokio::test]
    async fn errors_not_worth_retrying_are_returned_at_once() {
        for kind in [
            ProviderErrorKind::ContextOverflow,
            ProviderErrorKind::InvalidRequest,
            ProviderErrorKind::Auth,
            ProviderErrorKind::QuotaExhausted,
            ProviderErrorKind::ContentFilter,
        ] {
            let (result, attempts) = scripted(&fast(), vec![Err(err(kind))]).await;
            assert_eq!(result.unwrap_err().kind, kind);
            assert_eq!(attempts, 1, "{kind:?}");
        }
    }

    #[tokio::test]
    async fn malformed_responses_are_retried_once_only() {
        let (result, attempts) = scripted(
            &fast(),
            vec![Err(err(ProviderErrorKind::MalformedResponse))],
        )
        .await;
        assert_eq!(
            result.unwrap_err().kind,
            ProviderErrorKind::MalformedResponse
        );
        assert_eq!(attempts, 2);
    }

    #[tokio::test]
    async fn the_retry_after_hint_is_honoured() {
        let mut limited = err(ProviderErrorKind::RateLimited);
        limited.retry_after = Some(Duration::from_millis(60));
        let started = Instant::now();
        let (result, attempts) = scripted(&fast(), vec![Err(limited), Ok(ok())]).await;
        assert!(result.is_ok());
        assert_eq!(attempts, 2);
        assert!(started.elapsed() >= Duration::from_millis(60));
    }
}
