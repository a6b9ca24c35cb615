//! The batch creations reading an uploaded file, `by:upload:{<file id>}:readers` (batch id ->
//! when it started): retention keeps a file while one is registered, and a creation re-checks
//! the file is still there after registering, so of a creation and a collection that meet,
//! at least one sees the other.

use redis::AsyncCommands;

use super::RedisLedger;
use crate::batch::now_secs;
use crate::error::QueueError;
use crate::keys;
use crate::ledger::UPLOAD_READ_SECS;

impl RedisLedger {
    pub(super) async fn add_upload_reader(
        &self,
        file_id: &str,
        batch_id: &str,
    ) -> Result<(), QueueError> {
        let key = keys::upload_readers(file_id);
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .zadd(&key, batch_id, now_secs())
            .ignore()
            .expire(&key, UPLOAD_READ_SECS as i64)
            .ignore()
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    pub(super) async fn remove_upload_reader(
        &self,
        file_id: &str,
        batch_id: &str,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = conn.zrem(keys::upload_readers(file_id), batch_id).await?;
        Ok(())
    }

    /// Whether a creation registered within [`UPLOAD_READ_SECS`] still reads the file (one
    /// that died is not waited for longer).
    pub(super) async fn upload_has_readers(&self, file_id: &str) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let since = now_secs().saturating_sub(UPLOAD_READ_SECS);
        let n: u64 = conn
            .zcount(keys::upload_readers(file_id), since, "+inf")
            .await?;
        Ok(n > 0)
    }
}
