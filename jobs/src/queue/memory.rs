//! In-process queue for `batchyard run` with no Redis.
//!
//! Same contract as the Redis queue: published batches drawn in the fair-share order
//! ([`super::fair::Backlogs`]) behind retried and released jobs, an in-flight map with a visibility
//! timeout (a job not acked in time is handed to the next claimer with its delivery count
//! raised), delayed jobs promoted in bounded chunks, and dead letters kept for the retention.
//! `claim` sleeps on a [`Notify`] (and the next due time), never in a busy loop.
//!
//! - `state`: what the queue holds, and the reclaim, promote and prune steps of a claim.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::{Mutex, Notify};
use tokio::time::Instant;

use super::{DeadLetter, Delivery, FairClass, Queue, QueueDepth, QueueOptions, Shares};
use crate::error::QueueError;
use crate::job::Job;

/// Hard cap on dead letters kept in memory, on top of the retention.
const MAX_DEAD_LETTERS: usize = 100_000;

mod state;

use self::state::{State, Waiting};

/// The in-process implementation of [`Queue`].
pub struct MemoryQueue {
    opts: QueueOptions,
    state: Mutex<State>,
    notify: Notify,
}

impl MemoryQueue {
    pub fn new(opts: QueueOptions) -> Self {
        Self {
            opts,
            state: Mutex::new(State::default()),
            notify: Notify::new(),
        }
    }

    /// Forgets a batch's enqueue high-water mark. Call after the batch is finalized.
    pub async fn forget_batch(&self, batch_id: &str) {
        let mut state = self.state.lock().await;
        state.high_water.remove(batch_id);
        state.parked.remove(batch_id);
    }

    /// Moves at most `promote_chunk` due delayed jobs to pending; returns how many.
    pub async fn promote_due(&self) -> usize {
        let moved = {
            let mut state = self.state.lock().await;
            state.promote(Instant::now(), self.opts.promote_chunk.max(1))
        };
        if moved > 0 {
            self.notify.notify_waiters();
        }
        moved
    }
}

fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or_default()
}

#[async_trait]
impl Queue for MemoryQueue {
    async fn enqueue_chunk(
        &self,
        batch_id: &str,
        chunk_no: u64,
        jobs: &[Job],
    ) -> Result<(), QueueError> {
        {
            let mut state = self.state.lock().await;
            if !state.take_chunk(batch_id, chunk_no) {
                return Ok(());
            }
            state.pending.extend(jobs.iter().map(|job| Waiting {
                job: job.clone(),
                deliveries: 0,
            }));
        }
        self.notify.notify_waiters();
        Ok(())
    }

    async fn extend(
        &self,
        _consumer: &str,
        held: &[(String, u64)],
    ) -> Result<Vec<String>, QueueError> {
        let mut state = self.state.lock().await;
        let deadline = Instant::now() + self.opts.visibility_timeout;
        let mut lost = Vec::new();
        for (handle, deliveries) in held {
            let id: Option<u64> = handle.parse().ok();
            // A reclaim keeps the handle and raises the count: a different count is another
            // consumer's delivery. One no longer in flight was acked (or retried, parked)
            // since the caller looked: done, not lost.
            match id.and_then(|id| {
                state
                    .in_flight
                    .get(&id)
                    .map(|e| (id, e.deliveries, e.deadline))
            }) {
                Some((id, n, old)) if n == *deliveries => {
                    state.expiries.remove(&(old, id));
                    state.expiries.insert((deadline, id), ());
                    if let Some(entry) = state.in_flight.get_mut(&id) {
                        entry.deadline = deadline;
                    }
                }
                Some(_) => lost.push(handle.clone()),
                None => {}
            }
        }
        Ok(lost)
    }

    async fn stage_chunk(
        &self,
        batch_id: &str,
        chunk_no: u64,
        jobs: &[Job],
    ) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        if !state.take_chunk(batch_id, chunk_no) {
            return Ok(());
        }
        state
            .staged
            .entry(batch_id.to_string())
            .or_default()
            .extend(jobs.iter().cloned());
        Ok(())
    }

    async fn publish_staged(&self, batch_id: &str, max: usize) -> Result<u64, QueueError> {
        let moved = {
            let mut state = self.state.lock().await;
            let Some(staged) = state.staged.get_mut(batch_id) else {
                return Ok(0);
            };
            let take: Vec<Job> = staged.drain(..max.max(1).min(staged.len())).collect();
            if staged.is_empty() {
                state.staged.remove(batch_id);
            }
            let moved = take.len() as u64;
            state
                .pending
                .extend(take.into_iter().map(|job| Waiting { job, deliveries: 0 }));
            moved
        };
        if moved > 0 {
            self.notify.notify_waiters();
        }
        Ok(moved)
    }

    async fn publish_backlog(&self, staging: &str, class: &FairClass) -> Result<u64, QueueError> {
        let waiting = {
            let mut state = self.state.lock().await;
            let jobs = state.staged.remove(staging).unwrap_or_default();
            state.backlogs.publish(staging, class, jobs);
            state.backlogs.len()
        };
        self.notify.notify_waiters();
        Ok(waiting as u64)
    }

    async fn shares(&self) -> Result<Shares, QueueError> {
        let state = self.state.lock().await;
        let mut shares = Shares {
            active: state.backlogs.active(),
            weights: state.backlogs.weights(),
            ..Shares::default()
        };
        state.served.fill(now_millis() / 1000, &mut shares);
        Ok(shares)
    }

    async fn discard_staged(&self, batch_id: &str) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        state.staged.remove(batch_id);
        state.high_water.remove(batch_id);
        Ok(())
    }

    async fn claim(
        &self,
        _consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let mut out = Vec::new();
        if max == 0 {
            return Ok(out);
        }
        let deadline = Instant::now() + block;
        loop {
            let notified = self.notify.notified();
            let wake_at = {
                let mut state = self.state.lock().await;
                let now = Instant::now();
                let visibility = self.opts.visibility_timeout;
                state.reclaim(now, visibility, max, &mut out);
                state.promote(now, self.opts.promote_chunk.max(1));
                while out.len() < max {
                    let Some(waiting) = state.pending.pop_front().or_else(|| {
                        let (job, staging, tenant) = state.backlogs.pop()?;
                        state.served.record(now_millis() / 1000, &staging, &tenant);
                        Some(Waiting { job, deliveries: 0 })
                    }) else {
                        break;
                    };
                    let id = state.next_id();
                    state.deliver(
                        id,
                        waiting.job,
                        waiting.deliveries + 1,
                        now + visibility,
                        &mut out,
                    );
                }
                if !out.is_empty() || now >= deadline {
                    return Ok(out);
                }
                // `notified` was created before the lock was taken, so an enqueue that
                // happens after this check still wakes us (notify_waiters semantics).
                state.next_wakeup().map_or(deadline, |at| at.min(deadline))
            };
            // Either woken by an enqueue, or the next due/expiry time or the deadline passed.
            let _ = tokio::time::timeout_at(wake_at, notified).await;
        }
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.state.lock().await.take_in_flight(&delivery.handle);
        Ok(())
    }

    async fn retry_later(
        &self,
        delivery: &Delivery,
        job: &Job,
        delay: Duration,
    ) -> Result<(), QueueError> {
        {
            let mut state = self.state.lock().await;
            state.take_in_flight(&delivery.handle);
            let id = state.next_id();
            state
                .delayed
                .insert((Instant::now() + delay, id), job.clone());
        }
        // A sleeping claimer must recompute its wake-up time for the new due date.
        self.notify.notify_waiters();
        Ok(())
    }

    async fn park(&self, delivery: &Delivery, job: &Job) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        state.take_in_flight(&delivery.handle);
        state
            .parked
            .entry(job.batch_id.clone())
            .or_default()
            .insert(job.job_id.clone(), job.clone());
        Ok(())
    }

    async fn parked(
        &self,
        batch_id: &str,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Job>, u64), QueueError> {
        let state = self.state.lock().await;
        let Some(jobs) = state.parked.get(batch_id) else {
            return Ok((Vec::new(), 0));
        };
        let start = usize::try_from(cursor).unwrap_or(usize::MAX);
        let page: Vec<Job> = jobs
            .values()
            .skip(start)
            .take(max.max(1))
            .cloned()
            .collect();
        let next = start + page.len();
        let next = if next >= jobs.len() { 0 } else { next as u64 };
        Ok((page, next))
    }

    async fn parked_job(&self, batch_id: &str, job_id: &str) -> Result<Option<Job>, QueueError> {
        let state = self.state.lock().await;
        Ok(state
            .parked
            .get(batch_id)
            .and_then(|jobs| jobs.get(job_id))
            .cloned())
    }

    async fn parked_count(&self, batch_id: &str) -> Result<u64, QueueError> {
        let state = self.state.lock().await;
        Ok(state.parked.get(batch_id).map_or(0, |j| j.len() as u64))
    }

    async fn release(&self, job: &Job) -> Result<bool, QueueError> {
        {
            let mut state = self.state.lock().await;
            let Some(jobs) = state.parked.get_mut(&job.batch_id) else {
                return Ok(false);
            };
            if jobs.remove(&job.job_id).is_none() {
                return Ok(false);
            }
            if jobs.is_empty() {
                state.parked.remove(&job.batch_id);
            }
            state.pending.push_back(Waiting {
                job: job.clone(),
                deliveries: 0,
            });
        }
        self.notify.notify_waiters();
        Ok(true)
    }

    async fn dead_letter(
        &self,
        delivery: &Delivery,
        code: &str,
        message: &str,
    ) -> Result<(), QueueError> {
        let mut state = self.state.lock().await;
        state.take_in_flight(&delivery.handle);
        let now = Instant::now();
        state.dead.push_back((
            now,
            DeadLetter {
                job: delivery.job.clone(),
                code: code.to_string(),
                message: message.to_string(),
                at_millis: now_millis(),
            },
        ));
        state.prune_dead(now, self.opts.dead_letter_retention);
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        let mut state = self.state.lock().await;
        state.prune_dead(Instant::now(), self.opts.dead_letter_retention);
        let n = |len: usize| u64::try_from(len).unwrap_or(u64::MAX);
        Ok(QueueDepth {
            pending: n(state.pending.len() + state.backlogs.len()),
            in_flight: n(state.in_flight.len()),
            delayed: n(state.delayed.len()),
            dead: n(state.dead.len()),
        })
    }

    async fn lost(&self) -> Result<u64, QueueError> {
        let mut state = self.state.lock().await;
        state.prune_dead(Instant::now(), self.opts.dead_letter_retention);
        let lost = state.dead.iter().filter(|(_, l)| super::is_lost(&l.code));
        Ok(lost.count() as u64)
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        let mut state = self.state.lock().await;
        state.prune_dead(Instant::now(), self.opts.dead_letter_retention);
        Ok(state
            .dead
            .iter()
            .rev()
            .take(limit)
            .map(|(_, letter)| letter.clone())
            .collect())
    }

    fn name(&self) -> &str {
        &self.opts.name
    }

    async fn forget_batch(&self, batch_id: &str) -> Result<(), QueueError> {
        MemoryQueue::forget_batch(self, batch_id).await;
        Ok(())
    }
}
