//! Learned adequacy: how likely each model's answer to a task passes its checks.
//!
//! STUB: interface fixed; the helper fills in the bodies.

pub mod memory;
pub mod redis;

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;

/// Pass/fail evidence of one model (counts decay, so they may be fractional).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Evidence {
    pub passes: f64,
    pub fails: f64,
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

    pub fn is_retryable(&self) -> bool {
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

/// The feature bucket of an item: half-octaves of its estimated prompt tokens.
pub fn length_bucket(prompt_tokens: u64) -> u32 {
    let _ = prompt_tokens;
    0
}

/// The prior mean pass probability of a model of `tier` on a task needing `min_tier`.
pub fn tier_prior(tier: u32, min_tier: u32) -> f64 {
    let _ = (tier, min_tier);
    0.5
}

/// Posterior pass estimates, cached briefly in process on top of a shared store.
pub struct Adequacy {
    store: Arc<dyn AdequacyStore>,
    policy: AdequacyPolicy,
}

impl Adequacy {
    pub fn new(store: Arc<dyn AdequacyStore>, policy: AdequacyPolicy) -> Self {
        Self { store, policy }
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
        let _ = (&self.store, task, bucket);
        models
            .iter()
            .map(|(_, tier)| {
                let mean = tier_prior(*tier, min_tier);
                PassEstimate {
                    mean,
                    score: mean,
                    passes: 0.0,
                    fails: 0.0,
                }
            })
            .collect()
    }

    /// Records one checked answer. Store errors are logged, never fatal.
    pub async fn record(&self, task: &str, bucket: u32, model: &str, passed: bool) {
        let _ = (task, bucket, model, passed);
    }
}
