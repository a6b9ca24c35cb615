//! The offload lane's enqueued-token accounts: one hash per model, a field per provider batch
//! not yet ended (set before it is sent, cleared once it ended), plus `held_until` after the
//! provider refused one for its quota (or `learned_limit`, when the refusal named the limit). Setting and clearing are idempotent, so a worker that
//! stops between the two leaves nothing the next lease holder can't put right.

use redis::AsyncCommands;

use super::RedisLedger;
use crate::error::QueueError;
use crate::keys;
use crate::ledger::Enqueued;

const HELD_UNTIL: &str = "held_until";
const LEARNED_LIMIT: &str = "learned_limit";

impl RedisLedger {
    pub(super) async fn set_enqueued_share(
        &self,
        model: &str,
        member: &str,
        tokens: Option<u64>,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let key = keys::offload_enqueued(model);
        match tokens {
            Some(n) => conn.hset::<_, _, _, ()>(&key, member, n).await?,
            // A share that ends frees room: whatever the provider refused may fit now.
            None => conn.hdel::<_, _, ()>(&key, &[member, HELD_UNTIL]).await?,
        }
        Ok(())
    }

    pub(super) async fn hold_enqueued_account(
        &self,
        model: &str,
        until_unix: u64,
        limit: Option<u64>,
    ) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let key = keys::offload_enqueued(model);
        match limit {
            Some(n) => conn.hset::<_, _, _, ()>(key, LEARNED_LIMIT, n).await?,
            None => {
                conn.hset::<_, _, _, ()>(key, HELD_UNTIL, until_unix)
                    .await?
            }
        }
        Ok(())
    }

    pub(super) async fn enqueued_account(&self, model: &str) -> Result<Enqueued, QueueError> {
        let mut conn = self.conn.clone();
        let fields: Vec<(String, u64)> = conn.hgetall(keys::offload_enqueued(model)).await?;
        let mut account = Enqueued::default();
        for (field, n) in fields {
            if field == HELD_UNTIL {
                account.held_until = n;
            } else if field == LEARNED_LIMIT {
                account.learned_limit = n;
            } else {
                account.tokens = account.tokens.saturating_add(n);
            }
        }
        Ok(account)
    }
}
