//! In-process ledger for `batchyard run` with no Redis.
//!
//! - `accounts`: end notifications and enqueued-token accounts;
//! - `entry`: one batch's record, settlement, leases and reservations;
//! - `tenants`: each tenant's index and the readers of uploaded files.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use tokio::sync::Mutex;

use super::{Enqueued, Ledger, Reopen, Reservation, Settlement, SubmitStep};
use crate::batch::{BatchFailure, BatchRecord, BatchState, failure_codes, now_secs, usd_to_nanos};
use crate::error::QueueError;

mod accounts;
mod entry;
mod tenants;

use accounts::{Account, Notification};
use entry::Entry;
use tenants::TenantIndex;

#[derive(Default)]
pub struct MemoryLedger {
    batches: Mutex<HashMap<String, Entry>>,
    /// The offload lane's enqueued-token accounts, by model: shares by member, and a hold.
    enqueued: Mutex<HashMap<String, Account>>,
    /// End notifications by batch: the end it is for, attempts made, next due, done.
    notifications: Mutex<HashMap<String, Notification>>,
    /// Each tenant's batches, so a tenant's listing reads only its own.
    tenants: Mutex<TenantIndex>,
    /// Uploaded file id -> the creations reading it (batch id -> since when).
    readers: Mutex<HashMap<String, HashMap<String, u64>>>,
}

impl MemoryLedger {
    pub fn new() -> Self {
        Self::default()
    }
}

pub(crate) fn stamp(record: &mut BatchRecord, state: BatchState, now: u64) {
    record.state = state;
    match state {
        BatchState::InProgress => record.in_progress_at = Some(now),
        BatchState::Finalizing => record.finalizing_at = Some(now),
        s if s.is_terminal() => record.completed_at = Some(now),
        _ => {}
    }
}

#[async_trait]
impl Ledger for MemoryLedger {
    async fn create(&self, record: &BatchRecord) -> Result<(), QueueError> {
        let mut batches = self.batches.lock().await;
        // A new batch holds no reservations, whatever the record says (as on Redis, which
        // doesn't store the field).
        let record = BatchRecord {
            reserved_nanos: 0,
            ..record.clone()
        };
        self.tenants.lock().await.add(&record);
        batches.insert(
            record.id.clone(),
            Entry {
                record: Some(record),
                ..Entry::default()
            },
        );
        Ok(())
    }

    async fn get(&self, batch_id: &str) -> Result<Option<BatchRecord>, QueueError> {
        let batches = self.batches.lock().await;
        Ok(batches.get(batch_id).and_then(|e| e.record.clone()))
    }

    async fn set_state(&self, batch_id: &str, state: BatchState) -> Result<(), QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        if let Some(record) = entry.record.as_mut() {
            stamp(record, state, now_secs());
        }
        if state.is_terminal() {
            entry.settled = Vec::new();
            entry.drop_reservations();
        }
        Ok(())
    }

    async fn settle(
        &self,
        batch_id: &str,
        seq: u64,
        success: bool,
        cost_nanos: i64,
    ) -> Result<Settlement, QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        let Some(record) = entry.record.as_mut() else {
            return Err(QueueError::BatchNotFound(batch_id.to_string()));
        };
        if record.state.is_terminal() {
            return Ok(Settlement::Duplicate { finalize: false });
        }
        let word = (seq / 64) as usize;
        let bit = 1u64 << (seq % 64);
        if entry.settled.len() <= word {
            entry.settled.resize(word + 1, 0);
        }
        if entry.settled[word] & bit != 0 {
            let waiting = record.state == BatchState::Finalizing;
            return Ok(Settlement::Duplicate { finalize: waiting });
        }
        entry.settled[word] |= bit;
        if success {
            record.counts.completed += 1;
        } else {
            record.counts.failed += 1;
        }
        record.spent_nanos += cost_nanos;
        let finalize = record.settled() >= record.counts.total;
        if finalize {
            stamp(record, BatchState::Finalizing, now_secs());
        }
        Ok(Settlement::Counted { finalize })
    }

    async fn is_settled(&self, batch_id: &str, seq: u64) -> Result<bool, QueueError> {
        let batches = self.batches.lock().await;
        let Some((entry, record)) = batches
            .get(batch_id)
            .and_then(|e| e.record.as_ref().map(|r| (e, r)))
        else {
            return Ok(true);
        };
        if record.state.is_terminal() {
            return Ok(true);
        }
        let (word, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        Ok(entry.settled.get(word).is_some_and(|w| w & bit != 0))
    }

    async fn try_lock_finalize(
        &self,
        batch_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches.entry(batch_id.to_string()).or_default();
        Ok(take_lease(&mut entry.lease, owner, ttl))
    }

    async fn try_lock_offload(
        &self,
        batch_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches.entry(batch_id.to_string()).or_default();
        Ok(take_lease(&mut entry.offload_lease, owner, ttl))
    }

    async fn request_cancel(&self, batch_id: &str) -> Result<BatchRecord, QueueError> {
        let mut batches = self.batches.lock().await;
        let record = batches
            .get_mut(batch_id)
            .and_then(|e| e.record.as_mut())
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        let unsealed = record.submit.as_ref().is_none_or(|s| !s.sealed);
        if record.state == BatchState::Validating && unsealed {
            // Still being submitted: nothing of it is visible to workers, so it ends now.
            record.cancel_requested_at.get_or_insert(now_secs());
            stamp(record, BatchState::Cancelled, now_secs());
        } else if !record.state.is_terminal() && record.state != BatchState::Finalizing {
            record.state = BatchState::Cancelling;
            record.cancel_requested_at.get_or_insert(now_secs());
        }
        Ok(record.clone())
    }

    async fn reopen(
        &self,
        batch_id: &str,
        retried: u64,
        replay_id: &str,
    ) -> Result<Reopen, QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        let replay = entry.replay.clone();
        let record = entry
            .record
            .as_mut()
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        if !record.state.is_terminal() {
            return Ok(Reopen::Busy {
                state: record.state,
                replay,
            });
        }
        record.counts.failed = record.counts.failed.saturating_sub(retried);
        record.state = BatchState::InProgress;
        record.finalizing_at = None;
        record.completed_at = None;
        record.cancel_requested_at = None;
        // As on Redis: a replay runs without the window that has passed.
        record.expires_at = None;
        entry.settled = Vec::new();
        entry.lease = None;
        entry.drop_reservations();
        entry.replay = Some(replay_id.to_string());
        Ok(Reopen::Reopened)
    }

    async fn last_replay(&self, batch_id: &str) -> Result<Option<String>, QueueError> {
        let batches = self.batches.lock().await;
        Ok(batches.get(batch_id).and_then(|e| e.replay.clone()))
    }

    async fn reserve(
        &self,
        batch_id: &str,
        job_id: &str,
        nanos: i64,
    ) -> Result<Reservation, QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        entry.record_mut(batch_id)?;
        entry.release(job_id);
        let record = entry.record_mut(batch_id)?;
        let Some(budget_usd) = record.budget_usd else {
            return Ok(Reservation::Unlimited);
        };
        let budget_nanos = usd_to_nanos(budget_usd);
        let (spent_nanos, reserved_nanos) = (record.spent_nanos, record.reserved_nanos);
        // Wide, so that no sum of three i64 can wrap into a grant.
        let needed = i128::from(spent_nanos) + i128::from(reserved_nanos) + i128::from(nanos);
        if needed > i128::from(budget_nanos) {
            // Exhausted only when the call can't fit once every call in flight has settled.
            if i128::from(spent_nanos) + i128::from(nanos) > i128::from(budget_nanos) {
                record.budget_exhausted_at.get_or_insert(now_secs());
            }
            return Ok(Reservation::Denied {
                spent_nanos,
                reserved_nanos,
                budget_nanos,
            });
        }
        record.reserved_nanos += nanos;
        entry.reservations.insert(job_id.to_string(), nanos);
        Ok(Reservation::Granted)
    }

    async fn commit(
        &self,
        batch_id: &str,
        job_id: &str,
        actual_nanos: i64,
    ) -> Result<(), QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        entry.record_mut(batch_id)?;
        entry.release(job_id);
        entry.record_mut(batch_id)?.spent_nanos += actual_nanos;
        Ok(())
    }

    async fn claim_notification(
        &self,
        batch_id: &str,
        ended_at: u64,
        now: u64,
        hold: Duration,
    ) -> Result<Option<u32>, QueueError> {
        Ok(self.claim_notify(batch_id, ended_at, now, hold).await)
    }

    async fn settle_notification(
        &self,
        batch_id: &str,
        retry_at: Option<u64>,
    ) -> Result<(), QueueError> {
        self.settle_notify(batch_id, retry_at).await;
        Ok(())
    }

    async fn set_enqueued(
        &self,
        model: &str,
        member: &str,
        tokens: Option<u64>,
    ) -> Result<(), QueueError> {
        self.set_share(model, member, tokens).await;
        Ok(())
    }

    async fn hold_enqueued(
        &self,
        model: &str,
        until_unix: u64,
        limit: Option<u64>,
    ) -> Result<(), QueueError> {
        self.hold_account(model, until_unix, limit).await;
        Ok(())
    }

    async fn enqueued(&self, model: &str) -> Result<Enqueued, QueueError> {
        Ok(self.account(model).await)
    }

    async fn to_realtime(&self, batch_id: &str) -> Result<bool, QueueError> {
        let mut batches = self.batches.lock().await;
        let record = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?
            .record_mut(batch_id)?;
        if record.realtime_at.is_some() {
            return Ok(false);
        }
        record.realtime_at = Some(now_secs());
        Ok(true)
    }

    async fn set_budget(&self, batch_id: &str, budget_usd: Option<f64>) -> Result<(), QueueError> {
        let mut batches = self.batches.lock().await;
        let record = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?
            .record_mut(batch_id)?;
        record.budget_usd = budget_usd;
        record.budget_exhausted_at = None;
        Ok(())
    }

    async fn set_counts(
        &self,
        batch_id: &str,
        completed: u64,
        failed: u64,
        failure: Option<&BatchFailure>,
    ) -> Result<(), QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        let record = entry.record_mut(batch_id)?;
        record.counts.completed = completed;
        record.counts.failed = failed;
        if let Some(f) = failure {
            record.failure = Some(f.clone());
        }
        Ok(())
    }

    async fn submit_step(&self, batch_id: &str, step: SubmitStep<'_>) -> Result<bool, QueueError> {
        let mut batches = self.batches.lock().await;
        let entry = batches
            .get_mut(batch_id)
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))?;
        let record = entry.record_mut(batch_id)?;
        let validating = record.state == BatchState::Validating;
        let applied = match step {
            SubmitStep::Renew { lease_until_ms } => match record.submit.as_mut() {
                Some(s) if validating || s.sealed => {
                    s.lease_until_ms = lease_until_ms;
                    true
                }
                _ => false,
            },
            SubmitStep::Seal { lease_until_ms } if validating => {
                stamp(record, BatchState::InProgress, now_secs());
                if let Some(s) = record.submit.as_mut() {
                    s.sealed = true;
                    s.lease_until_ms = lease_until_ms;
                }
                true
            }
            SubmitStep::Published => {
                record.submit = None;
                true
            }
            SubmitStep::Replaying {
                lease_until_ms,
                staging,
            } if record.state == BatchState::InProgress => {
                record.submit = Some(crate::batch::SubmitProgress {
                    lease_until_ms,
                    fingerprint: "replay".into(),
                    sealed: true,
                    staging: Some(staging.to_string()),
                });
                true
            }
            SubmitStep::Interrupted { now_ms, message }
                if validating
                    && record
                        .submit
                        .as_ref()
                        .is_none_or(|s| s.lease_until_ms <= now_ms) =>
            {
                stamp(record, BatchState::Failed, now_secs());
                record.failure = Some(BatchFailure {
                    code: failure_codes::SUBMIT_INTERRUPTED.into(),
                    message: message.into(),
                });
                entry.settled = Vec::new();
                entry.drop_reservations();
                true
            }
            SubmitStep::Resume { lease_until_ms }
                if validating
                    || (record.state == BatchState::Failed
                        && record
                            .failure
                            .as_ref()
                            .is_some_and(|f| f.code == failure_codes::SUBMIT_INTERRUPTED)) =>
            {
                record.state = BatchState::Validating;
                record.failure = None;
                record.completed_at = None;
                record.finalizing_at = None;
                record.counts.completed = 0;
                record.counts.failed = 0;
                record.spent_nanos = 0;
                if let Some(s) = record.submit.as_mut() {
                    s.lease_until_ms = lease_until_ms;
                    s.sealed = false;
                }
                entry.settled = Vec::new();
                entry.drop_reservations();
                true
            }
            _ => false,
        };
        Ok(applied)
    }

    async fn list(&self, limit: usize) -> Result<Vec<BatchRecord>, QueueError> {
        let batches = self.batches.lock().await;
        let mut records: Vec<_> = batches.values().filter_map(|e| e.record.clone()).collect();
        records.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.id.cmp(&a.id)));
        records.truncate(limit);
        Ok(records)
    }

    async fn list_tenant(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, QueueError> {
        self.tenant_batches(tenant, limit).await
    }

    async fn claim_upload(&self, file_id: &str, batch_id: &str) -> Result<(), QueueError> {
        self.add_upload_reader(file_id, batch_id).await;
        Ok(())
    }

    async fn release_upload(&self, file_id: &str, batch_id: &str) -> Result<(), QueueError> {
        self.remove_upload_reader(file_id, batch_id).await;
        Ok(())
    }

    async fn upload_in_use(&self, file_id: &str) -> Result<bool, QueueError> {
        Ok(self.upload_has_readers(file_id).await)
    }
}

/// Takes `lease` for `owner` (or extends it when `owner` holds it) unless another holds it
/// still.
fn take_lease(lease: &mut Option<(String, Instant)>, owner: &str, ttl: Duration) -> bool {
    let now = Instant::now();
    match lease {
        Some((holder, until)) if holder != owner && *until > now => false,
        _ => {
            *lease = Some((owner.to_string(), now + ttl));
            true
        }
    }
}
