//! The batch ledger: state, counts and spend of every batch.
//!
//! Settlement is exactly once per job (a bitmap indexed by the job's `seq`), so a job that ran
//! twice after a reclaim is counted once, and exactly one settlement sees the batch reach its
//! total: that caller finalizes.
//!
//! Budgets fail closed: before each provider call a worker reserves that call's worst case,
//! and the reservation is granted only while spend plus every reservation in flight stays
//! within the budget, so concurrent workers can't overspend together. Both ledgers implement
//! the same rules; `tests/ledger_budget.rs` runs one scenario against each.
//!
//! - [`memory`]: the in-process ledger, for `batchyard run` without Redis.
//! - [`redis`]: the shared ledger, one Lua script per multi-step change.

pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;

use crate::batch::{BatchRecord, BatchState};
use crate::error::QueueError;

/// What a settlement did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// Counted now. `finalize` is true for exactly one settlement of a batch: the last one.
    Counted { finalize: bool },
    /// This job was already counted. `finalize` is true when the batch is still waiting to be
    /// finalized (its finalizer may have died), so the caller should try to finalize.
    Duplicate { finalize: bool },
}

impl Settlement {
    pub fn should_finalize(self) -> bool {
        match self {
            Self::Counted { finalize } | Self::Duplicate { finalize } => finalize,
        }
    }
}

/// A model's enqueued-token account (the offload lane's view of a provider quota).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Enqueued {
    pub tokens: u64,
    /// Unix seconds until which nothing more is sent (0: no hold). A cleared share lifts it.
    pub held_until: u64,
    /// The limit the provider named when it refused a batch (0: none learned).
    pub learned_limit: u64,
}

/// What a budget reservation got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reservation {
    /// The batch has no budget: nothing was reserved, the cost is counted at settlement.
    Unlimited,
    /// Reserved; replace it with the actual cost through [`Ledger::commit`].
    Granted,
    /// The budget can't cover it now (spent + in-flight reservations + this > budget). When it
    /// couldn't even with nothing in flight (spent + this > budget), the batch is now marked
    /// budget-exhausted; otherwise wait for calls in flight to settle.
    Denied {
        spent_nanos: i64,
        reserved_nanos: i64,
        budget_nanos: i64,
    },
}

/// One entry of the batch index (`by:batches`), with what retention judges it on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IndexEntry {
    pub id: String,
    /// Unix seconds: the index's score.
    pub created_at: u64,
    /// `None`: the index names a batch whose record is gone (a removal cut short).
    pub state: Option<BatchState>,
    /// When it ended (its `completed_at`), if it did.
    pub ended_at: Option<u64>,
    /// The storage URL its objects live under, when the record says.
    pub storage_url: Option<String>,
    /// Whose batch it is, when the record says (`None`: no record, or one from before
    /// tenants, which is the `default` tenant's).
    pub tenant: Option<String>,
}

/// How long a batch creation's registration as the reader of an uploaded file holds: a
/// creation that died is not waited for longer (see [`Ledger::claim_upload`]).
pub const UPLOAD_READ_SECS: u64 = 6 * 3600;

/// What [`Ledger::remove_ended`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal {
    /// The batch's keys are gone; its index entry stays until [`Ledger::unindex`].
    Removed,
    /// Not ended, or ended after the cutoff: nothing changed.
    Kept,
    /// No record (an earlier removal was cut short, or it never existed).
    Missing,
}

/// One step of a submission's life. A batch is `validating` while its input is staged,
/// invisible to workers; sealing makes it `in_progress`. A submit that stops before sealing
/// (Redis gone, process killed) ends `failed` with `submit_interrupted` once its lease
/// lapses, unless `--resume` takes it up again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubmitStep<'a> {
    /// Extends the submitter's lease (while `validating`, or sealed and still publishing).
    Renew { lease_until_ms: u64 },
    /// Every job is staged: `validating` -> `in_progress`, sealed.
    Seal { lease_until_ms: u64 },
    /// Every staged job is in the queue: the submission's bookkeeping goes.
    Published,
    /// `validating` with its lease lapsed before `now_ms` -> `failed` (`submit_interrupted`).
    Interrupted { now_ms: u64, message: &'a str },
    /// `validating`, or `failed` with `submit_interrupted` -> `validating` with a new lease
    /// and the counts reset (nothing of an unsealed batch ran).
    Resume { lease_until_ms: u64 },
    /// A replay reopened the batch (`in_progress`) and staged its jobs under `staging`: they
    /// are sealed from the start, so a sweep finishes publishing them if the replay stops.
    Replaying {
        lease_until_ms: u64,
        staging: &'a str,
    },
}

/// What [`Ledger::reopen`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reopen {
    /// The batch runs again under this replay.
    Reopened,
    /// The batch is not finished (another replay runs, or it never ended): nothing changed.
    /// `replay` names the replay that reopened it, if one did.
    Busy {
        state: BatchState,
        replay: Option<String>,
    },
}

#[async_trait]
pub trait Ledger: Send + Sync {
    /// Writes a new batch record. Done before its first job is enqueued.
    async fn create(&self, record: &BatchRecord) -> Result<(), QueueError>;

    async fn get(&self, batch_id: &str) -> Result<Option<BatchRecord>, QueueError>;

    /// Moves a batch to `state`, stamping the matching `*_at` time. Terminal states also drop
    /// the per-job settlement bitmap and any budget reservations left.
    async fn set_state(&self, batch_id: &str, state: BatchState) -> Result<(), QueueError>;

    /// Counts one job's outcome, once.
    async fn settle(
        &self,
        batch_id: &str,
        seq: u64,
        success: bool,
        cost_nanos: i64,
    ) -> Result<Settlement, QueueError>;

    /// Whether job `seq` of the batch is settled. A batch that ended (its settlement bits are
    /// dropped) or is gone counts every job as settled: nothing of it runs again.
    async fn is_settled(&self, batch_id: &str, seq: u64) -> Result<bool, QueueError>;

    /// Takes the finalization lease for a batch, or extends it for `ttl` when `owner` holds it
    /// already. Only the holder writes the batch files.
    async fn try_lock_finalize(
        &self,
        batch_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError>;

    /// The offload lane's lease of a batch, taken or extended by `owner` for `ttl`: one
    /// worker at a time submits, polls and ingests its provider batches.
    async fn try_lock_offload(
        &self,
        batch_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError>;

    /// Asks a running batch to stop: queued items will end as `cancelled`, in-flight ones
    /// finish. Returns the record as it now is; a batch already finished (or finalizing) is
    /// returned unchanged.
    async fn request_cancel(&self, batch_id: &str) -> Result<BatchRecord, QueueError>;

    /// Reopens a finished batch so `retried` of its failed items can run again: they leave the
    /// failed count (which never goes below zero) and will be settled anew. Atomic with the
    /// check that the batch is finished, so of two replays at once only one reopens it; the
    /// other gets [`Reopen::Busy`] naming `replay_id` of the first. Reservations left by lost runs are dropped; the
    /// budget and its exhausted mark are left as they are (see [`Ledger::set_budget`]). The
    /// completion window is dropped: a replay would otherwise expire at once.
    async fn reopen(
        &self,
        batch_id: &str,
        retried: u64,
        replay_id: &str,
    ) -> Result<Reopen, QueueError>;

    /// The replay that last reopened the batch, if any (see [`Ledger::reopen`]).
    async fn last_replay(&self, batch_id: &str) -> Result<Option<String>, QueueError>;

    /// Reserves the worst-case cost of one call of job `job_id` against the batch budget,
    /// atomically. A job holds at most one reservation: a new one replaces what an earlier
    /// (lost) run of the same job left, and that old one is dropped whatever the answer.
    ///
    /// Granted iff `spent + (reserved - this job's old reservation) + nanos <= budget`, the
    /// budget being `budget_usd` rounded to nanos. A denial marks the batch budget-exhausted
    /// (the first denial's time is kept) and reports the numbers it was judged on.
    async fn reserve(
        &self,
        batch_id: &str,
        job_id: &str,
        nanos: i64,
    ) -> Result<Reservation, QueueError>;

    /// Replaces job `job_id`'s reservation with the call's actual cost, added to the spend now.
    /// Call it once per call: it is not idempotent. Without a reservation (unbudgeted, or the
    /// spend of an interrupted run) it still adds the cost, because the call did happen.
    async fn commit(
        &self,
        batch_id: &str,
        job_id: &str,
        actual_nanos: i64,
    ) -> Result<(), QueueError>;

    /// Sets (`Some`) or clears (`None`) one provider batch's share of `model`'s enqueued-token
    /// account (`member`: `<batch>/<provider batch key>`). Idempotent either way.
    async fn set_enqueued(
        &self,
        model: &str,
        member: &str,
        tokens: Option<u64>,
    ) -> Result<(), QueueError>;

    /// The provider refused a provider batch of `model` for its quota: records the limit it
    /// named (`limit`), or else holds the account until `until_unix` (or until a share is
    /// cleared), so nothing more is sent that would be refused too.
    async fn hold_enqueued(
        &self,
        model: &str,
        until_unix: u64,
        limit: Option<u64>,
    ) -> Result<(), QueueError>;

    /// `model`'s account: the tokens in its provider batches not yet ended, and any hold.
    async fn enqueued(&self, model: &str) -> Result<Enqueued, QueueError>;

    /// Claims the next attempt at delivering the batch's end notification for the end at
    /// `ended_at` (a batch reopened and ended again is announced again), if one is due at
    /// `now`: returns its number (1 for the first) and holds other claims off for `hold`
    /// while it is tried. `None`: delivered, given up, or not due yet.
    async fn claim_notification(
        &self,
        batch_id: &str,
        ended_at: u64,
        now: u64,
        hold: Duration,
    ) -> Result<Option<u32>, QueueError>;

    /// Records how a claimed attempt went: `Some(at)`: try again at `at` (Unix seconds);
    /// `None`: no more attempts (delivered, or given up).
    async fn settle_notification(
        &self,
        batch_id: &str,
        retry_at: Option<u64>,
    ) -> Result<(), QueueError>;

    /// Ends the batch's offload lane: from now on its items run real-time. True the first
    /// time (the time is kept), false after.
    async fn to_realtime(&self, batch_id: &str) -> Result<bool, QueueError>;

    /// Sets the batch budget (`None`: no limit) and clears the budget-exhausted mark.
    async fn set_budget(&self, batch_id: &str, budget_usd: Option<f64>) -> Result<(), QueueError>;

    /// Sets the counts to what the batch files hold, and the whole-batch failure if any (a
    /// finalizer that found results missing), so a status never says more than the files.
    async fn set_counts(
        &self,
        batch_id: &str,
        completed: u64,
        failed: u64,
        failure: Option<&crate::batch::BatchFailure>,
    ) -> Result<(), QueueError>;

    /// Applies one step of a submission; `Ok(false)` when the batch is not in a state it
    /// applies to (say, a sweeper already ended it).
    async fn submit_step(&self, batch_id: &str, step: SubmitStep<'_>) -> Result<bool, QueueError>;

    /// The newest batches, newest first.
    async fn list(&self, limit: usize) -> Result<Vec<BatchRecord>, QueueError>;

    /// The newest batches of `tenant`, newest first, read from that tenant's own index: the
    /// cost is its own batches, whatever other tenants have.
    async fn list_tenant(&self, tenant: &str, limit: usize)
    -> Result<Vec<BatchRecord>, QueueError>;

    /// Registers batch `batch_id`'s creation as a reader of uploaded file `file_id`, until
    /// [`Ledger::release_upload`] or [`UPLOAD_READ_SECS`]. Retention keeps a file with a
    /// reader; the creation checks the file still exists after registering.
    async fn claim_upload(&self, file_id: &str, batch_id: &str) -> Result<(), QueueError>;

    async fn release_upload(&self, file_id: &str, batch_id: &str) -> Result<(), QueueError>;

    /// Whether a batch creation reads uploaded file `file_id` now.
    async fn upload_in_use(&self, file_id: &str) -> Result<bool, QueueError>;

    /// Retention: up to `limit` entries of the batch index created at or before `until`
    /// (Unix seconds), oldest first, after skipping `skip`. The in-process ledger keeps
    /// nothing past its process, so it lists nothing.
    async fn index_page(
        &self,
        _until: u64,
        _skip: usize,
        _limit: usize,
    ) -> Result<Vec<IndexEntry>, QueueError> {
        Ok(Vec::new())
    }

    /// Retention: removes every Redis key of a batch (record, settlement, leases,
    /// reservations, notification), atomically with the check that it ended at or before
    /// `ended_before` (Unix seconds). The index entry stays until [`Ledger::unindex`], so a
    /// removal cut short between the two is found again.
    async fn remove_ended(
        &self,
        _batch_id: &str,
        _ended_before: u64,
    ) -> Result<Removal, QueueError> {
        Ok(Removal::Kept)
    }

    /// Retention: drops a batch from its tenant's index, before its keys go (a removal cut
    /// short after this leaves a batch past retention that only its tenant's listing misses).
    async fn unindex_tenant(&self, _batch_id: &str, _tenant: &str) -> Result<(), QueueError> {
        Ok(())
    }

    /// Retention: drops a removed batch from the index, the last step of its removal.
    async fn unindex(&self, _batch_id: &str) -> Result<(), QueueError> {
        Ok(())
    }

    /// Retention: the collector's lease, taken or extended by `owner` for `ttl`, so one
    /// worker of a fleet collects at a time. In process there is only one.
    async fn try_lock_gc(&self, _owner: &str, _ttl: Duration) -> Result<bool, QueueError> {
        Ok(true)
    }

    /// Retention: gives the collector's lease up, if `owner` holds it.
    async fn release_gc(&self, _owner: &str) -> Result<(), QueueError> {
        Ok(())
    }
}
