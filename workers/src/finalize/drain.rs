//! Ending a cancelled batch at once when nothing is in flight: every item that has no outcome
//! yet is written as `cancelled` (named from the batch's kept input) and settled, and the batch
//! is finalized, instead of waiting for workers to claim and drop each queued job. Jobs of it
//! still in the queue are ended by whichever worker claims them, as `cancelled` again (the same
//! line, settled once).

use batchyard_jobs::outcome::codes;
use batchyard_jobs::segments;

use super::lost::{input_chunks, without_outcome};
use super::{FinalizeError, Finalizer};

impl Finalizer {
    /// Writes and settles `cancelled` for every job of the kept input without an outcome, then
    /// finalizes once every item is settled. Returns how many items it ended. Call only when
    /// no job of the batch can be running (the caller checked that nothing is in flight after
    /// the cancel was recorded, so no worker starts one either).
    pub async fn drain_cancelled(&self, batch_id: &str) -> Result<u64, FinalizeError> {
        let store = &self.store;
        let items = match self.ledger.get(batch_id).await? {
            Some(record) => record.counts.total,
            None => 0,
        };
        let index = segments::read::index(store, batch_id, items).await?;
        let writer = segments::writer_name("cancel");
        let mut ended = 0u64;
        let mut finalize = false;
        for (n, chunk) in input_chunks(store, batch_id).await?.into_iter().enumerate() {
            let bytes = store.get(&chunk).await?;
            let message = "the batch was cancelled before this item ran";
            let records = without_outcome(&bytes, &index, codes::CANCELLED, message);
            if records.is_empty() {
                continue;
            }
            // Written before any of them is settled: a settled item always has its outcome.
            segments::write_records(store, batch_id, &writer, n as u64, &records).await?;
            for record in &records {
                let settled = self.ledger.settle(batch_id, record.seq, false, 0).await?;
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
