//! Helpers shared by the jobs crate's tests (each test file does `mod support;`, so items one
//! file leaves unused are not dead code); the redis-server comes from `batchyard-testkit`:
//!
//! - `ledger_budget`: the harness of ledger_budget.rs (memory or Redis ledger, `on_both!`);
//! - `queue_redis`: open a Redis queue on a test server, enqueue, claim, ack, expected depths;
//! - here: unique queue names, job and batch record builders.
#![allow(
    dead_code,
    unused_macros,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

#[macro_use]
pub mod ledger_budget;
pub mod queue_redis;

use batchyard_jobs::batch::{BatchRecord, BatchState, now_secs};
use batchyard_jobs::job::{Job, Route};
use serde_json::{Map, json};

/// A batch record in progress, 100 jobs, no budget, no task: tests change what they need.
pub fn batch_record(id: &str) -> BatchRecord {
    BatchRecord {
        state: BatchState::InProgress,
        ..BatchRecord::new(id.to_string(), 100, "file://./x".into(), now_secs())
    }
}

/// A queue name no other test (or test run) uses.
pub fn unique_name(test: &str) -> String {
    format!("t-{test}-{}", ulid::Ulid::new().to_string().to_lowercase())
}

/// A small job; `pad` bytes of filler make it bigger.
pub fn job(batch: &str, seq: u64, pad: usize) -> Job {
    let mut body = Map::new();
    body.insert(
        "messages".into(),
        json!([{"role": "user", "content": "x".repeat(pad)}]),
    );
    Job {
        batch_id: batch.to_string(),
        job_id: format!("{batch}-{seq}"),
        seq,
        custom_id: format!("item-{seq}"),
        body,
        route: Route::Auto,
        attempt: 0,
        last_error: None,
        prior_cost_usd: 0.0,
        prefetched: None,
        offloaded_to: Vec::new(),
        realtime: false,
        carried: None,
    }
}

pub fn jobs(batch: &str, range: std::ops::Range<u64>, pad: usize) -> Vec<Job> {
    range.map(|seq| job(batch, seq, pad)).collect()
}
