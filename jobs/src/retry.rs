//! Retries, in exactly one place: every retry or backoff in the workspace goes through here.
//!
//! - [`RetryPolicy`]: base, cap and attempts; [`backoff_delay`] is its full-jitter delay (a
//!   uniform delay in `[0, min(cap, base * 2^n)]`), also used alone where a state machine or the
//!   queue waits between tries ("retry later", claim errors).
//! - [`FullJitter`]: those delays as a backon backoff, bounded in attempts and, optionally
//!   ([`FullJitter::within`]), in total time.
//! - [`retry`]: runs an operation under a backoff, with the caller's "worth retrying?", an
//!   optional server hint (`Retry-After`) honoured up to [`MAX_HINTED_DELAY`], and a notifier.
//!   [`retry_within`] is the plain "keep trying until this much time has passed" form.
//! - [`Retryable`]: whether a boundary's error is worth trying again (default: no).
//!
//! backon's builders are disallowed everywhere else by `clippy.toml`. backon's own
//! `ExponentialBuilder::with_jitter` adds a random `[0, delay)` on top of the delay (so between
//! 1x and 2x); it is not full jitter, so the delays come from [`FullJitter`], an iterator backon
//! drives like any other backoff.
#![allow(clippy::disallowed_types, clippy::disallowed_methods)]

use std::future::Future;
use std::time::{Duration, Instant};

use backon::Retryable as _;
use serde::Deserialize;

/// Whether an error is worth trying again later: a fault that may pass (a network blip, a
/// restart) rather than a judgement that would repeat.
pub trait Retryable {
    fn is_retryable(&self) -> bool {
        false
    }
}

/// The longest wait a server's hint can ask for in place. Longer hints are cut to this.
pub const MAX_HINTED_DELAY: Duration = Duration::from_secs(5 * 60);

/// Retries of one operation: an exponential, full-jitter backoff with a bounded attempt count.
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

/// The wait before the next attempt: the backoff, or the server's hint when that is longer
/// (never more than [`MAX_HINTED_DELAY`]).
pub fn hinted_delay(hint: Option<Duration>, backoff: Duration) -> Duration {
    match hint {
        Some(hint) => hint.min(MAX_HINTED_DELAY).max(backoff),
        None => backoff,
    }
}

/// Full-jitter exponential delays, `max_attempts - 1` of them, as a backon backoff.
#[derive(Debug, Clone)]
pub struct FullJitter {
    policy: RetryPolicy,
    next: u32,
    max_retries: u32,
    /// No delay is given that would end after this much time since the backoff was built.
    within: Option<(Instant, Duration)>,
}

impl FullJitter {
    pub fn new(policy: &RetryPolicy) -> Self {
        Self {
            policy: *policy,
            next: 0,
            max_retries: policy.max_attempts.max(1) - 1,
            within: None,
        }
    }

    /// Also ends the retries once a delay would carry past `limit` from now.
    pub fn within(mut self, limit: Duration) -> Self {
        self.within = Some((Instant::now(), limit));
        self
    }
}

impl Iterator for FullJitter {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        if self.next >= self.max_retries {
            return None;
        }
        let delay = backoff_delay(&self.policy, self.next);
        if let Some((started, limit)) = self.within
            && started.elapsed().saturating_add(delay) > limit
        {
            return None;
        }
        self.next += 1;
        Some(delay)
    }
}

/// Runs `op` until it succeeds, fails with an error `when` refuses, or `backoff` runs out.
/// Before each retry the wait is the backoff, or the error's `hint` when that is longer
/// ([`hinted_delay`]); `notify` hears of the error and the wait about to be slept.
pub async fn retry<T, E, F, Fut, W, H, N>(
    backoff: FullJitter,
    op: F,
    when: W,
    hint: H,
    notify: N,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    W: FnMut(&E) -> bool,
    H: Fn(&E) -> Option<Duration>,
    N: FnMut(&E, Duration),
{
    op.retry(backoff)
        .when(when)
        .adjust(|err, delay| delay.map(|d| hinted_delay(hint(err), d)))
        .notify(notify)
        .await
}

/// Runs `op` until it succeeds or `limit` has passed, retrying every error with the policy's
/// backoff (its attempt count still applies).
pub async fn retry_within<T, E, F, Fut, N>(
    policy: &RetryPolicy,
    limit: Duration,
    op: F,
    notify: N,
) -> Result<T, E>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
    N: FnMut(&E, Duration),
{
    let backoff = FullJitter::new(policy).within(limit);
    retry(backoff, op, |_| true, |_| None, notify).await
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn fast() -> RetryPolicy {
        RetryPolicy {
            base: Duration::from_millis(1),
            cap: Duration::from_millis(4),
            max_attempts: 4,
        }
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
    fn full_jitter_within_a_limit_stops_before_passing_it() {
        let endless = RetryPolicy {
            max_attempts: u32::MAX,
            ..fast()
        };
        assert_eq!(FullJitter::new(&endless).within(Duration::ZERO).count(), 0);
        assert_eq!(
            FullJitter::new(&fast())
                .within(Duration::from_secs(60))
                .count(),
            3
        );
        // Each delay is checked against the time already spent, as if it had been slept.
        let started = Instant::now();
        for d in FullJitter::new(&endless).within(Duration::from_millis(20)) {
            std::thread::sleep(d);
        }
        assert!(started.elapsed() >= Duration::from_millis(16));
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn a_hint_longer_than_the_backoff_wins_and_is_capped() {
        let ms = Duration::from_millis;
        assert_eq!(hinted_delay(None, ms(7)), ms(7));
        assert_eq!(hinted_delay(Some(ms(50)), ms(7)), ms(50));
        assert_eq!(hinted_delay(Some(ms(50)), ms(70)), ms(70));
        assert_eq!(
            hinted_delay(Some(Duration::from_secs(3600)), Duration::ZERO),
            MAX_HINTED_DELAY
        );
    }

    #[test]
    fn retryable_defaults_to_no() {
        struct Judgement;
        impl Retryable for Judgement {}
        assert!(!Judgement.is_retryable());
    }

    #[tokio::test]
    async fn retry_stops_at_success_refusal_or_the_attempt_bound() {
        let calls = AtomicU32::new(0);
        let op = || {
            let n = calls.fetch_add(1, Ordering::Relaxed) + 1;
            async move { if n < 3 { Err(n) } else { Ok(n) } }
        };
        let r = retry(FullJitter::new(&fast()), op, |_| true, |_| None, |_, _| {}).await;
        assert_eq!(r, Ok(3));

        calls.store(0, Ordering::Relaxed);
        let always = || async { Err::<(), u32>(1) };
        let r = retry(
            FullJitter::new(&fast()),
            always,
            |_| false,
            |_| None,
            |_, _| {},
        )
        .await;
        assert_eq!(r, Err(1));

        let counted = || {
            calls.fetch_add(1, Ordering::Relaxed);
            async { Err::<(), u32>(1) }
        };
        let r = retry(
            FullJitter::new(&fast()),
            counted,
            |_| true,
            |_| None,
            |_, _| {},
        )
        .await;
        assert_eq!(r, Err(1));
        assert_eq!(calls.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_hint_is_waited_out() {
        let calls = AtomicU32::new(0);
        let op = || {
            let n = calls.fetch_add(1, Ordering::Relaxed);
            async move { if n == 0 { Err(()) } else { Ok(()) } }
        };
        let started = Instant::now();
        let hint = |_: &()| Some(Duration::from_millis(60));
        let r = retry(FullJitter::new(&fast()), op, |_| true, hint, |_, _| {}).await;
        assert!(r.is_ok());
        assert!(started.elapsed() >= Duration::from_millis(60));
    }

    #[tokio::test]
    async fn retry_within_gives_up_after_the_limit() {
        let endless = RetryPolicy {
            max_attempts: u32::MAX,
            ..fast()
        };
        let started = Instant::now();
        let r = retry_within(
            &endless,
            Duration::from_millis(30),
            || async { Err::<(), ()>(()) },
            |_, _| {},
        )
        .await;
        assert!(r.is_err());
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
