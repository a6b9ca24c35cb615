//! Dead letters come in two kinds: items that ended with an ordinary error (kept for replay)
//! and jobs that were lost. `lost()` counts only the second, on both queues, so the `lost`
//! gauge is something to alert on and the dead-letter count is not.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::{Delivery, Queue, QueueOptions};
use batchyard_testkit::TestRedis;
use support::queue_redis::{claim_n, open};
use support::{jobs, unique_name};

const CODES: [&str; 4] = [
    "validation_failed",
    "budget_exhausted",
    "worker_lost",
    "validation_failed",
];

async fn dead_letter_all(q: &dyn Queue, ds: &[Delivery]) {
    for (d, code) in ds.iter().zip(CODES) {
        q.dead_letter(d, code, "test").await.unwrap();
    }
}

#[tokio::test]
async fn memory_queue_counts_lost_jobs_apart_from_ordinary_failures() {
    let q = MemoryQueue::new(QueueOptions::default());
    q.enqueue_chunk("b", 0, &jobs("b", 0..4, 1)).await.unwrap();
    let ds = q.claim("w", 4, Duration::from_millis(50)).await.unwrap();
    assert_eq!(ds.len(), 4);
    assert_eq!(q.lost().await.unwrap(), 0);
    dead_letter_all(&q, &ds).await;
    assert_eq!(q.depth().await.unwrap().dead, 4);
    assert_eq!(q.lost().await.unwrap(), 1);
}

#[tokio::test]
async fn redis_queue_counts_lost_jobs_apart_from_ordinary_failures() {
    let Some(redis) = TestRedis::start_or_external("lost") else {
        return;
    };
    let name = unique_name("lost");
    let q = open(&redis, &name, |_| {}).await;
    q.enqueue_chunk("b", 0, &jobs("b", 0..4, 1)).await.unwrap();
    let ds = claim_n(&q, "w", 4, 4).await;
    assert_eq!(q.lost().await.unwrap(), 0);
    dead_letter_all(&q, &ds).await;
    assert_eq!(q.depth().await.unwrap().dead, 4);
    assert_eq!(q.lost().await.unwrap(), 1);
    // Another process sees the same count (it is in Redis, not in this client).
    let other = open(&redis, &name, |_| {}).await;
    assert_eq!(other.lost().await.unwrap(), 1);
    // Past the retention, a lost job is no longer counted.
    let short = open(&redis, &name, |o| {
        o.dead_letter_retention = Duration::from_millis(1)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(short.lost().await.unwrap(), 0);
}
