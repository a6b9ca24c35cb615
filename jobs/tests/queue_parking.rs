//! The offload lane's parking, on both queues: a parked job leaves the stream at once (its
//! delivery acked), is invisible to `claim`, is listed by `parked`, and comes back exactly
//! once on `release`, carrying what the release gave it; a finalized batch's parked jobs are
//! dropped.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use batchyard_jobs::job::Prefetched;
use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::{Queue, QueueOptions};
use batchyard_testkit::TestRedis;
use serde_json::json;
use support::queue_redis::open;
use support::{jobs, unique_name};

async fn claim_all(q: &dyn Queue, want: usize) -> Vec<batchyard_jobs::queue::Delivery> {
    let mut got = Vec::new();
    for _ in 0..50 {
        got.extend(
            q.claim("w", want - got.len(), Duration::from_millis(20))
                .await
                .unwrap(),
        );
        if got.len() >= want {
            break;
        }
    }
    got
}

async fn parks_and_releases_once(q: &dyn Queue) {
    q.enqueue_chunk("b", 0, &jobs("b", 0..6, 1)).await.unwrap();
    let ds = claim_all(q, 6).await;
    assert_eq!(ds.len(), 6);
    for d in &ds[..4] {
        let mut job = d.job.clone();
        job.offloaded_to.push("small".into());
        q.park(d, &job).await.unwrap();
    }
    for d in &ds[4..] {
        q.ack(d).await.unwrap();
    }
    let depth = q.depth().await.unwrap();
    assert_eq!(
        (depth.pending, depth.in_flight),
        (0, 0),
        "parked jobs left the stream"
    );
    assert_eq!(q.parked_count("b").await.unwrap(), 4);
    assert!(
        q.claim("w", 10, Duration::from_millis(30))
            .await
            .unwrap()
            .is_empty()
    );
    // Every parked job is listed, page by page, with what parking stored.
    let mut seen = BTreeSet::new();
    let mut cursor = 0;
    for _ in 0..20 {
        let (page, next) = q.parked("b", cursor, 2).await.unwrap();
        for job in page {
            assert_eq!(job.offloaded_to, ["small"]);
            seen.insert(job.job_id.clone());
        }
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(seen.len(), 4, "{seen:?}");
    let (parked, _) = q.parked("b", 0, 10).await.unwrap();
    let one = q.parked_job("b", &parked[0].job_id).await.unwrap();
    assert_eq!(one.as_ref(), Some(&parked[0]));
    assert_eq!(q.parked_job("b", "nope").await.unwrap(), None);
    let mut answered = parked[0].clone();
    answered.prefetched = Some(Box::new(Prefetched {
        model: "small".into(),
        provider_batch: "batch_abc".into(),
        completion: Some(json!({"choices": []})),
        error: None,
    }));
    assert!(q.release(&answered).await.unwrap());
    assert!(
        !q.release(&answered).await.unwrap(),
        "a second release adds nothing"
    );
    let back = claim_all(q, 1).await;
    assert_eq!(back.len(), 1);
    assert_eq!(back[0].job.job_id, answered.job_id);
    assert_eq!(back[0].job.prefetched, answered.prefetched);
    assert!(
        q.claim("w", 10, Duration::from_millis(30))
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(q.parked_count("b").await.unwrap(), 3);
    assert_eq!(q.parked_count("other").await.unwrap(), 0);
    assert!(q.parked("other", 0, 10).await.unwrap().0.is_empty());
    // The batch ended with jobs still parked: finalizing it drops them, and none runs.
    q.forget_batch("b").await.unwrap();
    assert_eq!(q.parked_count("b").await.unwrap(), 0);
    assert!(!q.release(&parked[1]).await.unwrap());
    assert!(
        q.claim("w", 10, Duration::from_millis(30))
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn memory_queue_parks_and_releases_once() {
    parks_and_releases_once(&MemoryQueue::new(QueueOptions::default())).await;
}

#[tokio::test]
async fn redis_queue_parks_and_releases_once() {
    let Some(redis) = TestRedis::start_or_external("parking") else {
        return;
    };
    let q = open(&redis, &unique_name("parking"), |_| {}).await;
    parks_and_releases_once(&q).await;
}
