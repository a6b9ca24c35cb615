//! The offload lane end to end: `batchyard run --deadline` sends a batch's items through the
//! fake provider's OpenAI Batch API (a sped-up clock) in waves: the cheap model's wave first,
//! then the items whose answer failed the task's check as a second wave on the next model,
//! every answer billed at the batch price.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use support::offload::*;
use support::*;

fn config(dir: &Path, fake: &FakeProvider, offload: &str) {
    offload_config(dir, fake, offload, "");
}

#[test]
fn a_deadline_batch_runs_in_waves_through_the_batch_api_at_the_batch_price() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "300"]);
    config(dir.path(), &fake, QUICK);
    let input = docs(dir.path(), 6, 4);
    let (batch, output, stderr) = run_batch(dir.path(), &input, &["--deadline", "1h"]);
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    assert_eq!(batch["request_counts"]["completed"], 10, "{batch}");
    assert_eq!(output.len(), 10);
    let total = assert_waves_at_batch_price(&output);
    assert!(
        (batch["cost_usd"].as_f64().unwrap() - total).abs() < 1e-8,
        "{batch}"
    );
    let stats = fake.stats();
    // Wave 1: every item on small; wave 2: the hard ones on large.
    assert_eq!(stats["batches"]["created"], 2, "{stats}");
    assert_eq!(fake.count(429), 0);
}

#[test]
fn without_a_deadline_nothing_is_offloaded() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(dir.path(), &fake, QUICK);
    let input = docs(dir.path(), 3, 1);
    let (batch, output, _) = run_batch(dir.path(), &input, &[]);
    assert_eq!(batch["status"], "completed", "{batch}");
    for line in &output {
        assert!(steps(line).iter().all(|s| !s.2), "{line}");
    }
    assert_eq!(fake.stats()["batches"]["created"], 0);
}

#[test]
fn a_group_too_small_for_a_provider_batch_runs_real_time() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "300"]);
    config(dir.path(), &fake, QUICK);
    // 2 items: under min_items = 3.
    let input = docs(dir.path(), 2, 0);
    let (batch, output, _) = run_batch(dir.path(), &input, &["--deadline", "1h"]);
    assert_eq!(batch["status"], "completed", "{batch}");
    for line in &output {
        assert_eq!(
            steps(line),
            [("small".into(), "passed".into(), false)],
            "{line}"
        );
    }
    assert_eq!(fake.stats()["batches"]["created"], 0);
}

#[test]
fn a_deadline_too_close_for_the_batch_api_switches_to_real_time_and_is_met() {
    let dir = tempfile::tempdir().unwrap();
    // Provider batches take ten minutes here: far past the deadline.
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "600000"]);
    // 6 items at 1 a second real-time, plus 2 s of margin: real-time must start by 8 s
    // before the 12 s deadline. min_items = all 6, so one provider batch holds them whenever
    // the tick comes (with 3, a tick amid the parking cut two).
    config(
        dir.path(),
        &fake,
        "min_items = 6\npoll_interval_secs = 1\nswitch_margin_secs = 2\nrealtime_items_per_sec = 1",
    );
    let input = docs(dir.path(), 6, 0);
    let started = Instant::now();
    let (batch, output, stderr) = run_batch(dir.path(), &input, &["--deadline", "12s"]);
    let took = started.elapsed();
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    assert!(
        took < Duration::from_secs(12),
        "missed the deadline: {took:?}"
    );
    let stats = fake.stats();
    assert_eq!(stats["batches"]["created"], 1, "{stats}");
    assert_eq!(stats["batches"]["cancelled"], 1, "{stats}");
    for line in &output {
        assert_eq!(
            steps(line),
            [("small".into(), "passed".into(), false)],
            "{line}"
        );
    }
}

#[test]
fn an_expired_provider_batch_keeps_its_answers_and_only_the_rest_runs_again() {
    let dir = tempfile::tempdir().unwrap();
    // Every provider batch expires after 1 s with the first half of its lines answered.
    let fake = FakeProvider::start(&[
        "--batch-window-secs",
        "1",
        "--batch-expire",
        "--batch-turnaround-ms",
        "200",
    ]);
    config(dir.path(), &fake, QUICK);
    let input = docs(dir.path(), 10, 0);
    let (batch, output, stderr) = run_batch(dir.path(), &input, &["--deadline", "1h"]);
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    assert_eq!(output.len(), 10);
    let mut ids: Vec<&str> = output
        .iter()
        .map(|l| l["custom_id"].as_str().unwrap())
        .collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), 10, "each item exactly once");
    let by_batch = output
        .iter()
        .filter(|l| steps(l).iter().any(|s| s.2))
        .count();
    // Wave 1 answers 5 of 10, wave 2 about half the rest; what is left under min_items runs
    // real-time.
    assert!(
        by_batch >= 7,
        "answered through provider batches: {by_batch}"
    );
    let created = fake.stats()["batches"]["created"].as_u64().unwrap();
    assert!(created >= 2, "{created}");
    // An item answered once is never sent again: each provider batch held fewer items.
    for line in &output {
        assert_eq!(steps(line).len(), 1, "{line}");
    }
}

#[test]
fn a_deadline_even_real_time_cannot_meet_is_refused_at_submit() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[]);
    config(
        dir.path(),
        &fake,
        "min_items = 3\npoll_interval_secs = 1\nrealtime_items_per_sec = 0.1",
    );
    // 6 items at 0.1 a second: 60 s, and the deadline is in 20 s.
    let input = docs(dir.path(), 6, 0);
    let out = run(batchyard(dir.path())
        .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
        .args(["--task", "read", "--deadline", "20s"]));
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("take about 60 s"), "{stderr}");
    assert!(
        !dir.path().join("store/batches").exists(),
        "nothing was enqueued"
    );
}
