//! Redis ledger, shared by every worker: one hash per batch, a settlement bitmap while it runs.
//!
//! Keys: `by:batch:{<id>}` (hash), `by:batch:{<id>}:settled` (bitmap, dropped when the batch
//! ends), `by:batch:{<id>}:final` (finalization lease), `by:batch:{<id>}:resv` (budget
//! reservations in flight, job id -> nano-dollars; its sum is the hash's `reserved_nanos`;
//! dropped when the batch ends or is reopened), and `by:batches` (ids by creation). The hash's
//! `replay_id` names the last replay that reopened the batch. Every command and script touches
//! one batch's keys only (one cluster slot); the index is written on its own (`create`).
//!
//! - `budget`: reservations and commits against a batch's budget (Lua);
//! - `create`: a batch's creation in two steps (index, then record) and their repair;
//! - `enqueued`: the offload lane's per-model account of enqueued tokens;
//! - `lease`: the finalizer's and the offload lane's leases;
//! - `notify`: claims of a batch's end notification;
//! - `record`: a record's hash fields read back into a `BatchRecord`;
//! - `retention`: the index read for retention, an ended batch's keys removed;
//! - `tenants`: each tenant's own index, its backfill, and a tenant's listing;
//! - `uploads`: the batch creations reading an uploaded file.

mod budget;
mod create;
pub use create::DANGLING_GRACE_SECS;
mod enqueued;
mod lease;
mod notify;
mod record;
mod retention;
mod tenants;
pub use tenants::BACKFILL_PER_CALL;
mod uploads;

use record::{parse_record, state_stamp_field};

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::redis_conn::RedisConn;
use async_trait::async_trait;
use redis::{AsyncCommands, Script};

use super::{Enqueued, IndexEntry, Ledger, Removal, Reopen, Reservation, Settlement, SubmitStep};
use crate::batch::{BatchFailure, BatchRecord, BatchState, now_secs};
use crate::error::QueueError;
use crate::keys;

const INDEX_KEY: &str = keys::BATCH_INDEX;

fn record_key(id: &str) -> String {
    keys::batch_record(id)
}

fn settled_key(id: &str) -> String {
    keys::batch_settled(id)
}

fn lease_key(id: &str) -> String {
    keys::batch_final(id)
}

fn resv_key(id: &str) -> String {
    keys::batch_resv(id)
}

/// Returns {counted, finalize}; -1 when the batch does not exist.
const SETTLE_LUA: &str = r#"
if redis.call('EXISTS', KEYS[1]) == 0 then return {-1, 0} end
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'completed' or state == 'failed' or state == 'expired' or state == 'cancelled' then
  return {0, 0}
end
local total = tonumber(redis.call('HGET', KEYS[1], 'total') or '0')
if redis.call('SETBIT', KEYS[2], ARGV[1], 1) == 1 then
  if state == 'finalizing' then return {0, 1} end
  return {0, 0}
end
if ARGV[2] == '1' then
  redis.call('HINCRBY', KEYS[1], 'completed', 1)
else
  redis.call('HINCRBY', KEYS[1], 'failed', 1)
end
redis.call('HINCRBY', KEYS[1], 'spent_nanos', ARGV[3])
local done = tonumber(redis.call('HGET', KEYS[1], 'completed') or '0')
  + tonumber(redis.call('HGET', KEYS[1], 'failed') or '0')
if done >= total then
  redis.call('HSET', KEYS[1], 'state', 'finalizing', 'finalizing_at', ARGV[4])
  return {1, 1}
end
return {1, 0}
"#;

/// Moves a running batch to cancelling; returns the state it is in afterwards.
const CANCEL_LUA: &str = include_str!("redis/cancel.lua");

/// Reopens a finished batch for a replay of `ARGV[1]` failed items, as replay `ARGV[2]`.
/// Returns {1} when reopened, {0, state, replay} when the batch is not finished (a replay
/// already runs), {-1} when it does not exist. Nothing is in flight for a finished batch, so
/// any reservation left is a leak from a lost run. The completion window goes too: a replay is
/// the operator's call, and a window that has passed would expire it.
const REOPEN_LUA: &str = include_str!("redis/reopen.lua");

#[derive(Clone)]
pub struct RedisLedger {
    conn: RedisConn,
    settle: Script,
    submit: Script,
    budget: Arc<budget::Scripts>,
    /// Index entries one tenant listing backfills at most ([`BACKFILL_PER_CALL`]).
    backfill_per_call: usize,
}

impl RedisLedger {
    pub fn new(conn: RedisConn) -> Self {
        Self {
            conn,
            settle: Script::new(SETTLE_LUA),
            submit: Script::new(include_str!("redis/submit.lua")),
            budget: Arc::new(budget::Scripts::new()),
            backfill_per_call: BACKFILL_PER_CALL,
        }
    }

    /// Backfills at most `entries` index entries per tenant listing (tests: a short step).
    pub fn with_backfill_per_call(mut self, entries: usize) -> Self {
        self.backfill_per_call = entries.max(1);
        self
    }
}

#[async_trait]
impl Ledger for RedisLedger {
    async fn create(&self, record: &BatchRecord) -> Result<(), QueueError> {
        let fields = record::record_fields(record);
        // The index and the batch's keys live in different cluster slots, so no transaction
        // holds both: the index entry comes first. A crash (or a failover) between the two
        // leaves an entry without a record, which `list` skips and, once it is older than
        // DANGLING_GRACE_SECS, removes; the reverse would leave a batch nobody lists.
        self.index(&record.id, &record.tenant, record.created_at)
            .await?;
        self.write_record(&record.id, &fields).await
    }

    async fn get(&self, batch_id: &str) -> Result<Option<BatchRecord>, QueueError> {
        let mut conn = self.conn.clone();
        let map: HashMap<String, String> = conn.hgetall(record_key(batch_id)).await?;
        if map.is_empty() {
            return Ok(None);
        }
        Ok(parse_record(batch_id, &map))
    }

    async fn set_state(&self, batch_id: &str, state: BatchState) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let exists: bool = conn.exists(record_key(batch_id)).await?;
        if !exists {
            return Err(QueueError::BatchNotFound(batch_id.to_string()));
        }
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(record_key(batch_id), "state", state.as_str());
        if let Some(field) = state_stamp_field(state) {
            pipe.hset(record_key(batch_id), field, now_secs());
        }
        if state.is_terminal() {
            // Nothing of a finished batch is in flight any more (a straggler's spend is settled
            // as a duplicate), so reservations would only linger.
            pipe.del(settled_key(batch_id))
                .del(lease_key(batch_id))
                .del(resv_key(batch_id))
                .hdel(record_key(batch_id), "reserved_nanos");
        }
        pipe.query_async::<()>(&mut conn).await?;
        if state.is_terminal() {
            self.reindex(batch_id).await;
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
        let mut conn = self.conn.clone();
        let (counted, finalize): (i64, i64) = self
            .settle
            .key(record_key(batch_id))
            .key(settled_key(batch_id))
            .arg(seq)
            .arg(if success { "1" } else { "0" })
            .arg(cost_nanos)
            .arg(now_secs())
            .invoke_async(&mut conn)
            .await?;
        match counted {
            -1 => Err(QueueError::BatchNotFound(batch_id.to_string())),
            1 => Ok(Settlement::Counted {
                finalize: finalize == 1,
            }),
            _ => Ok(Settlement::Duplicate {
                finalize: finalize == 1,
            }),
        }
    }

    async fn is_settled(&self, batch_id: &str, seq: u64) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let (state, bit): (Option<String>, i64) = redis::pipe()
            .hget(record_key(batch_id), "state")
            .getbit(
                settled_key(batch_id),
                usize::try_from(seq).unwrap_or(usize::MAX),
            )
            .query_async(&mut conn)
            .await?;
        Ok(match state.as_deref().map(BatchState::parse) {
            None | Some(None) => true,
            Some(Some(state)) => state.is_terminal() || bit == 1,
        })
    }

    async fn try_lock_finalize(
        &self,
        batch_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        self.lease(&lease_key(batch_id), owner, ttl).await
    }

    async fn try_lock_offload(
        &self,
        batch_id: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        self.lease(&keys::batch_offload_lease(batch_id), owner, ttl)
            .await
    }

    async fn request_cancel(&self, batch_id: &str) -> Result<BatchRecord, QueueError> {
        let mut conn = self.conn.clone();
        let state: Option<String> = Script::new(CANCEL_LUA)
            .key(record_key(batch_id))
            .arg(now_secs())
            .invoke_async(&mut conn)
            .await?;
        if state.is_none() {
            return Err(QueueError::BatchNotFound(batch_id.to_string()));
        }
        self.get(batch_id)
            .await?
            .ok_or_else(|| QueueError::BatchNotFound(batch_id.to_string()))
    }

    async fn reopen(
        &self,
        batch_id: &str,
        retried: u64,
        replay_id: &str,
    ) -> Result<Reopen, QueueError> {
        let mut conn = self.conn.clone();
        let answer: Vec<redis::Value> = Script::new(REOPEN_LUA)
            .key(record_key(batch_id))
            .key(settled_key(batch_id))
            .key(lease_key(batch_id))
            .key(resv_key(batch_id))
            .arg(retried)
            .arg(replay_id)
            .arg(now_secs())
            .invoke_async(&mut conn)
            .await?;
        let text = |i: usize| match answer.get(i) {
            Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            _ => String::new(),
        };
        match answer.first() {
            Some(redis::Value::Int(1)) => Ok(Reopen::Reopened),
            Some(redis::Value::Int(0)) => Ok(Reopen::Busy {
                state: BatchState::parse(&text(1)).unwrap_or(BatchState::InProgress),
                replay: Some(text(2)).filter(|r| !r.is_empty()),
            }),
            _ => Err(QueueError::BatchNotFound(batch_id.to_string())),
        }
    }

    async fn last_replay(&self, batch_id: &str) -> Result<Option<String>, QueueError> {
        let mut conn = self.conn.clone();
        Ok(conn.hget(record_key(batch_id), "replay_id").await?)
    }

    async fn reserve(
        &self,
        batch_id: &str,
        job_id: &str,
        nanos: i64,
    ) -> Result<Reservation, QueueError> {
        let mut conn = self.conn.clone();
        self.budget
            .reserve(&mut conn, batch_id, job_id, nanos)
            .await
    }

    async fn commit(
        &self,
        batch_id: &str,
        job_id: &str,
        actual_nanos: i64,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        self.budget
            .commit(&mut conn, batch_id, job_id, actual_nanos)
            .await
    }

    async fn claim_notification(
        &self,
        batch_id: &str,
        ended_at: u64,
        now: u64,
        hold: Duration,
    ) -> Result<Option<u32>, QueueError> {
        self.claim_notify(batch_id, ended_at, now, hold).await
    }

    async fn settle_notification(
        &self,
        batch_id: &str,
        retry_at: Option<u64>,
    ) -> Result<(), QueueError> {
        self.settle_notify(batch_id, retry_at).await
    }

    async fn set_enqueued(
        &self,
        model: &str,
        member: &str,
        tokens: Option<u64>,
    ) -> Result<(), QueueError> {
        self.set_enqueued_share(model, member, tokens).await
    }

    async fn hold_enqueued(
        &self,
        model: &str,
        until_unix: u64,
        limit: Option<u64>,
    ) -> Result<(), QueueError> {
        self.hold_enqueued_account(model, until_unix, limit).await
    }

    async fn enqueued(&self, model: &str) -> Result<Enqueued, QueueError> {
        self.enqueued_account(model).await
    }

    async fn to_realtime(&self, batch_id: &str) -> Result<bool, QueueError> {
        let script = redis::Script::new(
            "if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end \
             return redis.call('HSETNX', KEYS[1], 'realtime_at', ARGV[1])",
        );
        let mut conn = self.conn.clone();
        let set: i64 = script
            .key(record_key(batch_id))
            .arg(now_secs())
            .invoke_async(&mut conn)
            .await?;
        if set < 0 {
            return Err(QueueError::BatchNotFound(batch_id.to_string()));
        }
        Ok(set == 1)
    }

    async fn set_budget(&self, batch_id: &str, budget_usd: Option<f64>) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        self.budget
            .set_budget(&mut conn, batch_id, budget_usd)
            .await
    }

    async fn set_counts(
        &self,
        batch_id: &str,
        completed: u64,
        failed: u64,
        failure: Option<&BatchFailure>,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .hset(record_key(batch_id), "completed", completed)
            .hset(record_key(batch_id), "failed", failed);
        if let Some(f) = failure {
            pipe.hset(record_key(batch_id), "failure_code", &f.code)
                .hset(record_key(batch_id), "failure_message", &f.message);
        }
        pipe.query_async::<()>(&mut conn).await?;
        Ok(())
    }

    async fn submit_step(&self, batch_id: &str, step: SubmitStep<'_>) -> Result<bool, QueueError> {
        let (name, ms, message) = match step {
            SubmitStep::Renew { lease_until_ms } => ("renew", lease_until_ms, ""),
            SubmitStep::Seal { lease_until_ms } => ("seal", lease_until_ms, ""),
            SubmitStep::Published => ("published", 0, ""),
            SubmitStep::Interrupted { now_ms, message } => ("interrupted", now_ms, message),
            SubmitStep::Resume { lease_until_ms } => ("resume", lease_until_ms, ""),
            SubmitStep::Replaying {
                lease_until_ms,
                staging,
            } => ("replaying", lease_until_ms, staging),
        };
        let mut conn = self.conn.clone();
        let applied: i64 = self
            .submit
            .key(record_key(batch_id))
            .key(settled_key(batch_id))
            .key(resv_key(batch_id))
            .key(lease_key(batch_id))
            .arg(name)
            .arg(ms)
            .arg(now_secs())
            .arg(message)
            .invoke_async(&mut conn)
            .await?;
        match applied {
            -1 => Err(QueueError::BatchNotFound(batch_id.to_string())),
            n => Ok(n == 1),
        }
    }

    async fn list(&self, limit: usize) -> Result<Vec<BatchRecord>, QueueError> {
        self.list_all(limit).await
    }

    async fn list_tenant(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, QueueError> {
        self.tenant_batches(tenant, limit).await
    }

    async fn unindex_tenant(&self, batch_id: &str, tenant: &str) -> Result<(), QueueError> {
        self.unindex_tenant_entry(batch_id, tenant).await
    }

    async fn claim_upload(&self, file_id: &str, batch_id: &str) -> Result<(), QueueError> {
        self.add_upload_reader(file_id, batch_id).await
    }

    async fn release_upload(&self, file_id: &str, batch_id: &str) -> Result<(), QueueError> {
        self.remove_upload_reader(file_id, batch_id).await
    }

    async fn upload_in_use(&self, file_id: &str) -> Result<bool, QueueError> {
        self.upload_has_readers(file_id).await
    }

    async fn index_page(
        &self,
        until: u64,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, QueueError> {
        self.index_entries(until, skip, limit).await
    }

    async fn remove_ended(&self, batch_id: &str, ended_before: u64) -> Result<Removal, QueueError> {
        self.remove_batch_keys(batch_id, ended_before).await
    }

    async fn unindex(&self, batch_id: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(INDEX_KEY, batch_id).await?;
        Ok(())
    }

    async fn try_lock_gc(&self, owner: &str, ttl: Duration) -> Result<bool, QueueError> {
        self.lease(keys::GC_LEASE, owner, ttl).await
    }

    async fn release_gc(&self, owner: &str) -> Result<(), QueueError> {
        self.release_lease(keys::GC_LEASE, owner).await
    }
}
