//! The retry gate: the per-model retry budget can stop in-place retries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use batchyard_workers::call::retry::{RetryPolicy, call_with_retry_gated};
use batchyard_workers::provider::{ProviderError, ProviderErrorKind};

fn policy() -> RetryPolicy {
    RetryPolicy {
        base: Duration::from_millis(1),
        cap: Duration::from_millis(2),
        max_attempts: 5,
    }
}

#[tokio::test]
async fn a_refusing_gate_stops_retries_without_a_call() {
    let calls = AtomicU32::new(0);
    let (result, attempts) = call_with_retry_gated(
        &policy(),
        |_| async { false },
        || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err(ProviderError::new(ProviderErrorKind::Transient, "503")) }
        },
    )
    .await;
    assert_eq!(result.unwrap_err().kind, ProviderErrorKind::Transient);
    assert_eq!(attempts, 1);
    // The closure may build a future for the refused attempt, but it is never awaited.
    assert!(calls.load(Ordering::Relaxed) <= 2);
}

#[tokio::test]
async fn a_gate_that_allows_two_retries_gives_three_attempts() {
    let allowed = AtomicU32::new(2);
    let (result, attempts) = call_with_retry_gated(
        &policy(),
        |_| {
            let ok = allowed
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok();
            async move { ok }
        },
        || async { Err(ProviderError::new(ProviderErrorKind::RateLimited, "429")) },
    )
    .await;
    assert!(result.is_err());
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn errors_not_worth_retrying_never_ask_the_gate() {
    let asked = AtomicU32::new(0);
    let (_, attempts) = call_with_retry_gated(
        &policy(),
        |_| {
            asked.fetch_add(1, Ordering::Relaxed);
            async { true }
        },
        || async { Err(ProviderError::new(ProviderErrorKind::InvalidRequest, "400")) },
    )
    .await;
    assert_eq!(attempts, 1);
    assert_eq!(
        asked.load(Ordering::Relaxed),
        0,
        "no retry, so the gate is never asked"
    );
}
