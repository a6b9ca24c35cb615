//! The offload lane's money and quotas end to end, on the fake provider's OpenAI Batch API:
//! a budgeted deadline batch is offloaded with each item's worst case at the batch price held
//! until its answer is judged; a budget that can't hold it sends nothing; and a model's
//! enqueued-token quota, configured or learned from a refusal, cuts a wave into provider
//! batches the provider accepts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use batchyard_testkit::FakeProvider;
use support::offload::*;

#[test]
fn a_budgeted_deadline_batch_is_offloaded_and_spends_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "300"]);
    offload_config(dir.path(), &fake, QUICK, "");
    let input = docs(dir.path(), 6, 4);
    let (batch, output, stderr) = run_batch(
        dir.path(),
        &input,
        &["--deadline", "1h", "--budget-usd", "0.5"],
    );
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    assert_eq!(output.len(), 10);
    for line in &output {
        let trail = steps(line);
        assert!(trail.iter().all(|(_, _, batched)| *batched), "{line}");
    }
    let total: f64 = output
        .iter()
        .map(|l| l["batchyard"]["cost_usd"].as_f64().unwrap())
        .sum();
    let cost = batch["cost_usd"].as_f64().unwrap();
    assert!(cost > 0.0 && cost <= 0.5, "{batch}");
    assert!((cost - total).abs() < 1e-8, "{batch}");
    // Wave 1 on small, wave 2 (the hard ones) on large; a tick that saw wave 1 half parked
    // may have sent it in two.
    let created = fake.stats()["batches"]["created"].as_u64().unwrap();
    assert!((2..=3).contains(&created), "{created} provider batches");
}

#[test]
fn a_budget_that_cannot_hold_an_items_batch_worst_case_sends_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&["--batch-turnaround-ms", "300"]);
    offload_config(dir.path(), &fake, QUICK, "");
    let input = docs(dir.path(), 5, 0);
    // One item's worst case at the batch price (about 10 prompt tokens and 100 output at
    // $0.5/$1 per million) is about $0.0001: $0.00001 holds none.
    let out = support::run(
        support::batchyard(dir.path())
            .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
            .args(["--task", "read", "--json", "--deadline", "1h"])
            .args(["--budget-usd", "0.00001"]),
    );
    let batch = support::last_json(&out);
    assert_eq!(batch["request_counts"]["failed"], 5, "{batch}");
    assert_eq!(batch["cost_usd"].as_f64().unwrap(), 0.0, "{batch}");
    let errors = support::read_jsonl(
        &dir.path()
            .join("store/batches")
            .join(batch["id"].as_str().unwrap())
            .join("errors.jsonl"),
    );
    assert_eq!(errors.len(), 5);
    for line in &errors {
        assert_eq!(line["error"]["code"], "budget_exhausted", "{line}");
    }
    let stats = fake.stats();
    assert_eq!(stats["batches"]["created"], 0, "{stats}");
    assert_eq!(stats["requests"], 0, "{stats}");
}

/// Items whose prompts the fake counts at about the same size, so a quota fits a few.
fn quota_run(limit_flag: u64, configured: Option<u64>) -> (serde_json::Value, FakeProvider) {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeProvider::start(&[
        "--batch-turnaround-ms",
        "300",
        "--batch-enqueued-token-limit",
        &limit_flag.to_string(),
    ]);
    let extra = configured.map_or(String::new(), |n| {
        format!("batch_enqueued_token_limit = {n}")
    });
    offload_config(dir.path(), &fake, QUICK, &extra);
    let input = docs(dir.path(), 12, 0);
    let (batch, output, stderr) = run_batch(dir.path(), &input, &["--deadline", "1h"]);
    assert_eq!(batch["status"], "completed", "{batch}\n{stderr}");
    assert_eq!(output.len(), 12);
    let batched = output
        .iter()
        .filter(|line| steps(line) == [("small".into(), "passed".into(), true)])
        .count();
    // A remainder smaller than `min_items` that no room was left for goes real-time.
    assert!(
        batched >= 9,
        "{batched} of 12 through provider batches\n{stderr}"
    );
    (batch, fake)
}

#[test]
fn a_configured_enqueued_token_quota_cuts_the_wave_into_batches_the_provider_accepts() {
    // The fake counts 7 prompt tokens an item (batchyard estimates 8): 30 fit 3 at a time.
    let (_, fake) = quota_run(30, Some(30));
    let stats = fake.stats();
    let created = stats["batches"]["created"].as_u64().unwrap();
    assert!(created >= 3, "12 items in quota-sized batches: {stats}");
    assert!(
        stats["batches"]["by_status"]["failed"].is_null()
            || stats["batches"]["by_status"]["failed"] == 0,
        "nothing refused: {stats}"
    );
}

#[test]
fn an_enqueued_token_quota_is_learned_from_the_providers_refusal() {
    let (_, fake) = quota_run(30, None);
    let stats = fake.stats();
    // The first wave, all 12 items, is refused; its message names the limit, and every
    // later provider batch fits in it.
    assert_eq!(stats["batches"]["by_status"]["failed"], 1, "{stats}");
    assert!(
        stats["batches"]["created"].as_u64().unwrap() >= 4,
        "{stats}"
    );
}
