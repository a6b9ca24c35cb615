//! The leases the ledger hands out (the finalizer's, the offload lane's): one holder at a
//! time, renewed by its holder, lapsing when the holder stops.

use std::time::Duration;

use redis::Script;

use super::RedisLedger;
use crate::error::QueueError;

impl RedisLedger {
    /// Takes the lease at `key`, or extends it when this owner already holds it.
    pub(super) async fn lease(
        &self,
        key: &str,
        owner: &str,
        ttl: Duration,
    ) -> Result<bool, QueueError> {
        let mut conn = self.conn.clone();
        let held: i64 = Script::new(
            "if redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) then return 1 end \
             if redis.call('GET', KEYS[1]) == ARGV[1] then \
               redis.call('PEXPIRE', KEYS[1], ARGV[2]) return 1 end \
             return 0",
        )
        .key(key)
        .arg(owner)
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX))
        .invoke_async(&mut conn)
        .await?;
        Ok(held == 1)
    }
}
