//! The submit side of staging (see `batchyard_jobs::staging`): staging chunks under the
//! lease, sealing, and the error that says how to go on after an interruption.

use std::fmt;

use batchyard_jobs::batch::BatchState;
use batchyard_jobs::error::QueueError;
use batchyard_jobs::job::Job;
use batchyard_jobs::ledger::{Ledger, SubmitStep};
use batchyard_jobs::queue::Queue;
use batchyard_jobs::staging::Lease;
use batchyard_jobs::storage::ResultStore;
use bytes::Bytes;

/// A submit that stopped partway. Its message names the batch and what to run next.
#[derive(Debug, thiserror::Error)]
pub struct SubmitInterrupted {
    pub batch_id: String,
    pub input: String,
    pub staged: u64,
    pub total: u64,
    /// True when the batch was sealed: it will run; only the move into the queue is left.
    pub sealed: bool,
    pub cause: String,
}

impl fmt::Display for SubmitInterrupted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let resume = format!(
            "batchyard submit {} --resume {}",
            shell_word(&self.input),
            self.batch_id
        );
        if self.sealed {
            write!(
                f,
                "batch {} is submitted ({} items) but not every job reached the queue yet: {}; \
                 a running worker finishes moving them once Redis accepts writes, or run `{resume}`",
                self.batch_id, self.total, self.cause
            )
        } else {
            write!(
                f,
                "the submit of batch {} stopped after staging {} of {} items: {}; no item of it \
                 can run yet; continue it with `{resume}` (same input and flags), or leave it: \
                 a worker ends it failed (submit_interrupted) once its lease lapses",
                self.batch_id, self.staged, self.total, self.cause
            )
        }
    }
}

fn shell_word(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./:@%+=,".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Stages chunk `chunk_no`, renewing the lease. `Ok(false)`: the batch was taken from us.
/// The chunk's jobs are kept in storage too (`batches/<id>/input/`), so a finalizer that finds
/// a result lost can name the item and keep it replayable.
pub async fn stage(
    queue: &dyn Queue,
    store: &ResultStore,
    lease: &mut Lease<'_>,
    chunk_no: u64,
    jobs: &[Job],
) -> Result<bool, String> {
    if !lease.keep().await.map_err(|e| e.to_string())? {
        return Ok(false);
    }
    let mut body = Vec::with_capacity(jobs.len() * 256);
    for job in jobs {
        serde_json::to_writer(&mut body, job).map_err(|e| e.to_string())?;
        body.push(b'\n');
    }
    store
        .put(
            &store.input_chunk_path(lease.batch_id(), chunk_no),
            Bytes::from(body),
        )
        .await
        .map_err(|e| format!("cannot keep the input in storage: {e}"))?;
    queue
        .stage_chunk(lease.batch_id(), chunk_no, jobs)
        .await
        .map_err(|e| e.to_string())?;
    Ok(true)
}

/// What sealing found.
pub enum Sealed {
    /// Sealed now (or before, on a resume): publish.
    Yes,
    /// The batch is in another state: cancelled while staging, or every item was a bad line
    /// and it finished already.
    Not(BatchState),
}

pub async fn seal(ledger: &dyn Ledger, lease: &Lease<'_>) -> Result<Sealed, QueueError> {
    let applied = ledger
        .submit_step(
            lease.batch_id(),
            SubmitStep::Seal {
                lease_until_ms: lease.until_ms(),
            },
        )
        .await?;
    if applied {
        return Ok(Sealed::Yes);
    }
    match ledger.get(lease.batch_id()).await? {
        Some(r) if r.submit.as_ref().is_some_and(|s| s.sealed) => Ok(Sealed::Yes),
        Some(r) => Ok(Sealed::Not(r.state)),
        None => Err(QueueError::BatchNotFound(lease.batch_id().to_string())),
    }
}
