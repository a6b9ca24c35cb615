//! A bare no-op consumer of the Redis Streams queue, for benchmarks (`scripts/bench`, B1r).
//!
//! It opens the queue exactly as `batchyard worker` does (one connection from
//! `batchyard_jobs::redis_conn::connect`, the default `QueueOptions` with the given name, a
//! unique consumer name, claim block 500 ms) and runs the same apalis pool
//! (`batchyard_workers::job::pool::run_pool`), but its handler only acks each delivery: no routing,
//! no provider, no result storage, no ledger. The difference between its throughput and the
//! worker's is what the job body costs.
//!
//! ```sh
//! cargo run --release -p batchyard-workers --example noop_consumer -- \
//!     --redis redis://127.0.0.1:6379 --queue bench-noop --expect 200000
//! ```
//!
//! Prints one JSON line: `{"jobs": N, "secs": S, "jobs_per_sec": R, ...}`, where `secs` runs
//! from the pool start to the `--expect`-th ack (to the pool's exit if fewer arrived).
//! Exits 1 if fewer than `--expect` jobs were acked or the pool failed.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use batchyard_jobs::queue::redis::{RedisQueue, unique_consumer_name};
use batchyard_jobs::queue::{Delivery, Queue, QueueOptions};
use batchyard_workers::job::pool::{DeliveryHandler, PoolOptions, run_pool};
use tokio_util::sync::CancellationToken;

struct Args {
    redis: String,
    queue: String,
    expect: u64,
    concurrency: usize,
    exit_when_idle: f64,
}

const USAGE: &str = "usage: noop_consumer --redis URL --queue NAME --expect N \
                     [--concurrency 64] [--exit-when-idle 1]";

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        redis: String::new(),
        queue: String::new(),
        expect: 0,
        concurrency: 64,
        exit_when_idle: 1.0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--redis" => args.redis = value.clone(),
            "--queue" => args.queue = value.clone(),
            "--expect" => args.expect = value.parse().map_err(|e| bad(&e))?,
            "--concurrency" => args.concurrency = value.parse().map_err(|e| bad(&e))?,
            "--exit-when-idle" => args.exit_when_idle = value.parse().map_err(|e| bad(&e))?,
            _ => return Err(format!("unknown argument {flag}\n{USAGE}")),
        }
    }
    if args.redis.is_empty() || args.queue.is_empty() {
        return Err(format!("--redis and --queue are required\n{USAGE}"));
    }
    if !(args.exit_when_idle.is_finite() && args.exit_when_idle >= 0.0) {
        return Err(format!(
            "--exit-when-idle must be 0 or more seconds\n{USAGE}"
        ));
    }
    Ok(args)
}

/// Acks every delivery; records when the `expect`-th ack happened.
struct AckOnly {
    queue: Arc<dyn Queue>,
    acked: AtomicU64,
    ack_errors: AtomicU64,
    expect: u64,
    reached: Mutex<Option<Instant>>,
}

#[async_trait]
impl DeliveryHandler for AckOnly {
    async fn handle(&self, delivery: Delivery) {
        match self.queue.ack(&delivery).await {
            Ok(()) => {
                let n = self.acked.fetch_add(1, Ordering::Relaxed) + 1;
                if n == self.expect {
                    *self.reached.lock().unwrap_or_else(PoisonError::into_inner) =
                        Some(Instant::now());
                }
            }
            Err(e) => {
                // Left for reclaim, like the real worker would.
                self.ack_errors.fetch_add(1, Ordering::Relaxed);
                eprintln!("noop_consumer: ack of {} failed: {e}", delivery.handle);
            }
        }
    }
}

async fn run(args: Args) -> Result<bool, String> {
    let conn = batchyard_jobs::redis_conn::connect(&args.redis)
        .await
        .map_err(|e| format!("cannot connect to redis: {e}"))?;
    let opts = QueueOptions {
        name: args.queue.clone(),
        ..QueueOptions::default()
    };
    let queue: Arc<dyn Queue> = Arc::new(
        RedisQueue::new(conn, opts)
            .await
            .map_err(|e| format!("cannot open the redis queue: {e}"))?,
    );
    let handler = Arc::new(AckOnly {
        queue: Arc::clone(&queue),
        acked: AtomicU64::new(0),
        ack_errors: AtomicU64::new(0),
        expect: args.expect,
        reached: Mutex::new(None),
    });
    let options = PoolOptions {
        concurrency: args.concurrency,
        exit_when_idle: Some(Duration::from_secs_f64(args.exit_when_idle)),
        drain_timeout: Duration::from_secs(30),
        consumer: unique_consumer_name(),
        // As `batchyard worker`.
        claim_block: Duration::from_millis(500),
        heartbeat: None,
    };
    let started = Instant::now();
    let stats = run_pool(
        queue,
        Arc::clone(&handler) as Arc<dyn DeliveryHandler>,
        options,
        CancellationToken::new(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let ended = Instant::now();
    let acked = handler.acked.load(Ordering::Relaxed);
    let until = handler
        .reached
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .unwrap_or(ended);
    let secs = until.duration_since(started).as_secs_f64();
    let jobs_per_sec = if secs > 0.0 { acked as f64 / secs } else { 0.0 };
    println!(
        "{}",
        serde_json::json!({
            "jobs": acked,
            "secs": secs,
            "jobs_per_sec": jobs_per_sec,
            "total_secs": ended.duration_since(started).as_secs_f64(),
            "handled": stats.handled,
            "ack_errors": handler.ack_errors.load(Ordering::Relaxed),
            "claim_errors": stats.claim_errors,
        })
    );
    Ok(acked >= args.expect)
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let expect = args.expect;
    match run(args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("noop_consumer: fewer than {expect} jobs were acked");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("noop_consumer: {e}");
            ExitCode::FAILURE
        }
    }
}
