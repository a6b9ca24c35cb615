//! The Redis Streams queue against a real redis-server (one per test), when things go wrong:
//! reclaiming unacked jobs, dead-lettering poison and malformed entries, surviving a restart,
//! and cleaning up idle consumers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use batchyard_jobs::queue::redis::RedisQueue;
use batchyard_jobs::queue::{Delivery, Queue, QueueOptions};
use batchyard_jobs::retry::Retryable as _;
use batchyard_testkit::{RedisOptions, TestRedis};
use support::queue_redis::{SHORT, ack_all, claim_n, depth, enqueue, open};
use support::{jobs, unique_name};

#[tokio::test]
async fn unacked_jobs_are_reclaimed_after_the_visibility_timeout() {
    let Some(redis) = TestRedis::start_or_external("reclaim") else {
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
    // The stalled worker's heartbeat hears its jobs were taken.
    let held: Vec<_> = taken.iter().map(|d| (d.handle.clone(), 1)).collect();
    assert_eq!(a.extend("dies", &held).await.unwrap().len(), 5);
    // The rescuer's heartbeat looked just before two of its acks: those are done, not lost
    // (a lone worker once warned it had stalled over a segment's acks).
    let mine: Vec<_> = back.iter().map(|d| (d.handle.clone(), 2)).collect();
    ack_all(&b, &back[..2]).await;
    assert_eq!(
        b.extend("rescuer", &mine).await.unwrap(),
        Vec::<String>::new()
    );
    ack_all(&b, &back[2..]).await;
    assert_eq!(b.depth().await.unwrap(), depth(0, 0, 0, 0));
}

#[tokio::test]
async fn a_job_reclaimed_too_often_is_returned_then_dead_lettered() {
    let Some(redis) = TestRedis::start_or_external("poison") else {
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
    let Some(mut redis) = TestRedis::start("restart_lossy") else {
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
    let Some(mut redis) = TestRedis::start_with(
        "restart_aof",
        RedisOptions {
            aof: true,
            ..RedisOptions::default()
        },
    ) else {
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

#[tokio::test]
async fn a_malformed_entry_is_dead_lettered_and_claims_go_on() {
    let Some(redis) = TestRedis::start_or_external("malformed") else {
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
    let Some(redis) = TestRedis::start_or_external("consumers") else {
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
