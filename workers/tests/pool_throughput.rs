//! Worker pool throughput checks (`--ignored`, release mode): no-op jobs through the in-memory
//! queue, and end to end through Redis.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchyard_jobs::queue::{Delivery, Queue, QueueOptions};
use batchyard_workers::job::pool::DeliveryHandler;
use support::pool::{TestQueue, jobs, options, run_bounded};
use tokio_util::sync::CancellationToken;

/// A no-op job: ack and return.
struct AckOnly(Arc<TestQueue>);

#[async_trait]
impl DeliveryHandler for AckOnly {
    async fn handle(&self, delivery: Delivery) {
        let _ = self.0.ack(&delivery).await;
    }
}

/// `cargo test --release -p batchyard-workers --test pool_throughput -- --ignored --nocapture`
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
/// --test pool_throughput throughput_100k_noop_jobs_redis -- --ignored --nocapture`
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
