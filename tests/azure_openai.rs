//! `kind = "azure_openai"` end to end: an in-process `batchyard run` routes a task to an Azure
//! deployment (the fake provider's Azure route over loopback, with its key required), and
//! falls back to an OpenAI-kind model when the deployment fails.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::path::{Path, PathBuf};

use batchyard_testkit::FakeProvider;
use serde_json::Value;
use support::*;

const KEY: &str = "azkey-e2e-5f3a9c1d7b";

/// `az` (the Azure deployment `mini-deploy`, cheapest) and `backup` (an OpenAI-kind model);
/// `extra` is appended.
fn config(dir: &Path, azure: &FakeProvider, backup: &FakeProvider, extra: &str) -> PathBuf {
    write_file(
        dir,
        "batchyard.toml",
        format!(
            r#"
[storage]
url = "file://{store}"

[providers.azure]
kind = "azure_openai"
base_url = "{azure}"
api_version = "2024-10-21"
api_key_env = "AZ_E2E_KEY"

[providers.backup]
kind = "openai"
base_url = "{backup}"

[models.az]
provider = "azure"
name = "mini-deploy"
input_usd_per_mtok = 0.15
output_usd_per_mtok = 0.60
context_window = 128000
tier = 1

[models.backup]
provider = "backup"
name = "backup-1"
input_usd_per_mtok = 0.50
output_usd_per_mtok = 2.00
context_window = 16000
tier = 1

[tasks.check]
prompt = "{{{{ text }}}}"
max_output_tokens = 100
{extra}
"#,
            store = dir.join("store").display(),
            azure = azure.url,
            backup = backup.base_url,
        )
        .as_bytes(),
    )
}

fn docs(dir: &Path, n: usize) -> PathBuf {
    let body: String = (0..n)
        .map(|i| format!("{{\"id\":\"d{i}\",\"text\":\"document number {i:04}\"}}\n"))
        .collect();
    write_file(dir, "docs.jsonl", body.as_bytes())
}

/// `batchyard run` with the key in the environment; the batch, its outputs and stderr.
fn run_batch(dir: &Path, input: &Path) -> (Value, Vec<Value>, String) {
    run_to_output(
        dir,
        batchyard(dir)
            .args(["run", input.to_str().unwrap(), "--task", "check", "--json"])
            .args(["--concurrency", "2"])
            .env("AZ_E2E_KEY", KEY),
    )
}

/// The key is in no file of the store and not in what the run printed.
fn assert_no_key(dir: &Path, stderr: &str) {
    assert!(!stderr.contains(KEY));
    let mut stack = vec![dir.join("store")];
    let mut files = 0;
    // The store of one small batch holds a few dozen files; the bound guards a runaway walk.
    while let Some(path) = stack.pop() {
        assert!(files < 10_000);
        if path.is_dir() {
            stack.extend(std::fs::read_dir(&path).unwrap().map(|e| e.unwrap().path()));
        } else {
            files += 1;
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !String::from_utf8_lossy(&bytes).contains(KEY),
                "{}",
                path.display()
            );
        }
    }
    assert!(files > 0);
}

fn models_of(output: &[Value]) -> Vec<&str> {
    output
        .iter()
        .map(|l| l["batchyard"]["model"].as_str().unwrap())
        .collect()
}

#[test]
fn a_task_routed_to_an_azure_deployment_is_answered_there() {
    let dir = tempfile::tempdir().unwrap();
    let azure = FakeProvider::start(&["--require-key", KEY]);
    let backup = FakeProvider::start(&[]);
    config(dir.path(), &azure, &backup, "");
    let (batch, output, stderr) = run_batch(dir.path(), &docs(dir.path(), 12));
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 12, "{batch}");
    assert!(models_of(&output).iter().all(|m| *m == "az"), "{output:?}");
    let reply = output[0]["response"]["body"]["choices"][0]["message"]["content"]
        .as_str()
        .unwrap();
    assert!(reply.starts_with("fake reply from mini-deploy"), "{reply}");
    assert_eq!(azure.count(200), 12);
    assert_eq!(backup.stats()["requests"], 0);
    assert_no_key(dir.path(), &stderr);
}

#[test]
fn a_failing_azure_deployment_cools_down_and_items_fall_back() {
    let dir = tempfile::tempdir().unwrap();
    let azure = FakeProvider::start(&["--require-key", KEY, "--fail-rate-500", "1.0"]);
    let backup = FakeProvider::start(&[]);
    config(
        dir.path(),
        &azure,
        &backup,
        "[queue]\nmax_attempts = 5\n[retry]\nbase_ms = 5\ncap_ms = 20\nmax_attempts = 2\n\
         [health]\nfailure_threshold = 2\ncooldown_secs = 120\n",
    );
    let (batch, output, stderr) = run_batch(dir.path(), &docs(dir.path(), 12));
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 12, "{batch}");
    assert!(
        models_of(&output).iter().all(|m| *m == "backup"),
        "{output:?}"
    );
    // The breaker kept the storm off the sick deployment.
    let sick = azure.count(500);
    assert!(
        (1..12).contains(&sick),
        "calls to the failing deployment: {sick}"
    );
    assert_no_key(dir.path(), &stderr);
}

/// A deployment that answers every call with 429: each item waits out the short pause it
/// asks for once (in place), and when the retry is refused too, moves to the backup instead
/// of going back to the queue.
#[test]
fn a_throttled_azure_deployment_hands_items_to_the_fallback() {
    let dir = tempfile::tempdir().unwrap();
    // Every call is Azure's 429 with `retry-after-ms: 300`.
    let azure = FakeProvider::start(&["--require-key", KEY, "--fail-rate-429", "1.0"]);
    let backup = FakeProvider::start(&[]);
    config(
        dir.path(),
        &azure,
        &backup,
        "[queue]\nmax_attempts = 5\n[retry]\nbase_ms = 5\ncap_ms = 20\nmax_attempts = 2\n",
    );
    let (batch, output, stderr) = run_batch(dir.path(), &docs(dir.path(), 12));
    assert_eq!(batch["status"], "completed", "{batch}");
    assert_eq!(batch["request_counts"]["completed"], 12, "{batch}");
    assert!(
        models_of(&output).iter().all(|m| *m == "backup"),
        "{output:?}"
    );
    let throttled = azure.count(429);
    // At least one 429 taught us; at most one per in-place attempt of each item (a short
    // pause is waited out once, then the item moves on).
    assert!((1..=24).contains(&throttled), "429s served: {throttled}");
    assert_no_key(dir.path(), &stderr);
}
