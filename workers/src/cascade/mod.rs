//! One job's walk down its plan: for each candidate, the result cache, then a budget
//! reservation, then the guarded provider call; the answer is checked, and a failed check
//! escalates to the next candidate. Every attempt's cost counts, and every checked answer
//! teaches the adequacy model.

use std::time::Duration;

use batchyard_jobs::batch::{BatchRecord, now_millis, usd_to_nanos};
use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{Extension, OutputLine, Response, Step, codes, step_outcomes};

use crate::cache::{CachedCompletion, ResultCache};
use crate::call::ModelOutcome;
use crate::provider::{ChatCall, Completion, Provider, ProviderError, ProviderErrorKind};
use crate::retry::backoff_delay;
use crate::runner::{Decision, JobRunner};

mod budget;
mod unavailable;

/// What one run of a job has spent and learned so far.
struct Run {
    ext: Extension,
    cost: f64,
    /// Spend already added to the ledger through reservations (not to be settled again).
    committed_nanos: i64,
}

impl Run {
    fn end(mut self, line: impl FnOnce(Extension) -> OutputLine, dead: bool) -> Decision {
        self.ext.cost_usd = self.cost;
        Decision::End {
            line: line(self.ext),
            dead,
            committed_nanos: self.committed_nanos,
        }
    }
}

/// How a checked answer fared.
enum Verdict {
    Pass,
    Fail {
        outcome: &'static str,
        reason: String,
    },
}

impl JobRunner {
    /// Runs `job` through its cascade. `record` is the batch (budget, cache opt-out).
    pub(crate) async fn run_cascade(&self, job: &Job, record: Option<&BatchRecord>) -> Decision {
        let mut run = Run {
            ext: Extension::default(),
            cost: 0.0,
            committed_nanos: 0,
        };
        let plan = match self.router.plan(&self.catalog, job).await {
            Ok(plan) => plan,
            Err(e) => {
                return run.end(
                    |ext| {
                        OutputLine::failure(
                            &job.job_id,
                            &job.custom_id,
                            e.code(),
                            e.to_string(),
                            ext,
                        )
                    },
                    false,
                );
            }
        };
        let task = plan.task.as_deref().and_then(|t| self.catalog.task(t));
        let default_max_tokens = task.and_then(|t| t.max_output_tokens);
        let budgeted = record.is_some_and(|r| r.budget_usd.is_some());
        let cache = self
            .cache
            .as_ref()
            .filter(|_| !record.is_some_and(|r| r.no_cache));
        let mut last_error: Option<ProviderError> = None;
        let mut exhausted = false;
        let mut unavailable = unavailable::Unavailable::default();
        // After a context overflow only a larger context window can help.
        let mut needs_context_over: Option<u64> = None;
        let count = plan.candidates.len();
        for (index, cand) in plan.candidates.iter().enumerate() {
            let model = &cand.model;
            let has_next = index + 1 < count && !plan.pinned;
            tracing::Span::current().record("model", model.key.as_str());
            let Some(provider) = self.catalog.provider(&model.provider) else {
                continue;
            };
            if needs_context_over.is_some_and(|window| model.context_window <= window) {
                continue;
            }
            let call = ChatCall {
                model_name: &model.name,
                body: &job.body,
                default_max_tokens: budget::max_tokens_to_send(
                    budgeted,
                    default_max_tokens,
                    &job.body,
                    model,
                ),
            };
            // A simulated answer costs nothing to make again, so it isn't cached.
            let key = cache
                .filter(|_| !matches!(provider.as_ref(), Provider::Simulated(_)))
                .map(|_| ResultCache::key(model, &job.body, call.default_max_tokens));
            let hit = match (cache, &key) {
                (Some(cache), Some(key)) => cache.get(key).await,
                _ => None,
            };
            run.ext.estimated_input_tokens = cand.prompt_tokens;
            let (done, cached) = match hit {
                Some(entry) => (from_cache(entry), true),
                None => {
                    let reserved = if budgeted {
                        match self.reserve(job, cand).await {
                            Ok(reserved) => reserved,
                            Err(ending) => return ending(run),
                        }
                    } else {
                        false
                    };
                    let limits = self.catalog.provider_limits(&model.provider);
                    let estimate = cand.prompt_tokens.saturating_add(cand.max_output_tokens);
                    let outcome = self
                        .guards
                        .call_model(&self.retry, provider, model, limits, call, estimate)
                        .await;
                    let result = match outcome {
                        ModelOutcome::Unavailable(state) => {
                            self.commit(job, reserved, 0.0, &mut run).await;
                            unavailable.add(&model.key, state);
                            tracing::debug!(model = %model.key, "model cooling down or paused; trying the next");
                            continue;
                        }
                        ModelOutcome::Wait(delay) => {
                            self.commit(job, reserved, 0.0, &mut run).await;
                            // Waiting for capacity is not a failed attempt.
                            return self.later(job.clone(), delay, run).await;
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
                        Ok(done) => model.cost_usd(done.input_tokens, done.output_tokens),
                        Err(_) => 0.0,
                    };
                    self.commit(job, reserved, spent, &mut run).await;
                    match result {
                        Ok(done) => {
                            self.router.tokens.observe(
                                model,
                                cand.prompt_tokens,
                                done.input_tokens,
                            );
                            if let (Some(cache), Some(key)) = (cache, &key) {
                                cache.put(key, &to_cache(&model.key, &done)).await;
                            }
                            (done, false)
                        }
                        Err(e) => {
                            run.ext.model = Some(model.key.clone());
                            run.ext
                                .cascade
                                .push(step(&model.key, e.kind.code(), 0.0, None, false));
                            let escalate = matches!(
                                e.kind,
                                ProviderErrorKind::ContextOverflow
                                    | ProviderErrorKind::ContentFilter
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
                            // Transient trouble, and models paused for auth or quota, are the
                            // queue's to retry later; a model that keeps failing is cooled down
                            // by then and the next delivery falls back to the next candidate.
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
                                needs_context_over =
                                    Some(needs_context_over.map_or(model.context_window, |w| {
                                        w.max(model.context_window)
                                    }));
                            }
                            if escalate && has_next {
                                run.ext.escalations += 1;
                                crate::metrics::escalated(plan.task.as_deref());
                                last_error = Some(e);
                                continue;
                            }
                            if retry_later && job.attempt + 1 < self.options.max_attempts {
                                let mut next = job.clone();
                                next.attempt += 1;
                                next.last_error = Some(format!("{}: {}", e.kind.code(), e.message));
                                let delay = e
                                    .retry_after
                                    .unwrap_or_else(|| backoff_delay(&self.retry, next.attempt));
                                return self
                                    .later(next, delay.max(Duration::from_millis(100)), run)
                                    .await;
                            }
                            exhausted = retry_later;
                            last_error = Some(e);
                            break;
                        }
                    }
                }
            };
            let cost = if cached {
                0.0
            } else {
                model.cost_usd(done.input_tokens, done.output_tokens)
            };
            run.cost += cost;
            run.ext.model = Some(model.key.clone());
            run.ext.cached = cached;
            run.ext.input_tokens += done.input_tokens;
            run.ext.output_tokens += done.output_tokens;
            run.ext.simulated |= done.simulated;
            let verdict = self.check(task, &done, has_next).await;
            let outcome = match &verdict {
                Verdict::Pass => step_outcomes::PASSED,
                Verdict::Fail { outcome, .. } => outcome,
            };
            run.ext
                .cascade
                .push(step(&model.key, outcome, cost, Some(&done), cached));
            // A cached answer was learned from when it was made.
            if !cached
                && plan.learns
                && let Some(task) = &plan.task
            {
                let passed = matches!(verdict, Verdict::Pass);
                self.router
                    .adequacy
                    .record(task, plan.bucket, &model.key, passed)
                    .await;
            }
            match verdict {
                Verdict::Pass => {
                    run.ext.last_output = None;
                    return run.end(
                        |ext| OutputLine {
                            id: format!("batch_req_{}", job.job_id),
                            custom_id: job.custom_id.clone(),
                            response: Some(Response {
                                status_code: 200,
                                request_id: done.request_id,
                                body: done.body,
                            }),
                            error: None,
                            batchyard: ext,
                            job: None,
                            settle_nanos: None,
                        },
                        false,
                    );
                }
                Verdict::Fail { reason, .. } => {
                    // One line per rejected answer drowned everything else at INFO (2,082 of 2,768 lines
                    // in one log); the escalation and validation_failed metrics count them.
                    tracing::debug!(model = %model.key, reason = %reason, "answer not accepted");
                    run.ext.last_output = Some(answer_text(&done.body).to_string());
                    if has_next {
                        run.ext.escalations += 1;
                        crate::metrics::escalated(plan.task.as_deref());
                        continue;
                    }
                    let message = format!("the answer of {} failed {reason}", model.key);
                    return run.end(
                        |ext| {
                            OutputLine::failure(
                                &job.job_id,
                                &job.custom_id,
                                codes::VALIDATION_FAILED,
                                message,
                                ext,
                            )
                        },
                        true,
                    );
                }
            }
        }
        if last_error.is_none() && !unavailable.is_empty() {
            // Every adequate model is cooling down or paused.
            return self.all_unavailable(job, &unavailable, run).await;
        }
        let (code, message) = match last_error {
            Some(e) => (e.kind.code(), e.message),
            None => (
                codes::NO_ADEQUATE_MODEL,
                "no candidate model has a provider".to_string(),
            ),
        };
        run.end(
            |ext| OutputLine::failure(&job.job_id, &job.custom_id, code, message, ext),
            exhausted,
        )
    }

    /// Checks an answer: truncation escalates while a larger model is left; then the task's
    /// validators, if any.
    async fn check(
        &self,
        task: Option<&crate::catalog::TaskSpec>,
        done: &Completion,
        has_next: bool,
    ) -> Verdict {
        if done.finish_reason.as_deref() == Some("length") && has_next {
            return Verdict::Fail {
                outcome: step_outcomes::TRUNCATED,
                reason: "finish_reason: the output was cut at its token limit".into(),
            };
        }
        if let Some(validators) = task.and_then(|t| t.validators.as_ref())
            && let Err(failure) = validators
                .check(answer_text(&done.body), done.finish_reason.as_deref())
                .await
        {
            return Verdict::Fail {
                outcome: step_outcomes::FAILED_VALIDATION,
                reason: failure.to_string(),
            };
        }
        Verdict::Pass
    }

    /// Puts the job back for later, carrying what this run spent.
    async fn later(&self, next: Job, delay: Duration, run: Run) -> Decision {
        Decision::Later {
            uncommitted_nanos: usd_to_nanos(run.cost) - run.committed_nanos,
            job: carry(next, &run),
            delay,
        }
    }
}

/// The job to run next time, carrying this run's spend so the item's line counts it.
fn carry(mut job: Job, run: &Run) -> Job {
    job.prior_cost_usd += run.cost;
    job
}

fn step(model: &str, outcome: &str, cost: f64, done: Option<&Completion>, cached: bool) -> Step {
    Step {
        model: model.to_string(),
        outcome: outcome.to_string(),
        cost_usd: cost,
        input_tokens: done.map_or(0, |d| d.input_tokens),
        output_tokens: done.map_or(0, |d| d.output_tokens),
        cached,
    }
}

fn from_cache(entry: CachedCompletion) -> Completion {
    crate::metrics::cache_hit(&entry.model);
    Completion {
        body: entry.body,
        request_id: entry.request_id,
        input_tokens: entry.input_tokens,
        output_tokens: entry.output_tokens,
        finish_reason: entry.finish_reason,
        simulated: false,
        rate_limits: None,
    }
}

fn to_cache(model: &str, done: &Completion) -> CachedCompletion {
    CachedCompletion {
        model: model.to_string(),
        body: done.body.clone(),
        request_id: done.request_id.clone(),
        input_tokens: done.input_tokens,
        output_tokens: done.output_tokens,
        finish_reason: done.finish_reason.clone(),
        created_at_ms: now_millis(),
    }
}

/// The text of a chat completion's first choice ("" when there is none).
pub(crate) fn answer_text(body: &serde_json::Value) -> &str {
    body.pointer("/choices/0/message/content")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}
