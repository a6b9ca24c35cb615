//! The worker pool: exactly-once handling with bounded parallelism, idle exit, draining on
//! cancel, surviving claim errors. Throughput checks are in `pool_throughput.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchyard_jobs::queue::{Delivery, Queue, QueueOptions};
use batchyard_workers::job::pool::{
    DeliveryHandler, HELD_PER_SLOT, Held, PoolOptions, PoolStats, run_pool,
};
use support::pool::{RecordingHandler, TestQueue, jobs, options, run_bounded};
use tokio_util::sync::CancellationToken;

/// Runs a pool in a task; cancel it with the token.
fn spawn_pool(
    queue: Arc<TestQueue>,
    handler: Arc<dyn DeliveryHandler>,
    opts: PoolOptions,
) -> (tokio::task::JoinHandle<PoolStats>, CancellationToken) {
    let cancel = CancellationToken::new();
    let pool = tokio::spawn(run_bounded(queue, handler, opts, cancel.clone()));
    (pool, cancel)
}

/// Waits (5 s at most) until `counter` reaches `n`.
async fn wait_for(counter: &AtomicUsize, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while counter.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
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
    let (pool, cancel) = spawn_pool(queue.clone(), handler.clone(), opts);

    wait_for(&handler.started, 3).await;
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
    let (pool, cancel) = spawn_pool(queue.clone(), handler.clone(), opts);
    wait_for(&handler.started, 2).await;
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

/// Frees its slot at once, then waits `wait` (as a job waits for its segment) and acks.
struct Releasing {
    queue: Arc<dyn Queue>,
    wait: Duration,
    seen: Mutex<HashMap<u64, u32>>,
    held: AtomicUsize,
    max_held: AtomicUsize,
}

#[async_trait]
impl DeliveryHandler for Releasing {
    async fn handle(&self, delivery: Delivery) {
        self.handle_held(delivery, Held::inline()).await;
    }

    async fn handle_held(&self, delivery: Delivery, mut held: Held) {
        if let Ok(mut seen) = self.seen.lock() {
            *seen.entry(delivery.job.seq).or_default() += 1;
        }
        held.release_slot().await;
        let now = self.held.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_held.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(self.wait).await;
        self.held.fetch_sub(1, Ordering::SeqCst);
        let _ = self.queue.ack(&delivery).await;
    }
}

/// Jobs that free their slot let 2 slots run 40 jobs side by side, at most the pool's bound
/// at once; their claims stay renewed past the visibility timeout (none is reclaimed), the
/// idle exit and a cancel both wait for them, and each is acked once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_that_free_their_slot_keep_their_claims_and_finish() {
    const N: u64 = 40;
    let short = QueueOptions {
        visibility_timeout: Duration::from_millis(250),
        ..QueueOptions::default()
    };
    let releasing = |queue: Arc<TestQueue>| {
        Arc::new(Releasing {
            queue,
            wait: Duration::from_millis(1000),
            seen: Mutex::new(HashMap::new()),
            held: AtomicUsize::new(0),
            max_held: AtomicUsize::new(0),
        })
    };
    let queue = TestQueue::with_options(jobs(N), short.clone()).await;
    let handler = releasing(queue.clone());
    let mut opts = options(2);
    opts.heartbeat = Some(Duration::from_millis(60));
    opts.exit_when_idle = Some(Duration::from_millis(100));
    let t0 = Instant::now();
    let stats = run_bounded(
        queue.clone(),
        handler.clone(),
        opts.clone(),
        CancellationToken::new(),
    )
    .await;
    let took = t0.elapsed();
    assert_eq!(stats.handled, N);
    let seen = handler.seen.lock().unwrap().clone();
    assert_eq!(seen.len() as u64, N);
    assert!(
        seen.values().all(|&n| n == 1),
        "reclaimed while held: {seen:?}"
    );
    assert_eq!(queue.counts().await, (0, 0, N));
    let max_held = handler.max_held.load(Ordering::SeqCst);
    assert_eq!(max_held, 2 * HELD_PER_SLOT, "the pool's bound");
    // Each job holding its slot to the end would take 20 s.
    assert!(took < Duration::from_secs(6), "{took:?}");

    // A cancel waits for the held jobs (within the drain timeout) and claims nothing more.
    let queue = TestQueue::with_options(jobs(6), short).await;
    let handler = releasing(queue.clone());
    opts.exit_when_idle = None;
    let (pool, cancel) = spawn_pool(queue.clone(), handler.clone(), opts);
    wait_for(&handler.held, 6).await;
    cancel.cancel();
    let stats = pool.await.unwrap();
    assert_eq!(stats.handled, 6);
    assert_eq!(queue.counts().await, (0, 0, 6));
}
