//! Finishes batches whose finalizer died. The job whose settlement completes a batch
//! finalizes it; if that worker is killed while writing, its lease lapses ([`super::LEASE`])
//! and nothing else would ever ask again. Every worker therefore looks, now and then, for
//! recent batches with every item settled but no terminal state, and finalizes them under the
//! same lease, so at most one writes at a time. The same look ends or finishes submissions
//! whose submitter went silent (see `batchyard_jobs::staging`).

use std::sync::Arc;
use std::time::Duration;

use batchyard_jobs::batch::{BatchRecord, BatchState};
use batchyard_jobs::queue::Queue;
use batchyard_jobs::staging;
use tokio_util::sync::CancellationToken;

use super::{FinalizeError, Finalizer};

/// How often a worker looks for orphaned batches.
pub const SWEEP_EVERY: Duration = Duration::from_secs(10);
/// How many of the newest batches one look covers.
const SCAN: usize = 100;

/// Every item settled, but the batch files not written yet.
fn orphaned(record: &BatchRecord) -> bool {
    !record.state.is_terminal()
        && record.state != BatchState::Validating
        && record.counts.total > 0
        && record.settled() >= record.counts.total
}

/// One look: finalizes each orphaned batch among the newest [`SCAN`]; returns how many this
/// worker finished (a batch whose lease another worker holds is left to it).
pub async fn sweep_once(finalizer: &Finalizer, queue: &dyn Queue) -> Result<usize, FinalizeError> {
    let mut finished = 0;
    for record in finalizer.ledger.list(SCAN).await? {
        if record.submit.is_some() {
            // A submit that went silent: finish publishing a sealed batch, or end an unsealed
            // one as submit_interrupted, so no batch waits for a submitter that is gone.
            staging::settle_abandoned(finalizer.ledger.as_ref(), queue, &record).await?;
            continue;
        }
        if !orphaned(&record) {
            continue;
        }
        if finalizer.finalize(&record.id).await?.is_some() {
            tracing::warn!(batch_id = %record.id, "finalized a batch whose finalizer stopped");
            finished += 1;
            if let Err(e) = queue.forget_batch(&record.id).await {
                tracing::warn!(batch_id = %record.id, error = %e, "cannot drop the batch's queue bookkeeping");
            }
        }
    }
    Ok(finished)
}

/// Runs [`sweep_once`] every `every` until `cancel`. Errors are logged: Redis or storage
/// trouble is weather, and the next look tries again.
pub async fn sweep(
    finalizer: Finalizer,
    queue: Arc<dyn Queue>,
    every: Duration,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(every) => {}
        }
        // Stopping mid-write is safe: unfinished uploads leave no object and the lease lapses.
        let looked = tokio::select! {
            () = cancel.cancelled() => return,
            looked = sweep_once(&finalizer, queue.as_ref()) => looked,
        };
        if let Err(e) = looked {
            tracing::warn!(error = %e, "cannot look for batches left unfinalized");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use batchyard_jobs::batch::RequestCounts;

    fn record(state: BatchState, total: u64, completed: u64, failed: u64) -> BatchRecord {
        BatchRecord {
            state,
            counts: RequestCounts {
                total,
                completed,
                failed,
            },
            ..BatchRecord::new("batch_x".into(), 0, "memory://".into(), 1)
        }
    }

    #[test]
    fn only_settled_unfinished_batches_are_orphaned() {
        assert!(orphaned(&record(BatchState::Finalizing, 3, 2, 1)));
        assert!(orphaned(&record(BatchState::InProgress, 3, 3, 0)));
        assert!(orphaned(&record(BatchState::Cancelling, 2, 0, 2)));
        assert!(!orphaned(&record(BatchState::InProgress, 3, 2, 0)));
        assert!(!orphaned(&record(BatchState::Completed, 3, 3, 0)));
        assert!(!orphaned(&record(BatchState::Validating, 0, 0, 0)));
        assert!(!orphaned(&record(BatchState::InProgress, 0, 0, 0)));
    }
}
