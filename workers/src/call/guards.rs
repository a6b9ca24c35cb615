//! One model call as the cluster allows it: the model must be healthy (not cooling down or
//! paused), the shared rate limiter must admit it, and in-place retries are bounded by the
//! retry policy and the model's retry budget. Every outcome is reported back to both.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::call::health::ModelHealth;
use crate::call::limiter::{self, LimitSpec, Limiter};
use crate::call::retry::{RetryPolicy, call_with_retry_gated};
use crate::catalog::ModelSpec;
use crate::provider::{ChatCall, Completion, Provider, ProviderError, ProviderErrorKind};

/// The shared guards every call passes through.
#[derive(Clone)]
pub struct Guards {
    health: Arc<dyn ModelHealth>,
    limiter: Arc<dyn Limiter>,
    /// The longest a call may wait for rate-limit capacity while its job is claimed. Longer
    /// waits put the job back in the queue with that delay instead.
    max_wait: Duration,
    /// Models seen healthy recently, so a busy worker asks Redis at most every
    /// [`HEALTHY_CACHE`] per model instead of once per call.
    healthy: Arc<Mutex<HashMap<String, Instant>>>,
    /// Models that answered 429 here, with the end of the pause that followed; their shared
    /// pauses are checked from then on.
    throttled: Arc<Mutex<HashMap<String, Instant>>>,
    /// One waiter per limit scope per process asks the shared limiter; the others queue here.
    /// Without this, hundreds of waiting jobs all re-ask Redis each time a slot frees up.
    turns: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>>,
}

/// How long a healthy answer is trusted locally. A breaker opened elsewhere reaches this
/// worker within this time.
const HEALTHY_CACHE: Duration = Duration::from_millis(250);

impl Guards {
    /// The model health these guards consult (operators pause and resume through it).
    pub fn health(&self) -> &Arc<dyn ModelHealth> {
        &self.health
    }

    pub fn new(
        health: Arc<dyn ModelHealth>,
        limiter: Arc<dyn Limiter>,
        max_wait: Duration,
    ) -> Self {
        Self {
            health,
            limiter,
            max_wait,
            healthy: Arc::default(),
            throttled: Arc::default(),
            turns: Arc::default(),
        }
    }

    async fn admit(&self, model: &str) -> bool {
        let fresh = |cache: &HashMap<String, Instant>| {
            cache
                .get(model)
                .is_some_and(|at| at.elapsed() < HEALTHY_CACHE)
        };
        if self.healthy.lock().map(|c| fresh(&c)).unwrap_or(false) {
            return true;
        }
        match self.health.admit(model).await {
            Ok(true) => {
                // Only a plain healthy state is cached: a half-open probe must be asked for.
                if let Ok(crate::call::health::ModelState::Healthy) = self.health.state(model).await
                    && let Ok(mut cache) = self.healthy.lock()
                {
                    cache.insert(model.to_string(), Instant::now());
                }
                true
            }
            Ok(false) => false,
            // Health is advisory: if Redis can't say, calling is better than stalling.
            Err(e) => {
                tracing::warn!(model, error = %e, "cannot read model health");
                true
            }
        }
    }

    /// Waits for rate-limit capacity, taking turns with this process's other callers of the
    /// same scopes. The whole wait, turn included, stays within `max_wait`.
    async fn admit_in_turn(
        &self,
        specs: &[LimitSpec],
        tokens: u64,
    ) -> Result<Result<limiter::Reservation, Duration>, limiter::LimiterError> {
        let key: String = specs
            .iter()
            .map(|s| s.scope.as_str())
            .collect::<Vec<_>>()
            .join("+");
        let turn = self
            .turns
            .lock()
            .map(|mut turns| Arc::clone(turns.entry(key).or_default()))
            .ok();
        let Some(turn) = turn else {
            return limiter::acquire(&*self.limiter, specs, tokens, self.max_wait).await;
        };
        let started = Instant::now();
        let taken = tokio::time::timeout(self.max_wait, turn.lock()).await;
        // Queueing for a turn is a deliberate wait, not orchestration overhead.
        crate::metrics::overhead::exclude(started.elapsed());
        let Ok(_guard) = taken else {
            // The queue ahead is longer than we may hold the claim: come back later.
            return Ok(Err(self.max_wait));
        };
        let left = self.max_wait.saturating_sub(started.elapsed());
        limiter::acquire(&*self.limiter, specs, tokens, left).await
    }

    /// How much is left of the pause after this model's last 429 here, if it is still on.
    /// A caller with another adequate model goes there instead of waiting it out.
    pub fn throttled_for(&self, model: &str) -> Option<Duration> {
        let until = self.throttled.lock().ok()?.get(model).copied()?;
        until
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
    }

    fn forget_healthy(&self, model: &str) {
        if let Ok(mut cache) = self.healthy.lock() {
            cache.remove(model);
        }
    }
}

/// How a call to one model ended.
#[derive(Debug)]
pub enum ModelOutcome {
    Answer {
        completion: Completion,
        attempts: u32,
    },
    Failed {
        error: ProviderError,
        attempts: u32,
    },
    /// The model is cooling down or paused (its state, as far as health could tell): try the
    /// next candidate.
    Unavailable(crate::call::health::ModelState),
    /// No rate-limit capacity soon enough: run the job again after this delay.
    Wait(Duration),
}

/// The limits a call counts against. Empty when none are declared and the model has never
/// answered 429 here: then the limiter is not consulted at all, which saves a Redis round trip
/// per call. After a 429 the model's scope is always checked, so the shared pause holds.
fn limit_specs(
    model: &ModelSpec,
    provider_limits: Option<(Option<u32>, Option<u64>)>,
    throttled: bool,
) -> Vec<LimitSpec> {
    let mut specs = Vec::with_capacity(2);
    if model.rpm.is_some() || model.tpm.is_some() || throttled {
        specs.push(LimitSpec::model(model));
    }
    if let Some((rpm, tpm)) = provider_limits
        && (rpm.is_some() || tpm.is_some())
    {
        specs.push(LimitSpec::provider(&model.provider, rpm, tpm));
    }
    specs
}

impl Guards {
    /// Calls `model` for `call`, retrying in place as the policy and the retry budget allow.
    /// With `fallback_ready` (the caller has another adequate model) a 429 is not retried in
    /// place: the caller moves on.
    #[allow(clippy::too_many_arguments)]
    pub async fn call_model(
        &self,
        policy: &RetryPolicy,
        provider: &Provider,
        model: &ModelSpec,
        provider_limits: Option<(Option<u32>, Option<u64>)>,
        call: ChatCall<'_>,
        estimated_tokens: u64,
        fallback_ready: bool,
    ) -> ModelOutcome {
        if !self.admit(&model.key).await {
            // Half-open is what a refusal means when health can't say more: another caller holds
            // the probe.
            let state = self
                .health
                .state(&model.key)
                .await
                .unwrap_or(crate::call::health::ModelState::HalfOpen);
            return ModelOutcome::Unavailable(state);
        }
        let throttled = self
            .throttled
            .lock()
            .map(|t| t.contains_key(&model.key))
            .unwrap_or(false);
        let specs = limit_specs(model, provider_limits, throttled);
        let waited: Mutex<Option<Duration>> = Mutex::new(None);
        let gate = |e: &ProviderError| {
            let capacity_wait = waited.lock().map(|w| w.is_some()).unwrap_or(false);
            // A provider hint longer than we may hold the claim: wait in the queue instead.
            let long_hint = e.retry_after.filter(|d| *d > self.max_wait);
            if let (Some(hint), Ok(mut w)) = (long_hint, waited.lock()) {
                *w = Some(hint);
            }
            let health = Arc::clone(&self.health);
            let key = model.key.clone();
            let fall_back = fallback_ready && e.kind == ProviderErrorKind::RateLimited;
            async move {
                if capacity_wait || long_hint.is_some() || fall_back {
                    return false;
                }
                health.allow_retry(&key).await.unwrap_or(true)
            }
        };
        let attempt = || {
            let (specs, waited) = (&specs, &waited);
            async move {
                let admitted = if specs.is_empty() {
                    Ok(Err(Duration::ZERO))
                } else {
                    let asked = Instant::now();
                    let admitted = self.admit_in_turn(specs, estimated_tokens).await;
                    crate::metrics::rate_limit_waited(&model.key, asked.elapsed());
                    admitted
                };
                let reservation = match admitted {
                    Ok(Err(delay)) if delay.is_zero() => None,
                    Ok(Ok(r)) => Some(r),
                    Ok(Err(delay)) => {
                        if let Ok(mut w) = waited.lock() {
                            *w = Some(delay);
                        }
                        let mut e = ProviderError::new(
                            ProviderErrorKind::RateLimited,
                            "waiting for rate-limit capacity",
                        );
                        e.retry_after = Some(delay);
                        return Err(e);
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "rate limiter unavailable; calling without it");
                        None
                    }
                };
                let started = Instant::now();
                let result = provider.complete(call).await;
                crate::metrics::provider_called(model, started.elapsed(), &result);
                self.report(model, specs, reservation, &result).await;
                result
            }
        };
        let (result, attempts) = call_with_retry_gated(policy, gate, attempt).await;
        if let Some(delay) = waited.lock().ok().and_then(|w| *w) {
            return ModelOutcome::Wait(delay);
        }
        match result {
            Ok(completion) => ModelOutcome::Answer {
                completion,
                attempts,
            },
            Err(error) => ModelOutcome::Failed { error, attempts },
        }
    }

    async fn report(
        &self,
        model: &ModelSpec,
        specs: &[LimitSpec],
        reservation: Option<limiter::Reservation>,
        result: &Result<Completion, ProviderError>,
    ) {
        if let Some(r) = reservation {
            let used = match result {
                Ok(c) => c.input_tokens + c.output_tokens,
                // A failed call used no tokens; a rate-limited one may have, but it is refunded.
                Err(_) => 0,
            };
            if let Err(e) = self.limiter.settle(r, used).await {
                tracing::warn!(error = %e, "cannot settle the rate-limit reservation");
            }
        }
        if let Ok(Completion {
            rate_limits: Some(report),
            ..
        }) = result
        {
            // The provider knows better than our count: let its remaining tighten our view.
            for spec in specs {
                if let Err(le) = self
                    .limiter
                    .observe_remaining(
                        &spec.scope,
                        report.remaining_requests,
                        report.remaining_tokens,
                        report.reset,
                    )
                    .await
                {
                    tracing::warn!(error = %le, "cannot record the provider's remaining limits");
                }
            }
        }
        if let Err(e) = result
            && e.kind == ProviderErrorKind::RateLimited
        {
            // One 429 pauses the model for every worker until the provider's reset time.
            let pause = e.retry_after.unwrap_or(Duration::from_secs(1));
            if let Ok(mut t) = self.throttled.lock() {
                t.insert(model.key.clone(), Instant::now() + pause);
            }
            let model_scope = LimitSpec::model(model);
            let scopes = specs.iter().map(|s| s.scope.as_str()).chain(
                (!specs.iter().any(|s| s.scope == model_scope.scope))
                    .then_some(model_scope.scope.as_str()),
            );
            for scope in scopes {
                if let Err(le) = self.limiter.pause(scope, pause).await {
                    tracing::warn!(error = %le, "cannot share the rate-limit pause");
                }
            }
        }
        if result.is_err() {
            self.forget_healthy(&model.key);
        }
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.kind);
        let reason = match result {
            Ok(_) => String::new(),
            Err(e) => e.to_string(),
        };
        if let Err(e) = self.health.record(&model.key, outcome, &reason).await {
            tracing::warn!(error = %e, "cannot record model health");
        }
    }
}
