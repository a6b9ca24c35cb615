//! Benchmark of the claim order (`scripts/bench --only B10`; BENCHMARKS.md). Needs a
//! redis-server it may flush: `--redis redis://127.0.0.1:PORT`. Prints one JSON object.
//!
//! 1. Starvation: batch A (`--a` items) is published, then B (`--b` items) 0.5 s later; a
//!    fleet of `--slots` simulated workers (claim one job, wait `--latency-ms`, ack) drains
//!    both. Run twice: `fifo` (jobs published straight into the stream, as before the claim
//!    order) and `fair`. Reported: B's time from publish to its last claim, the time its
//!    fair share predicts (B ÷ half the fleet's measured rate), A's total time, and jobs
//!    claimed twice (must be 0).
//! 2. Claim cost: `--batches` active batches of `--per-batch` jobs, against one batch of the
//!    same total; consumers claim 32 at a time and ack at once. Reported: jobs/s of each and
//!    their ratio (flat: near 1).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use batchyard_jobs::job::{Job, Route};
use batchyard_jobs::queue::redis::RedisQueue;
use batchyard_jobs::queue::{FairClass, Queue, QueueOptions};

struct Args {
    redis: String,
    a: u64,
    b: u64,
    slots: usize,
    latency: Duration,
    batches: u64,
    per_batch: u64,
}

fn args() -> Args {
    let mut out = Args {
        redis: String::new(),
        a: 50_000,
        b: 500,
        slots: 64,
        latency: Duration::from_millis(20),
        batches: 1000,
        per_batch: 40,
    };
    let argv: Vec<String> = std::env::args().skip(1).collect();
    for pair in argv.chunks(2) {
        let v = pair.get(1).cloned().unwrap_or_default();
        let n = || v.parse::<u64>().expect("a number");
        match pair[0].as_str() {
            "--redis" => out.redis = v.clone(),
            "--a" => out.a = n(),
            "--b" => out.b = n(),
            "--slots" => out.slots = n() as usize,
            "--latency-ms" => out.latency = Duration::from_millis(n()),
            "--batches" => out.batches = n(),
            "--per-batch" => out.per_batch = n(),
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(!out.redis.is_empty(), "--redis URL is required");
    out
}

fn job(batch: &str, seq: u64) -> Job {
    let mut body = serde_json::Map::new();
    body.insert(
        "messages".into(),
        serde_json::json!([{"role": "user", "content": "hello there"}]),
    );
    Job::first_run(
        batch,
        format!("{batch}-{seq}"),
        seq,
        format!("c{seq}"),
        body,
        Route::Auto,
    )
}

async fn open(url: &str, name: &str) -> Arc<RedisQueue> {
    let opts = QueueOptions {
        name: name.to_string(),
        ..QueueOptions::default()
    };
    Arc::new(RedisQueue::open(url, opts).await.unwrap())
}

async fn stage(q: &RedisQueue, batch: &str, n: u64) {
    for (no, start) in (0..n).step_by(1000).enumerate() {
        let chunk: Vec<Job> = (start..(start + 1000).min(n))
            .map(|s| job(batch, s))
            .collect();
        q.stage_chunk(batch, no as u64, &chunk).await.unwrap();
    }
}

async fn publish(q: &RedisQueue, batch: &str, fair: bool) {
    if fair {
        q.publish_backlog(batch, &FairClass::default_tenant())
            .await
            .unwrap();
    } else {
        while q.publish_staged(batch, 1000).await.unwrap() > 0 {}
    }
}

/// (claim time, job id) per claim.
type Log = Arc<Mutex<Vec<(Instant, String)>>>;

async fn fleet(q: Arc<RedisQueue>, slots: usize, latency: Duration, total: usize, log: Log) {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..slots {
        let (q, log) = (Arc::clone(&q), Arc::clone(&log));
        tasks.push(tokio::spawn(async move {
            let me = format!("w{w}");
            while log.lock().unwrap().len() < total && started.elapsed() < Duration::from_secs(600)
            {
                for d in q.claim(&me, 1, Duration::from_millis(50)).await.unwrap() {
                    log.lock()
                        .unwrap()
                        .push((Instant::now(), d.job.job_id.clone()));
                    tokio::time::sleep(latency).await;
                    q.ack(&d).await.unwrap();
                }
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
}

async fn starvation(a: &Args, fair: bool) -> serde_json::Value {
    let name = if fair { "bench-fair" } else { "bench-fifo" };
    let q = open(&a.redis, name).await;
    stage(&q, "batch_a", a.a).await;
    stage(&q, "batch_b", a.b).await;
    let log: Log = Arc::default();
    let t0 = Instant::now();
    publish(&q, "batch_a", fair).await;
    let total = (a.a + a.b) as usize;
    let running = tokio::spawn(fleet(
        Arc::clone(&q),
        a.slots,
        a.latency,
        total,
        Arc::clone(&log),
    ));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let b_at = Instant::now();
    publish(&q, "batch_b", fair).await;
    running.await.unwrap();
    let log = log.lock().unwrap().clone();
    let ids: HashSet<&str> = log.iter().map(|(_, id)| id.as_str()).collect();
    let last = |prefix: &str| {
        log.iter()
            .filter(|(_, id)| id.starts_with(prefix))
            .map(|(t, _)| *t)
            .max()
            .unwrap_or(t0)
    };
    let all_secs = last("batch_").duration_since(t0).as_secs_f64();
    let rate = log.len() as f64 / all_secs.max(1e-9);
    let b_secs = last("batch_b-").duration_since(b_at).as_secs_f64();
    serde_json::json!({
        "mode": name,
        "a_items": a.a, "b_items": a.b, "slots": a.slots, "latency_ms": a.latency.as_millis() as u64,
        "claims": log.len(), "claimed_twice": log.len() - ids.len(), "unique": ids.len(),
        "a_secs": last("batch_a-").duration_since(t0).as_secs_f64(),
        "b_secs": b_secs,
        "b_fair_share_secs": a.b as f64 / (rate / 2.0),
        "fleet_jobs_per_sec": rate,
    })
}

/// Jobs/s of consumers claiming 32 at a time (ack at once) over `batches` active batches.
async fn claim_rate(a: &Args, batches: u64) -> f64 {
    let q = open(
        &a.redis,
        &format!("bench-cost-{batches}-{}", ulid::Ulid::new()),
    )
    .await;
    let total = a.batches * a.per_batch;
    let per = total / batches;
    for b in 0..batches {
        let id = format!("batch_{b:05}");
        stage(&q, &id, per).await;
        publish(&q, &id, true).await;
    }
    let done = Arc::new(Mutex::new(0u64));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (q, done) = (Arc::clone(&q), Arc::clone(&done));
        tasks.push(tokio::spawn(async move {
            let me = format!("c{w}");
            while *done.lock().unwrap() < total && t0.elapsed() < Duration::from_secs(300) {
                let got = q.claim(&me, 32, Duration::from_millis(20)).await.unwrap();
                for d in &got {
                    q.ack(d).await.unwrap();
                }
                *done.lock().unwrap() += got.len() as u64;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = *done.lock().unwrap();
    n as f64 / t0.elapsed().as_secs_f64()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let starved = if a.a > 0 {
        vec![starvation(&a, false).await, starvation(&a, true).await]
    } else {
        Vec::new()
    };
    let mut curve = Vec::new();
    let mut n = 1;
    while n <= a.batches {
        curve.push(serde_json::json!({"batches": n, "jobs_per_sec": claim_rate(&a, n).await}));
        n *= 10;
    }
    let rate = |i: usize| {
        curve
            .get(i)
            .and_then(|c| c["jobs_per_sec"].as_f64())
            .unwrap_or(0.0)
    };
    let ratio = rate(curve.len().saturating_sub(1)) / rate(0).max(1e-9);
    let out = serde_json::json!({
        "starvation": starved,
        "claim_cost": {
            "jobs": a.batches * a.per_batch,
            "curve": curve,
            "ratio_last_to_one": ratio,
        },
    });
    println!("{out}");
}
