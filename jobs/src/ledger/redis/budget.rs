//! Budget reservations on Redis. Each operation is one script over the batch hash and its
//! `:resv` hash, which share the batch's `{id}` hash tag, so each is atomic on one slot and
//! workers racing for the last dollars of a budget can't overshoot it together.

use crate::redis_conn::RedisConn;
use redis::Script;

use super::{record_key, resv_key};
use crate::batch::now_secs;
use crate::error::QueueError;
use crate::ledger::Reservation;

/// Hashed once per ledger; Redis loads them on first use and again after a restart.
pub(super) struct Scripts {
    reserve: Script,
    commit: Script,
    set_budget: Script,
}

impl Scripts {
    pub fn new() -> Self {
        Self {
            reserve: Script::new(include_str!("reserve.lua")),
            commit: Script::new(include_str!("commit.lua")),
            set_budget: Script::new(include_str!("set_budget.lua")),
        }
    }

    pub async fn reserve(
        &self,
        conn: &mut RedisConn,
        batch_id: &str,
        job_id: &str,
        nanos: i64,
    ) -> Result<Reservation, QueueError> {
        let reply: Vec<i64> = self
            .reserve
            .key(record_key(batch_id))
            .key(resv_key(batch_id))
            .arg(job_id)
            .arg(nanos)
            .arg(now_secs())
            .invoke_async(conn)
            .await?;
        match reply.as_slice() {
            [-1] => Err(QueueError::BatchNotFound(batch_id.to_string())),
            [0] => Ok(Reservation::Unlimited),
            [1] => Ok(Reservation::Granted),
            &[2, spent_nanos, reserved_nanos, budget_nanos] => Ok(Reservation::Denied {
                spent_nanos,
                reserved_nanos,
                budget_nanos,
            }),
            other => Err(QueueError::Redis(format!(
                "the reserve script answered {other:?}, which this version does not know"
            ))),
        }
    }

    pub async fn commit(
        &self,
        conn: &mut RedisConn,
        batch_id: &str,
        job_id: &str,
        actual_nanos: i64,
    ) -> Result<(), QueueError> {
        let found: i64 = self
            .commit
            .key(record_key(batch_id))
            .key(resv_key(batch_id))
            .arg(job_id)
            .arg(actual_nanos)
            .invoke_async(conn)
            .await?;
        found_or_missing(found, batch_id)
    }

    pub async fn set_budget(
        &self,
        conn: &mut RedisConn,
        batch_id: &str,
        budget_usd: Option<f64>,
    ) -> Result<(), QueueError> {
        let mut invocation = self.set_budget.key(record_key(batch_id));
        match budget_usd {
            // The same text `create` writes, so both round-trip through `parse_record`.
            Some(b) => invocation.arg("1").arg(b.to_string()),
            None => invocation.arg("0"),
        };
        let found: i64 = invocation.invoke_async(conn).await?;
        found_or_missing(found, batch_id)
    }
}

fn found_or_missing(found: i64, batch_id: &str) -> Result<(), QueueError> {
    if found < 0 {
        return Err(QueueError::BatchNotFound(batch_id.to_string()));
    }
    Ok(())
}
