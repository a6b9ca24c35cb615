//! Retention's side of the Redis ledger: the batch index read page by page with what each
//! batch's record says, and the removal of an ended batch's keys in one script (they share
//! the batch's hash tag), checked against its end in the same step.

use redis::Script;

use super::RedisLedger;
use crate::batch::BatchState;
use crate::error::QueueError;
use crate::keys;
use crate::ledger::{IndexEntry, Removal};

/// KEYS: the record and its sub-keys. ARGV[1]: the cutoff (Unix seconds). -1: no record;
/// 0: kept (not ended, or ended after the cutoff); 1: removed.
const REMOVE: &str = "\
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end \
local state = redis.call('HGET', KEYS[1], 'state') \
if state ~= 'completed' and state ~= 'failed' and state ~= 'expired' and state ~= 'cancelled' then \
  return 0 end \
local ended = tonumber(redis.call('HGET', KEYS[1], 'completed_at') or '') \
  or tonumber(redis.call('HGET', KEYS[1], 'created_at') or '') or 0 \
if ended > tonumber(ARGV[1]) then return 0 end \
redis.call('DEL', unpack(KEYS)) \
return 1";

impl RedisLedger {
    pub(super) async fn index_entries(
        &self,
        until: u64,
        skip: usize,
        limit: usize,
    ) -> Result<Vec<IndexEntry>, QueueError> {
        let mut conn = self.conn.clone();
        let page: Vec<(String, f64)> = redis::cmd("ZRANGEBYSCORE")
            .arg(keys::BATCH_INDEX)
            .arg("-inf")
            .arg(until)
            .arg("WITHSCORES")
            .arg("LIMIT")
            .arg(skip)
            .arg(limit.max(1))
            .query_async(&mut conn)
            .await?;
        if page.is_empty() {
            return Ok(Vec::new());
        }
        let reads = page.iter().map(|(id, _)| {
            let mut c = redis::cmd("HMGET");
            c.arg(keys::batch_record(id))
                .arg("state")
                .arg("completed_at")
                .arg("storage_url")
                .arg("tenant");
            c
        });
        // One pipeline on a single server; per command on a cluster (the records sit in
        // different slots).
        #[allow(clippy::type_complexity)]
        let fields: Vec<(Option<String>, Option<u64>, Option<String>, Option<String>)> =
            self.conn.query_each(reads.collect()).await?;
        Ok(page
            .into_iter()
            .zip(fields)
            .map(|((id, score), (state, ended_at, storage_url, tenant))| {
                let tenant = state
                    .as_ref()
                    .map(|_| tenant.unwrap_or_else(|| crate::batch::DEFAULT_TENANT.to_string()));
                IndexEntry {
                    id,
                    created_at: score.max(0.0) as u64,
                    state: state.as_deref().and_then(BatchState::parse),
                    ended_at,
                    storage_url,
                    tenant,
                }
            })
            .collect())
    }

    /// Deletes the lease at `key` if `owner` holds it.
    pub(super) async fn release_lease(&self, key: &str, owner: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(key)
        .arg(owner)
        .invoke_async(&mut conn)
        .await?;
        Ok(())
    }

    pub(super) async fn remove_batch_keys(
        &self,
        batch_id: &str,
        ended_before: u64,
    ) -> Result<Removal, QueueError> {
        let mut conn = self.conn.clone();
        let removed: i64 = Script::new(REMOVE)
            .key(keys::batch_record(batch_id))
            .key(keys::batch_settled(batch_id))
            .key(keys::batch_final(batch_id))
            .key(keys::batch_resv(batch_id))
            .key(keys::batch_offload_lease(batch_id))
            .key(keys::batch_notify(batch_id))
            .arg(ended_before)
            .invoke_async(&mut conn)
            .await?;
        Ok(match removed {
            1 => Removal::Removed,
            -1 => Removal::Missing,
            _ => Removal::Kept,
        })
    }
}
