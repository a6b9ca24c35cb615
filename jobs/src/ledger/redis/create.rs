//! A batch's creation in two steps, because the index `by:batches` and the batch's own keys
//! `by:batch:{<id>}…` sit in different Redis Cluster slots and no transaction spans slots:
//! the index entries (`by:batches` and the tenant's own) first, then the record in one transaction on the batch's slot.
//!
//! A crash between the two leaves an index entry without a record: `list` skips it, and
//! removes it once it is [`DANGLING_GRACE_SECS`] old (a younger one may be a creation still
//! under way). A failover can also lose an acknowledged index entry while the record stays
//! (asynchronous replication): a batch that ends is put back in the index ([`RedisLedger::reindex`]).

use std::collections::HashMap;

use super::record::parse_record;
use super::{INDEX_KEY, RedisLedger, record_key, resv_key, settled_key};
use redis::AsyncCommands;

use crate::batch::{BatchRecord, DEFAULT_TENANT};
use crate::error::QueueError;
use crate::keys;

/// How old an index entry without a record must be before `list` removes it: far longer than
/// the moment between the two steps of a creation, and than clock skew between hosts.
pub const DANGLING_GRACE_SECS: u64 = 600;

/// Records `list` reads per round trip.
const LIST_PAGE: usize = 500;

impl RedisLedger {
    /// Step 1: the batch in the index and in its tenant's, scored by its creation time. Two
    /// slots, so two commands; either missing (a crash between) is repaired as a dangling or
    /// lost entry is.
    pub(super) async fn index(
        &self,
        id: &str,
        tenant: &str,
        created_at: u64,
    ) -> Result<(), QueueError> {
        let mut index = redis::cmd("ZADD");
        index.arg(INDEX_KEY).arg(created_at).arg(id);
        let mut own = redis::cmd("ZADD");
        own.arg(keys::tenant_batches(tenant))
            .arg(created_at)
            .arg(id);
        self.conn.query_each::<i64>(vec![index, own]).await?;
        Ok(())
    }

    /// Step 2: the record, replacing whatever an earlier batch of that id left.
    pub(super) async fn write_record(
        &self,
        id: &str,
        fields: &[(&str, String)],
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .del(record_key(id))
            .del(settled_key(id))
            .del(resv_key(id))
            .hset_multiple(record_key(id), fields)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    /// Removes the index entry of a batch whose record is missing, once it is old enough. Best
    /// effort: listing goes on whatever happens here.
    pub(super) async fn drop_dangling(&self, id: &str, created_at: f64) {
        self.drop_dangling_in(INDEX_KEY, id, created_at).await;
    }

    /// Puts an ending batch back in the index and its tenant's if a failover lost an entry
    /// (`NX`: an entry that is there keeps its score). Also indexes, for its tenant, a batch an
    /// older build created after the backfill ran. Best effort, as the batch itself is fine
    /// without it.
    pub(super) async fn reindex(&self, id: &str) {
        let mut conn = self.conn.clone();
        let fields: Result<(Option<u64>, Option<String>), _> = redis::cmd("HMGET")
            .arg(record_key(id))
            .arg("created_at")
            .arg("tenant")
            .query_async(&mut conn)
            .await;
        let Ok((Some(created_at), tenant)) = fields else {
            return;
        };
        let tenant = tenant.unwrap_or_else(|| DEFAULT_TENANT.to_string());
        let zadd_nx = |key: String| {
            let mut c = redis::cmd("ZADD");
            c.arg(key).arg("NX").arg(created_at).arg(id);
            c
        };
        let added = self
            .conn
            .query_each::<i64>(vec![
                zadd_nx(INDEX_KEY.to_string()),
                zadd_nx(keys::tenant_batches(&tenant)),
            ])
            .await;
        if added.is_ok_and(|n| n.contains(&1)) {
            tracing::info!(
                batch = id,
                "put back the index entry of a batch that had lost it"
            );
        }
    }

    /// The newest batches of every tenant, newest first.
    pub(super) async fn list_all(&self, limit: usize) -> Result<Vec<BatchRecord>, QueueError> {
        let mut conn = self.conn.clone();
        let stop = limit.max(1) as isize - 1;
        let ids: Vec<(String, f64)> = conn.zrevrange_withscores(INDEX_KEY, 0, stop).await?;
        let mut out = Vec::with_capacity(ids.len());
        // A page of records per round trip (a pipeline; across slots on a cluster), not one
        // each: `usage` reads up to 100,000 of them.
        for page in ids.chunks(LIST_PAGE) {
            let reads = page.iter().map(|(id, _)| {
                let mut c = redis::cmd("HGETALL");
                c.arg(record_key(id));
                c
            });
            let maps: Vec<HashMap<String, String>> = self.conn.query_each(reads.collect()).await?;
            for ((id, created_at), map) in page.iter().zip(maps) {
                match parse_record(id, &map) {
                    Some(record) => out.push(record),
                    None => self.drop_dangling(id, *created_at).await,
                }
            }
        }
        Ok(out)
    }
}
