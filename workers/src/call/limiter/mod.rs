//! The shared admission limiter: requests per minute (RPM) and tokens per minute (TPM), per
//! model and per provider account, held across every worker process.
//!
//! - [`memory::MemoryLimiter`]: in process, for the embedded `run` mode.
//! - [`redis::RedisLimiter`]: one Lua script per admission, cluster-wide, on Redis's clock.
//!
//! # The algorithm (the same in both)
//! Each scope (`model:<key>`, `provider:<key>`) has two meters, requests (weight 1 per call)
//! and tokens (weight = estimated tokens). A call is admitted only when every meter of every
//! scope it names admits it; otherwise nothing is taken and the caller gets the longest of
//! the waits, the earliest time worth asking again. Each meter has two parts:
//!
//! 1. **The guard** (exactness): a sliding window of `buckets` sub-buckets over the
//!    provider's 60 s window. A call is admitted only if the units admitted in the buckets
//!    covering the last 60 s *plus one bucket* (60.5 s by default), plus this call, fit the
//!    limit. So every 60 s window of admission times — fixed minute windows included —
//!    holds at most the limit, for calls of any size up to the limit. Memory is O(buckets)
//!    per scope, not O(calls).
//! 2. **The pacer** (smoothness): a GCRA at `pace` × limit / 60 s with a small burst
//!    (`request_burst`, `token_burst` of the limit). It spreads calls evenly, so a provider
//!    that quantizes its limit to seconds sees few spikes. At steady state it admits
//!    0.985 × 60.5 s / 60 s = 99.3% of the limit per guard span, so the guard binds only
//!    after a full burst and waiters are not woken in herds at bucket edges. Steady-state
//!    utilisation is `pace` (98.5%, measured 98.5-98.6% at 600 and 6,000 RPM).
//!
//! A call larger than the pacer's burst waits for the pacer to be idle, so under constant
//! pressure from small calls it can wait long; one larger than a TPM is refused
//! ([`LimiterError::TooLarge`]).
//!
//! Settling moves the token meters by (actual - estimate): a refund is usable at once. A
//! pause (a 429) and a provider's `x-ratelimit-remaining-*` report are stored per scope and
//! honoured by every admission until they expire.
//!
//! Waiting is the caller's: [`acquire`] sleeps (never spins) until admitted, or hands back
//! the delay when it would exceed the claim's budget, so the job can be re-queued instead.

pub mod memory;
pub mod redis;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use rand::Rng;

use crate::catalog::ModelSpec;

/// Which limits a call counts against: the model's own, and its provider's account-wide ones.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitSpec {
    /// `model:<key>` or `provider:<key>`; pauses and provider reports are kept per scope.
    pub scope: String,
    pub rpm: Option<u32>,
    pub tpm: Option<u64>,
}

impl LimitSpec {
    /// The model's own limits, scope `model:<key>`.
    pub fn model(model: &ModelSpec) -> Self {
        Self {
            scope: batchyard_jobs::keys::limiter_model_scope(&model.key),
            rpm: model.rpm,
            tpm: model.tpm,
        }
    }

    /// A provider account's limits shared by its models, scope `provider:<key>`.
    pub fn provider(key: &str, rpm: Option<u32>, tpm: Option<u64>) -> Self {
        Self {
            scope: batchyard_jobs::keys::limiter_provider_scope(key),
            rpm,
            tpm,
        }
    }
}

/// What an admission took, so that [`Limiter::settle`] can correct it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reservation {
    /// The scopes charged, with their TPM (settling only touches scopes with a TPM).
    pub(crate) scopes: Vec<(String, Option<u64>)>,
    pub(crate) tokens: u64,
    /// The guard bucket the call was counted in.
    pub(crate) bucket: i64,
    /// When it was granted, by the limiter's clock (Redis `TIME` or the local clock).
    pub(crate) granted_at: Duration,
}

impl Reservation {
    /// The estimated tokens taken.
    pub fn tokens(&self) -> u64 {
        self.tokens
    }

    /// When the call was admitted, since the Unix epoch, by the limiter's clock.
    pub fn granted_at(&self) -> Duration {
        self.granted_at
    }

    /// The scopes charged.
    pub fn scopes(&self) -> impl Iterator<Item = &str> {
        self.scopes.iter().map(|(s, _)| s.as_str())
    }
}

/// The answer to one admission attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Granted(Reservation),
    /// Nothing was taken; this is the earliest time worth retrying (never zero).
    Wait(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    #[error("the rate limiter's redis is unavailable: {0}; it will be retried")]
    Unavailable(String),
    #[error("the rate limiter's redis answered with an error: {0}")]
    Redis(String),
    #[error(
        "a call estimated at {tokens} tokens can never fit {scope}'s limit of {limit} tokens \
         per minute; lower max_tokens or raise tpm"
    )]
    TooLarge {
        scope: String,
        tokens: u64,
        limit: u64,
    },
    #[error("bad rate limit for {scope}: {reason}")]
    InvalidSpec { scope: String, reason: String },
}

impl batchyard_jobs::retry::Retryable for LimiterError {
    fn is_retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

impl From<::redis::RedisError> for LimiterError {
    fn from(e: ::redis::RedisError) -> Self {
        // The queue's classification (and its redaction of URLs) is the one to trust.
        let q = batchyard_jobs::error::QueueError::from(e);
        if batchyard_jobs::retry::Retryable::is_retryable(&q) {
            Self::Unavailable(q.to_string())
        } else {
            Self::Redis(q.to_string())
        }
    }
}

#[async_trait]
pub trait Limiter: Send + Sync {
    /// Atomically take 1 request and `tokens` estimated tokens from EVERY spec (all or nothing).
    async fn try_acquire(
        &self,
        specs: &[LimitSpec],
        tokens: u64,
    ) -> Result<Admission, LimiterError>;
    /// Correct the reservation to the actual tokens used (refund or charge the difference).
    async fn settle(
        &self,
        reservation: Reservation,
        actual_tokens: u64,
    ) -> Result<(), LimiterError>;
    /// A 429 or a provider hint: nobody may call `scope` until now+for_ (shared by all workers).
    async fn pause(&self, scope: &str, for_: Duration) -> Result<(), LimiterError>;
    /// The provider reported `remaining` requests/tokens until `reset`: tighten our view so we
    /// don't exceed it. Without `reset` the report holds for [`DEFAULT_REPORT_HOLD`].
    async fn observe_remaining(
        &self,
        scope: &str,
        remaining_requests: Option<u64>,
        remaining_tokens: Option<u64>,
        reset: Option<Duration>,
    ) -> Result<(), LimiterError>;
}

/// How long a provider's `remaining` report holds when it names no reset time.
pub const DEFAULT_REPORT_HOLD: Duration = Duration::from_secs(1);

/// Waits (sleeping, never spinning) until admitted. Returns `Ok(Ok(reservation))`, or
/// `Ok(Err(delay))` as soon as the next wait would take the total past `max_wait`: the
/// caller then re-queues the job with that delay (a claim must not be held past its
/// visibility timeout).
pub async fn acquire(
    limiter: &dyn Limiter,
    specs: &[LimitSpec],
    tokens: u64,
    max_wait: Duration,
) -> Result<Result<Reservation, Duration>, LimiterError> {
    let started = tokio::time::Instant::now();
    loop {
        match limiter.try_acquire(specs, tokens).await? {
            Admission::Granted(r) => return Ok(Ok(r)),
            Admission::Wait(wait) => {
                let wait = wait.max(MIN_WAIT);
                if started.elapsed() + wait > max_wait {
                    return Ok(Err(wait));
                }
                // A little jitter so waiters woken by the same slot don't all ask at once.
                let spread = (wait / 20).min(Duration::from_millis(20));
                let jitter = rand::rng().random_range(Duration::ZERO..=spread);
                let slept = tokio::time::Instant::now();
                tokio::time::sleep(wait + jitter).await;
                // A deliberate wait: not orchestration overhead (see metrics::overhead).
                crate::metrics::overhead::exclude(slept.elapsed());
            }
        }
    }
}

/// The shortest wait ever returned.
pub(crate) const MIN_WAIT: Duration = Duration::from_millis(1);

/// How the limits are applied. The defaults fit real providers; tests shorten `window`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tuning {
    /// The provider's accounting window: 60 s for RPM and TPM.
    pub window: Duration,
    /// Sub-buckets of the guard's sliding window; the guard looks back window + one bucket.
    pub buckets: u32,
    /// The pacer's rate as a share of the limit (steady-state utilisation).
    pub pace: f64,
    /// The pacer's burst for requests, as a share of the RPM (at least 1 request).
    pub request_burst: f64,
    /// The pacer's burst for tokens, as a share of the TPM (at least 1 token).
    pub token_burst: f64,
}

impl Default for Tuning {
    fn default() -> Self {
        Self {
            window: Duration::from_secs(60),
            buckets: 120,
            pace: 0.985,
            request_burst: 0.01,
            token_burst: 0.05,
        }
    }
}

/// One meter's numbers, in microseconds, as both limiters use them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MeterParams {
    /// The guard's hard limit per window; 0 means no limit.
    pub limit: u64,
    /// The pacer's cost of one unit.
    pub unit_us: f64,
    /// The pacer's burst capacity.
    pub capacity_us: f64,
}

impl MeterParams {
    pub const NONE: Self = Self {
        limit: 0,
        unit_us: 0.0,
        capacity_us: 0.0,
    };
}

impl Tuning {
    /// The guard's bucket width in µs, rounded up so that `buckets` of them cover the window.
    pub(crate) fn bucket_us(&self) -> i64 {
        let window = i64::try_from(self.window.as_micros()).unwrap_or(i64::MAX / 4);
        let n = i64::from(self.buckets.max(1));
        ((window + n - 1) / n).max(1)
    }

    pub(crate) fn buckets(&self) -> i64 {
        i64::from(self.buckets.max(1))
    }

    pub(crate) fn meter(&self, limit: Option<u64>, burst: f64) -> MeterParams {
        let Some(limit) = limit.filter(|l| *l > 0) else {
            return MeterParams::NONE;
        };
        let pace = if self.pace > 0.0 && self.pace <= 1.0 {
            self.pace
        } else {
            1.0
        };
        let unit_us = self.window.as_micros() as f64 / (limit as f64 * pace);
        let burst_units = (limit as f64 * burst.max(0.0)).max(1.0);
        MeterParams {
            limit,
            unit_us,
            capacity_us: burst_units * unit_us,
        }
    }

    /// The request and token meters of one spec.
    pub(crate) fn meters(&self, spec: &LimitSpec) -> (MeterParams, MeterParams) {
        (
            self.meter(spec.rpm.map(u64::from), self.request_burst),
            self.meter(spec.tpm, self.token_burst),
        )
    }
}

/// Validates the specs and merges repeated scopes (the tighter limit wins), so a scope is
/// never charged twice for one call.
pub(crate) fn normalize(specs: &[LimitSpec], tokens: u64) -> Result<Vec<LimitSpec>, LimiterError> {
    let mut merged: BTreeMap<&str, LimitSpec> = BTreeMap::new();
    for spec in specs {
        if spec.scope.is_empty() {
            return Err(LimiterError::InvalidSpec {
                scope: String::new(),
                reason: "the scope is empty".into(),
            });
        }
        if spec.rpm == Some(0) || spec.tpm == Some(0) {
            return Err(LimiterError::InvalidSpec {
                scope: spec.scope.clone(),
                reason: "a limit of 0 would admit nothing; leave it unset for no limit".into(),
            });
        }
        let entry = merged
            .entry(spec.scope.as_str())
            .or_insert_with(|| spec.clone());
        entry.rpm = min_some(entry.rpm, spec.rpm);
        entry.tpm = min_some(entry.tpm, spec.tpm);
    }
    let out: Vec<LimitSpec> = merged.into_values().collect();
    if let Some(spec) = out
        .iter()
        .find(|s| s.tpm.is_some_and(|limit| tokens > limit))
    {
        return Err(LimiterError::TooLarge {
            scope: spec.scope.clone(),
            tokens,
            limit: spec.tpm.unwrap_or_default(),
        });
    }
    Ok(out)
}

fn min_some<T: Ord + Copy>(a: Option<T>, b: Option<T>) -> Option<T> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// A wait in µs as a [`Duration`], never below [`MIN_WAIT`].
pub(crate) fn wait_from_us(us: f64) -> Duration {
    let us = if us.is_finite() && us > 0.0 {
        us.ceil() as u64
    } else {
        0
    };
    Duration::from_micros(us).max(MIN_WAIT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_are_merged_and_checked() {
        let specs = [
            LimitSpec::provider("p", Some(100), None),
            LimitSpec::provider("p", Some(50), Some(1000)),
        ];
        let out = normalize(&specs, 10).unwrap();
        assert_eq!(out.len(), 1);
        assert_eq!((out[0].rpm, out[0].tpm), (Some(50), Some(1000)));
        assert!(matches!(
            normalize(&specs, 1001),
            Err(LimiterError::TooLarge { limit: 1000, .. })
        ));
        let zero = [LimitSpec::provider("p", Some(0), None)];
        assert!(matches!(
            normalize(&zero, 1),
            Err(LimiterError::InvalidSpec { .. })
        ));
    }

    #[test]
    fn meters_follow_the_tuning() {
        let t = Tuning::default();
        assert_eq!(t.bucket_us(), 500_000);
        let m = t.meter(Some(6000), t.request_burst);
        assert_eq!(m.limit, 6000);
        assert!((m.unit_us - 60e6 / (6000.0 * 0.985)).abs() < 1e-6);
        assert!((m.capacity_us - 60.0 * m.unit_us).abs() < 1e-6);
        assert_eq!(t.meter(None, 0.1), MeterParams::NONE);
        assert_eq!(wait_from_us(0.0), MIN_WAIT);
    }
}
