//! Shared model health: a circuit breaker per model, operator pauses, and a retry budget.
//!
//! - **Breaker.** K consecutive transient failures (`transient`, `malformed_response`,
//!   `response_too_large`, and timeouts, which the taxonomy files under `transient`) open the
//!   breaker for T. When T is
//!   over the model is *half-open*: exactly one caller across the cluster is admitted as the
//!   probe (a lease, so a dead prober is replaced once the lease expires). The probe's success
//!   closes the breaker; its failure opens it for another T.
//! - **Pause.** `auth` and `quota_exhausted` pause the model until an operator resumes it
//!   (`batchyard models resume NAME`). Retrying cannot fix a bad key or an empty account.
//! - **Ignored by the breaker.** `rate_limited` (the rate limiter owns 429s) and the
//!   per-request kinds `invalid_request`, `context_overflow`, `content_filter`. They neither
//!   extend nor reset a failure streak.
//! - **Retry budget.** Per model and window, in-place retries stay below
//!   `max(retry_budget_min, floor(retry_budget_ratio × calls))`, so a sick provider cannot
//!   turn into a retry storm. [`ModelHealth::record`] counts every call;
//!   [`ModelHealth::allow_retry`] counts a retry when it grants one. A window starts with the
//!   first call or retry counted in it and lasts `window`.
//!
//! Stragglers: a call admitted before the breaker opened may report while it is cooling down.
//! Its outcome is ignored by the breaker (the cooldown runs its course); once the cooldown is
//! over, any reported outcome counts as the probe's.
//!
//! Implementations: [`memory::MemoryHealth`] for embedded runs, [`redis::RedisHealth`] shared
//! by all workers through Redis (atomic Lua scripts on the server's clock).

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use batchyard_jobs::error::QueueError;
use thiserror::Error;

use crate::provider::ProviderErrorKind;

/// What a model's health allows right now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    /// Calls go through.
    Healthy,
    /// The breaker is open until `until_ms` (Unix epoch milliseconds): no calls.
    CoolingDown { until_ms: u64 },
    /// The cooldown is over: one probe call is allowed to find out whether the model is back.
    HalfOpen,
    /// Paused until an operator resumes the model, e.g. `"auth: 401 from provider"`.
    Paused { reason: String, since_ms: u64 },
}

impl ModelState {
    /// A short name for listings: `healthy`, `cooling_down`, `half_open`, `paused`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::CoolingDown { .. } => "cooling_down",
            Self::HalfOpen => "half_open",
            Self::Paused { .. } => "paused",
        }
    }
}

/// Thresholds of the breaker and the retry budget.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthPolicy {
    /// K: consecutive transient failures that open the breaker.
    pub failure_threshold: u32,
    /// T: how long an open breaker keeps calls away.
    pub cooldown: Duration,
    /// Retries may be at most this share of calls in a window.
    pub retry_budget_ratio: f64,
    /// Retries always allowed per window, whatever the ratio says.
    pub retry_budget_min: u32,
    /// The retry budget's counting window.
    pub window: Duration,
    /// How long the half-open probe's lease lasts. If the prober dies without reporting,
    /// another caller may probe after this. Should exceed a provider call's timeout.
    pub probe_lease: Duration,
}

impl Default for HealthPolicy {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            cooldown: Duration::from_secs(30),
            retry_budget_ratio: 0.2,
            retry_budget_min: 10,
            window: Duration::from_secs(60),
            probe_lease: Duration::from_secs(120),
        }
    }
}

impl HealthPolicy {
    /// The retries allowed in a window that has seen `calls` calls.
    pub fn retries_allowed(&self, calls: u64) -> u64 {
        let ratio = if self.retry_budget_ratio.is_finite() {
            self.retry_budget_ratio.max(0.0)
        } else {
            0.0
        };
        // Truncation is the point: retries ≤ ratio × calls.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
        let by_ratio = (ratio * calls as f64).floor() as u64;
        by_ratio.max(u64::from(self.retry_budget_min))
    }

    fn threshold(&self) -> u32 {
        self.failure_threshold.max(1)
    }
}

/// What a model's health store could not do.
#[derive(Debug, Error)]
pub enum HealthError {
    /// The store (Redis) was unreachable, timed out or restarting: try again later.
    #[error("model health: {0}")]
    Unavailable(String),
    /// The store answered with an error or with data it should not hold.
    #[error("model health: {0}")]
    Store(String),
}

impl batchyard_jobs::retry::Retryable for HealthError {
    /// Worth trying again later (Redis was unreachable, timed out or restarting).
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<QueueError> for HealthError {
    fn from(e: QueueError) -> Self {
        if batchyard_jobs::retry::Retryable::is_retryable(&e) {
            Self::Unavailable(e.to_string())
        } else {
            Self::Store(e.to_string())
        }
    }
}

impl From<::redis::RedisError> for HealthError {
    fn from(e: ::redis::RedisError) -> Self {
        // QueueError's conversion classifies and redacts any URL credentials.
        Self::from(QueueError::from(e))
    }
}

/// Shared health of models, consulted before each call and told each call's outcome.
#[async_trait]
pub trait ModelHealth: Send + Sync {
    /// Can a call go to `model` now? Healthy: yes. Cooling down: no. Half-open: yes for
    /// exactly one caller cluster-wide (the probe), no for the others until the probe reports
    /// or its lease expires. Paused: no.
    async fn admit(&self, model: &str) -> Result<bool, HealthError>;

    /// A call's outcome; every call counts toward the retry budget. `reason` (e.g. `"401 from
    /// provider"`, never a secret) is kept for a pause.
    async fn record(
        &self,
        model: &str,
        outcome: Result<(), ProviderErrorKind>,
        reason: &str,
    ) -> Result<(), HealthError>;

    /// May `model` spend one more in-place retry now? When it may, the retry is counted.
    async fn allow_retry(&self, model: &str) -> Result<bool, HealthError>;

    /// The model's state, for the router and `batchyard models`.
    async fn state(&self, model: &str) -> Result<ModelState, HealthError>;

    /// Operator: clears a pause and the breaker.
    async fn resume(&self, model: &str) -> Result<(), HealthError>;

    /// Pauses the model until [`ModelHealth::resume`]. An operator's pause replaces the
    /// reason of an earlier one; the pause keeps its original start.
    async fn pause(&self, model: &str, reason: &str) -> Result<(), HealthError>;
}

/// What an outcome means to the breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Effect {
    /// The model answered: the streak resets and a half-open breaker closes.
    Success,
    /// Counts toward the streak; fails a probe.
    Failure,
    /// Pauses the model until an operator resumes it.
    Pause,
    /// Nothing for the breaker.
    Ignore,
}

impl Effect {
    pub(crate) fn of(outcome: Result<(), ProviderErrorKind>) -> Self {
        match outcome {
            Ok(()) => Self::Success,
            Err(
                ProviderErrorKind::Transient
                | ProviderErrorKind::MalformedResponse
                | ProviderErrorKind::ResponseTooLarge,
            ) => Self::Failure,
            Err(ProviderErrorKind::Auth | ProviderErrorKind::QuotaExhausted) => Self::Pause,
            Err(
                ProviderErrorKind::RateLimited
                | ProviderErrorKind::InvalidRequest
                | ProviderErrorKind::ContextOverflow
                | ProviderErrorKind::ContentFilter,
            ) => Self::Ignore,
        }
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::Failure => "failure",
            Self::Pause => "pause",
            Self::Ignore => "ignore",
        }
    }
}

/// Longest reason kept; provider messages can be long.
const MAX_REASON_CHARS: usize = 300;

/// The stored reason for an outcome: `"<code>: <reason>"`, bounded.
pub(crate) fn outcome_reason(outcome: Result<(), ProviderErrorKind>, reason: &str) -> String {
    match outcome {
        Ok(()) => bounded(reason),
        Err(kind) if reason.trim().is_empty() => kind.code().to_string(),
        Err(kind) => bounded(&format!("{}: {}", kind.code(), reason.trim())),
    }
}

/// `reason` cut to [`MAX_REASON_CHARS`] characters.
pub(crate) fn bounded(reason: &str) -> String {
    match reason.char_indices().nth(MAX_REASON_CHARS) {
        Some((at, _)) => format!("{}…", &reason[..at]),
        None => reason.to_string(),
    }
}

pub(crate) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_is_the_larger_of_min_and_ratio() {
        let p = HealthPolicy::default();
        assert_eq!(p.retries_allowed(0), 10);
        assert_eq!(p.retries_allowed(50), 10);
        assert_eq!(p.retries_allowed(100), 20);
        assert_eq!(p.retries_allowed(104), 20);
        let odd = HealthPolicy {
            retry_budget_ratio: f64::NAN,
            retry_budget_min: 2,
            ..HealthPolicy::default()
        };
        assert_eq!(odd.retries_allowed(1000), 2);
    }

    #[test]
    fn effects_follow_the_taxonomy() {
        use ProviderErrorKind as K;
        assert_eq!(Effect::of(Ok(())), Effect::Success);
        assert_eq!(Effect::of(Err(K::Transient)), Effect::Failure);
        assert_eq!(Effect::of(Err(K::MalformedResponse)), Effect::Failure);
        assert_eq!(Effect::of(Err(K::Auth)), Effect::Pause);
        assert_eq!(Effect::of(Err(K::QuotaExhausted)), Effect::Pause);
        for k in [
            K::RateLimited,
            K::InvalidRequest,
            K::ContextOverflow,
            K::ContentFilter,
        ] {
            assert_eq!(Effect::of(Err(k)), Effect::Ignore, "{k:?}");
        }
    }

    #[test]
    fn reasons_are_prefixed_and_bounded() {
        let r = outcome_reason(Err(ProviderErrorKind::Auth), "401 from provider");
        assert_eq!(r, "auth: 401 from provider");
        assert_eq!(
            outcome_reason(Err(ProviderErrorKind::QuotaExhausted), " "),
            "quota_exhausted"
        );
        let long = outcome_reason(Err(ProviderErrorKind::Auth), &"é".repeat(1000));
        assert_eq!(long.chars().count(), MAX_REASON_CHARS + 1);
    }
}
