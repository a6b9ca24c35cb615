//! Where each batch's end notification stands (`by:batch:{<id>}:notify`): the end it is for,
//! attempts made, when the next is due, and whether it is done. A claim is one script, so two workers never try
//! the same attempt at once; a worker that stops mid-attempt leaves a hold that lapses.

use std::time::Duration;

use redis::Script;

use super::RedisLedger;
use crate::error::QueueError;
use crate::keys;

const CLAIM: &str = "\
if redis.call('HGET', KEYS[1], 'ended_at') ~= ARGV[3] then \
  redis.call('DEL', KEYS[1]) redis.call('HSET', KEYS[1], 'ended_at', ARGV[3]) end \
if redis.call('HGET', KEYS[1], 'done') then return -1 end \
local next_at = tonumber(redis.call('HGET', KEYS[1], 'next_at') or '0') \
if next_at > tonumber(ARGV[1]) then return -1 end \
redis.call('HSET', KEYS[1], 'next_at', ARGV[2]) \
return redis.call('HINCRBY', KEYS[1], 'attempts', 1)";

impl RedisLedger {
    pub(super) async fn claim_notify(
        &self,
        batch_id: &str,
        ended_at: u64,
        now: u64,
        hold: Duration,
    ) -> Result<Option<u32>, QueueError> {
        let mut conn = self.conn.clone();
        let attempt: i64 = Script::new(CLAIM)
            .key(keys::batch_notify(batch_id))
            .arg(now)
            .arg(now + hold.as_secs().max(1))
            .arg(ended_at)
            .invoke_async(&mut conn)
            .await?;
        Ok(u32::try_from(attempt).ok().filter(|n| *n > 0))
    }

    pub(super) async fn settle_notify(
        &self,
        batch_id: &str,
        retry_at: Option<u64>,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let key = keys::batch_notify(batch_id);
        let (field, value) = match retry_at {
            Some(at) => ("next_at", at),
            None => ("done", 1),
        };
        redis::cmd("HSET")
            .arg(key)
            .arg(field)
            .arg(value)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }
}
