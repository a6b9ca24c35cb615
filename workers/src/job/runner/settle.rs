//! Counting every paid call, whatever Redis and the other workers do.
//!
//! - Spend and settlement that Redis refuses (down, or at `maxmemory`) are retried in place;
//!   meanwhile the job holds the pool's [`ClaimGate`](crate::job::pool::ClaimGate) closed, so no
//!   new job is claimed and called while its spend could not be counted.
//! - One rule decides which of two runs of a job is its result: the one the ledger settled.
//!   A later run that finds the job settled (a reclaimer, or a stalled worker waking up)
//!   writes nothing; it commits its own cost and acks. In a batch from before segments, a
//!   later run that finds a stored per-item success settles the item on the stored run's
//!   behalf (with the cost that run left to its settle, `settle_nanos`, counted once however
//!   many settle) and commits its own cost.

use std::future::Future;
use std::time::Duration;

use batchyard_jobs::error::{QueueError, StoreError};
use batchyard_jobs::job::Job;
use batchyard_jobs::ledger::Settlement;
use batchyard_jobs::outcome::OutputLine;
use batchyard_jobs::queue::Delivery;
use tokio::time::Instant;

use super::JobRunner;
use crate::call::retry::backoff_delay;

/// A job waiting on Redis logs at most this often.
const LOG_EVERY: Duration = Duration::from_secs(30);
/// The least pause between tries, so a refusing Redis is not hammered.
const MIN_PAUSE: Duration = Duration::from_millis(250);
/// The longest pause between tries.
const MAX_PAUSE: Duration = Duration::from_secs(5);

impl JobRunner {
    /// Runs `op` until Redis takes it, holding the claim gate while it refuses; `None` once
    /// `settle_patience` has passed.
    async fn patiently<T, F, Fut>(&self, what: &'static str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, QueueError>>,
    {
        let started = Instant::now();
        let mut hold = None;
        let mut logged: Option<Instant> = None;
        let mut tries = 0u32;
        loop {
            let error = match op().await {
                Ok(v) => {
                    if hold.is_some() {
                        tracing::info!(
                            what,
                            waited_ms = started.elapsed().as_millis() as u64,
                            "Redis takes writes again"
                        );
                    }
                    return Some(v);
                }
                Err(e) => e,
            };
            if hold.is_none() {
                hold = Some(self.gate.hold());
            }
            if started.elapsed() >= self.options.settle_patience {
                tracing::error!(what, error = %error, "Redis refused writes for the whole settle patience; giving up on this run");
                return None;
            }
            if logged.is_none_or(|t| t.elapsed() >= LOG_EVERY) {
                tracing::warn!(
                    what,
                    error = %error,
                    unsettled = self.gate.held(),
                    "Redis refuses writes; this worker claims nothing new until it takes them again"
                );
                logged = Some(Instant::now());
            }
            tries = tries.saturating_add(1);
            let pause = backoff_delay(&self.retry, tries).clamp(MIN_PAUSE, MAX_PAUSE);
            tokio::time::sleep(pause).await;
        }
    }

    pub(super) async fn settle_patiently(
        &self,
        job: &Job,
        success: bool,
        cost: i64,
    ) -> Option<Settlement> {
        self.patiently("settle", || {
            self.ledger.settle(&job.batch_id, job.seq, success, cost)
        })
        .await
    }

    pub(super) async fn commit_patiently(&self, batch_id: &str, job_id: &str, nanos: i64) {
        if self
            .patiently("count spend", || {
                self.ledger.commit(batch_id, job_id, nanos)
            })
            .await
            .is_none()
        {
            tracing::error!(
                batch_id,
                job_id,
                nanos,
                "a paid call's spend could not be counted"
            );
        }
    }

    /// Puts the job back with a delay, waiting for Redis to take it (rather than leaving it
    /// to a reclaim after the whole visibility timeout).
    pub(super) async fn requeue_patiently(&self, delivery: &Delivery, job: &Job, delay: Duration) {
        if self
            .patiently("requeue", || self.queue.retry_later(delivery, job, delay))
            .await
            .is_none()
        {
            tracing::warn!("cannot requeue; the job will be reclaimed");
        }
    }

    /// Parks the job for the offload lane, as patiently as a requeue.
    pub(super) async fn park_patiently(&self, delivery: &Delivery, job: &Job) {
        if self
            .patiently("park", || self.queue.park(delivery, job))
            .await
            .is_none()
        {
            tracing::warn!("cannot park; the job will be reclaimed");
        }
    }

    /// Whether the ledger has settled this job already (a run whose worker stopped before
    /// its ack). Unknown (Redis refuses) counts as not: the job runs, as it would have.
    pub(super) async fn already_settled(&self, job: &Job) -> bool {
        match self.ledger.is_settled(&job.batch_id, job.seq).await {
            Ok(settled) => settled,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look whether the job is settled; running it");
                false
            }
        }
    }

    /// Ends a run of a job the ledger settled already: this run's own spend (`own_cost`, not
    /// committed yet) is counted, the settle is asked again (it counts nothing twice, and says
    /// whether the batch is to be finalized), and the delivery is acked. Nothing is written.
    pub(super) async fn finish_settled(&self, delivery: &Delivery, own_cost: i64) {
        let job = &delivery.job;
        tracing::info!("this job is settled already by another run; acking it");
        if own_cost > 0 {
            self.commit_patiently(&job.batch_id, &job.job_id, own_cost)
                .await;
        }
        let line = OutputLine::failure(
            &job.job_id,
            &job.custom_id,
            "",
            "",
            batchyard_jobs::outcome::Extension::default(),
        );
        match self.ledger.settle(&job.batch_id, job.seq, true, 0).await {
            Ok(settlement) => self.after_settle(delivery, &line, false, settlement).await,
            // Nothing to count; a batch waiting to be finalized is found by the sweep.
            Err(e) => {
                tracing::debug!(error = %e, "cannot ask the settle again; acking");
                if let Err(e) = self.queue.ack(delivery).await {
                    tracing::warn!(error = %e, "cannot ack; the job will be reclaimed");
                }
            }
        }
    }

    /// The success stored for this job by an earlier run, if any: only batches written before
    /// segments have per-item results to find.
    pub(super) async fn stored_success(&self, job: &Job) -> Option<OutputLine> {
        let path = self.store.result_path(&job.batch_id, &job.job_id);
        match self.store.get(&path).await {
            Ok(bytes) => serde_json::from_slice::<OutputLine>(&bytes)
                .ok()
                .filter(OutputLine::is_success),
            Err(StoreError::NotFound { .. }) => None,
            Err(e) => {
                tracing::debug!(error = %e, "cannot look for a stored outcome; running the job");
                None
            }
        }
    }

    /// Ends a run behind an already stored success: this run's own spend (`own_cost`, not
    /// committed yet) is counted, the item is settled on the stored run's behalf, and the
    /// delivery is acked. Nothing is written over the stored line.
    pub(super) async fn finish_behind(
        &self,
        delivery: &Delivery,
        first: OutputLine,
        own_cost: i64,
    ) {
        let job = &delivery.job;
        tracing::info!(
            "this job's success is already stored by another run; settling it without writing over it"
        );
        if own_cost > 0 {
            self.commit_patiently(&job.batch_id, &job.job_id, own_cost)
                .await;
        }
        let behalf = first.settle_nanos.unwrap_or(0);
        if let Some(settlement) = self.settle_patiently(job, true, behalf).await {
            self.after_settle(delivery, &first, false, settlement).await;
        }
    }
}
