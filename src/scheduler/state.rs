//! A pipeline's state in Redis. Every key of one pipeline shares the hash tag `{<name>}`, so
//! they live on one Redis Cluster slot.
//!
//! - `by:pipeline:{<name>}:tick:<unix secs>` / `...:manual:<ulid>`: the claim of one trigger,
//!   set with NX so exactly one scheduler replica (or CLI call) runs it.
//! - `by:pipeline:{<name>}:seen`: hash of document id -> fingerprint already submitted.
//! - `by:pipeline:{<name>}:runs`: the newest runs first, capped.
//! - `by:pipeline:{<name>}:lock`: held while a run picks and submits documents.
//! - `by:pipeline:{<name>}:last_tick`: the newest scheduled tick that ran (unix seconds).
//! - `by:pipeline:{<name>}:last_success`: when a run last ended without failing (unix seconds),
//!   kept apart from the capped history so a long run of failures can't push it out.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use batchyard_jobs::keys;
use batchyard_jobs::redis_conn::RedisConn;
use batchyard_jobs::retry::{RetryPolicy, retry_within};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};

/// Claims outlive any retry or clock skew between replicas by far.
const CLAIM_TTL_SECS: u64 = 7 * 24 * 3600;
/// The run lock's lifetime unless renewed: a holder that died (or lost Redis mid-run) frees
/// it after this. A live run renews it every [`LOCK_RENEW_EVERY`].
const LOCK_TTL_SECS: u64 = 60;
pub const LOCK_RENEW_EVERY: Duration = Duration::from_secs(20);
/// How long writes that must not be lost after a submission (seen documents, the run record)
/// keep retrying while Redis is away.
pub const PERSIST_FOR: Duration = Duration::from_secs(120);
/// Runs kept per pipeline.
pub const HISTORY_LEN: isize = 100;

/// One run of a pipeline, as `pipelines history` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    /// The fire time in the pipeline's timezone (RFC 3339); the trigger time for manual runs.
    pub tick: String,
    /// The same instant as unix seconds, for tools that compare runs.
    #[serde(default)]
    pub tick_unix: i64,
    /// `schedule`, `catch_up` (a missed tick run at start) or `manual`.
    pub trigger: String,
    pub batch_id: Option<String>,
    pub items: u64,
    /// `submitted`, `nothing_new` or `failed`.
    pub outcome: String,
    pub error: Option<String>,
    /// When the run ended (unix seconds).
    pub at: u64,
}

#[derive(Clone)]
pub struct PipelineState {
    conn: RedisConn,
    owner: String,
}

impl PipelineState {
    pub fn new(conn: RedisConn, owner: String) -> Self {
        Self { conn, owner }
    }

    /// True for exactly one caller per (pipeline, trigger).
    pub async fn claim(&self, pipeline: &str, trigger: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(keys::pipeline_trigger(pipeline, trigger))
            .arg(&self.owner)
            .arg("NX")
            .arg("EX")
            .arg(CLAIM_TTL_SECS)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Takes the pipeline's run lock, so two runs (a tick and a manual trigger, or two ticks
    /// of a slow run) never both pick the same new documents. The TTL frees it if the holder
    /// dies. `token` must be unique to this run.
    pub async fn lock(&self, pipeline: &str, token: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let set: Option<String> = redis::cmd("SET")
            .arg(keys::pipeline_lock(pipeline))
            .arg(token)
            .arg("NX")
            .arg("EX")
            .arg(LOCK_TTL_SECS)
            .query_async(&mut conn)
            .await?;
        Ok(set.is_some())
    }

    /// Extends the run lock while this run holds it; `false` when it doesn't any more.
    pub async fn renew_lock(&self, pipeline: &str, token: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let renewed: i64 = redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then \
               return redis.call('EXPIRE', KEYS[1], ARGV[2]) end return 0",
        )
        .key(keys::pipeline_lock(pipeline))
        .arg(token)
        .arg(LOCK_TTL_SECS)
        .invoke_async(&mut conn)
        .await?;
        Ok(renewed == 1)
    }

    /// Releases the run lock if this run still holds it.
    pub async fn unlock(&self, pipeline: &str, token: &str) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::Script::new(
            "if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end return 0",
        )
        .key(keys::pipeline_lock(pipeline))
        .arg(token)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
    }

    /// Remembers the newest scheduled tick that ran, for catch-up after downtime.
    pub async fn note_tick(&self, pipeline: &str, tick_unix: i64) -> redis::RedisResult<()> {
        // Runs of consecutive ticks may finish out of order; the value only moves forward.
        self.raise(&keys::pipeline_last_tick(pipeline), tick_unix)
            .await
    }

    /// Remembers that a run ended well at `at` (unix seconds).
    pub async fn note_success(&self, pipeline: &str, at: u64) -> redis::RedisResult<()> {
        self.raise(
            &keys::pipeline_last_success(pipeline),
            i64::try_from(at).unwrap_or(i64::MAX),
        )
        .await
    }

    /// Sets `key` to `value` unless it already holds a larger number.
    async fn raise(&self, key: &str, value: i64) -> redis::RedisResult<()> {
        let mut conn = self.conn.clone();
        redis::Script::new(
            "local v = tonumber(redis.call('GET', KEYS[1]) or '0') \
             if tonumber(ARGV[1]) > v then redis.call('SET', KEYS[1], ARGV[1]) end \
             return 0",
        )
        .key(key)
        .arg(value)
        .invoke_async::<i64>(&mut conn)
        .await
        .map(|_| ())
    }

    pub async fn last_success(&self, pipeline: &str) -> redis::RedisResult<Option<u64>> {
        let mut conn = self.conn.clone();
        conn.get(keys::pipeline_last_success(pipeline)).await
    }

    /// True when Redis holds no `seen` hash for the pipeline: it never submitted, or Redis lost
    /// its data and the hash must be rebuilt from object storage.
    pub async fn seen_is_empty(&self, pipeline: &str) -> redis::RedisResult<bool> {
        let mut conn = self.conn.clone();
        let n: u64 = conn.hlen(keys::pipeline_seen(pipeline)).await?;
        Ok(n == 0)
    }

    pub async fn last_tick(&self, pipeline: &str) -> redis::RedisResult<Option<i64>> {
        let mut conn = self.conn.clone();
        conn.get(keys::pipeline_last_tick(pipeline)).await
    }

    pub async fn seen(&self, pipeline: &str) -> redis::RedisResult<HashMap<String, String>> {
        let mut conn = self.conn.clone();
        conn.hgetall(keys::pipeline_seen(pipeline)).await
    }

    pub async fn mark_seen(
        &self,
        pipeline: &str,
        items: &[(String, String)],
    ) -> redis::RedisResult<()> {
        if items.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        // Chunked so a huge first run doesn't build one enormous command.
        for chunk in items.chunks(1000) {
            let () = conn
                .hset_multiple(keys::pipeline_seen(pipeline), chunk)
                .await?;
        }
        Ok(())
    }

    pub async fn record(&self, pipeline: &str, run: &RunRecord) -> anyhow::Result<()> {
        let mut conn = self.conn.clone();
        let runs = keys::pipeline_runs(pipeline);
        let () = redis::pipe()
            .atomic()
            .lpush(&runs, serde_json::to_string(run)?)
            .ignore()
            .ltrim(&runs, 0, HISTORY_LEN - 1)
            .ignore()
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// The newest `limit` runs, newest first.
    pub async fn history(&self, pipeline: &str, limit: isize) -> anyhow::Result<Vec<RunRecord>> {
        let mut conn = self.conn.clone();
        let raw: Vec<String> = conn
            .lrange(keys::pipeline_runs(pipeline), 0, limit - 1)
            .await?;
        Ok(raw
            .iter()
            .filter_map(|r| serde_json::from_str(r).ok())
            .collect())
    }
}

/// Runs `op` until it succeeds or `limit` has passed, backing off (full jitter) under a
/// ceiling from 200 ms to 5 s: Redis restarting is weather, and the connection manager
/// reconnects by itself.
pub async fn retrying<T, E, F, Fut>(what: &str, limit: Duration, op: F) -> Result<T, E>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let policy = RetryPolicy {
        base: Duration::from_millis(200),
        cap: Duration::from_secs(5),
        max_attempts: u32::MAX,
    };
    retry_within(&policy, limit, op, |e, delay| {
        tracing::warn!(error = %e, "cannot {what} yet; retrying in {delay:?}");
    })
    .await
}
