//! The offload lane at scale (issue 16's proof): a deadline batch of 5,000 items with a
//! difficulty mix runs in waves across two providers' batch APIs (the cheap model on one fake
//! provider, the strong one on another), and costs at most 0.55× the same batch run
//! real-time, with every item exactly once in `output.jsonl` ∪ `errors.jsonl`, finished
//! before its deadline.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::offload::{docs, offload_config};
use support::*;

const EASY: usize = 4_000;
const HARD: usize = 1_000;
/// The deadline the offloaded run is given.
const DEADLINE_SECS: u64 = 3_600;
/// Quick ticks; the deadline judged on the default real-time rate.
const QUICK_TICKS: &str = "poll_interval_secs = 1\nswitch_margin_secs = 0";

/// The offload kit's config with `large` moved to a second provider (another fake), so the
/// cheap model's waves go to one batch API and the strong model's to the other.
fn config(dir: &Path, cheap: &FakeProvider, strong: &FakeProvider, offload: &str, small: &str) {
    offload_config(dir, cheap, offload, small);
    let path = dir.join("batchyard.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let large = "[models.large]\nprovider = \"fake\"";
    assert!(text.contains(large), "the kit's config changed: {text}");
    let text = text.replace(large, "[models.large]\nprovider = \"strong\"")
        + &format!(
            "\n[providers.strong]\nkind = \"openai\"\nbase_url = \"{}\"\nbatch_api = true\n",
            strong.base_url
        );
    std::fs::write(&path, text).unwrap();
}

struct Ran {
    batch: Value,
    manifest: Value,
    output: Vec<Value>,
    errors: Vec<Value>,
    took: Duration,
}

fn run_batch(dir: &Path, input: &Path, extra: &[&str]) -> Ran {
    run_logged(dir, input, extra).0
}

fn run_logged(dir: &Path, input: &Path, extra: &[&str]) -> (Ran, String) {
    let started = Instant::now();
    let (batch, output, stderr) = run_to_output(
        dir,
        batchyard(dir)
            .env("RUST_LOG", "warn,batchyard_workers::offload=info")
            .args(["--config", "batchyard.toml", "run", input.to_str().unwrap()])
            .args(["--task", "read", "--json", "--concurrency", "64"])
            .args(extra),
    );
    let took = started.elapsed();
    let root = dir
        .join("store/batches")
        .join(batch["id"].as_str().unwrap());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(root.join("manifest.json")).unwrap()).unwrap();
    let ran = Ran {
        batch,
        manifest,
        output,
        errors: read_jsonl(&root.join("errors.jsonl")),
        took,
    };
    (ran, stderr)
}

fn tail(text: &str) -> &str {
    &text[text.len().saturating_sub(4_000)..]
}

/// Each item exactly once across both files, and the manifest agreeing with them.
fn assert_each_item_once(ran: &Ran, items: usize) {
    assert_eq!(exactly_once(&ran.output, &ran.errors), items);
    assert_eq!(
        ran.output.len() + ran.errors.len(),
        items,
        "lines in output ∪ errors"
    );
    assert_eq!(ran.manifest["reconciled"], true, "{}", ran.manifest);
}

/// Real-time chat calls a fake served (its rate windows count no batch API call).
fn realtime_calls(fake: &FakeProvider) -> u64 {
    fake.stats()["windows"]
        .as_array()
        .map(|w| w.iter().map(|x| x["requests"].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

#[test]
fn five_thousand_items_offloaded_across_two_providers_cost_at_most_055_of_real_time() {
    let dir = tempfile::tempdir().unwrap();
    let cheap = FakeProvider::start(&["--batch-turnaround-ms", "500"]);
    let strong = FakeProvider::start(&["--batch-turnaround-ms", "500"]);
    config(dir.path(), &cheap, &strong, QUICK_TICKS, "");
    let input = docs(dir.path(), EASY, HARD);

    // Each answer bought for itself: the result cache would serve the second run free.
    let realtime = run_batch(dir.path(), &input, &["--no-cache"]);
    assert_each_item_once(&realtime, EASY + HARD);
    assert_eq!(realtime.batch["status"], "completed", "{}", realtime.batch);
    assert_eq!(cheap.stats()["batches"]["created"], 0);
    let realtime_cost = realtime.manifest["cost_usd"].as_f64().unwrap();
    let calls_before = realtime_calls(&cheap) + realtime_calls(&strong);
    assert_eq!(
        calls_before,
        (EASY + 2 * HARD) as u64,
        "real-time: every item on small, the hard ones again on large"
    );

    let started = batchyard_jobs::batch::now_secs();
    let deadline = format!("{DEADLINE_SECS}s");
    let offloaded = run_batch(dir.path(), &input, &["--no-cache", "--deadline", &deadline]);
    assert_each_item_once(&offloaded, EASY + HARD);
    assert_eq!(
        offloaded.batch["status"], "completed",
        "{}",
        offloaded.batch
    );
    let completed_at = offloaded.manifest["completed_at"].as_u64().unwrap();
    assert!(
        completed_at <= started + DEADLINE_SECS,
        "finished at {completed_at}, deadline {}",
        started + DEADLINE_SECS
    );
    // Waves across both providers' batch APIs: the cheap model's wave on one, the hard
    // items' second wave on the other; no item went real-time.
    let (a, b) = (cheap.stats(), strong.stats());
    assert!(a["batches"]["created"].as_u64().unwrap() >= 1, "{a}");
    assert!(b["batches"]["created"].as_u64().unwrap() >= 1, "{b}");
    assert_eq!(
        realtime_calls(&cheap) + realtime_calls(&strong),
        calls_before,
        "offloaded items made no real-time call"
    );
    let mut passed_on = (0, 0);
    for line in &offloaded.output {
        let id = line["custom_id"].as_str().unwrap();
        let steps = line["batchyard"]["cascade"].as_array().unwrap();
        assert!(
            steps.iter().all(|s| s["provider_batch"].is_string()),
            "{line}"
        );
        match (id.starts_with("easy"), line["batchyard"]["model"].as_str()) {
            (true, Some("small")) => passed_on.0 += 1,
            (false, Some("large")) => passed_on.1 += 1,
            other => panic!("{id} answered as {other:?}: {line}"),
        }
    }
    assert_eq!(passed_on, (EASY, HARD));
    let offload_cost = offloaded.manifest["cost_usd"].as_f64().unwrap();
    let ratio = offload_cost / realtime_cost;
    eprintln!(
        "real-time ${realtime_cost:.6} in {:?}; offloaded ${offload_cost:.6} in {:?}; ratio {ratio:.3}",
        realtime.took, offloaded.took
    );
    assert!(ratio <= 0.55, "offload cost {ratio:.3}× the real-time cost");
    assert!(
        ratio > 0.3,
        "a ratio of {ratio:.3} means something was not billed"
    );
}

#[test]
fn a_declared_rpm_sets_the_time_real_time_needs_and_so_the_switch() {
    let dir = tempfile::tempdir().unwrap();
    // Provider batches take ten minutes: only the switch to real-time meets the deadline.
    let cheap = FakeProvider::start(&["--batch-turnaround-ms", "600000"]);
    let strong = FakeProvider::start(&[]);
    // small's declared 600 rpm says its 60 items need 6 s real-time (the limiter paces them
    // at 10 a second), so with 3 s of margin the switch comes about 9 s before the 18 s
    // deadline and the batch ends near 15 s. Judged on the configured 1,000 items a second
    // instead, the switch would come at 15 s and the paced items end past the deadline.
    config(
        dir.path(),
        &cheap,
        &strong,
        "min_items = 10\npoll_interval_secs = 1\nswitch_margin_secs = 3\nrealtime_items_per_sec = 1000",
        "rpm = 600",
    );
    let input = docs(dir.path(), 60, 0);
    let started = Instant::now();
    let (ran, stderr) = run_logged(dir.path(), &input, &["--deadline", "18s"]);
    let took = started.elapsed();
    assert_each_item_once(&ran, 60);
    assert_eq!(ran.batch["status"], "completed", "{}", ran.batch);
    let stats = cheap.stats();
    let created = stats["batches"]["created"].as_u64().unwrap();
    assert!(created >= 1, "{stats}");
    assert_eq!(
        stats["batches"]["cancelled"].as_u64().unwrap(),
        created,
        "every provider batch was taken back: {stats}"
    );
    assert!(
        stderr.contains("bound by model small rpm 600"),
        "{}",
        tail(&stderr)
    );
    assert!(
        took < Duration::from_secs(18),
        "missed the deadline: {took:?}"
    );
    // Not switched before the rpm said so: 60 items paced at 10 a second take 6 s.
    assert!(took > Duration::from_secs(6), "took {took:?}");
}
