//! The worker pool: exactly-once handling with bounded parallelism, idle exit, draining on
//! cancel, surviving claim errors, and a throughput check (`--ignored`, release mode).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchyard_jobs::error::QueueError;
use batchyard_jobs::job::{Job, Route};
use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::{DeadLetter, Delivery, Queue, QueueDepth, QueueOptions};
use batchyard_workers::pool::{DeliveryHandler, PoolOptions, PoolStats, run_pool};
use tokio_util::sync::CancellationToken;

/// Every pool run in these tests must end within this.
const RUN_LIMIT: Duration = Duration::from_secs(20);

fn job(seq: u64) -> Job {
    Job {
        batch_id: "batch_test".into(),
        job_id: format!("job-{seq}"),
        seq,
        custom_id: format!("item-{seq}"),
        body: serde_json::Map::new(),
        route: Route::Auto,
        attempt: 0,
        last_error: None,
    }
}

fn jobs(n: u64) -> Vec<Job> {
    (0..n).map(job).collect()
}

fn options(concurrency: usize) -> PoolOptions {
    PoolOptions {
        concurrency,
        exit_when_idle: Some(Duration::from_millis(200)),
        drain_timeout: Duration::from_secs(5),
        consumer: "test-consumer".into(),
        claim_block: Duration::from_millis(20),
    }
}

/// The [`MemoryQueue`], instrumented: the first `fail_claims` claims fail, and it records
/// how many claims were made and how many deliveries were ever out (claimed, not finished).
struct TestQueue {
    inner: MemoryQueue,
    fail_claims: AtomicU32,
    claims: AtomicU64,
    outstanding: AtomicUsize,
    max_outstanding: AtomicUsize,
    finished: AtomicU64,
    chunk_no: AtomicU64,
}

impl TestQueue {
    async fn with_jobs(jobs: Vec<Job>) -> Arc<Self> {
        let q = Arc::new(Self {
            inner: MemoryQueue::new(QueueOptions::default()),
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

    async fn failing_first(jobs: Vec<Job>, n: u32) -> Arc<Self> {
        let q = Self::with_jobs(jobs).await;
        q.fail_claims.store(n, Ordering::SeqCst);
        q
    }

    async fn add(&self, jobs: Vec<Job>) {
        for chunk in jobs.chunks(1000) {
            let no = self.chunk_no.fetch_add(1, Ordering::SeqCst) + 1;
            if let Err(e) = self.inner.enqueue_chunk("batch_test", no, chunk).await {
                panic!("enqueue failed: {e}");
            }
        }
    }

    /// (pending, in flight, finished)
    async fn counts(&self) -> (u64, u64, u64) {
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

    fn name(&self) -> &str {
        "test"
    }

    async fn forget_batch(&self, batch_id: &str) -> Result<(), QueueError> {
        self.inner.forget_batch(batch_id).await;
        Ok(())
    }
}

/// Records each job it sees and the most jobs running at once; sleeps `work`, then acks.
struct RecordingHandler {
    queue: Arc<dyn Queue>,
    work: Duration,
    seen: Mutex<HashMap<u64, u32>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    started: AtomicUsize,
    finished: AtomicUsize,
}

impl RecordingHandler {
    fn new(queue: Arc<dyn Queue>, work: Duration) -> Arc<Self> {
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

    fn seen(&self) -> HashMap<u64, u32> {
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

async fn run_bounded(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_every_job_exactly_once_within_concurrency() {
    const N: u64 = 500;
    const CONCURRENCY: usize = 8;
    let queue = TestQueue::with_jobs(jobs(N)).await;
    let handler = RecordingHandler::new(queue.clone(), Duration::from_millis(2));

    let stats = run_bounded(
        queue.clone(),
        handler.clone(),
        options(CONCURRENCY),
        CancellationToken::new(),
    )
    .await;

    assert_eq!(stats.handled, N);
    assert_eq!(stats.claim_errors, 0);
    let seen = handler.seen();
    assert_eq!(seen.len() as u64, N, "every job is handled");
    assert!(seen.values().all(|&c| c == 1), "no job is handled twice");
    let max_running = handler.max_running.load(Ordering::SeqCst);
    assert!(max_running <= CONCURRENCY, "max parallelism {max_running}");
    assert!(max_running > 1, "jobs ran in parallel (max {max_running})");
    // Claimed-but-unfinished deliveries never exceed the concurrency.
    let max_out = queue.max_outstanding.load(Ordering::SeqCst);
    assert!(max_out <= CONCURRENCY, "max outstanding {max_out}");
    assert_eq!(queue.counts().await, (0, 0, N));
    // Claims are batched, not one per job.
    let claims = queue.claims.load(Ordering::SeqCst);
    assert!(claims < N, "{claims} claims for {N} jobs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_when_idle_stops_the_pool() {
    // An empty queue: the pool stops after the idle time.
    let queue = TestQueue::with_jobs(Vec::new()).await;
    let handler = RecordingHandler::new(queue.clone(), Duration::ZERO);
    let mut opts = options(4);
    opts.exit_when_idle = Some(Duration::from_millis(150));
    opts.claim_block = Duration::from_secs(2);
    let t0 = Instant::now();
    let stats = run_bounded(
        queue.clone(),
        handler.clone(),
        opts.clone(),
        CancellationToken::new(),
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(stats, PoolStats::default());
    assert!(
        took >= Duration::from_millis(150),
        "stopped early: {took:?}"
    );
    // The idle limit caps the claim's block time: it does not wait out the 2 s block.
    assert!(took < Duration::from_millis(1500), "stopped late: {took:?}");

    // Jobs that keep the pool busy longer than the idle time: it waits for them.
    let queue = TestQueue::with_jobs(jobs(6)).await;
    let handler = RecordingHandler::new(queue.clone(), Duration::from_millis(300));
    let t0 = Instant::now();
    let stats = run_bounded(
        queue.clone(),
        handler.clone(),
        opts,
        CancellationToken::new(),
    )
    .await;
    assert_eq!(stats.handled, 6);
    assert!(
        t0.elapsed() >= Duration::from_millis(600),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_drains_in_flight_jobs() {
    let queue = TestQueue::with_jobs(jobs(3)).await;
    let handler = RecordingHandler::new(queue.clone(), Duration::from_millis(200));
    let mut opts = options(4);
    opts.exit_when_idle = None;
    let cancel = CancellationToken::new();
    let pool = tokio::spawn(run_bounded(
        queue.clone(),
        handler.clone(),
        opts,
        cancel.clone(),
    ));

    let deadline = Instant::now() + Duration::from_secs(5);
    while handler.started.load(Ordering::SeqCst) < 3 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(handler.started.load(Ordering::SeqCst), 3);
    // More work arrives, but cancel comes first: it is not claimed.
    let t0 = Instant::now();
    cancel.cancel();
    queue.add(jobs(5)).await;

    let stats = match pool.await {
        Ok(stats) => stats,
        Err(e) => panic!("pool task failed: {e}"),
    };
    assert_eq!(stats.handled, 3, "in-flight jobs finished and were counted");
    assert_eq!(handler.finished.load(Ordering::SeqCst), 3);
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    let (pending, outstanding, acked) = queue.counts().await;
    assert_eq!((outstanding, acked), (0, 3));
    assert_eq!(pending, 5, "nothing was claimed after cancel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_gives_up_on_jobs_after_the_drain_timeout() {
    let queue = TestQueue::with_jobs(jobs(2)).await;
    let handler = RecordingHandler::new(queue.clone(), Duration::from_secs(30));
    let mut opts = options(4);
    opts.exit_when_idle = None;
    opts.drain_timeout = Duration::from_millis(100);
    let cancel = CancellationToken::new();
    let pool = tokio::spawn(run_bounded(
        queue.clone(),
        handler.clone(),
        opts,
        cancel.clone(),
    ));
    let deadline = Instant::now() + Duration::from_secs(5);
    while handler.started.load(Ordering::SeqCst) < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let t0 = Instant::now();
    cancel.cancel();
    let stats = match pool.await {
        Ok(stats) => stats,
        Err(e) => panic!("pool task failed: {e}"),
    };
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert_eq!(stats.handled, 0);
    // The abandoned handlers were aborted, not left running.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handler.running.load(Ordering::SeqCst), 2, "aborted mid-job");
    assert_eq!(handler.finished.load(Ordering::SeqCst), 0);
    let (_, outstanding, acked) = queue.counts().await;
    assert_eq!((outstanding, acked), (2, 0), "left for reclaim");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_errors_do_not_stop_the_pool() {
    let queue = TestQueue::failing_first(jobs(10), 3).await;
    let handler = RecordingHandler::new(queue.clone(), Duration::ZERO);
    let t0 = Instant::now();
    let stats = run_bounded(
        queue.clone(),
        handler.clone(),
        options(4),
        CancellationToken::new(),
    )
    .await;
    assert_eq!(stats.claim_errors, 3);
    assert_eq!(stats.handled, 10);
    assert_eq!(handler.seen().len(), 10);
    // Backoff 100, 200, 400 ms with equal jitter: at least half of each.
    assert!(
        t0.elapsed() >= Duration::from_millis(350),
        "{:?}",
        t0.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_handler_does_not_stop_the_pool() {
    struct Panicky {
        queue: Arc<dyn Queue>,
        panicked: AtomicBool,
    }
    #[async_trait]
    impl DeliveryHandler for Panicky {
        async fn handle(&self, delivery: Delivery) {
            if delivery.job.seq == 3 && !self.panicked.swap(true, Ordering::SeqCst) {
                panic!("handler bug (test)");
            }
            let _ = self.queue.ack(&delivery).await;
        }
    }
    let queue = TestQueue::with_jobs(jobs(10)).await;
    let handler = Arc::new(Panicky {
        queue: queue.clone(),
        panicked: AtomicBool::new(false),
    });
    let stats = run_bounded(queue.clone(), handler, options(4), CancellationToken::new()).await;
    assert_eq!(stats.handled, 9);
    let (_, outstanding, acked) = queue.counts().await;
    assert_eq!(
        (outstanding, acked),
        (1, 9),
        "the panicked delivery is left for reclaim"
    );
}

#[tokio::test]
async fn rejects_zero_concurrency() {
    let queue = TestQueue::with_jobs(Vec::new()).await;
    let handler = RecordingHandler::new(queue.clone(), Duration::ZERO);
    let res = run_pool(queue, handler, options(0), CancellationToken::new()).await;
    assert!(res.is_err());
}

/// A no-op job: ack and return.
struct AckOnly(Arc<TestQueue>);

#[async_trait]
impl DeliveryHandler for AckOnly {
    async fn handle(&self, delivery: Delivery) {
        let _ = self.0.ack(&delivery).await;
    }
}

/// `cargo test --release -p batchyard-workers --test pool -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput check; run in release mode"]
async fn throughput_100k_noop_jobs() {
    const N: u64 = 100_000;
    for concurrency in [16, 64, 256] {
        let queue = TestQueue::with_jobs(jobs(N)).await;
        let handler = Arc::new(AckOnly(queue.clone()));
        let mut opts = options(concurrency);
        opts.exit_when_idle = Some(Duration::from_millis(50));
        let t0 = Instant::now();
        let stats = run_bounded(queue.clone(), handler, opts, CancellationToken::new()).await;
        let secs = t0.elapsed().as_secs_f64() - 0.05;
        assert_eq!(stats.handled, N);
        println!(
            "concurrency {concurrency}: {N} no-op jobs in {secs:.3} s = {:.0} jobs/s ({} claims)",
            N as f64 / secs,
            queue.claims.load(Ordering::SeqCst)
        );
    }
}

/// A no-op job against any queue: ack and return.
struct AckDyn(Arc<dyn Queue>);

#[async_trait]
impl DeliveryHandler for AckDyn {
    async fn handle(&self, delivery: Delivery) {
        let _ = self.0.ack(&delivery).await;
    }
}

/// End to end through Redis (a fresh queue per run; needs `BATCHYARD_REDIS_URL`):
/// `BATCHYARD_REDIS_URL=redis://127.0.0.1:6379 cargo test --release -p batchyard-workers
/// --test pool throughput_100k_noop_jobs_redis -- --ignored --nocapture`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "throughput check through Redis; needs BATCHYARD_REDIS_URL; run in release mode"]
async fn throughput_100k_noop_jobs_redis() {
    use batchyard_jobs::queue::redis::RedisQueue;
    const N: u64 = 100_000;
    let Ok(url) = std::env::var("BATCHYARD_REDIS_URL") else {
        println!("BATCHYARD_REDIS_URL is not set; skipped");
        return;
    };
    for concurrency in [64, 256] {
        let name = format!(
            "pool-bench-{}",
            ulid::Ulid::new().to_string().to_lowercase()
        );
        let opts = QueueOptions {
            name,
            ..QueueOptions::default()
        };
        let queue: Arc<dyn Queue> = match RedisQueue::open(&url, opts).await {
            Ok(q) => Arc::new(q),
            Err(e) => panic!("redis: {e}"),
        };
        let all = jobs(N);
        for (i, chunk) in all.chunks(1000).enumerate() {
            if let Err(e) = queue
                .enqueue_chunk("batch_bench", i as u64 + 1, chunk)
                .await
            {
                panic!("enqueue: {e}");
            }
        }
        let mut pool_opts = options(concurrency);
        pool_opts.exit_when_idle = Some(Duration::from_millis(200));
        pool_opts.claim_block = Duration::from_millis(100);
        let t0 = Instant::now();
        let stats = run_bounded(
            queue.clone(),
            Arc::new(AckDyn(queue.clone())),
            pool_opts,
            CancellationToken::new(),
        )
        .await;
        let secs = t0.elapsed().as_secs_f64() - 0.2;
        assert_eq!(stats.handled, N);
        let depth = match queue.depth().await {
            Ok(d) => d,
            Err(e) => panic!("depth: {e}"),
        };
        assert_eq!((depth.pending, depth.in_flight), (0, 0));
        println!(
            "redis, concurrency {concurrency}: {N} no-op jobs in {secs:.3} s = {:.0} jobs/s",
            N as f64 / secs
        );
    }
}
