//! Ending a cancelled batch at once when nothing is in flight: every item that has no outcome
//! yet is written as `cancelled` (named from the batch's kept input) and settled, and the batch
//! is finalized, instead of waiting for workers to claim and drop each queued job. Jobs of it
//! still in the queue are ended by whichever worker claims them, as `cancelled` again (the same
//! line, settled once).

use batchyard_jobs::job::Job;
use batchyard_jobs::outcome::{Extension, OutputLine, codes};
use bytes::Bytes;
use futures::TryStreamExt;

use super::{FinalizeError, Finalizer};

impl Finalizer {
    /// Writes and settles `cancelled` for every job of the kept input without an outcome, then
    /// finalizes once every item is settled. Returns how many items it ended. Call only when
    /// no job of the batch can be running (the caller checked that nothing is in flight after
    /// the cancel was recorded, so no worker starts one either).
    pub async fn drain_cancelled(&self, batch_id: &str) -> Result<u64, FinalizeError> {
        let store = &self.store;
        let mut chunks: Vec<_> = store
            .list(&store.input_dir(batch_id))
            .map_ok(|m| m.location)
            .try_collect()
            .await?;
        chunks.sort();
        let mut ended = 0u64;
        let mut finalize = false;
        for chunk in chunks {
            let bytes = store.get(&chunk).await?;
            for raw in bytes.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
                let Ok(job) = serde_json::from_slice::<Job>(raw) else {
                    continue;
                };
                let path = store.result_path(batch_id, &job.job_id);
                if store.head(&path).await?.is_some() {
                    continue;
                }
                let mut line = OutputLine::failure(
                    &job.job_id,
                    &job.custom_id,
                    codes::CANCELLED,
                    "the batch was cancelled before this item ran",
                    Extension::default(),
                );
                line.job = Some(Box::new(job.clone()));
                line.settle_nanos = Some(0);
                let body =
                    batchyard_jobs::jsonl::to_line(&line).map_err(|e| FinalizeError::Write {
                        path: path.to_string(),
                        message: e.to_string(),
                    })?;
                store.put(&path, Bytes::from(body)).await?;
                let settled = self.ledger.settle(batch_id, job.seq, false, 0).await?;
                finalize |= settled.should_finalize();
                ended += 1;
            }
        }
        if finalize {
            self.finalize(batch_id).await?;
        }
        Ok(ended)
    }
}
