//! Helpers shared by the Redis queue tests: open a queue on a test server, enqueue, claim,
//! ack, and an expected depth.

use std::time::{Duration, Instant};

use batchyard_jobs::queue::redis::RedisQueue;
use batchyard_jobs::queue::{Delivery, Queue, QueueDepth, QueueOptions};
use batchyard_jobs::redis_conn::connect;
use futures::{StreamExt, TryStreamExt, stream};

use batchyard_testkit::TestRedis;

use crate::support::jobs;

pub const SHORT: Duration = Duration::from_millis(100);

pub async fn open(
    redis: &TestRedis,
    name: &str,
    tune: impl FnOnce(&mut QueueOptions),
) -> RedisQueue {
    let mut opts = QueueOptions {
        name: name.to_string(),
        ..QueueOptions::default()
    };
    tune(&mut opts);
    RedisQueue::new(connect(redis.url()).await.unwrap(), opts)
        .await
        .unwrap()
}

pub async fn enqueue(q: &RedisQueue, batch: &str, total: u64, chunk: u64, pad: usize) {
    for (no, start) in (0..total).step_by(chunk as usize).enumerate() {
        let end = (start + chunk).min(total);
        q.enqueue_chunk(batch, no as u64, &jobs(batch, start..end, pad))
            .await
            .unwrap();
    }
}

/// Claims until `want` deliveries are in hand; bounded in calls and time.
pub async fn claim_n(
    q: &RedisQueue,
    consumer: &str,
    want: usize,
    per_call: usize,
) -> Vec<Delivery> {
    let started = Instant::now();
    let mut out = Vec::with_capacity(want);
    for _ in 0..10_000 {
        if out.len() >= want || started.elapsed() > Duration::from_secs(60) {
            break;
        }
        let got = q
            .claim(consumer, per_call.min(want - out.len()), SHORT)
            .await;
        out.extend(got.expect("claim must not fail"));
    }
    assert_eq!(out.len(), want, "claimed {} of {want}", out.len());
    out
}

pub async fn ack_all(q: &RedisQueue, ds: &[Delivery]) {
    stream::iter(ds)
        .map(|d| q.ack(d))
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

pub fn depth(pending: u64, in_flight: u64, delayed: u64, dead: u64) -> QueueDepth {
    QueueDepth {
        pending,
        in_flight,
        delayed,
        dead,
    }
}
