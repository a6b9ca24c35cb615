//! A batch's creation in two steps, because the index `by:batches` and the batch's own keys
//! `by:batch:{<id>}…` sit in different Redis Cluster slots and no transaction spans slots:
//! the index entry first, then the record in one transaction on the batch's slot.
//!
//! A crash between the two leaves an index entry without a record: `list` skips it, and
//! removes it once it is [`DANGLING_GRACE_SECS`] old (a younger one may be a creation still
//! under way). A failover can also lose an acknowledged index entry while the record stays
//! (asynchronous replication): a batch that ends is put back in the index ([`RedisLedger::reindex`]).

use redis::AsyncCommands;

use super::{INDEX_KEY, RedisLedger, record_key, resv_key, settled_key};
use crate::batch::now_secs;
use crate::error::QueueError;

/// How old an index entry without a record must be before `list` removes it: far longer than
/// the moment between the two steps of a creation, and than clock skew between hosts.
pub const DANGLING_GRACE_SECS: u64 = 600;

impl RedisLedger {
    /// Step 1: the batch in the index, scored by its creation time.
    pub(super) async fn index(&self, id: &str, created_at: u64) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        conn.zadd::<_, _, _, ()>(INDEX_KEY, id, created_at).await?;
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
        if created_at + DANGLING_GRACE_SECS as f64 > now_secs() as f64 {
            return;
        }
        let mut conn = self.conn.clone();
        let removed: Result<i64, _> = conn.zrem(INDEX_KEY, id).await;
        match removed {
            Ok(n) if n > 0 => {
                tracing::info!(
                    batch = id,
                    "removed an index entry whose batch record is missing"
                )
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(batch = id, error = %e, "cannot remove a dangling index entry")
            }
        }
    }

    /// Puts an ending batch back in the index if a failover lost its entry (`NX`: an entry
    /// that is there keeps its score). Best effort, as the batch itself is fine without it.
    pub(super) async fn reindex(&self, id: &str) {
        let mut conn = self.conn.clone();
        let created_at: Result<Option<u64>, _> = conn.hget(record_key(id), "created_at").await;
        let Ok(Some(created_at)) = created_at else {
            return;
        };
        let added: Result<i64, _> = redis::cmd("ZADD")
            .arg(INDEX_KEY)
            .arg("NX")
            .arg(created_at)
            .arg(id)
            .query_async(&mut conn)
            .await;
        if let Ok(1) = added {
            tracing::info!(
                batch = id,
                "put back the index entry of a batch that had lost it"
            );
        }
    }
}
