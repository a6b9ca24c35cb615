//! Model health shared by every worker through Redis. Each operation is one Lua script on
//! the Redis server's clock (`TIME`), so workers with skewed clocks agree.
//!
//! Keys, all in one hash slot per model:
//! - `by:health:{<model>}`: hash `state` (`open` or `paused`; absent = closed), `streak`,
//!   `until` (ms), `reason`, `since` (ms). Deleted when the model is healthy again.
//! - `by:health:{<model>}:probe`: the half-open probe's lease (`SET NX PX`).
//! - `by:health:{<model>}:budget`: hash `calls`, `retries`, expiring one window after the
//!   window's first count.

use std::collections::HashMap;

use ::redis::Script;
use async_trait::async_trait;
use batchyard_jobs::redis_conn::RedisConn;

use super::{
    Effect, HealthError, HealthPolicy, ModelHealth, ModelState, bounded, millis, outcome_reason,
};
use crate::provider::ProviderErrorKind;

fn health_key(model: &str) -> String {
    batchyard_jobs::keys::health(model)
}

fn probe_key(model: &str) -> String {
    batchyard_jobs::keys::health_probe(model)
}

fn budget_key(model: &str) -> String {
    batchyard_jobs::keys::health_budget(model)
}

/// The server's clock in milliseconds; every script starts with it.
const NOW_LUA: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"#;

/// KEYS: health, probe. ARGV: lease ms. Returns 1 when admitted.
const ADMIT_LUA: &str = r#"
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'paused' then return 0 end
if st ~= 'open' then return 1 end
if now < tonumber(redis.call('HGET', KEYS[1], 'until') or '0') then return 0 end
if redis.call('SET', KEYS[2], now, 'NX', 'PX', ARGV[1]) then return 1 end
return 0
"#;

/// KEYS: health, probe, budget. ARGV: effect, reason, threshold, cooldown ms, window ms.
const RECORD_LUA: &str = r#"
redis.call('HINCRBY', KEYS[3], 'calls', 1)
if redis.call('PTTL', KEYS[3]) < 0 then redis.call('PEXPIRE', KEYS[3], ARGV[5]) end
local effect = ARGV[1]
if effect == 'ignore' then return 0 end
local st = redis.call('HGET', KEYS[1], 'state')
if st == 'paused' then return 0 end
if effect == 'pause' then
  redis.call('HSET', KEYS[1], 'state', 'paused', 'reason', ARGV[2], 'since', now)
  redis.call('HDEL', KEYS[1], 'until', 'streak')
  redis.call('DEL', KEYS[2])
  return 1
end
if st == 'open' then
  -- Stragglers from before the breaker opened: the cooldown runs its course.
  if now < tonumber(redis.call('HGET', KEYS[1], 'until') or '0') then return 0 end
  if effect == 'success' then
    redis.call('DEL', KEYS[1], KEYS[2])
  else
    redis.call('HSET', KEYS[1], 'until', now + tonumber(ARGV[4]), 'reason', ARGV[2])
    redis.call('DEL', KEYS[2])
  end
  return 1
end
if effect == 'success' then
  redis.call('DEL', KEYS[1])
  return 0
end
local streak = redis.call('HINCRBY', KEYS[1], 'streak', 1)
redis.call('HSET', KEYS[1], 'reason', ARGV[2])
if streak >= tonumber(ARGV[3]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'until', now + tonumber(ARGV[4]), 'since', now)
  redis.call('DEL', KEYS[2])
  return 1
end
return 0
"#;

/// KEYS: budget. ARGV: min, ratio, window ms. Returns 1 when the retry is granted (and counted).
const ALLOW_RETRY_LUA: &str = r#"
local calls = tonumber(redis.call('HGET', KEYS[1], 'calls') or '0')
local retries = tonumber(redis.call('HGET', KEYS[1], 'retries') or '0')
local allowed = math.max(tonumber(ARGV[1]), math.floor(tonumber(ARGV[2]) * calls))
if retries >= allowed then return 0 end
redis.call('HINCRBY', KEYS[1], 'retries', 1)
if redis.call('PTTL', KEYS[1]) < 0 then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return 1
"#;

/// KEYS: health. Returns {state, until, reason, since, now}.
const STATE_LUA: &str = r#"
local f = redis.call('HMGET', KEYS[1], 'state', 'until', 'reason', 'since')
return {f[1] or '', f[2] or '0', f[3] or '', f[4] or '0', tostring(now)}
"#;

/// KEYS: health, probe. ARGV: reason.
const PAUSE_LUA: &str = r#"
if redis.call('HGET', KEYS[1], 'state') ~= 'paused' then
  redis.call('HSET', KEYS[1], 'since', now)
end
redis.call('HSET', KEYS[1], 'state', 'paused', 'reason', ARGV[1])
redis.call('HDEL', KEYS[1], 'until', 'streak')
redis.call('DEL', KEYS[2])
return 1
"#;

fn script(body: &str) -> Script {
    Script::new(&format!("{NOW_LUA}{body}"))
}

/// Model health shared through Redis. Cheap to clone.
#[derive(Clone)]
pub struct RedisHealth {
    conn: RedisConn,
    policy: HealthPolicy,
    admit: Script,
    record: Script,
    allow_retry: Script,
    state: Script,
    pause: Script,
}

impl RedisHealth {
    pub fn new(conn: RedisConn, policy: HealthPolicy) -> Self {
        Self {
            conn,
            policy,
            admit: script(ADMIT_LUA),
            record: script(RECORD_LUA),
            allow_retry: Script::new(ALLOW_RETRY_LUA),
            state: script(STATE_LUA),
            pause: script(PAUSE_LUA),
        }
    }

    pub fn policy(&self) -> &HealthPolicy {
        &self.policy
    }

    /// The retry budget's counts in the current window: (calls, retries).
    pub async fn budget(&self, model: &str) -> Result<(u64, u64), HealthError> {
        let mut conn = self.conn.clone();
        let map: HashMap<String, u64> = ::redis::cmd("HGETALL")
            .arg(budget_key(model))
            .query_async(&mut conn)
            .await?;
        let get = |k: &str| map.get(k).copied().unwrap_or(0);
        Ok((get("calls"), get("retries")))
    }
}

fn parse_ms(s: &str) -> Result<u64, HealthError> {
    s.parse::<u64>()
        .map_err(|_| HealthError::Store(format!("a stored time is not a number: {s:?}")))
}

#[async_trait]
impl ModelHealth for RedisHealth {
    async fn admit(&self, model: &str) -> Result<bool, HealthError> {
        let mut conn = self.conn.clone();
        let admitted: i64 = self
            .admit
            .key(health_key(model))
            .key(probe_key(model))
            .arg(millis(self.policy.probe_lease))
            .invoke_async(&mut conn)
            .await?;
        Ok(admitted == 1)
    }

    async fn record(
        &self,
        model: &str,
        outcome: Result<(), ProviderErrorKind>,
        reason: &str,
    ) -> Result<(), HealthError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .record
            .key(health_key(model))
            .key(probe_key(model))
            .key(budget_key(model))
            .arg(Effect::of(outcome).as_str())
            .arg(outcome_reason(outcome, reason))
            .arg(self.policy.threshold())
            .arg(millis(self.policy.cooldown))
            .arg(millis(self.policy.window))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn allow_retry(&self, model: &str) -> Result<bool, HealthError> {
        let ratio = if self.policy.retry_budget_ratio.is_finite() {
            self.policy.retry_budget_ratio.max(0.0)
        } else {
            0.0
        };
        let mut conn = self.conn.clone();
        let granted: i64 = self
            .allow_retry
            .key(budget_key(model))
            .arg(self.policy.retry_budget_min)
            .arg(ratio)
            .arg(millis(self.policy.window))
            .invoke_async(&mut conn)
            .await?;
        Ok(granted == 1)
    }

    async fn state(&self, model: &str) -> Result<ModelState, HealthError> {
        let mut conn = self.conn.clone();
        let (state, until, reason, since, now): (String, String, String, String, String) = self
            .state
            .key(health_key(model))
            .invoke_async(&mut conn)
            .await?;
        match state.as_str() {
            "paused" => Ok(ModelState::Paused {
                reason,
                since_ms: parse_ms(&since)?,
            }),
            "open" => {
                let until_ms = parse_ms(&until)?;
                if parse_ms(&now)? < until_ms {
                    Ok(ModelState::CoolingDown { until_ms })
                } else {
                    Ok(ModelState::HalfOpen)
                }
            }
            _ => Ok(ModelState::Healthy),
        }
    }

    async fn resume(&self, model: &str) -> Result<(), HealthError> {
        let mut conn = self.conn.clone();
        let _: i64 = ::redis::cmd("DEL")
            .arg(health_key(model))
            .arg(probe_key(model))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn pause(&self, model: &str, reason: &str) -> Result<(), HealthError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .pause
            .key(health_key(model))
            .key(probe_key(model))
            .arg(bounded(reason))
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }
}
