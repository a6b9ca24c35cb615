//! Staging: how a validated input becomes jobs that workers can see, all or nothing.
//!
//! Jobs are staged apart from the queue while the batch is `validating`
//! ([`Queue::stage_chunk`]); sealing the batch (`in_progress`, [`SubmitStep::Seal`]) commits
//! it, and only then are the staged jobs moved into the queue ([`publish`]). A submit cut off
//! before the seal leaves nothing that can run or spend: `--resume` continues it (the
//! per-batch high-water mark makes every chunk idempotent), or, once its lease lapses, a
//! worker's sweep ends it `failed` with `submit_interrupted` ([`settle_abandoned`]). A submit
//! cut off after the seal has committed the batch; any worker's sweep finishes moving its jobs.

use std::time::Duration;

use tokio::time::Instant;

use crate::batch::{BatchRecord, BatchState, now_millis};
use crate::error::QueueError;
use crate::ledger::{Ledger, SubmitStep};
use crate::queue::{FairClass, Queue};

/// The submitter's lease on its batch, renewed every third of its length.
pub struct Lease<'a> {
    ledger: &'a dyn Ledger,
    batch_id: &'a str,
    length: Duration,
    renewed: Instant,
}

impl<'a> Lease<'a> {
    pub fn new(ledger: &'a dyn Ledger, batch_id: &'a str, length: Duration) -> Self {
        Self {
            ledger,
            batch_id,
            length,
            renewed: Instant::now(),
        }
    }

    pub fn batch_id(&self) -> &str {
        self.batch_id
    }

    pub fn until_ms(&self) -> u64 {
        now_millis().saturating_add(u64::try_from(self.length.as_millis()).unwrap_or(u64::MAX))
    }

    /// Renews the lease when a third of it has passed. `Ok(false)`: the batch is no longer
    /// this submit's (cancelled, or ended by a sweep).
    pub async fn keep(&mut self) -> Result<bool, QueueError> {
        if self.renewed.elapsed() < self.length / 3 {
            return Ok(true);
        }
        let until = self.until_ms();
        let held = self
            .ledger
            .submit_step(
                self.batch_id,
                SubmitStep::Renew {
                    lease_until_ms: until,
                },
            )
            .await?;
        self.renewed = Instant::now();
        Ok(held)
    }
}

/// Publishes a sealed batch's staged jobs (they become its backlog in the claim order,
/// placed by `class`), then drops the submission's bookkeeping. Safe to run from any
/// process, and again after an interruption.
pub async fn publish(
    ledger: &dyn Ledger,
    queue: &dyn Queue,
    batch_id: &str,
    staging: &str,
    class: &FairClass,
    lease: Option<&mut Lease<'_>>,
) -> Result<u64, QueueError> {
    if let Some(lease) = lease {
        lease.keep().await?;
    }
    let moved = queue.publish_backlog(staging, class).await?;
    ledger.submit_step(batch_id, SubmitStep::Published).await?;
    if staging != batch_id {
        // A replay's own high-water mark; the batch's is dropped when it is finalized.
        queue.forget_batch(staging).await?;
    }
    Ok(moved)
}

/// What a sweep does with a batch whose submit went silent: finish publishing a sealed one,
/// or end an unsealed one `submit_interrupted` and drop what it staged. Returns true when it
/// acted.
pub async fn settle_abandoned(
    ledger: &dyn Ledger,
    queue: &dyn Queue,
    record: &BatchRecord,
) -> Result<bool, QueueError> {
    let Some(submit) = &record.submit else {
        return Ok(false);
    };
    let now = now_millis();
    if submit.lease_until_ms > now {
        return Ok(false);
    }
    if submit.sealed {
        let staging = submit.staging_id(&record.id);
        let class = FairClass {
            tenant: record.tenant.clone(),
            priority: record.priority,
            weight: None,
        };
        let moved = publish(ledger, queue, &record.id, staging, &class, None).await?;
        tracing::warn!(batch_id = %record.id, moved, "finished publishing a batch whose submit stopped after sealing it");
        return Ok(true);
    }
    if record.state != BatchState::Validating {
        return Ok(false);
    }
    let message = "the submit stopped (killed, or Redis failed) before the whole input was staged; \
                   nothing of this batch ran; submit the input again, or `batchyard submit INPUT --resume BATCH`";
    let ended = ledger
        .submit_step(
            &record.id,
            SubmitStep::Interrupted {
                now_ms: now,
                message,
            },
        )
        .await?;
    if ended {
        queue.discard_staged(&record.id).await?;
        tracing::warn!(batch_id = %record.id, "ended a batch whose submit stopped before sealing: submit_interrupted");
    }
    Ok(ended)
}
