//! The Redis Streams queue against a real redis-server (one per test).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use batchyard_jobs::queue::redis::{RedisQueue, unique_consumer_name};
use batchyard_jobs::queue::{Delivery, Queue, QueueDepth, QueueOptions};
use batchyard_jobs::redis_conn::connect;
use common::{TestRedis, jobs, unique_name};
use futures::{StreamExt, TryStreamExt, stream};

const SHORT: Duration = Duration::from_millis(100);

async fn open(redis: &TestRedis, name: &str, tune: impl FnOnce(&mut QueueOptions)) -> RedisQueue {
    let mut opts = QueueOptions {
        name: name.to_string(),
        ..QueueOptions::default()
    };
    tune(&mut opts);
    RedisQueue::new(connect(redis.url()).await.unwrap(), opts)
        .await
        .unwrap()
}

async fn enqueue(q: &RedisQueue, batch: &str, total: u64, chunk: u64, pad: usize) {
    for (no, start) in (0..total).step_by(chunk as usize).enumerate() {
        let end = (start + chunk).min(total);
        q.enqueue_chunk(batch, no as u64, &jobs(batch, start..end, pad))
            .await
            .unwrap();
    }
}

/// Claims until `want` deliveries are in hand; bounded in calls and time.
async fn claim_n(q: &RedisQueue, consumer: &str, want: usize, per_call: usize) -> Vec<Delivery> {
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

async fn ack_all(q: &RedisQueue, ds: &[Delivery]) {
    stream::iter(ds)
        .map(|d| q.ack(d))
        .buffer_unordered(64)
        .try_collect::<Vec<_>>()
        .await
        .unwrap();
}

fn depth(pending: u64, in_flight: u64, delayed: u64, dead: u64) -> QueueDepth {
    QueueDepth {
        pending,
        in_flight,
        delayed,
        dead,
    }
}

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
    let Some(redis) = TestRedis::start("claim_cost_does_not_grow_with_queue_depth") else {
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
    let Some(redis) = TestRedis::start("burst_of_100k_and_20k_simultaneous_retries") else {
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

#[tokio::test]
async fn unacked_jobs_are_reclaimed_after_the_visibility_timeout() {
    let Some(redis) = TestRedis::start("reclaim") else {
        return;
    };
    let name = unique_name("reclaim");
    let tune = |o: &mut QueueOptions| o.visibility_timeout = Duration::from_secs(1);
    let a = open(&redis, &name, tune).await;
    let b = open(&redis, &name, tune).await;
    enqueue(&a, "b", 5, 5, 10).await;
    let taken = claim_n(&a, "dies", 5, 10).await;
    assert!(taken.iter().all(|d| d.deliveries == 1));
    // Not yet: the visibility timeout has not passed.
    assert!(b.claim("rescuer", 10, SHORT).await.unwrap().is_empty());

    tokio::time::sleep(Duration::from_millis(1_200)).await;
    let back = b.claim("rescuer", 10, SHORT).await.unwrap();
    assert_eq!(back.len(), 5);
    assert!(
        back.iter().all(|d| d.deliveries == 2 && d.reclaims() == 1),
        "{back:?}"
    );
    let handles: HashSet<_> = taken.iter().map(|d| &d.handle).collect();
    assert!(back.iter().all(|d| handles.contains(&d.handle)));
    ack_all(&b, &back).await;
    assert_eq!(b.depth().await.unwrap(), depth(0, 0, 0, 0));
}

#[tokio::test]
async fn a_job_reclaimed_too_often_is_returned_then_dead_lettered() {
    let Some(redis) = TestRedis::start("poison") else {
        return;
    };
    let q = open(&redis, &unique_name("poison"), |o| {
        o.visibility_timeout = Duration::from_millis(400);
        o.max_reclaims = 2;
    })
    .await;
    enqueue(&q, "b", 1, 1, 10).await;
    let mut last = claim_n(&q, "c0", 1, 1).await.remove(0);
    for i in 1..=10 {
        if last.reclaims() > 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(450)).await;
        let got = q.claim(&format!("c{i}"), 1, SHORT).await.unwrap();
        assert_eq!(got.len(), 1, "round {i}: the idle job must be reclaimed");
        assert_eq!(got[0].deliveries, last.deliveries + 1);
        last = got.into_iter().next().unwrap();
    }
    assert_eq!(
        last.reclaims(),
        3,
        "returned to the worker with reclaims > max_reclaims"
    );
    q.dead_letter(&last, "worker_lost", "the job was reclaimed 3 times")
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 0, 1));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 1);
    assert_eq!((dead[0].code.as_str(), dead[0].job.seq), ("worker_lost", 0));
}

/// Polls `claim` until it yields `want` deliveries; every error on the way must be retryable.
async fn claim_through_outage(q: &RedisQueue, want: usize) -> (Vec<Delivery>, usize) {
    let started = Instant::now();
    let mut errors = 0;
    while started.elapsed() < Duration::from_secs(10) {
        match q.claim("survivor", 10, SHORT).await {
            Ok(ds) if ds.len() >= want => return (ds, errors),
            Ok(_) => {}
            Err(e) => {
                assert!(e.is_retryable(), "not retryable: {e}");
                errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    panic!("claim did not recover within 10 s ({errors} errors)");
}

async fn errors_while_down(q: &RedisQueue) -> usize {
    let mut errors = 0;
    for _ in 0..5 {
        match q.claim("survivor", 10, SHORT).await {
            Ok(ds) => assert!(ds.is_empty()),
            Err(e) => {
                assert!(e.is_retryable(), "an outage must be retryable: {e}");
                errors += 1;
            }
        }
    }
    errors
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart_that_loses_everything() {
    let Some(mut redis) = TestRedis::start_owned("restart_lossy", false) else {
        return;
    };
    let q = open(&redis, "restart", |_| {}).await;
    enqueue(&q, "before", 2, 2, 10).await;
    assert_eq!(claim_n(&q, "survivor", 2, 10).await.len(), 2);

    redis.kill();
    assert!(
        errors_while_down(&q).await > 0,
        "claims against a dead server must fail"
    );
    redis.restart();

    // The group is gone with the data: the queue recreates it on NOGROUP.
    let started = Instant::now();
    while let Err(e) = q.enqueue_chunk("after", 0, &jobs("after", 0..3, 10)).await {
        assert!(e.is_retryable(), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "enqueue never recovered"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ds, _) = claim_through_outage(&q, 3).await;
    assert!(ds.iter().all(|d| d.job.batch_id == "after"));
    assert_eq!(q.depth().await.unwrap(), depth(0, 3, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_a_redis_restart_with_persistence_and_keeps_jobs() {
    let Some(mut redis) = TestRedis::start_owned("restart_aof", true) else {
        return;
    };
    let q = open(&redis, "restart", |_| {}).await;
    enqueue(&q, "b", 4, 4, 10).await;
    let first = claim_n(&q, "survivor", 1, 1).await;

    redis.kill();
    let down = errors_while_down(&q).await;
    redis.restart();

    let (ds, errors) = claim_through_outage(&q, 3).await;
    println!("restart: {down} errors while down, {errors} errors after restart");
    assert_eq!(ds.len(), 3);
    assert!(ds.iter().all(|d| d.handle != first[0].handle));
    assert_eq!(q.depth().await.unwrap(), depth(0, 4, 0, 0));
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
    let Some(redis) = TestRedis::start("depth") else {
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
    let Some(redis) = TestRedis::start("keys") else {
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
    let Some(redis) = TestRedis::start("promote") else {
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
    let Some(redis) = TestRedis::start("idempotent") else {
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
    let Some(redis) = TestRedis::start("big_chunk") else {
        return;
    };
    let q = open(&redis, &unique_name("big"), |_| {}).await;
    let big = jobs("b", 0..1_000, 4_000);
    q.enqueue_chunk("b", 0, &big).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(1_000, 0, 0, 0));
    let ds = claim_n(&q, "w", 1_000, 1_000).await;
    assert_eq!(ds[999].job, big[999]);
}

#[tokio::test]
async fn a_malformed_entry_is_dead_lettered_and_claims_go_on() {
    let Some(redis) = TestRedis::start("malformed") else {
        return;
    };
    let q = open(&redis, &unique_name("malformed"), |_| {}).await;
    let mut raw = redis.raw().await;
    enqueue(&q, "b", 2, 2, 10).await;
    for (field, value) in [
        ("j", "{not json"),
        ("x", "no job field"),
        ("j", r#"{"batch_id":"b","job_id":"j9","seq":9}"#),
    ] {
        let _: String = redis::cmd("XADD")
            .arg(q.stream_key())
            .arg("*")
            .arg(field)
            .arg(value)
            .query_async(&mut raw)
            .await
            .unwrap();
    }
    q.enqueue_chunk("b", 1, &jobs("b", 2..3, 10)).await.unwrap();

    let got = q.claim("w", 10, SHORT).await.unwrap();
    assert_eq!(got.iter().map(|d| d.job.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert_eq!(q.depth().await.unwrap(), depth(0, 3, 0, 3));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(dead.len(), 3);
    assert!(dead.iter().all(|d| d.code == "malformed_job"));
    assert!(
        dead.iter().any(|d| d.job.job_id == "j9" && d.job.seq == 9),
        "{dead:?}"
    );
    assert!(q.claim("w", 10, SHORT).await.unwrap().is_empty());
}

#[tokio::test]
async fn idle_consumers_with_nothing_pending_are_deleted() {
    let Some(redis) = TestRedis::start("consumers") else {
        return;
    };
    let q = open(&redis, &unique_name("consumers"), |_| {}).await;
    enqueue(&q, "b", 2, 2, 10).await;
    let _held = claim_n(&q, "busy", 1, 1).await;
    // A consumer exists once it was handed something; this one finished its job.
    let done = claim_n(&q, "finished", 1, 1).await;
    q.ack(&done[0]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(q.housekeeping(Duration::from_secs(3600)).await.unwrap(), 0);
    assert_eq!(q.housekeeping(Duration::from_millis(10)).await.unwrap(), 1);
    let mut raw = redis.raw().await;
    let info: redis::Value = redis::cmd("XINFO")
        .arg("CONSUMERS")
        .arg(q.stream_key())
        .arg("workers")
        .query_async(&mut raw)
        .await
        .unwrap();
    let text = format!("{info:?}");
    assert!(
        text.contains("busy") && !text.contains("finished"),
        "{text}"
    );
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
    let Some(redis) = TestRedis::start("blocking") else {
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
