//! Each tenant's own batch index, `by:tenant:{<tenant>}:batches`, so a tenant's listing reads
//! only its own batches instead of scanning the newest of everyone's.
//!
//! It is written like `by:batches` (another slot than the batch's keys, so on its own): at
//! creation both index entries come before the record, and `list_tenant` skips an entry
//! without a record and removes it after [`DANGLING_GRACE_SECS`]. A batch that ends is put
//! back if a failover lost its entry. Retention removes the entry before the batch's keys.
//!
//! Batches created before this index existed are added once by a backfill: `ZSCAN` over
//! `by:batches` (which returns every entry present from start to end of the walk; a batch
//! created meanwhile is indexed by its creation, one removed meanwhile needs no entry), a
//! bounded number of entries per listing, its cursor kept in `by:tenants:backfill` so any
//! process goes on where another stopped. Until it says `done`, a tenant's listing falls back
//! to the scan of the newest records it replaced.

use std::collections::HashMap;

use redis::AsyncCommands;

use super::create::DANGLING_GRACE_SECS;
use super::record::parse_record;
use super::{INDEX_KEY, RedisLedger, record_key};
use crate::batch::{BatchRecord, DEFAULT_TENANT, now_secs};
use crate::error::QueueError;
use crate::keys;

/// Index entries one `ZSCAN` step of the backfill asks for.
const BACKFILL_PAGE: usize = 1_000;
/// Index entries the backfill walks in one listing at most, so no request waits long for it.
pub const BACKFILL_PER_CALL: usize = 20_000;
/// The most records a listing reads while the backfill is not done (the old way).
const FALLBACK_SCAN: usize = 100_000;
/// Entries of a tenant's index read per round.
const PAGE: usize = 200;
const DONE: &str = "done";

impl RedisLedger {
    pub(super) async fn tenant_batches(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, QueueError> {
        if !self.backfill_tenants(self.backfill_per_call).await? {
            return self.scan_for_tenant(tenant, limit).await;
        }
        let key = keys::tenant_batches(tenant);
        let mut out = Vec::with_capacity(limit.min(1_000));
        let mut start = 0usize;
        // Dangling entries are few (a crash between creation's steps), so this ends after
        // about `limit / PAGE` rounds; the index's length bounds it in any case.
        while out.len() < limit {
            let want = (limit - out.len()).clamp(1, PAGE);
            let mut conn = self.conn.clone();
            let ids: Vec<(String, f64)> = conn
                .zrevrange_withscores(&key, start as isize, (start + want - 1) as isize)
                .await?;
            start += ids.len();
            let reads = ids.iter().map(|(id, _)| {
                let mut c = redis::cmd("HGETALL");
                c.arg(record_key(id));
                c
            });
            let maps: Vec<HashMap<String, String>> = self.conn.query_each(reads.collect()).await?;
            for ((id, created_at), map) in ids.iter().zip(maps) {
                match parse_record(id, &map) {
                    // An id used again by another tenant's batch: not this tenant's any more.
                    Some(r) if r.tenant == tenant => out.push(r),
                    Some(_) => {}
                    None => self.drop_dangling_in(&key, id, *created_at).await,
                }
            }
            if ids.len() < want {
                break;
            }
        }
        out.truncate(limit);
        Ok(out)
    }

    /// What listing a tenant cost before its index: the newest records, filtered.
    async fn scan_for_tenant(
        &self,
        tenant: &str,
        limit: usize,
    ) -> Result<Vec<BatchRecord>, QueueError> {
        let mut fetch = limit.max(1);
        loop {
            let records = self.list_all(fetch).await?;
            let exhausted = records.len() < fetch || fetch >= FALLBACK_SCAN;
            let mut mine: Vec<BatchRecord> =
                records.into_iter().filter(|r| r.tenant == tenant).collect();
            if mine.len() >= limit || exhausted {
                mine.truncate(limit);
                return Ok(mine);
            }
            fetch = fetch.saturating_mul(4).min(FALLBACK_SCAN);
        }
    }

    /// Walks at most `budget` entries of `by:batches` into the tenant indexes from where the
    /// backfill stands. True once it is done (then it costs one `GET`).
    pub async fn backfill_tenants(&self, budget: usize) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let stored: Option<String> = conn.get(keys::TENANT_BACKFILL).await?;
        let mut cursor: u64 = match stored.as_deref() {
            Some(DONE) => return Ok(true),
            Some(c) => c.parse().unwrap_or(0),
            None => 0,
        };
        let mut walked = 0usize;
        loop {
            let (next, flat): (u64, Vec<String>) = redis::cmd("ZSCAN")
                .arg(INDEX_KEY)
                .arg(cursor)
                .arg("COUNT")
                .arg(BACKFILL_PAGE)
                .query_async(&mut conn)
                .await?;
            let entries: Vec<(&String, &String)> = flat
                .chunks_exact(2)
                .map(|pair| (&pair[0], &pair[1]))
                .collect();
            self.backfill_page(&entries).await?;
            walked += entries.len().max(1);
            cursor = next;
            if cursor == 0 {
                let () = conn.set(keys::TENANT_BACKFILL, DONE).await?;
                tracing::info!("the per-tenant batch indexes are filled in");
                return Ok(true);
            }
            let () = conn.set(keys::TENANT_BACKFILL, cursor.to_string()).await?;
            if walked >= budget {
                return Ok(false);
            }
        }
    }

    /// Puts each entry's batch in its tenant's index (`NX`: an entry there keeps its score).
    async fn backfill_page(&self, entries: &[(&String, &String)]) -> Result<(), QueueError> {
        if entries.is_empty() {
            return Ok(());
        }
        let reads = entries.iter().map(|(id, _)| {
            let mut c = redis::cmd("HMGET");
            c.arg(record_key(id)).arg("state").arg("tenant");
            c
        });
        let owners: Vec<(Option<String>, Option<String>)> =
            self.conn.query_each(reads.collect()).await?;
        let mut adds = Vec::new();
        for ((id, score), (state, tenant)) in entries.iter().zip(owners) {
            // No record: a dangling entry `list` removes; nothing to index.
            if state.is_none() {
                continue;
            }
            let tenant = tenant.unwrap_or_else(|| DEFAULT_TENANT.to_string());
            let mut c = redis::cmd("ZADD");
            c.arg(keys::tenant_batches(&tenant))
                .arg("NX")
                .arg(score.as_str())
                .arg(id.as_str());
            adds.push(c);
        }
        self.conn.query_each::<i64>(adds).await?;
        Ok(())
    }

    /// Retention: the batch leaves its tenant's index.
    pub(super) async fn unindex_tenant_entry(
        &self,
        batch_id: &str,
        tenant: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(keys::tenant_batches(tenant), batch_id).await?;
        Ok(())
    }

    /// Removes `id` from the index at `key` when its record is missing and the entry is old
    /// enough not to be a creation under way. Best effort.
    pub(super) async fn drop_dangling_in(&self, key: &str, id: &str, created_at: f64) {
        if created_at + DANGLING_GRACE_SECS as f64 > now_secs() as f64 {
            return;
        }
        let mut conn = self.conn.clone();
        let removed: Result<i64, _> = conn.zrem(key, id).await;
        match removed {
            Ok(n) if n > 0 => {
                tracing::info!(
                    batch = id,
                    index = key,
                    "removed an index entry whose batch record is missing"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(batch = id, error = %e, "cannot remove a dangling index entry")
            }
        }
    }
}
