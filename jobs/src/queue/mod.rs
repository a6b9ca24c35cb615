//! The queue boundary: where jobs wait between submit and a worker.
//!
//! Two implementations share one contract: [`memory::MemoryQueue`] for `batchyard run` with no
//! Redis, and [`redis::RedisQueue`] (Redis Streams plus a consumer group) for everything else.
//! Delivery is at least once: a job is acked only after its outcome is stored, and a job whose
//! worker vanished is reclaimed after the visibility timeout.
//!
//! - [`fair`]: the claim order across batches (priority, tenant weights, batches), shared
//!   by both: a published batch's [`fair::FairClass`], the [`fair::Shares`] status shows, and
//!   the in-process scheduler.
//! - [`memory`]: the in-process queue. [`redis`]: the Redis Streams queue.

pub mod fair;
pub mod memory;
pub mod redis;

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub use self::fair::{FairClass, Shares};
use crate::error::QueueError;
use crate::job::Job;

/// A job handed to one consumer. Ack it, retry it later, or dead-letter it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The backend's handle for this delivery (a stream entry id for Redis).
    pub handle: String,
    pub job: Job,
    /// How many times this job has been delivered, counting this one. 1 on first delivery;
    /// more means it was reclaimed from a worker that died or stalled.
    pub deliveries: u64,
}

impl Delivery {
    /// Times this job was taken back from a consumer that did not finish it.
    pub fn reclaims(&self) -> u64 {
        self.deliveries.saturating_sub(1)
    }
}

/// Exact counts of one queue, by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueDepth {
    /// Waiting to be claimed.
    pub pending: u64,
    /// Claimed by a consumer and not yet acked.
    pub in_flight: u64,
    /// Waiting for a retry delay to pass.
    pub delayed: u64,
    /// Dead letters kept for inspection and replay.
    pub dead: u64,
}

/// Tunables shared by every queue implementation.
#[derive(Debug, Clone)]
pub struct QueueOptions {
    pub name: String,
    /// A claimed job not acked within this time is reclaimed by another consumer.
    pub visibility_timeout: Duration,
    /// After this many reclaims a job is dead-lettered as `worker_lost`.
    pub max_reclaims: u64,
    /// Dead letters older than this are dropped.
    pub dead_letter_retention: Duration,
    /// At most this many delayed jobs are promoted per step.
    pub promote_chunk: usize,
    /// A submit renews its batch's lease every third of this; once it lapses, a worker's
    /// sweep ends the unsealed batch as `submit_interrupted` (or finishes publishing it).
    pub submit_lease: Duration,
    /// Jobs kept ready in the stream ahead of the workers; the rest wait in their batch's
    /// backlog and are drawn in the fair-share order. Smaller reacts faster to a new or
    /// higher-priority batch, larger costs fewer refills.
    pub ready_window: usize,
}

impl Default for QueueOptions {
    fn default() -> Self {
        Self {
            name: "default".into(),
            visibility_timeout: Duration::from_secs(300),
            max_reclaims: 3,
            dead_letter_retention: Duration::from_secs(7 * 24 * 3600),
            promote_chunk: 1000,
            submit_lease: Duration::from_secs(120),
            ready_window: 256,
        }
    }
}

/// A dead letter as kept by the queue.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub job: Job,
    pub code: String,
    pub message: String,
    pub at_millis: u64,
}

/// Dead-letter codes of jobs that were lost rather than finished: a job that kept taking its
/// workers down (or outlived them), and an entry no worker could decode. Every other dead
/// letter is an item that ended with an ordinary error (`validation_failed`,
/// `budget_exhausted`, ...), already in `errors.jsonl` and kept only for replay.
pub const LOST_CODES: [&str; 2] = [crate::codes::WORKER_LOST, crate::codes::MALFORMED_JOB];

pub fn is_lost(code: &str) -> bool {
    LOST_CODES.contains(&code)
}

#[async_trait]
pub trait Queue: Send + Sync {
    /// Adds one chunk of a batch's jobs. Idempotent per `(batch_id, chunk_no)`: a chunk that
    /// was already applied (say, the client timed out while the server applied it) is skipped.
    /// Chunks of one batch must be enqueued in increasing `chunk_no` order.
    async fn enqueue_chunk(
        &self,
        batch_id: &str,
        chunk_no: u64,
        jobs: &[Job],
    ) -> Result<(), QueueError>;

    /// Stages one chunk of a batch being submitted: kept apart and invisible to workers until
    /// [`Queue::publish_staged`], so a submit cut off halfway leaves nothing that can run.
    /// Idempotent per `(batch_id, chunk_no)` and ordered like [`Queue::enqueue_chunk`].
    async fn stage_chunk(
        &self,
        batch_id: &str,
        chunk_no: u64,
        jobs: &[Job],
    ) -> Result<(), QueueError>;

    /// Moves at most `max` staged jobs of a sealed batch into the queue, oldest first; returns
    /// how many moved (0: none left). Each step is atomic, so any process may finish it.
    async fn publish_staged(&self, batch_id: &str, max: usize) -> Result<u64, QueueError>;

    /// Publishes a sealed batch's staged jobs: they become the batch's backlog in the claim
    /// order (see [`fair`]) under `class`, drawn by workers in fair-share order. Atomic and
    /// idempotent; returns how many jobs wait in the backlog. The default moves them straight
    /// into the queue, first in first out (queues without a claim order).
    async fn publish_backlog(&self, staging: &str, class: &FairClass) -> Result<u64, QueueError> {
        let _ = class;
        let mut moved = 0;
        loop {
            match self.publish_staged(staging, 1000).await? {
                0 => return Ok(moved),
                n => moved += n,
            }
        }
    }

    /// The share of the workers each batch and tenant is getting (see [`fair::Shares`]).
    /// The default knows none.
    async fn shares(&self) -> Result<Shares, QueueError> {
        Ok(Shares::default())
    }

    /// Drops a batch's staged jobs and its enqueue high-water mark (an abandoned submit).
    async fn discard_staged(&self, batch_id: &str) -> Result<(), QueueError>;

    /// Claims up to `max` jobs for `consumer`, waiting up to `block` for one to arrive.
    /// Reclaims jobs of dead consumers and promotes due delayed jobs along the way.
    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError>;

    /// Heartbeat: keeps the deliveries `consumer` still holds (`(handle, deliveries)` pairs)
    /// claimed for another visibility timeout, so a long call is never reclaimed while its
    /// worker lives. Returns the handles another consumer holds now (it reclaimed them); a
    /// handle acked meanwhile (the heartbeat looked just before its ack) is done, not lost.
    async fn extend(
        &self,
        consumer: &str,
        held: &[(String, u64)],
    ) -> Result<Vec<String>, QueueError>;

    /// Marks a delivery done and forgets it.
    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError>;

    /// Acks this delivery and schedules `job` (usually the same job with `attempt + 1`) to
    /// be delivered again after `delay`.
    async fn retry_later(
        &self,
        delivery: &Delivery,
        job: &Job,
        delay: Duration,
    ) -> Result<(), QueueError>;

    /// Acks this delivery and keeps the job as a dead letter with a typed code.
    async fn dead_letter(
        &self,
        delivery: &Delivery,
        code: &str,
        message: &str,
    ) -> Result<(), QueueError>;

    /// Exact counts by state.
    async fn depth(&self) -> Result<QueueDepth, QueueError>;

    /// The newest dead letters, at most `limit`.
    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError>;

    /// Of the dead letters within retention, those with a [`LOST_CODES`] code: what an
    /// operator alerts on, unlike `depth().dead`, which also counts ordinary failures.
    /// The default reads every letter; the real queues keep a count instead.
    async fn lost(&self) -> Result<u64, QueueError> {
        let letters = self.dead_letters(usize::MAX).await?;
        Ok(letters.iter().filter(|l| is_lost(&l.code)).count() as u64)
    }

    /// Acks this delivery and parks `job` for the offload lane: kept apart, invisible to
    /// `claim`, until [`Queue::release`] puts it back. Parking a parked job replaces it.
    async fn park(&self, delivery: &Delivery, job: &Job) -> Result<(), QueueError>;

    /// Up to about `max` of a batch's parked jobs, from `cursor` (0 to start); the next cursor
    /// comes back with them (0: no more). Jobs parked or released meanwhile may be missed or
    /// seen twice, as with Redis `HSCAN`.
    async fn parked(
        &self,
        batch_id: &str,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Job>, u64), QueueError>;

    /// One parked job, if it is parked.
    async fn parked_job(&self, batch_id: &str, job_id: &str) -> Result<Option<Job>, QueueError>;

    /// How many of a batch's jobs are parked.
    async fn parked_count(&self, batch_id: &str) -> Result<u64, QueueError>;

    /// Moves a parked job back into the queue as `job` (say, carrying a provider batch's
    /// answer). Atomic; false, and nothing enqueued, when the job was not parked (already
    /// released), so releasing twice never runs an item twice.
    async fn release(&self, job: &Job) -> Result<bool, QueueError>;

    /// The queue's name, for status and metrics.
    fn name(&self) -> &str;

    /// Drops what the queue keeps per batch (the enqueue high-water mark, jobs still parked)
    /// once the batch is finalized, so Redis memory stays bounded.
    async fn forget_batch(&self, batch_id: &str) -> Result<(), QueueError>;
}
