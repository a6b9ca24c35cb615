//! Retries of provider calls, on top of the one retry module, [`batchyard_jobs::retry`].
//!
//! - [`call_with_retry`] retries one provider call in place: exponential backoff with full
//!   jitter, only for errors that are [`ProviderError::is_retryable`] (rate limited, transient,
//!   and a malformed response at most once more). When the provider sends a hint
//!   (`Retry-After`, `retry-after-ms`, `x-ratelimit-reset-*`, parsed into
//!   [`ProviderError::retry_after`]), the wait is the longer of the hint and the jittered
//!   backoff, never more than [`MAX_HINTED_DELAY`].
//! - [`call_with_retry_gated`] asks a gate (the per-model retry budget) before each retry.
//! - The policy, [`backoff_delay`] (the queue's job-level "retry later") and [`FullJitter`]
//!   are re-exported from `batchyard_jobs::retry`.

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

pub use batchyard_jobs::retry::{FullJitter, MAX_HINTED_DELAY, RetryPolicy, backoff_delay};
use batchyard_jobs::retry::{Retryable as _, retry};

use crate::provider::{Completion, ProviderError, ProviderErrorKind};

/// How many times a malformed response is retried in place (after the first one).
const MALFORMED_RETRIES: u32 = 1;

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
    let call = || {
        // Futures are lazy: building this sends nothing until it is awaited.
        let call = f();
        let (attempts, refused, gate) = (&attempts, &refused, &gate);
        async move {
            let made = attempts.fetch_add(1, Ordering::Relaxed) + 1;
            let result = call.await;
            // Ask the gate now, before the backoff sleep: a refused retry costs no wait.
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
    };
    let when = |err: &ProviderError| {
        if refused.load(Ordering::Relaxed) || !err.is_retryable() {
            return false;
        }
        if err.kind == ProviderErrorKind::MalformedResponse {
            return malformed.fetch_add(1, Ordering::Relaxed) < MALFORMED_RETRIES;
        }
        true
    };
    let notify = |err: &ProviderError, delay: std::time::Duration| {
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
    };
    let hint = |err: &ProviderError| err.retry_after;
    let result = retry(FullJitter::new(policy), call, when, hint, notify).await;
    (result, attempts.load(Ordering::Relaxed).max(1))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::time::{Duration, Instant};

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
            cached_input_tokens: 0,
            cache_write_input_tokens: 0,
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
