//! One candidate's answer: from the result cache, or from a guarded call made under a budget
//! reservation. A failed call escalates to the next candidate, goes back to the queue, or ends
//! the walk.

use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{OutputLine, codes};
use batchyard_jobs::retry::Retryable as _;

use super::verdict::{from_cache, step, to_cache};
use super::{Cascade, Decision, Next, Run, Walk};
use crate::call::ModelOutcome;
use crate::call::health::ModelState;
use crate::call::retry::backoff_delay;
use crate::catalog::{ModelSpec, TokenCounts};
use crate::job::budget::{self, Reserve};
use crate::job::cache::ResultCache;
use crate::provider::{ChatCall, Completion, Provider, ProviderError, ProviderErrorKind};
use crate::route::router::Candidate;

impl Cascade {
    /// The candidate's answer and whether it came from the cache; `Err` says where the walk
    /// goes instead.
    pub(super) async fn answer(
        &self,
        walk: &mut Walk<'_>,
        cand: &Candidate,
        provider: &Arc<Provider>,
        has_next: bool,
        run: &mut Run,
    ) -> Result<(Completion, Origin), Next> {
        let model = &cand.model;
        let job = walk.job;
        if let Some(turn) = self.batch_turn(walk, cand, has_next, run).await {
            return turn;
        }
        let call = ChatCall {
            model_name: &model.name,
            body: &job.body,
            default_max_tokens: budget::max_tokens_to_send(
                walk.budgeted,
                walk.task.and_then(|t| t.max_output_tokens),
                &job.body,
                model,
            ),
        };
        // A simulated answer costs nothing to make again, so it isn't cached.
        let key = walk
            .cache
            .filter(|_| !matches!(provider.as_ref(), Provider::Simulated(_)))
            .map(|_| ResultCache::key(model, &job.body, call.default_max_tokens));
        let hit = match (walk.cache, &key) {
            (Some(cache), Some(key)) => cache.get(key).await,
            _ => None,
        };
        run.ext.estimated_input_tokens = cand.prompt_tokens;
        if let Some(entry) = hit {
            return Ok((from_cache(entry), Origin::Cache));
        }
        if has_next && self.guards.long_pause(&model.key) {
            // The provider asked for a pause longer than a call may wait: another adequate
            // model answers now instead of the item waiting it out.
            tracing::debug!(model = %model.key, "model throttled for long; falling back");
            crate::metrics::fell_back(&model.key, codes::RATE_LIMITED);
            return Err(Next::Continue);
        }
        let reserved = if walk.budgeted {
            match self.budget.reserve(job, cand, false).await {
                Reserve::Held => true,
                Reserve::Unlimited => false,
                Reserve::Later(delay) => {
                    return Err(Next::end(self.later(job.clone(), delay, run.take()).await));
                }
                Reserve::Exhausted(message) => {
                    return Err(Next::end(exhausted_budget(job, message, run.take())));
                }
            }
        } else {
            false
        };
        let limits = self.catalog.provider_limits(&model.provider);
        let estimate = cand.prompt_tokens.saturating_add(cand.max_output_tokens);
        // Behind the call warming this prompt's cached prefix on this model, if one is in flight.
        let mut warming = self.warmth.enter(&model.key, &job.body).await;
        let outcome = self
            .guards
            .call_model(&self.retry, provider, model, limits, call, estimate)
            .await;
        if matches!(outcome, ModelOutcome::Answer { .. }) {
            warming.warmed();
        }
        drop(warming);
        let result = match outcome {
            ModelOutcome::Unavailable(state) => {
                self.commit(job, reserved, 0.0, run).await;
                walk.unavailable.add(&model.key, state);
                tracing::debug!(model = %model.key, "model cooling down or paused; trying the next");
                return Err(Next::Continue);
            }
            ModelOutcome::Wait(delay) => {
                self.commit(job, reserved, 0.0, run).await;
                if has_next && self.guards.throttled_for(&model.key).is_some() {
                    crate::metrics::fell_back(&model.key, codes::RATE_LIMITED);
                    return Err(Next::Continue);
                }
                // Waiting for capacity is not a failed attempt.
                return Err(Next::end(self.later(job.clone(), delay, run.take()).await));
            }
            ModelOutcome::Answer {
                completion,
                attempts,
            } => {
                run.ext.attempts += attempts;
                Ok(completion)
            }
            ModelOutcome::Failed { error, attempts } => {
                run.ext.attempts += attempts;
                Err(error)
            }
        };
        let spent = match &result {
            Ok(done) => model.cost_usd(TokenCounts::of(done)),
            Err(_) => 0.0,
        };
        self.commit(job, reserved, spent, run).await;
        match result {
            Ok(done) => {
                self.router
                    .tokens
                    .observe(model, cand.prompt_tokens, done.input_tokens);
                if let (Some(cache), Some(key)) = (walk.cache, &key) {
                    cache.put(key, &to_cache(&model.key, &done)).await;
                }
                Ok((done, Origin::Call))
            }
            Err(e) => Err(self.failed(walk, model, e, has_next, run).await),
        }
    }

    /// The offload lane's part of a turn: a provider batch's answer for this model, a turn
    /// an earlier wave already took, or parking for the next wave. `None`: call as usual.
    async fn batch_turn(
        &self,
        walk: &mut Walk<'_>,
        cand: &Candidate,
        has_next: bool,
        run: &mut Run,
    ) -> Option<Result<(Completion, Origin), Next>> {
        let job = walk.job;
        let model = &*cand.model;
        if let Some(pre) = job.prefetched.as_ref().filter(|p| p.model == model.key) {
            let answer = batch_answer(pre, &job.body);
            // The provider batch's worst case, reserved when the item was parked, becomes
            // what the answer cost (nothing for an error).
            let spent = answer
                .as_ref()
                .map_or(0.0, |done| model.batch_cost_usd(TokenCounts::of(done)));
            self.commit(job, walk.budgeted, spent, run).await;
            return match answer {
                Ok(done) => Some(Ok((done, Origin::Batch))),
                Err(e) if !e.is_retryable() => {
                    Some(Err(self.failed(walk, model, e, has_next, run).await))
                }
                // A passing fault inside the provider batch: this turn runs real-time.
                Err(e) => {
                    tracing::debug!(model = %model.key, error = %e, "batch answer unusable; calling");
                    None
                }
            };
        }
        if job.offloaded_to.contains(&model.key) {
            // A provider batch of an earlier wave already answered this model's turn.
            return Some(Err(Next::Continue));
        }
        if !(walk.offload && model.batch.is_some()) {
            return None;
        }
        if walk.budgeted {
            // Fail closed: the item's worst case at the batch price is held from now until
            // its provider batch's answer is judged.
            match self.budget.reserve(job, cand, true).await {
                Reserve::Held | Reserve::Unlimited => {}
                Reserve::Later(delay) => {
                    return Some(Err(Next::end(
                        self.later(job.clone(), delay, run.take()).await,
                    )));
                }
                Reserve::Exhausted(message) => {
                    return Some(Err(Next::end(exhausted_budget(job, message, run.take()))));
                }
            }
        }
        Some(Err(Next::end(self.park(job, &model.key, run.take()))))
    }

    /// A call that failed after its in-place retries: escalate, retry later, or stop.
    async fn failed(
        &self,
        walk: &mut Walk<'_>,
        model: &ModelSpec,
        e: ProviderError,
        has_next: bool,
        run: &mut Run,
    ) -> Next {
        let plan = walk.plan;
        run.ext.model = Some(model.key.clone());
        run.ext
            .cascade
            .push(step(&model.key, e.kind.code(), 0.0, None, false));
        let escalate = matches!(
            e.kind,
            ProviderErrorKind::ContextOverflow | ProviderErrorKind::ContentFilter
        );
        if e.kind == ProviderErrorKind::ContentFilter
            && plan.learns
            && let Some(task) = &plan.task
        {
            self.router
                .adequacy
                .record(task, plan.bucket, &model.key, false)
                .await;
        }
        // Transient trouble, and models paused for auth or quota, are the queue's to retry
        // later; a model that keeps failing is cooled down by then and the next delivery falls
        // back to the next candidate.
        let retry_later = matches!(
            e.kind,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Transient
                | ProviderErrorKind::MalformedResponse
                | ProviderErrorKind::ResponseTooLarge
                | ProviderErrorKind::Auth
                | ProviderErrorKind::QuotaExhausted
        );
        tracing::warn!(model = %model.key, kind = e.kind.code(), error = %e.message, "provider call failed");
        if e.kind == ProviderErrorKind::ContextOverflow {
            walk.needs_context_over = Some(
                walk.needs_context_over
                    .map_or(model.context_window, |w| w.max(model.context_window)),
            );
        }
        // A throttled or paused model has nothing more to give this item now; an adequate
        // model next in line does. Waiting is only worth it when nothing else can answer.
        let fall_back = matches!(
            e.kind,
            ProviderErrorKind::RateLimited
                | ProviderErrorKind::Auth
                | ProviderErrorKind::QuotaExhausted
        );
        if fall_back && has_next {
            tracing::info!(model = %model.key, kind = e.kind.code(), "falling back to the next candidate");
            crate::metrics::fell_back(&model.key, e.kind.code());
            // Unavailable, not failed: if no later candidate answers either, the item waits
            // for this model as it would for a paused or cooling one, and does not end.
            let now = batchyard_jobs::batch::now_millis();
            let state = match e.kind {
                ProviderErrorKind::RateLimited => ModelState::CoolingDown {
                    until_ms: now
                        + u64::try_from(
                            e.retry_after.unwrap_or(Duration::from_secs(1)).as_millis(),
                        )
                        .unwrap_or(u64::MAX / 2),
                },
                _ => ModelState::Paused {
                    reason: format!("{}: {}", e.kind.code(), e.message),
                    since_ms: now,
                },
            };
            walk.unavailable.add(&model.key, state);
            return Next::Continue;
        }
        if escalate && has_next {
            run.ext.escalations += 1;
            crate::metrics::escalated(plan.task.as_deref());
            walk.last_error = Some(e);
            return Next::Continue;
        }
        let job = walk.job;
        if retry_later && job.attempt + 1 < self.options.max_attempts {
            let mut next = job.clone();
            next.attempt += 1;
            next.last_error = Some(format!("{}: {}", e.kind.code(), e.message));
            let delay = e
                .retry_after
                .unwrap_or_else(|| backoff_delay(&self.retry, next.attempt));
            let decision = self
                .later(next, delay.max(Duration::from_millis(100)), run.take())
                .await;
            return Next::end(decision);
        }
        walk.exhausted = retry_later;
        walk.last_error = Some(e);
        Next::Stop
    }
}

/// Where an answer came from, which sets what it costs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Origin {
    /// A call now, at the real-time price.
    Call,
    /// batchyard's result cache: already paid for.
    Cache,
    /// A provider batch (the offload lane), at the batch price.
    Batch,
}

/// A provider batch's answer for this item as a call's reply, or its error as a call's.
impl Cascade {
    /// What the provider batch answer `job` carries cost, for a job that ends before the
    /// cascade judges it (cancelled, expired, out of budget): it is paid all the same.
    pub(crate) fn unjudged_answer_usd(&self, job: &Job) -> f64 {
        let Some(pre) = &job.prefetched else {
            return 0.0;
        };
        let Some(model) = self.catalog.model(&pre.model) else {
            return 0.0;
        };
        batch_answer(pre, &job.body)
            .map_or(0.0, |done| model.batch_cost_usd(TokenCounts::of(&done)))
    }
}

fn batch_answer(
    pre: &batchyard_jobs::job::Prefetched,
    request: &serde_json::Map<String, serde_json::Value>,
) -> Result<Completion, ProviderError> {
    match (&pre.completion, &pre.error) {
        (Some(body), _) => {
            let mut done = crate::provider::openai::completion_from_body(body, request)?;
            done.request_id = format!("{}:{}", pre.provider_batch, done.request_id);
            Ok(done)
        }
        (None, Some((code, message))) => Err(ProviderError::new(
            crate::provider::ProviderErrorKind::from_code(code),
            format!("in provider batch {}: {message}", pre.provider_batch),
        )),
        (None, None) => Err(ProviderError::new(
            crate::provider::ProviderErrorKind::MalformedResponse,
            format!("provider batch {} gave no answer", pre.provider_batch),
        )),
    }
}

fn exhausted_budget(job: &Job, message: String, run: Run) -> Decision {
    run.end(
        |ext| {
            OutputLine::failure(
                &job.job_id,
                &job.custom_id,
                codes::BUDGET_EXHAUSTED,
                message,
                ext,
            )
        },
        true,
    )
}
