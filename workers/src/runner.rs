//! The job body: route, call, store the outcome, settle, then ack.
//!
//! A delivery is acked only after its outcome is in object storage. Anything that fails before
//! that leaves the job to the queue: retried later with a delay, or reclaimed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchyard_jobs::batch::{BatchRecord, BatchState, usd_to_nanos};
use batchyard_jobs::job::{Job, Route};
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::outcome::{Extension, OutputLine, Response, codes};
use batchyard_jobs::queue::{Delivery, Queue};
use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;
use tracing::{Instrument, field};

use crate::call::{Guards, ModelOutcome};
use crate::catalog::Catalog;
use crate::finalize::Finalizer;
use crate::health::HealthPolicy;
use crate::health::memory::MemoryHealth;
use crate::limiter::memory::MemoryLimiter;
use crate::pool::DeliveryHandler;
use crate::provider::{ChatCall, ProviderError, ProviderErrorKind};
use crate::retry::{RetryPolicy, backoff_delay};
use crate::router::{Router, estimate_prompt_tokens, requested_output_tokens};

/// Job-level limits.
#[derive(Debug, Clone)]
pub struct RunnerOptions {
    /// Deliveries of a job (after retry-later decisions) before it becomes a dead letter.
    pub max_attempts: u32,
    /// Reclaims from lost workers before a job is dead-lettered as `worker_lost`.
    pub max_reclaims: u64,
    /// How long a cached batch record (budget, state) may be used.
    pub batch_cache_ttl: Duration,
    /// How long a job waits when every adequate model is cooling down or paused.
    pub unavailable_delay: Duration,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_reclaims: 3,
            batch_cache_ttl: Duration::from_millis(500),
            unavailable_delay: Duration::from_secs(5),
        }
    }
}

/// Runs jobs. One per worker process, shared by all its concurrent jobs.
pub struct JobRunner {
    pub catalog: Arc<Catalog>,
    pub router: Router,
    pub queue: Arc<dyn Queue>,
    pub ledger: Arc<dyn Ledger>,
    pub store: ResultStore,
    pub retry: RetryPolicy,
    pub options: RunnerOptions,
    pub finalizer: Finalizer,
    pub guards: Guards,
    batches: Mutex<HashMap<String, (Instant, BatchRecord)>>,
}

/// What became of one job run.
enum Decision {
    /// Store this line, settle and ack.
    Done(OutputLine),
    /// Store this line, settle, and keep the job as a dead letter (replayable).
    Dead(OutputLine),
    /// Put the job back with a delay.
    Later(Job, Duration),
}

impl JobRunner {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        catalog: Arc<Catalog>,
        queue: Arc<dyn Queue>,
        ledger: Arc<dyn Ledger>,
        store: ResultStore,
        retry: RetryPolicy,
        options: RunnerOptions,
        finalizer: Finalizer,
    ) -> Self {
        Self {
            catalog,
            router: Router::new(),
            queue,
            ledger,
            store,
            retry,
            options,
            finalizer,
            guards: Guards::new(
                Arc::new(MemoryHealth::new(HealthPolicy::default())),
                Arc::new(MemoryLimiter::new()),
                Duration::from_secs(30),
            ),
            batches: Mutex::new(HashMap::new()),
        }
    }

    /// Uses these health and rate-limit guards (shared through Redis for distributed workers).
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.guards = guards;
        self
    }

    async fn batch(&self, batch_id: &str) -> Option<BatchRecord> {
        if let Ok(cache) = self.batches.lock()
            && let Some((at, record)) = cache.get(batch_id)
            && at.elapsed() < self.options.batch_cache_ttl
        {
            return Some(record.clone());
        }
        match self.ledger.get(batch_id).await {
            Ok(Some(record)) => {
                if let Ok(mut cache) = self.batches.lock() {
                    if cache.len() > 1024 {
                        cache.clear();
                    }
                    cache.insert(batch_id.to_string(), (Instant::now(), record.clone()));
                }
                Some(record)
            }
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(batch_id, error = %e, "cannot read the batch record; going on without it");
                None
            }
        }
    }

    async fn decide(&self, delivery: &Delivery) -> Decision {
        let job = &delivery.job;
        let ext = Extension::default();
        if delivery.reclaims() > self.options.max_reclaims {
            return Decision::Dead(OutputLine::failure(
                &job.job_id,
                &job.custom_id,
                codes::WORKER_LOST,
                format!(
                    "the job was taken back from {} workers that stopped while running it; it may crash workers",
                    delivery.reclaims()
                ),
                ext,
            ));
        }
        if let Some(record) = self.batch(&job.batch_id).await {
            if record.cancel_requested_at.is_some()
                || matches!(record.state, BatchState::Cancelling | BatchState::Cancelled)
            {
                return Decision::Done(OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    codes::CANCELLED,
                    "the batch was cancelled before this item ran",
                    ext,
                ));
            }
            if let Some(budget) = record.budget_usd
                && record.cost_usd() >= budget
            {
                return Decision::Done(OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    codes::BUDGET_EXHAUSTED,
                    format!(
                        "the batch budget of ${budget:.4} is spent; raise --budget-usd and replay"
                    ),
                    ext,
                ));
            }
        }
        self.call_models(job).await
    }

    async fn call_models(&self, job: &Job) -> Decision {
        let mut ext = Extension::default();
        let candidates = match self.router.candidates(&self.catalog, job) {
            Ok(c) => c,
            Err(e) => {
                return Decision::Done(OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    e.code(),
                    e.to_string(),
                    ext,
                ));
            }
        };
        let pinned = matches!(job.route, Route::Pinned { .. });
        let task = match &job.route {
            Route::Task { task } => self.catalog.task(task),
            _ => None,
        };
        let default_max_tokens = task.and_then(|t| t.max_output_tokens);
        let mut cost = 0.0;
        let mut last_error: Option<ProviderError> = None;
        let mut exhausted = false;
        let mut unavailable = 0usize;
        let estimate = estimate_prompt_tokens(&job.body)
            + requested_output_tokens(&job.body, task).unwrap_or(512);
        for (index, model) in candidates.iter().enumerate() {
            tracing::Span::current().record("model", model.key.as_str());
            let Some(provider) = self.catalog.provider(&model.provider) else {
                continue;
            };
            let call = ChatCall {
                model_name: &model.name,
                body: &job.body,
                default_max_tokens,
            };
            let limits = self.catalog.provider_limits(&model.provider);
            let outcome = self
                .guards
                .call_model(&self.retry, provider, model, limits, call, estimate)
                .await;
            let (result, attempts) = match outcome {
                ModelOutcome::Unavailable => {
                    unavailable += 1;
                    tracing::info!(model = %model.key, "model cooling down or paused; trying the next");
                    continue;
                }
                ModelOutcome::Wait(delay) => {
                    // Waiting for capacity is not a failed attempt.
                    return Decision::Later(job.clone(), delay);
                }
                ModelOutcome::Answer {
                    completion,
                    attempts,
                } => (Ok(completion), attempts),
                ModelOutcome::Failed { error, attempts } => (Err(error), attempts),
            };
            ext.attempts += attempts;
            ext.model = Some(model.key.clone());
            match result {
                Ok(done) => {
                    cost += model.cost_usd(done.input_tokens, done.output_tokens);
                    ext.input_tokens += done.input_tokens;
                    ext.output_tokens += done.output_tokens;
                    ext.simulated |= done.simulated;
                    let truncated = done.finish_reason.as_deref() == Some("length");
                    let has_next = index + 1 < candidates.len();
                    if truncated && has_next && !pinned {
                        ext.escalations += 1;
                        tracing::info!(model = %model.key, "output truncated; escalating");
                        continue;
                    }
                    if let Some(validators) = task.and_then(|t| t.validators.as_ref())
                        && let Err(failure) = validators
                            .check(answer_text(&done.body), done.finish_reason.as_deref())
                            .await
                    {
                        tracing::info!(model = %model.key, check = failure.check, reason = %failure.message, "answer failed validation");
                        if has_next && !pinned {
                            ext.escalations += 1;
                            continue;
                        }
                        ext.cost_usd = cost;
                        return Decision::Done(OutputLine::failure(
                            &job.job_id,
                            &job.custom_id,
                            codes::VALIDATION_FAILED,
                            format!("the answer of {} failed {}", model.key, failure),
                            ext,
                        ));
                    }
                    ext.cost_usd = cost;
                    return Decision::Done(OutputLine {
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
                    });
                }
                Err(e) => {
                    let escalate = matches!(
                        e.kind,
                        ProviderErrorKind::ContextOverflow | ProviderErrorKind::ContentFilter
                    ) && !pinned;
                    // Transient trouble, and models paused for auth or quota, are the queue's
                    // to retry later; a model that keeps failing is cooled down by then and
                    // the next delivery falls back to the next candidate.
                    let retry_later = matches!(
                        e.kind,
                        ProviderErrorKind::RateLimited
                            | ProviderErrorKind::Transient
                            | ProviderErrorKind::MalformedResponse
                            | ProviderErrorKind::Auth
                            | ProviderErrorKind::QuotaExhausted
                    );
                    tracing::warn!(model = %model.key, kind = e.kind.code(), error = %e.message, "provider call failed");
                    if escalate && index + 1 < candidates.len() {
                        ext.escalations += 1;
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
                        return Decision::Later(next, delay.max(Duration::from_millis(100)));
                    }
                    exhausted = retry_later;
                    last_error = Some(e);
                    break;
                }
            }
        }
        if last_error.is_none() && unavailable > 0 {
            // Every adequate model is cooling down or paused: wait, don't fail.
            return Decision::Later(job.clone(), self.options.unavailable_delay);
        }
        ext.cost_usd = cost;
        let (code, message) = match last_error {
            Some(e) => (e.kind.code(), e.message),
            None => (
                "no_adequate_model",
                "no candidate model has a provider".to_string(),
            ),
        };
        let line = OutputLine::failure(&job.job_id, &job.custom_id, code, message, ext);
        if exhausted {
            Decision::Dead(line)
        } else {
            Decision::Done(line)
        }
    }

    async fn finish(&self, delivery: &Delivery, mut line: OutputLine, dead: bool) {
        let job = &delivery.job;
        // The ledger counts only this run's spend; the line carries the item's whole spend.
        let cost = usd_to_nanos(line.batchyard.cost_usd);
        line.batchyard.cost_usd += job.prior_cost_usd;
        if !line.is_success() {
            // Kept in the result object (not in errors.jsonl) so `batchyard retry` can replay it.
            line.job = Some(Box::new(job.clone()));
        }
        let bytes = match serde_json::to_vec(&line) {
            Ok(b) => Bytes::from(b),
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the outcome");
                return;
            }
        };
        let path = self.store.result_path(&job.batch_id, &job.job_id);
        if let Err(e) = self.store.put(&path, bytes).await {
            tracing::warn!(error = %e, "cannot store the outcome; the job will be retried");
            let delay = backoff_delay(&self.retry, job.attempt + 1).max(Duration::from_secs(1));
            if let Err(qe) = self.queue.retry_later(delivery, job, delay).await {
                tracing::warn!(error = %qe, "cannot requeue; the job will be reclaimed");
            }
            return;
        }
        let success = line.is_success();
        match self
            .ledger
            .settle(&job.batch_id, job.seq, success, cost)
            .await
        {
            Ok(settlement) if settlement.should_finalize() => {
                if let Err(e) = self.finalizer.finalize(&job.batch_id).await {
                    tracing::error!(error = %e, "finalization failed; it will be retried when the job is reclaimed");
                    return;
                }
                if let Err(e) = self.queue.forget_batch(&job.batch_id).await {
                    tracing::warn!(error = %e, "cannot drop the batch's queue bookkeeping");
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot settle the outcome; the job will be reclaimed");
                return;
            }
        }
        let acked = if let (true, Some(error)) = (dead, &line.error) {
            self.queue
                .dead_letter(delivery, &error.code, &error.message)
                .await
        } else {
            self.queue.ack(delivery).await
        };
        if let Err(e) = acked {
            tracing::warn!(error = %e, "cannot ack; the job will be reclaimed and its outcome rewritten");
        }
    }
}

/// The text of a chat completion's first choice ("" when there is none).
fn answer_text(body: &serde_json::Value) -> &str {
    body.pointer("/choices/0/message/content")
        .and_then(serde_json::Value::as_str)
        .unwrap_or("")
}

#[async_trait]
impl DeliveryHandler for JobRunner {
    async fn handle(&self, delivery: Delivery) {
        let span = tracing::info_span!(
            "job",
            batch_id = %delivery.job.batch_id,
            job_id = %delivery.job.job_id,
            attempt = delivery.job.attempt,
            deliveries = delivery.deliveries,
            model = field::Empty,
        );
        async {
            match self.decide(&delivery).await {
                Decision::Done(line) => self.finish(&delivery, line, false).await,
                Decision::Dead(line) => self.finish(&delivery, line, true).await,
                Decision::Later(job, delay) => {
                    tracing::info!(
                        delay_ms = delay.as_millis() as u64,
                        "retrying the job later"
                    );
                    if let Err(e) = self.queue.retry_later(&delivery, &job, delay).await {
                        tracing::warn!(error = %e, "cannot requeue; the job will be reclaimed");
                    }
                }
            }
        }
        .instrument(span)
        .await
    }
}
