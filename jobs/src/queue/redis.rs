//! The Redis Streams queue: one stream plus a consumer group per queue.
//!
//! Keys, all under the hash tag `by:{<queue>}:` so they live in one Redis Cluster slot:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `stream` | stream, group `workers` | pending and in-flight jobs, JSON in field `j` |
//! | `enq` | hash | per-batch high-water mark of applied chunks (idempotent enqueue) |
//! | `delayed` | zset, score = due epoch ms | `<entry id>\|<job JSON>` waiting for a retry delay |
//! | `dead` | zset, score = epoch ms | [`DeadLetter`] JSON, trimmed to the retention |
//! | `staged:<batch>` | list | job JSON of a batch being submitted; once published (named in `fair:b`), its backlog |
//! | `fair:b`, `fair:w`, `fair:n`, `fair:prios`, `fair:vt`, `fair:p:<prio>`, `fair:pt:<prio>:<tenant>`, `fair:s:<slot>` | hash, hash, counter, zsets, hash | the claim order across batches (see `fair`) |
//! | `parked:<batch>` | hash | job id → job JSON parked for the offload lane (a provider batch) |
//! | `lost` | zset, score = epoch ms (client clock) | `<job id>:<entry id>` of dead letters with a [`super::LOST_CODES`] code, for the `lost` gauge |
//!
//! The stream holds only a window of ready jobs ([`QueueOptions::ready_window`]) plus those
//! in flight; the rest wait in their batch's backlog, and depth adds their count (`fair:n`).
//! Acks delete the entry, so `XLEN` is pending plus in flight and depth is exact. Every
//! multi-step change is one Lua script (see `scripts/`), so a retry after a client timeout
//! never half-applies. Times that matter (due dates, retention) come from the Redis clock.
//!
//! - `claim`: the claim path: reclaim from dead consumers, promote due retries, read new
//!   entries, dead-letter undecodable ones.
//! - `wire`: reading stream replies in RESP2 and RESP3 shapes.
//! - `fair`: the claim order: publishing a backlog, refilling the ready window, the shares.
//! - `parking`: the offload lane's parked jobs (`parked:<batch>`, a hash of job JSON).
//! - `scripts`: the Lua scripts, loaded once.

mod claim;
mod fair;
mod parking;
mod scripts;
mod wire;

use std::sync::Mutex;
use std::time::Duration;

use crate::redis_conn::RedisConn;
use async_trait::async_trait;
use redis::{RedisError, Value};
use tokio::time::Instant;

use self::claim::Timers;
use self::scripts::Scripts;
use super::{DeadLetter, Delivery, FairClass, Queue, QueueDepth, QueueOptions, Shares};
use crate::error::QueueError;
use crate::job::Job;
use crate::keys;

/// The consumer group every worker joins.
pub const GROUP: &str = "workers";

/// A consumer name unique across processes and restarts: `<hostname>-<pid>-<ulid>`.
pub fn unique_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_string())
                .filter(|h| !h.is_empty())
        })
        .unwrap_or_else(|| "host".to_string());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        ulid::Ulid::new().to_string().to_lowercase()
    )
}

/// The Redis Streams implementation of [`Queue`].
pub struct RedisQueue {
    conn: RedisConn,
    /// Used for blocking reads when set, so they never delay commands on `conn`.
    blocking: Option<RedisConn>,
    opts: QueueOptions,
    stream: String,
    enq: String,
    delayed: String,
    dead: String,
    /// Lost jobs among the dead letters (zset, score = epoch ms), so they are counted
    /// without reading every letter.
    lost: String,
    scripts: Scripts,
    timers: Mutex<Timers>,
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

impl RedisQueue {
    /// Opens the queue named in `opts`, creating its stream and consumer group if missing.
    pub async fn new(conn: RedisConn, opts: QueueOptions) -> Result<Self, QueueError> {
        let queue = Self {
            conn,
            blocking: None,
            stream: keys::queue_stream(&opts.name),
            enq: keys::queue_enq(&opts.name),
            delayed: keys::queue_delayed(&opts.name),
            dead: keys::queue_dead(&opts.name),
            lost: keys::queue_lost(&opts.name),
            opts,
            scripts: Scripts::new(),
            timers: Mutex::new(Timers::default()),
        };
        queue.ensure_group().await?;
        Ok(queue)
    }

    /// Opens the queue with two connections to `url`: a shared one for everything, and one of
    /// its own for blocking reads (the recommended setup for workers).
    pub async fn open(url: &str, opts: QueueOptions) -> Result<Self, QueueError> {
        let shared = crate::redis_conn::connect(url).await?;
        let blocking = crate::redis_conn::connect(url).await?;
        Ok(Self::new(shared, opts)
            .await?
            .with_blocking_connection(blocking))
    }

    /// Uses `conn` (a connection of its own, e.g. a second [`crate::redis_conn::connect`])
    /// for blocking reads (`XREADGROUP ... BLOCK`). Without one, `claim` never blocks inside
    /// Redis: it polls with short client-side pauses, so the shared connection never stalls.
    pub fn with_blocking_connection(mut self, conn: RedisConn) -> Self {
        self.blocking = Some(conn);
        self
    }

    /// The options this queue was opened with.
    pub fn options(&self) -> &QueueOptions {
        &self.opts
    }

    /// The stream key (for diagnostics and tests).
    pub fn stream_key(&self) -> &str {
        &self.stream
    }

    /// Creates the consumer group (and the stream) if missing. Safe to call any time.
    pub async fn ensure_group(&self) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let res: Result<Value, RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match res {
            Ok(_) => Ok(()),
            Err(e) if e.code() == Some("BUSYGROUP") || e.to_string().contains("BUSYGROUP") => {
                Ok(())
            }
            // Redis at `maxmemory` refuses the create before it sees the group exists. The
            // queue still reads (`status`, `depth`) and its writes fail on their own, so a
            // full Redis doesn't keep a command from starting.
            Err(e) if e.code() == Some("OOM") => {
                tracing::warn!(error = %e, "redis is at maxmemory; the queue opens read-only until it takes writes");
                Ok(())
            }
            Err(e) => Err(e.into()),
        }
    }

    /// Runs a chunk script (enqueue or stage) over `target` and the high-water marks.
    async fn add_chunk(
        &self,
        script: &redis::Script,
        target: &str,
        batch_id: &str,
        chunk_no: u64,
        jobs: &[Job],
    ) -> Result<(), QueueError> {
        let mut invocation = script.key(target);
        invocation.key(&self.enq).arg(batch_id).arg(chunk_no);
        for job in jobs {
            let json = serde_json::to_vec(job)
                .map_err(|e| QueueError::Decode(format!("job could not be encoded: {e}")))?;
            invocation.arg(json);
        }
        let mut conn = self.conn.clone();
        let _: i64 = invocation.invoke_async(&mut conn).await?;
        Ok(())
    }

    fn staged_key(&self, batch_id: &str) -> String {
        keys::queue_staged(&self.opts.name, batch_id)
    }

    /// Forgets a batch's enqueue high-water mark. Call after the batch is finalized.
    pub async fn forget_batch(&self, batch_id: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = redis::cmd("HDEL")
            .arg(&self.enq)
            .arg(batch_id)
            .query_async(&mut conn)
            .await?;
        // Jobs still parked when their batch ended (cancelled, expired) never run: their
        // lines are in the batch's files, and a provider batch's late answers are counted
        // without them.
        let _: i64 = redis::cmd("UNLINK")
            .arg(keys::queue_parked(&self.opts.name, batch_id))
            .query_async(&mut conn)
            .await?;
        Ok(())
    }

    /// Moves at most `promote_chunk` due delayed jobs into the stream; returns how many.
    pub async fn promote_due(&self) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        let moved: u64 = self
            .scripts
            .promote
            .key(&self.delayed)
            .key(&self.stream)
            .arg(self.opts.promote_chunk.max(1))
            .invoke_async(&mut conn)
            .await?;
        let moved = usize::try_from(moved).unwrap_or(usize::MAX);
        let mut t = self.timers();
        t.last_promote = Some(Instant::now());
        t.promote_more = moved >= self.opts.promote_chunk.max(1);
        Ok(moved)
    }

    /// Deletes up to 100 consumers that have nothing pending and were idle at least
    /// `min_idle`, and drops dead letters past retention. Returns the consumers deleted.
    /// Runs by itself every few minutes from `claim`.
    pub async fn housekeeping(&self, min_idle: Duration) -> Result<usize, QueueError> {
        let mut conn = self.conn.clone();
        let (deleted, _dropped): (u64, u64) = self
            .scripts
            .housekeeping
            .key(&self.stream)
            .key(&self.dead)
            .arg(GROUP)
            .arg(millis(min_idle))
            .arg(100)
            .arg(millis(self.opts.dead_letter_retention))
            .invoke_async(&mut conn)
            .await?;
        Ok(usize::try_from(deleted).unwrap_or(usize::MAX))
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(millis)
        .unwrap_or_default()
}

#[async_trait]
impl Queue for RedisQueue {
    async fn enqueue_chunk(
        &self,
        batch_id: &str,
        chunk_no: u64,
        jobs: &[Job],
    ) -> Result<(), QueueError> {
        self.add_chunk(
            &self.scripts.enqueue,
            &self.stream,
            batch_id,
            chunk_no,
            jobs,
        )
        .await
    }

    async fn stage_chunk(
        &self,
        batch_id: &str,
        chunk_no: u64,
        jobs: &[Job],
    ) -> Result<(), QueueError> {
        let staged = self.staged_key(batch_id);
        self.add_chunk(&self.scripts.stage, &staged, batch_id, chunk_no, jobs)
            .await
    }

    async fn publish_staged(&self, batch_id: &str, max: usize) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let moved: u64 = self
            .scripts
            .publish
            .key(self.staged_key(batch_id))
            .key(&self.stream)
            .arg(max.max(1))
            .invoke_async(&mut conn)
            .await?;
        Ok(moved)
    }

    async fn publish_backlog(&self, staging: &str, class: &FairClass) -> Result<u64, QueueError> {
        self.publish_fair(staging, class).await
    }

    async fn shares(&self) -> Result<Shares, QueueError> {
        self.read_shares().await
    }

    async fn discard_staged(&self, batch_id: &str) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        redis::pipe()
            .atomic()
            .del(self.staged_key(batch_id))
            .hdel(&self.enq, batch_id)
            .query_async::<()>(&mut conn)
            .await?;
        Ok(())
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        self.claim_loop(consumer, max, block).await
    }

    async fn extend(
        &self,
        consumer: &str,
        held: &[(String, u64)],
    ) -> Result<Vec<String>, QueueError> {
        if held.is_empty() {
            return Ok(Vec::new());
        }
        let mut invocation = self.scripts.extend.key(&self.stream);
        invocation.arg(GROUP).arg(consumer);
        for (handle, _) in held {
            invocation.arg(handle);
        }
        let mut conn = self.conn.clone();
        Ok(invocation.invoke_async(&mut conn).await?)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .ack
            .key(&self.stream)
            .arg(GROUP)
            .arg(&delivery.handle)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn retry_later(
        &self,
        delivery: &Delivery,
        job: &Job,
        delay: Duration,
    ) -> Result<(), QueueError> {
        let json = serde_json::to_string(job)
            .map_err(|e| QueueError::Decode(format!("job could not be encoded: {e}")))?;
        // Prefixed by the entry id: unique per delivery, and a blind retry of this call
        // rewrites the same member instead of adding a second one.
        let member = format!("{}|{json}", delivery.handle);
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .retry
            .key(&self.stream)
            .key(&self.delayed)
            .arg(GROUP)
            .arg(&delivery.handle)
            .arg(millis(delay))
            .arg(member)
            .invoke_async(&mut conn)
            .await?;
        Ok(())
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        code: &str,
        message: &str,
    ) -> Result<(), QueueError> {
        let letter = DeadLetter {
            job: delivery.job.clone(),
            code: code.to_string(),
            message: message.to_string(),
            at_millis: now_millis(),
        };
        self.store_dead(&delivery.handle, &letter).await
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let mut conn = self.conn.clone();
        let (pending, in_flight, delayed, dead): (i64, i64, i64, i64) = self
            .scripts
            .depth
            .key(&self.stream)
            .key(&self.delayed)
            .key(&self.dead)
            .key(keys::queue_fair_waiting(&self.opts.name))
            .arg(GROUP)
            .arg(millis(self.opts.dead_letter_retention))
            .invoke_async(&mut conn)
            .await?;
        let n = |v: i64| u64::try_from(v).unwrap_or_default();
        Ok(QueueDepth {
            pending: n(pending),
            in_flight: n(in_flight),
            delayed: n(delayed),
            dead: n(dead),
        })
    }

    async fn lost(&self) -> Result<u64, QueueError> {
        let mut conn = self.conn.clone();
        let since = now_millis().saturating_sub(millis(self.opts.dead_letter_retention));
        let n: u64 = redis::cmd("ZCOUNT")
            .arg(&self.lost)
            .arg(since)
            .arg("+inf")
            .query_async(&mut conn)
            .await?;
        Ok(n)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut conn = self.conn.clone();
        let members: Vec<Vec<u8>> = self
            .scripts
            .dead_list
            .key(&self.dead)
            .arg(millis(self.opts.dead_letter_retention))
            .arg(limit)
            .invoke_async(&mut conn)
            .await?;
        Ok(members
            .iter()
            .filter_map(|m| match serde_json::from_slice::<DeadLetter>(m) {
                Ok(letter) => Some(letter),
                Err(e) => {
                    tracing::warn!(queue = %self.opts.name, error = %e, "skipping an undecodable dead letter");
                    None
                }
            })
            .collect())
    }

    async fn park(&self, delivery: &Delivery, job: &Job) -> Result<(), QueueError> {
        self.park_job(delivery, job).await
    }

    async fn parked(
        &self,
        batch_id: &str,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Job>, u64), QueueError> {
        self.parked_page(batch_id, cursor, max).await
    }

    async fn parked_job(&self, batch_id: &str, job_id: &str) -> Result<Option<Job>, QueueError> {
        self.parked_one(batch_id, job_id).await
    }

    async fn parked_count(&self, batch_id: &str) -> Result<u64, QueueError> {
        self.parked_len(batch_id).await
    }

    async fn release(&self, job: &Job) -> Result<bool, QueueError> {
        self.release_job(job).await
    }

    fn name(&self) -> &str {
        &self.opts.name
    }

    async fn forget_batch(&self, batch_id: &str) -> Result<(), QueueError> {
        RedisQueue::forget_batch(self, batch_id).await
    }
}
