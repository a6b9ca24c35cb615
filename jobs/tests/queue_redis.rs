//! The Redis Streams queue against a real redis-server (one per test): throughput, depth
//! accounting, keys, promotion, idempotent enqueue, blocking claims. Reclaim, dead-letter and
//! restart tests are in `queue_redis_recovery.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use batchyard_jobs::queue::redis::{RedisQueue, unique_consumer_name};
use batchyard_jobs::queue::{Queue, QueueOptions};
use batchyard_testkit::TestRedis;
use futures::{StreamExt, TryStreamExt, stream};
use support::queue_redis::{SHORT, ack_all, claim_n, depth, enqueue, open};
use support::{jobs, unique_name};

/// Claims and acks `n` jobs in rounds of 100, topping the queue up so its depth stays put.
async fn throughput(q: &RedisQueue, batch: &str, first_chunk: u64, n: u64) -> f64 {
    let started = Instant::now();
    for round in 0..n / 100 {
        let ds = claim_n(q, "bench", 100, 100).await;
        ack_all(q, &ds).await;
        let seq = 1_000_000 + round * 100;
        q.enqueue_chunk(batch, first_chunk + round, &jobs(batch, seq..seq + 100, 40))
            .await
            .unwrap();
    }
    n as f64 / started.elapsed().as_secs_f64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claim_cost_does_not_grow_with_queue_depth() {
    let Some(redis) = TestRedis::start_or_external("claim_cost_does_not_grow_with_queue_depth")
    else {
        return;
    };
    let shallow = open(&redis, &unique_name("shallow"), |_| {}).await;
    let deep = open(&redis, &unique_name("deep"), |_| {}).await;
    enqueue(&shallow, "s", 1_000, 1_000, 40).await;
    let fill = Instant::now();
    enqueue(&deep, "d", 200_000, 1_000, 40).await;
    let fill = fill.elapsed();
    assert_eq!(deep.depth().await.unwrap().pending, 200_000);

    let shallow_rate = throughput(&shallow, "s", 10, 5_000).await;
    let deep_rate = throughput(&deep, "d", 1_000, 5_000).await;
    println!(
        "claim+ack throughput: {shallow_rate:.0} jobs/s at 1k pending, {deep_rate:.0} jobs/s at 200k pending (enqueue of 200k took {fill:?})"
    );
    assert!(
        deep_rate >= 0.5 * shallow_rate,
        "deep queue too slow: {deep_rate:.0}/s vs {shallow_rate:.0}/s"
    );
    assert_eq!(deep.depth().await.unwrap(), depth(200_000, 0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_of_100k_and_20k_simultaneous_retries() {
    let Some(redis) = TestRedis::start_or_external("burst_of_100k_and_20k_simultaneous_retries")
    else {
        return;
    };
    let q = open(&redis, &unique_name("burst"), |_| {}).await;
    let started = Instant::now();
    enqueue(&q, "b", 100_000, 1_000, 20).await;
    let enqueued = started.elapsed();
    let ds = claim_n(&q, "w1", 100_000, 1_000).await;
    let claimed = started.elapsed() - enqueued;
    let seqs: HashSet<u64> = ds.iter().map(|d| d.job.seq).collect();
    assert_eq!(seqs.len(), 100_000, "every job exactly once");
    assert_eq!(q.depth().await.unwrap(), depth(0, 100_000, 0, 0));

    let (retry, done) = ds.split_at(20_000);
    stream::iter(retry)
        .map(|d| {
            let mut job = d.job.clone();
            job.attempt += 1;
            let q = &q;
            async move { q.retry_later(d, &job, Duration::ZERO).await }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    ack_all(&q, done).await;
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 20_000, 0));

    let started = Instant::now();
    let again = claim_n(&q, "w2", 20_000, 1_000).await;
    println!(
        "burst: enqueue 100k {enqueued:?}, claim 100k {claimed:?}, promote+claim 20k due retries {:?}",
        started.elapsed()
    );
    assert!(
        again
            .iter()
            .all(|d| d.job.attempt == 1 && d.deliveries == 1)
    );
    let seqs: HashSet<u64> = again.iter().map(|d| d.job.seq).collect();
    assert_eq!(seqs, retry.iter().map(|d| d.job.seq).collect());
    assert_eq!(q.depth().await.unwrap(), depth(0, 20_000, 0, 0));
}

#[test]
fn consumer_names_are_unique() {
    let a = unique_consumer_name();
    let b = unique_consumer_name();
    assert_ne!(a, b);
    assert!(a.contains(&format!("-{}-", std::process::id())), "{a}");
}

#[tokio::test]
async fn depth_is_exact_through_a_sequence() {
    let Some(redis) = TestRedis::start_or_external("depth") else {
        return;
    };
    let q = open(&redis, &unique_name("depth"), |_| {}).await;
    enqueue(&q, "b", 10, 10, 10).await;
    assert_eq!(q.depth().await.unwrap(), depth(10, 0, 0, 0));
    let ds = claim_n(&q, "w", 3, 3).await;
    assert_eq!(q.depth().await.unwrap(), depth(7, 3, 0, 0));
    q.ack(&ds[0]).await.unwrap();
    q.retry_later(&ds[1], &ds[1].job, Duration::from_secs(60))
        .await
        .unwrap();
    q.dead_letter(&ds[2], "invalid_request", "bad")
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(7, 0, 1, 1));
    // A claim neither promotes the not-yet-due retry nor counts anything twice.
    let more = claim_n(&q, "w", 1, 1).await;
    assert_eq!(more.len(), 1);
    assert_eq!(q.depth().await.unwrap(), depth(6, 1, 1, 1));
}

#[tokio::test]
async fn no_per_job_keys_remain_and_old_dead_letters_are_dropped() {
    let Some(redis) = TestRedis::start_or_external("keys") else {
        return;
    };
    let name = unique_name("keys");
    let q = open(&redis, &name, |o| {
        o.dead_letter_retention = Duration::from_secs(1);
    })
    .await;
    let mut raw = redis.raw().await;
    enqueue(&q, "b", 50, 20, 10).await;
    let ds = claim_n(&q, "w", 50, 50).await;
    ack_all(&q, &ds[1..]).await;
    q.dead_letter(&ds[0], "invalid_request", "bad")
        .await
        .unwrap();

    let prefix = format!("by:{{{name}}}:");
    let keys: HashSet<String> = redis::cmd("KEYS")
        .arg(format!("by:{{{name}}}:*"))
        .query_async(&mut raw)
        .await
        .unwrap();
    let expected: HashSet<String> = ["stream", "enq", "dead"]
        .iter()
        .map(|k| format!("{prefix}{k}"))
        .collect();
    assert_eq!(keys, expected);
    let len: u64 = redis::cmd("XLEN")
        .arg(q.stream_key())
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(len, 0);
    if !redis.is_external() {
        let size: u64 = redis::cmd("DBSIZE").query_async(&mut raw).await.unwrap();
        assert_eq!(size, 3);
    }
    q.forget_batch("b").await.unwrap();
    let exists: u64 = redis::cmd("EXISTS")
        .arg(format!("{prefix}enq"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // Past retention the old letter no longer counts, and the next write drops it.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 0, 0));
    assert!(q.dead_letters(10).await.unwrap().is_empty());
    enqueue(&q, "c", 1, 1, 10).await;
    let d = claim_n(&q, "w", 1, 1).await;
    q.dead_letter(&d[0], "invalid_request", "bad")
        .await
        .unwrap();
    let card: u64 = redis::cmd("ZCARD")
        .arg(format!("{prefix}dead"))
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(card, 1);
    assert_eq!(q.dead_letters(10).await.unwrap()[0].job.batch_id, "c");
}

#[tokio::test]
async fn promotion_moves_at_most_one_chunk_per_step() {
    let Some(redis) = TestRedis::start_or_external("promote") else {
        return;
    };
    let q = open(&redis, &unique_name("promote"), |o| o.promote_chunk = 100).await;
    enqueue(&q, "b", 1_000, 1_000, 10).await;
    let ds = claim_n(&q, "w", 1_000, 1_000).await;
    stream::iter(&ds)
        .map(|d| q.retry_later(d, &d.job, Duration::ZERO))
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 1_000, 0));
    assert_eq!(q.promote_due().await.unwrap(), 100);
    assert_eq!(q.depth().await.unwrap(), depth(100, 0, 900, 0));
    // One claim promotes at most one more chunk.
    let got = q.claim("w", 1_000, SHORT).await.unwrap();
    assert!((100..=200).contains(&got.len()), "{}", got.len());
    let rest = claim_n(&q, "w", 1_000 - got.len(), 1_000).await;
    let seqs: HashSet<u64> = got.iter().chain(&rest).map(|d| d.job.seq).collect();
    assert_eq!(seqs.len(), 1_000);
    assert_eq!(q.depth().await.unwrap(), depth(0, 1_000, 0, 0));
}

#[tokio::test]
async fn a_repeated_chunk_is_not_enqueued_twice() {
    let Some(redis) = TestRedis::start_or_external("idempotent") else {
        return;
    };
    let q = open(&redis, &unique_name("idem"), |_| {}).await;
    let first = jobs("b", 0..10, 10);
    let second = jobs("b", 10..15, 10);
    q.enqueue_chunk("b", 0, &first).await.unwrap();
    q.enqueue_chunk("b", 0, &first).await.unwrap();
    q.enqueue_chunk("b", 1, &second).await.unwrap();
    q.enqueue_chunk("b", 1, &second).await.unwrap();
    q.enqueue_chunk("b", 0, &first).await.unwrap();
    // Another batch has its own high-water mark.
    q.enqueue_chunk("other", 0, &jobs("other", 0..2, 10))
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(17, 0, 0, 0));
}

#[tokio::test]
async fn a_chunk_of_1000_large_jobs_is_one_call() {
    let Some(redis) = TestRedis::start_or_external("big_chunk") else {
        return;
    };
    let q = open(&redis, &unique_name("big"), |_| {}).await;
    let big = jobs("b", 0..1_000, 4_000);
    q.enqueue_chunk("b", 0, &big).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(1_000, 0, 0, 0));
    let ds = claim_n(&q, "w", 1_000, 1_000).await;
    assert_eq!(ds[999].job, big[999]);
}

/// Worst latency of other commands while one claim waits 1 s on an empty queue.
async fn stall_while_claiming(q: &RedisQueue) -> (Duration, Duration) {
    let blocker = async {
        let started = Instant::now();
        let got = q.claim("sleepy", 10, Duration::from_secs(1)).await.unwrap();
        assert!(got.is_empty());
        started.elapsed()
    };
    let prober = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut worst = Duration::ZERO;
        for _ in 0..20 {
            let t = Instant::now();
            q.depth().await.unwrap();
            worst = worst.max(t.elapsed());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        worst
    };
    tokio::join!(blocker, prober)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiting_claim_does_not_stall_other_commands() {
    let Some(redis) = TestRedis::start_or_external("blocking") else {
        return;
    };
    let polling = open(&redis, &unique_name("polling"), |_| {}).await;
    let opts = QueueOptions {
        name: unique_name("dedicated"),
        ..QueueOptions::default()
    };
    let dedicated = RedisQueue::open(redis.url(), opts).await.unwrap();
    for (label, q) in [
        ("shared connection, polling", &polling),
        ("dedicated blocking connection", &dedicated),
    ] {
        let (waited, worst) = stall_while_claiming(q).await;
        println!("{label}: claim waited {waited:?}; worst depth() latency meanwhile {worst:?}");
        assert!(waited >= Duration::from_millis(990), "{waited:?}");
        assert!(worst < Duration::from_millis(100), "{label}: {worst:?}");
    }
    // A job enqueued while a claim waits is picked up promptly in both setups.
    for q in [&polling, &dedicated] {
        let (got, ()) = tokio::join!(q.claim("w", 1, Duration::from_secs(5)), async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            q.enqueue_chunk("b", 0, &jobs("b", 0..1, 10)).await.unwrap();
        });
        assert_eq!(got.unwrap().len(), 1);
    }
}
