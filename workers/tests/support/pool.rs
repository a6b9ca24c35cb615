//! Worker pool test helpers: an instrumented in-memory queue, a recording handler, job builders,
//! and a pool run bounded in time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use batchyard_jobs::error::QueueError;
use batchyard_jobs::job::{Job, Route};
use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::{DeadLetter, Delivery, Queue, QueueDepth, QueueOptions};
use batchyard_workers::job::pool::{DeliveryHandler, PoolOptions, PoolStats, run_pool};
use tokio_util::sync::CancellationToken;

/// Every pool run in these tests must end within this.
pub const RUN_LIMIT: Duration = Duration::from_secs(20);

pub fn job(seq: u64) -> Job {
    Job {
        batch_id: "batch_test".into(),
        job_id: format!("job-{seq}"),
        seq,
        custom_id: format!("item-{seq}"),
        body: serde_json::Map::new(),
        route: Route::Auto,
        attempt: 0,
        last_error: None,
        prior_cost_usd: 0.0,
        prefetched: None,
        offloaded_to: Vec::new(),
        realtime: false,
        carried: None,
    }
}

pub fn jobs(n: u64) -> Vec<Job> {
    (0..n).map(job).collect()
}

pub fn options(concurrency: usize) -> PoolOptions {
    PoolOptions {
        concurrency,
        exit_when_idle: Some(Duration::from_millis(200)),
        drain_timeout: Duration::from_secs(5),
        consumer: "test-consumer".into(),
        claim_block: Duration::from_millis(20),
        heartbeat: None,
    }
}

/// The [`MemoryQueue`], instrumented: the first `fail_claims` claims fail, and it records
/// how many claims were made and how many deliveries were ever out (claimed, not finished).
pub struct TestQueue {
    inner: MemoryQueue,
    fail_claims: AtomicU32,
    pub claims: AtomicU64,
    outstanding: AtomicUsize,
    pub max_outstanding: AtomicUsize,
    finished: AtomicU64,
    chunk_no: AtomicU64,
}

impl TestQueue {
    pub async fn with_jobs(jobs: Vec<Job>) -> Arc<Self> {
        Self::with_options(jobs, QueueOptions::default()).await
    }

    pub async fn with_options(jobs: Vec<Job>, options: QueueOptions) -> Arc<Self> {
        let q = Arc::new(Self {
            inner: MemoryQueue::new(options),
            fail_claims: AtomicU32::new(0),
            claims: AtomicU64::new(0),
            outstanding: AtomicUsize::new(0),
            max_outstanding: AtomicUsize::new(0),
            finished: AtomicU64::new(0),
            chunk_no: AtomicU64::new(0),
        });
        q.add(jobs).await;
        q
    }

    pub async fn failing_first(jobs: Vec<Job>, n: u32) -> Arc<Self> {
        let q = Self::with_jobs(jobs).await;
        q.fail_claims.store(n, Ordering::SeqCst);
        q
    }

    pub async fn add(&self, jobs: Vec<Job>) {
        for chunk in jobs.chunks(1000) {
            let no = self.chunk_no.fetch_add(1, Ordering::SeqCst) + 1;
            if let Err(e) = self.inner.enqueue_chunk("batch_test", no, chunk).await {
                panic!("enqueue failed: {e}");
            }
        }
    }

    /// (pending, in flight, finished)
    pub async fn counts(&self) -> (u64, u64, u64) {
        match self.inner.depth().await {
            Ok(d) => (d.pending, d.in_flight, self.finished.load(Ordering::SeqCst)),
            Err(e) => panic!("depth failed: {e}"),
        }
    }

    fn finish(&self) {
        self.outstanding.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl Queue for TestQueue {
    async fn enqueue_chunk(&self, b: &str, no: u64, jobs: &[Job]) -> Result<(), QueueError> {
        self.inner.enqueue_chunk(b, no, jobs).await
    }

    async fn stage_chunk(&self, b: &str, no: u64, jobs: &[Job]) -> Result<(), QueueError> {
        self.inner.stage_chunk(b, no, jobs).await
    }

    async fn publish_staged(&self, b: &str, max: usize) -> Result<u64, QueueError> {
        self.inner.publish_staged(b, max).await
    }

    async fn discard_staged(&self, b: &str) -> Result<(), QueueError> {
        self.inner.discard_staged(b).await
    }

    async fn extend(&self, c: &str, held: &[(String, u64)]) -> Result<Vec<String>, QueueError> {
        self.inner.extend(c, held).await
    }

    async fn claim(
        &self,
        consumer: &str,
        max: usize,
        block: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        let n = self.claims.fetch_add(1, Ordering::SeqCst);
        if n < u64::from(self.fail_claims.load(Ordering::SeqCst)) {
            // Mix retryable and non-retryable errors: neither may stop the pool.
            return Err(if n.is_multiple_of(2) {
                QueueError::Unavailable("connection refused (test)".into())
            } else {
                QueueError::Redis("ERR something odd (test)".into())
            });
        }
        let got = self.inner.claim(consumer, max, block).await?;
        let now = self.outstanding.fetch_add(got.len(), Ordering::SeqCst) + got.len();
        self.max_outstanding.fetch_max(now, Ordering::SeqCst);
        Ok(got)
    }

    async fn ack(&self, delivery: &Delivery) -> Result<(), QueueError> {
        self.inner.ack(delivery).await?;
        self.finish();
        Ok(())
    }

    async fn retry_later(
        &self,
        d: &Delivery,
        job: &Job,
        delay: Duration,
    ) -> Result<(), QueueError> {
        self.inner.retry_later(d, job, delay).await?;
        self.finish();
        Ok(())
    }

    async fn dead_letter(&self, d: &Delivery, code: &str, msg: &str) -> Result<(), QueueError> {
        self.inner.dead_letter(d, code, msg).await?;
        self.finish();
        Ok(())
    }

    async fn depth(&self) -> Result<QueueDepth, QueueError> {
        self.inner.depth().await
    }

    async fn dead_letters(&self, limit: usize) -> Result<Vec<DeadLetter>, QueueError> {
        self.inner.dead_letters(limit).await
    }

    async fn park(&self, d: &Delivery, job: &Job) -> Result<(), QueueError> {
        self.inner.park(d, job).await?;
        self.finish();
        Ok(())
    }

    async fn parked(
        &self,
        b: &str,
        cursor: u64,
        max: usize,
    ) -> Result<(Vec<Job>, u64), QueueError> {
        self.inner.parked(b, cursor, max).await
    }

    async fn parked_job(&self, b: &str, id: &str) -> Result<Option<Job>, QueueError> {
        self.inner.parked_job(b, id).await
    }

    async fn parked_count(&self, b: &str) -> Result<u64, QueueError> {
        self.inner.parked_count(b).await
    }

    async fn release(&self, job: &Job) -> Result<bool, QueueError> {
        self.inner.release(job).await
    }

    fn name(&self) -> &str {
        "test"
    }

    async fn forget_batch(&self, batch_id: &str) -> Result<(), QueueError> {
        self.inner.forget_batch(batch_id).await;
        Ok(())
    }
}

/// Records each job it sees and the most jobs running at once; sleeps `work`, then acks.
pub struct RecordingHandler {
    queue: Arc<dyn Queue>,
    work: Duration,
    seen: Mutex<HashMap<u64, u32>>,
    pub running: AtomicUsize,
    pub max_running: AtomicUsize,
    pub started: AtomicUsize,
    pub finished: AtomicUsize,
}

impl RecordingHandler {
    pub fn new(queue: Arc<dyn Queue>, work: Duration) -> Arc<Self> {
        Arc::new(Self {
            queue,
            work,
            seen: Mutex::new(HashMap::new()),
            running: AtomicUsize::new(0),
            max_running: AtomicUsize::new(0),
            started: AtomicUsize::new(0),
            finished: AtomicUsize::new(0),
        })
    }

    pub fn seen(&self) -> HashMap<u64, u32> {
        self.seen.lock().map(|m| m.clone()).unwrap_or_default()
    }
}

#[async_trait]
impl DeliveryHandler for RecordingHandler {
    async fn handle(&self, delivery: Delivery) {
        let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_running.fetch_max(now, Ordering::SeqCst);
        self.started.fetch_add(1, Ordering::SeqCst);
        if let Ok(mut seen) = self.seen.lock() {
            *seen.entry(delivery.job.seq).or_default() += 1;
        }
        if !self.work.is_zero() {
            tokio::time::sleep(self.work).await;
        }
        let _ = self.queue.ack(&delivery).await;
        self.running.fetch_sub(1, Ordering::SeqCst);
        self.finished.fetch_add(1, Ordering::SeqCst);
    }
}

pub async fn run_bounded(
    queue: Arc<dyn Queue>,
    handler: Arc<dyn DeliveryHandler>,
    opts: PoolOptions,
    cancel: CancellationToken,
) -> PoolStats {
    match tokio::time::timeout(RUN_LIMIT, run_pool(queue, handler, opts, cancel)).await {
        Ok(Ok(stats)) => stats,
        Ok(Err(e)) => panic!("the pool failed: {e}"),
        Err(_) => panic!("the pool did not stop within {RUN_LIMIT:?}"),
    }
}
