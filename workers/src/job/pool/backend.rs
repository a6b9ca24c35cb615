//! An apalis [`Backend`] over our [`Queue`]: claims deliveries in batches sized to the free
//! concurrency slots, backs off on claim errors, and ends the worker when it has been idle
//! long enough or the pool is cancelled.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use apalis_core::backend::finalize::Ephemeral;
use apalis_core::backend::{Backend, BackendConfig};
use apalis_core::layers::Identity;
use apalis_core::task::Task;
use apalis_core::task::builder::TaskBuilder;
use apalis_core::task::task_id::{RandomId, TaskId};
use apalis_core::worker::context::WorkerContext;
use batchyard_jobs::error::QueueError;
use batchyard_jobs::queue::{Delivery, Queue};
use batchyard_jobs::retry::{self, RetryPolicy, Retryable as _};
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

/// At most this many deliveries are asked for in one claim.
pub(crate) const MAX_CLAIM_BATCH: usize = 256;
/// Claim-error backoff: full jitter under a ceiling of 100 ms that doubles per consecutive
/// error up to 5 s. Claims are retried for as long as the pool runs, so no attempt bound.
pub(crate) const CLAIM_BACKOFF: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(100),
    cap: Duration::from_secs(5),
    max_attempts: u32::MAX,
};
/// A claim never blocks for less than this, so an idle pool does not spin.
const MIN_CLAIM_BLOCK: Duration = Duration::from_millis(10);

/// Counters shared by the backend, the job function and `run_pool`.
#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) handled: AtomicU64,
    pub(crate) claim_errors: AtomicU64,
    pub(crate) panicked: AtomicU64,
    /// When the last job finished, in microseconds since `base`.
    last_done_us: AtomicU64,
    base: Instant,
}

impl Counters {
    pub(crate) fn new() -> Self {
        Self {
            handled: AtomicU64::new(0),
            claim_errors: AtomicU64::new(0),
            panicked: AtomicU64::new(0),
            last_done_us: AtomicU64::new(0),
            base: Instant::now(),
        }
    }

    /// Records that a job has just finished (or been given up on).
    pub(crate) fn job_done(&self) {
        let us = u64::try_from(self.base.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.last_done_us.fetch_max(us, Ordering::Relaxed);
    }

    pub(crate) fn last_done(&self) -> Instant {
        self.base + Duration::from_micros(self.last_done_us.load(Ordering::Relaxed))
    }
}

type ClaimFuture = Pin<Box<dyn Future<Output = Result<Vec<Delivery>, QueueError>> + Send>>;

enum Fetch {
    /// Nothing under way: the next poll with an empty buffer starts a claim.
    Idle,
    /// A claim is under way; `busy` says whether jobs were in flight when it began.
    Claiming { fut: ClaimFuture, busy: bool },
    /// Waiting out a claim-error backoff.
    BackingOff(Pin<Box<Sleep>>),
    /// Idle exit or cancellation: no more claims, ever.
    Done,
}

pub(crate) struct BackendOptions {
    pub(crate) concurrency: usize,
    pub(crate) claim_block: Duration,
    pub(crate) exit_when_idle: Option<Duration>,
    /// Closed while jobs of this process wait for Redis to take their outcome.
    pub(crate) gate: Option<Arc<super::ClaimGate>>,
    /// The bound on jobs held past their slot and its size: held jobs are not idle time.
    pub(crate) held: (Arc<tokio::sync::Semaphore>, usize),
}

/// How long a closed [`super::ClaimGate`] is waited on before it is looked at again.
const GATE_WAIT: Duration = Duration::from_millis(500);

/// The apalis backend of the pool. Holds at most one claim's worth of claimed-but-unstarted
/// deliveries, and only claims when the buffer is empty and a slot is free, so everything
/// this process holds (running plus waiting) stays within `concurrency`.
pub(crate) struct QueueBackend {
    queue: Arc<dyn Queue>,
    consumer: Arc<str>,
    opts: BackendOptions,
    cancel: CancellationToken,
    counters: Arc<Counters>,
    buffer: VecDeque<Delivery>,
    fetch: Fetch,
    consecutive_errors: u32,
    last_busy: Instant,
}

impl QueueBackend {
    pub(crate) fn new(
        queue: Arc<dyn Queue>,
        consumer: &str,
        opts: BackendOptions,
        cancel: CancellationToken,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            queue,
            consumer: Arc::from(consumer),
            opts,
            cancel,
            counters,
            buffer: VecDeque::new(),
            fetch: Fetch::Idle,
            consecutive_errors: 0,
            last_busy: Instant::now(),
        }
    }

    fn start_claim(&mut self, max: usize, block: Duration, busy: bool) {
        let queue = Arc::clone(&self.queue);
        let consumer = Arc::clone(&self.consumer);
        let fut = async move { queue.claim(&consumer, max, block).await };
        self.fetch = Fetch::Claiming {
            fut: Box::pin(fut),
            busy,
        };
    }

    /// Stops the worker for good: nothing more is claimed, and whatever was claimed but not
    /// started is dropped (the queue reclaims it after its visibility timeout).
    fn finish(&mut self, worker: &WorkerContext) {
        self.fetch = Fetch::Done;
        self.buffer.clear();
        if !worker.is_shutting_down() {
            // Fails only if the worker never started, and then there is nothing to stop.
            let _ = worker.stop();
        }
    }
}

/// The wait after the `consecutive_errors`-th claim error in a row (1 for the first).
pub(crate) fn backoff_delay(consecutive_errors: u32) -> Duration {
    retry::backoff_delay(&CLAIM_BACKOFF, consecutive_errors.saturating_sub(1))
}

impl Backend for QueueBackend {
    type Task = Task<Delivery>;
    type Error = Infallible;

    fn poll_ready(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn poll_next(
        &mut self,
        cx: &mut Context<'_>,
        worker: &WorkerContext,
    ) -> Poll<Option<Result<Self::Task, Self::Error>>> {
        loop {
            if self.cancel.is_cancelled() || worker.is_shutting_down() {
                self.finish(worker);
            }
            if let Some(delivery) = self.buffer.pop_front() {
                // The id matters only if apalis-core's `task-context` feature is on (it then
                // refuses tasks without one); the delivery handle is unique per delivery.
                let id = TaskId::String(delivery.handle.clone());
                let task = TaskBuilder::new(delivery).task_id(id).build();
                return Poll::Ready(Some(Ok(task)));
            }
            match &mut self.fetch {
                Fetch::Done => return Poll::Ready(None),
                Fetch::BackingOff(sleep) => {
                    if sleep.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    // The queue's state was unknown all along: that was not idle time.
                    self.last_busy = Instant::now();
                    self.fetch = Fetch::Idle;
                }
                Fetch::Claiming { fut, busy } => {
                    let busy = *busy;
                    let Poll::Ready(result) = fut.as_mut().poll(cx) else {
                        return Poll::Pending;
                    };
                    self.fetch = Fetch::Idle;
                    match result {
                        Ok(deliveries) => {
                            self.consecutive_errors = 0;
                            if busy || !deliveries.is_empty() || worker.task_count() > 0 {
                                self.last_busy = Instant::now();
                            }
                            self.buffer.extend(deliveries);
                        }
                        Err(e) => {
                            self.consecutive_errors = self.consecutive_errors.saturating_add(1);
                            self.counters.claim_errors.fetch_add(1, Ordering::Relaxed);
                            let delay = backoff_delay(self.consecutive_errors);
                            tracing::warn!(
                                consumer = %self.consumer,
                                error = %e,
                                retryable = e.is_retryable(),
                                consecutive_errors = self.consecutive_errors,
                                backoff_ms = delay.as_millis() as u64,
                                "claiming from the queue failed; backing off"
                            );
                            self.fetch = Fetch::BackingOff(Box::pin(tokio::time::sleep(delay)));
                        }
                    }
                }
                Fetch::Idle => {
                    let in_flight = worker.task_count();
                    let (permits, bound) = &self.opts.held;
                    let waiting = super::held::held_now(permits, *bound);
                    if in_flight > 0 || waiting > 0 {
                        self.last_busy = Instant::now();
                    }
                    if self.opts.gate.as_ref().is_some_and(|g| g.held() > 0) {
                        // Jobs wait to be settled: a new claim would be a call whose spend
                        // can't be counted. Holding unsettled jobs is not idle either.
                        self.last_busy = Instant::now();
                        self.fetch = Fetch::BackingOff(Box::pin(tokio::time::sleep(GATE_WAIT)));
                        continue;
                    }
                    let mut block = self.opts.claim_block;
                    if let Some(idle_limit) = self.opts.exit_when_idle {
                        let idle_since = self.last_busy.max(self.counters.last_done());
                        let idle_for = idle_since.elapsed();
                        if in_flight == 0 && waiting == 0 && idle_for >= idle_limit {
                            tracing::info!(
                                consumer = %self.consumer,
                                idle_ms = idle_for.as_millis() as u64,
                                "the queue has been idle; the worker pool stops"
                            );
                            self.finish(worker);
                            continue;
                        }
                        // Wake up in time to notice the idle limit.
                        block = block.min((idle_limit - idle_for).max(MIN_CLAIM_BLOCK));
                    }
                    // The service was ready, so at least one slot is free; claim for the free
                    // slots only, so claimed-but-unstarted work never exceeds them.
                    let free = self.opts.concurrency.saturating_sub(in_flight).max(1);
                    self.start_claim(free.min(MAX_CLAIM_BATCH), block, in_flight > 0);
                }
            }
        }
    }

    fn poll_close(
        &mut self,
        _cx: &mut Context<'_>,
        _worker: &WorkerContext,
    ) -> Poll<Result<(), Self::Error>> {
        // Dropping the claim future and the buffer leaves those deliveries for reclaim.
        self.fetch = Fetch::Done;
        self.buffer.clear();
        Poll::Ready(Ok(()))
    }
}

impl BackendConfig for QueueBackend {
    type Args = Delivery;
    type Id = RandomId;
    type Kind = Ephemeral;
    type Config = ();
    type Layer = Identity;

    fn config(&self) -> &Self::Config {
        &()
    }

    fn middleware(&mut self, _worker: &mut WorkerContext) -> Self::Layer {
        Identity::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        for n in 1..40 {
            let d = backoff_delay(n);
            assert!(d <= CLAIM_BACKOFF.ceiling(n - 1), "{n}: {d:?}");
        }
        assert!(backoff_delay(1) <= Duration::from_millis(100));
        assert!(backoff_delay(30) <= Duration::from_secs(5));
        assert_eq!(CLAIM_BACKOFF.ceiling(29), Duration::from_secs(5));
    }
}
