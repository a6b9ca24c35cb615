//! Chooses the models a job may run on, in order of expected cost, cheapest adequate first.
//!
//! 1. Hard constraints drop models: tier below `min_tier`, a missing capability, a context
//!    window smaller than the estimated prompt plus the output allowance.
//! 2. Each remaining model gets a call cost (estimated prompt tokens with the model's own
//!    tokenizer, plus half the output allowance) and a pass probability `p` from
//!    [`Adequacy`] (learned per task and prompt-length bucket, with exploration).
//! 3. The cascade is ordered by `cost / p`, which minimises the expected total cost
//!    `E[m] = cost(m) + (1 - p(m)) * E[rest]` when answers pass independently. Health (cooldown,
//!    pause) is checked at call time: an unavailable model is skipped then.

use std::sync::Arc;

use batchyard_jobs::codes;
use batchyard_jobs::job::{Job, Route};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::catalog::prompt_cache::cached_prefix;
use crate::catalog::tokens::{
    TokenEstimator, completions_per_call, count_value, rough_prompt_tokens,
};
use crate::catalog::{Catalog, ModelSpec, TaskSpec, TokenCounts};
use crate::route::adequacy::memory::MemoryAdequacy;
use crate::route::adequacy::{Adequacy, AdequacyPolicy, PassEstimate, length_bucket};

/// Why no model could take a job.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RouteError {
    #[error(
        "no configured model meets the task's constraints ({0}); add a model or relax min_tier/requires"
    )]
    NoAdequateModel(String),
    #[error("model {0:?} is not configured")]
    UnknownModel(String),
    #[error("task {0:?} is not configured")]
    UnknownTask(String),
}

impl RouteError {
    pub fn code(&self) -> &'static str {
        match self {
            Self::NoAdequateModel(_) => codes::NO_ADEQUATE_MODEL,
            Self::UnknownModel(_) | Self::UnknownTask(_) => codes::INVALID_REQUEST,
        }
    }
}

impl batchyard_jobs::retry::Retryable for RouteError {}

/// Output tokens assumed when neither the request nor the task sets a limit.
pub const DEFAULT_OUTPUT_TOKENS: u64 = 512;

/// The output tokens one choice may produce, as the request asks or the task allows.
pub fn requested_output_tokens(body: &Map<String, Value>, task: Option<&TaskSpec>) -> Option<u64> {
    body.get("max_completion_tokens")
        .or_else(|| body.get("max_tokens"))
        .and_then(count_value)
        .or_else(|| task.and_then(|t| t.max_output_tokens.map(u64::from)))
}

/// One model in a job's cascade.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub model: Arc<ModelSpec>,
    /// Prompt tokens as this model's tokenizer counts them (estimated).
    pub prompt_tokens: u64,
    /// The output allowance: what a call may produce at most, over all the choices it asks for
    /// (`n`).
    pub max_output_tokens: u64,
    /// Expected cost of one call (half the output allowance assumed), with the body's cached
    /// prefix read from a warm prompt cache.
    pub call_cost_usd: f64,
    /// Prompt tokens expected from the provider's prompt cache when it is warm: the prefix
    /// up to the body's cache point (0 without one).
    pub cached_prompt_tokens: u64,
    /// [`Self::call_cost_usd`] with no cache involved.
    pub uncached_call_cost_usd: f64,
    /// [`Self::call_cost_usd`] for the call that writes the cache (the first per model).
    pub cold_call_cost_usd: f64,
    /// Worst-case cost of one call: what a budget reserves.
    pub worst_case_usd: f64,
    pub pass: PassEstimate,
    /// Expected total cost when the cascade starts here: `cost + (1 - p) * E[rest]`.
    pub expected_usd: f64,
}

/// A model the hard constraints dropped, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub model: String,
    pub reason: String,
}

/// The router's answer for one job.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Best first.
    pub candidates: Vec<Candidate>,
    pub rejected: Vec<Rejected>,
    /// The task whose adequacy is learned (`None` for pinned and auto requests).
    pub task: Option<String>,
    pub bucket: u32,
    pub pinned: bool,
    /// Whether checked answers teach the adequacy model: only tasks with validators, since
    /// elsewhere nothing but truncation can fail an answer.
    pub learns: bool,
}

impl Plan {
    /// Expected total cost of the whole cascade.
    pub fn expected_usd(&self) -> f64 {
        self.candidates.first().map_or(0.0, |c| c.expected_usd)
    }
}

/// Shared by all jobs of a process.
pub struct Router {
    pub(crate) tokens: Arc<TokenEstimator>,
    pub(crate) adequacy: Arc<Adequacy>,
}

impl Default for Router {
    fn default() -> Self {
        Self::new(Arc::new(Adequacy::new(
            Arc::new(MemoryAdequacy::new(AdequacyPolicy::default().max_evidence)),
            AdequacyPolicy::default(),
        )))
    }
}

impl Router {
    pub fn new(adequacy: Arc<Adequacy>) -> Self {
        Self {
            tokens: Arc::new(TokenEstimator::new()),
            adequacy,
        }
    }

    /// The cascade for `job`. A pinned job gets exactly its model.
    pub async fn plan(&self, catalog: &Catalog, job: &Job) -> Result<Plan, RouteError> {
        let (task, pinned) = match &job.route {
            Route::Pinned { model } => {
                let model = catalog
                    .model(model)
                    .ok_or_else(|| RouteError::UnknownModel(model.clone()))?;
                let only = [Arc::clone(model)];
                return Ok(self.order(&only, &job.body, None, true, Vec::new()).await);
            }
            Route::Task { task } => (
                Some(
                    catalog
                        .task(task)
                        .ok_or_else(|| RouteError::UnknownTask(task.clone()))?,
                ),
                false,
            ),
            Route::Auto => (None, false),
        };
        let output = requested_output_tokens(&job.body, task).unwrap_or(DEFAULT_OUTPUT_TOKENS);
        let min_tier = task.map_or(0, |t| t.min_tier);
        let mut adequate = Vec::new();
        let mut rejected = Vec::new();
        for model in catalog.models() {
            let prompt = self.tokens.prompt_tokens(model, &job.body);
            let reason = if model.tier < min_tier {
                Some(format!("tier {} < min_tier {min_tier}", model.tier))
            } else if let Some(missing) =
                task.and_then(|t| t.requires.iter().find(|c| !model.capabilities.contains(*c)))
            {
                Some(format!("lacks capability {missing:?}"))
            } else if model.context_window < prompt + output {
                Some(format!(
                    "context window {} < ~{prompt} prompt + {output} output tokens",
                    model.context_window
                ))
            } else {
                None
            };
            match reason {
                Some(reason) => rejected.push(Rejected {
                    model: model.key.clone(),
                    reason,
                }),
                None => adequate.push(Arc::clone(model)),
            }
        }
        if adequate.is_empty() {
            let prompt = rough_prompt_tokens(&job.body);
            let why = format!(
                "min_tier {min_tier}, ~{prompt} prompt + {output} output tokens{}",
                task.map(|t| format!(", requires {:?}", t.requires))
                    .unwrap_or_default()
            );
            return Err(RouteError::NoAdequateModel(why));
        }
        Ok(self
            .order(&adequate, &job.body, task, pinned, rejected)
            .await)
    }

    async fn order(
        &self,
        models: &[Arc<ModelSpec>],
        body: &Map<String, Value>,
        task: Option<&TaskSpec>,
        pinned: bool,
        rejected: Vec<Rejected>,
    ) -> Plan {
        let output = requested_output_tokens(body, task).unwrap_or(DEFAULT_OUTPUT_TOKENS);
        let completions = completions_per_call(body);
        let bucket = length_bucket(rough_prompt_tokens(body));
        let prefix = cached_prefix(body);
        let learns = task.is_some_and(|t| t.validators.is_some());
        let estimates = match task.filter(|_| learns) {
            Some(t) => {
                let keys: Vec<(&str, u32)> =
                    models.iter().map(|m| (m.key.as_str(), m.tier)).collect();
                self.adequacy
                    .estimates(&t.key, bucket, t.min_tier, &keys)
                    .await
            }
            // Nothing to learn from: cheapest first.
            None => vec![certain(); models.len()],
        };
        let mut candidates: Vec<Candidate> = models
            .iter()
            .zip(estimates)
            .map(|(model, pass)| {
                let prompt = self.tokens.prompt_tokens(model, body);
                let output = model
                    .max_output_tokens
                    .map_or(output, |cap| output.min(u64::from(cap)))
                    .saturating_mul(completions);
                // A body with a cache point is one of many items sharing its prefix: the
                // expected cost reads it from a warm cache (the one write per model is the
                // estimate's to add). The worst case, which budget reservations hold, also
                // covers a cache write priced above plain input.
                let cached = prefix.map_or(0, |p| p.tokens().min(prompt));
                let half = output.div_ceil(2);
                let with = |cached_input, cache_write_input| {
                    model.cost_usd(TokenCounts {
                        input: prompt,
                        cached_input,
                        cache_write_input,
                        output: half,
                    })
                };
                Candidate {
                    call_cost_usd: with(cached, 0),
                    cached_prompt_tokens: cached,
                    uncached_call_cost_usd: with(0, 0),
                    cold_call_cost_usd: with(0, cached),
                    worst_case_usd: model.worst_case_usd(prompt, output),
                    model: Arc::clone(model),
                    prompt_tokens: prompt,
                    max_output_tokens: output,
                    pass,
                    expected_usd: 0.0,
                }
            })
            .collect();
        candidates.sort_by(|a, b| {
            ratio(a)
                .total_cmp(&ratio(b))
                .then(b.model.tier.cmp(&a.model.tier))
                .then(a.model.key.cmp(&b.model.key))
        });
        let mut rest = 0.0;
        for c in candidates.iter_mut().rev() {
            c.expected_usd = c.call_cost_usd + (1.0 - c.pass.mean.clamp(0.0, 1.0)) * rest;
            rest = c.expected_usd;
        }
        Plan {
            candidates,
            rejected,
            task: task.map(|t| t.key.clone()),
            bucket,
            pinned,
            learns,
        }
    }
}

fn certain() -> PassEstimate {
    PassEstimate {
        mean: 1.0,
        score: 1.0,
        passes: 0.0,
        fails: 0.0,
    }
}

/// Cost per expected pass: ordering by it minimises the cascade's expected cost.
fn ratio(c: &Candidate) -> f64 {
    c.call_cost_usd / c.pass.score.max(0.001)
}
