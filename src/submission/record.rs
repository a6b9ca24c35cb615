//! The batch record of a submission: a new one, or an interrupted one taken up again
//! (`--resume`), the error when a batch stops being this submit's, and the probe that a
//! store can be written before anything is enqueued.

use batchyard_jobs::batch::{BatchRecord, SubmitProgress, now_secs};
use batchyard_jobs::ledger::SubmitStep;
use batchyard_jobs::staging::Lease;
use bytes::Bytes;

use super::request::SubmitRequest;
use crate::app::App;
use crate::error::UsageError;

/// How long the result store may take to accept the probe of a submission.
const PROBE_LIMIT: std::time::Duration = std::time::Duration::from_secs(30);

pub(super) fn new_record(
    app: &App,
    req: &SubmitRequest,
    batch_id: &str,
    total: u64,
    fingerprint: &str,
    lease: &Lease<'_>,
) -> BatchRecord {
    let created_at = now_secs();
    BatchRecord {
        budget_usd: req.budget_usd,
        task: req.task.clone(),
        no_cache: req.no_cache,
        // Rounded up, so a window never ends before it has fully passed.
        expires_at: req
            .completion_window
            .map(|w| created_at.saturating_add(w.as_secs() + u64::from(w.subsec_nanos() > 0))),
        deadline_at: req.deadline_at,
        notify_url: req.notify_url.clone(),
        submit: Some(SubmitProgress {
            lease_until_ms: lease.until_ms(),
            fingerprint: fingerprint.to_string(),
            sealed: false,
            staging: None,
        }),
        ..BatchRecord::new(
            batch_id.to_string(),
            total,
            app.store.url().to_string(),
            created_at,
        )
    }
}

/// Takes up an interrupted submit: the same input (by fingerprint), not finished yet.
pub(super) async fn resume_record(
    app: &App,
    batch_id: &str,
    fingerprint: &str,
    total: u64,
    lease: &Lease<'_>,
) -> anyhow::Result<BatchRecord> {
    let Some(record) = app.ledger.get(batch_id).await? else {
        return Err(UsageError(format!(
            "--resume {batch_id}: no such batch; check the id with `batchyard status`"
        ))
        .into());
    };
    let Some(submit) = &record.submit else {
        return Err(UsageError(format!(
            "--resume {batch_id}: the batch is {} and its submit is not unfinished; nothing to resume",
            record.state.as_str()
        ))
        .into());
    };
    if submit.fingerprint != fingerprint || record.counts.total != total {
        return Err(UsageError(format!(
            "--resume {batch_id}: this input is not the one first submitted as {batch_id} \
             (its items differ); resume with the same input and flags, or submit it as a new batch"
        ))
        .into());
    }
    if submit.sealed {
        return Ok(record);
    }
    let resumed = app
        .ledger
        .submit_step(
            batch_id,
            SubmitStep::Resume {
                lease_until_ms: lease.until_ms(),
            },
        )
        .await?;
    if !resumed {
        return Err(UsageError(format!(
            "--resume {batch_id}: the batch is {} and can't be resumed",
            record.state.as_str()
        ))
        .into());
    }
    Ok(app.ledger.get(batch_id).await?.unwrap_or(record))
}

/// The batch stopped being this submit's while it staged: cancelled, or ended by a sweep.
pub(super) async fn taken_error(app: &App, batch_id: &str) -> anyhow::Error {
    if let Err(e) = app.queue.discard_staged(batch_id).await {
        tracing::warn!(batch_id, error = %e, "cannot drop the staged jobs of a batch that ended while submitting");
    }
    let state = match app.ledger.get(batch_id).await {
        Ok(Some(r)) => r.state.as_str().to_string(),
        _ => "gone".to_string(),
    };
    anyhow::anyhow!(
        "batch {batch_id} ended ({state}) while it was being submitted; nothing of it ran; submit the input again"
    )
}

/// Writes and deletes a small object where the batch's results will go, before anything is
/// enqueued: a store that can never be written (a read-only or pseudo folder such as
/// file:///proc/self, a cloud bucket without credentials) fails the submission here, instead
/// of every job failing to store its paid answer in a worker's retry loop.
pub(super) async fn probe_store(app: &App, batch_id: &str) -> anyhow::Result<()> {
    let path = app
        .store
        .path_of(&batchyard_jobs::keys::submit_probe(batch_id));
    let where_ = batchyard_jobs::error::redact(app.store.url());
    let failed = |reason: String| {
        UsageError(format!(
            "the result store {where_} can't be written: {reason}; nothing was enqueued. Check storage.url (or --storage), the folder's permissions or the bucket's credentials"
        ))
    };
    match tokio::time::timeout(
        PROBE_LIMIT,
        app.store.put(&path, Bytes::from_static(b"probe")),
    )
    .await
    {
        Ok(Ok(())) => {}
        Ok(Err(e)) => {
            let reason = match e {
                // Said here, "it will be retried" would not be true.
                batchyard_jobs::error::StoreError::Unavailable { message, .. }
                | batchyard_jobs::error::StoreError::Rejected { message, .. } => message,
                other => other.to_string(),
            };
            return Err(failed(reason).into());
        }
        Err(_) => {
            return Err(failed(format!(
                "a write did not finish within {} s",
                PROBE_LIMIT.as_secs()
            ))
            .into());
        }
    }
    // Left behind, it is harmless (finalizing reads only results/); the write was the test.
    if let Err(e) = app.store.delete(&path).await {
        tracing::warn!(error = %e, "cannot delete the submission's store probe");
    }
    Ok(())
}
