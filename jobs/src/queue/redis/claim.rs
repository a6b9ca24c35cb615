//! The claim path of the Redis queue: reclaim from dead consumers, promote due retries,
//! refill the ready window from the backlogs (the fair-share order), read new entries, and
//! turn undecodable entries into dead letters.

use std::sync::MutexGuard;
use std::time::Duration;

use redis::Value;
use tokio::time::Instant;

use super::wire::{self, RawEntry};
use super::{GROUP, RedisQueue, millis, now_millis};
use crate::error::QueueError;
use crate::job::Job;
use crate::queue::{DeadLetter, Delivery};

/// At most this many idle entries are reclaimed per claim.
const RECLAIM_BATCH: usize = 100;
/// Delayed jobs are promoted at most this often per process (unless more are known due).
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// The ready window is topped up at least this often per process while claims run, so it
/// rarely runs dry between refills; a read that comes back short refills at once.
const REFILL_EVERY: Duration = Duration::from_millis(50);
/// Housekeeping (idle consumers, old dead letters) runs at most this often per process.
const HOUSEKEEPING_EVERY: Duration = Duration::from_secs(300);
/// A consumer with nothing pending and idle this long is deleted from the group.
const CONSUMER_MAX_IDLE: Duration = Duration::from_secs(3600);
/// Without a dedicated connection, an empty read is retried after this pause, doubling up to
/// [`MAX_POLL`]. A `BLOCK` on the shared, multiplexed connection would hold up every command
/// queued behind it, and Redis ends blocks on its `hz` timer (100 ms at the default `hz 10`),
/// so even `BLOCK 50` stalled other commands by 80-200 ms when measured.
const FIRST_POLL: Duration = Duration::from_millis(10);
const MAX_POLL: Duration = Duration::from_millis(100);
/// Longest single `BLOCK` on a dedicated connection; short enough to promote due retries.
const DEDICATED_BLOCK_SLICE: Duration = PROMOTE_EVERY;

/// When this process last ran each periodic step.
#[derive(Debug, Default)]
pub(super) struct Timers {
    pub(super) last_reclaim: Option<Instant>,
    pub(super) reclaim_more: bool,
    pub(super) last_promote: Option<Instant>,
    pub(super) promote_more: bool,
    pub(super) last_refill: Option<Instant>,
    pub(super) last_housekeeping: Option<Instant>,
}

/// The consumer group (or the whole stream) is missing, e.g. after a Redis restart that
/// lost its data. Script errors carry the code only in their text.
fn is_nogroup(e: &QueueError) -> bool {
    matches!(e, QueueError::Redis(msg) if msg.contains("NOGROUP"))
}

impl RedisQueue {
    pub(super) fn timers(&self) -> MutexGuard<'_, Timers> {
        self.timers.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether this call should run the reclaim; reserves the slot so concurrent claims in
    /// this process do not all run it.
    fn take_reclaim_turn(&self, now: Instant) -> bool {
        let every = self.opts.visibility_timeout / 4;
        let mut t = self.timers();
        let due = t.reclaim_more || t.last_reclaim.is_none_or(|at| now >= at + every);
        if due {
            t.last_reclaim = Some(now);
            t.reclaim_more = false;
        }
        due
    }

    fn take_promote_turn(&self, now: Instant) -> bool {
        let mut t = self.timers();
        let due = t.promote_more || t.last_promote.is_none_or(|at| now >= at + PROMOTE_EVERY);
        if due {
            t.last_promote = Some(now);
            t.promote_more = false;
        }
        due
    }

    fn take_refill_turn(&self, now: Instant) -> bool {
        let mut t = self.timers();
        let due = t.last_refill.is_none_or(|at| now >= at + REFILL_EVERY);
        if due {
            t.last_refill = Some(now);
        }
        due
    }

    /// Reads new entries: first without waiting; when that comes back short, refills the
    /// window from the backlogs and reads again, waiting up to `block` only if still empty.
    async fn read_ready(
        &self,
        consumer: &str,
        max: usize,
        block: Option<Duration>,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        if self.take_refill_turn(Instant::now()) {
            self.refill().await?;
        }
        let want = max - out.len();
        let entries = self.read_group(consumer, want, None).await?;
        let short = entries.len() < want;
        self.decode(entries, out).await;
        if short && out.len() < max {
            let moved = self.refill().await?;
            let block = if out.is_empty() && moved == 0 {
                block
            } else {
                None
            };
            let entries = self.read_group(consumer, max - out.len(), block).await?;
            self.decode(entries, out).await;
        }
        Ok(())
    }

    fn take_housekeeping_turn(&self, now: Instant) -> bool {
        let mut t = self.timers();
        let due = t
            .last_housekeeping
            .is_none_or(|at| now >= at + HOUSEKEEPING_EVERY);
        if due {
            t.last_housekeeping = Some(now);
        }
        due
    }

    async fn reclaim(&self, consumer: &str, max: usize) -> Result<Vec<RawEntry>, QueueError> {
        let count = max.min(RECLAIM_BATCH);
        let mut conn = self.conn.clone();
        let reply: Value = self
            .scripts
            .reclaim
            .key(&self.stream)
            .arg(GROUP)
            .arg(consumer)
            .arg(millis(self.opts.visibility_timeout))
            .arg(count)
            .invoke_async(&mut conn)
            .await?;
        let entries = wire::reclaimed_entries(&reply);
        if entries.len() >= count {
            self.timers().reclaim_more = true;
        }
        Ok(entries)
    }

    async fn read_group(
        &self,
        consumer: &str,
        count: usize,
        block: Option<Duration>,
    ) -> Result<Vec<RawEntry>, QueueError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(consumer)
            .arg("COUNT")
            .arg(count);
        if let Some(block) = block {
            // BLOCK 0 would wait forever: always at least 1 ms.
            cmd.arg("BLOCK").arg(millis(block).max(1));
        }
        cmd.arg("STREAMS").arg(&self.stream).arg(">");
        let mut conn = match (&self.blocking, block) {
            (Some(dedicated), Some(_)) => dedicated.clone(),
            _ => self.conn.clone(),
        };
        let reply: Value = cmd.query_async(&mut conn).await?;
        Ok(wire::read_group_entries(&reply))
    }

    /// Turns raw entries into deliveries; undecodable ones become `malformed_job` dead
    /// letters. A failure to dead-letter one is logged and left for a later reclaim.
    async fn decode(&self, entries: Vec<RawEntry>, out: &mut Vec<Delivery>) {
        for entry in entries {
            match serde_json::from_slice::<Job>(&entry.job) {
                Ok(job) => out.push(Delivery {
                    handle: entry.id,
                    job,
                    deliveries: entry.deliveries,
                }),
                Err(e) => {
                    let letter = DeadLetter {
                        job: wire::placeholder_job(&entry.job),
                        code: crate::codes::MALFORMED_JOB.into(),
                        message: format!(
                            "stream entry {} could not be decoded as a job: {e}; raw: {}",
                            entry.id,
                            wire::excerpt(&entry.job, 512)
                        ),
                        at_millis: now_millis(),
                    };
                    tracing::warn!(queue = %self.opts.name, entry = %entry.id, error = %e, "malformed job moved to dead letters");
                    if let Err(err) = self.store_dead(&entry.id, &letter).await {
                        tracing::warn!(queue = %self.opts.name, entry = %entry.id, error = %err, "could not dead-letter a malformed job; it will be reclaimed and retried");
                    }
                }
            }
        }
    }

    pub(super) async fn store_dead(
        &self,
        handle: &str,
        letter: &DeadLetter,
    ) -> Result<(), QueueError> {
        let member = serde_json::to_string(letter)
            .map_err(|e| QueueError::Decode(format!("dead letter could not be encoded: {e}")))?;
        let mut conn = self.conn.clone();
        let _: i64 = self
            .scripts
            .dead
            .key(&self.stream)
            .key(&self.dead)
            .arg(GROUP)
            .arg(handle)
            .arg(millis(self.opts.dead_letter_retention))
            .arg(member)
            .invoke_async(&mut conn)
            .await?;
        if crate::queue::is_lost(&letter.code) {
            // Counted apart for `lost()`; trimmed to the retention like the letters.
            let since = letter
                .at_millis
                .saturating_sub(millis(self.opts.dead_letter_retention));
            // The letter is kept already: a failure here only undercounts a metric, and must
            // not send the job round again.
            let indexed: Result<(), _> = redis::pipe()
                .zadd(
                    &self.lost,
                    format!("{}:{handle}", letter.job.job_id),
                    letter.at_millis,
                )
                .ignore()
                .zrembyscore(&self.lost, "-inf", format!("({since}"))
                .ignore()
                .query_async(&mut conn)
                .await;
            if let Err(e) = indexed {
                tracing::warn!(queue = %self.opts.name, error = %e, "a lost job was dead-lettered but not counted in the lost gauge");
            }
        }
        Ok(())
    }

    /// One pass of reclaim, promotion and a read, blocking at most `block`.
    async fn claim_once(
        &self,
        consumer: &str,
        max: usize,
        block: Option<Duration>,
        out: &mut Vec<Delivery>,
    ) -> Result<(), QueueError> {
        let now = Instant::now();
        if self.take_reclaim_turn(now) {
            let entries = match self.reclaim(consumer, max - out.len()).await {
                Ok(entries) => entries,
                Err(e) => {
                    // Let the next call try again rather than wait a full interval.
                    self.timers().reclaim_more = true;
                    return Err(e);
                }
            };
            self.decode(entries, out).await;
            if self.take_housekeeping_turn(now)
                && let Err(e) = self.housekeeping(CONSUMER_MAX_IDLE).await
            {
                tracing::warn!(queue = %self.opts.name, error = %e, "queue housekeeping failed");
            }
        }
        if self.take_promote_turn(now)
            && let Err(e) = self.promote_due().await
        {
            self.timers().promote_more = true;
            return Err(e);
        }
        if out.len() < max {
            let block = if out.is_empty() { block } else { None };
            self.read_ready(consumer, max, block, out).await?;
        }
        Ok(())
    }

    pub(super) async fn claim_loop(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let deadline = Instant::now() + block;
        let mut regrouped = false;
        let mut pause = FIRST_POLL;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let block = match &self.blocking {
                Some(_) if !remaining.is_zero() => Some(remaining.min(DEDICATED_BLOCK_SLICE)),
                _ => None,
            };
            match self.claim_once(consumer, max, block, &mut out).await {
                Ok(()) => {}
                Err(e) if is_nogroup(&e) && !regrouped => {
                    // The group is gone (Redis restarted without persistence): recreate it.
                    tracing::warn!(queue = %self.opts.name, "consumer group missing; recreating it");
                    self.ensure_group().await?;
                    regrouped = true;
                    continue;
                }
                Err(e) if out.is_empty() => return Err(e),
                Err(e) => {
                    // Deliveries already taken must reach the worker; report the error later.
                    tracing::warn!(queue = %self.opts.name, error = %e, "claim step failed after taking jobs");
                    return Ok(out);
                }
            }
            let remaining = deadline.saturating_duration_since(Instant::now());
            if !out.is_empty() || remaining.is_zero() {
                return Ok(out);
            }
            if self.blocking.is_none() {
                tokio::time::sleep(pause.min(remaining)).await;
                pause = (pause * 2).min(MAX_POLL);
            }
        }
    }
}
