//! The in-process queue: same contract as the Redis one.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::{Queue, QueueDepth, QueueOptions};
use support::jobs;

const SHORT: Duration = Duration::from_millis(20);

fn queue(tune: impl FnOnce(&mut QueueOptions)) -> MemoryQueue {
    let mut opts = QueueOptions {
        name: "mem".into(),
        ..QueueOptions::default()
    };
    tune(&mut opts);
    MemoryQueue::new(opts)
}

fn depth(pending: u64, in_flight: u64, delayed: u64, dead: u64) -> QueueDepth {
    QueueDepth {
        pending,
        in_flight,
        delayed,
        dead,
    }
}

#[tokio::test]
async fn claims_in_fifo_order_and_acks() {
    let q = queue(|_| {});
    q.enqueue_chunk("b", 0, &jobs("b", 0..5, 1)).await.unwrap();
    let ds = q.claim("w", 3, SHORT).await.unwrap();
    assert_eq!(ds.iter().map(|d| d.job.seq).collect::<Vec<_>>(), [0, 1, 2]);
    assert!(ds.iter().all(|d| d.deliveries == 1));
    for d in &ds {
        q.ack(d).await.unwrap();
    }
    // Acking twice is harmless.
    q.ack(&ds[0]).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(2, 0, 0, 0));
    assert_eq!(q.name(), "mem");
}

#[tokio::test]
async fn depth_is_exact_through_a_sequence() {
    let q = queue(|_| {});
    q.enqueue_chunk("b", 0, &jobs("b", 0..10, 1)).await.unwrap();
    let ds = q.claim("w", 3, SHORT).await.unwrap();
    q.ack(&ds[0]).await.unwrap();
    q.retry_later(&ds[1], &ds[1].job, Duration::from_secs(60))
        .await
        .unwrap();
    q.dead_letter(&ds[2], "invalid_request", "bad")
        .await
        .unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(7, 0, 1, 1));
    let dead = q.dead_letters(10).await.unwrap();
    assert_eq!(
        (dead[0].code.as_str(), dead[0].job.seq),
        ("invalid_request", 2)
    );
}

#[tokio::test]
async fn a_repeated_chunk_is_not_enqueued_twice() {
    let q = queue(|_| {});
    q.enqueue_chunk("b", 0, &jobs("b", 0..10, 1)).await.unwrap();
    q.enqueue_chunk("b", 0, &jobs("b", 0..10, 1)).await.unwrap();
    q.enqueue_chunk("b", 1, &jobs("b", 10..15, 1))
        .await
        .unwrap();
    q.enqueue_chunk("b", 0, &jobs("b", 0..10, 1)).await.unwrap();
    q.enqueue_chunk("c", 0, &jobs("c", 0..2, 1)).await.unwrap();
    assert_eq!(q.depth().await.unwrap().pending, 17);
    q.forget_batch("b").await;
    q.enqueue_chunk("b", 0, &jobs("b", 0..1, 1)).await.unwrap();
    assert_eq!(q.depth().await.unwrap().pending, 18);
}

#[tokio::test]
async fn retries_come_back_after_their_delay() {
    let q = queue(|_| {});
    q.enqueue_chunk("b", 0, &jobs("b", 0..1, 1)).await.unwrap();
    let d = q.claim("w", 1, SHORT).await.unwrap().remove(0);
    let mut job = d.job.clone();
    job.attempt = 1;
    q.retry_later(&d, &job, Duration::from_millis(150))
        .await
        .unwrap();
    assert!(q.claim("w", 1, SHORT).await.unwrap().is_empty());
    // A claim that blocks longer than the delay wakes up for the due job.
    let started = Instant::now();
    let again = q.claim("w", 1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].job.attempt, again[0].deliveries), (1, 1));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn a_blocked_claim_wakes_on_enqueue() {
    let q = Arc::new(queue(|_| {}));
    let waiter = {
        let q = q.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let got = q.claim("w", 10, Duration::from_secs(5)).await.unwrap();
            (got.len(), started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    q.enqueue_chunk("b", 0, &jobs("b", 0..3, 1)).await.unwrap();
    let (n, waited) = waiter.await.unwrap();
    assert_eq!(n, 3);
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    // And a claim on an empty queue returns after its block, empty.
    let started = Instant::now();
    assert!(
        q.claim("w", 1, Duration::from_millis(100))
            .await
            .unwrap()
            .is_empty()
    );
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn unacked_jobs_are_reclaimed_and_poison_is_visible() {
    let q = queue(|o| {
        o.visibility_timeout = Duration::from_millis(100);
        o.max_reclaims = 1;
    });
    q.enqueue_chunk("b", 0, &jobs("b", 0..2, 1)).await.unwrap();
    let first = q.claim("dies", 2, SHORT).await.unwrap();
    assert_eq!(first.len(), 2);
    let second = q.claim("rescuer", 2, Duration::from_secs(1)).await.unwrap();
    assert_eq!(second.len(), 2);
    assert!(second.iter().all(|d| d.deliveries == 2));
    let third = q.claim("rescuer", 2, Duration::from_secs(1)).await.unwrap();
    assert!(third.iter().all(|d| d.reclaims() == 2));
    // A heartbeat for the first delivery hears it was taken; one for a delivery acked just
    // before it looked hears nothing (done, not lost).
    let held: Vec<_> = first.iter().map(|d| (d.handle.clone(), 1)).collect();
    assert_eq!(q.extend("dies", &held).await.unwrap().len(), 2);
    q.enqueue_chunk("b", 1, &jobs("b", 2..3, 1)).await.unwrap();
    let done = q.claim("w", 1, SHORT).await.unwrap();
    q.ack(&done[0]).await.unwrap();
    let acked = [(done[0].handle.clone(), done[0].deliveries)];
    assert!(q.extend("w", &acked).await.unwrap().is_empty());
    for d in &third {
        q.dead_letter(d, "worker_lost", "reclaimed twice")
            .await
            .unwrap();
    }
    // The first holder's late ack is harmless.
    q.ack(&first[0]).await.unwrap();
    assert_eq!(q.depth().await.unwrap(), depth(0, 0, 0, 2));
}

#[tokio::test]
async fn promotion_is_bounded_and_dead_letters_expire() {
    let q = queue(|o| {
        o.promote_chunk = 100;
        o.dead_letter_retention = Duration::from_millis(200);
    });
    q.enqueue_chunk("b", 0, &jobs("b", 0..1_000, 1))
        .await
        .unwrap();
    let ds = q.claim("w", 1_000, SHORT).await.unwrap();
    for d in &ds {
        q.retry_later(d, &d.job, Duration::ZERO).await.unwrap();
    }
    assert_eq!(q.promote_due().await, 100);
    assert_eq!(q.depth().await.unwrap(), depth(100, 0, 900, 0));
    let got = q.claim("w", 1_000, SHORT).await.unwrap();
    assert_eq!(got.len(), 200);
    let mut seen: HashSet<u64> = got.iter().map(|d| d.job.seq).collect();
    for _ in 0..20 {
        seen.extend(
            q.claim("w", 1_000, SHORT)
                .await
                .unwrap()
                .iter()
                .map(|d| d.job.seq),
        );
    }
    assert_eq!(seen.len(), 1_000);

    q.dead_letter(&got[0], "x", "y").await.unwrap();
    assert_eq!(q.depth().await.unwrap().dead, 1);
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert_eq!(q.depth().await.unwrap().dead, 0);
    assert!(q.dead_letters(10).await.unwrap().is_empty());
}
