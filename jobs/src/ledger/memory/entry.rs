//! One batch as the memory ledger holds it.

use std::collections::HashMap;
use std::time::Instant;

use crate::batch::BatchRecord;
use crate::error::QueueError;

#[derive(Default)]
pub(super) struct Entry {
    pub(super) record: Option<BatchRecord>,
    pub(super) settled: Vec<u64>,
    pub(super) lease: Option<(String, Instant)>,
    /// The offload lane's lease.
    pub(super) offload_lease: Option<(String, Instant)>,
    /// Job id -> reserved nano-dollars; sums to the record's `reserved_nanos`.
    pub(super) reservations: HashMap<String, i64>,
    /// The last replay that reopened the batch.
    pub(super) replay: Option<String>,
}

impl Entry {
    pub(super) fn record_mut(&mut self, batch_id: &str) -> Result<&mut BatchRecord, QueueError> {
        self.record
            .as_mut()
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))
    }

    /// Drops whatever job `job_id` holds; see `Ledger::reserve` for why a job's reservation
    /// is always stale when it reserves again.
    pub(super) fn release(&mut self, job_id: &str) {
        if let Some(old) = self.reservations.remove(job_id)
            && let Some(record) = self.record.as_mut()
        {
            record.reserved_nanos -= old;
        }
    }

    pub(super) fn drop_reservations(&mut self) {
        self.reservations = HashMap::new();
        if let Some(record) = self.record.as_mut() {
            record.reserved_nanos = 0;
        }
    }
}
