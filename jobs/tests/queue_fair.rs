//! The claim order across batches, on a real redis-server (and the in-process queue): a
//! fixed fleet of simulated workers (each claims one job, "calls" for a fixed latency,
//! acks) drains published batches. A small batch submitted after a large one is not
//! starved, a `high` batch overtakes, tenant weights 3:1 give 3:1 claims, every job runs
//! exactly once, and depth stays exact. Item counts are small; 50,000 items are in
//! `scripts/bench` (BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchyard_jobs::priority::Priority;
use batchyard_jobs::queue::memory::MemoryQueue;
use batchyard_jobs::queue::{FairClass, Queue, QueueOptions};
use batchyard_testkit::TestRedis;
use support::queue_redis::open;
use support::{jobs, unique_name};

/// Fleet slots, simulated call latency, and the ready window.
const SLOTS: usize = 4;
const LATENCY: Duration = Duration::from_millis(8);
const WINDOW: usize = 4;

/// One claim, in order: (when, batch id).
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

fn class(tenant: &str, priority: Priority, weight: u32) -> FairClass {
    FairClass {
        tenant: tenant.into(),
        priority,
        weight: Some(weight),
    }
}

async fn submit(q: &dyn Queue, batch: &str, n: u64, class: &FairClass) {
    for (no, start) in (0..n).step_by(100).enumerate() {
        let chunk = jobs(batch, start..(start + 100).min(n), 1);
        q.stage_chunk(batch, no as u64, &chunk).await.unwrap();
    }
    q.publish_backlog(batch, class).await.unwrap();
}

/// Runs the fleet until `total` jobs are acked (bounded: 30 s), logging each claim.
fn fleet(q: Arc<dyn Queue>, total: usize, log: Log) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let started = Instant::now();
        let mut workers = Vec::new();
        for w in 0..SLOTS {
            let (q, log) = (Arc::clone(&q), Arc::clone(&log));
            workers.push(tokio::spawn(async move {
                let me = format!("w{w}");
                while log.lock().unwrap().len() < total
                    && started.elapsed() < Duration::from_secs(30)
                {
                    let got = q.claim(&me, 1, Duration::from_millis(20)).await.unwrap();
                    for d in got {
                        log.lock()
                            .unwrap()
                            .push((Instant::now(), d.job.job_id.clone()));
                        tokio::time::sleep(LATENCY).await;
                        q.ack(&d).await.unwrap();
                    }
                }
            }));
        }
        for w in workers {
            w.await.unwrap();
        }
    })
}

fn batch_of(job_id: &str) -> &str {
    job_id.rsplit_once('-').map_or(job_id, |(b, _)| b)
}

/// Every job of `expected` (batch, size) claimed exactly once.
fn assert_once(log: &[(Instant, String)], expected: &[(&str, u64)]) {
    let mut seen: HashMap<&str, u32> = HashMap::new();
    for (_, id) in log {
        *seen.entry(id.as_str()).or_default() += 1;
    }
    let want: u64 = expected.iter().map(|(_, n)| n).sum();
    assert_eq!(log.len() as u64, want, "claims");
    assert!(seen.values().all(|&n| n == 1), "a job was claimed twice");
    for (batch, n) in expected {
        let got = seen.keys().filter(|id| batch_of(id) == *batch).count() as u64;
        assert_eq!(got, *n, "jobs of {batch}");
    }
}

async fn small_after_large_is_not_starved(q: Arc<dyn Queue>) {
    let log: Log = Arc::default();
    let default = FairClass::default_tenant();
    submit(q.as_ref(), "big", 400, &default).await;
    let running = fleet(Arc::clone(&q), 440, Arc::clone(&log));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let small_at = Instant::now();
    submit(q.as_ref(), "small", 40, &default).await;
    running.await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_once(&log, &[("big", 400), ("small", 40)]);
    let first = log.first().unwrap().0;
    let last = log.last().unwrap().0;
    let rate = log.len() as f64 / last.duration_since(first).as_secs_f64();
    let small_done = log
        .iter()
        .filter(|(_, id)| batch_of(id) == "small")
        .map(|(t, _)| *t)
        .max()
        .unwrap();
    let took = small_done.duration_since(small_at).as_secs_f64();
    // Its fair share is half the fleet while both have work.
    let predicted = 40.0 / (rate / 2.0);
    println!("small took {took:.3} s; fair share predicts {predicted:.3} s");
    assert!(
        took <= 2.0 * predicted,
        "small took {took:.3} s; its fair share predicts {predicted:.3} s (fleet {rate:.0}/s)"
    );
    let d = q.depth().await.unwrap();
    assert_eq!((d.pending, d.in_flight), (0, 0));
}

async fn high_overtakes_and_weights_split(q: Arc<dyn Queue>) {
    let log: Log = Arc::default();
    submit(
        q.as_ref(),
        "heavy",
        300,
        &class("team-a", Priority::NORMAL, 3),
    )
    .await;
    submit(
        q.as_ref(),
        "light",
        300,
        &class("team-b", Priority::NORMAL, 1),
    )
    .await;
    assert_eq!(
        q.depth().await.unwrap().pending,
        600,
        "depth counts backlogs exactly"
    );
    let running = fleet(Arc::clone(&q), 640, Arc::clone(&log));
    tokio::time::sleep(Duration::from_millis(150)).await;
    let before = log.lock().unwrap().len();
    submit(
        q.as_ref(),
        "urgent",
        40,
        &class("team-b", Priority::HIGH, 1),
    )
    .await;
    running.await.unwrap();
    let log = log.lock().unwrap().clone();
    assert_once(&log, &[("heavy", 300), ("light", 300), ("urgent", 40)]);
    // Once published, only the window and the jobs in hand stand before the urgent ones.
    let last_urgent = log
        .iter()
        .rposition(|(_, id)| batch_of(id) == "urgent")
        .unwrap();
    let others = log[before..last_urgent]
        .iter()
        .filter(|(_, id)| batch_of(id) != "urgent")
        .count();
    assert!(
        others <= WINDOW + 2 * SLOTS,
        "{others} normal jobs ran while urgent ones waited"
    );
    // 3:1 while both tenants have work: the first 240 normal claims (light has 300).
    let normal: Vec<&str> = log
        .iter()
        .map(|(_, id)| batch_of(id))
        .filter(|b| *b != "urgent")
        .take(240)
        .collect();
    let heavy = normal.iter().filter(|b| **b == "heavy").count() as f64;
    let light = normal.iter().filter(|b| **b == "light").count() as f64;
    let ratio = heavy / light;
    println!("heavy:light = {heavy}:{light}; {others} normal jobs before the last urgent one");
    assert!(
        (2.55..=3.45).contains(&ratio),
        "heavy:light = {heavy}:{light} ({ratio:.2})"
    );
}

fn options(name: String) -> impl FnOnce(&mut QueueOptions) {
    move |o| {
        o.name = name;
        o.ready_window = WINDOW;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_fair_share_priority_and_weights() {
    let Some(redis) = TestRedis::start_or_external("queue_fair") else {
        return;
    };
    let q: Arc<dyn Queue> = Arc::new(open(&redis, "x", options(unique_name("fair"))).await);
    small_after_large_is_not_starved(q).await;
    let q: Arc<dyn Queue> = Arc::new(open(&redis, "x", options(unique_name("weights"))).await);
    high_overtakes_and_weights_split(q).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_queue_claims_in_the_same_order() {
    let mut opts = QueueOptions::default();
    options("mem".into())(&mut opts);
    small_after_large_is_not_starved(Arc::new(MemoryQueue::new(opts.clone()))).await;
    high_overtakes_and_weights_split(Arc::new(MemoryQueue::new(opts))).await;
}

/// Claims and acks until nothing comes for a while (bounded), returning the job ids.
async fn drain(q: &dyn Queue, limit: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut idle = 0;
    for _ in 0..500 {
        if ids.len() >= limit || idle >= 5 {
            break;
        }
        let got = q
            .claim("w", (limit - ids.len()).min(3), Duration::from_millis(20))
            .await
            .unwrap();
        idle = if got.is_empty() { idle + 1 } else { 0 };
        for d in got {
            q.ack(&d).await.unwrap();
            ids.push(d.job.job_id);
        }
    }
    ids
}

/// Jobs published before the claim order (in the stream), a batch the old code half
/// published and the new code finishes, and a new batch published twice: each runs once,
/// depth is exact, and a Redis restart (AOF) mid-drain loses or repeats nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_and_restart_keep_every_job_once() {
    let Some(mut redis) = TestRedis::start_with(
        "queue_fair_upgrade",
        batchyard_testkit::RedisOptions {
            aof: true,
            ..Default::default()
        },
    ) else {
        return;
    };
    let name = unique_name("upgrade");
    let q = open(&redis, "x", options(name.clone())).await;
    q.enqueue_chunk("old", 0, &jobs("old", 0..10, 1))
        .await
        .unwrap();
    q.stage_chunk("half", 0, &jobs("half", 0..10, 1))
        .await
        .unwrap();
    assert_eq!(q.publish_staged("half", 4).await.unwrap(), 4);
    let default = FairClass::default_tenant();
    q.publish_backlog("half", &default).await.unwrap();
    submit(&q, "new", 10, &class("t", Priority::LOW, 2)).await;
    q.publish_backlog("new", &class("t", Priority::LOW, 2))
        .await
        .unwrap();
    assert_eq!(
        q.depth().await.unwrap().pending,
        30,
        "depth counts stream and backlogs once"
    );
    let mut ids = drain(&q, 5).await;
    redis.restart();
    let q = open(&redis, "x", options(name)).await;
    ids.extend(drain(&q, 100).await);
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!((ids.len(), unique.len()), (30, 30), "{ids:?}");
    let d = q.depth().await.unwrap();
    assert_eq!((d.pending, d.in_flight), (0, 0));
}
