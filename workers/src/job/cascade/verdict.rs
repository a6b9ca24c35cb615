//! The checks on an answer, and what a passed or failed check makes of the run.

use batchyard_jobs::batch::now_millis;
use batchyard_jobs::outcome::{OutputLine, Response, Step, codes, step_outcomes};

use super::attempt::Origin;
use super::{Cascade, Next, Run, Walk};
use crate::catalog::{ModelSpec, TaskSpec, TokenCounts};
use crate::job::cache::CachedCompletion;
use crate::provider::Completion;

/// How a checked answer fared.
enum Verdict {
    Pass,
    Fail {
        outcome: &'static str,
        reason: String,
    },
}

impl Cascade {
    /// Counts an answer into the run, checks it, teaches the adequacy model, and ends the run
    /// on a pass (or on a failure with no candidate left).
    pub(super) async fn judge(
        &self,
        walk: &Walk<'_>,
        model: &ModelSpec,
        has_next: bool,
        done: Completion,
        origin: Origin,
        run: &mut Run,
    ) -> Next {
        let (job, plan) = (walk.job, walk.plan);
        let cached = origin == Origin::Cache;
        let cost = match origin {
            Origin::Cache => 0.0,
            Origin::Call => model.cost_usd(TokenCounts::of(&done)),
            Origin::Batch => model.batch_cost_usd(TokenCounts::of(&done)),
        };
        run.cost += cost;
        run.ext.model = Some(model.key.clone());
        run.ext.cached = cached;
        run.ext.input_tokens += done.input_tokens;
        run.ext.cached_input_tokens += done.cached_input_tokens;
        run.ext.cache_write_input_tokens += done.cache_write_input_tokens;
        run.ext.output_tokens += done.output_tokens;
        run.ext.simulated |= done.simulated;
        let verdict = check(walk.task, &done, has_next).await;
        let outcome = match &verdict {
            Verdict::Pass => step_outcomes::PASSED,
            Verdict::Fail { outcome, .. } => outcome,
        };
        let mut turn = step(&model.key, outcome, cost, Some(&done), cached);
        if origin == Origin::Batch {
            turn.provider_batch = job.prefetched.as_ref().map(|p| p.provider_batch.clone());
        }
        run.ext.cascade.push(turn);
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
                Next::end(run.take().end(
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
                ))
            }
            Verdict::Fail { reason, .. } => {
                // One line per rejected answer drowned everything else at INFO (2,082 of 2,768
                // lines in one log); the escalation and validation_failed metrics count them.
                tracing::debug!(model = %model.key, reason = %reason, "answer not accepted");
                run.ext.last_output = Some(answer_text(&done.body).to_string());
                if has_next {
                    run.ext.escalations += 1;
                    crate::metrics::escalated(plan.task.as_deref());
                    return Next::Continue;
                }
                let message = format!("the answer of {} failed {reason}", model.key);
                Next::end(run.take().end(
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
                ))
            }
        }
    }
}

/// Checks an answer: truncation escalates while a larger model is left; then the task's
/// validators, if any.
async fn check(task: Option<&TaskSpec>, done: &Completion, has_next: bool) -> Verdict {
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

pub(super) fn step(
    model: &str,
    outcome: &str,
    cost: f64,
    done: Option<&Completion>,
    cached: bool,
) -> Step {
    Step {
        model: model.to_string(),
        outcome: outcome.to_string(),
        cost_usd: cost,
        input_tokens: done.map_or(0, |d| d.input_tokens),
        cached_input_tokens: done.map_or(0, |d| d.cached_input_tokens),
        cache_write_input_tokens: done.map_or(0, |d| d.cache_write_input_tokens),
        output_tokens: done.map_or(0, |d| d.output_tokens),
        cached,
        provider_batch: None,
    }
}

pub(super) fn from_cache(entry: CachedCompletion) -> Completion {
    crate::metrics::cache_hit(&entry.model);
    Completion {
        body: entry.body,
        request_id: entry.request_id,
        input_tokens: entry.input_tokens,
        cached_input_tokens: entry.cached_input_tokens,
        cache_write_input_tokens: entry.cache_write_input_tokens,
        output_tokens: entry.output_tokens,
        finish_reason: entry.finish_reason,
        simulated: false,
        rate_limits: None,
    }
}

pub(super) fn to_cache(model: &str, done: &Completion) -> CachedCompletion {
    CachedCompletion {
        model: model.to_string(),
        body: done.body.clone(),
        request_id: done.request_id.clone(),
        input_tokens: done.input_tokens,
        cached_input_tokens: done.cached_input_tokens,
        cache_write_input_tokens: done.cache_write_input_tokens,
        output_tokens: done.output_tokens,
        finish_reason: done.finish_reason.clone(),
        created_at_ms: now_millis(),
    }
}

/// The text of a chat completion's first choice ("" when there is none).
fn answer_text(body: &serde_json::Value) -> &str {
    body.pointer("/choices/0/message/content")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}
