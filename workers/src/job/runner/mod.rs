//! The job body: route, call, store the outcome, settle, then ack.
//!
//! A delivery is acked only after its outcome is in object storage. Anything that fails before
//! that leaves the job to the queue: retried later with a delay, or reclaimed. Spend and
//! settlement Redis won't take are retried in place while the pool claims nothing new (see
//! [`settle`]), and a reclaimed job whose success is already stored is settled, not re-run.

mod settle;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchyard_jobs::batch::{BatchRecord, BatchState, now_secs, usd_to_nanos};
use batchyard_jobs::ledger::Ledger;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use batchyard_jobs::queue::{Delivery, Queue};
use batchyard_jobs::segments::Record;
use batchyard_jobs::storage::ResultStore;
use metrics::SharedString;
use tracing::{Instrument, field};

use super::budget::Budget;
use super::cache::ResultCache;
use super::cascade::{Cascade, Decision, Limits};
use super::pool::{ClaimGate, DeliveryHandler, Held};
use super::segments::{SegmentOptions, SegmentWriter};
use crate::call::Guards;
use crate::call::health::HealthPolicy;
use crate::call::health::memory::MemoryHealth;
use crate::call::limiter::memory::MemoryLimiter;
use crate::call::retry::{RetryPolicy, backoff_delay};
use crate::catalog::Catalog;
use crate::finalize::Finalizer;
use crate::metrics::throughput::RealtimeMeter;
use crate::route::Router;

/// The least wait before a job whose outcome could not be stored runs again.
const STORE_RETRY_DELAY: Duration = Duration::from_secs(2);

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
    /// How long a job keeps trying to settle (and count its spend) while Redis refuses writes
    /// before it is left for reclaim. The pool claims nothing new meanwhile.
    pub settle_patience: Duration,
    /// The queue's visibility timeout: a run longer than half of it may have been reclaimed
    /// (a stalled worker), so it looks before it stores its answer.
    pub visibility_timeout: Duration,
    /// Whether an item whose adequate models are all paused ends (`model_paused`) once its
    /// attempts are used up. An in-process `run` sets it: nothing can resume a model there.
    /// With Redis, such items wait for `batchyard models resume`.
    pub paused_ends_items: bool,
    /// How outcomes are gathered into result segments (group commit).
    pub segments: SegmentOptions,
}

impl Default for RunnerOptions {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_reclaims: 3,
            batch_cache_ttl: Duration::from_millis(500),
            unavailable_delay: Duration::from_secs(5),
            settle_patience: Duration::from_secs(600),
            visibility_timeout: Duration::from_secs(300),
            paused_ends_items: false,
            segments: SegmentOptions::default(),
        }
    }
}

/// Runs jobs. One per worker process, shared by all its concurrent jobs.
pub struct JobRunner {
    cascade: Cascade,
    queue: Arc<dyn Queue>,
    ledger: Arc<dyn Ledger>,
    store: ResultStore,
    segments: SegmentWriter,
    retry: RetryPolicy,
    options: RunnerOptions,
    finalizer: Finalizer,
    batches: Mutex<HashMap<String, (Instant, BatchRecord)>>,
    gate: Arc<ClaimGate>,
    meter: Option<Arc<RealtimeMeter>>,
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
        let guards = Guards::new(
            Arc::new(MemoryHealth::new(HealthPolicy::default())),
            Arc::new(MemoryLimiter::new()),
            Duration::from_secs(30),
        );
        let budget = Budget::new(Arc::clone(&ledger), retry);
        let limits = Limits {
            max_attempts: options.max_attempts,
            unavailable_delay: options.unavailable_delay,
            paused_ends_items: options.paused_ends_items,
        };
        Self {
            cascade: Cascade::new(catalog, budget, guards, retry, limits),
            queue,
            ledger,
            segments: SegmentWriter::new(store.clone(), options.segments),
            store,
            retry,
            options,
            finalizer,
            batches: Mutex::new(HashMap::new()),
            gate: Arc::new(ClaimGate::default()),
            meter: None,
        }
    }

    /// Counts the items answered real-time into `meter` (the offload lane's deadline uses it).
    pub fn with_meter(mut self, meter: Arc<RealtimeMeter>) -> Self {
        self.meter = Some(meter);
        self
    }

    /// Uses this router (its adequacy store is shared through Redis for distributed workers).
    pub fn with_router(mut self, router: Router) -> Self {
        self.cascade.router = router;
        self
    }

    /// Reads and writes answers through this cache.
    pub fn with_cache(mut self, cache: Option<ResultCache>) -> Self {
        self.cascade.cache = cache;
        self
    }

    /// Uses these health and rate-limit guards (shared through Redis for distributed workers).
    pub fn with_guards(mut self, guards: Guards) -> Self {
        self.cascade.guards = guards;
        self
    }

    /// The tenant of a batch [`Self::batch`] has just read (`unknown` if it is not cached),
    /// for metrics: only the name is copied, not the record.
    fn tenant_of(&self, batch_id: &str) -> SharedString {
        self.batches
            .lock()
            .ok()
            .and_then(|cache| cache.get(batch_id).map(|(_, r)| r.tenant.clone()))
            .map_or(SharedString::const_str("unknown"), SharedString::from_owned)
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
                crate::metrics::batch_seen(batch_id);
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
        // An item that ends here without a call still carries any provider batch answer
        // it was paid for.
        let ext = Extension {
            cost_usd: self.cascade.unjudged_answer_usd(job),
            ..Extension::default()
        };
        if delivery.reclaims() > self.options.max_reclaims {
            return Decision::dead(OutputLine::failure(
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
        if delivery.deliveries > 1
            && let Some(line) = self.stored_success(job).await
        {
            return Decision::Stored { line };
        }
        let mut record = self.batch(&job.batch_id).await;
        if record.as_ref().is_some_and(stops_dispatch) {
            // A cached record that would end the item without a call may be stale (a replay
            // reopened the batch a moment ago): decide on a fresh one.
            if let Ok(mut cache) = self.batches.lock() {
                cache.remove(&job.batch_id);
            }
            record = self.batch(&job.batch_id).await;
        }
        if let Some(record) = &record {
            if record.cancel_requested_at.is_some()
                || matches!(record.state, BatchState::Cancelling | BatchState::Cancelled)
            {
                return Decision::done(OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    codes::CANCELLED,
                    "the batch was cancelled before this item ran",
                    ext,
                ));
            }
            if record.is_expired(now_secs()) {
                // OpenAI's completion window: what has not run by then is not run at all.
                // Calls already in flight finish (they were decided before the window ended).
                return Decision::done(OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    codes::EXPIRED,
                    "the batch's completion window ended before this item ran; submit it again in a new batch",
                    ext,
                ));
            }
            if let Some(budget) = record.budget_usd
                && (record.budget_exhausted_at.is_some() || record.cost_usd() >= budget)
            {
                // The batch stopped dispatching: what is still queued drains as replayable
                // dead letters without a call.
                return Decision::dead(OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    codes::BUDGET_EXHAUSTED,
                    format!(
                        "the batch budget of ${budget:.4} is spent (${:.4}); give it more with `batchyard retry {} --budget-usd USD`",
                        record.cost_usd(),
                        job.batch_id
                    ),
                    ext,
                ));
            }
        }
        self.cascade.run(job, record.as_ref()).await
    }

    async fn finish(
        &self,
        delivery: &Delivery,
        mut line: OutputLine,
        dead: bool,
        committed_nanos: i64,
        started: Instant,
        held: &mut Held,
    ) {
        let job = &delivery.job;
        // The ledger counts only this run's spend not committed yet; the line carries the
        // item's whole spend.
        let cost = usd_to_nanos(line.batchyard.cost_usd) - committed_nanos;
        line.batchyard.cost_usd += job.prior_cost_usd;
        if delivery.deliveries > 1 || started.elapsed() > self.options.visibility_timeout / 2 {
            if self.already_settled(job).await {
                // Another run of this job was settled while this one ran (this worker stalled
                // past the visibility timeout): that one stays the result; this call is paid.
                self.finish_settled(delivery, cost).await;
                return;
            }
            // A batch from before segments: its first stored success stays the result.
            if let Some(first) = self.stored_success(job).await {
                self.finish_behind(delivery, first, cost).await;
                return;
            }
        }
        line.settle_nanos = Some(cost);
        if !line.is_success() {
            // Kept in the record (not in errors.jsonl) so `batchyard retry` can replay it.
            line.job = Some(Box::new(job.clone()));
        }
        let record = Record::new(&job.job_id, job.seq, delivery.deliveries, job.attempt, line);
        let bytes = match record.encode() {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "cannot encode the outcome");
                return;
            }
        };
        let line = record.line;
        let written = self.segments.hand_over(&job.batch_id, bytes).await;
        // What is left is waiting for the segment, then settle and ack: the slot takes its
        // next job meanwhile; the claim stays renewed until this one ends.
        held.release_slot().await;
        if let Err(e) = written.wait().await {
            // The answer is paid for: count it now and carry it, so the retry's line (and the
            // budget) include it, then run the job again once the store may be back.
            tracing::warn!(error = %e, "cannot write the result segment; the job will be retried");
            if cost > 0 {
                self.commit_patiently(&job.batch_id, &job.job_id, cost)
                    .await;
            }
            let mut again = job.clone();
            again.prior_cost_usd = line.batchyard.cost_usd;
            let delay = backoff_delay(&self.retry, job.attempt + 1).max(STORE_RETRY_DELAY);
            self.requeue_patiently(delivery, &again, delay).await;
            return;
        }
        let success = line.is_success();
        match self.settle_patiently(job, success, cost).await {
            Some(settlement) => self.after_settle(delivery, &line, dead, settlement).await,
            None => tracing::warn!(
                "gave up settling while Redis refused writes; the job will be reclaimed and settled from its stored outcome"
            ),
        }
    }

    /// Finalizes the batch if this settlement completed it, then acks (or dead-letters).
    async fn after_settle(
        &self,
        delivery: &Delivery,
        line: &OutputLine,
        dead: bool,
        settlement: batchyard_jobs::ledger::Settlement,
    ) {
        let job = &delivery.job;
        match settlement {
            settlement if settlement.should_finalize() => {
                let finalizing = Instant::now();
                let finalized = self.finalizer.finalize(&job.batch_id).await;
                // The whole batch's output, not this job's overhead.
                crate::metrics::overhead::exclude(finalizing.elapsed());
                if let Err(e) = finalized {
                    tracing::error!(error = %e, "finalization failed; it will be retried when the job is reclaimed");
                    return;
                }
                if let Err(e) = self.queue.forget_batch(&job.batch_id).await {
                    tracing::warn!(error = %e, "cannot drop the batch's queue bookkeeping");
                }
            }
            _ => {}
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

/// Whether a batch record ends queued items without a call: cancelled, expired, or out of
/// budget.
fn stops_dispatch(record: &BatchRecord) -> bool {
    record.cancel_requested_at.is_some()
        || matches!(record.state, BatchState::Cancelling | BatchState::Cancelled)
        || record.is_expired(now_secs())
        || record
            .budget_usd
            .is_some_and(|b| record.budget_exhausted_at.is_some() || record.cost_usd() >= b)
}

#[async_trait]
impl DeliveryHandler for JobRunner {
    fn claim_gate(&self) -> Option<Arc<ClaimGate>> {
        Some(Arc::clone(&self.gate))
    }

    async fn handle(&self, delivery: Delivery) {
        self.handle_held(delivery, Held::inline()).await;
    }

    async fn handle_held(&self, delivery: Delivery, mut held: Held) {
        let span = tracing::info_span!(
            "job",
            batch_id = %delivery.job.batch_id,
            job_id = %delivery.job.job_id,
            attempt = delivery.job.attempt,
            deliveries = delivery.deliveries,
            model = field::Empty,
        );
        let started = Instant::now();
        let run = async {
            if delivery.deliveries > 1 && self.already_settled(&delivery.job).await {
                // Settled by a run whose worker stopped before its ack: its outcome is
                // written; nothing runs again.
                self.finish_settled(&delivery, 0).await;
                return;
            }
            match self.decide(&delivery).await {
                Decision::End {
                    line,
                    dead,
                    committed_nanos,
                } => {
                    let (outcome, model) = crate::metrics::job_labels(&line);
                    let tenant = self.tenant_of(&delivery.job.batch_id);
                    if let Some(meter) = &self.meter {
                        meter.observe(&line, started.elapsed());
                    }
                    self.finish(&delivery, line, dead, committed_nanos, started, &mut held)
                        .await;
                    crate::metrics::job_finished(outcome, model, tenant, started.elapsed());
                }
                Decision::Stored { line } => self.finish_behind(&delivery, line, 0).await,
                Decision::Later {
                    job,
                    delay,
                    uncommitted_nanos,
                } => {
                    if uncommitted_nanos > 0 {
                        self.commit_patiently(&job.batch_id, &job.job_id, uncommitted_nanos)
                            .await;
                    }
                    // Short waits (budget room held by calls in flight) would flood the log.
                    if delay >= Duration::from_secs(1) {
                        tracing::info!(
                            delay_ms = delay.as_millis() as u64,
                            "retrying the job later"
                        );
                    } else {
                        tracing::debug!(
                            delay_ms = delay.as_millis() as u64,
                            "retrying the job later"
                        );
                    }
                    self.requeue_patiently(&delivery, &job, delay).await;
                }
                Decision::Park {
                    job,
                    uncommitted_nanos,
                } => {
                    if uncommitted_nanos > 0 {
                        self.commit_patiently(&job.batch_id, &job.job_id, uncommitted_nanos)
                            .await;
                    }
                    tracing::debug!(model = ?job.offloaded_to.last(), "parked for a provider batch");
                    self.park_patiently(&delivery, &job).await;
                }
            }
        };
        crate::metrics::overhead::measure(run.instrument(span)).await
    }
}
