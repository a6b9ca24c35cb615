//! Learned adequacy: how likely each model's answer to a task passes its checks.
//!
//! - **Model.** Each (task, model) has a Beta posterior over its validator outcomes. Its
//!   prior mean comes from the model's tier above the task's `min_tier` ([`tier_prior`]),
//!   worth `prior_strength` pseudo-answers.
//! - **Hierarchy.** With `feature_buckets`, each (task, prompt-length bucket, model) has its
//!   own posterior whose prior is the task-level posterior mean, again worth
//!   `prior_strength`: a bucket with little evidence shrinks to the task, one with plenty
//!   speaks for itself.
//! - **Decay.** Evidence per level and model is capped at `max_evidence`: when an answer
//!   pushes passes + fails beyond it, both are halved, so old answers fade and a model that
//!   got worse (or better) is noticed.
//! - **Exploration.** Ranking uses `mean + exploration × (sample − mean)`, where `sample` is a
//!   Thompson draw from the posterior: 0 is greedy on the mean, 1 is full Thompson sampling,
//!   which keeps trying models whose adequacy is still uncertain.
//!
//! Evidence is shared through an [`AdequacyStore`] ([`redis::RedisAdequacy`] for workers,
//! [`memory::MemoryAdequacy`] for `run`), read through a short in-process cache.

mod cache;
pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use rand_distr::{Beta, Distribution};

use cache::ObservedCache;

/// Pass/fail evidence of one model (counts decay, so they may be fractional).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evidence {
    pub passes: f64,
    pub fails: f64,
}

impl Evidence {
    /// Counts one answer, then halves both counts when their sum exceeds `max_evidence`.
    /// Every store applies exactly this rule, so they agree on the same answers.
    pub fn add(&mut self, passed: bool, max_evidence: f64) {
        if passed {
            self.passes += 1.0;
        } else {
            self.fails += 1.0;
        }
        if self.passes + self.fails > max_evidence {
            self.passes /= 2.0;
            self.fails /= 2.0;
        }
    }

    /// Counts as a Beta posterior can use them: finite and not negative.
    fn sane(self) -> Self {
        let fix = |x: f64| if x.is_finite() { x.max(0.0) } else { 0.0 };
        Self {
            passes: fix(self.passes),
            fails: fix(self.fails),
        }
    }
}

/// The evidence for a task: over all its items, and for one feature bucket.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Observed {
    pub task: HashMap<String, Evidence>,
    pub bucket: HashMap<String, Evidence>,
}

#[derive(Debug, thiserror::Error)]
pub enum AdequacyError {
    #[error("redis error in the adequacy store: {0}; check that redis is reachable")]
    Redis(String),
}

impl AdequacyError {
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Redis(_) => "redis",
        }
    }
}

impl batchyard_jobs::retry::Retryable for AdequacyError {
    fn is_retryable(&self) -> bool {
        true
    }
}

/// Where evidence lives: Redis for workers, in process for `run`.
#[async_trait]
pub trait AdequacyStore: Send + Sync {
    async fn observed(&self, task: &str, bucket: u32) -> Result<Observed, AdequacyError>;
    async fn record(
        &self,
        task: &str,
        bucket: u32,
        model: &str,
        passed: bool,
    ) -> Result<(), AdequacyError>;
    /// Forgets what was learned for `task` (all tasks when `None`).
    async fn reset(&self, task: Option<&str>) -> Result<(), AdequacyError>;
}

/// Knobs from `[routing]`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdequacyPolicy {
    /// Learn at all; `false` keeps the static cheapest-first order.
    pub learn: bool,
    /// 0 ranks by the posterior mean; 1 by a full Thompson sample; between, a blend.
    pub exploration: f64,
    /// Pseudo-counts of the prior (from the tier, and from the task for a bucket).
    pub prior_strength: f64,
    /// Evidence kept per model and bucket; older evidence is halved away beyond it.
    pub max_evidence: f64,
    /// Learn per prompt-length bucket as well as per task.
    pub feature_buckets: bool,
}

impl Default for AdequacyPolicy {
    fn default() -> Self {
        Self {
            learn: true,
            exploration: 0.5,
            prior_strength: 4.0,
            max_evidence: 400.0,
            feature_buckets: true,
        }
    }
}

/// One model's pass probability for one item.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PassEstimate {
    /// The posterior mean.
    pub mean: f64,
    /// What ranking uses: the mean blended with a Thompson sample by `exploration`.
    pub score: f64,
    /// Evidence behind it (bucket-level when buckets are on).
    pub passes: f64,
    pub fails: f64,
}

/// The highest bucket; reached only by absurd token counts, it keeps bucket names short.
pub const MAX_BUCKET: u32 = 63;

/// The lowest score, so a ranking by `cost / score` never divides by zero.
pub const MIN_SCORE: f64 = 0.001;

/// The feature bucket of an item: half-octaves of its estimated prompt tokens,
/// `floor(2 × log2(max(tokens, 1)))`, at most [`MAX_BUCKET`].
pub fn length_bucket(prompt_tokens: u64) -> u32 {
    let t = prompt_tokens.max(1);
    let octave = t.ilog2();
    // The upper half of an octave starts at 2^octave × √2, i.e. where t² ≥ 2^(2·octave+1);
    // in integers so equal inputs give equal buckets on every machine.
    let upper = u128::from(t) * u128::from(t) >= 1u128 << (2 * octave + 1);
    (2 * octave + u32::from(upper)).min(MAX_BUCKET)
}

/// The prior mean pass probability of a model of `tier` on a task needing `min_tier`:
/// 0.6 at the minimum tier, 0.1 more per tier above it, at most 0.95.
pub fn tier_prior(tier: u32, min_tier: u32) -> f64 {
    let above = tier.saturating_sub(min_tier).min(4);
    (f64::from(6 + above) / 10.0).min(0.95)
}

/// Posterior pass estimates, cached briefly in process on top of a shared store.
pub struct Adequacy {
    store: Arc<dyn AdequacyStore>,
    policy: AdequacyPolicy,
    cache: ObservedCache,
}

impl Adequacy {
    pub fn new(store: Arc<dyn AdequacyStore>, policy: AdequacyPolicy) -> Self {
        Self {
            store,
            policy,
            cache: ObservedCache::default(),
        }
    }

    pub fn policy(&self) -> &AdequacyPolicy {
        &self.policy
    }

    /// Estimates for `models` (catalog key, tier) on one item of `task` in `bucket`, in the
    /// same order. Store errors degrade to the priors, with a warning.
    pub async fn estimates(
        &self,
        task: &str,
        bucket: u32,
        min_tier: u32,
        models: &[(&str, u32)],
    ) -> Vec<PassEstimate> {
        if !self.policy.learn {
            return models.iter().map(|_| certain()).collect();
        }
        let observed = self.observed(task, bucket).await;
        let mut rng = rand::rng();
        models
            .iter()
            .map(|(model, tier)| {
                let task_ev = observed.task.get(*model).copied().unwrap_or_default();
                let bucket_ev = self
                    .policy
                    .feature_buckets
                    .then(|| observed.bucket.get(*model).copied().unwrap_or_default());
                let (alpha, beta, used) = posterior(
                    tier_prior(*tier, min_tier),
                    self.policy.prior_strength,
                    task_ev,
                    bucket_ev,
                );
                let mean = alpha / (alpha + beta);
                let exploration = if self.policy.exploration.is_finite() {
                    self.policy.exploration.clamp(0.0, 1.0)
                } else {
                    0.0
                };
                let score = if exploration > 0.0 {
                    let sample = Beta::new(alpha, beta).map_or(mean, |d| d.sample(&mut rng));
                    mean + exploration * (sample - mean)
                } else {
                    mean
                };
                PassEstimate {
                    mean,
                    score: score.clamp(MIN_SCORE, 1.0),
                    passes: used.passes,
                    fails: used.fails,
                }
            })
            .collect()
    }

    /// Records one checked answer. Store errors are logged, never fatal.
    ///
    /// With `learn = false` nothing is recorded: nothing would read it, and the store is
    /// spared the writes.
    pub async fn record(&self, task: &str, bucket: u32, model: &str, passed: bool) {
        if !self.policy.learn {
            return;
        }
        self.cache
            .record(task, bucket, model, passed, self.policy.max_evidence);
        if let Err(e) = self.store.record(task, bucket, model, passed).await {
            tracing::warn!(
                task,
                bucket,
                model,
                passed,
                error = %e,
                kind = e.kind(),
                "could not record an answer in the adequacy store; routing learns from this process only until it is reachable"
            );
        }
    }

    /// The task's evidence, from the cache while fresh, else from the store.
    async fn observed(&self, task: &str, bucket: u32) -> Observed {
        if let Some(observed) = self.cache.get(task, bucket) {
            return observed;
        }
        let observed = match self.store.observed(task, bucket).await {
            Ok(observed) => observed,
            Err(e) => {
                tracing::warn!(
                    task,
                    bucket,
                    error = %e,
                    kind = e.kind(),
                    "could not read the adequacy store; ranking models by their priors until it is reachable"
                );
                // Cached too, so an unreachable store costs one attempt per TTL, not per job.
                Observed::default()
            }
        };
        self.cache.put(task, bucket, observed.clone());
        observed
    }
}

/// The static cascade: every model assumed adequate, so cost alone orders them.
fn certain() -> PassEstimate {
    PassEstimate {
        mean: 1.0,
        score: 1.0,
        passes: 0.0,
        fails: 0.0,
    }
}

/// The Beta posterior `(alpha, beta)` at the most specific level, and the evidence used there.
fn posterior(
    prior_mean: f64,
    prior_strength: f64,
    task: Evidence,
    bucket: Option<Evidence>,
) -> (f64, f64, Evidence) {
    // Config rejects a non-positive strength; this keeps the Beta proper regardless.
    let strength = if prior_strength.is_finite() && prior_strength > 0.0 {
        prior_strength
    } else {
        AdequacyPolicy::default().prior_strength
    };
    let task = task.sane();
    let alpha = prior_mean * strength + task.passes;
    let beta = (1.0 - prior_mean) * strength + task.fails;
    let Some(bucket) = bucket else {
        return (alpha, beta, task);
    };
    let bucket = bucket.sane();
    let task_mean = alpha / (alpha + beta);
    (
        task_mean * strength + bucket.passes,
        (1.0 - task_mean) * strength + bucket.fails,
        bucket,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_half_octaves() {
        let cases = [
            (0, 0),
            (1, 0),
            (2, 2),
            (3, 3),
            (4, 4),
            (5, 4),
            (6, 5),
            (8, 6),
            (11, 6),
            (12, 7),
            (1000, 19),
            (1024, 20),
            (1448, 20),
            (1449, 21),
            (u64::MAX, MAX_BUCKET),
        ];
        for (tokens, bucket) in cases {
            assert_eq!(length_bucket(tokens), bucket, "{tokens} tokens");
            let f = (2.0 * (tokens.max(1) as f64).log2()).floor() as u32;
            assert_eq!(length_bucket(tokens), f.min(MAX_BUCKET), "{tokens} tokens");
        }
        for tokens in 1..100_000u64 {
            let f = (2.0 * (tokens as f64).log2()).floor() as u32;
            assert_eq!(length_bucket(tokens), f, "{tokens} tokens");
        }
    }

    #[test]
    fn tier_priors() {
        assert_eq!(tier_prior(1, 1), 0.6);
        assert_eq!(tier_prior(2, 1), 0.7);
        assert_eq!(tier_prior(3, 1), 0.8);
        assert_eq!(tier_prior(4, 1), 0.9);
        assert_eq!(tier_prior(5, 1), 0.95);
        assert_eq!(tier_prior(9, 1), 0.95);
        assert_eq!(tier_prior(0, 3), 0.6);
    }

    #[test]
    fn decay_halves_both_counts() {
        let mut e = Evidence::default();
        for _ in 0..10 {
            e.add(true, 10.0);
        }
        assert_eq!(e.passes, 10.0);
        e.add(false, 10.0);
        assert_eq!(
            e,
            Evidence {
                passes: 5.0,
                fails: 0.5
            }
        );
    }

    #[test]
    fn bucket_prior_is_the_task_mean() {
        let task = Evidence {
            passes: 6.0,
            fails: 0.0,
        };
        let (a, b, used) = posterior(0.6, 4.0, task, Some(Evidence::default()));
        assert!((a / (a + b) - 0.84).abs() < 1e-12);
        assert!((a + b - 4.0).abs() < 1e-12);
        assert_eq!(used, Evidence::default());
        let (a, b, used) = posterior(0.6, 4.0, task, None);
        assert!((a / (a + b) - 0.84).abs() < 1e-12);
        assert_eq!(used, task);
    }
}
